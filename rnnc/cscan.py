"""Rewrites of PyTensor's scans for the C backend: the layouts of the arrays a loop
multiplies by at every step, of the elementwise work that makes them, and its sums.

**Loop invariants in row-major order** (:func:`local_contiguous_invariants`). The
gradient of a step's product ``h @ W`` is ``g @ W.T``. PyTensor moves ``W.T`` out of
the backward loop (it does not depend on the step), and a transpose is a view: the
loop multiplies by a column-major matrix at every step, an operand OpenBLAS packs more
slowly. On the machine of ``benchmarks/README.md`` (one core, float32),
``[32, 1024] @ [1024, 256]`` takes 334 us when the right operand is a transposed view
and 205 us when it is row-major. The rewrite::

    Scan(..., non_sequences=[W.T])  ->  Scan(..., non_sequences=[RowMajorCopy()(W.T)])

:class:`RowMajorCopy` copies a matrix into row-major order: one copy per call,
outside the loop. PyTensor's ``cpu_contiguous`` would do it with NumPy, which walks
the copy's rows, reading down the columns of ``W``: with ``W`` of ``[256, 1024]``
float32 those reads are 4 KB apart, all in the same few sets of the cache, and the
copy took 1.87 ms (AMD EPYC of family 23, 2026-12-06), an LSTM's whole elementwise
work in a forward loop of 50 steps. By tiles of 8 x 8 it takes 200-230 us.

**Padded rows** (same rewrite). A loop invariant whose rows are a multiple of 2 KB
long (an LSTM's ``W_h``, ``[256, 1024]`` float32: 4 KB rows) is copied, once per
call, into a buffer whose rows are a cache line longer (:class:`PadRows`). With rows
4 KB apart, the columns OpenBLAS reads fall into few cache sets and evict each
other: ``[32, 256] @ [256, 1024]`` took 262-284 us and takes 194-208; ``[8, 256] @
[256, 1024]`` 166 and 81 us. Widths that are not a multiple of 2 KB (768 floats)
gained nothing when padded.

**Sums updated in place** (:func:`local_untraced_sums`). The backward loop sums the
weight gradient over the steps, ``dW_t = dW_{t+1} + h_t.T @ g_t``, as a state of the
scan of which only the last value is used. PyTensor's C scan keeps such a state in a
buffer of two slots (every step reads one, writes the other), so the product
``Gemm`` first copies the ``[H, 4H]`` sum into the other slot: 245 us per step
instead of 201 for an LSTM's ``[256, 32] @ [32, 1024]``. An *untraced* state (one
value, the step may overwrite it) lets the product add into it in place. The rewrite
turns a state of which every use is ``out[-1]`` into one; PyTensor does the same only
for backends without preallocated outputs (JAX, Numba), whose buffers have one slot.

**Wide sums kept transposed** (:func:`local_transposed_sums`). An untraced matrix
state that the step only adds to and that has fewer rows than columns (``dW`` of
``[256, 1024]``) is kept as its transpose, ``dW.T += g_t.T @ h_t``: OpenBLAS adds
``[1024, 32] @ [32, 256]`` into a ``[1024, 256]`` array in 182-184 us and
``[256, 32] @ [32, 1024]`` into a ``[256, 1024]`` one in 221-226 us. Measured over
widths 256-3072 and batches 8 and 32, the transposed sum was never slower (0.66-1.01
of the time).

**Elementwise work on transposed matrices** (:func:`local_elemwise_of_transposes`).
A custom cell's step product ``(f * h) @ W`` has the weight gradient ``(f * h).T @ g``,
and PyTensor moves the transpose into the factors: ``f.T * h.T``, an elementwise loop
that reads two arrays across their rows, 8.5 us per step for ``[32, 256]`` float32.
The rewrite computes ``(f * h).T`` instead, the product taking the transposed view as
it takes any: the custom cell of ``benchmarks/`` (medium size, forward+gradient)
took 62.9-64.4 ms against 63.5-64.8, and 148.8 against 149.8-150.0 ms at input size
1024 (calls alternated with an identical copy, 2026-12-05).

**Gate gradients in the loop's order** (:func:`local_gradients_in_time_order`). The
backward loop writes the gradients of a step's pre-activations from the last step to
the first; PyTensor's gradient of the scan copies them, turned around, into an array
of zeros (``inc_subtensor(zeros[:T], g[::-1])``) before the products over the whole
sequence read them: the input's gradient ``G @ W_i.T``, the input weights' ``X.T @
G`` and the bias's sum over rows. The rewrite gives those products ``g`` as the loop
wrote it: a sum over rows does not depend on their order, ``G @ W_i.T`` is computed
on ``g``'s rows and its result's blocks of a batch turned around (``[T, B, I]``, 8
times smaller than ``G`` at I=128, 4H=1024), and ``X.T @ G`` reads ``X``'s blocks
turned around instead. For the LSTM (medium size, one core, calls alternated,
2026-12-06, AMD EPYC of family 23) the zeros and the copy were 2.3 ms; its
forward+gradient took 114.8 instead of 117.8 ms, the custom cell's 73.0 instead of
74.4. It applies only where every use is one of those three (not yet the GRU's,
whose gate gradients are joined first). Where the number of steps is static (a
training batch's shape) PyTensor leaves out the zeros and reshapes ``g[::-1]``
itself, a copy all the same; :func:`local_reversed_rows_in_time_order` rewrites those
uses too: ``rnnc train``'s step on C (two layers of 128, batches of 50 x 50) took
0.968-0.973 of the time (one process, calls alternated, both build orders,
2026-12-06, Intel Xeon of family 6, model 207).

**Weight gradients summed after the loop** (:func:`local_sums_after_loop`). The
backward loop adds ``a_t.T @ g_t`` to a weight gradient at every step: a product
with only B=32 terms per sum, which reads and writes the whole ``[256, 1024]`` sum
(1 MB) at every step. Where both factors are already kept for every step (``a_t``
a sequence of the loop, such as the states ``h_{t-1}``, and ``g_t`` one of its
per-step outputs, such as the gates' gradients that the input product's gradient
needs), the rewrite::

    Scan(states=[S], S_t = S_{t-1} + a_t.T @ g_t)[-1]
    ->  S_0 + reshape(A, [T*B, K]).T @ reshape(G, [T*B, N])

computes the sum as one product after the loop (``S_0 +`` left out where ``S_0`` is
zeros, as a gradient's sum starts; K = T*B terms per sum; built as
BLAS's ``Dot22``, since PyTensor's rewrites that would make a ``Dot`` one have run:
on the Intel Xeon of 2026-12-06 the ``Dot``, computed by NumPy's OpenBLAS, took 20.4
ms, the MKL ``Dot22`` 16.1) and the loop drops the state (PyTensor's
``scan_remove_unused`` runs after). PyTensor's own
``scan_pushout_add`` does it for any factors, keeping those the loop computes as new
per-step outputs; :func:`rnnc.compile.mode` leaves it out of the C mode because it
cost memory and, for the custom cell, time (1.024x). Here nothing new is kept. The
LSTM (medium size, forward+gradient, one core, calls alternated, AMD EPYC of family
25, 2026-12-06): 101.9 against 104.4 ms; at input size 1024, 301.2 against 304.7.
The GRU's and the custom cell's sums have a factor computed in the loop (``r * h``,
``f * h``) and stay in it. A sum over the rows of a per-step output (the gradient
of a bias added in the loop: ``S_t = S_{t-1} + sum(g_t, axis=0)``) is one sum over
the rows of ``reshape(G, [T*B, N])`` after the loop the same way.

**A buffer of its own for each state** (:func:`local_own_state_buffers`). An LSTM's
``h`` and ``c`` both start from zeros written into a new ``[T+1, B, H]`` buffer, and
PyTensor merges the two identical computations into one. Its ``scan_make_inplace``
then copies that buffer (``DeepCopyOp``, 3.3 MB) so that the loop can write each
state into its own; this rewrite, just before it, computes the buffer a second time
instead (an ``AllocEmpty`` and the write of the first step). The copy took 0.55-0.76
ms of the LSTM's forward+gradient on an Intel Xeon of family 6, model 207; without
it the LSTM took 0.983-0.989 of the time (one core, calls alternated, 2026-12-06).
Untraced states too: two weight-gradient sums of one shape that stay in the loop
(the custom cell's ``dW_hf`` and ``dW_hn``) start from views of one buffer of zeros,
which ``scan_make_inplace`` lets neither update in place, so every step's ``Gemm``
copied its sum first; with a buffer each, the custom cell of ``benchmarks/`` took
0.980 of the time (forward+gradient, Zen 4).

All run with PyTensor's C rewrites only (tag ``cxx_only``), after its scan rewrites
and before the in-place ones; XLA and Numba choose their own layouts and buffers.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytensor.scalar as ps
import pytensor.tensor as pt
from pytensor.graph.basic import Apply, Constant, equal_computations
from pytensor.graph.op import Op
from pytensor.graph.replace import graph_replace
from pytensor.graph.rewriting.basic import dfs_rewriter, node_rewriter
from pytensor.link.c.op import COp
from pytensor.scan.op import Scan
from pytensor.scan.rewriting.io import scan_remove_unused
from pytensor.scan.rewriting.trace import scan_sit_sot_to_untraced
from pytensor.tensor.basic import Alloc, AllocEmpty, ScalarFromTensor
from pytensor.tensor.blas import Dot22
from pytensor.tensor.elemwise import DimShuffle, Elemwise
from pytensor.tensor.extra_ops import cpu_contiguous
from pytensor.tensor.math import Dot, Sum
from pytensor.tensor.shape import Reshape, SpecifyShape, specify_shape
from pytensor.tensor.subtensor import IncSubtensor, Subtensor, get_idx_list

__all__ = [
    "PadRows",
    "RowMajorCopy",
    "local_contiguous_invariants",
    "local_elemwise_of_transposes",
    "local_gradients_in_time_order",
    "local_own_state_buffers",
    "local_reversed_rows_in_time_order",
    "local_sums_after_loop",
    "local_transposed_sums",
    "local_untraced_sums",
    "rebuilt_scan",
    "register",
]

_registered = False


def _transposed(var) -> bool:
    """Whether ``var`` is a view of another array with its axes in another order."""
    owner = var.owner
    if owner is None or not isinstance(owner.op, DimShuffle):
        return False
    axes = [a for a in owner.op.new_order if a != "x"]
    return len(axes) >= 2 and axes != sorted(axes)


#: Rows whose length in bytes is a multiple of this are padded (:class:`PadRows`).
ALIASED_ROW_BYTES = 2048
#: What a padded row gets: one cache line.
ROW_PAD_BYTES = 64
#: The side of the square tiles :class:`RowMajorCopy` copies a matrix by.
TILE = 8


class PadRows(Op):
    """A copy of a matrix whose rows lie :data:`ROW_PAD_BYTES` further apart than
    their length (a view of the first columns of a wider buffer)."""

    __props__ = ()

    def make_node(self, x):
        x = pt.as_tensor_variable(x)
        return Apply(self, [x], [x.type()])

    def perform(self, node, inputs, outputs):
        (x,) = inputs
        buffer = np.empty((x.shape[0], x.shape[1] + ROW_PAD_BYTES // x.itemsize), x.dtype)
        buffer[:, : x.shape[1]] = x
        outputs[0][0] = buffer[:, : x.shape[1]]

    def infer_shape(self, fgraph, node, shapes):
        return shapes


class RowMajorCopy(COp):
    """A matrix copied into row-major order, by tiles of :data:`TILE` x :data:`TILE`
    elements: a transposed view of ``[256, 1024]`` float32 in 200-230 us, where
    NumPy's copy (``cpu_contiguous``) reads down its 4 KB-apart rows for 1.87 ms
    (every read in the same few cache sets; see the module)."""

    __props__ = ()

    def make_node(self, x):
        x = pt.as_tensor_variable(x)
        if x.ndim != 2 or x.dtype not in ("float32", "float64"):
            raise TypeError("RowMajorCopy takes a float32 or float64 matrix")
        return Apply(self, [x], [x.type()])

    def perform(self, node, inputs, outputs):
        outputs[0][0] = np.ascontiguousarray(inputs[0])

    def infer_shape(self, fgraph, node, shapes):
        return shapes

    def c_code_cache_version(self):
        return (1,)

    def c_code(self, node, name, inames, onames, sub):
        (x,), (z,), fail = inames, onames, sub["fail"]
        real = "npy_" + node.inputs[0].dtype
        typenum = "NPY_FLOAT32" if real == "npy_float32" else "NPY_FLOAT64"
        return f"""
{{
    const npy_intp R = PyArray_DIMS({x})[0], C = PyArray_DIMS({x})[1];
    const npy_intp s0 = PyArray_STRIDES({x})[0], s1 = PyArray_STRIDES({x})[1];
    if (!{z} || PyArray_NDIM({z}) != 2 || PyArray_DIMS({z})[0] != R
        || PyArray_DIMS({z})[1] != C || !PyArray_IS_C_CONTIGUOUS({z})) {{
        Py_XDECREF({z});
        {z} = (PyArrayObject*)PyArray_EMPTY(2, PyArray_DIMS({x}), {typenum}, 0);
        if (!{z}) {{ {fail} }}
    }}
    const char* src = PyArray_BYTES({x});
    {real}* dst = ({real}*)PyArray_DATA({z});
    for (npy_intp ib = 0; ib < R; ib += {TILE}) {{
        const npy_intp ie = ib + {TILE} < R ? ib + {TILE} : R;
        for (npy_intp jb = 0; jb < C; jb += {TILE}) {{
            const npy_intp je = jb + {TILE} < C ? jb + {TILE} : C;
            for (npy_intp i = ib; i < ie; i++)
                for (npy_intp j = jb; j < je; j++)
                    dst[i * C + j] = *(const {real}*)(src + i * s0 + j * s1);
        }}
    }}
}}
"""


def _row_major(var):
    """``var`` copied into row-major order: :class:`RowMajorCopy` for a float
    matrix, PyTensor's ``cpu_contiguous`` for anything else."""
    if var.ndim == 2 and var.dtype in ("float32", "float64"):
        return RowMajorCopy()(var)
    return cpu_contiguous(var)


