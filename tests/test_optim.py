"""Optimisers against their closed-form updates, computed here in NumPy."""

from __future__ import annotations

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest
from conftest import FAST

from rnnc.compile import function
from rnnc.errors import CheckpointError, OptionError
from rnnc.train.optim import SGD, Adagrad, Adam, RMSprop, make_optimizer, step_decay

P0 = np.array([[0.5, -1.0, 2.0], [0.1, 0.0, -0.3]])
C = np.array([[1.0, -2.0, 0.5], [3.0, 0.25, -1.0]])


def grad_of(p):
    """Gradient of the test loss sum(C * p) + 0.5 * sum(p^2): C + p."""
    return C + p


def run(opt, steps=3, p0=P0):
    """Apply ``steps`` compiled updates of ``opt`` on the test loss; the values of p."""
    p = pytensor.shared(p0.copy(), name="p")
    loss = pt.sum(C * p) + 0.5 * pt.sum(p**2)
    updates, norm = opt.updates({"p": p}, loss)
    fn = function([], norm, FAST, updates=updates)
    out, norms = [], []
    for _ in range(steps):
        norms.append(float(fn()))
        out.append(p.get_value().copy())
    return out, norms


def test_sgd_plain_and_momentum():
    got, norms = run(SGD(lr=0.1, momentum=0.0))
    p = P0.copy()
    for k in range(3):
        assert norms[k] == pytest.approx(np.linalg.norm(grad_of(p)))
        p = p - 0.1 * grad_of(p)
        np.testing.assert_allclose(got[k], p, rtol=1e-12, atol=1e-14)
    got, _ = run(SGD(lr=0.1, momentum=0.9))
    p, v = P0.copy(), np.zeros_like(P0)
    for k in range(3):
        v = 0.9 * v + grad_of(p)
        p = p - 0.1 * v
        np.testing.assert_allclose(got[k], p, rtol=1e-12, atol=1e-14)


def test_sgd_nesterov():
    got, _ = run(SGD(lr=0.05, momentum=0.5, nesterov=True))
    p, v = P0.copy(), np.zeros_like(P0)
    for k in range(3):
        g = grad_of(p)
        v = 0.5 * v + g
        p = p - 0.05 * (g + 0.5 * v)
        np.testing.assert_allclose(got[k], p, rtol=1e-12, atol=1e-14)


def test_adam():
    got, _ = run(Adam(lr=0.01, beta1=0.8, beta2=0.9, eps=1e-6), steps=4)
    p, m, v = P0.copy(), np.zeros_like(P0), np.zeros_like(P0)
    for t in range(1, 5):
        g = grad_of(p)
        m = 0.8 * m + 0.2 * g
        v = 0.9 * v + 0.1 * g**2
        p = p - 0.01 * (m / (1 - 0.8**t)) / (np.sqrt(v / (1 - 0.9**t)) + 1e-6)
        np.testing.assert_allclose(got[t - 1], p, rtol=1e-12, atol=1e-14)


def test_rmsprop_is_char_rnns():
    got, _ = run(RMSprop(lr=2e-3, decay=0.95))
    p, m = P0.copy(), np.zeros_like(P0)
    for k in range(3):
        g = grad_of(p)
        m = 0.95 * m + 0.05 * g**2
        p = p - 2e-3 * g / (np.sqrt(m) + 1e-8)
        np.testing.assert_allclose(got[k], p, rtol=1e-12, atol=1e-14)


def test_adagrad():
    got, _ = run(Adagrad(lr=0.1))
    p, s = P0.copy(), np.zeros_like(P0)
    for k in range(3):
        g = grad_of(p)
        s = s + g**2
        p = p - 0.1 * g / (np.sqrt(s) + 1e-10)
        np.testing.assert_allclose(got[k], p, rtol=1e-12, atol=1e-14)


def test_clip_by_value_then_weight_decay():
    got, norms = run(SGD(lr=0.1, clip_value=1.0, weight_decay=0.01), steps=2)
    p = P0.copy()
    for k in range(2):
        assert norms[k] == pytest.approx(np.linalg.norm(grad_of(p)))  # before clipping
        g = np.clip(grad_of(p), -1.0, 1.0) + 0.01 * p
        p = p - 0.1 * g
        np.testing.assert_allclose(got[k], p, rtol=1e-12, atol=1e-14)


def test_clip_by_global_norm_over_all_parameters():
    a = pytensor.shared(np.array([3.0, 0.0]))
    b = pytensor.shared(np.array([[4.0]]))
    loss = pt.sum(a * np.array([3.0, 0.0])) + pt.sum(b * 4.0)  # grads (3, 0) and (4): norm 5
    updates, norm = SGD(lr=1.0, clip_norm=1.0).updates({"a": a, "b": b}, loss)
    fn = function([], norm, FAST, updates=updates)
    assert float(fn()) == pytest.approx(5.0)
    np.testing.assert_allclose(a.get_value(), [3.0 - 0.6, 0.0])
    np.testing.assert_allclose(b.get_value(), [[4.0 - 0.8]])
    # below the threshold nothing is scaled
    a.set_value(np.zeros(2))
    updates, _ = SGD(lr=1.0, clip_norm=10.0).updates({"a": a, "b": b}, loss)
    function([], [], FAST, updates=updates)()
    np.testing.assert_allclose(a.get_value(), [-3.0, 0.0])


