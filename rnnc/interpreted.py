"""A C function's cheap operations outside its loops, run by their Python code.

PyTensor's C backend compiles one C module for every kind of operation in a function
(the operation, its parameters and its inputs' types), g++ taking 0.2-0.5 s for each
however little it does. Much of a recurrent layer's function outside its loops is
bookkeeping: slices of the loops' outputs, reshapes, joins of weights, shapes, zeros
to start a loop from. Each such node runs once per call, where NumPy takes a few
microseconds for it, but its C module costs a cold compile as much as a loop's.

The rewrite :func:`local_interpreted` wraps such a node's operation in
:class:`Interpreted`, an operation without C code whose Python code is the wrapped
one's, so the function runs it in Python and nothing is compiled for it. It runs last
among the C mode's rewrites (:func:`rnnc.compile.mode`, :func:`register`), on the
function's own graph only: PyTensor compiles a scan's step with a mode of its own,
so nodes that run at every step keep their C code. The operations
(:data:`OPERATIONS`): shapes, slices, reshapes and transposes, filled arrays, joins,
increments of slices and copies into contiguous memory; never products, sums or
elementwise arithmetic, nor ``Split``, whose Python code takes 25-35 us and whose C
module the loops need anyway. Arithmetic on single integers (the fused sizes of the
arrays a function allocates) was tried: one C module (0.8 s of g++) fewer, but 70 us
more per call in Python, +8% at the small size below; it stays compiled.

Measured on 2026-12-06 (AMD EPYC of family 23, 2 cores, OpenBLAS), the benchmark's
LSTM forward+gradient (B=32 T=100 I=128 H=256): a cold compile in 4.6 instead of
7.3-7.5 s (5.8 s in all instead of 8.5, import and graph included); run time, calls
alternated on one core, +0.3-0.8% at that size and +10-13% (0.08-0.30 ms) at the
benchmark's small size (B=8 T=50 I=32 H=64, under 3 ms a call). Results are bitwise
the same. ``RNNC_INTERPRETED=0`` compiles every operation, as PyTensor does.

A training step is called thousands of times, and its bookkeeping is larger (the
optimiser's state, clipping, the loss): ``rnnc train``'s step (two layers of 128,
batches of 50 x 50, C) took 1.030-1.056x as long interpreted as compiled (Intel Xeon
of family 6, model 207, one process, calls alternated, both build orders,
2026-12-06), and compiling it cost 2.8 s more once (18.4 against 15.6 s for the
run's functions, cold). So :class:`rnnc.train.LanguageModel` compiles its training
step with ``interpreted_ops=False`` (:func:`rnnc.compile.function`); evaluation and
sampling keep theirs in Python.
"""

from __future__ import annotations

from typing import Any

from pytensor.graph.basic import Apply
from pytensor.graph.op import Op
from pytensor.graph.rewriting.basic import node_rewriter, out2in
from pytensor.link.c.op import COp
from pytensor.tensor.basic import (
    Alloc,
    AllocEmpty,
    Join,
    MakeVector,
    ScalarFromTensor,
    TensorFromScalar,
)
from pytensor.tensor.elemwise import DimShuffle
from pytensor.tensor.extra_ops import CpuContiguous
from pytensor.tensor.shape import Reshape, Shape, Shape_i, SpecifyShape
from pytensor.tensor.subtensor import IncSubtensor, Subtensor

from rnnc.env import switched_off

__all__ = ["OPERATIONS", "Interpreted", "in_use", "local_interpreted", "register"]

#: The kinds of operation that :func:`local_interpreted` runs in Python.
OPERATIONS: tuple[type, ...] = (
    Alloc,
    AllocEmpty,
    CpuContiguous,
    DimShuffle,
    IncSubtensor,
    Join,
    MakeVector,
    Reshape,
    ScalarFromTensor,
    Shape,
    Shape_i,
    SpecifyShape,
    Subtensor,
    TensorFromScalar,
)


class Interpreted(Op):
    """``op`` computed by its Python code (``op.perform``), with its views and
    in-place updates, so that no C module is compiled for it."""

    __props__ = ("op",)

    def __init__(self, op: Op) -> None:
        self.op = op
        self.view_map = op.view_map
        self.destroy_map = op.destroy_map

    def make_node(self, *inputs: Any) -> Apply:
        node = self.op.make_node(*inputs)
        return Apply(self, node.inputs, [out.type() for out in node.outputs])

    def perform(self, node: Apply, inputs: Any, outputs: Any) -> None:
        self.op.perform(node, inputs, outputs)

    def infer_shape(self, fgraph: Any, node: Apply, shapes: Any) -> Any:
        infer = getattr(self.op, "infer_shape", None)
        if infer is None:  # what PyTensor does for an operation without it
            return fgraph.shape_feature.default_infer_shape(fgraph, node, shapes)
        return infer(fgraph, node, shapes)

    def __str__(self) -> str:
        return f"Interpreted({self.op})"


def in_use() -> bool:
    """Whether the C mode runs :data:`OPERATIONS` in Python (``RNNC_INTERPRETED``)."""
    return not switched_off("RNNC_INTERPRETED")


@node_rewriter(list(OPERATIONS))
def local_interpreted(fgraph: Any, node: Apply) -> Any:
    """Wrap the operation of a node of :data:`OPERATIONS` with C code in
    :class:`Interpreted`; the outputs keep their types."""
    if not isinstance(node.op, COp) or not isinstance(node.op, OPERATIONS):
        return None
    wrapped = Apply(Interpreted(node.op), node.inputs, [out.type() for out in node.outputs])
    return wrapped.outputs


_registered = False


def register() -> None:
    """Add :func:`local_interpreted` to PyTensor's rewrites (once), last, under the
    name ``rnnc_interpreted`` and no tag: only a mode that includes it by that name
    runs it (rnnc's C mode, not the mode PyTensor compiles a scan's step with)."""
    global _registered
    if not _registered:
        from pytensor.compile.mode import optdb

        rewriter = out2in(local_interpreted, name="rnnc_interpreted", ignore_newtrees=True)
        optdb.register("rnnc_interpreted", rewriter, position=100)
        _registered = True
