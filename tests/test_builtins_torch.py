"""The built-in cells equal PyTorch's RNN, LSTM and GRU (values and gradients).

The reference cases were written by tests/reference/make_torch_refs.py with PyTorch in
float64; this module reads them with NumPy only. Each case runs one layer with a
non-zero initial state; the loss is ``sum(y*gy) + sum(h_n*gh_n) (+ sum(c_n*gc_n))``.
"""

from __future__ import annotations

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest
from conftest import FAST, TORCH_MODES, load_reference

import rnnc
from rnnc.layers import TORCH_LAYOUT

CASES = [
    f"{mode}_{case}" for mode in TORCH_MODES for case in ("L1_bias", "L1_nobias", "L1_bias_H1")
]


def _torch_layout(cell: str, grads: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Gradients of rnnc's parameters, stacked the way PyTorch stores its tensors."""
    out = {}
    for torch_name, names in TORCH_LAYOUT[cell].items():
        if all(n in grads for n in names):
            parts = [grads[n].T if torch_name.startswith("weight") else grads[n] for n in names]
            out[f"{torch_name}_l0"] = np.concatenate(parts, axis=0)
    return out


def _run_case(name: str):
    ref = load_reference(name)
    mode = str(ref["meta_mode"])
    cell = TORCH_MODES[mode]
    features = ref["x"].shape[-1]
    hidden = ref["h0"].shape[-1]
    layer = rnnc.Recurrent(
        cell, I=features, H=hidden, dtype="float64", backend=FAST, bias=bool(ref["meta_bias"])
    )
    layer.load_torch(ref)

    x = pt.tensor3("x", dtype="float64")
    states = {s: pt.matrix(f"{s}0", dtype="float64") for s in layer.cell.states}
    out = layer(x, initial_state=states)
    loss = (out.outputs["y"] * ref["gy"]).sum() + (out.state["h"] * ref["gh_n"][0]).sum()
    if cell == "lstm":
        loss += (out.state["c"] * ref["gc_n"][0]).sum()
    params = list(layer.params)
    wrt = [x, *states.values(), *layer.params.values()]
    fn = rnnc.compile.function(
        [x, *states.values()],
        [out.outputs["y"], out.state["h"], loss, *pytensor.grad(loss, wrt)],
        FAST,
    )
    init = [ref["h0"][0]] + ([ref["c0"][0]] if cell == "lstm" else [])
    y, h_n, value, grad_x, *rest = fn(ref["x"], *init)
    grad_states = dict(zip(states, rest[: len(states)], strict=True))
    grad_params = dict(zip(params, rest[len(states) :], strict=True))
    return ref, cell, (y, h_n, value, grad_x, grad_states, grad_params)


@pytest.mark.parametrize("name", CASES)
def test_builtin_equals_pytorch(name):
    ref, cell, (y, h_n, loss, grad_x, grad_states, grad_params) = _run_case(name)
    tol = dict(rtol=0, atol=1e-9)
    np.testing.assert_allclose(y, ref["y"], **tol)
    np.testing.assert_allclose(h_n, ref["h_n"][0], **tol)
    np.testing.assert_allclose(loss, ref["loss"], **tol)
    np.testing.assert_allclose(grad_x, ref["grad_x"], **tol)
    np.testing.assert_allclose(grad_states["h"], ref["grad_h0"][0], **tol)
    if cell == "lstm":
        np.testing.assert_allclose(grad_states["c"], ref["grad_c0"][0], **tol)
    torch_grads = _torch_layout(cell, grad_params)
    expected = {
        k[len("grad_") :]: v for k, v in ref.items() if k.startswith("grad_") and "_l0" in k
    }
    assert set(torch_grads) == set(expected)
    for key, value in expected.items():
        np.testing.assert_allclose(torch_grads[key], value, err_msg=key, **tol)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_torch_state_round_trip(cell):
    layer = rnnc.Recurrent(cell, I=3, H=2, dtype="float64")
    state = layer.torch_state()
    other = rnnc.Recurrent(cell, I=3, H=2, dtype="float64", seed=1)
    other.load_torch(state)
    for name, shared in layer.params.items():
        np.testing.assert_array_equal(other.params[name].get_value(), shared.get_value())
    gates = {"rnn": 1, "lstm": 4, "gru": 3}[cell]
    assert state["weight_ih_l0"].shape == (gates * 2, 3)
    assert state["weight_hh_l0"].shape == (gates * 2, 2)
    assert state["bias_hh_l0"].shape == (gates * 2,)


def test_load_torch_rejects_wrong_sizes():
    layer = rnnc.Recurrent("gru", I=3, H=2)
    bigger = rnnc.Recurrent("gru", I=3, H=4).torch_state()
    with pytest.raises(rnnc.errors.InputShapeError, match="weight_ih_l0 gives W_ir the shape"):
        layer.load_torch(bigger)


def test_default_init_is_pytorchs_uniform():
    """PyTorch draws every RNN weight and bias from U(-1/sqrt(H), 1/sqrt(H))."""
    layer = rnnc.Recurrent("lstm", I=5, H=16, seed=3)
    for value in (p.get_value() for p in layer.params.values()):
        assert np.abs(value).max() <= 0.25
        assert np.abs(value).max() > 0.2
