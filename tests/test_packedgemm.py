"""rnnc.packedgemm: a scan's float32 products by its loop invariants through rnnc's own
packed kernel (C backend, where MKL is not linked), against NumPy's products and
against the same scan without it."""

from __future__ import annotations

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest
from conftest import ops_in_loops, row_major_copies, tanh_rnn_and_gradient
from pytensor.compile.mode import Mode

from rnnc import blas, blaskernels, packedgemm
from rnnc.compile import function
from rnnc.mklpacked import CallStamp
from rnnc.packedgemm import PanelDot, PanelDot512

needs_avx2 = pytest.mark.skipif(
    not {"avx2", "fma"} <= blaskernels.cpu_flags(), reason="the kernel needs AVX2 and FMA"
)
#: Each kernel, skipped where the CPU cannot run it.
KERNELS = [
    pytest.param(PanelDot, marks=needs_avx2, id="avx2"),
    pytest.param(
        PanelDot512,
        marks=pytest.mark.skipif(
            "avx512f" not in blaskernels.cpu_flags(), reason="the kernel needs AVX-512 F"
        ),
        id="avx512",
    ),
]


def test_in_use_only_without_mkl_with_avx2_and_not_switched_off(monkeypatch):
    monkeypatch.setattr(blas, "linked_mkl", lambda: False)
    monkeypatch.setattr(blaskernels, "cpu_flags", lambda: {"avx", "avx2", "fma"})
    assert packedgemm.in_use()
    monkeypatch.setenv("RNNC_PANEL_GEMM", "0")
    assert not packedgemm.in_use()
    monkeypatch.delenv("RNNC_PANEL_GEMM")
    monkeypatch.setattr(blaskernels, "cpu_flags", lambda: {"avx", "sse4_2"})
    assert not packedgemm.in_use()
    monkeypatch.setattr(blaskernels, "cpu_flags", lambda: {"avx2", "fma"})
    monkeypatch.setattr(blas, "linked_mkl", lambda: True)  # MKL packs: rnnc.mklpacked
    assert not packedgemm.in_use()


def test_panel_dot_takes_float32_matrices_only():
    with pytest.raises(TypeError, match="float32"):
        PanelDot()(pt.dmatrix(), pt.dmatrix(), pt.lscalar())


def test_panel_dot_without_c_code_is_numpys_product():
    a, w = pt.matrix("a", dtype="float32"), pt.matrix("w", dtype="float32")
    f = pytensor.function([a, w], PanelDot()(a, w, CallStamp()(w)), mode=Mode(linker="py"))
    rng = np.random.default_rng(0)
    av, wv = (rng.standard_normal(s).astype("float32") for s in ((3, 4), (4, 5)))
    np.testing.assert_allclose(f(av, wv), av @ wv, rtol=1e-6)


def test_the_cpu_picks_the_kernel(monkeypatch):
    monkeypatch.setattr(blaskernels, "cpu_flags", lambda: {"avx2", "fma", "avx512f"})
    assert packedgemm.panel_op() is PanelDot512
    monkeypatch.setattr(blaskernels, "cpu_flags", lambda: {"avx2", "fma"})
    assert packedgemm.panel_op() is PanelDot


@pytest.fixture(scope="module", params=KERNELS)
def panel(request):
    """``a @ w`` through each kernel's op, compiled by the C backend."""
    a, w = pt.matrix("a", dtype="float32"), pt.matrix("w", dtype="float32")
    return function([a, w], request.param()(a, w, CallStamp()(w)), "c")


def _close(got, a, w):
    want = a.astype("float64") @ w.astype("float64")
    assert got.shape == want.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * max(1, a.shape[1]))


