"""A rewrite for the JAX backend: the operands of a product that sums over the
steps of sequences, in time order and as rows.

PyTensor's ``scan_pushout_add`` turns the weight gradient that a scan's backward
loop sums over the steps, ``dW = sum_t a_t.T @ g_t``, into one product after the
loop over the whole sequence, ``A.T @ G`` with ``A`` and ``G`` of ``[T*B, K]`` and
``[T*B, N]`` (the steps and the batch merged into the summed axis). It writes the
left operand as ``reshape(transpose(A3, (2, 0, 1)), [K, T*B])`` of the ``[T, B, K]``
sequence ``A3``, and the backward loop runs from the last step to the first, so
both operands come in that order: ``A3`` is a forward value reversed in time
(``h[::-1]``, ``f[::-1] * h[::-1]``) and ``G`` a per-step output of the loop, which
rnnc's JAX scan (:func:`rnnc.jaxsetup.patch_reversed_scans`) makes in time order
and turns around. The rewrite::

    dot(reshape(transpose(A3[::-1], (2, 0, 1)), [K, T*B]), reshape(G, [T*B, N]))
    ->  dot(reshape(A3, [T*B, K]).T, reshape(G[::-1], [T*B, N]))

does two things:

* **time order** (:func:`in_time_order`): a sum does not depend on the order of its
  terms, so the product reads ``A3`` as the forward loop made it, and ``G[::-1]``,
  which XLA cancels with the scan's own reversal. Each operand must be reversed at
  no cost (:func:`unreversed`): a reversed slice, an elementwise function of such
  values, a transpose of one, or a per-step output of a scan that runs backwards.
  Both summed axes must merge the steps with a batch of the same static size (the
  product needs the summed sizes equal, so the steps are equal too), so that
  reversing the steps permutes the terms of both alike.
* **rows** (:func:`as_rows`): the transposed 3-D array reshaped is the transpose
  of a matrix of rows, a form of product XLA takes as it is where its operand is
  narrow (:data:`rnnc.jaxsetup.COPY_TRANSPOSED_FROM`). Otherwise XLA copies ``A``
  transposed for its product library, element by element, slower still with a
  reversal in it.

Measured at B=32 T=100 K=256 on one core (2026-12-05): ``(f[::-1] * h[::-1]).T``
took 1.47-1.86 ms to copy, ``(f * h).T`` 0.32 ms; ``x3.transpose(2, 0, 1)`` reshaped
times ``g`` 5.82 ms, ``x3`` reshaped, transposed, times ``g`` 4.81 ms. Time order
alone made the custom cell's forward+gradient of ``benchmarks/`` on JAX 58.9
against 61.8 ms, the LSTM 92.0 against 92.5; with rows and the threshold of
:func:`rnnc.jaxsetup.patch_dot`, against neither (calls alternated, medians of 33):
the custom cell 58.9 against 63.1 ms, the LSTM 91.7 against 95.0, the GRU 71.9
against 73.7; at input size 1024 143.6 against 145.1 (custom cell), 263.6 against
266.0 (LSTM).

The result is the same sum, its terms added in another order. The rewrite runs in
the JAX mode only, where the reversal of a per-step output cancels.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pytensor.graph.basic import Apply, Constant, Variable
from pytensor.graph.rewriting.basic import dfs_rewriter, node_rewriter
from pytensor.scan.op import Scan
from pytensor.tensor.elemwise import DimShuffle, Elemwise
from pytensor.tensor.math import Dot
from pytensor.tensor.shape import Reshape, SpecifyShape, specify_shape
from pytensor.tensor.subtensor import Subtensor, get_idx_list

from rnnc.jaxsetup import runs_backwards

__all__ = ["as_rows", "in_time_order", "local_sum_over_steps", "register", "unreversed"]

_registered = False


def _flip(var: Variable, axis: int) -> Variable:
    """``var`` reversed along ``axis``."""
    return var[(slice(None),) * axis + (slice(None, None, -1),)]


def _reversed_step(var: Variable, axis: int) -> bool:
    """Whether ``var`` is a slice (no integer index) that steps by -1 along ``axis``."""
    index = get_idx_list(var.owner.inputs, var.owner.op.idx_list)
    if axis >= len(index) or not all(isinstance(i, slice) for i in index):
        return False
    step = index[axis].step
    return getattr(step, "data", step) == -1


def _elementwise(owner: Apply, kept: Callable, convert: Callable, arg: Any) -> Variable | None:
    """The single-output elementwise op of ``owner`` on its inputs, each one that
    ``kept`` does not accept replaced by ``convert(input, arg)``; None where that
    is None for one of them."""
    if len(owner.outputs) != 1:
        return None
    inputs = []
    for inp in owner.inputs:
        inner = inp if kept(inp) else convert(inp, arg)
        if inner is None:
            return None
        inputs.append(inner)
    return owner.op(*inputs)


def unreversed(var: Variable, axis: int) -> Variable | None:
    """``var`` reversed along ``axis``, where that costs nothing (see the module):
    the new graph, or None."""
    owner = var.owner
    if owner is None:
        return None
    op = owner.op
    if isinstance(op, Subtensor):
        return _flip(var, axis) if _reversed_step(var, axis) else None
    if isinstance(op, SpecifyShape):
        inner = unreversed(owner.inputs[0], axis)
        return None if inner is None else specify_shape(inner, var.type.shape)
    if isinstance(op, DimShuffle):
        order = op.new_order
        if "x" in order or len(order) != owner.inputs[0].ndim:
            return None  # only a permutation of the axes
        inner = unreversed(owner.inputs[0], order[axis])
        return None if inner is None else op(inner)
    if isinstance(op, Elemwise):  # inputs broadcast along the axis stay as they are
        return _elementwise(owner, lambda i: i.type.shape[axis] == 1, unreversed, axis)
    if isinstance(op, Scan) and axis == 0:
        per_step = op.outer_nitsot_outs(owner.outputs)
        if var in per_step and runs_backwards(owner):
            return _flip(var, 0)
    return None


def _summed_steps(operand: Variable, summed: int) -> tuple[Variable, int, int] | None:
    """``(value, axis, batch)`` when ``operand``'s axis ``summed`` merges the axes
    ``(axis, axis + 1)`` of a 3-D ``value``, the second of static size ``batch`` (a
    reshape, and maybe a transpose of the matrix); None otherwise."""
    owner = operand.owner
    if owner is not None and isinstance(owner.op, DimShuffle):
        if tuple(owner.op.new_order) != (1, 0):
            return None
        operand, summed = owner.inputs[0], 1 - summed
        owner = operand.owner
    if owner is None or not isinstance(owner.op, Reshape):
        return None
    value, target = owner.inputs
    while value.owner is not None and isinstance(value.owner.op, SpecifyShape):
        value = value.owner.inputs[0]
    if value.ndim != 3 or not isinstance(target, Constant):
        return None
    shape, got = value.type.shape, [int(n) for n in target.data]
    axis = summed  # the value's axes (axis, axis + 1) are merged
    batch, kept = shape[axis + 1], shape[2 - 2 * axis]
    merged = None if None in shape[axis : axis + 2] else shape[axis] * batch
    if batch is None or kept is None:
        return None
    if got[1 - summed] != kept and not (got[1 - summed] == -1 and got[summed] == merged):
        return None
    return value, axis, batch


def _rebuilt(operand: Variable, value: Variable, new: Variable) -> Variable:
    """``operand`` (a chain of one-input ops down to ``value``) computed from ``new``."""
    if operand is value:
        return new
    owner = operand.owner
    inner = _rebuilt(owner.inputs[0], value, new)
    return owner.op(inner, *owner.inputs[1:])


def _untransposed(var: Variable, order: tuple[int, ...]) -> Variable | None:
    """``v`` with ``var = v.dimshuffle(order)`` at no cost (a transpose, or an
    elementwise function of transposes and scalars), or None."""
    owner = var.owner
    if owner is None:
        return None
    if isinstance(owner.op, DimShuffle) and tuple(owner.op.new_order) == order:
        return owner.inputs[0]
    if isinstance(owner.op, Elemwise):  # scalars stay as they are
        return _elementwise(
            owner, lambda i: all(n == 1 for n in i.type.shape), _untransposed, order
        )
    return None


def as_rows(left: Variable) -> Variable | None:
    """``reshape(transpose(V, (2, 0, 1)), [K, T*B])``, a left operand summed over
    steps, as ``reshape(V, [T*B, K]).T``, or None (see the module)."""
    owner = left.owner
    if owner is None or not isinstance(owner.op, Reshape) or left.ndim != 2:
        return None
    value, target = owner.inputs
    width = value.type.shape[0] if value.ndim == 3 else None
    if width is None or not isinstance(target, Constant) or int(target.data[0]) != width:
        return None
    inner = _untransposed(value, (2, 0, 1))
    return None if inner is None else inner.reshape((-1, width)).T


def in_time_order(left: Variable, right: Variable) -> tuple[Variable, Variable] | None:
    """The operands of ``dot(left, right)``, summed over merged (steps, batch) axes
    and reversed in time, in time order, or None (see the module)."""
    found = [_summed_steps(left, 1), _summed_steps(right, 0)]
    # the same batch size: the product sums over the same number of steps
    if None in found or found[0][2] != found[1][2]:
        return None
    operands = []
    for operand, (value, axis, _) in zip((left, right), found, strict=True):
        new = unreversed(value, axis)
        if new is None:
            return None
        operands.append(_rebuilt(operand, value, new))
    return operands[0], operands[1]


@node_rewriter([Dot])
def local_sum_over_steps(fgraph, node: Apply):
    """A product that sums over the steps of sequences, with its operands in time
    order (:func:`in_time_order`) and its left one as a transposed matrix of rows
    (:func:`as_rows`)."""
    left, right = node.inputs
    if left.ndim != 2 or right.ndim != 2:
        return None
    ordered = in_time_order(left, right)
    new_left, new_right = (left, right) if ordered is None else ordered
    rows = as_rows(new_left)
    if rows is not None:
        new_left = rows
    if new_left is left and new_right is right:
        return None
    return [node.op(new_left, new_right)]


def register() -> None:
    """Add the rewrite to PyTensor's JAX rewrites (once): after the scan rewrites
    and :mod:`rnnc.scanjoin`'s."""
    global _registered
    if _registered:
        return
    from pytensor.compile.mode import optdb

    optdb.register(
        "rnnc_sums_over_steps",
        dfs_rewriter(local_sum_over_steps, ignore_newtrees=True),
        "jax",
        position=2.55,  # after rnnc_join_of_slices (2.5)
    )
    _registered = True
