"""Common subexpressions: one node for every value, whatever order it was written in.

The IR is hash-consed, so ``a * b`` written twice is already one node. This pass
also makes commutative operations canonical, so that ``a * b`` and ``b * a`` become
the same node, and merges values precomputed twice under two names.

Before::

    r = sigmoid(h @ W + b) * c          # next state
    y = c * sigmoid(h @ W + b)          # output: the same product, operands swapped

After::

    r = sigmoid(h @ W + b) * c
    y = sigmoid(h @ W + b) * c          # one node, computed once

Swapping the operands of ``+``, ``*``, ``maximum`` and ``minimum`` is exact in IEEE
arithmetic, so the values do not change at all.
"""

from __future__ import annotations

from rnnc import ir
from rnnc.passes.common import make, rewrite_cell, stable_key

__all__ = ["COMMUTATIVE", "cse"]

#: Binary operations whose operands may be swapped without changing a bit.
COMMUTATIVE = ("add", "mul", "maximum", "minimum")


def cse(cell: ir.CellIR) -> ir.CellIR:
    """Canonical operand order for commutative operations; merge equal precomputed values."""
    keys: dict[ir.Node, str] = {}

    def canonical(node: ir.Node, args: tuple[ir.Node, ...]) -> ir.Node:
        if node.op in COMMUTATIVE:
            a, b = args
            if stable_key(b, keys) < stable_key(a, keys):
                args = (b, a)
        return make(node, args)

    cell = rewrite_cell(cell, canonical)
    # the same value precomputed under two names: keep the first name
    first: dict[ir.Node, str] = {}
    renamed: dict[str, str] = {}
    for name, node in cell.precompute.items():
        if node in first:
            renamed[name] = first[node]
        else:
            first[node] = name
    if not renamed:
        return cell

    def rename(node: ir.Node, args: tuple[ir.Node, ...]) -> ir.Node:
        if node.op == "seq" and node.value in renamed:
            return ir.Node("seq", (), node.shape, renamed[node.value])
        return make(node, args)

    cell = cell.replace(precompute={k: v for k, v in cell.precompute.items() if k not in renamed})
    return rewrite_cell(cell, rename)
