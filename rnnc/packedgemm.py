"""A loop's products by a matrix it does not change, packed once per call for a kernel
of rnnc's own (float32, AVX2 and FMA or AVX-512), where MKL's packed GEMM is not linked.

A scan's step multiplies by the same weights at every step (``h_{t-1} @ W_h`` forward,
``g_t @ W_h.T`` backward), and a BLAS GEMM copies its right operand into panels laid
out for its kernel at every call. :mod:`rnnc.mklpacked` packs once per call with
MKL, where the C backend links it (Intel CPUs). OpenBLAS, linked elsewhere, has no
such interface: at the step products of an LSTM (B=32, H=256) it took 1.15-1.3 times
as long as this kernel with the weights packed once (the table below). :class:`PanelDot` packs ``W`` into panels of 16 columns, ``[K, 16]``
each, row by row, zero-padded past the last column::

    panel j = W[:, 16j : 16j+16]   (K rows of 16 floats, 64-byte aligned)

and multiplies by them with a kernel that keeps a ``6 x 16`` block of the result in
twelve AVX registers, ``C[i:i+6, 16j:16j+16] = A[i:i+6, :] @ panel j``: per row ``k``
of the panel it loads its 16 floats as two vectors, broadcasts the six ``A[i+r, k]``
and adds their products (12 fused multiply-adds, 8 loads). The panel, 16 KB at
K=256, stays in the L1 cache while the kernel walks down the rows of ``A``. Where
two rows would be left over (batches of 8, 32, 128), the last eight go in two
blocks of 4 instead of 6 and 2: a block of 2 has four sums, too few to cover the
FMAs' latency (four cycles, two units). That took the products at 32 rows from
181-184 to 173-177 us (``[8, 256] @ [256, 1024]``: 53 to 44 us; a C model compiled
as PyTensor compiles, one core of the machine below). One
core of an AMD EPYC of family 25 (model 1, 2026-12-06), float32, OpenBLAS 0.3.31
(NumPy's) against this kernel with the weights already packed:

================================  ==========  ==========
product                           OpenBLAS    packed
================================  ==========  ==========
``[32, 256] @ [256, 1024]``       234 us      182 us
``[32, 1024] @ [1024, 256]``      207 us      179 us
``[8, 256] @ [256, 1024]``        102 us      55 us
``[128, 256] @ [256, 1024]``      763 us      721 us
``[512, 256] @ [256, 1024]``      2874 us     2921 us
================================  ==========  ==========

Where the CPU has AVX-512 F, :class:`PanelDot512` multiplies by the same panels with
a kernel that keeps eight rows of the result in one 16-float register each: per row
``k`` of the panel, one load and eight fused multiply-adds by broadcasts of
``A[i+r, k]``. It adds the same products in the same order, so its results are the
AVX2 kernel's bit for bit. On one core of an AMD EPYC of family 25, model 17 (Zen 4,
whose AVX-512 runs on the same 256-bit units, 2026-12-06), the LSTM's step product,
packing included: 200 us with the AVX2 kernel, 152 with this one; the medium LSTM's
forward+gradient 0.90 of the time, the GRU's 0.89. (A C model of blocks of 6 to 24
rows and panels of 16 or 32 columns found eight rows of 16 the best or within 3% at
``[32, 256] @ [256, 1024]``, ``[32, 1024] @ [1024, 256]`` and ``[3200, 128] @ [128,
1024]``: 110-116 GF/s at the first two, where the core's peak is 117.)

The rewrite is :mod:`rnnc.mklpacked`'s (:func:`rnnc.mklpacked.packed_products`) with
this op, in the same pass: every product of a scan's step by a loop-invariant
matrix, packed again at the first step of each call (a
:class:`rnnc.mklpacked.CallStamp` changes). The sum over ``K`` runs
in one order per column, so results differ from BLAS's in the last bits only.

In use (:func:`in_use`) where the C backend does not link MKL, the CPU has AVX2 and
FMA, and ``RNNC_PANEL_GEMM`` does not switch it off; for float32 products only.
"""

from __future__ import annotations

from typing import Any

from pytensor.graph.basic import Apply
from pytensor.graph.rewriting.basic import node_rewriter
from pytensor.scan.op import Scan

from rnnc.env import switched_off
from rnnc.mklpacked import StampedProduct, packed_products, product_c

__all__ = ["PanelDot", "PanelDot512", "in_use", "local_panel_products", "panel_op"]

#: Columns of a panel (two AVX vectors of float32) and rows of the kernel's block;
#: the C code below is written for these two values.
PANEL = 16
ROWS = 6


