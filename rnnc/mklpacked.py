"""A loop's products by a matrix it does not change, with MKL's packed GEMM.

Before it multiplies, a GEMM copies its right operand into panels laid out for its
kernel (it *packs* it). In a scan's step ``h_t = f(x_t, h_{t-1} @ W)`` that is the same
copy of the same ``W`` at every step. MKL can pack once and multiply many times
(``cblas_?gemm_pack`` then ``cblas_?gemm_compute``), which is what oneDNN's RNN
primitive, behind PyTorch's LSTM on Intel CPUs, does. On an Intel Xeon (family 6,
model 207, one core, MKL 2026.2, ``MKL_CBWR=AUTO,STRICT``), in one process:

=====================================  ========  ========  ==============
product                                sgemm     packed    torch.mm
=====================================  ========  ========  ==============
``[32, 256] @ [256, 1024]``            141 us    112 us    135 us
``[32, 1024] @ [1024, 256]``           149 us    117 us    143 us
=====================================  ========  ========  ==============

The rewrite :func:`local_packed_products`, for a scan::

    Scan(step: ... dot(a, W) ..., non_sequences=[W])
      ->  Scan(step: ... PackedDot(a, W, s) ..., non_sequences=[W, s = CallStamp(W)])

``CallStamp`` gives a new number at every call of the compiled function; a
:class:`PackedDot` node keeps ``W`` packed in a buffer of its own (an MKL packed
buffer cannot be copied or moved, so it is no value of the graph) and packs again
when the number changes: once per call, at the first step. Between calls the
weights may have changed in place (an optimiser's update), so a buffer is never
reused across calls. Each node keeps its buffer while the compiled function lives:
MKL asks 8-16 MB for any of the matrices measured, ``[256, 256]`` included.

The products of whole cells (medium size, one process compiling both, calls
alternated): LSTM forward+gradient 0.90-0.91 of the time without packing, GRU 0.93,
the custom cell of ``benchmarks/`` 0.95-0.96 (docs/backends.md has the rest, and why
the buffer is allocated as it is).

Only where PyTensor's C backend links MKL (:func:`rnnc.blas.linked_mkl`), for
``float32`` and ``float64``; ``RNNC_MKL_PACKED=0`` switches it off.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
from collections.abc import Callable
from typing import Any

import numpy as np
import pytensor.tensor as pt
from pytensor.graph.basic import Apply
from pytensor.graph.op import Op
from pytensor.graph.rewriting.basic import dfs_rewriter, node_rewriter
from pytensor.link.c.op import COp
from pytensor.scan.op import Scan
from pytensor.tensor.math import Dot

from rnnc.cscan import rebuilt_scan
from rnnc.env import switched_off

__all__ = [
    "CallStamp",
    "NodeBuffer",
    "PackedDot",
    "StampedProduct",
    "in_use",
    "local_packed_products",
    "packed_products",
    "packed_uses",
    "packs_every_use",
    "product_c",
    "register",
]

_stamps = itertools.count(1)


class CallStamp(Op):
    """A number no earlier evaluation of any ``CallStamp`` gave (an ``int64``
    scalar). Its input only ties it to the matrix it stamps; it is never folded
    into a constant."""

    __props__ = ()

    def make_node(self, x: Any) -> Apply:
        return Apply(self, [pt.as_tensor_variable(x)], [pt.lscalar()])

    def perform(self, node: Any, inputs: Any, outputs: Any) -> None:
        outputs[0][0] = np.array(next(_stamps), dtype="int64")

    def do_constant_folding(self, fgraph: Any, node: Any) -> bool:
        return False

    def infer_shape(self, fgraph: Any, node: Any, shapes: Any) -> Any:
        return [()]


_DECLARATIONS = """
extern "C" {
size_t cblas_sgemm_pack_get_size(int, int, int, int);
size_t cblas_dgemm_pack_get_size(int, int, int, int);
void cblas_sgemm_pack(int, int, int, int, int, int, float, const float*, int, float*);
void cblas_dgemm_pack(int, int, int, int, int, int, double, const double*, int, double*);
void cblas_sgemm_compute(int, int, int, int, int, int, const float*, int, const float*,
                         int, float, float*, int);
void cblas_dgemm_compute(int, int, int, int, int, int, const double*, int, const double*,
                         int, double, double*, int);
}
/* CBLAS_LAYOUT, CBLAS_TRANSPOSE and CBLAS_IDENTIFIER values (mkl_cblas.h) */
#define RNNC_ROW_MAJOR 101
#define RNNC_NO_TRANS 111
#define RNNC_TRANS 112
#define RNNC_PACKED 151
#define RNNC_B_MATRIX 162
"""


class NodeBuffer(COp):
    """A C op whose node keeps a buffer of its own between calls: ``buffer_`` (NULL
    at first) and ``capacity_`` (its bytes) in its C struct, freed with the node, and
    the fields ``STRUCT`` names besides (C type, name, initial value)."""

    STRUCT: tuple[tuple[str, str, str], ...] = ()

    def _fields(self) -> tuple[tuple[str, str, str], ...]:
        return (("void*", "buffer", "NULL"), ("size_t", "capacity", "0"), *self.STRUCT)

    def c_support_code_struct(self, node: Any, name: str) -> str:
        return " ".join(f"{kind} {field}_{name};" for kind, field, _ in self._fields())

    def c_init_code_struct(self, node: Any, name: str, sub: Any) -> str:
        return " ".join(f"{field}_{name} = {value};" for _, field, value in self._fields())

    def c_cleanup_code_struct(self, node: Any, name: str) -> str:
        return f"free(buffer_{name});"

    @staticmethod
    def grow_c(name: str, size: str, release: str, fail: str) -> str:
        """C that makes the node's buffer hold ``size`` bytes at least (64-byte aligned,
        as MKL's packed matrices need; the old contents dropped); out of memory, it
        runs ``release`` and ``fail``."""
        buffer, capacity = f"buffer_{name}", f"capacity_{name}"
        return f"""
        if ({size} > {capacity}) {{
            free({buffer});
            if (posix_memalign(&{buffer}, 64, {size})) {buffer} = NULL;
            {capacity} = {buffer} ? {size} : 0;
            if (!{buffer}) {{ {release}PyErr_NoMemory(); {fail} }}
        }}"""


class StampedProduct(NodeBuffer):
    """``a @ w`` for matrices ``a`` ``[M, K]`` and ``w`` ``[K, N]`` of one of
    ``DTYPES``, whose node keeps a buffer made from ``w`` once for every new ``stamp``
    (``buffer_``, ``capacity_``, ``stamp_`` and ``m_`` in its C struct: the buffer,
    its bytes, and the stamp and rows of ``a`` it was made for). Python's
    ``perform`` is NumPy's product."""

    __props__ = ()
    DTYPES: tuple[str, ...] = ("float32", "float64")
    STRUCT = (("npy_int64", "stamp", "-1"), ("int", "m", "-1"))

    def make_node(self, a: Any, w: Any, stamp: Any) -> Apply:
        a, w, stamp = (pt.as_tensor_variable(v) for v in (a, w, stamp))
        name = type(self).__name__
        if a.ndim != 2 or w.ndim != 2 or stamp.ndim != 0 or a.dtype != w.dtype:
            raise TypeError(f"{name} takes two matrices of one dtype and a scalar stamp")
        if a.dtype not in self.DTYPES:
            raise TypeError(f"{name} takes {' or '.join(self.DTYPES)} matrices, not {a.dtype}")
        out = pt.tensor(dtype=a.dtype, shape=(a.type.shape[0], w.type.shape[1]))
        return Apply(self, [a, w, stamp], [out])

    def perform(self, node: Any, inputs: Any, outputs: Any) -> None:
        a, w, _ = inputs
        outputs[0][0] = np.asarray(a @ w, dtype=node.outputs[0].dtype)

    def infer_shape(self, fgraph: Any, node: Any, shapes: Any) -> Any:
        return [(shapes[0][0], shapes[1][1])]


