"""Stacked and bidirectional layers, dropout between layers, learned initial states.

The oracle runs the layers one after the other with :func:`per_sequence` (the NumPy
reference interpreter on each sequence, see test_sequences.py): a stack is layer 2
over layer 1's outputs, a bidirectional layer the forward and the reversed NumPy
loops merged. Gradients are checked by finite differences.
"""

from __future__ import annotations

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest
from conftest import FAST
from pytensor.gradient import verify_grad
from test_sequences import LEARNED, PATTERNS, assert_matches, data, differentiable, per_sequence
from test_sequences import values as params_of

import rnnc
from rnnc.errors import OptionError

COPY = """
cell copy(x: [I]) -> (y: [I]):
    \"\"\"Outputs its input: shows what reaches a layer.\"\"\"
    state s: [I] = 0
    s' = x
    y = x
"""


def layer(cell: str = "gru", i: int = 2, h: int = 3, seed: int = 0) -> rnnc.Recurrent:
    return rnnc.Recurrent(cell, I=i, H=h, dtype="float64", backend=FAST, seed=seed)


def expected_bidirectional(bi: rnnc.Bidirectional, x, mask=None, reset=None, merge="concat"):
    fwd_out, fwd_state = per_sequence(bi.forward.cell, params_of(bi.forward), x, mask, reset)
    bwd_out, bwd_state = per_sequence(
        bi.backward.cell, params_of(bi.backward), x, mask, reset, reverse=True
    )
    a, b = fwd_out["y"], bwd_out["y"]
    y = {"concat": np.concatenate([a, b], -1), "sum": a + b, "mean": (a + b) / 2}[merge]
    return {"y": y}, {**fwd_state, **{k + "_reverse": v for k, v in bwd_state.items()}}


# ---------------------------------------------------------------- stacks
@pytest.mark.parametrize("reverse", [False, True])
def test_stack_equals_the_layers_one_after_the_other(reverse) -> None:
    cell = rnnc.parse(LEARNED)["learned"]
    bottom = rnnc.Recurrent(cell, I=2, H=3, dtype="float64", backend=FAST, seed=1)
    bottom.params["h0"].set_value(np.array([0.3, -0.1, 0.4]))
    top = layer("lstm", i=3, h=2, seed=2)
    stack = rnnc.Stack([bottom, top])
    x = data(20)
    init = [None, {"c": np.full((len(PATTERNS), 2), 0.5)}]
    out = stack.run(x, init, mask=PATTERNS, reverse=reverse)
    first = per_sequence(bottom.cell, params_of(bottom), x, PATTERNS, reverse=reverse)
    second = per_sequence(
        top.cell, params_of(top), first[0]["y"], PATTERNS, reverse=reverse, initial_state=init[1]
    )
    assert_matches(rnnc.RecurrentOutput(out.outputs, out.state[1]), second)
    np.testing.assert_allclose(out.state[0]["h"], first[1]["h"], atol=1e-12)
    assert list(stack.params)[:3] == ["l0.h0", "l0.W", "l0.U"]


def test_num_layers_sizes_states_and_names() -> None:
    deep = rnnc.Recurrent("gru", I=2, H=3, num_layers=3, dtype="float64", backend=FAST)
    assert deep.params["l0.W_ir"].get_value().shape == (2, 3)
    assert deep.params["l2.W_ir"].get_value().shape == (3, 3)
    assert deep.params["l1.W_ir"].name == "gru.l1.W_ir"
    assert deep.state_shapes == [{"h": (3,)}] * 3 and deep.output_shapes == {"y": (3,)}
    both = rnnc.Recurrent("lstm", I=2, H=3, num_layers=2, bidirectional=True)
    assert both.params["l1.forward.W_ii"].get_value().shape == (6, 3)
    assert both.state_shapes[1] == {"h": (3,), "c": (3,), "h_reverse": (3,), "c_reverse": (3,)}
    assert both.output_shapes == {"y": (6,)}

    x = data(21, batch=2)
    init = deep.initial_state_values(2)
    init[1]["h"] = np.full((2, 3), 0.7)
    out = deep.run(x, init, lengths=[7, 4])
    assert len(out.state) == 3 and out.y.shape == (2, 7, 3)
    manual = x
    for i, sub in enumerate(deep.inner.layers):
        step = sub.run(manual, init[i], lengths=[7, 4])
        np.testing.assert_allclose(out.state[i]["h"], step.state["h"], atol=1e-12)
        manual = step.y
    np.testing.assert_allclose(out.y, manual, atol=1e-12)


