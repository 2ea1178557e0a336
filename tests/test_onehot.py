"""rnnc.onehot: products by one-hot codes made as row gathers and sums (C and JAX
backends), against the same functions without the rewrite."""

from __future__ import annotations

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest
from pytensor.tensor.blas import Dot22
from pytensor.tensor.math import Dot
from pytensor.tensor.subtensor import AdvancedSubtensor1

from rnnc import onehot
from rnnc.compile import function
from rnnc.nn import one_hot
from rnnc.onehot import RowSums

V, N = 7, 5


def test_in_use_unless_switched_off(monkeypatch):
    monkeypatch.delenv("RNNC_ONE_HOT", raising=False)
    assert onehot.in_use()
    monkeypatch.setenv("RNNC_ONE_HOT", "0")
    assert not onehot.in_use()


def _ops(fn) -> set[type]:
    return {type(n.op) for n in fn.maker.fgraph.apply_nodes}


def _compiled(monkeypatch, rewritten, backend="c"):
    """Codes of ``[B, T]`` ids, made time-major and reshaped into rows (as a layer's
    hoisted input product does), times ``W``, and the gradient of ``W``."""
    if not rewritten:
        monkeypatch.setenv("RNNC_ONE_HOT", "0")
    ids = pt.matrix("ids", dtype="int32", shape=(3, 4) if backend == "jax" else (None, None))
    w = pt.matrix("w", dtype="float64", shape=(V, N))
    codes = one_hot(ids, V, "float64").dimshuffle(1, 0, 2)
    rows = pt.dot(codes.reshape((-1, V)), w)
    loss = (rows**2 * np.arange(1, N + 1)).sum()
    fn = function([ids, w], [rows, pytensor.grad(loss, w)], backend)
    monkeypatch.delenv("RNNC_ONE_HOT", raising=False)
    return fn


@pytest.mark.parametrize("backend", ["c", "jax"])
def test_products_by_codes_become_a_gather_and_row_sums(monkeypatch, backend):
    if backend == "jax":
        pytest.importorskip("jax")
    gathered = _compiled(monkeypatch, True, backend)
    multiplied = _compiled(monkeypatch, False, backend)
    product = Dot22 if backend == "c" else Dot
    assert {AdvancedSubtensor1, RowSums} <= _ops(gathered)
    assert product not in _ops(gathered) and product in _ops(multiplied)
    rng = np.random.default_rng(0)
    w = rng.standard_normal((V, N))
    # ids outside the code (-1, V) are rows of zeros in the product, as in one_hot's
    ids = np.array([[0, 3, 6, -1], [2, 2, V, 5], [1, 0, 6, 3]], dtype="int32")
    for got, want in zip(gathered(ids, w), multiplied(ids, w), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    rows, _ = gathered(ids, w)
    np.testing.assert_array_equal(rows[3 * 3], np.zeros(N))  # ids[0, 3] = -1 (rows time-major)


def test_row_sums_skip_ids_outside_the_code():
    g = pt.matrix("g")
    ids = pt.vector("ids", dtype="int64")
    fn = function([g, ids], RowSums(3)(g, ids), "c")
    gv = np.arange(12.0).reshape(4, 3)
    want = np.array([[0, 1, 2], [0, 0, 0], [3 + 6, 4 + 7, 5 + 8]], dtype=float)
    np.testing.assert_array_equal(fn(gv, np.array([0, 2, 2, 3])), want)  # 3: skipped
    # Python's implementation, the same
    node = RowSums(3).make_node(g, ids)
    out = [[None]]
    node.op.perform(node, [gv, np.array([0, 2, 2, 3])], out)
    np.testing.assert_array_equal(out[0][0], want)


def test_the_language_model_gathers_its_one_hot_inputs():
    from rnnc.train.model import LanguageModel
    from rnnc.train.optim import make_optimizer

    model = LanguageModel("lstm", 11, rnn_size=8, num_layers=1)
    compiled = model.compile(make_optimizer("adam", lr=1e-3), backend="c", parts=("train",))
    fn = compiled.train_fn
    assert RowSums in _ops(fn) and AdvancedSubtensor1 in _ops(fn)