def _aliased_rows(var) -> bool:
    """Whether ``var`` is a matrix of more than one row whose rows, stored one after
    the other, are a multiple of :data:`ALIASED_ROW_BYTES` long (a bias's one row,
    ``[1, 4H]``, has no other row to alias)."""
    shape = var.type.shape
    return (
        len(shape) == 2
        and shape[0] != 1
        and bool(shape[1])
        and (shape[1] * np.dtype(var.dtype).itemsize) % ALIASED_ROW_BYTES == 0
    )


@node_rewriter([Scan])
def local_contiguous_invariants(fgraph, node: Apply):
    """Give a scan its transposed loop invariants as row-major copies, and those
    whose rows are a multiple of 2 KB long with padded rows (see the module); not
    those that :mod:`rnnc.mklpacked`'s pass packs, which packing lays out."""
    from rnnc.mklpacked import packs_every_use

    op = node.op
    non_seqs = op.outer_non_seqs(node.inputs)
    start = len(node.inputs) - len(non_seqs)
    inputs = list(node.inputs)
    changed = False
    inner_non_seqs = op.inner_non_seqs(op.inner_inputs)
    for i, (var, inner) in enumerate(zip(non_seqs, inner_non_seqs, strict=True), start):
        if var.owner is not None and isinstance(var.owner.op, PadRows):
            continue
        if packs_every_use(op, inner):
            continue
        if _transposed(var):
            inputs[i] = var = _row_major(var)
            changed = True
        if _aliased_rows(var):
            inputs[i] = PadRows()(var)
            changed = True
    if not changed:
        return None
    return node.op.make_node(*inputs).outputs