class PackedDot(StampedProduct):
    """``a @ w`` with ``w`` packed by MKL once for every new ``stamp`` (see the
    module)."""

    def c_support_code(self, **kwargs: Any) -> str:
        return _DECLARATIONS

    def c_libraries(self, **kwargs: Any) -> list[str]:
        from pytensor.tensor.blas import ldflags

        return ldflags()

    def c_lib_dirs(self, **kwargs: Any) -> list[str]:
        from pytensor.tensor.blas import ldflags

        return ldflags(libs=False, libs_dir=True)

    def c_compile_args(self, **kwargs: Any) -> list[str]:
        from pytensor.tensor.blas import ldflags

        return ldflags(libs=False, flags=True)

    def c_code_cache_version(self) -> tuple[int, ...]:
        return (8,)

    def c_code(self, node: Any, name: str, inames: Any, onames: Any, sub: Any) -> str:
        a, w, stamp = inames
        (out,) = onames
        fail = sub["fail"]
        real = "float" if node.inputs[0].dtype == "float32" else "double"
        p = "s" if real == "float" else "d"
        typenum = "NPY_FLOAT32" if real == "float" else "NPY_FLOAT64"
        packed, seen, seen_m = (f"{v}_{name}" for v in ("buffer", "stamp", "m"))
        return product_c(
            "PackedDot",
            a,
            w,
            out,
            real,
            typenum,
            fail,
            f"""
        const npy_int64 stamp = ((npy_int64*)PyArray_DATA({stamp}))[0];
        if (stamp != {seen} || M != {seen_m} || !{packed}) {{
            PyArrayObject* w_own = NULL;
            int trans, ldw;
            const npy_intp s0 = PyArray_STRIDES(w)[0], s1 = PyArray_STRIDES(w)[1];
            if ((N <= 1 || s1 == es) && (K <= 1 || (s0 % es == 0 && s0 >= N * es))) {{
                trans = RNNC_NO_TRANS; ldw = (K > 1) ? (int)(s0 / es) : N;
            }} else if ((K <= 1 || s0 == es) && (N <= 1 || (s1 % es == 0 && s1 >= K * es))) {{
                trans = RNNC_TRANS; ldw = (N > 1) ? (int)(s1 / es) : K;
            }} else {{
                w_own = (PyArrayObject*)PyArray_NewCopy(w, NPY_CORDER);
                if (!w_own) {{ Py_XDECREF(a_own); {fail} }}
                w = w_own; trans = RNNC_NO_TRANS; ldw = N;
            }}
            const size_t size = cblas_{p}gemm_pack_get_size(RNNC_B_MATRIX, M, N, K);
            {self.grow_c(name, "size", "Py_XDECREF(a_own); Py_XDECREF(w_own); ", fail)}
            cblas_{p}gemm_pack(RNNC_ROW_MAJOR, RNNC_B_MATRIX, trans, M, N, K, 1.0,
                               ({real}*)PyArray_DATA(w), ldw, ({real}*){packed});
            {seen} = stamp;
            {seen_m} = M;
            Py_XDECREF(w_own);
        }}
        cblas_{p}gemm_compute(RNNC_ROW_MAJOR, RNNC_NO_TRANS, RNNC_PACKED, M, N, K,
                              ({real}*)PyArray_DATA(a), lda, ({real}*){packed}, N, 0.0,
                              ({real}*)PyArray_DATA({out}), N);
""",
        )