def test_stacked_gradients_by_finite_differences() -> None:
    deep = rnnc.Recurrent("rnn", I=2, H=2, num_layers=2, dtype="float64", backend=FAST, seed=3)
    mask = PATTERNS[1:4]

    def loss(x, h1):
        out = deep(x, [None, {"h": h1}], mask=mask, reverse=True)
        return (out.y**2).sum() + out.state[0]["h"].sum() * 2 + out.state[1]["h"].sum()

    rng = np.random.default_rng(22)
    inputs = [data(23, batch=3), rng.normal(size=(3, 2)), *params_of(deep).values()]
    verify_grad(differentiable(deep, loss), inputs, rng=rng, mode=rnnc.compile.mode(FAST))


def test_stateful_stack_carries_every_layer() -> None:
    deep = rnnc.Recurrent("lstm", I=2, H=3, num_layers=2, dtype="float64", backend=FAST)
    x = data(24, batch=2, time=9)
    whole = deep.run(x)
    parts = [deep.run(x[:, i : i + 4], stateful=True).y for i in range(0, 9, 4)]
    np.testing.assert_array_equal(np.concatenate(parts, axis=1), whole.y)
    for got, want in zip(deep.state, whole.state, strict=True):
        np.testing.assert_array_equal(got["c"], want["c"])
    deep.reset_state()
    assert deep.state is None


# ---------------------------------------------------------------- dropout
def test_dropout_between_layers_in_training_only() -> None:
    copy = rnnc.Recurrent(rnnc.parse(COPY)["copy"], I=40, dtype="float64", backend=FAST)
    stack = rnnc.Stack([layer("rnn", i=2, h=40), copy], dropout=0.4, seed=7)
    x = pt.tensor3("x", dtype="float64")
    xs = data(25, batch=6)
    clean = stack.run(xs).y
    np.testing.assert_allclose(clean, stack.layers[0].run(xs).y, atol=1e-12)

    out = stack(x, training=True)
    assert len(out.updates) == 1
    fn = rnnc.compile.function([x], out.y, FAST, updates=out.updates)
    first, second = fn(xs), fn(xs)
    dropped = first == 0
    assert 0.3 < dropped.mean() < 0.5  # p = 0.4 of 1680 values
    np.testing.assert_allclose(first[~dropped], clean[~dropped] / 0.6, atol=1e-12)
    assert np.any((second == 0) != dropped)  # the generator advances

    same = rnnc.Stack([stack.layers[0], copy], dropout=0.4, seed=7)
    replay = same(x, training=True)
    again = rnnc.compile.function([x], replay.y, FAST, updates=replay.updates)(xs)
    np.testing.assert_array_equal(again, first)  # the same seed, the same masks
    inference = rnnc.compile.function([x], stack(x).y, FAST)(xs)
    np.testing.assert_array_equal(inference, clean)

    with pytest.raises(OptionError, match=r"dropout=0\.5 acts between stacked layers"):
        rnnc.Recurrent("gru", I=2, H=3, dropout=0.5)
    with pytest.raises(OptionError, match=r"dropout must be in \[0, 1\)"):
        rnnc.Stack([copy], dropout=1.0)


# ---------------------------------------------------------------- learned initial states
def test_learned_initial_state_is_a_trainable_parameter() -> None:
    cell = rnnc.parse(LEARNED)["learned"]
    model = rnnc.Recurrent(cell, I=2, H=3, dtype="float64", backend=FAST, seed=5)
    assert "h0" in model.params and np.all(model.params["h0"].get_value() == 0)
    x = pt.tensor3("x", dtype="float64")
    out = model(x, lengths=np.array([3, 1, 4]))
    loss = ((out.y - 0.5) ** 2).sum()
    h0 = model.params["h0"]
    sgd = rnnc.compile.function([x], loss, FAST, updates={h0: h0 - 0.1 * pytensor.grad(loss, h0)})
    xs = data(26, batch=3, time=4)
    losses = [float(sgd(xs)) for _ in range(5)]
    assert losses[-1] < losses[0] and np.any(h0.get_value() != 0)
    np.testing.assert_allclose(model.initial_state_values(2)["h"], [h0.get_value()] * 2)
    mask = (np.arange(4) < np.array([3, 1, 4])[:, None]).astype(float)
    assert_matches(model.run(xs, lengths=[3, 1, 4]), per_sequence(cell, params_of(model), xs, mask))


