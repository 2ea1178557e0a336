"""Sums and maxima along the last axis in the C backend (rnnc.rowreduce)."""

from __future__ import annotations

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest
from conftest import op_types
from pytensor.compile.mode import Mode

from rnnc import nn
from rnnc.compile import function
from rnnc.rowreduce import LastAxisReduce

PYTENSORS = Mode("cvm", "fast_run").excluding("rnnc_last_axis_reductions")


@pytest.fixture(
    scope="module",
    params=[
        ("max", "float32", None),
        ("max", "float64", None),
        ("sum", "float32", None),
        ("sum", "float64", None),
        ("sum", "float32", "float32"),
    ],
    ids=lambda p: "-".join(str(v) for v in p),
)
def reductions(request):
    """rnnc's C function and PyTensor's own (the rewrite left out) for one reduction,
    dtype and accumulator (None: PyTensor's default) of a 3-D array's last axis."""
    kind, dtype, acc = request.param
    x = pt.tensor3("x", dtype=dtype)
    out = x.max(axis=-1) if kind == "max" else x.sum(axis=-1, acc_dtype=acc)
    ours = function([x], out, "c")
    theirs = pytensor.function([x], out, mode=PYTENSORS)
    assert LastAxisReduce in op_types(ours) and LastAxisReduce not in op_types(theirs)
    return kind, dtype, ours, theirs


def _special(x: np.ndarray) -> np.ndarray:
    """``x`` with rows of NaN, signed zeros and infinities (the maximum keeps the
    first of equal values, and is NaN where a row has one)."""
    x = x.copy()
    if x.size and x.shape[-1] >= 4:
        flat = x.reshape(-1, x.shape[-1])
        flat[0, 2] = np.nan
        flat[1 % len(flat), :] = -0.0
        row = flat[2 % len(flat)]
        row[:] = -1.0 - np.abs(row)
        row[1:3] = (-0.0, 0.0)  # the maximum is the first zero: -0.0
        flat[3 % len(flat), 0] = -np.inf
        flat[4 % len(flat), 1] = np.inf
    return x


@pytest.mark.parametrize(
    "layout", ["block", "one column", "one row", "no rows", "strided", "transposed", "ragged"]
)
def test_the_reduction_is_pytensors_bit_for_bit(reductions, layout):
    """Each row reduced from its first element to its last, as PyTensor does: equal
    bits on every layout (rows of unit stride read in place, others copied first),
    with NaN, signed zeros and infinities; 8 rows at a time and the rows left over."""
    _, dtype, ours, theirs = reductions
    rng = np.random.default_rng(0)
    shapes = {
        "one column": (4, 3, 1),
        "one row": (1, 1, 9),
        "no rows": (0, 3, 5),
        "ragged": (3, 7, 13),
    }
    x = rng.standard_normal(shapes.get(layout, (5, 8, 13))).astype(dtype)
    if layout == "strided":
        x = x[:, ::2, ::3]
    elif layout == "transposed":
        x = np.transpose(x, (2, 1, 0))
    x = _special(x)
    got, want = ours(x), theirs(x)
    assert got.dtype == want.dtype and got.shape == want.shape
    assert got.tobytes() == want.tobytes()


def test_an_empty_last_axis_sums_to_zero_and_has_no_maximum(reductions):
    kind, dtype, ours, _ = reductions
    x = np.zeros((2, 3, 0), dtype=dtype)
    if kind == "sum":
        np.testing.assert_array_equal(ours(x), np.zeros((2, 3), dtype=dtype))
    else:
        with pytest.raises(ValueError, match="empty axis"):
            ours(x)


@pytest.mark.parametrize("kind", ["max", "sum"])
def test_the_python_code_gives_the_c_codes_bits(kind):
    x = pt.tensor3("x", dtype="float32")
    op = LastAxisReduce(kind, "float64" if kind == "sum" else None)
    c = pytensor.function([x], op(x), mode=Mode("cvm", "fast_run"))
    py = pytensor.function([x], op(x), mode=Mode("py", "fast_run"))
    value = _special(np.random.default_rng(2).standard_normal((4, 6, 11)).astype("float32"))
    assert c(value).tobytes() == py(value).tobytes()


def test_other_reductions_stay_pytensors():
    x = pt.tensor3("x", dtype="float32")
    i = pt.tensor3("i", dtype="int32")
    fn = function([x, i], [x.sum(axis=1), x.max(axis=0), x.sum(), i.sum(axis=-1)], "c")
    assert LastAxisReduce not in op_types(fn)


def test_the_log_softmax_of_rnnc_nn_takes_its_maximum_and_sum_so():
    """The character model's loss: the maximum and the sum over the vocabulary, and
    its gradient, with the same values as PyTensor's own reductions."""
    logits = pt.tensor3("logits", dtype="float32")
    loss = nn.log_softmax(logits).sum()
    outs = [loss, pytensor.grad(loss, logits)]
    ours = function([logits], outs, "c")
    assert LastAxisReduce in op_types(ours)
    theirs = pytensor.function([logits], outs, mode=PYTENSORS)
    value = np.random.default_rng(3).standard_normal((4, 5, 17)).astype("float32")
    for got, want in zip(ours(value), theirs(value), strict=True):
        assert got.tobytes() == want.tobytes()