def product_c(
    op: str, a: str, w: str, out: str, real: str, typenum: str, fail: str, body: str
) -> str:
    """C code of a product ``out = a @ w`` of matrices whose ``body`` computes it. Before
    it: ``a`` as rows of unit stride (else a row-major copy, ``a_own``, which ``body``
    releases before it fails), ``M``, ``K``, ``N`` and ``lda`` (ints), ``es`` (the
    element's size) and ``out`` a C-contiguous ``[M, N]`` array; ``body`` runs only
    where ``M``, ``N`` and ``K`` are all positive."""
    return f"""
{{
    const npy_intp es = sizeof({real});
    PyArrayObject* a_own = NULL;
    PyArrayObject* a = {a};
    PyArrayObject* w = {w};
    const int M = (int)PyArray_DIMS(a)[0], K = (int)PyArray_DIMS(a)[1];
    const int N = (int)PyArray_DIMS(w)[1];
    if (PyArray_DIMS(w)[0] != K) {{
        PyErr_Format(PyExc_ValueError, "{op}: shapes (%d, %d) and (%d, %d) do not align",
                     M, K, (int)PyArray_DIMS(w)[0], N);
        {fail}
    }}
    /* a: rows of unit stride, else a row-major copy */
    if (!(K <= 1 || PyArray_STRIDES(a)[1] == es)
        || (M > 1 && (PyArray_STRIDES(a)[0] % es || PyArray_STRIDES(a)[0] < K * es))) {{
        a_own = (PyArrayObject*)PyArray_NewCopy(a, NPY_CORDER);
        if (!a_own) {{ {fail} }}
        a = a_own;
    }}
    const int lda = (M > 1) ? (int)(PyArray_STRIDES(a)[0] / es) : (K > 0 ? K : 1);
    npy_intp dims[2] = {{M, N}};
    if (!{out} || PyArray_NDIM({out}) != 2 || PyArray_DIMS({out})[0] != M
        || PyArray_DIMS({out})[1] != N || !PyArray_IS_C_CONTIGUOUS({out})) {{
        Py_XDECREF({out});
        {out} = (PyArrayObject*)PyArray_EMPTY(2, dims, {typenum}, 0);
        if (!{out}) {{ Py_XDECREF(a_own); {fail} }}
    }}
    if (M == 0 || N == 0) {{
        /* nothing to compute */
    }} else if (K == 0) {{
        memset(PyArray_DATA({out}), 0, (size_t)M * N * es);
    }} else {{{body}    }}
    Py_XDECREF(a_own);
}}
"""


