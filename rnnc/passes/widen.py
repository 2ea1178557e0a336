"""Widen: additions on the slices of a fused product become one addition on the whole.

After :mod:`~rnnc.passes.fuse`, an LSTM computes its gates from slices of two fused
products, ``P = x @ concat(W_ii, ...)`` before the loop and ``Q = h @ concat(W_hi, ...)``
in it, each slice with its own additions. Widening adds whole vectors instead, then
slices once:

Before::

    before: _pre0 = P[0:H] + b_ii + b_hi        ...  _pre3 = P[3H:4H] + b_io + b_ho
    loop:   i = sigmoid(seq:_pre0 + Q[0:H])     ...  o = sigmoid(seq:_pre3 + Q[3H:4H])

After::

    before: _wide0 = P
    loop:   Z = (seq:_wide0 + (concat(b_ii, ..., b_io) + concat(b_hi, ..., b_ho))) + Q
            i = sigmoid(Z[0:H])                 ...  o = sigmoid(Z[3H:4H])

(one addition of three ``[4H]`` operands per step; the biases' sum is the same at
every step, and PyTensor computes it once, before the loop).

One sequence goes into the loop instead of four, and the backward loop returns one
gradient for it, the same ``[T, B, 4H]`` values the gradient of the recurrent weights
needs, instead of four per-gate gradients put together again after the loop: the LSTM
gradient of a 1000-step sequence needed less memory.

The rule, for a vector ``A`` whose slices ``A[r_1], ..., A[r_n]`` cover it exactly and
are each added to one other value ``T_k`` (in one addition node): when the ``T_k`` are
all values of parameters alone with the slices' shapes, ``T = concat(T_1, ..., T_n)``;
when they are the same slices ``B[r_k]`` of one vector ``B`` shaped like ``A``,
``T = B``. Then ``A[r_k] + T_k = (A + T)[r_k]``. A sum of parameters is kept apart from
the batched value (``(A + c1) + c2 = A + (c1 + c2)``), so it costs one addition per
step, not two. Slices of one value computed before the loop travel into the loop as
that value (``seq:_wide0``) and are sliced inside it; where that value is a batched
one plus parameters alone (``P + T``), ``P`` travels and ``T`` is added in the loop,
in the addition the step makes anyway. Added before the loop, the biases cost a pass
over the whole ``[T, B, 4H]`` product (2.2 ms of an LSTM's forward+gradient on an
Intel Xeon of family 6, model 207, on 2026-12-06); added in the loop, a third
operand of an addition of ``[B, 4H]`` the step already makes (and their gradient,
a sum over the rows of the gates' gradients, is one sum after the loop:
:func:`rnnc.cscan.local_sums_after_loop`). There, one core, calls alternated: LSTM
forward 0.87-0.88 of the time, forward+gradient 0.98 (benchmarks/README.md).

Measured (LSTM B=32 T=100 I=128 H=256, benchmarks/README.md): on the C backend the
forward is 1.19x and the forward+gradient 1.09x faster, and the gradient of a 1000-step
sequence needs 572 instead of 822 MiB. On JAX the forward is 1.5x slower (XLA scans
one wide sequence more slowly than four narrow ones), so the JAX default leaves this
pass off (:data:`rnnc.passes.BACKEND_DEFAULTS`). Measured again on an Intel Xeon
(2026-12-05, one core, interleaved): LSTM forward 35.8 against 22.9 ms, gradient 82.5
against 75.6; the GRU's gradient 57.7 against 56.3. The cost is XLA's, not rnnc's: a
``jax.lax.scan`` written by hand over one ``[T, B, 4H]`` sequence took 23.8-26.6 ms
against 14.4-15.5 over four ``[T, B, H]`` ones, even when the step slices the row into
gates before adding (the step's fused elementwise kernel, which reads column slices
of the scanned row, took 114 instead of 15 us), and the one addition of the
concatenated biases took 5.6 ms against 3.2 for four.
"""

from __future__ import annotations

from collections.abc import Mapping

from rnnc import ir
from rnnc.passes.common import (
    in_loop_roots,
    rebuild_roots,
    rewrite_cell,
    swapping,
    with_loop_roots,
)

__all__ = ["widen"]

PREFIX = "_wide"


def _users(roots: list[ir.Node]) -> dict[ir.Node, list[ir.Node]]:
    users: dict[ir.Node, list[ir.Node]] = {}
    for node in ir.walk(roots):
        for arg in set(node.args):
            users.setdefault(arg, []).append(node)
    return users


def _partition(
    a: ir.Node, users: Mapping[ir.Node, list[ir.Node]], sizes: Mapping[str, int]
) -> list[ir.Node] | None:
    """The slices of ``a`` if they cover it exactly, in order, else None."""
    if len(a.shape) != 1:
        return None
    slices = ir.consecutive_slices(u for u in users.get(a, []) if u.op == "slice")
    if slices is None or slices[-1].value[1] != ir.dim_size(a.shape[0], sizes):
        return None
    return slices


def _other(add: ir.Node, s: ir.Node) -> ir.Node:
    return add.args[1] if add.args[0] == s else add.args[0]


