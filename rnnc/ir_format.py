"""The IR of a cell printed for people: one node per line, numbered, with its shape.

>>> print(format_ir(rnnc.load_cell("rnn")))
%0 = input x              [I]
%1 = param W_ih           [I, H]
%2 = matmul(%0, %1)       [H]
...
%9 = tanh(%8)             [H]     *
h' = %9
y = %9

A node's arguments are numbered before it. ``*`` marks the values that depend on a
state, which must be computed inside the loop; the others could be computed for every
step at once. When the passes have moved work out of the loop (``precompute``,
``postcompute``), the listing has three parts: before the loop, in the loop, after it.

This module imports only :mod:`rnnc.ir`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from rnnc import ir

__all__ = ["format_ir", "format_signature", "format_value"]

#: Where the shape column starts (longer expressions push it right).
_SHAPE_COLUMN = 26


def format_signature(cell: ir.CellIR) -> str:
    """The header of a cell: ``gru(x: [I]) -> (y: [H])``."""

    def ports(shapes: Mapping[str, ir.Shape]) -> str:
        return ", ".join(f"{name}: {ir.format_shape(shape)}" for name, shape in shapes.items())

    return f"{cell.name}({ports(cell.inputs)}) -> ({ports(cell.output_shapes())})"


def format_value(value: float) -> str:
    """A constant as it would be written in a cell: ``1``, ``0.5``, ``1e-05``."""
    number = float(value)
    return str(int(number)) if number.is_integer() and abs(number) < 1e15 else repr(number)


def _expression(node: ir.Node, number: Mapping[ir.Node, int]) -> str:
    if node.op == "const":
        return f"const {format_value(node.value)}"
    if node.op in ir.LEAVES:
        return f"{node.op} {node.value}"
    args = [f"%{number[a]}" for a in node.args]
    if node.op == "slice":
        start, stop = node.value
        args.append(f"{start}:{stop}")
    return f"{node.op}({', '.join(args)})"


def format_ir(cell: ir.CellIR, labels: Mapping[ir.Node, str] | None = None) -> str:
    """Every node of ``cell``'s step, one per line, then the values it computes.

    ``labels`` names nodes (the local values of the cell's text); a label is shown as a
    comment after the node.
    """
    labels = labels or {}
    regions: list[tuple[str | None, Mapping[str, ir.Node], str]] = []
    split = bool(cell.precompute or cell.postcompute)
    if cell.precompute:
        regions.append(("before the loop, for every step at once:", cell.precompute, ""))
    regions.append(("in the loop, step by step:" if split else None, cell.next_state, "'"))
    regions[-1:] = [*regions[-1:], (None, cell.outputs, "")]
    if cell.postcompute:
        regions.append(("after the loop, for every step at once:", cell.postcompute, ""))

    number: dict[ir.Node, int] = {}
    lines: list[str] = []
    indent = "  " if split else ""
    for title, roots, prime in regions:
        if title:
            lines.append(title)
        lines += _nodes(roots.values(), number, labels, indent)
        lines += [f"{indent}{name}{prime} = %{number[node]}" for name, node in roots.items()]
    return "\n".join(lines)


def _nodes(
    roots: Iterable[ir.Node],
    number: dict[ir.Node, int],
    labels: Mapping[ir.Node, str],
    indent: str,
) -> list[str]:
    """The lines of the nodes under ``roots`` not printed yet, numbering them."""
    lines = []
    for node in ir.walk(list(roots)):
        if node in number:
            continue
        number[node] = len(number)
        text = f"{indent}%{number[node]} = {_expression(node, number)}"
        text = f"{text:<{_SHAPE_COLUMN + len(indent)}} {ir.format_shape(node.shape)}"
        if node.stateful:
            text = f"{text:<{_SHAPE_COLUMN + len(indent) + 9}} *"
        if node in labels:
            text = f"{text:<{_SHAPE_COLUMN + len(indent) + 11}} # {labels[node]}"
        lines.append(text.rstrip())
    return lines
