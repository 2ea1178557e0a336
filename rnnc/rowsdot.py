"""Weight gradients, ``A.T @ B`` summed over many rows, by a kernel of rnnc's own
(C backend, float32, AVX-512).

After the backward loop, a cell's weight gradients sum each step's products over all
``T*B`` rows: for the LSTM, ``[H | X].T @ dG`` (:mod:`rnnc.sharedproducts` joins the
two), ``[T*B, H+I]`` by ``[T*B, 4H]``. :class:`RowsDot` computes::

    C = [A_1 | ... | A_n].T @ B        (C[m, j] = sum_r A[r, m] * B[r, j])

reading each ``A_k`` where it is (a view of any strides: the states read from the
end, say, with ``A_k``'s rows in C order as :class:`rnnc.sharedproducts.JoinRows`
counts them), so the join's copy goes. It walks the rows in blocks of ``KC``: each
block of ``A`` is copied into slivers of 12 columns (``[KC, 12]``, one row of 12
floats per row of ``A``; 8 where ``A`` has a multiple of 8 columns and not of 12, so
that no sliver is part empty), each block of ``B`` into panels of 32 columns (``[KC,
32]``); the kernel keeps a ``12 x 32`` block of ``C`` in 24 AVX-512 registers (per row
of the block: two loads of the panel, 12 broadcasts, 24 fused multiply-adds), adds
the block's ``KC`` outer products and adds the sum to ``C``. The sum over rows thus
runs block by block, as BLAS's do (the results differ from OpenBLAS's in the last
bits of float32). While it copies ``B``, it can also sum ``B``'s columns (the bias
gradient, ``sums=True``).

One core of an AMD EPYC of family 25, model 17 (Zen 4, 2026-12-06), the medium LSTM
of ``benchmarks/`` (``[3200, 384].T @ [3200, 1024]``): OpenBLAS 0.3.21 26.2 ms (96
GF/s) plus 0.9 ms for the join; in a C model, blocks of ``8 x 16`` took 25.1-25.6 ms
with the packing (1.8-2.2 ms of it), ``8 x 32`` 24.4-25.1 and ``12 x 32`` 24.8-25.1;
in the op, ``12 x 32`` took 0.966-0.969 of the time of ``8 x 16``. At smaller
shapes the op (column sums included) and OpenBLAS (without) take the same time:
``[3200, 256].T @ [3200, 256]`` 4.51 against 4.52 ms, ``[3200, 128].T @ [3200,
512]`` 4.75 against 4.77, ``[3200, 256].T @ [3200, 768]`` 13.1 against 13.0 (before
the slivers of 8 and the masked copies into slivers, 6-7% slower). Whole functions
are in ``docs/backends.md`` ("Weight gradients as one product"). In use where
:mod:`rnnc.packedgemm`'s AVX-512 kernel is (see its ``in_use``); ``RNNC_ROWS_DOT=0``
switches it off. CPUs with AVX2 only keep OpenBLAS's product: an AVX2 kernel of ``6 x
16`` blocks, in a C model on the same Zen 4, took 25.8 ms at the LSTM's shape against
24.3 for OpenBLAS's own AVX2 (``Haswell``) kernels, which the join and the column sum
it saves would about make up, not more. On a Zen 3 (family 25, model 1, 2026-12-07)
the same: 29.4-29.9 ms against OpenBLAS 0.3.21's 27.5-28.0, of which 26.5 in the
kernel (95 GF/s) and 3.8-4.3 in the packing, where the join and the column sum take
1.2 and 0.9 ms; packing ``B``'s blocks whole, row by row, was no faster.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytensor.tensor as pt
from pytensor.graph.basic import Apply
from pytensor.graph.rewriting.basic import dfs_rewriter, node_rewriter
from pytensor.tensor.blas import Dot22
from pytensor.tensor.math import Dot
from pytensor.tensor.type import TensorType

from rnnc.colsum import column_sums, summed_columns
from rnnc.env import switched_off
from rnnc.loopinputs import _transposed
from rnnc.mklpacked import NodeBuffer
from rnnc.sharedproducts import JoinRows, join_rows, same_matrices

__all__ = ["KC", "RowsDot", "in_use", "local_rows_dot", "register"]

#: Rows of ``A`` and ``B`` per block (measured with blocks of ``8 x 16``: 640-1024
#: best at the medium LSTM's shape on the Zen 4 above, 256 about 4% slower).
KC = 800

_registered = False

#: The kernel's blocks of ``C``: rows (a sliver's columns of ``A``: 12, or 8 where
#: ``M`` is a multiple of 8 and not of 12) and columns (a panel's of ``B``, two
#: 16-float registers); the block takes 24 or 16 of the 32 AVX-512 registers.
ROWS, COLS = (12, 8), 32
MAX_ROWS = max(ROWS)


def _kernel(rows: int) -> str:
    """C of the kernel for slivers of ``rows`` columns: ``C[:rows, :w] (+)= sliver.T @
    panel`` over ``kc`` rows, the block of ``C`` in ``2 * rows`` registers."""
    regs = [f"c{r}" for r in range(rows)] + [f"d{r}" for r in range(rows)]
    fma = "".join(
        f"        s = _mm512_set1_ps(x[{r}]); c{r} = _mm512_fmadd_ps(s, v, c{r}); "
        f"d{r} = _mm512_fmadd_ps(s, u, d{r});\n"
        for r in range(rows)
    )
    return f"""
