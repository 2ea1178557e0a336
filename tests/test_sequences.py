"""Sequences as users have them: masks, lengths, resets, reverse, stateful chunks,
truncated and checkpointed gradients, bucketing, and the errors for bad arguments.

The oracle is :func:`per_sequence`: a plain loop over the batch that cuts each row
into its real steps and documents and runs the NumPy reference interpreter
(``rnnc.reference.run``, itself a loop over steps) on each document separately,
without any mask. Gradients are checked by finite differences (``verify_grad``).
Almost everything compiles with FAST_COMPILE; one module-scoped function each runs on
the C and Numba backends.
"""

from __future__ import annotations

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest
from conftest import FAST, load_reference
from pytensor.gradient import disconnected_grad, verify_grad
from pytensor.graph.replace import clone_replace

import rnnc
from rnnc import reference
from rnnc.bucketing import bucket, chunks, pad, padding_fraction
from rnnc.errors import InputDtypeError, InputShapeError, OptionError

B, T, IN, H = 4, 7, 2, 3

#: Padding patterns, one row each: all real, right padding, left padding, holes,
#: all padded, a single real step.
PATTERNS = np.array(
    [
        [1, 1, 1, 1, 1, 1, 1],
        [1, 1, 1, 1, 0, 0, 0],
        [0, 0, 1, 1, 1, 1, 1],
        [1, 0, 1, 1, 0, 0, 1],
        [0, 0, 0, 0, 0, 0, 0],
        [0, 0, 0, 1, 0, 0, 0],
    ],
    dtype=float,
)

LEARNED = """
cell learned(x: [I]) -> (y: [H], s: [H]):
    \"\"\"An Elman cell whose initial state is a parameter, with a second output.\"\"\"
    state h: [H] = learned
    h' = tanh(x @ W + h @ U + b)
    y = h'
    s = h * 2
"""


def per_sequence(
    cell: rnnc.CellIR,
    params: dict[str, np.ndarray],
    x: np.ndarray,
    mask: np.ndarray | None = None,
    reset: np.ndarray | None = None,
    reverse: bool = False,
    initial_state: dict[str, np.ndarray] | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """What a masked, reset, maybe reversed batch means, one document at a time.

    Row ``b`` holds the real steps ``t`` with ``mask[b, t]``; a reset mark starts a new
    document at the next real step. Each document runs on its own from the declared
    initial state, except the one processed first (the first in time, or the last
    with ``reverse``), which starts from ``initial_state`` unless, going forward, a
    reset mark precedes it. The final state is that of the document processed last.
    """
    batch, time = x.shape[:2]
    mask = np.ones((batch, time)) if mask is None else mask
    reset = np.zeros((batch, time)) if reset is None else reset
    outputs: dict[str, np.ndarray] = {}
    finals: dict[str, np.ndarray] = {}
    for b in range(batch):
        docs: list[list[int]] = []
        pending, fresh_first = False, False
        for t in range(time):
            pending = pending or bool(reset[b, t])
            if mask[b, t]:
                if pending and docs:
                    docs.append([])
                fresh_first = fresh_first or (pending and not docs)
                if not docs:
                    docs.append([])
                docs[-1].append(t)
                pending = False
        order = list(reversed(docs)) if reverse else docs
        given = (
            None if initial_state is None else {k: v[b : b + 1] for k, v in initial_state.items()}
        )
        if not order:
            order = [[]]
        for i, steps in enumerate(order):
            start = given if i == 0 and not (fresh_first and not reverse) else None
            out, state = reference.run(
                cell, params, {"x": x[b : b + 1, steps]}, initial_state=start, reverse=reverse
            )
            for name, value in out.items():
                outputs.setdefault(name, np.zeros((batch, time, *value.shape[2:])))
                outputs[name][b, steps] = value[0]
        for name, value in state.items():
            finals.setdefault(name, np.zeros((batch, *value.shape[1:])))[b] = value[0]
    return outputs, finals


def differentiable(layer: rnnc.SequenceLayer, build):
    """``build(*inputs)`` as a function of the inputs and then the layer's parameters
    (in ``layer.params`` order), for ``verify_grad``."""
    shared = list(layer.params.values())

    def fn(*args):
        n = len(args) - len(shared)
        expr = build(*args[:n])
        return clone_replace(expr, replace=dict(zip(shared, args[n:], strict=True)))

    return fn


def values(layer: rnnc.Recurrent) -> dict[str, np.ndarray]:
    return {k: v.get_value() for k, v in layer.params.items()}


def assert_matches(out: rnnc.RecurrentOutput, expected: tuple, tol: float = 1e-12) -> None:
    outputs, finals = expected
    for name, value in outputs.items():
        np.testing.assert_allclose(out.outputs[name], value, rtol=tol, atol=tol, err_msg=name)
    for name, value in finals.items():
        np.testing.assert_allclose(out.state[name], value, rtol=tol, atol=tol, err_msg=name)


@pytest.fixture(scope="module")
def lstm() -> rnnc.Recurrent:
    return rnnc.Recurrent("lstm", I=IN, H=H, dtype="float64", backend=FAST, seed=3)


@pytest.fixture(scope="module")
def learned() -> rnnc.Recurrent:
    cell = rnnc.parse(LEARNED)["learned"]
    layer = rnnc.Recurrent(cell, I=IN, H=H, dtype="float64", backend=FAST, seed=4)
    layer.params["h0"].set_value(np.array([0.5, -0.3, 0.2]))  # not the zeros it starts at
    return layer


def data(seed: int, batch: int = len(PATTERNS), time: int = T) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(batch, time, IN))