def _kernel(rows: int) -> str:
    """C of the AVX2 kernel for a block of ``rows`` rows: ``C[:rows, :w] = A[:rows] @
    panel`` (``w`` the panel's columns that are ``W``'s, 16 but in the last).

    The empty ``asm`` keeps the panel's two vectors in registers: tuned for Zen 3
    (``-march=znver3``, as PyTensor compiles), g++ otherwise reads them from memory
    in each of the block's fused multiply-adds, and the 4-row block then needs 12
    loads per 8 FMAs, more than the core's two per cycle."""
    zero = "".join(
        f"    __m256 c{r}0 = _mm256_setzero_ps(), c{r}1 = _mm256_setzero_ps();\n"
        for r in range(rows)
    )
    fma = "".join(
        f"        a = _mm256_broadcast_ss(A + {r} * lda + k);\n"
        f"        c{r}0 = _mm256_fmadd_ps(a, b0, c{r}0); c{r}1 = _mm256_fmadd_ps(a, b1, c{r}1);\n"
        for r in range(rows)
    )
    store = "".join(f"    rnnc_panel_store(C + {r} * ldc, c{r}0, c{r}1, w);\n" for r in range(rows))
    return f"""
RNNC_PANEL_TARGET static void rnnc_panel_kernel{rows}(
    const float* A, long lda, const float* p, long K, float* C, long ldc, long w)
{{
{zero}    for (long k = 0; k < K; k++) {{
        __m256 b0 = _mm256_load_ps(p + k * {PANEL}), b1 = _mm256_load_ps(p + k * {PANEL} + 8);
        __asm__("" : "+x"(b0), "+x"(b1));  /* in registers: see _kernel */
        __m256 a;
{fma}    }}
{store}}}
"""


def _kernel512(rows: int) -> str:
    """C of the AVX-512 kernel for a block of ``rows`` rows: one 16-float register per
    row of the block, the panel's row loaded once per ``k``, the last panel's columns
    past ``w`` masked off when stored."""
    regs = [f"c{r}" for r in range(rows)]
    fma = "".join(
        f"        c{r} = _mm512_fmadd_ps(_mm512_set1_ps(A[{r} * lda + k]), b, c{r});\n"
        for r in range(rows)
    )
    store = "".join(f"    _mm512_mask_storeu_ps(C + {r} * ldc, m, c{r});\n" for r in range(rows))
    return f"""
RNNC_PANEL_TARGET static void rnnc_panel_kernel{rows}(
    const float* A, long lda, const float* p, long K, float* C, long ldc, long w)
{{
    __m512 {" = _mm512_setzero_ps(), ".join(regs)} = _mm512_setzero_ps();
    for (long k = 0; k < K; k++) {{
        const __m512 b = _mm512_load_ps(p + k * {PANEL});
{fma}    }}
    const __mmask16 m = (__mmask16)((1u << w) - 1u);
{store}}}
"""


_PACK = """
/* W [K, N] (strides in floats) into panels of 16 columns, zero-padded */
static void rnnc_panel_pack(const float* W, long K, long N, long s0, long s1, float* P)
{
    for (long j0 = 0; j0 < N; j0 += 16) {
        const long w = N - j0 < 16 ? N - j0 : 16;
        float* p = P + j0 * K;
        for (long k = 0; k < K; k++) {
            const float* src = W + k * s0 + j0 * s1;
            long j = 0;
            for (; j < w; j++) p[k * 16 + j] = src[j * s1];
            for (; j < 16; j++) p[k * 16 + j] = 0.0f;
        }
    }
}
"""

_STORE256 = """
RNNC_PANEL_TARGET static inline void rnnc_panel_store(float* o, __m256 lo, __m256 hi, long w)
{
    if (w == 16) {
        _mm256_storeu_ps(o, lo);
        _mm256_storeu_ps(o + 8, hi);
    } else {
        float t[16] __attribute__((aligned(32)));
        _mm256_store_ps(t, lo);
        _mm256_store_ps(t + 8, hi);
        for (long j = 0; j < w; j++) o[j] = t[j];
    }
}
"""


