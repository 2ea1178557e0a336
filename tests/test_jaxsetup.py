"""rnnc's setup of PyTensor's JAX backend (rnnc/jaxsetup.py)."""

import numpy as np
import pytensor.tensor as pt
import pytest

from rnnc import jaxsetup
from rnnc.compile import function

jax = pytest.importorskip("jax")


@pytest.fixture(scope="module")
def jax_typify():
    jaxsetup.setup()
    from pytensor.link.jax.dispatch import jax_typify

    return jax_typify


@pytest.fixture
def compile_events():
    """The names of the XLA compile events JAX reports while the test runs."""
    events: list[str] = []
    listening = [True]

    def listener(event: str, seconds: float, **kwargs: object) -> None:
        if listening[0] and "compile" in event:
            events.append(event)

    jax.monitoring.register_event_duration_secs_listener(listener)
    yield events
    listening[0] = False


@pytest.mark.parametrize("dtype", ["float32", "float64", "int64", "bool"])
def test_a_constant_becomes_a_jax_array_without_compiling(jax_typify, compile_events, dtype):
    data = (np.arange(6) % 3).reshape(2, 3).astype(dtype)
    out = jax_typify(data)
    assert compile_events == []
    assert isinstance(out, jax.Array)
    assert out.dtype == data.dtype  # PyTensor's JAX mode has x64 on
    np.testing.assert_array_equal(np.asarray(out), data)
    assert jax_typify(data, dtype="float32").dtype == np.float32
    assert jax_typify(np.float32(2.5)) == 2.5  # a Python scalar, as PyTensor's own


def test_graph_constants_reach_the_result(jax_typify):
    x = pt.matrix("x", dtype="float64")
    table = np.array([[1.0, -2.0, 0.5], [3.0, 0.25, -1.0]])
    fn = function([x], [(x * pt.constant(table)).sum(axis=0)], "jax")
    value = np.full((2, 3), 2.0)
    np.testing.assert_allclose(fn(value)[0], (value * table).sum(axis=0))


def _lowered(fn, *args) -> str:
    """The StableHLO text JAX makes of a compiled PyTensor function."""
    from pytensor.link.jax.dispatch import jax_funcify

    return jax.jit(jax_funcify(fn.maker.fgraph)).lower(*args).as_text()


def test_a_product_with_a_transposed_left_operand_copies_it_first(jax_typify):
    x = pt.matrix("x", dtype="float64")
    y = pt.matrix("y", dtype="float64")
    rng = np.random.default_rng(0)
    a, b, c = (rng.standard_normal(shape) for shape in ((5, 3), (5, 4), (4, 3)))
    transposed = function([x, y], [x.T @ y], "jax")
    np.testing.assert_allclose(transposed(a, b)[0], a.T @ b)
    assert "optimization_barrier" in _lowered(transposed, a, b)
    plain = function([x, y], [x @ y.T], "jax")  # a transposed right operand is left alone
    np.testing.assert_allclose(plain(a, c)[0], a @ c.T)
    assert "optimization_barrier" not in _lowered(plain, a, c)


@pytest.mark.parametrize(
    "width", [jaxsetup.COPY_TRANSPOSED_FROM - 1, jaxsetup.COPY_TRANSPOSED_FROM]
)
def test_only_a_wide_transposed_operand_is_copied(jax_typify, width):
    """``x.T @ y`` with ``x`` of a static width: copied first from the threshold on;
    under it XLA reads ``x`` as it is, which was faster for narrow ones (the module)."""
    x = pt.matrix("x", dtype="float32", shape=(2, width))
    y = pt.matrix("y", dtype="float32", shape=(2, 3))
    a, b = np.ones((2, width), "float32"), np.ones((2, 3), "float32")
    fn = function([x, y], [x.T @ y], "jax")
    np.testing.assert_allclose(fn(a, b)[0], a.T @ b)
    copied = "optimization_barrier" in _lowered(fn, a, b)
    assert copied == (width >= jaxsetup.COPY_TRANSPOSED_FROM)


@pytest.mark.parametrize(
    ("depth", "width", "dtype", "padded"),
    [
        (256, 1024, "float32", True),  # rows of 4 KB, summed over enough of them
        (256, 512, "float64", True),
        (255, 1024, "float32", False),  # too few rows to pay for the copy
        (256, 512, "float32", False),  # rows of 2 KB
        (256, 768, "float32", False),
    ],
)
def test_a_right_operand_with_4_kb_rows_is_multiplied_with_padded_rows(
    jax_typify, depth, width, dtype, padded
):
    """``x @ W`` with ``W``'s rows a multiple of 4 KB long: ``W`` gets 64 bytes of zero
    columns and the product's extra columns are dropped; the same values."""
    x = pt.matrix("x", dtype=dtype, shape=(3, depth))
    w = pt.matrix("w", dtype=dtype, shape=(depth, width))
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((3, depth)).astype(dtype), rng.standard_normal((depth, width))
    b = b.astype(dtype)
    fn = function([x, w], [x @ w], "jax")
    (got,) = fn(a, b)
    assert got.shape == (3, width)
    want = a.astype("float64") @ b.astype("float64")
    np.testing.assert_allclose(got, want, atol=1e-3 if dtype == "float32" else 1e-10)
    assert (f"{width + 64 // np.dtype(dtype).itemsize}" in _lowered(fn, a, b)) == padded


