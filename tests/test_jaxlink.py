"""rnnc's JAX linker (rnnc/jaxlink.py): a pickled function keeps an executable compiled
ahead of time, and its copy calls that executable without converting the graph again."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest

import rnnc
from rnnc import jaxlink
from rnnc.compile import function
from tests.conftest import FAST

jax = pytest.importorskip("jax")

B, T, IN, H = 2, 4, 3, 5


def _rnn(backend: str):
    """An Elman layer's output and weight gradients, for inputs of a fixed shape."""
    layer = rnnc.Recurrent("rnn", I=IN, H=H, dtype="float64", seed=1)
    x = pt.tensor("x", dtype="float64", shape=(B, T, IN))
    y = layer(x).outputs["y"]
    grads = pytensor.grad((y**2).sum(), list(layer.params.values()))
    return function([x], [y, *grads], backend)


@pytest.fixture(scope="module")
def data():
    return np.random.default_rng(0).normal(size=(B, T, IN))


@pytest.fixture(scope="module")
def pickled():
    """The JAX function compiled ahead and pickled before its first call, as rnnc's
    cache does."""
    fn = _rnn("jax")
    jaxlink.compile_ahead(fn)
    return fn, pickle.dumps(fn)


def test_the_function_compiled_ahead_calls_that_executable(pickled, data):
    fn, _ = pickled
    call = fn.vm.jit_fn
    assert call.compiled is not None
    want = _rnn(FAST)(data)
    got = fn(data)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(np.asarray(a), b, rtol=1e-12, atol=1e-12)


def test_a_copy_runs_the_executable_without_converting_the_graph(pickled, data):
    fn, data_bytes = pickled
    copy = pickle.loads(data_bytes)
    assert copy.vm.jit_fn.compiled is not None and copy.vm.jit_fn.jitted is None
    for a, b in zip(copy(data), fn(data), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert copy.vm.jit_fn.jitted is None  # no tracing happened


def test_a_shared_value_of_another_shape_falls_back_to_the_jitted_function():
    w = pytensor.shared(np.ones(3), name="w")
    x = pt.tensor("x", dtype="float64", shape=(4,))
    fn = function([x], x.sum() * w.sum(), "jax")
    assert fn.maker.linker.compile_ahead()
    copy = pickle.loads(pickle.dumps(fn))
    assert copy.vm.jit_fn.compiled is not None
    x0 = np.arange(4.0)
    assert float(copy(x0)) == 18.0
    copy.get_shared()[0].set_value(np.ones(5))  # compiled for a w of length 3
    assert float(copy(x0)) == 30.0
    assert copy.vm.jit_fn.compiled is None and copy.vm.jit_fn.jitted is not None


def test_an_input_of_unknown_shape_is_not_compiled_ahead():
    x = pt.vector("x", dtype="float64")
    fn = function([x], 2 * x, "jax")
    assert not fn.maker.linker.compile_ahead()
    copy = pickle.loads(pickle.dumps(fn))
    assert fn.vm.jit_fn.compiled is None and copy.vm.jit_fn.compiled is None
    np.testing.assert_array_equal(np.asarray(copy(np.ones(3))), 2 * np.ones(3))
    np.testing.assert_array_equal(np.asarray(copy(np.ones(2))), 2 * np.ones(2))


_IN_A_NEW_PROCESS = """
import sys
import numpy as np
import rnnc
from rnnc import cache
from tests.test_jaxlink import _rnn

step = sys.argv[1]
layer_fn = (lambda: sys.exit("missed")) if step == "load" else (lambda: _rnn("jax"))
params = rnnc.Recurrent("rnn", I=3, H=5, dtype="float64", seed=1).params
if step == "warm":  # fills JAX's persistent cache only
    fn = layer_fn()
else:
    fn = cache.cached_function({"test": "jaxlink"}, layer_fn, params, backend="jax")
out = fn(np.linspace(-1, 1, 24).reshape(2, 4, 3))
call = fn.vm.jit_fn
print(repr(float(sum(np.asarray(o).sum() for o in out))), call.compiled is not None,
      call.jitted is None)
"""


def test_a_cache_entry_filled_while_jax_cache_holds_the_program_loads(tmp_path):
    # XLA:CPU cannot serialise again an executable it loaded from JAX's persistent
    # cache (calling the copy fails): filling rnnc's cache must compile afresh
    root = Path(__file__).parent.parent
    env = {**os.environ, "RNNC_CACHE_DIR": str(tmp_path), "PYTHONPATH": str(root)}

    def step(name: str) -> list[str]:
        out = subprocess.run(
            [sys.executable, "-c", _IN_A_NEW_PROCESS, name],
            capture_output=True,
            text=True,
            check=False,
            env=env,
        )
        assert out.returncode == 0, out.stderr[-2000:]
        return out.stdout.split()

    warm = step("warm")
    assert any((tmp_path / "jax").iterdir())
    fill, load = step("fill"), step("load")
    assert warm[1:] == ["False", "False"]  # never pickled: jitted
    assert fill[1:] == ["True", "False"] and load[1:] == ["True", "True"]
    assert warm[0] == fill[0] == load[0]


def test_pickling_alone_compiles_nothing():
    fn = _rnn("jax")
    copy = pickle.loads(pickle.dumps(fn))
    assert fn.vm.jit_fn.compiled is None and copy.vm.jit_fn.compiled is None
