"""The compiled scan equals the NumPy reference interpreter on cells of every kind."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest
from conftest import FAST

import rnnc
from rnnc import lower, reference

CELLS = {
    "old_and_new_state": """
cell acc(x: [N]) -> (before: [N], after: [N], total: []):
    state s: [N] = 0.5
    s' = s * 0.9 + x
    before = s
    after = s'
    total = s' @ s'
""",
    "two_inputs_matvec": """
cell two(x: [I], u: [J]) -> (y: [H]):
    state h: [H] = 0
    param A: [H, I]
    h' = tanh(A @ x + u @ B + h @ U)
    y = h' * 2 - h
""",
    "functions": """
cell f(x: [I]) -> (y: [H]):
    state h: [H] = 0
    state t: [] = 1
    param v: [H]
    a = x @ W + b
    c = where(a > 0, exp(-abs(a)), softplus(a))
    d = maximum(sqrt(c + 1), minimum(log(c + 2), relu(a)))
    h' = layer_norm(h @ U + d) * g + sigmoid(t) / 2 ** 2
    t' = t * 0.5 + (d @ v)
    y = h'
""",
    "concat_and_learned": """
cell cat(x: [I]) -> (y: [H]):
    state h: [H] = learned
    h' = tanh(concat(x, h) @ W + b)
    y = -h'
""",
    "matrix_state": """
cell mat(x: [K]) -> (y: [K]):
    state M: [K, K] = 0
    M' = M * 0.5 + tanh(x @ P) * 0.1
    y = M' @ x + x @ M
""",
}


def _random_inputs(cell, sizes, batch, time, rng, dtype="float64"):
    return {
        name: rng.normal(size=(batch, time, *rnnc.ir.shape_size(shape, sizes))).astype(dtype)
        for name, shape in cell.inputs.items()
    }


def _randomize(layer, rng):
    for shared in layer.params.values():
        value = shared.get_value()
        shared.set_value(rng.normal(scale=0.5, size=value.shape).astype(value.dtype))


@pytest.mark.parametrize("name", sorted(CELLS))
@pytest.mark.parametrize("batch,size", [(3, 2), (1, 1)])
def test_scan_equals_reference(name, batch, size):
    (cell,) = rnnc.parse(CELLS[name]).values()
    sizes = {d: size + i for i, d in enumerate(sorted(cell.dims()))}
    layer = rnnc.Recurrent(cell, dtype="float64", backend=FAST, **sizes)
    rng = np.random.default_rng(0)
    _randomize(layer, rng)
    xs = _random_inputs(cell, sizes, batch, 4, rng)
    got = layer.run(xs if len(xs) > 1 else next(iter(xs.values())))
    params = {k: v.get_value() for k, v in layer.params.items()}
    want_out, want_state = reference.run(layer.cell, params, xs)
    for key in want_out:
        np.testing.assert_allclose(got.outputs[key], want_out[key], rtol=1e-12, atol=1e-12)
    for key in want_state:
        np.testing.assert_allclose(got.state[key], want_state[key], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["functions", "concat_and_learned", "two_inputs_matvec"])
def test_gradient_matches_finite_differences(name):
    (cell,) = rnnc.parse(CELLS[name]).values()
    sizes = {d: 2 + i for i, d in enumerate(sorted(cell.dims()))}
    layer = rnnc.Recurrent(cell, dtype="float64", **sizes)
    rng = np.random.default_rng(1)
    xs = _random_inputs(cell, sizes, 2, 3, rng)
    params = {
        k: v.get_value() + rng.normal(scale=0.3, size=v.get_value().shape)
        for k, v in layer.params.items()
    }
    names = list(params)

    def loss(*values):
        inputs = dict(zip(xs, values[: len(xs)], strict=True))
        layer_params = dict(zip(names, values[len(xs) :], strict=True))
        for key, var in layer_params.items():
            layer.params[key] = var
        out = layer(inputs if len(inputs) > 1 else next(iter(inputs.values())))
        return sum((v**2).sum() for v in out.outputs.values()) + sum(
            v.sum() for v in out.state.values()
        )

    pytensor.gradient.verify_grad(
        loss,
        [*xs.values(), *params.values()],
        rng=np.random.default_rng(2),
        mode=rnnc.compile.mode(FAST),
        eps=1e-7,
        abs_tol=1e-6,
        rel_tol=1e-6,
    )


def test_float32_stays_float32():
    layer = rnnc.Recurrent(rnnc.parse(CELLS["functions"])["f"], I=3, H=2)
    x = pt.tensor3("x", dtype="float32")
    out = layer(x)
    assert out.outputs["y"].dtype == "float32"
    assert out.state["t"].dtype == "float32"
    graph = pytensor.grad(out.outputs["y"].sum(), list(layer.params.values()))
    assert all(g.dtype == "float32" for g in graph)
    fn = rnnc.compile.function([x], out.outputs["y"], FAST)
    float64_nodes = [
        node
        for node in fn.maker.fgraph.toposort()
        if any(getattr(o.type, "dtype", "") == "float64" for o in node.outputs)
    ]
    assert not float64_nodes


def test_symbolic_batch_of_one_and_varying_batch():
    layer = rnnc.Recurrent("gru", I=2, H=1, dtype="float64", backend=FAST)
    for batch in (1, 4, 1):
        out = layer.run(np.ones((batch, 3, 2)))
        assert out.outputs["y"].shape == (batch, 3, 1)
        assert out.state["h"].shape == (batch, 1)


def test_reference_takes_sizes_seen_in_states_alone():
    (cell,) = rnnc.parse(
        "cell c(x: [I]) -> (y: [I]):\n    state h: [H] = 0.5\n    h' = tanh(h)\n    y = x\n"
    ).values()
    _, state = reference.run(cell, {}, {"x": np.zeros((2, 3, 1))}, sizes={"H": 4})
    np.testing.assert_allclose(state["h"], np.tanh(np.tanh(np.tanh(np.full((2, 4), 0.5)))))


#: The custom cell of the examples (the minimal gated unit).
MGU = Path(__file__).parents[1] / "examples" / "cells" / "mgu.cell"


@pytest.mark.parametrize("cell", ["lstm", "mgu"])
def test_the_gates_of_a_fused_product_are_one_split(cell):
    """The fuse pass's slices of one product are lowered as one Split (and their
    gradient one Join), not a Subtensor and an IncSubtensor per gate: fewer kinds of
    C module to compile (LSTM gradient, cold: 48 -> 38 modules, 15.8 -> 12.4 s), and
    for the custom cell, whose step cuts the sequence of its input products, no
    IncSubtensor into zeros per step (1.8% of its C gradient)."""
    spec = MGU if cell == "mgu" else cell
    from pytensor.graph.traversal import ancestors
    from pytensor.scan.op import Scan
    from pytensor.tensor.basic import Split
    from pytensor.tensor.subtensor import IncSubtensor, Subtensor

    layer = rnnc.Recurrent(spec, I=4, H=3, dtype="float64")
    x = pt.tensor3("x", dtype="float64")  # shapes unknown: the sizes come from the cell
    y = layer(x).outputs["y"]
    (scan,) = {v.owner.op for v in ancestors([y]) if v.owner and isinstance(v.owner.op, Scan)}
    inner = {type(v.owner.op) for v in ancestors(scan.inner_outputs) if v.owner}
    assert Split in inner and Subtensor not in inner
    grads = pytensor.grad((y**2).sum(), list(layer.params.values()))
    ops = [v.owner.op for v in ancestors(grads) if v.owner and isinstance(v.owner.op, Scan)]
    backward = {type(v.owner.op) for op in ops for v in ancestors(op.inner_outputs) if v.owner}
    assert IncSubtensor not in backward


@pytest.mark.parametrize("widen", [True, False])  # C's defaults, JAX's
@pytest.mark.parametrize("cell", ["lstm", "gru", "mgu"])
def test_the_backward_loop_computes_no_product_of_the_forward_step_again(cell, widen):
    """Every product in the backward loop has a transposed operand (``d @ W.T`` or
    ``h.T @ d``); a product of two untransposed values there is the forward's computed
    again. It was, every step, for the GRU's ``h @ W_hn`` (fixed by saving that factor)
    and for the custom cell's ``(f * h) @ U_n`` (fixed by the order of the saved values)."""
    from pytensor.graph.traversal import ancestors
    from pytensor.scan.op import Scan
    from pytensor.tensor.elemwise import DimShuffle
    from pytensor.tensor.math import Dot

    spec = MGU if cell == "mgu" else cell
    layer = rnnc.Recurrent(spec, I=4, H=3, dtype="float64", optimize={"widen": widen})
    x = pt.tensor3("x", dtype="float64")
    grads = pytensor.grad((layer(x).outputs["y"] ** 2).sum(), list(layer.params.values()))
    (backward,) = {
        v.owner.op
        for v in ancestors(grads)
        if v.owner and isinstance(v.owner.op, Scan) and "grad" in v.owner.op.name
    }
    products = [
        v.owner
        for v in ancestors(backward.inner_outputs)
        if v.owner and isinstance(v.owner.op, Dot)
    ]
    assert products
    for node in products:
        assert any(
            a.owner is not None
            and isinstance(a.owner.op, DimShuffle)
            and tuple(a.owner.op.new_order) == (1, 0)
            for a in node.inputs
        ), f"{cell}: the backward loop computes {node} again"