@pytest.mark.parametrize("reversed_in_time", [True, False])
def test_a_scan_over_sequences_reversed_in_time_walks_them_from_the_end(
    jax_typify, reversed_in_time
):
    """``x[::-1]`` and ``1 - x[::-1]``: ``lax.scan(reverse=True)`` over them turned back,
    with the outputs in the order of the steps; ``x`` as it is: a plain scan."""
    import pytensor
    from pytensor.link.jax.dispatch import jax_funcify

    x = pt.matrix("x", dtype="float64")
    seq = x[::-1] if reversed_in_time else x
    hs = pytensor.scan(
        lambda a, b, h: pt.tanh(a + 0.5 * b * h),
        sequences=[seq, 1 - seq],
        outputs_info=[pt.zeros(x.shape[1], dtype="float64")],
        return_updates=False,
    )
    fn = function([x], [hs], "jax")
    xv = np.random.default_rng(3).normal(size=(5, 3))
    h, want = np.zeros(3), []
    for a in xv[::-1] if reversed_in_time else xv:
        h = np.tanh(a + 0.5 * (1 - a) * h)
        want.append(h)
    np.testing.assert_allclose(fn(xv)[0], want, rtol=1e-12)
    jaxpr = str(jax.make_jaxpr(jax_funcify(fn.maker.fgraph))(xv))
    assert ("reverse=True" in jaxpr) == reversed_in_time


def test_what_counts_as_reversed_in_time():
    from rnnc.jaxsetup import _reversed

    x = pt.tensor3("x")
    y = pt.tensor3("y")
    b = pt.tensor3("b", shape=(1, None, None))
    assert _reversed(x[::-1]) and _reversed(x[5::-2])
    assert _reversed(1 - x[::-1]) and _reversed(pt.tanh(x[::-1] * b))
    assert not _reversed(x) and not _reversed(x[::2]) and not _reversed(x[:, ::-1])
    assert not _reversed(x[::-1] + y) and not _reversed(x.T)


_SPARSE_IN_A_NEW_PROCESS = """
import sys
import numpy as np
import pytensor.tensor as pt
from rnnc.compile import function

x = pt.vector("x", dtype="float32")
print(float(function([x], pt.exp(x).sum(), "jax")(np.zeros(3, "float32"))))
print("jax.experimental.sparse.bcoo" in sys.modules)
import jax.experimental.sparse as jsp
print(jsp.BCOO.__name__, "jax.experimental.sparse.bcoo" in sys.modules)
from jax.experimental import sparse
print(sparse.BCOO is jsp.BCOO, sys.modules["jax.experimental.sparse"].BCOO is jsp.BCOO)
"""


def test_jax_sparse_is_imported_only_when_something_reads_from_it():
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", _SPARSE_IN_A_NEW_PROCESS],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\n")
    assert out[:4] == ["3.0", "False", "BCOO True", "True True"]


@pytest.mark.parametrize(
    "cores,flags,want",
    [
        (
            {0},
            "--xla_cpu_multi_thread_eigen=false",
            f"--xla_cpu_multi_thread_eigen=false {jaxsetup.ONE_CORE_FLAG}",
        ),
        ({0}, None, jaxsetup.ONE_CORE_FLAG),
        ({0, 1}, "--a=1", "--a=1"),
        (
            {0},
            "--xla_cpu_enable_concurrency_optimized_scheduler=true",
            "--xla_cpu_enable_concurrency_optimized_scheduler=true",
        ),
    ],
)
def test_one_core_has_xla_run_operations_one_after_another(monkeypatch, cores, flags, want):
    """On one core XLA's scheduler for concurrency is switched off, unless the user
    chose; on more cores nothing changes."""
    monkeypatch.setattr(jaxsetup.os, "sched_getaffinity", lambda pid: cores, raising=False)
    if flags is None:
        monkeypatch.delenv("XLA_FLAGS", raising=False)
    else:
        monkeypatch.setenv("XLA_FLAGS", flags)
    assert jaxsetup.one_core_schedule() == (want != (flags or ""))
    assert jaxsetup.os.environ.get("XLA_FLAGS", "") == want