def _only_last_used(fgraph, var) -> bool:
    """Whether every use of ``var`` is ``var[-1]``."""
    clients = fgraph.clients[var]
    for client, _ in clients:
        if not isinstance(client.op, Subtensor):
            return False
        idx = get_idx_list(client.inputs, client.op.idx_list)
        if len(idx) != 1 or not isinstance(idx[0], Constant) or idx[0].data != -1:
            return False
    return bool(clients)


@node_rewriter([Scan])
def local_untraced_sums(fgraph, node: Apply):
    """Make the states of which only the last value is used untraced (see the module).

    The buffer of each such state is narrowed to its first slot, the initial value,
    with a static length of one: PyTensor's ``scan_sit_sot_to_untraced`` then makes it
    an untraced state and its output ``expand_dims(final, 0)``, whose ``[-1]`` is the
    value the two-slot buffer's ``[-1]`` was.
    """
    info = node.op.info
    if info.as_while or not info.n_sit_sot:
        return None
    first = 1 + info.n_seqs + info.n_mit_mot + info.n_mit_sot
    inputs = list(node.inputs)
    changed = False
    for k, out in enumerate(node.op.outer_sitsot_outs(node.outputs)):
        if _only_last_used(fgraph, out):
            buffer = inputs[first + k]
            inputs[first + k] = specify_shape(buffer[:1], (1, *buffer.type.shape[1:]))
            changed = True
    if not changed:
        return None
    narrowed = node.op.make_node(*inputs)
    replaced = scan_sit_sot_to_untraced.transform(fgraph, narrowed)
    if not replaced:  # PyTensor declined: keep the scan as it was
        return None
    return [replaced[out] for out in narrowed.outputs]


