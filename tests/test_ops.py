"""rnnc's own PyTensor op: ``fast_tanh`` equals ``tanh`` on every backend."""

from __future__ import annotations

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest

from rnnc.compile import check_backend, function
from rnnc.errors import OptionError
from rnnc.ops import fast_tanh

X = np.concatenate([np.linspace(-30, 30, 601), [0.0, 1e-12, -1e-12, np.inf, -np.inf, np.nan]])
#: The largest difference from NumPy's tanh allowed, per dtype (JAX's own tanh is 8e-16
#: from it in float64).
TOLERANCE = {"float32": 2.5e-7, "float64": 1e-15}


def _available(backend: str) -> bool:
    try:
        check_backend(backend)
    except OptionError:
        return False
    return True


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("backend", ["c", "python", "jax"])
def test_fast_tanh_equals_tanh_and_its_derivative(backend, dtype):
    if not _available(backend):
        pytest.skip(f"{backend} is not installed")
    x = pt.tensor("x", dtype=dtype, shape=X.shape)
    y = fast_tanh(x)
    (dy,) = pytensor.grad(y.sum(), [x])
    value, slope = function([x], [y, dy], backend)(X.astype(dtype))
    want = np.tanh(X.astype(dtype))
    assert value.dtype == dtype
    np.testing.assert_allclose(value, want, rtol=0, atol=TOLERANCE[dtype], equal_nan=True)
    np.testing.assert_allclose(
        slope, 1 - want.astype("float64") ** 2, rtol=0, atol=2 * TOLERANCE[dtype], equal_nan=True
    )
    assert np.all(value[X == 0] == 0)
