"""Constant folding and algebraic identities that are exact in floating point.

Before::

    h' = tanh(x @ W + 0.0 + h @ U) * (2.0 - 1.0)      # e.g. a bias dropped by bias=False

After::

    h' = tanh(x @ W + h @ U)

Operations whose arguments are all scalar constants become one constant (computed
in float64, rounded to the layer's dtype when lowered). The identities ``x + 0``,
``0 + x``, ``x - 0``, ``x * 1``, ``1 * x``, ``x / 1``, ``x ** 1``, ``-(-x)`` and
``where(c, a, b)`` with a constant ``c`` are removed when the surviving operand
already has the node's shape. ``x * 0`` is kept: it is not 0 for an infinite ``x``.
"""

from __future__ import annotations

import numpy as np

from rnnc import ir
from rnnc.passes.common import make, rewrite_cell
from rnnc.reference import evaluate

__all__ = ["fold", "fold_node"]


def _const(node: ir.Node, number: float | None = None) -> bool:
    return node.op == "const" and node.shape == () and (number is None or node.value == number)


def fold_node(node: ir.Node) -> ir.Node:
    """One folding step on a node whose arguments are already folded."""
    args = node.args
    if node.op in ir.LEAVES:
        return node
    if (node.op in ir.UNARY or node.op in ir.BINARY) and args and all(map(_const, args)):
        with np.errstate(all="ignore"):
            (value,) = evaluate([node], {}, np.float64)
        if np.isfinite(value):
            return ir.Node("const", (), node.shape, float(value))

    def keep(x: ir.Node) -> ir.Node | None:
        return x if x.shape == node.shape else None

    if node.op == "add":
        if _const(args[1], 0.0):
            return keep(args[0]) or node
        if _const(args[0], 0.0):
            return keep(args[1]) or node
    elif node.op == "sub" and _const(args[1], 0.0):
        return keep(args[0]) or node
    elif node.op in ("div", "pow") and _const(args[1], 1.0):
        return keep(args[0]) or node
    elif node.op == "mul":
        if _const(args[1], 1.0):
            return keep(args[0]) or node
        if _const(args[0], 1.0):
            return keep(args[1]) or node
    elif node.op == "neg" and args[0].op == "neg":
        return args[0].args[0]
    elif node.op == "where" and _const(args[0]):
        return keep(args[1] if args[0].value != 0 else args[2]) or node
    return node


def fold(cell: ir.CellIR) -> ir.CellIR:
    """Fold constants and exact identities everywhere in ``cell``."""
    return rewrite_cell(cell, lambda node, args: fold_node(make(node, args)))
