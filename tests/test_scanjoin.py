"""rnnc.scanjoin: a loop's per-step outputs that another output joins are read from
the joined one, and the loop no longer writes them."""

from __future__ import annotations

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest
from pytensor.scan.op import Scan
from pytensor.tensor.basic import Join

from rnnc.compile import function

pytest.importorskip("jax")


def _loop():
    """A step that returns ``a``, ``b`` and ``join(a, b)``, all used after the loop."""
    x = pt.tensor3("x", dtype="float64")
    w = pt.matrix("w", dtype="float64")

    def step(xt):
        a = pt.specify_shape(xt @ w, (None, 3))
        b = pt.specify_shape(pt.tanh(xt), (None, 2))
        return a, b, pt.concatenate([a, b], axis=1)

    a, b, ab = pytensor.scan(step, sequences=[x], return_updates=False)
    return [x, w], [a[::-1] * 2, b.sum(), ab @ np.ones(5)]


def _per_step_outputs(fn) -> list[int]:
    return [
        node.op.info.n_nit_sot for node in fn.maker.fgraph.toposort() if isinstance(node.op, Scan)
    ]


@pytest.fixture(scope="module")
def compiled():
    inputs, outputs = _loop()
    plain = pytensor.function(inputs, outputs, mode="FAST_COMPILE")
    return function(inputs, outputs, "jax"), plain


def test_the_loop_writes_only_the_joined_output(compiled):
    rewritten, plain = compiled
    assert _per_step_outputs(plain) == [3]
    assert _per_step_outputs(rewritten) == [1]


def test_the_values_are_the_same(compiled):
    rewritten, plain = compiled
    rng = np.random.default_rng(0)
    x, w = rng.normal(size=(4, 2, 2)), rng.normal(size=(2, 3))
    for got, want in zip(rewritten(x, w), plain(x, w), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-14)


def test_a_join_of_values_the_loop_does_not_return_changes_nothing():
    x = pt.tensor3("x", dtype="float64")
    ab = pytensor.scan(
        lambda xt: pt.concatenate([xt * 2, pt.tanh(xt)], axis=1),
        sequences=[x],
        return_updates=False,
    )
    fn = function([x], [ab], "jax")
    assert _per_step_outputs(fn) == [1]
    value = np.random.default_rng(1).normal(size=(3, 2, 2))
    np.testing.assert_allclose(fn(value)[0], np.concatenate([value * 2, np.tanh(value)], -1))


def _joins(fn) -> int:
    return sum(isinstance(node.op, Join) for node in fn.maker.fgraph.toposort())


@pytest.mark.parametrize("backend", ["jax", "python"])
def test_a_join_of_the_slices_of_one_array_is_that_array(backend):
    """``join(-1, g[::-1, :, 0:2], g[::-1, :, 2:5])`` reshaped to rows, as the gradient of
    a fused product joins its gates' gradients: the array itself, reversed and reshaped."""
    g = pt.tensor3("g", dtype="float64", shape=(4, 3, 5))
    pieces = [
        pt.specify_shape(g[::-1, :, a:b], (4, 3, b - a)).reshape((12, b - a))
        for a, b in [(0, 2), (2, 5)]
    ]
    fn = function([g], pt.concatenate(pieces, axis=1) * 2, backend)
    value = np.random.default_rng(2).normal(size=(4, 3, 5))
    np.testing.assert_allclose(fn(value), value[::-1].reshape(12, 5) * 2)
    if backend == "jax":
        assert _joins(fn) == 0


@pytest.mark.parametrize(
    "cuts",
    [[(0, 2), (3, 5)], [(2, 5), (0, 2)]],
    ids=["a gap", "out of order"],
)
def test_slices_that_do_not_tile_the_array_stay_joined(cuts):
    g = pt.tensor3("g", dtype="float64", shape=(4, 3, 5))
    fn = function([g], pt.concatenate([g[:, :, a:b] for a, b in cuts], axis=2), "jax")
    assert _joins(fn) == 1
    value = np.random.default_rng(3).normal(size=(4, 3, 5))
    np.testing.assert_allclose(fn(value), np.concatenate([value[..., a:b] for a, b in cuts], 2))


def test_the_lstm_gradient_on_jax_equals_the_python_backends():
    """The case the rewrites are for: the LSTM's backward loop returns its joined gate
    gradient once, and the gradient is the one PyTensor's Python mode computes."""
    import rnnc

    mask = pt.constant(np.array([[1, 1, 1, 0], [1, 1, 1, 1]], "float64"))
    layer = rnnc.Recurrent("lstm", I=3, H=2, dtype="float64", seed=4, backend="jax")
    x = pt.tensor("x", dtype="float64", shape=(2, 4, 3))
    out = layer(x, mask=mask)
    loss = (out.outputs["y"] ** 2).sum() + out.state["c"].sum()
    grads = pytensor.grad(loss, [x, *layer.params.values()])
    on_jax, python = (function([x], grads, backend) for backend in ("jax", "python"))
    backward = [node.op for node in on_jax.maker.fgraph.toposort() if isinstance(node.op, Scan)][-1]
    widths = [o.type.shape[-1] for o in backward.inner_nitsot_outs(backward.inner_outputs)]
    assert widths == [8]  # [g_i | g_f | g_g | g_o], and not each gate's apart
    value = np.random.default_rng(5).normal(size=(2, 4, 3))
    for got, want in zip(on_jax(value), python(value), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
