"""Masked, stacked and bidirectional layers equal PyTorch (values and gradients).

The cases come from tests/reference (read with NumPy only): ``*_packed`` ran PyTorch
on ``pack_padded_sequence`` with unsorted lengths and garbage at the padded steps;
``L2_*`` are two-layer modules; ``*_bidir*`` bidirectional ones. rnnc runs the same
weights (``load_torch``) with ``lengths=`` and compares outputs, final states, the loss
``sum(y*gy) + sum(h_n*gh_n) (+ sum(c_n*gc_n))`` and its gradient with respect to the
input, the initial states and every parameter, to 1e-9. One function is compiled per
mode and structure and reused for the padded and the packed case.
"""

from __future__ import annotations

import functools

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest
from conftest import FAST, TORCH_MODES, load_reference

import rnnc
from rnnc.layers import state_leaves

TOL = {"rtol": 1e-9, "atol": 1e-9}
#: reference case -> (num_layers, bidirectional)
CASES = {
    "L1_bias_packed": (1, False),
    "L2_bias": (2, False),
    "L2_bias_packed": (2, False),
    "L1_bias_bidir": (1, True),
    "L1_bias_bidir_packed": (1, True),
}


def _torch_rows(layer: rnnc.Recurrent, layers: int, bidirectional: bool) -> list[tuple]:
    """For each leaf of ``layer``'s state, in ``state_leaves`` order: (state name, row
    in PyTorch's ``[L*D, B, H]`` layout)."""
    directions = 2 if bidirectional else 1
    state = layer.state_shapes if layers > 1 else [layer.state_shapes]
    rows = []
    for level, names in enumerate(state):
        for name in names:
            reverse = name.endswith("_reverse")
            rows.append((name.removesuffix("_reverse"), level * directions + reverse))
    return rows


@functools.cache
def _compiled(mode: str, layers: int, bidirectional: bool):
    layer = rnnc.Recurrent(
        TORCH_MODES[mode],
        I=4,
        H=3,
        num_layers=layers,
        bidirectional=bidirectional,
        dtype="float64",
        backend=FAST,
    )
    x = pt.tensor3("x", dtype="float64")
    lengths = pt.vector("lengths", dtype="int64")
    gy = pt.tensor3("gy", dtype="float64")
    cotangents = {s: pt.tensor3(f"g{s}_n", dtype="float64") for s in ("h", "c")}
    init = layer.state_inputs()
    out = layer(x, initial_state=init, lengths=lengths)
    rows = _torch_rows(layer, layers, bidirectional)
    finals = state_leaves(out.state)
    loss = (out.y * gy).sum()
    for (name, row), final in zip(rows, finals, strict=True):
        loss += (final * cotangents[name][row]).sum()
    starts = state_leaves(init)
    wrt = [x, *starts, *layer.params.values()]
    used = [cotangents["h"]] + ([cotangents["c"]] if mode == "lstm" else [])
    fn = rnnc.compile.function(
        [x, lengths, *starts, gy, *used],
        [out.y, *finals, loss, *pytensor.grad(loss, wrt)],
        FAST,
    )
    return layer, fn, rows