@pytest.mark.parametrize("inputs,hidden", [(7, 2), (2, 3)])
def test_values_before_the_loop_are_the_same_batch_major_or_time_major(inputs, hidden):
    """The GRU's input products (3H per step) are computed batch-major when its input
    is wider (I > 3H, then transposed), time-major otherwise (the input transposed):
    either way the reference's values and finite differences' gradients, with padding."""
    layer = rnnc.Recurrent("gru", I=inputs, H=hidden, dtype="float64", backend=FAST)
    optimized = rnnc.passes.optimize(layer.cell, layer.optimize, layer.sizes)
    assert lower._precompute_batch_major(optimized, layer.sizes) == (inputs > 3 * hidden)
    rng = np.random.default_rng(3)
    _randomize(layer, rng)
    x = rng.normal(size=(3, 4, inputs))
    mask = np.array([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]])
    got = layer.run(x, mask=mask)
    params = {k: v.get_value() for k, v in layer.params.items()}
    want_out, want_state = reference.run(layer.cell, params, {"x": x}, mask=mask)
    np.testing.assert_allclose(got.outputs["y"], want_out["y"], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got.state["h"], want_state["h"], rtol=1e-12, atol=1e-12)

    def loss(x_var, w_var):
        layer.params["W_in"] = w_var
        out = layer(x_var, mask=pt.as_tensor(mask))
        return (out.outputs["y"] ** 2).sum()

    pytensor.gradient.verify_grad(
        loss,
        [x, params["W_in"]],
        rng=np.random.default_rng(4),
        mode=rnnc.compile.mode(FAST),
        eps=1e-7,
        abs_tol=1e-6,
        rel_tol=1e-6,
    )
