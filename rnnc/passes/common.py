"""Helpers the passes share: rebuilding a cell, stable node keys, shape arithmetic.

Nothing here imports PyTensor; the passes work on :mod:`rnnc.ir` alone.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping

from rnnc import ir

__all__ = [
    "broadcast_shapes",
    "dim_sum",
    "in_loop_roots",
    "leaf_names",
    "make",
    "rebuild_roots",
    "rewrite_cell",
    "stable_key",
    "swapping",
    "uses_op",
    "with_loop_roots",
]


def make(node: ir.Node, args: tuple[ir.Node, ...]) -> ir.Node:
    """``node`` with new arguments (``node`` itself when they did not change)."""
    if args == node.args and all(a is b for a, b in zip(args, node.args, strict=True)):
        return node
    return ir.Node(node.op, args, node.shape, node.value)


def rewrite_cell(
    cell: ir.CellIR, fn: Callable[[ir.Node, tuple[ir.Node, ...]], ir.Node]
) -> ir.CellIR:
    """Rebuild every root of ``cell`` bottom-up with ``fn(node, new_args)``; one memo
    is shared by all roots so a node shared between them stays shared."""
    memo: dict[ir.Node, ir.Node] = {}
    return cell.transform(lambda root: ir.rebuild(root, fn, memo))


def swapping(replace: Mapping[ir.Node, ir.Node]) -> Callable[[ir.Node, tuple], ir.Node]:
    """The rebuilding function that puts ``replace[node]`` in place of each of its
    keys (for :func:`rewrite_cell`, :func:`rebuild_roots`)."""
    return lambda node, args: replace.get(node) or make(node, args)


def rebuild_roots(
    roots: Iterable[ir.Node], fn: Callable[[ir.Node, tuple[ir.Node, ...]], ir.Node]
) -> list[ir.Node]:
    """Rebuild ``roots`` bottom-up with ``fn(node, new_args)``, one memo for all."""
    memo: dict[ir.Node, ir.Node] = {}
    return [ir.rebuild(root, fn, memo) for root in roots]


def in_loop_roots(cell: ir.CellIR) -> list[ir.Node]:
    """The roots computed inside the loop: next states, then in-loop outputs."""
    return [*cell.next_state.values(), *cell.outputs.values()]


def with_loop_roots(cell: ir.CellIR, roots: list[ir.Node]) -> ir.CellIR:
    """``cell`` with new in-loop roots, in the order of :func:`in_loop_roots`."""
    n = len(cell.next_state)
    return cell.replace(
        next_state=dict(zip(cell.next_state, roots[:n], strict=True)),
        outputs=dict(zip(cell.outputs, roots[n:], strict=True)),
    )


def uses_op(root: ir.Node, op: str) -> bool:
    """Whether a node of kind ``op`` is reachable from ``root``."""
    return any(n.op == op for n in ir.walk([root]))


def leaf_names(roots: Iterable[ir.Node], op: str) -> set[str]:
    """The names of the ``op`` leaves reachable from ``roots``."""
    return {n.value for n in ir.walk(list(roots)) if n.op == op}


def stable_key(node: ir.Node, memo: dict[ir.Node, str]) -> str:
    """A digest of ``node``'s structure that is the same in every process (Python's
    ``hash`` of strings is salted per process, so it cannot order nodes)."""
    for n in ir.walk([node]):
        if n in memo:
            continue
        text = repr((n.op, n.value, n.shape, tuple(memo[a] for a in n.args)))
        memo[n] = hashlib.sha1(text.encode()).hexdigest()[:16]
    return memo[node]


def _terms(dim: ir.Dim) -> dict[str, int]:
    return ir._dim_terms(dim)  # the IR's own dimension arithmetic


def dim_sum(dims: Iterable[ir.Dim]) -> ir.Dim:
    """The symbolic sum of dimensions: ``["H", "H", "I"]`` -> ``"2*H + I"``."""
    total: dict[str, int] = {}
    for dim in dims:
        for name, coeff in _terms(dim).items():
            total[name] = total.get(name, 0) + coeff
    const = total.pop("", 0)
    if not total:
        return const
    parts = [f"{c}*{n}" if c != 1 else n for n, c in sorted(total.items()) if c]
    if const:
        parts.append(str(const))
    return " + ".join(parts)


def broadcast_shapes(shapes: Iterable[ir.Shape]) -> ir.Shape:
    """The NumPy broadcast of example shapes (dimensions equal or 1)."""
    shapes = list(shapes)
    rank = max((len(s) for s in shapes), default=0)
    out: list[ir.Dim] = []
    for i in range(rank):
        dims = [s[len(s) - rank + i] for s in shapes if len(s) - rank + i >= 0]
        real = [d for d in dims if d != 1]
        out.append(real[0] if real else 1)
    return tuple(out)