def _wide_sum(op: Scan, state, update) -> bool:
    """Whether the step's ``update`` of an untraced ``state`` is ``state + ...`` (its
    one use), and ``state`` a matrix of static shape with fewer rows than columns."""
    shape = state.type.shape
    if len(shape) != 2 or None in shape or shape[0] >= shape[1]:
        return False
    return _adds_to(op, state, update)


def _adds_to(op: Scan, state, update) -> bool:
    """Whether the step's ``update`` of ``state`` is an addition, ``state``'s one use."""
    uses = [client for client, _ in op.fgraph.clients[state]]
    return (
        update.owner is not None
        and uses == [update.owner]
        and isinstance(update.owner.op, Elemwise)
        and isinstance(update.owner.op.scalar_op, ps.Add)
    )


def _filled_with(var):
    """The one value that ``var``, a part of an ``alloc`` of one value, holds (a
    broadcastable variable); else None."""
    source = var
    while source.owner is not None and isinstance(source.owner.op, Subtensor | SpecifyShape):
        source = source.owner.inputs[0]
    if source.owner is not None and isinstance(source.owner.op, Alloc):
        value = source.owner.inputs[0]
        if all(value.type.broadcastable):
            return value
    return None


def _zeros(var) -> bool:
    """Whether ``var`` is a part of an ``alloc`` of the constant zero."""
    value = _filled_with(var)
    return isinstance(value, Constant) and not np.any(value.data)


