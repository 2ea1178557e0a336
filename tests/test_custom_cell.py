"""A cell that is not built in (examples/cells/) compiles, checks and learns a toy task."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest
from conftest import FAST

import rnnc

EXAMPLES = Path(__file__).parents[1] / "examples" / "cells"


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.cell")), ids=lambda p: p.stem)
def test_example_cells_are_short_and_check(path):
    body = [
        line
        for line in path.read_text().splitlines()
        if line.strip() and not line.lstrip().startswith(("#", '"""'))
    ]
    assert len(body) <= 10, "a new cell should take fewer than 10 lines"
    rnnc.load_cell(path)


def test_minimal_gated_unit_learns_a_delayed_echo():
    """Target y_t = x_{t-2}: the cell must remember two steps back."""
    layer = rnnc.Recurrent(EXAMPLES / "mgu.cell", I=1, H=8, seed=0)
    rng = np.random.default_rng(0)
    readout = pytensor.shared(rng.normal(scale=0.3, size=(8, 1)).astype("float32"))
    x = pt.tensor3("x", dtype="float32")
    target = pt.tensor3("target", dtype="float32")
    prediction = pt.dot(layer(x).outputs["y"], readout)
    loss = ((prediction - target)[:, 2:] ** 2).mean()

    # Adam, written out: the test must not depend on rnnc's optimisers.
    params = [*layer.params.values(), readout]
    grads = pytensor.grad(loss, params)
    updates = []
    f32 = np.float32  # Python floats would upcast to PyTensor's floatX (float64)
    step = pytensor.shared(np.float32(0))
    t = step + 1
    for p, g in zip(params, grads, strict=True):
        m = pytensor.shared(np.zeros_like(p.get_value()))
        v = pytensor.shared(np.zeros_like(p.get_value()))
        m_new = f32(0.9) * m + f32(0.1) * g
        v_new = f32(0.999) * v + f32(0.001) * g**2
        lr = f32(0.03) * pt.sqrt(1 - f32(0.999) ** t) / (1 - f32(0.9) ** t)
        updates += [(m, m_new), (v, v_new), (p, p - lr * m_new / (pt.sqrt(v_new) + f32(1e-7)))]
    updates.append((step, t))
    train = rnnc.compile.function([x, target], loss, FAST, updates=updates)

    def batch():
        xs = rng.choice([-1.0, 1.0], size=(16, 12, 1)).astype("float32")
        ys = np.zeros_like(xs)
        ys[:, 2:] = xs[:, :-2]
        return xs, ys

    first = float(np.mean([train(*batch()) for _ in range(5)]))
    for _ in range(250):
        train(*batch())
    last = float(np.mean([train(*batch()) for _ in range(5)]))
    assert last < 0.1 * first, (first, last)
