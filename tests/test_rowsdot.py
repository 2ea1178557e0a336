"""rnnc.rowsdot: ``[A_1 | ... | A_n].T @ B`` by rnnc's AVX-512 kernel (C backend,
float32), against NumPy in float64, and the rewrite in a cell's gradient."""

from __future__ import annotations

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rnnc import blaskernels, rowsdot
from rnnc.colsum import ColumnSum, column_sums
from rnnc.compile import function
from rnnc.rowsdot import RowsDot
from rnnc.sharedproducts import JoinRows

needs_avx512 = pytest.mark.skipif(
    "avx512f" not in blaskernels.cpu_flags(), reason="the kernel needs AVX-512 F"
)


def _close(got, want, rows):
    """float32 sums of ``rows`` products against float64 ones."""
    scale = np.sqrt(max(rows, 1)) * max(float(np.abs(want).max()), 1.0)
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-6 * scale)


def test_in_use_unless_switched_off(monkeypatch):
    monkeypatch.setattr(blaskernels, "cpu_flags", lambda: {"avx2", "fma", "avx512f"})
    monkeypatch.delenv("RNNC_ROWS_DOT", raising=False)
    monkeypatch.delenv("RNNC_PANEL_GEMM", raising=False)
    from rnnc import blas

    monkeypatch.setattr(blas, "linked_mkl", lambda: False)
    assert rowsdot.in_use()
    monkeypatch.setenv("RNNC_ROWS_DOT", "0")
    assert not rowsdot.in_use()
    monkeypatch.delenv("RNNC_ROWS_DOT")
    monkeypatch.setattr(blaskernels, "cpu_flags", lambda: {"avx2", "fma"})
    assert not rowsdot.in_use()  # the AVX-512 kernel only


@pytest.fixture(scope="module")
def two_sources():
    """``[states | inputs].T @ g`` and ``g``'s column sums, compiled for C."""
    a, x, g = (
        pt.tensor(n, dtype="float32", shape=s)
        for n, s in (("a", (None,) * 3), ("x", (None, None)), ("g", (None, None)))
    )
    product, sums = RowsDot(sums=True)(a, x, g)
    return function([a, x, g], [product, sums], "c")


@needs_avx512
@pytest.mark.parametrize(
    ("t", "b", "h", "i", "n"),
    [
        (101, 32, 256, 128, 1024),  # the medium LSTM's widths: blocks of KC rows and a rest
        (3, 5, 7, 9, 21),  # widths and columns not multiples of 8 and 16
        (1, 1, 1, 1, 1),
        (0, 4, 8, 8, 16),  # no rows: zeros
    ],
)
def test_joined_product_and_sums_match_numpy(two_sources, t, b, h, i, n):
    rng = np.random.default_rng(t + n)
    states = rng.standard_normal((t + 1, b, h)).astype("float32")[::-1][1:]  # a view
    inputs = rng.standard_normal((t * b, i)).astype("float32")
    g = rng.standard_normal((t * b, n)).astype("float32")
    product, sums = two_sources(states, inputs, g)
    joined = np.concatenate([states.reshape(t * b, h), inputs], axis=1).astype("float64")
    _close(product, joined.T @ g, t * b)
    assert product.shape == (h + i, n) and product.dtype == np.float32
    np.testing.assert_array_equal(sums, column_sums(g, "float64"))  # ColumnSum's, exactly


@needs_avx512
def test_any_strides():
    """A transposed source (its last axis not contiguous) and a ``B`` of columns of a
    wider matrix, each read where it is."""
    a, g = pt.matrix("a", dtype="float32"), pt.matrix("g", dtype="float32")
    f = function([a, g], RowsDot()(a, g), "c")
    rng = np.random.default_rng(3)
    a_t = rng.standard_normal((11, 40)).astype("float32").T  # [40, 11], strides (4, 44)
    wide = rng.standard_normal((40, 50)).astype("float32")
    _close(f(a_t, wide[:, 3:37]), a_t.astype("float64").T @ wide[:, 3:37], 40)
    _close(f(a_t, wide.T.copy().T), a_t.astype("float64").T @ wide, 40)


@needs_avx512
def test_rows_must_agree(two_sources):
    states = np.zeros((2, 3, 4), "float32")
    with pytest.raises(ValueError, match="rows"):
        two_sources(states, np.zeros((6, 2), "float32"), np.zeros((5, 3), "float32"))