def _transposed_copy(var):
    """``var.T`` in row-major order; a new ``alloc`` of the transposed shape when
    ``var`` is a part of an ``alloc`` of one value (a sum's zeros: transposing them
    would copy 1 MB for nothing)."""
    value = _filled_with(var)
    if value is not None:
        return pt.alloc(value.squeeze(), *var.type.shape[::-1])
    return _row_major(var.T)


def rebuilt_scan(op: Scan, inputs: list, outputs: list, info: Any) -> Scan:
    """A scan like ``op`` (mode, name, truncation, garbage collection) with another
    step: ``inputs`` and ``outputs`` of its inner graph, described by ``info``."""
    return Scan(
        inputs,
        outputs,
        info,
        mode=op.mode,
        profile=op.profile,
        truncate_gradient=op.truncate_gradient,
        name=op.name,
        allow_gc=op.allow_gc,
    )


@node_rewriter([Scan])
def local_transposed_sums(fgraph, node: Apply):
    """Keep each wide untraced state of a scan transposed (see the module).

    Inside the loop the state ``S`` is read as ``S2.T`` and written as ``new.T``;
    PyTensor's rewrites of the step then move the transposes into the product
    (``(S2.T + x.T @ g).T`` is ``S2 + g.T @ x``) and add it in place into ``S2``.
    """
    op = node.op
    info = op.info
    if info.as_while or not info.n_untraced_sit_sot:
        return None
    inner_ins = op.inner_untraced_sit_sot(op.inner_inputs)
    inner_outs = op.inner_untraced_sit_sot_outs(op.inner_outputs)
    picked = [k for k, var in enumerate(inner_ins) if _wide_sum(op, var, inner_outs[k])]
    if not picked:
        return None
    stand_ins = {
        inner_ins[k]: pt.tensor(dtype=inner_ins[k].dtype, shape=inner_ins[k].type.shape[::-1])
        for k in picked
    }
    outputs = graph_replace(
        list(op.inner_outputs), {old: new.T for old, new in stand_ins.items()}, strict=False
    )
    first_out = len(op.inner_outputs) - info.n_untraced_sit_sot
    for k in picked:
        outputs[first_out + k] = outputs[first_out + k].T
    inputs = [stand_ins.get(var, var) for var in op.inner_inputs]
    new_op = rebuilt_scan(op, inputs, outputs, info)
    outer = list(node.inputs)
    first_in = 1 + info.n_seqs + info.n_mit_mot + info.n_mit_sot + info.n_sit_sot
    for k in picked:
        outer[first_in + k] = _transposed_copy(outer[first_in + k])
    new_outs = new_op(*outer, return_list=True)
    first = info.n_mit_mot + info.n_mit_sot + info.n_sit_sot + info.n_nit_sot
    for k in picked:
        new_outs[first + k] = new_outs[first + k].T
    return new_outs