@pytest.mark.parametrize("m", [1, 2, 3, 5, 6, 7, 8, 13, 14, 32])  # 8, 14, 32: 6s then 4 + 4
@pytest.mark.parametrize("n", [1, 15, 16, 17, 40])
def test_panel_dot_is_the_product_for_every_block_and_panel_remainder(panel, m, n):
    rng = np.random.default_rng(m * 100 + n)
    a = rng.standard_normal((m, 9)).astype("float32")
    w = rng.standard_normal((9, n)).astype("float32")
    _close(panel(a, w), a, w)


@pytest.mark.parametrize(
    "layout",
    ["transposed", "strided columns", "strided rows of a", "columns of a", "empty", "no k"],
)
def test_panel_dot_is_the_product_for_any_layout(panel, layout):
    rng = np.random.default_rng(1)
    a = rng.standard_normal((7, 5)).astype("float32")
    w = rng.standard_normal((5, 18)).astype("float32")
    if layout == "transposed":
        w = np.asfortranarray(w)
    elif layout == "strided columns":
        w = rng.standard_normal((5, 36)).astype("float32")[:, ::2]
    elif layout == "strided rows of a":
        a = rng.standard_normal((14, 5)).astype("float32")[::2]
    elif layout == "columns of a":
        a = np.asfortranarray(a)
    elif layout == "empty":
        a = a[:0]
    elif layout == "no k":
        a, w = a[:, :0], w[:0]
    _close(panel(a, w), a, w)


@pytest.mark.parametrize("op", KERNELS)
def test_panel_dot_packs_again_when_the_weights_change_in_place(op):
    """An optimiser updates weights in place: the next call must not reuse the panels
    of the old ones."""
    rng = np.random.default_rng(2)
    wv = rng.standard_normal((8, 20)).astype("float32")
    w = pytensor.shared(wv, name="w")
    a = pt.matrix("a", dtype="float32")
    f = function([a], op()(a, w, CallStamp()(w)), "c")
    av = rng.standard_normal((4, 8)).astype("float32")
    _close(f(av), av, wv)
    w.get_value(borrow=True)[...] *= -2.0  # same buffer, new values
    _close(f(av), av, w.get_value())
    w.set_value(rng.standard_normal((8, 40)).astype("float32"))  # more panels
    _close(f(av[:3]), av[:3], w.get_value())


@needs_avx2
def test_scans_multiply_through_panels_and_compute_the_same(monkeypatch):
    inputs, outputs = tanh_rnn_and_gradient("float32")
    panels = function(inputs, outputs, "c")
    if blas.linked_mkl():
        pytest.skip("MKL is linked here: rnnc.mklpacked packs")
    monkeypatch.setenv("RNNC_PANEL_GEMM", "0")
    plain = function(inputs, outputs, "c")
    # the forward loop's h @ W and the backward loop's g @ W.T
    assert (ops_in_loops(panels, PanelDot), ops_in_loops(plain, PanelDot)) == (2, 0)
    # packed from the transposed view: no row-major copy of W.T before the loop
    assert (row_major_copies(panels), row_major_copies(plain)) == (0, 1)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5, 3, 20)).astype("float32")
    w = (0.3 * rng.standard_normal((20, 20))).astype("float32")
    for got, want in zip(panels(x, w), plain(x, w), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif("avx512f" not in blaskernels.cpu_flags(), reason="needs AVX-512 F")
def test_both_kernels_sum_in_the_same_order():
    """The AVX-512 kernel adds the same products in the same order as the AVX2 one:
    the same floats, bit for bit, whichever CPU a checkpoint moves to."""
    a, w = pt.matrix("a", dtype="float32"), pt.matrix("w", dtype="float32")
    avx2, avx512 = (
        function([a, w], op()(a, w, CallStamp()(w)), "c") for op in (PanelDot, PanelDot512)
    )
    rng = np.random.default_rng(4)
    av = rng.standard_normal((31, 300)).astype("float32")  # blocks of 8, 4, 2 and 1 rows
    wv = rng.standard_normal((300, 40)).astype("float32")  # a panel of 8 columns last
    np.testing.assert_array_equal(avx2(av, wv), avx512(av, wv))
