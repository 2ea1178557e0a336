"""The C backend's scans get their loop-invariant matrices in row-major order.

The gradient of a step's product ``h @ W`` is ``g @ W.T``. PyTensor moves ``W.T``
out of the backward loop (it does not depend on the step), and a transpose is a view:
the loop multiplies by a column-major matrix at every step. OpenBLAS packs such an
operand more slowly. On the machine of ``benchmarks/README.md`` (one core, float32),
``[32, 1024] @ [1024, 256]`` takes 334 us when the right operand is a transposed
view and 205 us when it is row-major; the forward product ``[32, 256] @ [256, 1024]``
takes 216 us either way. The LSTM backward loop makes one such product per step.

:func:`local_contiguous_invariants` rewrites::

    Scan(..., non_sequences=[W.T])  ->  Scan(..., non_sequences=[cpu_contiguous(W.T)])

``cpu_contiguous`` is PyTensor's op that copies an array into row-major order (and
passes one that already is through): one copy per call, outside the loop, instead of
a slower product at every step. The rewrite runs with PyTensor's C rewrites only
(tag ``cxx_only``): XLA and Numba choose their own layouts.
"""

from __future__ import annotations

from pytensor.graph.basic import Apply
from pytensor.graph.rewriting.basic import dfs_rewriter, node_rewriter
from pytensor.scan.op import Scan
from pytensor.tensor.elemwise import DimShuffle
from pytensor.tensor.extra_ops import cpu_contiguous

__all__ = ["local_contiguous_invariants", "register"]

_registered = False


def _transposed(var) -> bool:
    """Whether ``var`` is a view of another array with its axes in another order."""
    owner = var.owner
    if owner is None or not isinstance(owner.op, DimShuffle):
        return False
    axes = [a for a in owner.op.new_order if a != "x"]
    return len(axes) >= 2 and axes != sorted(axes)


@node_rewriter([Scan])
def local_contiguous_invariants(fgraph, node: Apply):
    """Give a scan its transposed loop invariants as row-major copies (see the module)."""
    non_seqs = node.op.outer_non_seqs(node.inputs)
    start = len(node.inputs) - len(non_seqs)
    inputs = list(node.inputs)
    changed = False
    for i, var in enumerate(non_seqs, start):
        if _transposed(var):
            inputs[i] = cpu_contiguous(var)
            changed = True
    if not changed:
        return None
    return node.op.make_node(*inputs).outputs


def register() -> None:
    """Add :func:`local_contiguous_invariants` to PyTensor's C rewrites (once)."""
    global _registered
    if _registered:
        return
    from pytensor.compile.mode import optdb

    optdb.register(
        "rnnc_contiguous_invariants",
        dfs_rewriter(local_contiguous_invariants),
        "fast_run",
        "cxx_only",
        position=49.3,  # after the scan and BLAS rewrites, before in-place (49.5)
    )
    _registered = True