# ---------------------------------------------------------------- bidirectional
@pytest.mark.parametrize("merge", ["concat", "sum", "mean"])
def test_bidirectional_equals_forward_and_reversed_loops(merge) -> None:
    bi = rnnc.Bidirectional(layer("lstm", seed=8), layer("lstm", seed=9), merge=merge)
    x = data(27)
    out = bi.run(x, mask=PATTERNS)
    assert_matches(out, expected_bidirectional(bi, x, PATTERNS, merge=merge))
    assert bi.output_shapes == {"y": (6,) if merge == "concat" else (3,)}


def test_bidirectional_over_packed_documents() -> None:
    from test_sequences import documents

    bi = rnnc.Bidirectional(layer("gru", seed=10))  # the backward copy gets its own weights
    assert not np.allclose(
        bi.forward.params["W_ir"].get_value(), bi.backward.params["W_ir"].get_value()
    )
    x, mask, reset, _ = documents(28)
    out = bi.run(x, mask=mask, reset=reset)
    assert_matches(out, expected_bidirectional(bi, x, mask, reset))


def test_bidirectional_gradients_by_finite_differences() -> None:
    bi = rnnc.Bidirectional(layer("gru", h=2, seed=11), merge="mean")
    mask = PATTERNS[2:5]

    def loss(x):
        out = bi(x, mask=mask)
        return (out.y**2).sum() + (out.state["h"] * out.state["h_reverse"]).sum()

    rng = np.random.default_rng(29)
    inputs = [data(30, batch=3), *params_of(bi).values()]
    verify_grad(differentiable(bi, loss), inputs, rng=rng, mode=rnnc.compile.mode(FAST))


def test_stack_of_bidirectional_equals_num_layers_bidirectional() -> None:
    built = rnnc.Recurrent(
        "rnn", I=2, H=3, num_layers=2, bidirectional=True, dtype="float64", backend=FAST
    )
    by_hand = rnnc.Stack(
        [
            rnnc.Bidirectional(layer("rnn", seed=1), layer("rnn", seed=2)),
            rnnc.Bidirectional(layer("rnn", i=6, seed=3), layer("rnn", i=6, seed=4)),
        ]
    )
    by_hand.load_torch(built.torch_state())
    x = data(31)
    a, b = built.run(x, mask=PATTERNS), by_hand.run(x, mask=PATTERNS)
    np.testing.assert_array_equal(a.y, b.y)
    np.testing.assert_array_equal(a.state[1]["h_reverse"], b.state[1]["h_reverse"])


def test_combination_errors() -> None:
    bi = rnnc.Bidirectional(layer("gru"))
    x = data(32, batch=2)
    with pytest.raises(OptionError, match="is bidirectional and cannot carry its state"):
        bi.run(x, stateful=True)
    with pytest.raises(OptionError, match="reverse=True has no meaning"):
        bi(x, reverse=True)
    with pytest.raises(OptionError, match="merge='max' is not a way to merge"):
        rnnc.Bidirectional(layer("gru"), merge="max")
    with pytest.raises(OptionError, match="the directions take different inputs"):
        rnnc.Bidirectional(layer("gru"), layer("gru", i=3))
    with pytest.raises(OptionError, match="must be a one-layer Recurrent"):
        rnnc.Bidirectional(rnnc.Recurrent("gru", I=2, H=3, num_layers=2))
    with pytest.raises(OptionError, match=r"layer 1 \(`gru`\) takes \{'x': \(2,\)\}, but layer 0"):
        rnnc.Stack([layer("gru"), layer("gru")])
    with pytest.raises(OptionError, match="Stack takes a non-empty list of layers"):
        rnnc.Stack([])
    deep = rnnc.Recurrent("gru", I=2, H=3, num_layers=2, dtype="float64")
    with pytest.raises(OptionError, match=r"initial_state must be a list of 2 per-layer states"):
        deep(x, initial_state={"h": np.zeros((2, 3))})
    with pytest.raises(OptionError, match=r"initial_state\[1\] names \['c'\]"):
        deep(x, initial_state=[None, {"c": np.zeros((2, 3))}])
    with pytest.raises(OptionError, match="num_layers must be a positive integer"):
        rnnc.Recurrent("gru", I=2, H=3, num_layers=0)