# ---------------------------------------------------------------- masks
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("which", ["lstm", "learned"])
def test_any_padding_pattern_equals_separate_sequences(which, reverse, request) -> None:
    layer = request.getfixturevalue(which)
    x = data(0)
    x[PATTERNS == 0] = 1e3  # garbage at the padded steps must not be read
    out = layer.run(x, mask=PATTERNS, reverse=reverse)
    assert_matches(out, per_sequence(layer.cell, values(layer), x, PATTERNS, reverse=reverse))
    for y in out.outputs.values():
        assert np.all(y[PATTERNS == 0] == 0)


def test_lengths_is_a_mask_and_initial_state_is_kept_over_padding(lstm) -> None:
    x = data(1, batch=3)
    lengths = np.array([7, 0, 3])
    init = {"h": np.full((3, H), 0.1), "c": np.full((3, H), -0.2)}
    out = lstm.run(x, init, lengths=lengths)
    mask = (np.arange(T) < lengths[:, None]).astype(float)
    assert_matches(out, per_sequence(lstm.cell, values(lstm), x, mask, initial_state=init))
    by_mask = lstm.run(x, init, mask=mask)
    np.testing.assert_array_equal(out.y, by_mask.y)
    np.testing.assert_array_equal(out.state["c"][1], init["c"][1])  # no real step at all


def test_symbolic_lengths(lstm) -> None:
    x = pt.tensor3("x", dtype="float64")
    n = pt.vector("n", dtype="int32")
    out = lstm(x, lengths=n)
    fn = rnnc.compile.function([x, n], [out.y, out.state["h"]], FAST)
    xs, lengths = data(2, batch=2), np.array([2, 5], dtype="int32")
    y, h = fn(xs, lengths)
    mask = (np.arange(T) < lengths[:, None]).astype(float)
    outputs, finals = per_sequence(lstm.cell, values(lstm), xs, mask)
    np.testing.assert_allclose(y, outputs["y"], atol=1e-12)
    np.testing.assert_allclose(h, finals["h"], atol=1e-12)


def test_padded_inputs_get_exactly_zero_gradient(lstm) -> None:
    x = pt.tensor3("x", dtype="float64")
    m = pt.matrix("m", dtype="float64")
    out = lstm(x, mask=m, reverse=True)
    loss = (out.y**2).sum() + out.state["c"].sum()
    grad = rnnc.compile.function([x, m], pytensor.grad(loss, x), FAST)
    xs = data(3)
    xs[PATTERNS == 0] = np.nan  # even NaN padding does not leak into the gradient
    g = grad(xs, PATTERNS)
    assert np.all(g[PATTERNS == 0] == 0)
    assert np.all(np.isfinite(g)) and np.all(np.abs(g[PATTERNS == 1]).sum(-1) > 0)