def _support(target: str, kernels: str, blocks: tuple[int, ...], stop: str = "M") -> str:
    """The C support code: packing, the ``kernels`` (compiled for ``target``, one
    per row count in ``blocks``, largest first) and the loop over panels and blocks;
    the largest blocks cover the rows up to ``stop`` (a C expression of ``M``), the
    smaller ones the rest."""
    calls = "".join(
        f"        for (; i + {r} <= {stop if n == 0 else 'M'}; i += {r}) "
        f"rnnc_panel_kernel{r}(A + i * lda, lda, p, K, C + i * ldc + j0, ldc, w);\n"
        for n, r in enumerate(blocks)
    )
    return f"""
#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define RNNC_PANEL_TARGET __attribute__((target("{target}")))
{_PACK}{kernels}
/* C [M, N] (row stride ldc) = A [M, K] (row stride lda) @ the packed W */
RNNC_PANEL_TARGET static void rnnc_panel_gemm(
    const float* A, long M, long K, long lda, const float* P, long N, float* C, long ldc)
{{
    for (long j0 = 0; j0 < N; j0 += 16) {{
        const long w = N - j0 < 16 ? N - j0 : 16;
        const float* p = P + j0 * K;
        long i = 0;
{calls}    }}
}}
#endif
"""


#: Where the AVX2 kernel's blocks of 6 rows stop: two rows left over (a batch of 8,
#: 32 or 128) go with the six before them into two blocks of 4, whose 8 sums keep
#: both FMA units busy, where a block of 2 (4 sums) waits on the FMAs' latency.
_STOP6 = "(M % 6 == 2 && M >= 8 ? M - 8 : M)"
_SUPPORT = _support(
    "avx2,fma",
    _STORE256 + "".join(_kernel(r) for r in (ROWS, 4, 2, 1)),
    (ROWS, 4, 2, 1),
    _STOP6,
)
_SUPPORT512 = _support("avx512f", "".join(_kernel512(r) for r in (8, 4, 2, 1)), (8, 4, 2, 1))


class PanelDot(StampedProduct):
    """``a @ w`` for float32 matrices, with ``w`` packed into panels once for every
    new ``stamp`` (see the module)."""

    DTYPES = ("float32",)

    def c_support_code(self, **kwargs: Any) -> str:
        return _SUPPORT

    def c_code_cache_version(self) -> tuple[int, ...]:
        return (6,)

    def c_code(self, node: Any, name: str, inames: Any, onames: Any, sub: Any) -> str:
        a, w, stamp = inames
        (out,) = onames
        fail = sub["fail"]
        panels, capacity, seen = (f"{v}_{name}" for v in ("buffer", "capacity", "stamp"))
        return product_c(
            "PanelDot",
            a,
            w,
            out,
            "float",
            "NPY_FLOAT32",
            fail,
            f"""
        const npy_int64 stamp = ((npy_int64*)PyArray_DATA({stamp}))[0];
        const size_t size = (size_t)((N + 15) / 16) * 16 * K * es;
        if (stamp != {seen} || size > {capacity}) {{
            {self.grow_c(name, "size", "Py_XDECREF(a_own); ", fail)}
            rnnc_panel_pack((const float*)PyArray_DATA(w), K, N,
                            (long)(PyArray_STRIDES(w)[0] / es), (long)(PyArray_STRIDES(w)[1] / es),
                            (float*){panels});
            {seen} = stamp;
        }}
        rnnc_panel_gemm((const float*)PyArray_DATA(a), M, K, lda, (const float*){panels}, N,
                        (float*)PyArray_DATA({out}), N);
""",
        )


class PanelDot512(PanelDot):
    """:class:`PanelDot` with the AVX-512 kernel: the same panels, the same sum over
    ``K`` in the same order (so the same results, bit for bit), eight rows at a time
    in one 16-float register each (see the module)."""

    def c_support_code(self, **kwargs: Any) -> str:
        return _SUPPORT512

    def c_code_cache_version(self) -> tuple[int, ...]:
        return (2,)


def float32_matrix(var: Any) -> bool:
    return var.ndim == 2 and var.dtype == "float32"


@node_rewriter([Scan])
def local_panel_products(fgraph: Any, node: Apply) -> Any:
    """Multiply by each loop-invariant float32 matrix of a scan through
    :class:`PanelDot` (see the module)."""
    if not in_use():
        return None
    return packed_products(node, panel_op(), float32_matrix)


def panel_op() -> type[PanelDot]:
    """The op for this CPU: :class:`PanelDot512` where it has AVX-512 F."""
    from rnnc.blaskernels import cpu_flags

    return PanelDot512 if "avx512f" in cpu_flags() else PanelDot


def in_use() -> bool:
    """Whether the rewrite is on: the C backend does not link MKL (whose packed GEMM
    :mod:`rnnc.mklpacked` uses), the CPU has AVX2 and FMA, and ``RNNC_PANEL_GEMM``
    does not switch it off (:func:`panel_op` says which kernel)."""
    from rnnc import blas
    from rnnc.blaskernels import cpu_flags

    if switched_off("RNNC_PANEL_GEMM") or blas.linked_mkl():
        return False
    return {"avx2", "fma"} <= cpu_flags()