RNNC_ROWS_TARGET static void rnnc_rows_kernel{rows}(const float* a, const float* b, npy_intp kc,
                                              float* C, npy_intp ldc, int rows, int w,
                                              int add)
{{
    __m512 {" = _mm512_setzero_ps(), ".join(regs)} = _mm512_setzero_ps();
    for (npy_intp k = 0; k < kc; k++) {{
        const __m512 v = _mm512_load_ps(b + {COLS} * k), u = _mm512_load_ps(b + {COLS} * k + 16);
        const float* x = a + {rows} * k;
        __m512 s;
{fma}    }}
    const __mmask16 ml = (__mmask16)(w >= 16 ? 0xFFFFu : (1u << w) - 1u);
    const __mmask16 mh = (__mmask16)(w >= 32 ? 0xFFFFu : w > 16 ? (1u << (w - 16)) - 1u : 0u);
    const __m512 c[{rows}] = {{{", ".join(regs[:rows])}}};
    const __m512 d[{rows}] = {{{", ".join(regs[rows:])}}};
    for (int r = 0; r < rows; r++) {{
        float* o = C + r * ldc;
        __m512 lo = c[r], hi = d[r];
        if (add) {{
            lo = _mm512_add_ps(_mm512_maskz_loadu_ps(ml, o), lo);
            hi = _mm512_add_ps(_mm512_maskz_loadu_ps(mh, o + 16), hi);
        }}
        _mm512_mask_storeu_ps(o, ml, lo);
        _mm512_mask_storeu_ps(o + 16, mh, hi);
    }}
}}
"""


_SUPPORT = (
    f"""
#include <immintrin.h>
#define RNNC_ROWS_TARGET __attribute__((target("avx512f")))
#define RNNC_COLS {COLS}
"""
    + r"""
typedef struct { const char* data; int ndim; npy_intp inner; npy_intp s0, s1, s2; npy_intp width; }
    rnnc_rows_src;

/* row r of a source of two or three axes (rows in C order over its leading axes) */
static inline const char* rnnc_rows_row(const rnnc_rows_src* s, npy_intp r)
{
    if (s->ndim == 2) return s->data + r * s->s0;
    return s->data + (r / s->inner) * s->s0 + (r % s->inner) * s->s1;
}

/* rows [r0, r0 + kc) of the sources side by side, into slivers of R columns (sliver
   q: kc rows of R floats), columns past M (up to Mp) zero */
RNNC_ROWS_TARGET static void rnnc_rows_pack_a(const rnnc_rows_src* src, int n, npy_intp r0,
                                              npy_intp kc, npy_intp Mp, npy_intp R, float* P)
{
    for (npy_intp r = 0; r < kc; r++) {
        npy_intp m = 0;
        for (int i = 0; i < n; i++) {
            const char* row = rnnc_rows_row(src + i, r0 + r);
            const npy_intp st = src[i].s2, w = src[i].width;
            for (npy_intp j = 0; j < w;) {
                /* a run of columns that stays in one sliver */
                const npy_intp q = (m + j) / R, off = (m + j) % R;
                const npy_intp run = R - off < w - j ? R - off : w - j;
                float* o = P + q * R * kc + r * R + off;
                if (st == (npy_intp)sizeof(float)) {
                    const __mmask16 mask = (__mmask16)((1u << run) - 1u);
                    _mm512_mask_storeu_ps(o, mask, _mm512_maskz_loadu_ps(mask, row + j * st));
                } else
                    for (npy_intp e = 0; e < run; e++) o[e] = *(const float*)(row + (j + e) * st);
                j += run;
            }
            m += w;
        }
        for (; m < Mp; m++) P[(m / R) * R * kc + r * R + m % R] = 0.0f;
    }
}

