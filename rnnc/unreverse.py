"""A rewrite for the JAX backend: a product that sums over the steps of a sequence
reads both operands in time order.

PyTensor's ``scan_pushout_add`` turns the weight gradient that a scan's backward
loop sums over the steps, ``dW = sum_t a_t.T @ g_t``, into one product after the
loop over the whole sequence, ``A.T @ G`` with ``A`` and ``G`` of ``[T*B, K]`` and
``[T*B, N]`` (the steps and the batch merged into the summed axis). The backward
loop runs from the last step to the first, so both operands come in that order:
``A`` is a forward value reversed in time (``h[::-1]``, ``f[::-1] * h[::-1]``) and
``G`` a per-step output of the loop, which rnnc's JAX scan
(:func:`rnnc.jaxsetup.patch_reversed_scans`) makes in time order and turns around.
A sum does not depend on the order of its terms, so the rewrite::

    dot(reshape(transpose(A[::-1])), reshape(G))
    ->  dot(reshape(transpose(A)), reshape(G[::-1]))

reads ``A`` as the forward loop made it and ``G[::-1]``, which XLA cancels with the
scan's own reversal. Each operand must be reversed at no cost: a reversed slice, an
elementwise function of such values, a transpose of one, or a per-step output of a
scan that runs backwards.

What it saves is work in the copy XLA makes of ``A`` transposed (``[K, T*B]``, the
layout its product library takes): with the reversal in it, that copy goes element
by element. At B=32 T=100 K=256 on one core (2026-12-05), ``(f[::-1] * h[::-1]).T``
took 1.47-1.86 ms against 0.32 ms for ``(f * h).T``; in the custom cell of
``benchmarks/`` that copy went from 4.18 to 1.09 ms, and its forward+gradient on JAX
from 61.8 to 58.9 ms (medians of 36 calls alternated with a copy compiled without
the rewrite; the LSTM 92.5 -> 92.0, the GRU unchanged).

The operands' summed axes must each merge the steps with a batch of the same static
size (the product needs the summed sizes equal, so the steps are equal too), so
that reversing the steps permutes the terms of both alike. The result is the same
sum, its terms added in another order. The rewrite runs in the JAX mode only, where
the reversal of a per-step output cancels.
"""

from __future__ import annotations

from pytensor.graph.basic import Apply, Constant, Variable
from pytensor.graph.rewriting.basic import dfs_rewriter, node_rewriter
from pytensor.scan.op import Scan
from pytensor.tensor.elemwise import DimShuffle, Elemwise
from pytensor.tensor.math import Dot
from pytensor.tensor.shape import Reshape, SpecifyShape, specify_shape
from pytensor.tensor.subtensor import Subtensor, get_idx_list

__all__ = ["local_dot_in_time_order", "register"]

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
    if isinstance(op, Elemwise):
        inputs = []
        for inp in owner.inputs:
            if inp.type.shape[axis] == 1:  # broadcast along the axis
                inputs.append(inp)
                continue
            inner = unreversed(inp, axis)
            if inner is None:
                return None
            inputs.append(inner)
        return op(*inputs)
    if isinstance(op, Scan) and axis == 0:
        from rnnc.jaxsetup import _runs_backwards

        per_step = op.outer_nitsot_outs(owner.outputs)
        if var in per_step and _runs_backwards(owner):
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
    axis = 0 if summed == 0 else 1
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


@node_rewriter([Dot])
def local_dot_in_time_order(fgraph, node: Apply):
    """``dot(L, R)`` summing over merged (steps, batch) axes of operands reversed in
    time, as the same product of the operands in time order (see the module)."""
    left, right = node.inputs
    if left.ndim != 2 or right.ndim != 2:
        return None
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
    return [node.op(*operands)]


def register() -> None:
    """Add the rewrite to PyTensor's JAX rewrites (once): after the scan rewrites
    and :mod:`rnnc.scanjoin`'s."""
    global _registered
    if _registered:
        return
    from pytensor.compile.mode import optdb

    optdb.register(
        "rnnc_dot_in_time_order",
        dfs_rewriter(local_dot_in_time_order, ignore_newtrees=True),
        "jax",
        position=2.55,  # after rnnc_join_of_slices (2.5)
    )
    _registered = True
