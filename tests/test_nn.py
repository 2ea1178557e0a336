"""Model pieces: one-hot, embedding, dense, dropout, sequence cross-entropy."""

from __future__ import annotations

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest
from conftest import FAST

from rnnc.compile import function
from rnnc.errors import InputShapeError, OptionError
from rnnc.nn import Dense, Dropout, Embedding, log_softmax, one_hot, sequence_cross_entropy


def np_log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def test_one_hot():
    ids = np.array([[0, 2], [1, 1]])
    out = one_hot(ids, 3, "float64").eval()
    assert out.shape == (2, 2, 3) and out.dtype == np.float64
    np.testing.assert_array_equal(out, np.eye(3)[ids])


def test_embedding_is_one_hot_times_its_table():
    emb = Embedding(5, 4, dtype="float64", seed=1)
    ids = np.array([[4, 0, 2]], dtype="int32")
    table = emb.params["W"].get_value()
    np.testing.assert_array_equal(emb(ids).eval(), table[ids])
    np.testing.assert_allclose(emb(ids).eval(), (one_hot(ids, 5, "float64") @ table).eval())
    with pytest.raises(InputShapeError, match="integer ids"):
        emb(np.zeros((1, 3)))


def test_embedding_gradient_reaches_only_used_rows():
    emb = Embedding(4, 2, dtype="float64")
    ids = pt.imatrix("ids")
    g = pytensor.grad(emb(ids).sum(), emb.params["W"])
    out = function([ids], g, FAST)(np.array([[1, 1, 3]], "int32"))
    np.testing.assert_array_equal(out, [[0, 0], [2, 2], [0, 0], [1, 1]])


def test_dense_on_vectors_and_sequences():
    d = Dense(3, 2, dtype="float64", seed=0)
    d.params["b"].set_value(np.array([0.5, -0.5]))
    W = d.params["W"].get_value()
    x = np.arange(24.0).reshape(2, 4, 3)
    np.testing.assert_allclose(d(x).eval(), x @ W + [0.5, -0.5])
    np.testing.assert_allclose(d(x[0]).eval(), x[0] @ W + [0.5, -0.5])
    assert "b" not in Dense(3, 2, bias=False).params
    with pytest.raises(InputShapeError, match=r"Dense\(3, 2\) got 5 features"):
        d(np.zeros((2, 5)))
    with pytest.raises(OptionError, match="n_out must be a positive integer"):
        Dense(3, 0)


def test_log_softmax_is_stable():
    z = np.array([[1000.0, 0.0, -1000.0]])
    out = log_softmax(z).eval()
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, np_log_softmax(z))


def test_sequence_cross_entropy_without_and_with_mask():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 3, 4))
    targets = np.array([[0, 3, 1], [2, 2, 0]], dtype="int32")
    nll = -np.take_along_axis(np_log_softmax(logits), targets[..., None], -1)[..., 0]
    got = sequence_cross_entropy(logits, targets).eval()
    assert got == pytest.approx(nll.mean())
    mask = np.array([[1, 1, 0], [1, 0, 0]], dtype="float64")
    got = sequence_cross_entropy(logits, targets, mask).eval()
    assert got == pytest.approx((nll * mask).sum() / 3)  # padded steps do not count
    with pytest.raises(InputShapeError, match="logits"):
        sequence_cross_entropy(logits[0], targets)


def test_uniform_logits_give_log_vocabulary():
    logits = np.zeros((1, 5, 65))
    targets = np.zeros((1, 5), "int32")
    assert sequence_cross_entropy(logits, targets).eval() == pytest.approx(np.log(65))


def test_dropout_masks_scale_and_advance():
    drop = Dropout(0.5, seed=3)
    x = pt.matrix("x", dtype="float64")
    fn = function([x], drop(x), FAST, updates=list(drop.updates.items()))
    ones = np.ones((50, 40))
    a, b = fn(ones), fn(ones)
    assert set(np.unique(a)) == {0.0, 2.0}  # kept values are scaled by 1 / (1 - p)
    assert 0.4 < (a > 0).mean() < 0.6
    assert not np.array_equal(a, b)  # the generator advances
    state = drop.get_state()
    c = fn(ones)
    drop.set_state(state)
    np.testing.assert_array_equal(fn(ones), c)  # restoring the state repeats the masks
    assert drop(x, training=False) is x
    with pytest.raises(OptionError, match="dropout must be in"):
        Dropout(1.0)


def test_the_cross_entropy_gradient_matches_finite_differences():
    """The maximum that log_softmax subtracts passes no gradient: the gradient is
    still the loss's (softmax minus the one-hot target, averaged)."""
    rng = np.random.default_rng(7)
    targets = rng.integers(0, 4, size=(2, 3))
    mask = np.array([[1, 1, 0], [1, 1, 1]], "float64")
    pytensor.gradient.verify_grad(
        lambda z: sequence_cross_entropy(z, targets, mask),
        [rng.normal(size=(2, 3, 4)) * 3],
        rng=rng,
        eps=1e-7,
        abs_tol=1e-7,
        rel_tol=1e-7,
    )