/* rows [r0, r0 + kc) of B's columns [j0, j0 + w) into one panel of RNNC_COLS columns
   (zero past w); with acc, each column's values also added to acc[j] (double), row
   after row */
RNNC_ROWS_TARGET static void rnnc_rows_pack_b(const char* B, npy_intp sb0, npy_intp sb1,
                                              npy_intp r0, npy_intp kc, npy_intp j0,
                                              npy_intp w, float* P, double* acc)
{
    if (w == RNNC_COLS && sb1 == (npy_intp)sizeof(float)) {
        __m512d s[4];
        for (int h = 0; h < 4; h++) s[h] = acc ? _mm512_loadu_pd(acc + j0 + 8 * h) : _mm512_setzero_pd();
        for (npy_intp r = 0; r < kc; r++) {
            const float* row = (const float*)(B + (r0 + r) * sb0) + j0;
            const __m512 v = _mm512_loadu_ps(row), u = _mm512_loadu_ps(row + 16);
            _mm512_store_ps(P + RNNC_COLS * r, v);
            _mm512_store_ps(P + RNNC_COLS * r + 16, u);
            if (acc) {
                s[0] = _mm512_add_pd(s[0], _mm512_cvtps_pd(_mm512_castps512_ps256(v)));
                s[1] = _mm512_add_pd(s[1], _mm512_cvtps_pd(_mm256_castpd_ps(
                                               _mm512_extractf64x4_pd(_mm512_castps_pd(v), 1))));
                s[2] = _mm512_add_pd(s[2], _mm512_cvtps_pd(_mm512_castps512_ps256(u)));
                s[3] = _mm512_add_pd(s[3], _mm512_cvtps_pd(_mm256_castpd_ps(
                                               _mm512_extractf64x4_pd(_mm512_castps_pd(u), 1))));
            }
        }
        if (acc)
            for (int h = 0; h < 4; h++) _mm512_storeu_pd(acc + j0 + 8 * h, s[h]);
        return;
    }
    for (npy_intp r = 0; r < kc; r++) {
        const char* row = B + (r0 + r) * sb0;
        npy_intp j = 0;
        for (; j < w; j++) {
            const float v = *(const float*)(row + (j0 + j) * sb1);
            P[RNNC_COLS * r + j] = v;
            if (acc) acc[j0 + j] += (double)v;
        }
        for (; j < RNNC_COLS; j++) P[RNNC_COLS * r + j] = 0.0f;
    }
}
"""
    + "".join(_kernel(rows) for rows in ROWS)
    + r"""
/* C [M, N] = [sources].T @ B [R, N], packing into A_p (kc * (M + 12) floats) and B_p
   (kc * RNNC_COLS floats), both 64-byte aligned; with acc (N doubles, zero), B's
   column sums added to it */
