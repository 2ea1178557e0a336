"""Random valid cells, compiled, against the reference interpreter.

Each cell (``tests/cellgen.py``: random states of every shape, constant or learned initial
values, bindings, products on either side, ``concat``, ``layer_norm``, comparisons and
``where``, several outputs reading old and new states) is compiled as a layer, with the
passes (``optimize=True``) and without, over a padded batch, forwards or backwards. Its
outputs and final states must equal :func:`rnnc.reference.run`, and the gradient of a
random weighted sum of them, with respect to every parameter and input, must equal
central finite differences of the same sum computed by the reference interpreter. The
numerics of the generated cells are safe (``log(softplus(v) + 1)``, no ``maximum`` of a
value with itself), so the derivatives exist everywhere.

CI compiles a few cells with the fast-compiling ``"python"`` backend; the fuzz script
runs more on the C and JAX backends (``python tests/fuzz/run.py --compile N``).
"""

from __future__ import annotations

import cellgen
import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest
from conftest import FAST
from pytensor.graph.replace import clone_replace

import rnnc
from rnnc import ir
from rnnc.compile import function
from rnnc.reference import run

#: Tolerances: compiled against reference values, and gradients against finite
#: differences (central, step EPS, relative to the size of the derivative).
RTOL, ATOL = 1e-7, 1e-9
EPS, GRAD_RTOL, GRAD_ATOL = 1e-6, 1e-5, 1e-6


def sizes_for(seed: int) -> dict[str, int]:
    """Small sizes, with a 1 now and then (it catches broadcasting mistakes)."""
    ch = cellgen.RandomChooser(f"sizes:{seed}")
    return {"I": ch.choice([1, 2, 3]), "H": ch.choice([1, 2, 3, 4])}


class Case:
    """The numbers a cell is run on: parameters, inputs, a mask, and the weights of
    the weighted sum whose gradient is checked."""

    def __init__(self, cell: ir.CellIR, sizes: dict[str, int], seed: int):
        rng = np.random.default_rng(seed)
        self.cell, self.sizes = cell, sizes
        batch, time = 3, 4
        self.params = {
            name: rng.uniform(-0.8, 0.8, ir.shape_size(spec.shape, sizes))
            for name, spec in cell.params.items()
        }
        self.inputs = {
            name: rng.normal(size=(batch, time, *ir.shape_size(shape, sizes)))
            for name, shape in cell.inputs.items()
        }
        self.mask = (rng.uniform(size=(batch, time)) < 0.75).astype(float)
        self.mask[0] = 1  # one row without padding
        self.reverse = bool(rng.integers(2))
        outputs, final = self.reference(self.params, self.inputs)
        self.weights = {k: rng.normal(size=v.shape) for k, v in {**outputs, **final}.items()}

    def reference(self, params, inputs):
        return run(self.cell, params, inputs, mask=self.mask, reverse=self.reverse)

    def loss(self, params, inputs) -> float:
        outputs, final = self.reference(params, inputs)
        values = {**outputs, **final}
        return float(sum(np.sum(self.weights[k] * values[k]) for k in self.weights))


def compare(cell: ir.CellIR, backend: str, optimize: bool, seed: int = 0, sizes=None) -> None:
    """Compile ``cell`` and check its forward values and gradients (see the module)."""
    sizes = sizes or sizes_for(seed)
    case = Case(cell, sizes, seed)
    layer = rnnc.Recurrent(cell, backend=backend, dtype="float64", optimize=optimize, **sizes)
    for name, value in case.params.items():
        layer.params[name].set_value(value)
    # JAX compiles for static shapes only
    static = (lambda v: v.shape) if backend == "jax" else (lambda v: (None,) * v.ndim)
    xs = {n: pt.tensor(n, dtype="float64", shape=static(v)) for n, v in case.inputs.items()}
    mask = pt.tensor("mask", dtype="float64", shape=static(case.mask))
    out = layer(xs if len(xs) > 1 else next(iter(xs.values())), mask=mask, reverse=case.reverse)
    values = {**out.outputs, **out.state}
    loss = sum((pt.as_tensor(case.weights[k]) * values[k]).sum() for k in case.weights)
    wrt = [layer.params[k] for k in case.params] + [xs[k] for k in case.inputs]
    grads = pytensor.grad(loss, wrt, disconnected_inputs="ignore")
    fn = function([*xs.values(), mask], [*values.values(), *grads], backend)
    got = fn(*case.inputs.values(), case.mask)

    outputs, final = case.reference(case.params, case.inputs)
    want = {**outputs, **final}
    for name, value in zip(values, got, strict=False):
        np.testing.assert_allclose(value, want[name], RTOL, ATOL, err_msg=name)

    # each gradient, along a random direction, against central differences
    rng = np.random.default_rng(seed + 1)
    named = {**{("param", k): v for k, v in case.params.items()}}
    named |= {("input", k): v for k, v in case.inputs.items()}
    analytic = dict(zip(named, got[len(values) :], strict=True))
    for key, value in named.items():
        direction = rng.normal(size=value.shape)
        moved = [_moved(case, key, value + s * EPS * direction) for s in (1, -1)]
        numeric = (case.loss(*moved[0]) - case.loss(*moved[1])) / (2 * EPS)
        exact = float(np.sum(analytic[key] * direction))
        assert abs(exact - numeric) <= GRAD_ATOL + GRAD_RTOL * abs(numeric), (
            f"d loss / d {key[0]} {key[1]}: compiled {exact}, finite differences {numeric}"
        )


