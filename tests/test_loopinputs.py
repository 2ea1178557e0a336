"""rnnc.loopinputs: products of a loop's inputs and per-step outputs by matrices,
computed in the loop by rnnc's packed kernel (C backend without MKL), against the
same functions without the rewrite."""

from __future__ import annotations

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest
from conftest import op_types, ops_in_loops
from pytensor.tensor.blas import Dot22

from rnnc import blas, blaskernels, loopinputs, packedgemm
from rnnc.compile import function
from rnnc.packedgemm import PanelDot

T, B, N_IN, H = 5, 3, 4, 6

pytestmark = pytest.mark.skipif(
    blas.linked_mkl() or not {"avx2", "fma"} <= blaskernels.cpu_flags(),
    reason="rnnc's packed kernel is not in use here (MKL linked, or no AVX2 and FMA)",
)


def test_in_use_with_the_packed_kernel_unless_switched_off(monkeypatch):
    monkeypatch.setattr(packedgemm, "in_use", lambda: True)
    assert loopinputs.in_use()
    monkeypatch.setenv("RNNC_LOOP_INPUTS", "0")
    assert not loopinputs.in_use()
    monkeypatch.delenv("RNNC_LOOP_INPUTS")
    monkeypatch.setattr(packedgemm, "in_use", lambda: False)
    assert not loopinputs.in_use()


def _rnn(xw, u):
    """``h_t = tanh(xw_t + h_{t-1} @ U)`` and a per-step output ``y_t = 2 h_t``."""

    def step(p, h, u):
        new = pt.tanh(p + pt.dot(h, u))
        return new, new * 2

    h0 = pt.zeros((xw.shape[1], H), dtype="float32")
    hs, ys = pytensor.scan(
        step,
        sequences=[xw],
        outputs_info=[h0, None],
        non_sequences=[u],
        return_updates=False,
    )
    return hs, ys


def _compiled(build, monkeypatch, with_rewrite, gradient=True, shape=(None, None, None)):
    # the weight gradients stay two BLAS products (else rnnc.sharedproducts joins them
    # and rnnc.rowsdot makes them)
    monkeypatch.setenv("RNNC_SHARED_PRODUCTS", "0")
    monkeypatch.setenv("RNNC_ROWS_DOT", "0")
    if not with_rewrite:
        monkeypatch.setenv("RNNC_LOOP_INPUTS", "0")
    x = pt.tensor("x", dtype="float32", shape=shape)
    w = pt.matrix("w", dtype="float32", shape=(N_IN, H))
    u = pt.matrix("u", dtype="float32", shape=(H, H))
    hs, ys = _rnn(build(x, w), u)
    loss = (hs**2).sum() + ys.sum()
    grads = pytensor.grad(loss, [x, w, u]) if gradient else []
    f = function([x, w, u], [hs, ys, *grads], "c")
    monkeypatch.delenv("RNNC_LOOP_INPUTS", raising=False)
    return f


def _time_major(x, w):
    """The hoist pass's product: ``x`` time-major ``[T, B, I]``."""
    rows = x.reshape((x.shape[0] * x.shape[1], -1))
    return pt.specify_shape(pt.dot(rows, w).reshape((x.shape[0], x.shape[1], -1)), (None, None, H))


def _batch_major(x, w):
    """The same from a batch-major ``[B, T, I]`` input, transposed after."""
    return _time_major(x, w).dimshuffle(1, 0, 2)


def _values(layout):
    rng = np.random.default_rng(0)
    shape = (T, B, N_IN) if layout is _time_major else (B, T, N_IN)
    x = rng.standard_normal(shape).astype("float32")
    w = (0.5 * rng.standard_normal((N_IN, H))).astype("float32")
    u = (0.3 * rng.standard_normal((H, H))).astype("float32")
    return x, w, u


