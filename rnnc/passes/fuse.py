"""Fuse: products that share their left operand become one product.

The four recurrent products of an LSTM, ``h @ W_hi``, ``h @ W_hf``, ``h @ W_hg``,
``h @ W_ho``, become one product with a ``[H, 4*H]`` matrix, split afterwards; the
same for the hoisted input products ``x @ W_i*``. The parameters keep their own
names: the concatenation is a node of the graph (``concat(W_hi, W_hf, ...)``), which
depends on parameters only, so the lowering computes it once per call, before the
loop, and passes it in whole; gradients flow back to each original parameter.

Before::

    loop:  i = sigmoid(seq:_pre0 + h @ W_hi)
           f = sigmoid(seq:_pre1 + h @ W_hf)

After::

    loop:  P = h @ concat(W_hi, W_hf)              # [2*H], one product
           i = sigmoid(seq:_pre0 + P[0:H])
           f = sigmoid(seq:_pre1 + P[H:2*H])

Slice bounds are numbers, so the pass needs the layer's dimension sizes; the
``concat`` node records the width of each part (``value``), so the lowering can give
them static shapes (JAX needs the split in the gradient to have static sizes). Products
are fused only within one region (before the loop, in it, after it), so a fused
product is never computed twice.
"""

from __future__ import annotations

from collections.abc import Mapping

from rnnc import ir
from rnnc.passes.common import dim_sum, in_loop_roots, rewrite_cell, swapping

__all__ = ["fuse"]


def _regions(cell: ir.CellIR) -> list[list[ir.Node]]:
    return [list(cell.precompute.values()), in_loop_roots(cell), list(cell.postcompute.values())]


def _fusable(node: ir.Node) -> bool:
    """``a @ W`` with ``a`` a per-example vector and ``W`` a matrix shared by all."""
    if node.op != "matmul":
        return False
    a, w = node.args
    return a.batched and len(a.shape) == 1 and not w.batched and len(w.shape) == 2


def _one_group(cell: ir.CellIR) -> list[ir.Node] | None:
    """A group of two or more fusable products with the same left operand, or None."""
    seen_in: dict[ir.Node, int] = {}
    for i, roots in enumerate(_regions(cell)):
        for node in ir.walk(roots):
            seen_in[node] = -1 if seen_in.get(node, i) != i else i
    groups: dict[tuple[int, ir.Node], list[ir.Node]] = {}
    for node, region in seen_in.items():
        if region >= 0 and _fusable(node):
            groups.setdefault((region, node.args[0]), []).append(node)
    for members in groups.values():  # in the order the graph is walked: deterministic
        if len(members) > 1:
            return members
    return None


def fuse(cell: ir.CellIR, sizes: Mapping[str, int]) -> ir.CellIR:
    """Fuse products sharing a left operand until none are left; ``sizes`` gives each
    dimension's size (``{"H": 256, "I": 128}``)."""
    while (group := _one_group(cell)) is not None:
        a = group[0].args[0]
        weights = [n.args[1] for n in group]
        width = dim_sum(w.shape[1] for w in weights)
        widths = tuple(ir.dim_size(w.shape[1], sizes) for w in weights)
        matrix = ir.Node("concat", tuple(weights), (weights[0].shape[0], width), widths)
        product = ir.Node("matmul", (a, matrix), (width,))
        replace: dict[ir.Node, ir.Node] = {}
        start = 0
        for node, w in zip(group, weights, strict=True):
            stop = start + ir.dim_size(w.shape[1], sizes)
            replace[node] = ir.Node("slice", (product,), node.shape, (start, stop))
            start = stop
        cell = rewrite_cell(cell, swapping(replace))
    return cell