def test_masked_reversed_gradients_by_finite_differences(lstm) -> None:
    mask = PATTERNS[1:5]

    def loss(x, h0):
        fwd = lstm(x, {"h": h0}, mask=mask)
        bwd = lstm(x, {"h": h0}, mask=mask, reverse=True)
        return (fwd.y * bwd.y).sum() + (fwd.state["c"] * bwd.state["h"]).sum()

    rng = np.random.default_rng(5)
    inputs = [data(6, batch=4), rng.normal(size=(4, H)), *values(lstm).values()]
    verify_grad(differentiable(lstm, loss), inputs, rng=rng, mode=rnnc.compile.mode(FAST))


# ---------------------------------------------------------------- resets
def documents(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[list[tuple]]]:
    """Three rows of packed documents (with padding between and after some)."""
    x = data(seed, batch=3, time=8)
    mask = np.array(
        [[1, 1, 1, 1, 1, 1, 1, 1], [1, 1, 0, 1, 1, 1, 0, 0], [0, 1, 1, 1, 1, 1, 1, 0]], float
    )
    reset = np.zeros_like(mask)
    reset[0, [3, 5]] = 1  # documents 0-2, 3-4, 5-7
    reset[1, 3] = 1  # documents 0-1, 3-5 with padding between
    reset[2, [1, 4]] = 1  # a mark on the first real step, and one more
    return x, mask, reset, [[(0, 3), (3, 5), (5, 8)], [(0, 2), (3, 6)], [(1, 4), (4, 7)]]


@pytest.mark.parametrize("reverse", [False, True])
def test_resets_equal_running_the_documents_separately(learned, reverse) -> None:
    x, mask, reset, docs = documents(7)
    out = learned.run(x, mask=mask, reset=reset, reverse=reverse)
    assert_matches(out, per_sequence(learned.cell, values(learned), x, mask, reset, reverse))
    for b, row in enumerate(docs):  # literally: each document on its own
        for start, stop in row:
            alone = learned.run(x[b : b + 1, start:stop], reverse=reverse)
            np.testing.assert_allclose(out.y[b, start:stop], alone.y[0], atol=1e-12)
        last = row[0] if reverse else row[-1]
        alone = learned.run(x[b : b + 1, last[0] : last[1]], reverse=reverse)
        np.testing.assert_allclose(out.state["h"][b], alone.state["h"][0], atol=1e-12)


def test_reset_mark_on_trailing_padding_keeps_the_final_state(lstm) -> None:
    x = data(8, batch=1)
    mask = np.array([[1, 1, 1, 1, 0, 0, 0]], float)
    reset = np.array([[0, 0, 0, 0, 0, 1, 0]], float)
    with_mark = lstm.run(x, mask=mask, reset=reset)
    without = lstm.run(x, mask=mask)
    np.testing.assert_allclose(with_mark.state["c"], without.state["c"], rtol=1e-14)


def test_reset_gradients_by_finite_differences(learned) -> None:
    x, mask, reset, _ = documents(9)

    def loss(xs):
        out = learned(xs, mask=mask, reset=reset, reverse=True)
        return (out.y**2).sum() + out.s.sum() + out.state["h"].sum()

    rng = np.random.default_rng(10)
    verify_grad(
        differentiable(learned, loss),
        [x, *values(learned).values()],
        rng=rng,
        mode=rnnc.compile.mode(FAST),
    )


# ---------------------------------------------------------------- stateful chunks
def test_chunked_forward_equals_unchunked_exactly(lstm) -> None:
    x, mask = data(11, batch=3, time=10), np.ones((3, 10))
    mask[1, 6:] = 0
    mask[2, :2] = 0
    whole = lstm.run(x, mask=mask)
    lstm.reset_state()
    pieces = [
        lstm.run(c["x"], mask=c["mask"], stateful=True) for c in chunks({"x": x, "mask": mask}, 3)
    ]
    np.testing.assert_array_equal(np.concatenate([p.y for p in pieces], axis=1), whole.y)
    for name in ("h", "c"):  # every state is carried, the LSTM cell state too
        np.testing.assert_array_equal(lstm.state[name], whole.state[name])
        np.testing.assert_array_equal(pieces[-1].state[name], whole.state[name])

    # another batch size after reset_state(); the same one continues
    with pytest.raises(InputShapeError, match="reset_state"):
        lstm.run(x[:2, :3], stateful=True)
    lstm.reset_state()
    fresh = lstm.run(x[:2, :3], stateful=True)
    np.testing.assert_array_equal(fresh.y, lstm.run(x[:2, :3]).y)
    lstm.reset_state()


