"""What a cell costs per step: matrix products and FLOPs inside and outside the loop.

For ``rnnc show FILE --optimized`` and the benchmarks. FLOPs are per example and
step: a product ``[K] @ [K, N]`` counts ``2*K*N``, an elementwise operation one per
element; slices, concatenations of parameters and leaves count nothing.

>>> sizes = {"I": 128, "H": 256}
>>> s = cost(optimize(rnnc.load_cell("lstm"), True, sizes), sizes)
>>> s["loop"]["products"], s["before"]["products"]
(1, 1)
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from rnnc import ir
from rnnc.passes.common import in_loop_roots

__all__ = ["cost", "format_cost"]

_FREE = (*ir.LEAVES, "slice", "concat")


def _region(roots: list[ir.Node], sizes: Mapping[str, int]) -> dict[str, int]:
    products = flops = 0
    for node in ir.walk(roots):
        if node.op == "matmul":
            products += 1
            a = node.args[0]
            inner = ir.dim_size(a.shape[-1], sizes) if a.shape else 1
            flops += 2 * inner * math.prod(ir.shape_size(node.shape, sizes))
        elif node.op not in _FREE and node.batched:
            flops += math.prod(ir.shape_size(node.shape, sizes))
    return {"products": products, "flops": flops}


def cost(cell: ir.CellIR, sizes: Mapping[str, int]) -> dict[str, dict[str, int]]:
    """``{"before" | "loop" | "after": {"products": n, "flops": n}}`` per example and step."""
    return {
        "before": _region(list(cell.precompute.values()), sizes),
        "loop": _region(in_loop_roots(cell), sizes),
        "after": _region(list(cell.postcompute.values()), sizes),
    }


def format_cost(cell: ir.CellIR, sizes: Mapping[str, int]) -> str:
    """A short table of :func:`cost` for people."""
    lines = ["region   products  FLOPs/step/example"]
    for region, c in cost(cell, sizes).items():
        lines.append(f"{region:<8} {c['products']:>8}  {c['flops']:>18,}")
    return "\n".join(lines)