def _packable(var: Any) -> bool:
    return var.ndim == 2 and var.dtype in ("float32", "float64")


@node_rewriter([Scan])
def local_packed_products(fgraph: Any, node: Apply) -> Any:
    """Multiply by each loop-invariant matrix of a scan through :class:`PackedDot`
    (see the module)."""
    if not in_use():
        return None
    return packed_products(node, PackedDot, _packable)


def packed_products(node: Apply, dot: type[Op], packable: Callable[[Any], bool]) -> Any:
    """The outputs of the scan ``node`` rebuilt with each product ``a @ W`` of its step
    by a loop-invariant matrix ``W`` (``a`` and ``W`` both ``packable``) computed as
    ``dot()(a, W, stamp)``, with a :class:`CallStamp` of ``W`` given to the loop;
    None where there is no such product, or the step has ``dot``'s already."""
    op = node.op
    if any(isinstance(n.op, dot) for n in op.fgraph.apply_nodes):
        return None
    graph = op.fgraph.clone()
    stamps = []
    inner_non_seqs = op.inner_non_seqs(list(graph.inputs))
    for inner, outer in zip(inner_non_seqs, op.outer_non_seqs(node.inputs), strict=True):
        uses = packed_uses(graph, inner, packable)
        if not uses:
            continue
        stamp = pt.lscalar(f"{inner.name or 'w'}_stamp")
        graph.add_input(stamp)
        stamps.append(CallStamp()(outer))
        for use in uses:  # replaced in the graph: later products see earlier ones
            graph.replace(use.outputs[0], dot()(use.inputs[0], inner, stamp))
    if not stamps:
        return None
    info = dataclasses.replace(op.info, n_non_seqs=op.info.n_non_seqs + len(stamps))
    new_op = rebuilt_scan(op, list(graph.inputs), list(graph.outputs), info)
    return new_op(*node.inputs, *stamps, return_list=True)


def packed_uses(graph: Any, inner: Any, packable: Callable[[Any], bool]) -> list[Apply]:
    """The products ``a @ inner`` of a step's ``graph`` that :func:`packed_products`
    computes with ``inner`` packed (``a`` and ``inner`` both ``packable``)."""
    if not packable(inner):
        return []
    return [
        client
        for client, i in graph.clients[inner]
        if i == 1 and isinstance(client.op, Dot) and packable(client.inputs[0])
    ]


def packs_every_use(op: Scan, inner: Any) -> bool:
    """Whether :func:`register`'s pass will pack the loop invariant ``inner`` of the
    scan ``op`` for every use it has: :class:`PackedDot` or
    :class:`rnnc.packedgemm.PanelDot` in use, and ``inner`` used by the step only as
    the right operand of products that the op in use takes. Such an invariant needs
    no row-major copy and no padded rows before the loop
    (:func:`rnnc.cscan.local_contiguous_invariants`): packing lays it out, transposed
    or not."""
    from rnnc import packedgemm

    if in_use():
        packable = _packable
    elif packedgemm.in_use():
        packable = packedgemm.float32_matrix
    else:
        return False
    uses = packed_uses(op.fgraph, inner, packable)
    return bool(uses) and len(uses) == len(op.fgraph.clients[inner])


def in_use() -> bool:
    """Whether the rewrite is on: PyTensor's C backend links MKL with 32-bit integers
    (the C code declares MKL's functions so; ``MKL_INTERFACE_LAYER=ILP64`` makes
    ``libmkl_rt`` take 64-bit ones) and ``RNNC_MKL_PACKED`` does not switch it off."""
    from rnnc import blas

    ilp64 = "ILP64" in os.environ.get("MKL_INTERFACE_LAYER", "").upper()
    return not switched_off("RNNC_MKL_PACKED") and not ilp64 and blas.linked_mkl()


_registered = False


def register() -> bool:
    """Add :func:`local_packed_products` and :func:`rnnc.packedgemm.local_panel_products`
    to PyTensor's C rewrites (once); each rewrites only while in use (asked at each
    compilation; never both: the second only where MKL is not linked). Returns
    whether MKL's is in use now."""
    global _registered
    if not _registered:
        from pytensor.compile.mode import optdb

        from rnnc.packedgemm import local_panel_products

        optdb.register(
            "rnnc_packed_products",
            dfs_rewriter(local_packed_products, local_panel_products),
            "fast_run",
            "cxx_only",
            position=49.35,  # after rnnc's scan rewrites for C (49.3), before in-place
        )
        _registered = True
    return in_use()