def test_truncated_bptt_stops_gradients_at_chunk_borders(lstm) -> None:
    """A compiled step takes the state as input and returns the next one: the
    gradient of a chunk's loss equals that of the whole sequence with the state
    between chunks cut off from the gradient (``disconnected_grad``)."""
    x = pt.tensor3("x", dtype="float64")
    h = lstm.state_inputs()
    out = lstm(x, initial_state=h)
    loss = (out.y**2).sum()
    params = list(lstm.params.values())
    step = rnnc.compile.function(
        [x, h["h"], h["c"]],
        [loss, out.state["h"], out.state["c"], *pytensor.grad(loss, params)],
        FAST,
    )
    xs = data(12, batch=2, time=8)
    state = lstm.initial_state_values(2)
    grads = None
    for chunk in chunks(xs, 4):
        _, hh, cc, *g = step(chunk, state["h"], state["c"])
        state = {"h": hh, "c": cc}
        grads = g if grads is None else [a + b for a, b in zip(grads, g, strict=True)]

    first = lstm(x[:, :4])
    cut = {k: disconnected_grad(v) for k, v in first.state.items()}
    second = lstm(x[:, 4:], initial_state=cut)
    whole = (first.y**2).sum() + (second.y**2).sum()
    expected = rnnc.compile.function([x], pytensor.grad(whole, params), FAST)(xs)
    for a, b in zip(grads, expected, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-12)
    np.testing.assert_allclose(state["c"], lstm.run(xs).state["c"], atol=1e-12)


def test_truncate_gradient_within_a_chunk(lstm) -> None:
    x = pt.tensor3("x", dtype="float64")
    out = lstm(x, truncate_gradient=3)
    g = rnnc.compile.function([x], pytensor.grad(out.state["c"].sum(), x), FAST)(data(13, 2))
    assert np.all(g[:, : T - 3] == 0) and np.all(np.abs(g[:, T - 3 :]).sum(-1) > 0)


# ---------------------------------------------------------------- checkpointing
@pytest.mark.parametrize("reverse", [False, True])
def test_checkpointing_equals_plain_scan(learned, reverse) -> None:
    x = pt.tensor3("x", dtype="float64")
    m = pt.matrix("m", dtype="float64")
    xs, mask = data(14), PATTERNS
    params = list(learned.params.values())
    results = []
    for every in (None, 3):  # 3 does not divide T = 7
        out = learned(x, mask=m, reverse=reverse, checkpoint=every)
        loss = (out.y * out.s).sum() + out.state["h"].sum()
        fn = rnnc.compile.function(
            [x, m], [out.y, out.state["h"], *pytensor.grad(loss, [x, *params])], FAST
        )
        results.append(fn(xs, mask))
    for a, b in zip(*results, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-12)


def test_states_only(lstm) -> None:
    x = pt.tensor3("x", dtype="float64")
    xs = data(33, batch=2)
    whole = lstm.run(xs)
    out = lstm(x, checkpoint=3, states_only=True)
    assert out.outputs == {}
    fn = rnnc.compile.function([x], [out.state["h"], out.state["c"]], FAST)
    for got, name in zip(fn(xs), ("h", "c"), strict=True):
        np.testing.assert_allclose(got, whole.state[name], atol=1e-12)
    deep = rnnc.Recurrent("gru", I=IN, H=H, num_layers=2, dtype="float64", backend=FAST)
    top = deep(x, states_only=True)
    assert top.outputs == {}
    final = rnnc.compile.function([x], top.state[1]["h"], FAST)(xs)
    np.testing.assert_allclose(final, deep.run(xs).state[1]["h"], atol=1e-12)