def _torch_grads(layer: rnnc.Recurrent, grads: list[np.ndarray]) -> dict[str, np.ndarray]:
    """Gradients of ``layer.params`` under PyTorch's names and layouts."""
    saved = {k: v.get_value() for k, v in layer.params.items()}
    try:
        for shared, g in zip(layer.params.values(), grads, strict=True):
            shared.set_value(g)
        return layer.torch_state()
    finally:
        for k, v in saved.items():
            layer.params[k].set_value(v)


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("mode", list(TORCH_MODES))
def test_equals_pytorch(mode: str, case: str) -> None:
    ref = load_reference(f"{mode}_{case}")
    layers, bidirectional = CASES[case]
    assert (int(ref["meta_layers"]), bool(ref["meta_bidirectional"])) == CASES[case]
    layer, fn, rows = _compiled(mode, layers, bidirectional)
    layer.load_torch(ref)
    starts = [ref[f"{name}0"][row] for name, row in rows]
    cot = [ref["gh_n"]] + ([ref["gc_n"]] if mode == "lstm" else [])
    y, *rest = fn(ref["x"], ref["lengths"], *starts, ref["gy"], *cot)
    finals, rest = rest[: len(rows)], rest[len(rows) :]
    loss, grad_x, rest = rest[0], rest[1], rest[2:]
    grad_starts, grad_params = rest[: len(rows)], rest[len(rows) :]

    np.testing.assert_allclose(y, ref["y"], **TOL)
    np.testing.assert_allclose(loss, ref["loss"], **TOL)
    np.testing.assert_allclose(grad_x, ref["grad_x"], **TOL)
    for (name, row), final, grad in zip(rows, finals, grad_starts, strict=True):
        np.testing.assert_allclose(final, ref[f"{name}_n"][row], **TOL)
        np.testing.assert_allclose(grad, ref[f"grad_{name}0"][row], **TOL)
    torch_grads = _torch_grads(layer, grad_params)
    assert set(torch_grads) == {k[len("grad_") :] for k in ref if k.startswith("grad_w")} | {
        k[len("grad_") :] for k in ref if k.startswith("grad_b")
    }
    for key, grad in torch_grads.items():
        np.testing.assert_allclose(grad, ref[f"grad_{key}"], **TOL, err_msg=key)

    # padded steps: zero outputs, and exactly zero gradient on their inputs
    padded = np.arange(ref["x"].shape[1])[None, :] >= ref["lengths"][:, None]
    assert np.all(y[padded] == 0)
    assert np.all(grad_x[padded] == 0)


def test_torch_state_round_trip() -> None:
    """``torch_state`` gives PyTorch's keys for every structure, and ``load_torch`` of
    it gives back the same parameters."""
    ref = load_reference("gru_L2_bias")
    layer = rnnc.Recurrent("gru", I=4, H=3, num_layers=2, dtype="float64")
    layer.load_torch(ref)
    state = layer.torch_state()
    keys = [k for k in ref if k.startswith(("weight_", "bias_"))]
    assert sorted(state) == sorted(keys)
    for k in keys:
        np.testing.assert_array_equal(state[k], ref[k])
    deep = rnnc.Recurrent("lstm", I=4, H=3, num_layers=2, bidirectional=True, seed=1)
    names = set(deep.torch_state())
    assert "weight_ih_l1_reverse" in names and "bias_hh_l0" in names and len(names) == 16
    other = rnnc.Recurrent("lstm", I=4, H=3, num_layers=2, bidirectional=True, seed=2)
    other.load_torch(deep.torch_state())
    for k, v in deep.params.items():
        np.testing.assert_array_equal(other.params[k].get_value(), v.get_value())
    assert deep.params["l1.forward.W_ii"].get_value().shape == (6, 3)


def test_explicit_stack_and_bidirectional_equal_pytorch() -> None:
    """``Stack`` and ``Bidirectional`` built by hand load PyTorch's names too."""
    ref = load_reference("lstm_L2_bias_packed")
    stack = rnnc.Stack(
        [
            rnnc.Recurrent("lstm", I=4, H=3, dtype="float64", backend=FAST),
            rnnc.Recurrent("lstm", I=3, H=3, dtype="float64", backend=FAST),
        ]
    )
    stack.load_torch(ref)
    init = [{"h": ref["h0"][i], "c": ref["c0"][i]} for i in range(2)]
    out = stack.run(ref["x"], init, lengths=ref["lengths"])
    np.testing.assert_allclose(out.y, ref["y"], **TOL)
    for i in range(2):
        np.testing.assert_allclose(out.state[i]["c"], ref["c_n"][i], **TOL)

    ref = load_reference("rnn_relu_L1_bias_bidir_packed")
    bi = rnnc.Bidirectional(
        rnnc.Recurrent("rnn_relu", I=4, H=3, dtype="float64", backend=FAST),
        rnnc.Recurrent("rnn_relu", I=4, H=3, dtype="float64", backend=FAST),
    )
    bi.load_torch(ref)
    out = bi.run(ref["x"], {"h": ref["h0"][0], "h_reverse": ref["h0"][1]}, lengths=ref["lengths"])
    np.testing.assert_allclose(out.y, ref["y"], **TOL)
    np.testing.assert_allclose(out.state["h_reverse"], ref["h_n"][1], **TOL)