@pytest.mark.parametrize(
    ("layout", "moved_out"),
    # batch-major, the gradient reaches dG @ W.T turned around and transposed: it stays
    [(_time_major, 2), (_batch_major, 1)],
    ids=["time", "batch"],
)
def test_input_and_gradient_products_move_into_the_loops(monkeypatch, layout, moved_out):
    moved = _compiled(layout, monkeypatch, True)
    kept = _compiled(layout, monkeypatch, False)
    # after the loops: x @ W, dG @ W.T and the weight gradients X.T @ dG and H.T @ dG;
    # then only the weight gradients (sums over all steps' rows)
    dots = [sum(isinstance(n.op, Dot22) for n in f.maker.fgraph.apply_nodes) for f in (kept, moved)]
    assert dots == [4, 4 - moved_out]
    # in the loops: h @ U forward, g @ U.T backward; then x_t @ W (and g_t @ W.T) too
    assert (ops_in_loops(kept, PanelDot), ops_in_loops(moved, PanelDot)) == (2, 2 + moved_out)
    values = _values(layout)
    for got, want in zip(moved(*values), kept(*values), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_static_shapes_too(monkeypatch):
    """A training step's batch has a static shape: the reshapes' shapes are constants
    and the product's rows a static ``T*B``, which the step's product (``B`` rows)
    replaces."""
    static = {"shape": (T, B, N_IN), "gradient": True}
    moved = _compiled(_time_major, monkeypatch, True, **static)
    kept = _compiled(_time_major, monkeypatch, False, **static)
    dots = [sum(isinstance(n.op, Dot22) for n in f.maker.fgraph.apply_nodes) for f in (kept, moved)]
    assert dots == [4, 2]
    values = _values(_time_major)
    for got, want in zip(moved(*values), kept(*values), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_rows_split_into_steps_another_way_are_left_alone(monkeypatch):
    def scrambled(x, w):  # T*B rows of x @ W read as B steps of T rows: not x_t @ W
        rows = pt.dot(x.reshape((x.shape[0] * x.shape[1], -1)), w)
        return pt.specify_shape(rows.reshape((x.shape[1], x.shape[0], -1)), (None, None, H))

    moved, kept = (_compiled(scrambled, monkeypatch, on, gradient=False) for on in (True, False))
    assert ops_in_loops(moved, PanelDot) == ops_in_loops(kept, PanelDot) == 1
    values = _values(_time_major)
    for got, want in zip(moved(*values), kept(*values), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_a_product_by_a_matrix_the_loop_makes_stays_after_it(monkeypatch):
    x = pt.tensor3("x", dtype="float32")
    w = pt.matrix("w", dtype="float32", shape=(N_IN, H))
    u = pt.matrix("u", dtype="float32", shape=(H, H))
    hs, ys = _rnn(_time_major(x, w), u)
    last = pt.specify_shape(pt.dot(hs[-1].T, hs[-1]), (H, H))  # known only after the loop
    out = pt.dot(ys.reshape((ys.shape[0] * ys.shape[1], H)), last)
    f = function([x, w, u], out, "c")
    assert Dot22 in op_types(f)
    xv, wv, uv = _values(_time_major)
    h, hs_ = np.zeros((B, H), "float32"), []
    for t in range(T):
        h = np.tanh(xv[t] @ wv + h @ uv)
        hs_.append(h)
    want = (2 * np.stack(hs_)).reshape(T * B, H) @ (h.T @ h)
    np.testing.assert_allclose(f(xv, wv, uv), want, rtol=1e-4, atol=1e-5)


def test_rows_of_an_output_read_by_a_product_and_a_sum(monkeypatch):
    """The rows of the per-step output feed a product (moved into the loop) and a sum
    over rows (one input: passed over; conftest fails a test whose rewrite raises)."""
    x = pt.tensor3("x", dtype="float32")
    w = pt.matrix("w", dtype="float32", shape=(N_IN, H))
    u = pt.matrix("u", dtype="float32", shape=(H, H))
    _, ys = _rnn(_time_major(x, w), u)
    rows = ys.reshape((ys.shape[0] * ys.shape[1], H))
    f = function([x, w, u], pt.dot(rows, u) + rows.sum(axis=0), "c")
    assert ops_in_loops(f, PanelDot) == 3  # h @ U, x_t @ W and y_t @ U
    xv, wv, uv = _values(_time_major)
    h, ys_ = np.zeros((B, H), "float32"), []
    for t in range(T):
        h = np.tanh(xv[t] @ wv + h @ uv)
        ys_.append(2 * h)
    want_rows = np.stack(ys_).reshape(T * B, H)
    want = want_rows @ uv + want_rows.sum(axis=0)
    np.testing.assert_allclose(f(xv, wv, uv), want, rtol=1e-4, atol=1e-5)


def _gates(x, w, extra=None):
    """Two gates' sequences cut from one product, each with a bias of its own added
    (the GRU's form), the first steps taken as the layers do: ``[p, q]``."""
    rows = pt.dot(x.reshape((x.shape[0] * x.shape[1], -1)), w)
    first, second = pt.split(rows, [H, H], n_splits=2, axis=1)
    b1, b2 = (pt.constant(np.full((1, H), v, "float32")) for v in (0.1, -0.2))
    first = first + (b1 if extra is None else extra)
    steps = [
        pt.specify_shape(g.reshape((x.shape[0], x.shape[1], -1)), (None, None, H))[: x.shape[0]]
        for g in (first, second + b2)
    ]
    return steps


def _gated(steps_of, monkeypatch, with_rewrite):
    if not with_rewrite:
        monkeypatch.setenv("RNNC_LOOP_INPUTS", "0")
    x = pt.tensor3("x", dtype="float32")
    w = pt.matrix("w", dtype="float32", shape=(N_IN, 2 * H))
    u = pt.matrix("u", dtype="float32", shape=(H, H))
    h0 = pt.zeros((x.shape[1], H), dtype="float32")
    hs = pytensor.scan(
        lambda p, q, h, u: pt.tanh(p + pt.dot(h, u)) * pt.sigmoid(q),
        sequences=steps_of(x, w),
        outputs_info=[h0],
        non_sequences=[u],
        return_updates=False,
    )
    # forward only: PyTensor's backward loop of this scan (no values saved, as rnnc's
    # are) reads the gates' sequences again, and a product used twice stays outside
    f = function([x, w, u], hs, "c")
    monkeypatch.delenv("RNNC_LOOP_INPUTS", raising=False)
    return f


def _gated_values():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((T, B, N_IN)).astype("float32")
    w = (0.5 * rng.standard_normal((N_IN, 2 * H))).astype("float32")
    u = (0.3 * rng.standard_normal((H, H))).astype("float32")
    return x, w, u


def test_gates_cut_from_one_product_share_it_in_the_loop(monkeypatch):
    moved, kept = (_gated(_gates, monkeypatch, on) for on in (True, False))
    # one product x_t @ W in the loop for both gates, not one per gate
    assert (ops_in_loops(kept, PanelDot), ops_in_loops(moved, PanelDot)) == (1, 2)
    assert Dot22 in op_types(kept) and Dot22 not in op_types(moved)
    values = _gated_values()
    np.testing.assert_allclose(moved(*values), kept(*values), rtol=1e-5, atol=1e-6)


def test_work_on_the_rows_with_other_rows_stays_before_the_loop(monkeypatch):
    def with_rows(x, w):  # the first gate plus x's own rows: not the same at every step
        rows_x = x.reshape((x.shape[0] * x.shape[1], -1))
        extra = pt.concatenate([rows_x, rows_x[:, : H - N_IN]], axis=1)
        return _gates(x, w, extra)

    moved, kept = (_gated(with_rows, monkeypatch, on) for on in (True, False))
    assert ops_in_loops(moved, PanelDot) == ops_in_loops(kept, PanelDot) == 1
    values = _gated_values()
    np.testing.assert_allclose(moved(*values), kept(*values), rtol=1e-5, atol=1e-6)
