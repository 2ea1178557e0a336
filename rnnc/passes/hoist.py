"""Hoist: what does not depend on a state is computed once, before the loop.

PyTensor moves only elementwise work out of a scan; a product ``x_t @ W`` stays in
the loop as ``time`` small products. This pass makes every maximal subexpression
that depends on the inputs but on no state a *precomputed* value, evaluated for all
steps at once (one ``[time*batch, I] x [I, K]`` product) and read in the loop as a
``seq`` leaf. Sums are reassociated first so that all state-free terms are added
before the loop (``x @ W + b + h @ U + c`` has the state-free part ``x @ W + b + c``).

Before (one LSTM gate)::

    loop:  i = sigmoid(x @ W_ii + b_ii + h @ W_hi + b_hi)

After::

    before: _pre0 = x @ W_ii + b_ii + b_hi
    loop:   i = sigmoid(seq:_pre0 + h @ W_hi)

Reassociating a sum changes the rounding of the result (by about one ulp), not its
meaning. Parameter-only values (``b_ii + b_hi``) are not made per-step sequences:
they are loop-invariant and PyTensor already computes them once.
"""

from __future__ import annotations

from rnnc import ir
from rnnc.passes.common import (
    broadcast_shapes,
    in_loop_roots,
    make,
    rebuild_roots,
    with_loop_roots,
)

__all__ = ["hoist", "reassociate"]


def _terms(node: ir.Node, out: list[ir.Node]) -> list[ir.Node]:
    """The terms of a chain of ``add``: ``(a + b) + (c + d)`` -> ``[a, b, c, d]``."""
    if node.op == "add" and node.stateful:
        for arg in node.args:
            _terms(arg, out)
    else:
        out.append(node)
    return out


def _sum(terms: list[ir.Node]) -> ir.Node:
    total = terms[0]
    for term in terms[1:]:
        total = ir.Node("add", (total, term), broadcast_shapes([total.shape, term.shape]))
    return total


def reassociate(node: ir.Node, args: tuple[ir.Node, ...]) -> ir.Node:
    """Rewrite a state-dependent sum as ``(state-free terms) + (state terms)``."""
    node = make(node, args)
    if node.op != "add" or not node.stateful:
        return node
    terms = _terms(node, [])
    free = [t for t in terms if not t.stateful]
    if not free or not any(t.batched for t in free):
        return node
    stateful = [t for t in terms if t.stateful]
    out = ir.Node("add", (_sum(free), _sum(stateful)), node.shape)
    return out if broadcast_shapes([out.args[0].shape, out.args[1].shape]) == node.shape else node


def hoist(cell: ir.CellIR) -> ir.CellIR:
    """Move every maximal input-dependent, state-free subexpression of the loop into
    ``cell.precompute``."""
    roots = rebuild_roots(in_loop_roots(cell), reassociate)
    precompute = dict(cell.precompute)
    names = {node: name for name, node in precompute.items()}
    counter = len(precompute)
    hoisted: dict[ir.Node, ir.Node] = {}
    inlined: dict[ir.Node, ir.Node] = {}

    def inline(node: ir.Node, args: tuple[ir.Node, ...]) -> ir.Node:
        """A value read from an earlier hoist (``seq:_pre0``, when the passes run on
        an optimised cell) is replaced by what it names: values computed before the
        loop read inputs and parameters only."""
        return cell.precompute[node.value] if node.op == "seq" else make(node, args)

    def visit(node: ir.Node) -> ir.Node:
        nonlocal counter
        if node in hoisted:
            return hoisted[node]
        if node.batched and not node.stateful and node.op not in ir.LEAVES:
            value = ir.rebuild(node, inline, inlined)
            if value not in names:
                while f"_pre{counter}" in precompute:
                    counter += 1
                names[value] = f"_pre{counter}"
                precompute[names[value]] = value
            out = ir.Node("seq", (), node.shape, names[value])
        elif not node.stateful:
            out = node
        else:
            out = make(node, tuple(visit(a) for a in node.args))
        hoisted[node] = out
        return out

    return with_loop_roots(cell, [visit(r) for r in roots]).replace(precompute=precompute)