def _matrix_transpose(var) -> bool:
    owner = var.owner
    return owner is not None and isinstance(owner.op, DimShuffle) and owner.op.new_order == (1, 0)


@node_rewriter([Elemwise])
def local_elemwise_of_transposes(fgraph, node: Apply):
    """``f(a.T, b.T)`` as ``f(a, b).T`` (see the module): the elementwise loop reads
    and writes row-major arrays, and the product that takes its result reads the
    transposed view as it is."""
    if node.outputs[0].ndim != 2:
        return None
    inputs = []
    for var in node.inputs:
        if _matrix_transpose(var):
            inputs.append(var.owner.inputs[0])
        elif all(var.type.broadcastable):  # a number: the same either way
            inputs.append(var)
        else:
            return None
    if not any(v is not w for v, w in zip(inputs, node.inputs, strict=True)):
        return None
    return [out.T for out in node.op(*inputs, return_list=True)]


def _scalar(var):
    """``var`` without the ``ScalarFromTensor`` that may wrap it."""
    if var is not None and var.owner is not None and isinstance(var.owner.op, ScalarFromTensor):
        return var.owner.inputs[0]
    return var


def _reversed_steps(var):
    """``g`` where ``var`` is ``g[::-1]``, a 3-D output of a scan, else None."""
    owner = var.owner
    if owner is None or not isinstance(owner.op, Subtensor):
        return None
    index = get_idx_list(owner.inputs, owner.op.idx_list)
    if len(index) != 1 or not isinstance(index[0], slice):
        return None
    first = index[0]
    step = getattr(first.step, "data", first.step)
    if first.start is not None or first.stop is not None or step != -1:
        return None
    g = owner.inputs[0]
    return g if g.owner is not None and isinstance(g.owner.op, Scan) else None


@node_rewriter([IncSubtensor])
def local_gradients_in_time_order(fgraph, node: Apply):
    """Multiply a backward loop's per-step gradients as the loop wrote them, reversed
    in time, instead of copied into time order first (see the module)."""
    op = node.op
    zeros, y, *_ = node.inputs
    index = get_idx_list(node.inputs[1:], op.idx_list)  # after x and y
    if y.ndim != 3 or any(y.type.broadcastable) or len(index) != 1:
        return None
    first = index[0]
    if not isinstance(first, slice) or first.start is not None or first.step is not None:
        return None
    g = _reversed_steps(y)
    steps = _scalar(first.stop)
    if g is None or steps is None or _scalar(g.owner.inputs[0]) is not steps:
        return None  # the loop's steps are not the slice's length
    alloc = zeros.owner
    if alloc is None or not isinstance(alloc.op, Alloc) or len(alloc.inputs) != 4:
        return None
    value = alloc.inputs[0]
    if not isinstance(value, Constant) or np.any(value.data != 0) or alloc.inputs[1] is not steps:
        return None
    clients = fgraph.clients[node.outputs[0]]
    reshape = clients[0][0] if len(clients) == 1 else None
    if reshape is None or not isinstance(reshape.op, Reshape) or reshape.outputs[0].ndim != 2:
        return None
    return _in_time_order(fgraph, reshape, g)


@node_rewriter([Reshape])
def local_reversed_rows_in_time_order(fgraph, node: Apply):
    """The same for ``reshape(g[::-1])`` itself, where PyTensor, knowing the number of
    steps, left out the copy into zeros (a sequence of static length)."""
    source = node.inputs[0]
    if source.owner is not None and isinstance(source.owner.op, SpecifyShape):
        source = source.owner.inputs[0]
    g = _reversed_steps(source)
    if g is None or g.ndim != 3 or node.outputs[0].ndim != 2:
        return None
    return _in_time_order(fgraph, node, g)