def _one_rewrite(roots: list[ir.Node], sizes: Mapping[str, int]) -> dict[ir.Node, ir.Node] | None:
    """Replacements for one widened vector, or None when nothing widens."""
    users = _users(roots)
    for a in ir.walk(roots):
        slices = _partition(a, users, sizes) if a.batched else None
        if slices is None:
            continue
        adds = []
        for s in slices:
            candidates = [u for u in users.get(s, []) if u.op == "add" and u.shape == s.shape]
            if len(candidates) != 1 or candidates[0].args[0] == candidates[0].args[1]:
                break
            adds.append(candidates[0])
        else:
            terms = [_other(add, s) for add, s in zip(adds, slices, strict=True)]
            whole = _whole(terms, slices, a)
            if whole is None:
                continue
            wide = ir.Node("add", (a, whole), a.shape)
            if a.op == "add" and not whole.batched:  # keep the parameters' sums apart
                batched = [x for x in a.args if x.batched]
                fixed = [x for x in a.args if not x.batched]
                if len(batched) == 1 and len(fixed) == 1:
                    total = ir.Node("add", (fixed[0], whole), a.shape)
                    wide = ir.Node("add", (batched[0], total), a.shape)
            return {
                add: ir.Node("slice", (wide,), add.shape, s.value)
                for add, s in zip(adds, slices, strict=True)
            }
    return None


def _whole(terms: list[ir.Node], slices: list[ir.Node], a: ir.Node) -> ir.Node | None:
    """``T`` of the module's rule for the other operands ``terms``, or None."""
    if all(not t.batched and t.shape == s.shape for t, s in zip(terms, slices, strict=True)):
        widths = tuple(s.value[1] - s.value[0] for s in slices)
        return ir.Node("concat", tuple(terms), a.shape, widths)
    base = terms[0].args[0] if terms[0].op == "slice" else None
    if (
        base is not None
        and base != a
        and base.shape == a.shape
        and all(
            t.op == "slice" and t.args[0] == base and t.value == s.value
            for t, s in zip(terms, slices, strict=True)
        )
    ):
        return base
    return None


def _rewrite_region(roots: list[ir.Node], sizes: Mapping[str, int]) -> list[ir.Node]:
    """Widen within one region until nothing changes."""
    while (replace := _one_rewrite(roots, sizes)) is not None:
        roots = rebuild_roots(roots, swapping(replace))
    return roots


def _is_slice(node: ir.Node) -> bool:
    return node.op == "slice" and node.args[0].op not in ir.LEAVES


def _whole_values_only(pre: Mapping[str, ir.Node]) -> bool:
    """Whether every value computed before the loop that reads a sliced value is one of
    its slices: then the sliced value can go into the loop whole, and only it (with a
    slice also read inside a larger expression, both would be kept for every step)."""
    bases = {n.args[0] for n in pre.values() if _is_slice(n)}
    return not any(not _is_slice(n) and any(m in bases for m in ir.walk([n])) for n in pre.values())


def _apart(node: ir.Node) -> tuple[ir.Node, ir.Node | None]:
    """``node = batched + fixed`` as ``(batched, fixed)``, ``fixed`` a value of
    parameters alone; ``(node, None)`` when it is no such sum."""
    if node.op == "add":
        a, b = node.args
        if a.batched != b.batched:
            return (a, b) if a.batched else (b, a)
    return node, None


def widen(cell: ir.CellIR, sizes: Mapping[str, int]) -> ir.CellIR:
    """Widen the additions before the loop, pass their sums in whole, widen in the loop;
    ``sizes`` gives each dimension's size (slice bounds are numbers)."""
    names = list(cell.precompute)
    pre = dict(zip(names, _rewrite_region(list(cell.precompute.values()), sizes), strict=True))
    if not _whole_values_only(pre):  # a GRU: keep the values as they were
        pre = dict(cell.precompute)
    # slices of one value computed before the loop: the value goes in, sliced inside
    bases: dict[ir.Node, str] = {v: k for k, v in pre.items()}  # reuse a name (a rerun)
    sliced: dict[ir.Node, ir.Node] = {}  # seq:_pre0 -> slice(seq:_wide0, 0:H)
    for name, node in list(pre.items()):
        if _is_slice(node):
            base = node.args[0]
            if base not in bases:
                bases[base] = next(
                    f"{PREFIX}{i}" for i in range(len(pre) + 1) if f"{PREFIX}{i}" not in pre
                )
                pre[bases[base]] = base
            whole = ir.Node("seq", (), base.shape, bases[base])
            batched, fixed = _apart(base)
            if fixed is not None:  # the parameters' sum is added in the loop
                pre[bases[base]] = batched
                whole = ir.Node("add", (whole, fixed), base.shape)
            leaf = ir.Node("seq", (), node.shape, name)
            sliced[leaf] = ir.Node("slice", (whole,), node.shape, node.value)
    cell = rewrite_cell(cell, swapping(sliced))  # (precompute is replaced below)
    cell = with_loop_roots(cell, _rewrite_region(in_loop_roots(cell), sizes))
    # the values nothing reads any more (a value computed before the loop may read
    # another: the passes run twice)
    everything = [*in_loop_roots(cell), *cell.postcompute.values(), *pre.values()]
    read = {n.value for n in ir.walk(everything) if n.op == "seq"}
    return cell.replace(precompute={k: v for k, v in pre.items() if k in read})