def test_perform_matches_numpy():
    """The Python implementation (other linkers) computes the same."""
    a, x, g = (
        pt.tensor3("a", dtype="float32"),
        pt.matrix("x", dtype="float32"),
        pt.matrix("g", dtype="float32"),
    )
    product, sums = RowsDot(sums=True)(a, x, g)
    f = pytensor.function([a, x, g], [product, sums], mode="FAST_COMPILE")
    rng = np.random.default_rng(4)
    av = rng.standard_normal((3, 2, 5)).astype("float32")
    xv = rng.standard_normal((6, 3)).astype("float32")
    gv = rng.standard_normal((6, 7)).astype("float32")
    got, got_sums = f(av, xv, gv)
    _close(got, np.concatenate([av.reshape(6, 5), xv], 1).astype("float64").T @ gv, 6)
    np.testing.assert_allclose(got_sums, gv.astype("float64").sum(0), rtol=1e-6)


def _lstm_gradients(monkeypatch, on):
    """The weight and bias gradients of an LSTM layer, compiled for C."""
    import rnnc

    monkeypatch.setenv("RNNC_ROWS_DOT", "1" if on else "0")
    layer = rnnc.Recurrent("lstm", I=12, H=16, backend="c")
    x = pt.tensor("x", dtype="float32", shape=(None, None, 12))
    y = layer(x).outputs["y"]
    params = list(layer.params.values())
    f = function([x], pytensor.grad((y * y).sum(), [x, *params]), "c")
    monkeypatch.delenv("RNNC_ROWS_DOT")
    return f


@needs_avx512
def test_lstm_weight_and_bias_gradients(monkeypatch):
    if not rowsdot.in_use():
        pytest.skip("the C backend links MKL here")
    on, off = _lstm_gradients(monkeypatch, True), _lstm_gradients(monkeypatch, False)
    ops = {type(n.op) for n in on.maker.fgraph.apply_nodes}
    assert RowsDot in ops and JoinRows not in ops and ColumnSum not in ops
    assert RowsDot not in {type(n.op) for n in off.maker.fgraph.apply_nodes}
    x = np.random.default_rng(5).standard_normal((3, 7, 12)).astype("float32")
    for got, want in zip(on(x), off(x), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def three_sources():
    """``[a | b | c].T @ g`` with ``g``'s column sums: a view of three axes between two
    matrices, so that slivers take columns of two sources."""
    a, b, c, g = (
        pt.tensor(n, dtype="float32", shape=(None,) * d)
        for n, d in (("a", 2), ("b", 3), ("c", 2), ("g", 2))
    )
    product, sums = RowsDot(sums=True)(a, b, c, g)
    return function([a, b, c, g], [product, sums], "c")


@needs_avx512
@settings(max_examples=40, deadline=None)
@given(
    steps=st.integers(0, 30),
    batch=st.integers(1, 40),
    widths=st.tuples(st.integers(1, 20), st.integers(1, 20), st.integers(1, 20)),
    n=st.integers(1, 70),
    reversed_steps=st.booleans(),
    transposed=st.booleans(),
)
def test_any_shapes_and_views(three_sources, steps, batch, widths, n, reversed_steps, transposed):
    """Random row counts (across blocks of ``KC``), widths that leave slivers part
    full, a source read from the end, one whose rows are not contiguous, and a ``B``
    of columns of a wider matrix."""
    rng = np.random.default_rng(steps * 1000 + batch + n)
    rows = steps * batch
    wa, wb, wc = widths
    a = rng.standard_normal((wa, rows) if transposed else (rows, wa)).astype("float32")
    a = a.T if transposed else a  # [rows, wa], its last axis not contiguous if transposed
    b = rng.standard_normal((steps, batch, wb)).astype("float32")
    b = b[::-1] if reversed_steps else b
    c = rng.standard_normal((rows, wc)).astype("float32")
    wide = rng.standard_normal((rows, n + 5)).astype("float32")
    g = wide[:, 2 : 2 + n]
    product, sums = three_sources(a, b, c, g)
    joined = np.concatenate([a, b.reshape(rows, wb), c], axis=1).astype("float64")
    _close(product, joined.T @ g, rows)
    np.testing.assert_array_equal(sums, column_sums(np.ascontiguousarray(g), "float64"))
