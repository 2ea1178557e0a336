"""The passes keep the meaning of a cell: the reference interpreter gives the same
numbers before and after each pass, on the built-in cells and on random cells."""

from __future__ import annotations

import numpy as np
import pytest
from cellgen import random_cells
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import rnnc
from rnnc import ir
from rnnc.errors import OptionError
from rnnc.passes import DEFAULTS, OFF, PASSES, SAVED_PREFIX, optimize, resolve
from rnnc.passes.cse import cse
from rnnc.passes.fold import fold
from rnnc.passes.fuse import fuse
from rnnc.passes.hoist import hoist
from rnnc.passes.save import save
from rnnc.passes.sink import sink
from rnnc.passes.widen import widen
from rnnc.reference import run

SIZES = {"I": 3, "H": 4}
BUILTINS = ["rnn", "rnn_relu", "lstm", "gru"]


def _params(cell: ir.CellIR, sizes: dict[str, int], rng: np.random.Generator) -> dict:
    return {
        name: rng.uniform(-0.8, 0.8, ir.shape_size(spec.shape, sizes))
        for name, spec in cell.params.items()
    }


def _inputs(cell: ir.CellIR, sizes, rng, batch=2, time=4) -> dict:
    return {
        name: rng.normal(size=(batch, time, *ir.shape_size(shape, sizes)))
        for name, shape in cell.inputs.items()
    }


def assert_same_meaning(before: ir.CellIR, after: ir.CellIR, sizes=SIZES, seed=0) -> None:
    """The reference interpreter agrees on ``before`` and ``after`` (float64), with
    and without a mask, forwards and backwards."""
    rng = np.random.default_rng(seed)
    params = _params(before, sizes, rng)
    inputs = _inputs(before, sizes, rng)
    mask = np.array([[1, 1, 0, 1], [1, 0, 0, 0]])
    for kwargs in ({}, {"mask": mask, "reverse": True}):
        out_a, state_a = run(before, params, inputs, **kwargs)
        out_b, state_b = run(after, params, inputs, **kwargs)
        visible = {k: v for k, v in out_b.items() if not k.startswith(SAVED_PREFIX)}
        assert sorted(visible) == sorted(out_a)
        for name, value in out_a.items():
            np.testing.assert_allclose(visible[name], value, rtol=1e-9, atol=1e-12)
        for name, value in state_a.items():
            np.testing.assert_allclose(state_b[name], value, rtol=1e-9, atol=1e-12)


SINGLE = {
    "fold": fold,
    "cse": cse,
    "sink": sink,
    "hoist": hoist,
    "fuse": lambda cell: fuse(cell, SIZES),
    "widen": lambda cell: widen(fuse(hoist(cell), SIZES), SIZES),
    "save": save,
    "all": lambda cell: optimize(cell, True, SIZES),
}


@pytest.mark.parametrize("name", BUILTINS)
@pytest.mark.parametrize("which", list(SINGLE))
def test_pass_keeps_builtin_meaning(name, which):
    cell = rnnc.load_cell(name)
    assert_same_meaning(cell, SINGLE[which](cell))


def test_lstm_after_all_passes_has_one_product_per_step_in_the_loop():
    cell = optimize(rnnc.load_cell("lstm"), True, SIZES)
    loop = ir.walk([*cell.next_state.values(), *cell.outputs.values()])
    products = [n for n in loop if n.op == "matmul"]
    assert len(products) == 1
    assert products[0].args[0] == ir.Node("state", (), ("H",), "h")
    assert products[0].args[1].shape == ("H", "4*H")
    before = [n for n in ir.walk(list(cell.precompute.values())) if n.op == "matmul"]
    assert len(before) == 1 and before[0].args[1].shape == ("I", "4*H")
    assert dict(cell.postcompute) == {"y": ir.Node("new", (), ("H",), "h")}
    # widen: one [4H] product goes into the loop, which adds the biases' sum to it,
    # then the product there (per step and example: two batched additions of [4H])
    (pre,) = cell.precompute.values()
    assert pre == before[0]
    adds = [n for n in loop if n.op == "add" and n.shape == ("4*H",) and n.batched]
    assert len(adds) == 2
    inner, outer = sorted(adds, key=lambda n: products[0] in n.args)
    assert set(outer.args) == {products[0], inner}
    assert ir.Node("seq", (), ("4*H",), "_wide0") in inner.args
    (biases,) = (a for a in inner.args if a.op != "seq")
    assert not biases.batched and {n.value for n in ir.walk([biases]) if n.op == "param"} == {
        f"b_{k}{g}" for k in "ih" for g in "ifgo"
    }


WIDEN_IN_LOOP = """
cell c(x: [I]) -> (y: [H]):
    state h: [H] = 0
    state g: [H] = 0
    h' = tanh(h @ A + b)
    g' = sigmoid(h @ B + d) * g + x @ C
    y = h' + g'
"""


def test_widen_adds_parameters_to_a_fused_product_once():
    cell = rnnc.parse(WIDEN_IN_LOOP)["c"]
    after = optimize(cell, {"save": "none"}, SIZES)
    loop = ir.walk([*after.next_state.values(), *after.outputs.values()])
    product = next(n for n in loop if n.op == "matmul")
    wide = [n for n in loop if n.op == "add" and product in n.args]
    assert len(wide) == 1 and wide[0].shape == ("2*H",)
    assert_same_meaning(cell, after)
    # without the fuse pass there is nothing to widen
    assert optimize(cell, {"fuse": False}, SIZES) == optimize(
        cell, {"fuse": False, "widen": False}, SIZES
    )


