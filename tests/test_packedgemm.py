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
from rnnc.packedgemm import PanelDot

needs_avx2 = pytest.mark.skipif(
    not {"avx2", "fma"} <= blaskernels.cpu_flags(), reason="the kernel needs AVX2 and FMA"
)


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


@pytest.fixture(scope="module")
def panel():
    """``a @ w`` through PanelDot, compiled by the C backend."""
    a, w = pt.matrix("a", dtype="float32"), pt.matrix("w", dtype="float32")
    return function([a, w], PanelDot()(a, w, CallStamp()(w)), "c")


def _close(got, a, w):
    want = a.astype("float64") @ w.astype("float64")
    assert got.shape == want.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * max(1, a.shape[1]))


@needs_avx2
@pytest.mark.parametrize("m", [1, 2, 3, 5, 6, 7, 13, 32])
@pytest.mark.parametrize("n", [1, 15, 16, 17, 40])
def test_panel_dot_is_the_product_for_every_block_and_panel_remainder(panel, m, n):
    rng = np.random.default_rng(m * 100 + n)
    a = rng.standard_normal((m, 9)).astype("float32")
    w = rng.standard_normal((9, n)).astype("float32")
    _close(panel(a, w), a, w)


@needs_avx2
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


@needs_avx2
def test_panel_dot_packs_again_when_the_weights_change_in_place():
    """An optimiser updates weights in place: the next call must not reuse the panels
    of the old ones."""
    rng = np.random.default_rng(2)
    wv = rng.standard_normal((8, 20)).astype("float32")
    w = pytensor.shared(wv, name="w")
    a = pt.matrix("a", dtype="float32")
    f = function([a], PanelDot()(a, w, CallStamp()(w)), "c")
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
