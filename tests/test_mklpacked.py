"""rnnc.mklpacked: a scan's products by its loop invariants through MKL's packed GEMM
(C backend), against NumPy's products and against the same scan without it."""

from __future__ import annotations

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest
from conftest import ops_in_loops, row_major_copies, tanh_rnn_and_gradient
from pytensor.compile.mode import Mode

from rnnc import blas, cache, mklpacked
from rnnc.compile import function
from rnnc.mklpacked import CallStamp, PackedDot

needs_mkl = pytest.mark.skipif(blas.find_mkl() is None, reason="no MKL here (pip install mkl)")


@pytest.fixture(scope="module", autouse=True)
def link_mkl():
    """Link pip's MKL where it is installed, as rnnc does on an Intel CPU (elsewhere it
    prefers a system OpenBLAS); the BLAS of other test modules after."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(blas, "intel_cpu", lambda: True)
        cache.configure_c()
        yield
    cache.configure_c()


TOLERANCE = {"float32": 1e-5, "float64": 1e-12}


def test_call_stamp_is_new_at_every_call_and_never_folded():
    stamp = CallStamp()(pt.constant(np.ones((2, 2))))
    f = function([], stamp, "c")
    assert len({int(f()) for _ in range(3)}) == 3


def test_not_in_use_where_mkl_takes_64_bit_integers(monkeypatch):
    monkeypatch.setattr(blas, "linked_mkl", lambda: True)
    assert mklpacked.in_use()
    monkeypatch.setenv("MKL_INTERFACE_LAYER", "ILP64,GNU")
    assert not mklpacked.in_use()
    monkeypatch.setenv("MKL_INTERFACE_LAYER", "LP64")
    monkeypatch.setenv("RNNC_MKL_PACKED", "0")
    assert not mklpacked.in_use()


def test_packed_dot_without_c_code_is_numpys_product():
    a, w = pt.matrices("a", "w")
    f = pytensor.function([a, w], PackedDot()(a, w, CallStamp()(w)), mode=Mode(linker="py"))
    rng = np.random.default_rng(0)
    av, wv = rng.standard_normal((3, 4)), rng.standard_normal((4, 5))
    np.testing.assert_allclose(f(av, wv), av @ wv, rtol=1e-12)


@pytest.fixture(scope="module", params=["float32", "float64"])
def packed(request):
    """``a @ w`` through PackedDot, compiled by the C backend, and the dtype."""
    dtype = request.param
    a, w = pt.matrix("a", dtype=dtype), pt.matrix("w", dtype=dtype)
    return function([a, w], PackedDot()(a, w, CallStamp()(w)), "c"), dtype


@needs_mkl
@pytest.mark.parametrize(
    "layout",
    ["row-major", "transposed", "strided columns", "strided rows of a", "one row", "empty"],
)
def test_packed_dot_is_the_product_for_any_layout(packed, layout):
    f, dtype = packed
    rng = np.random.default_rng(1)
    a = rng.standard_normal((6, 5)).astype(dtype)
    w = rng.standard_normal((5, 7)).astype(dtype)
    if layout == "transposed":
        w = np.asfortranarray(w)
    elif layout == "strided columns":
        w = rng.standard_normal((5, 14)).astype(dtype)[:, ::2]
    elif layout == "strided rows of a":
        a = rng.standard_normal((12, 5)).astype(dtype)[::2]
    elif layout == "one row":
        a = a[:1]
    elif layout == "empty":
        a, w = a[:, :0], w[:0]
    out = f(a, w)
    assert out.shape == (a.shape[0], w.shape[1])
    np.testing.assert_allclose(out, a @ w, rtol=TOLERANCE[dtype], atol=TOLERANCE[dtype])


@needs_mkl
def test_packed_dot_packs_again_when_the_weights_change_in_place():
    """An optimiser updates weights in place: the next call must not reuse the packed
    copy of the old ones."""
    rng = np.random.default_rng(2)
    wv = rng.standard_normal((8, 16)).astype("float32")
    w = pytensor.shared(wv, name="w")
    a = pt.matrix("a", dtype="float32")
    f = function([a], PackedDot()(a, w, CallStamp()(w)), "c")
    av = rng.standard_normal((4, 8)).astype("float32")
    np.testing.assert_allclose(f(av), av @ wv, rtol=1e-5)
    w.get_value(borrow=True)[...] *= -2.0  # same buffer, new values
    np.testing.assert_allclose(f(av), av @ w.get_value(), rtol=1e-5)
    np.testing.assert_allclose(f(av[:3]), av[:3] @ w.get_value(), rtol=1e-5)  # new batch size


@needs_mkl
def test_scans_multiply_through_packed_products_and_compute_the_same(monkeypatch):
    inputs, outputs = tanh_rnn_and_gradient("float64")
    packed = function(inputs, outputs, "c")
    monkeypatch.setenv("RNNC_MKL_PACKED", "0")
    plain = function(inputs, outputs, "c")
    # the forward loop's h @ W and the backward loop's g @ W.T
    assert (ops_in_loops(packed, PackedDot), ops_in_loops(plain, PackedDot)) == (2, 0)
    # packed from the transposed view: no row-major copy of W.T before the loop
    assert (row_major_copies(packed), row_major_copies(plain)) == (0, 1)
    rng = np.random.default_rng(3)
    x, w = rng.standard_normal((5, 3, 4)), 0.5 * rng.standard_normal((4, 4))
    for got, want in zip(packed(x, w), plain(x, w), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
