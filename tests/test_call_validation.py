"""Call-time validation: bad arrays are caught by rnnc, before PyTensor, with the
argument, the expected and the actual shape (issue: hardening, point 3)."""

from __future__ import annotations

import numpy as np
import pytensor.tensor as pt
import pytest
from conftest import FAST

import rnnc
from rnnc.errors import (
    InputDtypeError,
    InputShapeError,
    InputValueError,
    MissingDimensionError,
    OptionError,
    UnknownDimensionError,
)

X = np.zeros((2, 3, 3), "float32")
NAN_AT_0_2_1 = np.where(np.arange(18).reshape(2, 3, 3) == 7, np.nan, 0.0)

# (id, call on a GRU layer with I=3, H=2, error class, message, fix)
TABLE = [
    ("rank", lambda L: L.run(np.zeros((2, 3))), InputShapeError,
     "x must have 3 axes [batch, time, 3], but it has 2", "add the missing batch or time axis"),
    ("features", lambda L: L.run(np.zeros((2, 3, 4))), InputShapeError,
     "x has shape [batch, time, 4]; expected [batch, time, 3]",
     "pass features of the size the layer was built with"),
    ("integer dtype", lambda L: L.run(np.zeros((2, 3, 3), dtype=int)), InputDtypeError,
     "x has dtype int64; expected float32", "convert it: x.astype('float32')"),
    ("float64 tensor upcast", lambda L: L(pt.tensor3(dtype="float64")), InputDtypeError,
     "x has dtype float64; the layer computes in float32",
     "cast it (pt.cast(x, 'float32')) or build the layer with dtype='float64'"),
    ("mask shape", lambda L: L.run(X, mask=np.ones((2, 4))), InputShapeError,
     "mask has shape [2, 4]; expected [batch, time] = [2, 3], the batch and time of x",
     "give mask one row per sequence and one column per step of x"),
    ("lengths shape", lambda L: L.run(X, lengths=[3, 3, 3]), InputShapeError,
     "lengths has shape [3]; expected [batch] = [2], the batch of x",
     "give one length per sequence of x"),
    ("lengths too long", lambda L: L.run(X, lengths=[4, 1]), InputShapeError,
     "lengths[0] = 4 is longer than the time axis of x (3 steps)",
     "pad x to the longest sequence, or correct the lengths"),
    ("reset shape", lambda L: L.run(X, reset=np.zeros((3, 3))), InputShapeError,
     "reset has shape [3, 3]; expected [batch, time] = [2, 3], the batch and time of x",
     "give reset one row per sequence and one column per step of x"),
    ("batch 0", lambda L: L.run(np.zeros((0, 3, 3))), InputShapeError,
     "x has batch size 0; expected [batch, time, 3] with at least one sequence",
     "skip empty batches before calling the layer"),
    ("time 0", lambda L: L.run(np.zeros((2, 0, 3))), InputShapeError,
     "x has time size 0; expected [batch, time, 3] with at least one step",
     "skip empty sequences before calling the layer"),
    ("NaN input", lambda L: L.run(NAN_AT_0_2_1, check_finite=True), InputValueError,
     "x holds 1 NaN or infinite values, the first at [0, 2, 1]",
     "clean the data, or mask the steps that hold no data (mask=...)"),
    ("initial state shape", lambda L: L.run(X, initial_state={"h": np.zeros((2, 5))}),
     InputShapeError, "initial_state['h'] has shape [batch, 5]; expected [batch, 2]",
     "pass features of the size the layer was built with"),
    ("initial state name", lambda L: L.run(X, initial_state={"c": np.zeros((2, 2))}),
     OptionError, "initial_state names ['c'], which are not states of `gru`",
     "its states are: h"),
    ("unknown dimension", lambda L: rnnc.Recurrent("gru", I=3, H=2, K=4),
     UnknownDimensionError, "cell `gru` has no dimension 'K'", "its dimensions are: H, I"),
    ("missing dimension", lambda L: rnnc.Recurrent("gru", I=3), MissingDimensionError,
     "cell `gru` needs the size of H", "pass it, e.g. Recurrent(cell, H=64, I=64)"),
]  # fmt: skip


@pytest.fixture(scope="module")
def layer():
    return rnnc.Recurrent("gru", I=3, H=2, backend=FAST)


@pytest.mark.parametrize("case", TABLE, ids=[row[0] for row in TABLE])
def test_bad_call_gives_exact_error(layer, case):
    _, call, cls, message, fix = case
    with pytest.raises(cls) as info:
        call(layer)
    assert info.value.message == message
    assert info.value.fix == fix
    assert str(info.value).startswith(f"error: {message}\nfix: {fix}\nsee: ")


def test_finite_inputs_pass_the_check(layer):
    out = layer.run(X + 1, check_finite=True)
    assert np.isfinite(out.outputs["y"]).all()
