"""rnnc.interpreted: the C mode runs cheap operations outside loops in Python, with the
same results as their C code, and leaves a scan's step and everything else compiled."""

from __future__ import annotations

import pickle

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest
from pytensor.scan.op import Scan

from rnnc import interpreted
from rnnc.compile import function
from rnnc.interpreted import Interpreted


def _graph():
    """A function's graph with views, a join, a filled array, a slice increment in
    place and a scan whose step slices too."""
    x = pt.tensor3("x", dtype="float64")
    w = pt.matrix("w", dtype="float64")
    xt = x.dimshuffle(1, 0, 2)  # time-major view
    flat = xt.reshape((x.shape[1] * x.shape[0], x.shape[2]))
    joined = pt.join(1, w, 2 * w)
    zeros = pt.zeros((x.shape[1], x.shape[0], joined.shape[1]))
    start = pt.inc_subtensor(zeros[:, 0], 1.0)

    def step(a, z, h):
        return pt.tanh(a @ joined + z[:, : joined.shape[1]] + h)

    hs = pytensor.scan(
        step, sequences=[xt, start], outputs_info=[pt.zeros_like(start[0])], return_updates=False
    )
    y = (hs[1:] ** 2).sum() + (flat.T * flat.T).sum()
    return [x, w], [hs[-1], y, *pytensor.grad(y, [x, w])]


@pytest.fixture(scope="module")
def compiled():
    """The graph compiled for C with the rewrite and without it."""
    inputs, outputs = _graph()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RNNC_INTERPRETED", "0")
        plain = function(inputs, outputs, "c")
    return function(inputs, outputs, "c"), plain


def test_cheap_operations_outside_loops_run_in_python(compiled):
    fn, plain = compiled
    nodes = fn.maker.fgraph.toposort()
    wrapped = {type(n.op.op) for n in nodes if isinstance(n.op, Interpreted)}
    assert len(wrapped) >= 5 and wrapped <= set(interpreted.OPERATIONS)
    # everything else keeps its C code: products, sums, elementwise work, the scans
    kept = [n.op for n in nodes if not isinstance(n.op, Interpreted)]
    assert not any(isinstance(op, interpreted.OPERATIONS) for op in kept)
    assert any(isinstance(op, Scan) for op in kept)
    assert not any(isinstance(n.op, Interpreted) for n in plain.maker.fgraph.toposort())


def test_a_scans_step_keeps_its_c_code(compiled):
    fn, _ = compiled
    for node in fn.maker.fgraph.toposort():
        if isinstance(node.op, Scan):
            inner = node.op.fn.maker.fgraph.toposort()
            assert inner and not any(isinstance(n.op, Interpreted) for n in inner)


def test_results_are_bitwise_those_of_the_c_code(compiled):
    fn, plain = compiled
    rng = np.random.default_rng(0)
    for shape in [(3, 4, 2), (5, 2, 2)]:  # a new shape reuses nothing stale
        x, w = rng.standard_normal(shape), rng.standard_normal((2, 3))
        for _ in range(2):  # a second call on the buffers of the first
            for got, want in zip(fn(x, w), plain(x, w), strict=True):
                np.testing.assert_array_equal(got, want)


def test_a_function_with_interpreted_operations_pickles(compiled):
    fn, _ = compiled
    again = pickle.loads(pickle.dumps(fn))
    x, w = np.ones((2, 3, 2)), np.ones((2, 3))
    for got, want in zip(again(x, w), fn(x, w), strict=True):
        np.testing.assert_array_equal(got, want)


def test_switched_off_by_rnnc_interpreted(monkeypatch):
    assert interpreted.in_use()
    monkeypatch.setenv("RNNC_INTERPRETED", "0")
    assert not interpreted.in_use()


def test_a_training_step_compiles_its_bookkeeping_and_evaluation_does_not(monkeypatch):
    """``interpreted_ops=False`` for the function called at every step of training;
    the others keep their bookkeeping in Python."""
    from rnnc.train import LanguageModel
    from rnnc.train.optim import Adam

    monkeypatch.setenv("RNNC_CACHE", "0")
    model = LanguageModel("rnn", 5, rnn_size=3, num_layers=1, dtype="float64")
    compiled = model.compile(Adam(lr=0.01), "c", ("train", "eval"))

    def interpreted_nodes(fn) -> int:
        return sum(isinstance(n.op, Interpreted) for n in fn.maker.fgraph.apply_nodes)

    assert interpreted_nodes(compiled.train_fn) == 0
    assert interpreted_nodes(compiled.eval_fn) > 0