def _in_time_order(fgraph, reshape: Apply, g):
    """The uses of ``reshape``'s rows of ``g``'s steps turned around (``g[::-1]``) as
    sums and products of ``g``'s rows as they are; None unless every use is one."""
    rows = reshape.outputs[0]
    width = rows.type.shape[1]
    if width is None or width != g.type.shape[2]:
        return None  # not rows of steps times batch (unknown, or other axes merged)
    flat = reshape.op(g, reshape.inputs[1])  # a view: g is one block of memory
    replaced = {}
    for client, position in fgraph.clients[rows]:
        out = client.outputs[0]
        if isinstance(client.op, Sum) and client.op.axis == (0,):
            replaced[out] = client.op(flat)  # the rows' order does not change a sum
        elif isinstance(client.op, Dot22) and position == 0:
            replaced[out] = _rows_reversed(client.op(flat, client.inputs[1]), g)
        elif isinstance(client.op, Dot22) and position == 1:
            left = client.inputs[0].owner  # the transpose of a matrix of rows
            if left is None or not isinstance(left.op, DimShuffle) or left.op.new_order != (1, 0):
                return None
            replaced[out] = client.op(_rows_reversed(left.inputs[0], g).T, flat)
        else:
            return None
    return replaced or None


def _rows_reversed(rows, g):
    """The matrix ``rows``, whose rows are ``g``'s steps times its batch, with its
    blocks of a batch's rows in the opposite order of the steps."""
    by_step = rows.reshape((g.shape[0], g.shape[1], rows.shape[1]))
    return by_step[::-1].reshape(rows.shape)


def _views_of_buffer(var):
    """The nodes ``var`` is computed by from a fresh buffer (``alloc(...)``), through
    views and writes (``set_subtensor(alloc(...)[...], x)``, ``alloc(...)[0]``,
    ``specify_shape``), the buffer's first; else None."""
    chain = []
    while var.owner is not None and isinstance(
        var.owner.op, IncSubtensor | Subtensor | SpecifyShape
    ):
        chain.append(var.owner)
        var = var.owner.inputs[0]
    if var.owner is None or not isinstance(var.owner.op, Alloc | AllocEmpty):
        return None
    return [var.owner, *reversed(chain)]


def _allocated_again(chain):
    """The last value of ``chain`` (:func:`_views_of_buffer`) computed again from a
    new buffer."""
    buffer, *views = chain
    fresh = buffer.op.make_node(*buffer.inputs).outputs[0]
    for owner in views:
        fresh = owner.op.make_node(fresh, *owner.inputs[1:]).outputs[0]
    return fresh


@node_rewriter([Scan])
def local_own_state_buffers(fgraph, node: Apply):
    """Give each state of a scan (untraced ones too) a buffer of its own where several
    start from the same one (see the module)."""
    op = node.op
    start = 1 + op.info.n_seqs
    stop = start + op.info.n_mit_mot + op.info.n_mit_sot + op.info.n_sit_sot
    untraced = op.untraced_sit_sot_arg_offset
    slots = [*range(start, stop), *range(untraced, untraced + op.info.n_untraced_sit_sot)]
    inputs = list(node.inputs)
    buffers = set()  # the buffers of the slots before
    changed = False
    for i in slots:
        chain = _views_of_buffer(inputs[i])
        if chain is None:
            continue
        if chain[0] in buffers:
            inputs[i] = _allocated_again(chain)
            changed = True
        buffers.add(chain[0])
    return op.make_node(*inputs).outputs if changed else None


def register() -> None:
    """Add the rewrites to PyTensor's C rewrites (once)."""
    global _registered
    if _registered:
        return
    from pytensor.compile.mode import optdb

    optdb.register(
        "rnnc_scan_for_c",
        dfs_rewriter(
            local_gradients_in_time_order,
            local_reversed_rows_in_time_order,
            local_contiguous_invariants,
            local_untraced_sums,
            local_transposed_sums,
            local_elemwise_of_transposes,
        ),
        "fast_run",
        "cxx_only",
        position=49.3,  # after the scan and BLAS rewrites, before in-place (49.5)
    )
    optdb.register(
        "rnnc_sums_after_loop",
        dfs_rewriter(local_sums_after_loop),
        "fast_run",
        "cxx_only",
        position=49.28,  # before the untraced sums take the states it removes
    )
    optdb.register(
        "rnnc_sums_after_loop_cleanup",
        dfs_rewriter(scan_remove_unused),  # the states whose sum moved out
        "fast_run",
        "cxx_only",
        position=49.29,
    )
    optdb.register(
        "rnnc_own_state_buffers",
        dfs_rewriter(local_own_state_buffers),
        "fast_run",
        "cxx_only",
        position=50.4,  # after the in-place rewrites of elementwise work, before scan's
    )
    _registered = True