def test_checkpointing_gradients_by_finite_differences(learned) -> None:

    def loss(xs):
        out = learned(xs, checkpoint=2)
        return (out.y**2).sum() + out.state["h"].sum()

    rng = np.random.default_rng(15)
    inputs = [data(16, batch=2, time=5), *values(learned).values()]
    verify_grad(differentiable(learned, loss), inputs, rng=rng, mode=rnnc.compile.mode(FAST))


# ---------------------------------------------------------------- backends
@pytest.fixture(scope="module", params=["c", "numba"])
def compiled_bidirectional(request):
    """One bidirectional GRU per backend (its backward half is a reversed, masked
    scan), compiled once: the forward pass on PyTorch's packed case."""
    layer = rnnc.Bidirectional(
        rnnc.Recurrent("gru", I=4, H=3, dtype="float64", backend=request.param),
        rnnc.Recurrent("gru", I=4, H=3, dtype="float64", backend=request.param),
    )
    return layer


def test_masks_and_reverse_on_compiled_backends(compiled_bidirectional) -> None:
    layer = compiled_bidirectional
    ref = load_reference("gru_L1_bias_bidir_packed")
    layer.load_torch(ref)
    init = {"h": ref["h0"][0], "h_reverse": ref["h0"][1]}
    mask = (np.arange(ref["x"].shape[1]) < ref["lengths"][:, None]).astype(float)
    out = layer.run(ref["x"], init, mask=mask)
    np.testing.assert_allclose(out.y, ref["y"], rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(out.state["h"], ref["h_n"][0], rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(out.state["h_reverse"], ref["h_n"][1], rtol=1e-9, atol=1e-9)
    # the same function on holes in the padding, against the NumPy loop
    holes = np.ones_like(mask)
    holes[:, [1, 3]] = 0
    out = layer.run(ref["x"], init, mask=holes)
    fwd = per_sequence(
        layer.forward.cell, values(layer.forward), ref["x"], holes, initial_state={"h": init["h"]}
    )
    bwd = per_sequence(
        layer.backward.cell,
        values(layer.backward),
        ref["x"],
        holes,
        reverse=True,
        initial_state={"h": init["h_reverse"]},
    )
    np.testing.assert_allclose(out.y, np.concatenate([fwd[0]["y"], bwd[0]["y"]], -1), atol=1e-12)
    np.testing.assert_allclose(out.state["h_reverse"], bwd[1]["h"], atol=1e-12)


# ---------------------------------------------------------------- errors
def test_bad_sequence_arguments_name_the_argument(lstm) -> None:
    x = data(17, batch=2, time=5)
    with pytest.raises(
        InputShapeError, match=r"mask has shape \[2, 4\]; expected \[batch, time\] = \[2, 5\]"
    ):
        lstm(x, mask=np.ones((2, 4)))
    with pytest.raises(InputShapeError, match=r"mask must be \[batch, time\] = \[2, 5\].*3 axes"):
        lstm(x, mask=np.ones((2, 5, 1)))
    with pytest.raises(
        InputShapeError, match=r"lengths\[1\] = 6 is longer than the time axis of x \(5 steps\)"
    ):
        lstm.run(x, lengths=[5, 6])
    with pytest.raises(
        InputShapeError, match=r"lengths has shape \[3\]; expected \[batch\] = \[2\]"
    ):
        lstm(x, lengths=np.array([1, 2, 3]))
    with pytest.raises(InputShapeError, match="lengths must be \\[batch\\] integers"):
        lstm(x, lengths=np.array([1.5, 2.0]))
    with pytest.raises(
        InputShapeError, match=r"reset has shape \[1, 5\]; expected \[batch, time\] = \[2, 5\]"
    ):
        lstm.run(x, reset=np.zeros((1, 5)))
    with pytest.raises(InputDtypeError, match="reset has dtype <U1"):
        lstm(x, reset=np.full((2, 5), "a"))
    with pytest.raises(OptionError, match="both mask and lengths"):
        lstm(x, mask=np.ones((2, 5)), lengths=[5, 5])
    with pytest.raises(OptionError, match="checkpoint must be a positive number of steps"):
        lstm(x, checkpoint=0)
    with pytest.raises(OptionError, match="checkpoint and truncate_gradient"):
        lstm(x, checkpoint=2, truncate_gradient=2)
    with pytest.raises(OptionError, match="truncate_gradient must be"):
        lstm(x, truncate_gradient=0)
    with pytest.raises(OptionError, match="checkpoint and truncate_gradient"):
        rnnc.Recurrent("rnn", I=IN, H=H, dtype="float64", checkpoint=5)(x, truncate_gradient=2)
    with pytest.raises(
        InputShapeError, match=r"initial_state\['c'\] has shape \[batch, 4\]; expected \[batch, 3\]"
    ):
        lstm(x, initial_state={"c": np.zeros((2, 4))})
    with pytest.raises(
        InputShapeError, match=r"initial_state\['h'\] has batch 3, but x has batch 2"
    ):
        lstm.run(x, initial_state={"h": np.zeros((3, 3))})
    with pytest.raises(
        OptionError, match=r"initial_state names \['z'\], which are not states of `lstm`"
    ):
        lstm(x, initial_state={"z": np.zeros((2, 3))})


def test_bad_chunk_sizes() -> None:
    x = np.zeros((2, 10, 3))
    with pytest.raises(OptionError, match="chunk size 4 does not divide the 10 steps"):
        list(chunks(x, 4, remainder="error"))
    with pytest.raises(OptionError, match="chunk size 12 does not fit in the 10 steps"):
        list(chunks(x, 12, remainder="drop"))
    with pytest.raises(OptionError, match="chunk size must be a positive number of steps, not 0"):
        list(chunks(x, 0))
    with pytest.raises(InputShapeError, match=r"disagree on \[batch, time\]"):
        list(chunks({"x": x, "mask": np.ones((2, 9))}, 5))
    assert [c.shape[1] for c in chunks(x, 4)] == [4, 4, 2]
    assert [c.shape[1] for c in chunks(x, 4, remainder="drop")] == [4, 4]
    assert [c["m"] for c in chunks({"x": x, "m": None}, 5)] == [None, None]


# ---------------------------------------------------------------- bucketing
def test_pad_and_masks() -> None:
    x, mask = pad([np.ones((3, 2)), 2 * np.ones((1, 2))], side="left")
    assert x.shape == (2, 3, 2) and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert x[1, 2, 0] == 2 and x[1, 0, 0] == 0
    with pytest.raises(InputShapeError, match="one feature shape"):
        pad([np.ones((3, 2)), np.ones((3, 4))])


def test_bucketing_cuts_padding_and_keeps_every_sequence() -> None:
    rng = np.random.default_rng(18)
    lengths = rng.integers(1, 60, size=203)
    seqs = {"x": [rng.normal(size=(n, 2)) for n in lengths], "y": [np.arange(n) for n in lengths]}
    batches = bucket(seqs, batch_size=16, seed=1)
    seen = np.concatenate([b.index for b in batches])
    assert sorted(seen.tolist()) == list(range(203))
    for b in batches:
        np.testing.assert_array_equal(b.mask.sum(1), lengths[b.index])
        np.testing.assert_array_equal(b.lengths, lengths[b.index])
        for row, i in enumerate(b.index):
            np.testing.assert_array_equal(b.x["x"][row, : lengths[i]], seqs["x"][i])
            np.testing.assert_array_equal(b.x["y"][row, : lengths[i]], seqs["y"][i])
    assert batches.padding == pytest.approx(padding_fraction(lengths, batches.groups))
    assert batches.padding < 0.1 < 0.3 < batches.random_padding
    assert 0.3 < batches.saved < 1
    windowed = bucket(seqs["x"], batch_size=16, window=2, seed=1)
    assert batches.padding <= windowed.padding < windowed.random_padding
    assert "padding" in batches.report() and len(bucket(seqs["x"], 16, drop_last=True)) == 12
    again = bucket(seqs, batch_size=16, seed=1)
    assert all(np.array_equal(a, b) for a, b in zip(again.groups, batches.groups, strict=True))