def test_widen_leaves_a_partly_covered_product_alone():
    """The GRU's candidate gate adds its bias inside the loop, so of the three slices of
    the fused input product only two get a second bias: nothing widens before the loop."""
    cell = rnnc.load_cell("gru")
    assert optimize(cell, True, SIZES) == optimize(cell, {"widen": False}, SIZES)


def test_fused_parameters_keep_their_names():
    cell = optimize(rnnc.load_cell("gru"), True, SIZES)
    names = {
        n.value for n in ir.walk([*cell.roots(), *cell.precompute.values()]) if n.op == "param"
    }
    assert names == set(rnnc.load_cell("gru").params)


def test_fold_removes_zero_biases_and_folds_constants():
    x = ir.Node("input", (), ("H",), "x")
    zero = ir.Node("const", (), (), 0.0)
    two = ir.Node("add", (ir.Node("const", (), (), 1.0), ir.Node("const", (), (), 1.0)), ())
    expr = ir.Node("mul", (ir.Node("add", (x, zero), ("H",)), two), ("H",))
    cell = ir.CellIR("c", {"x": ("H",)}, {}, {}, {}, {"y": expr})
    assert fold(cell).outputs["y"] == ir.Node("mul", (x, ir.Node("const", (), (), 2.0)), ("H",))


def test_cse_merges_commuted_operands():
    a = ir.Node("input", (), ("H",), "a")
    b = ir.Node("state", (), ("H",), "h")
    cell = ir.CellIR(
        "c",
        {"a": ("H",)},
        {"h": ir.StateSpec(("H",))},
        {},
        {"h": ir.Node("mul", (a, b), ("H",))},
        {"y": ir.Node("mul", (b, a), ("H",))},
    )
    out = cse(cell)
    assert out.next_state["h"] is out.outputs["y"] or out.next_state["h"] == out.outputs["y"]


def test_sink_keeps_outputs_that_read_the_previous_state():
    cell = rnnc.parse(
        "cell c(x: [H]) -> (y: [H], z: [H]):\n"
        "    state h: [H] = 0\n"
        "    h' = tanh(x + h)\n"
        "    y = h\n"
        "    z = h' * 2\n"
    )["c"]
    out = sink(cell)
    assert list(out.outputs) == ["y"] and list(out.postcompute) == ["z"]
    assert_same_meaning(cell, out)


def test_save_modes():
    cell = rnnc.load_cell("lstm")
    assert save(cell, "none") is cell
    auto = [k for k in save(cell, "auto").outputs if k.startswith(SAVED_PREFIX)]
    every = [k for k in save(cell, "all").outputs if k.startswith(SAVED_PREFIX)]
    assert len(auto) == 5  # the four gates and tanh(c')
    assert len(every) > len(auto)


def test_save_keeps_a_factor_that_would_need_a_product_again():
    """The GRU's ``r * (h @ W_hn + b_hn)``: the derivative by ``r`` reads the other factor,
    which the backward loop would compute again with the (fused) product of ``h``."""
    cell = rnnc.load_cell("gru")
    for fused in (False, True):
        after = optimize(cell, {"fuse": fused}, SIZES)
        saved = [v for k, v in after.outputs.items() if k.startswith(SAVED_PREFIX)]
        factor = [n for n in saved if n.op == "add"]
        assert len(factor) == 1 and any(a.op in ("matmul", "slice") for a in factor[0].args)
        # `1 - z` needs no product once `z` (a sigmoid) is saved, so it is not saved
        assert not [n for n in saved if n.op == "sub"]
        assert len(saved) == 4
        assert_same_meaning(cell, after)


def test_options_resolve():
    assert resolve(True) == DEFAULTS and resolve(False) == OFF
    assert resolve({"fuse": False})["fuse"] is False
    assert resolve({"save": False})["save"] == "none"
    assert set(DEFAULTS) == set(PASSES)
    assert resolve(True, "jax")["widen"] is False and resolve(True, "c")["widen"] is True
    assert resolve({"widen": True}, "jax")["widen"] is True
    assert rnnc.Recurrent("lstm", I=2, H=3, backend="jax").optimize["widen"] is False
    with pytest.raises(OptionError, match="unknown pass 'hoisting'"):
        resolve({"hoisting": True})
    with pytest.raises(OptionError, match="save"):
        resolve({"save": "some"})


def test_passes_are_pure():
    cell = rnnc.load_cell("gru")
    text = repr(dict(cell.next_state))
    optimize(cell, True, SIZES)
    assert repr(dict(cell.next_state)) == text and not cell.precompute


# ---------------------------------------------------------------- random cells
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_cells(), st.sampled_from(list(SINGLE)))
def test_random_cells_keep_their_meaning(cell, which):
    assert_same_meaning(cell, SINGLE[which](cell))


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_cells())
def test_optimize_is_idempotent_in_meaning(cell):
    once = optimize(cell, {"save": "none"}, SIZES)
    assert_same_meaning(cell, optimize(once, {"save": "none"}, SIZES))