def _per_step(op: Scan, node: Apply, var):
    """The outer ``[steps, ...]`` array whose step ``t`` the inner ``var`` is: a
    sequence (its first ``steps``) or a per-step output of the loop; else None."""
    seqs = op.inner_seqs(op.inner_inputs)
    if var in seqs:
        return op.outer_seqs(node.inputs)[seqs.index(var)][: node.inputs[0]]
    outs = op.inner_nitsot_outs(op.inner_outputs)
    for inner, outer in zip(outs, op.outer_nitsot_outs(node.outputs), strict=True):
        if inner is var or equal_computations([inner], [var]):
            return outer
    return None


def _rows(var):
    """A ``[steps, batch, k]`` array as ``[steps * batch, k]``."""
    return var.reshape((var.shape[0] * var.shape[1], var.shape[2]))


def _product(x, y):
    """``x @ y`` of two matrices, as BLAS's ``Dot22`` where their dtypes allow it:
    this pass runs after PyTensor's rewrites that would make it one."""
    if x.dtype == y.dtype and x.dtype in ("float32", "float64"):
        return Dot22()(x, y)
    return pt.dot(x, y)


def _without_broadcast_axes(var):
    """``var`` under DimShuffles that only add or drop broadcast axes (no transposition)
    back to a value of its own type: ``squeeze(expand_dims(x, 0), 0)`` is ``x``."""
    x = var
    while x.owner is not None and isinstance(x.owner.op, DimShuffle):
        if list(x.owner.op.shuffle) != sorted(x.owner.op.shuffle):
            break
        x = x.owner.inputs[0]
        if x.type == var.type:
            return x
    return var


def _summed_after(op: Scan, node: Apply, term: Apply):
    """The sum over the steps of the step's ``term``, computed after the loop: a
    product ``a_t.T @ g_t`` or a sum over the rows ``sum(g_t, axis=0)`` (a bias's
    gradient) of per-step values; None for any other term."""
    if isinstance(term.op, Dot) and _matrix_transpose(term.inputs[0]):
        a = _per_step(op, node, term.inputs[0].owner.inputs[0])
        g = _per_step(op, node, term.inputs[1])
        if a is None or g is None or a.ndim != 3 or g.ndim != 3:
            return None
        return _product(_rows(a).T, _rows(g))
    if isinstance(term.op, DimShuffle):  # a sum's ExpandDims, then a Squeeze
        inner = _without_broadcast_axes(term.outputs[0])
        if inner is term.outputs[0] or inner.owner is None:
            return None
        return _summed_after(op, node, inner.owner)
    if isinstance(term.op, Sum) and term.op.axis == (0,) and term.inputs[0].ndim == 2:
        g = _per_step(op, node, term.inputs[0])
        if g is None:
            return None
        return _rows(g).sum(axis=0, dtype=term.op.dtype, acc_dtype=term.op.acc_dtype)
    return None


@node_rewriter([Scan])
def local_sums_after_loop(fgraph, node: Apply):
    """Compute each sum over the steps ``S_T = S_0 + sum_t a_t.T @ g_t`` whose terms'
    factors are sequences or per-step outputs of the loop as one product after it
    (see the module)."""
    op = node.op
    info = op.info
    if info.as_while or op.truncate_gradient != -1 or not info.n_sit_sot:
        return None
    inner_states = op.inner_sitsot(op.inner_inputs)
    updates = op.inner_sitsot_outs(op.inner_outputs)
    outer_states = op.outer_sitsot_outs(node.outputs)
    buffers = op.outer_sitsot(node.inputs)
    inner_clients = op.fgraph.clients
    replaced = {}
    for state, update, out, buffer in zip(
        inner_states, updates, outer_states, buffers, strict=True
    ):
        if not _only_last_used(fgraph, out) or len(fgraph.clients[out]) != 1:
            continue
        add = update.owner
        if not _adds_to(op, state, update) or len(add.inputs) != 2 or state not in add.inputs:
            continue
        term = add.inputs[1 - add.inputs.index(state)]
        if term.owner is None or len(inner_clients[term]) != 1:
            continue
        total = _summed_after(op, node, term.owner)
        if total is None:
            continue
        if not _zeros(buffer):  # a gradient's sum starts from zeros: nothing to add
            total = buffer[0] + total
        (last,) = (client.outputs[0] for client, _ in fgraph.clients[out])
        replaced[last] = specify_shape(total.astype(last.dtype), last.type.shape)
    return replaced or None