RNNC_ROWS_TARGET static void rnnc_rows_dot(const rnnc_rows_src* src, int n, npy_intp R,
                                           npy_intp M, const char* B, npy_intp sb0,
                                           npy_intp sb1, npy_intp N, float* C,
                                           npy_intp KC, float* Ap, float* Bp, double* acc)
{
    /* slivers of 12 columns, or of 8 where M is a multiple of 8 and not of 12 */
    const npy_intp S = (M % 8 == 0 && M % 12 != 0) ? 8 : 12;
    const npy_intp Mp = (M + S - 1) / S * S;
    for (npy_intp r0 = 0; r0 < R; r0 += KC) {
        const npy_intp kc = R - r0 < KC ? R - r0 : KC;
        rnnc_rows_pack_a(src, n, r0, kc, Mp, S, Ap);
        for (npy_intp j0 = 0; j0 < N; j0 += RNNC_COLS) {
            const int w = (int)(N - j0 < RNNC_COLS ? N - j0 : RNNC_COLS);
            rnnc_rows_pack_b(B, sb0, sb1, r0, kc, j0, w, Bp, acc);
            for (npy_intp q = 0; q < Mp / S; q++) {
                const int rows = (int)(M - S * q < S ? M - S * q : S);
                float* c = C + S * q * N + j0;
                if (S == 8) rnnc_rows_kernel8(Ap + q * S * kc, Bp, kc, c, N, rows, w, r0 > 0);
                else rnnc_rows_kernel12(Ap + q * S * kc, Bp, kc, c, N, rows, w, r0 > 0);
            }
        }
    }
}
"""
)


class RowsDot(NodeBuffer):
    """``[A_1 | ... | A_n].T @ B`` for float32 ``A_k`` of two or three axes (rows in C
    order over the leading axes, :class:`rnnc.sharedproducts.JoinRows`'s) and a
    float32 matrix ``B`` with as many rows (see the module). With ``sums``, a second
    output: ``B.sum(axis=0)``, each column added in float64 from the first row to the
    last (:class:`rnnc.colsum.ColumnSum`'s sum, bit for bit), while ``B`` is packed."""

    __props__ = ("sums",)

    def __init__(self, sums: bool = False) -> None:
        self.sums = sums

    def make_node(self, *inputs: Any) -> Apply:
        *arrays, b = [pt.as_tensor_variable(v) for v in inputs]
        if (
            not arrays
            or b.ndim != 2
            or any(a.ndim not in (2, 3) for a in arrays)
            or {v.dtype for v in (*arrays, b)} != {"float32"}
        ):
            raise TypeError("RowsDot: float32 arrays of two or three axes and a matrix")
        widths = [a.type.shape[-1] for a in arrays]
        rows = None if None in widths else sum(widths)
        outs = [TensorType("float32", shape=(rows, b.type.shape[1]))()]
        if self.sums:
            outs.append(TensorType("float32", shape=(b.type.shape[1],))())
        return Apply(self, [*arrays, b], outs)

    def perform(self, node: Any, inputs: Any, output_storage: Any) -> None:
        *arrays, b = inputs
        joined = join_rows(arrays)
        if joined.shape[0] != b.shape[0]:
            raise ValueError(f"RowsDot: {joined.shape[0]} rows against B's {b.shape[0]}")
        output_storage[0][0] = np.asarray(joined.T @ b, dtype="float32")
        if self.sums:
            output_storage[1][0] = column_sums(b, "float64")

    def infer_shape(self, fgraph: Any, node: Any, shapes: Any) -> Any:
        *arrays, b = shapes
        rows = arrays[0][-1]
        for s in arrays[1:]:
            rows = rows + s[-1]
        return [(rows, b[1]), (b[1],)][: len(node.outputs)]

    def c_support_code(self, **kwargs: Any) -> str:
        return _SUPPORT

    def c_code_cache_version(self) -> tuple[int, ...]:
        return (7, KC, ROWS, COLS)

    def c_code(self, node: Any, name: str, inames: Any, onames: Any, sub: Any) -> str:
        *arrays, b = inames
        out, *sums = onames
        fail = sub["fail"]
        n = len(arrays)
        buffer = f"buffer_{name}"
        sources = "".join(
            f"""
    {{
        PyArrayObject* a = {a};
        const int nd = PyArray_NDIM(a);
        npy_intp rows = 1;
        for (int d = 0; d < nd - 1; d++) rows *= PyArray_DIMS(a)[d];
        if (rows != R) {{
            PyErr_Format(PyExc_ValueError, "RowsDot: input {i} has %ld rows, B has %ld",
                         (long)rows, (long)R);
            {fail}
        }}
        src[{i}].data = PyArray_BYTES(a);
        src[{i}].ndim = nd;
        src[{i}].inner = nd == 3 ? PyArray_DIMS(a)[1] : 1;
        src[{i}].s0 = PyArray_STRIDES(a)[0];
        src[{i}].s1 = nd == 3 ? PyArray_STRIDES(a)[1] : 0;
        src[{i}].s2 = PyArray_STRIDES(a)[nd - 1];
        src[{i}].width = PyArray_DIMS(a)[nd - 1];
        M += src[{i}].width;
    }}"""
            for i, a in enumerate(arrays)
        )
        alloc_sums, write_sums = "", ""
        if sums:
            (z,) = sums
            alloc_sums = f"""
    if (!{z} || PyArray_NDIM({z}) != 1 || PyArray_DIMS({z})[0] != N
        || !PyArray_IS_C_CONTIGUOUS({z})) {{
        Py_XDECREF({z});
        {z} = (PyArrayObject*)PyArray_EMPTY(1, &N, NPY_FLOAT32, 0);
        if (!{z}) {{ {fail} }}
    }}"""
            write_sums = f"""
    for (npy_intp j = 0; j < N; j++) ((float*)PyArray_DATA({z}))[j] = (float)acc[j];"""
        return f"""
{{
    rnnc_rows_src src[{n}];
    npy_intp R = PyArray_DIMS({b})[0], N = PyArray_DIMS({b})[1];
    npy_intp M = 0;
    {sources}
    npy_intp dims[2] = {{M, N}};
    if (!{out} || PyArray_NDIM({out}) != 2 || PyArray_DIMS({out})[0] != M
        || PyArray_DIMS({out})[1] != N || !PyArray_IS_C_CONTIGUOUS({out})) {{
        Py_XDECREF({out});
        {out} = (PyArrayObject*)PyArray_EMPTY(2, dims, NPY_FLOAT32, 0);
        if (!{out}) {{ {fail} }}
    }}{alloc_sums}
    const npy_intp kc = R < {KC} ? R : {KC};
    const npy_intp a_size = (kc * (M + {MAX_ROWS}) + 15) / 16 * 16;  /* then 64-byte aligned */
    const size_t need = (size_t)(a_size + kc * {COLS}) * sizeof(float) + (size_t)N * sizeof(double);
    {self.grow_c(name, "need", "", fail)}
    float* Ap = (float*){buffer};
    float* Bp = Ap + a_size;
    double* acc = (double*)(Bp + kc * {COLS});
    memset(acc, 0, (size_t)N * sizeof(double));
    if (R == 0) {{
        memset(PyArray_DATA({out}), 0, (size_t)(M * N) * sizeof(float));
    }} else {{
        rnnc_rows_dot(src, {n}, R, M, PyArray_BYTES({b}), PyArray_STRIDES({b})[0],
                      PyArray_STRIDES({b})[1], N, (float*)PyArray_DATA({out}), {KC}, Ap, Bp,
                      {"acc" if sums else "NULL"});
    }}{write_sums}
}}
"""


def _sources(left: Any) -> list[Any] | None:
    """The arrays whose joined rows ``left`` (the product's left operand, untransposed)
    is: a :class:`JoinRows`'s inputs or the matrix itself; None if any is not float32
    of two or three axes."""
    owner = left.owner
    arrays = list(owner.inputs) if owner is not None and isinstance(owner.op, JoinRows) else [left]
    if all(a.dtype == "float32" and a.ndim in (2, 3) for a in arrays):
        return arrays
    return None


def _column_sum(fgraph: Any, right: Any) -> Any:
    """A ``Sum{axis=0}`` in float64 of the matrix ``right`` (or of the same matrix
    reshaped), else None."""
    for var in same_matrices(fgraph, right):
        for client, _ in fgraph.clients[var]:
            if not isinstance(client, str) and summed_columns(client) == "float64":
                return client
    return None


@node_rewriter([Dot22, Dot])
def local_rows_dot(fgraph: Any, node: Any) -> Any:
    """``A.T @ B`` of float32 matrices (``A`` joined rows or a matrix) as :class:`RowsDot`,
    which also sums ``B``'s columns where the graph does."""
    left, right = node.inputs
    if not in_use() or left.ndim != 2 or right.ndim != 2 or right.dtype != "float32":
        return None
    inner = _transposed(left)
    arrays = None if inner is None else _sources(inner)
    if arrays is None:
        return None
    out = node.outputs[0]
    summed = _column_sum(fgraph, right)
    if summed is None:
        return [pt.specify_shape(RowsDot()(*arrays, right), out.type.shape)]
    product, sums = RowsDot(sums=True)(*arrays, right)
    return {out: pt.specify_shape(product, out.type.shape), summed.outputs[0]: sums}


def in_use() -> bool:
    """Whether the rewrite is on: :mod:`rnnc.packedgemm`'s AVX-512 kernel is in use and
    ``RNNC_ROWS_DOT`` does not switch it off."""
    from rnnc import packedgemm

    if switched_off("RNNC_ROWS_DOT") or not packedgemm.in_use():
        return False
    return packedgemm.panel_op() is packedgemm.PanelDot512


def register() -> None:
    """Add the rewrite to PyTensor's C rewrites (once), after
    :mod:`rnnc.sharedproducts` (49.34), which joins the products' left operands."""
    global _registered
    if _registered:
        return
    from pytensor.compile.mode import optdb

    optdb.register(
        "rnnc_rows_dot", dfs_rewriter(local_rows_dot), "fast_run", "cxx_only", position=49.345
    )
    _registered = True