@pytest.mark.parametrize("backend", [FAST, "c"])
def test_the_global_norm_of_float32_gradients_squares_them_in_float64(backend):
    """A float32 gradient of 1e20 squares to more than float32 holds; the norm is the
    finite 1e20 all the same, and the step is taken (clipped to the norm asked)."""
    p = pytensor.shared(np.zeros(2, dtype="float32"))
    q = pytensor.shared(np.zeros(1, dtype="float32"))
    loss = pt.sum(p * np.asarray([1e20, 0.0], "float32")) + pt.sum(q * np.float32(3.0))
    updates, norm = SGD(lr=1.0, clip_norm=1.0).updates({"p": p, "q": q}, loss)
    fn = function([], norm, backend, updates=updates)
    assert float(fn()) == pytest.approx(1e20, rel=1e-6)
    np.testing.assert_allclose(p.get_value(), [-1.0, 0.0], rtol=1e-6)


def test_float32_parameters_stay_float32():
    p = pytensor.shared(P0.astype("float32"))
    opt = Adam(lr=1e-3)
    updates, _ = opt.updates({"p": p}, pt.sum(p**2))
    assert all(new.dtype == old.dtype for old, new in updates)
    function([], [], FAST, updates=updates)()
    assert p.get_value().dtype == np.float32


def test_state_dict_round_trip_and_reset():
    opt = RMSprop(lr=0.01)
    p = pytensor.shared(P0.copy())
    updates, _ = opt.updates({"p": p}, pt.sum(C * p))
    fn = function([], [], FAST, updates=updates)
    fn()
    saved = opt.state_dict()
    assert set(saved) == {"p/m", "__t", "__lr"} and int(saved["__t"]) == 1
    fn()
    opt.load_state_dict(saved)
    np.testing.assert_array_equal(opt.state["p/m"].get_value(), saved["p/m"])
    assert int(opt.t.get_value()) == 1
    with pytest.raises(CheckpointError, match="lacks p/m"):
        opt.load_state_dict({"__t": 0, "__lr": 0.1})
    opt.reset(0.5)
    assert not opt.state["p/m"].get_value().any() and float(opt.lr.get_value()) == 0.5


def test_learning_rate_is_a_shared_variable():
    opt = SGD(lr=1.0)
    p = pytensor.shared(np.array([1.0]))
    updates, _ = opt.updates({"p": p}, pt.sum(p))
    fn = function([], [], FAST, updates=updates)
    opt.lr.set_value(0.25)
    fn()
    np.testing.assert_allclose(p.get_value(), [0.75])


def test_step_decay_is_char_rnns():
    assert step_decay(2e-3, 0) == 2e-3
    assert step_decay(2e-3, 9) == 2e-3
    assert step_decay(2e-3, 10) == pytest.approx(2e-3 * 0.97)
    assert step_decay(2e-3, 15) == pytest.approx(2e-3 * 0.97**6)
    assert step_decay(1.0, 5, rate=0.5, after=0) == pytest.approx(0.5**6)
    assert step_decay(1.0, 50, rate=1.0) == 1.0


def test_bad_options():
    with pytest.raises(OptionError, match="unknown optimiser 'adamw'"):
        make_optimizer("adamw", lr=1.0)
    with pytest.raises(OptionError, match="learning rate must be positive"):
        SGD(lr=0.0)
    with pytest.raises(OptionError, match="clip_norm must be positive"):
        Adam(clip_norm=-1.0)
    with pytest.raises(OptionError, match="decay must be in"):
        RMSprop(decay=1.5)
    assert isinstance(make_optimizer("adagrad", lr=0.1), Adagrad)


@pytest.mark.parametrize(
    "opt",
    [SGD(lr=1.0), SGD(lr=1.0, clip_norm=1.0), Adam(lr=0.1, clip_norm=1.0), RMSprop(lr=0.1)],
    ids=["sgd", "sgd-clip-norm", "adam-clip-norm", "rmsprop"],
)
@pytest.mark.parametrize("bad", [np.inf, np.nan])
def test_a_step_with_gradients_not_finite_changes_nothing(opt, bad):
    p = pytensor.shared(P0.copy(), name="p")
    scale = pytensor.shared(1.0, name="scale")
    updates, norm = opt.updates({"p": p}, scale * pt.sum(C * p))
    fn = function([], norm, FAST, updates=updates)
    fn()  # one good step, so the slots are not zero
    good = p.get_value().copy()
    state = {k: v.copy() for k, v in opt.state_dict().items()}
    scale.set_value(bad)
    assert not np.isfinite(float(fn()))
    np.testing.assert_array_equal(p.get_value(), good)
    for k, v in opt.state_dict().items():
        np.testing.assert_array_equal(v, state[k], err_msg=k)
    scale.set_value(1.0)  # and the next good step goes on from there
    fn()
    assert np.isfinite(p.get_value()).all() and not np.array_equal(p.get_value(), good)


def test_clip_value_turns_an_infinite_gradient_into_a_step():
    p = pytensor.shared(P0.copy(), name="p")
    updates, norm = SGD(lr=0.1, clip_value=1.0).updates({"p": p}, np.inf * pt.sum(p))
    assert float(function([], norm, FAST, updates=updates)()) == np.inf
    np.testing.assert_allclose(p.get_value(), P0 - 0.1)
