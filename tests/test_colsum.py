"""Sums over a matrix's rows as one vector loop in the C backend (rnnc.colsum)."""

from __future__ import annotations

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest
from conftest import op_types, ops_in_loops
from pytensor.compile.mode import Mode
from pytensor.tensor.math import Sum

import rnnc
from rnnc.colsum import ColumnSum
from rnnc.compile import function


@pytest.fixture(
    scope="module", params=[("float32", None), ("float64", None), ("float32", "float32")]
)
def sums(request):
    """rnnc's C function and PyTensor's own (the rewrite left out) for one dtype and
    accumulator (None: PyTensor's default, float64)."""
    dtype, acc = request.param
    x = pt.matrix("x", dtype=dtype)
    total = x.sum(axis=0, acc_dtype=acc)
    ours = function([x], total, "c")
    theirs = pytensor.function(
        [x], total, mode=Mode("cvm", "fast_run").excluding("rnnc_column_sums")
    )
    assert ColumnSum in op_types(ours) and Sum in op_types(theirs)
    return dtype, ours, theirs


@pytest.mark.parametrize(
    "layout", ["block", "one row", "one column", "no rows", "no columns", "strided", "transposed"]
)
def test_column_sum_is_pytensors_sum_bit_for_bit(sums, layout):
    """The same additions in the same order: equal, not only close, on every layout
    (rows of unit stride read in place, others copied first)."""
    dtype, ours, theirs = sums
    rng = np.random.default_rng(0)
    shapes = {"one row": (1, 9), "one column": (9, 1), "no rows": (0, 4), "no columns": (4, 0)}
    x = rng.standard_normal(shapes.get(layout, (37, 70))).astype(dtype)
    if layout == "strided":
        x = x[::2, ::3]
    elif layout == "transposed":
        x = x.T
    got, want = ours(x), theirs(x)
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(got, x.astype("float64").sum(axis=0), rtol=1e-5)


def test_column_sum_without_c_code_sums_row_after_row():
    x = np.random.default_rng(1).standard_normal((5, 3)).astype("float32")
    fn = pytensor.function([xv := pt.matrix(dtype="float32")], ColumnSum()(xv), mode="FAST_COMPILE")
    np.testing.assert_array_equal(fn(x), x.sum(axis=0, dtype="float64").astype("float32"))


def test_other_sums_stay_pytensors():
    x = pt.tensor3("x", dtype="float32")
    m = pt.matrix("m", dtype="float32")
    i = pt.matrix("i", dtype="int32")
    fn = function([x, m, i], [x.sum(axis=0), m.sum(axis=1), m.sum(), i.sum(axis=0)], "c")
    assert ColumnSum not in op_types(fn)


def test_a_bias_gradient_in_a_loop_is_a_column_sum():
    """The GRU adds ``b_hn`` in its step: the backward loop sums its gradient over the
    examples at every step."""
    layer = rnnc.Recurrent("gru", I=3, H=4, dtype="float64", backend="c", seed=0)
    x = pt.tensor3("x", dtype="float64")
    grads = pytensor.grad((layer(x).outputs["y"] ** 2).sum(), list(layer.params.values()))
    fn = function([x], grads, "c")
    assert ops_in_loops(fn, ColumnSum) >= 1 and ops_in_loops(fn, Sum) == 0
