"""rnnc.sharedproducts: products that share their right operand made as one (C backend),
against the same functions without the rewrite."""

from __future__ import annotations

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest
from pytensor.tensor.blas import Dot22

from rnnc import sharedproducts
from rnnc.compile import function
from rnnc.sharedproducts import JoinRows

T, B, N_IN, H = 5, 3, 4, 6


def test_in_use_unless_switched_off(monkeypatch):
    monkeypatch.delenv("RNNC_SHARED_PRODUCTS", raising=False)
    assert sharedproducts.in_use()
    monkeypatch.setenv("RNNC_SHARED_PRODUCTS", "0")
    assert not sharedproducts.in_use()


def test_join_rows_reads_views_and_arrays_of_any_rank():
    rng = np.random.default_rng(0)
    states = rng.standard_normal((T + 1, B, H))[::-1][1:]  # read from the end: a view
    inputs = rng.standard_normal((T * B, N_IN))
    a, b = pt.tensor3("a"), pt.matrix("b")
    f = function([a, b], JoinRows()(a, b), "c")
    want = np.concatenate([states.reshape(T * B, H), inputs], axis=1)
    np.testing.assert_array_equal(f(states, inputs), want)
    with pytest.raises(ValueError, match="different numbers of rows"):
        f(states, inputs[1:])


def _rnn_gradients(monkeypatch, joined):
    """An RNN's gradients, ``h_t = tanh(x_t @ W + h_{t-1} @ U)``: the weights' are
    ``X.T @ dA`` and ``H.T @ dA`` (``dA`` the pre-activations' gradients)."""
    if not joined:
        monkeypatch.setenv("RNNC_SHARED_PRODUCTS", "0")
    x = pt.tensor3("x")
    w, u = pt.matrix("w", shape=(N_IN, H)), pt.matrix("u", shape=(H, H))
    xw = pt.dot(x.reshape((x.shape[0] * x.shape[1], -1)), w).reshape((x.shape[0], x.shape[1], H))
    hs = pytensor.scan(
        lambda p, h, u: pt.tanh(p + pt.dot(h, u)),
        sequences=[xw],
        outputs_info=[pt.zeros((x.shape[1], H))],
        non_sequences=[u],
        return_updates=False,
    )
    f = function([x, w, u], pytensor.grad((hs**2).sum(), [x, w, u]), "c")
    monkeypatch.delenv("RNNC_SHARED_PRODUCTS", raising=False)
    return f


def _dots(f):
    return sum(isinstance(n.op, Dot22) for n in f.maker.fgraph.apply_nodes)


def test_weight_gradients_become_one_product(monkeypatch):
    joined = _rnn_gradients(monkeypatch, True)
    apart = _rnn_gradients(monkeypatch, False)
    # x @ W before the loop; X.T @ dA, H.T @ dA (then one) and dA @ W.T after it
    assert (_dots(apart), _dots(joined)) == (4, 3)
    assert any(isinstance(n.op, JoinRows) for n in joined.maker.fgraph.apply_nodes)
    rng = np.random.default_rng(1)
    values = (
        rng.standard_normal((T, B, N_IN)),
        0.5 * rng.standard_normal((N_IN, H)),
        0.3 * rng.standard_normal((H, H)),
    )
    for got, want in zip(joined(*values), apart(*values), strict=True):
        np.testing.assert_array_equal(got, want)  # the same sums in the same order


def test_products_by_different_matrices_stay_apart():
    a1, a2 = pt.matrix("a1"), pt.matrix("a2")
    b1, b2 = pt.matrix("b1"), pt.matrix("b2")
    f = function([a1, a2, b1, b2], [pt.dot(a1.T, b1), pt.dot(a2.T, b2)], "c")
    assert _dots(f) == 2
    assert not any(isinstance(n.op, JoinRows) for n in f.maker.fgraph.apply_nodes)