def _moved(case: Case, key: tuple[str, str], value: np.ndarray):
    kind, name = key
    params, inputs = dict(case.params), dict(case.inputs)
    (params if kind == "param" else inputs)[name] = value
    return params, inputs


def verify(cell: ir.CellIR, backend: str, optimize: bool, seed: int = 0) -> None:
    """:func:`pytensor.gradient.verify_grad`: the compiled gradient of the layer's
    weighted outputs, as a function of the parameters, against finite differences of
    the compiled forward pass."""
    sizes = sizes_for(seed)
    case = Case(cell, sizes, seed)
    layer = rnnc.Recurrent(cell, backend=backend, dtype="float64", optimize=optimize, **sizes)
    shared = [layer.params[k] for k in case.params]
    inputs = {n: pt.as_tensor(v) for n, v in case.inputs.items()}

    def loss(*params):
        out = layer(
            inputs if len(inputs) > 1 else next(iter(inputs.values())),
            mask=pt.as_tensor(case.mask),
            reverse=case.reverse,
        )
        values = {**out.outputs, **out.state}
        total = sum((pt.as_tensor(case.weights[k]) * values[k]).sum() for k in case.weights)
        return clone_replace(total, dict(zip(shared, params, strict=True)))

    pytensor.gradient.verify_grad(
        loss,
        list(case.params.values()),
        n_tests=1,
        rng=np.random.default_rng(seed),
        mode=rnnc.compile.mode(backend),
    )


def random_cell(seed: int) -> cellgen.Generated:
    return cellgen.valid_cell(cellgen.RandomChooser(f"compiled:{seed}"), **cellgen.SMALL)


@pytest.mark.parametrize("optimize", [False, True], ids=["plain", "optimized"])
@pytest.mark.parametrize("seed", range(5))
def test_random_cell_equals_the_reference(seed: int, optimize: bool):
    compare(random_cell(seed).ir, FAST, optimize, seed)


def test_verify_grad_on_a_random_cell():
    verify(random_cell(5).ir, FAST, True, 5)


# ---------------------------------------------------------------- found and fixed
# The random cells found these bugs in the lowering (rnnc/lower.py); the random cells
# compiled above may now hold such values too.
_PARAMS_ONLY = {
    "next_state": "    state h: [H] = 1\n    h' = tanh(b)\n    y = h' + x @ V\n",
    "output": "    state h: [H] = 1\n    h' = tanh(x @ W + h)\n    y = b + h'\n    z = c\n",
}


@pytest.mark.parametrize("what", ["next_state", "output"])
@pytest.mark.parametrize("optimize", [False, True])
def test_a_value_of_parameters_alone(what: str, optimize: bool):
    # was: "Input dimension mismatch" (batch 3, H 4) for a next state; an output of
    # shape (batch, time) instead of (batch, time, H): the step now broadcasts it
    outputs = "(y: [H], z: [H])" if what == "output" else "(y: [H])"
    text = f"cell c(x: [I]) -> {outputs}:\n" + _PARAMS_ONLY[what]
    compare(rnnc.parse(text)["c"], FAST, optimize, seed=0, sizes={"I": 2, "H": 4})


def test_a_cell_without_state_whose_outputs_all_leave_the_loop():
    # was: TypeError (a scan with no outputs); now no scan is built
    text = "cell c(x: [I]) -> (y: [H]):\n    y = tanh(x @ W)\n"
    compare(rnnc.parse(text)["c"], FAST, True, seed=0, sizes={"I": 2, "H": 4})


# ---------------------------------------------------------------- found, not yet fixed
def test_jax_hoisted_sum_with_a_dimension_of_one():
    # was a TypeError in JAX ("Shapes must be 1D sequences of concrete values ...,
    # got (4, 3, JitTracer(int64[]))") while parameters' sizes of 1 were left dynamic
    pytest.importorskip("jax")
    text = "cell c(x: [I]) -> (y: [H]):\n    state h: [] = 1\n    h' = tanh(h + x @ w)\n"
    text += "    param w: [I]\n    y = b + x @ W\n"
    compare(rnnc.parse(text)["c"], "jax", True, seed=1, sizes={"I": 3, "H": 1})
