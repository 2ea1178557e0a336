"""Every backend gives the reference interpreter's numbers, forward and gradient; and
what rnnc sets up around the backends: its function cache (in ``layer.run`` too), the
C compiler's flags (and the remembered ``-march`` probe) and precompiled header, malloc,
``rnnc doctor``.

One tiny function per backend, for the optimised GRU with a mask: forward and
gradient on C and JAX; forward only on Numba, whose cold compilation of a scan
gradient takes minutes (docs/backends.md).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest

import rnnc
from rnnc import cache
from rnnc.compile import function
from rnnc.errors import OptionError
from rnnc.reference import run
from tests.conftest import FAST

B, T, IN, H = 2, 4, 3, 5
MASK = np.array([[1, 1, 1, 0], [1, 1, 1, 1]], "float64")


def _available(backend: str) -> bool:
    try:
        rnnc.compile.check_backend(backend)
    except OptionError:
        return False
    return True


def _build(backend: str, gradient: bool = True):
    layer = rnnc.Recurrent("gru", I=IN, H=H, dtype="float64", seed=3)
    x = pt.tensor("x", dtype="float64", shape=(B, T, IN))
    mask = pt.constant(MASK)
    out = layer(x, mask=mask)
    y = out.outputs["y"]
    loss = (y**2).sum() + out.state["h"].sum()
    grads = pytensor.grad(loss, [x, *layer.params.values()]) if gradient else []
    return layer, function([x], [y, out.state["h"], *grads], backend)


@pytest.fixture(scope="module")
def data():
    return np.random.default_rng(0).normal(size=(B, T, IN))


@pytest.fixture(scope="module")
def python_result(data):
    layer, fn = _build(FAST)
    return layer, fn(data)


@pytest.mark.parametrize("backend", ["c", "numba", "jax"])
def test_backend_equals_reference(backend, data, python_result):
    if not _available(backend):
        pytest.skip(f"{backend} is not installed")
    layer, fn = _build(backend, gradient=backend != "numba")
    y, h, *grads = fn(data)
    params = {k: v.get_value() for k, v in layer.params.items()}
    ref_out, ref_state = run(layer.cell, params, {"x": data}, mask=MASK)
    np.testing.assert_allclose(y, ref_out["y"], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(h, ref_state["h"], rtol=1e-9, atol=1e-12)
    _, expected = python_result  # the gradient: against the Python mode's
    for got, want in zip(grads, expected[2:], strict=False):
        np.testing.assert_allclose(got, want, rtol=1e-8, atol=1e-10)


def test_run_on_jax_compiles_one_function_per_shape(data):
    """``run`` on JAX compiles for static shapes (JAX traces with concrete sizes)."""
    if not _available("jax"):
        pytest.skip("jax is not installed")
    layer = rnnc.Recurrent("lstm", I=IN, H=H, dtype="float64", backend="jax", seed=3)
    params = {k: v.get_value() for k, v in layer.params.items()}
    for x, mask in [(data, MASK), (data[:1, :3], None), (data, MASK)]:
        got = layer.run(x, mask=mask)
        assert all(type(v) is np.ndarray for v in [*got.outputs.values(), *got.state.values()])
        want, final = run(layer.cell, params, {"x": x}, mask=mask)
        np.testing.assert_allclose(got.outputs["y"], want["y"], rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(got.state["c"], final["c"], rtol=1e-9, atol=1e-12)
    assert len(layer._compiled) == 2  # the third call reused the first's function


def _forbid_compiling(layer, monkeypatch):
    def fail(*args):
        raise AssertionError("compiled, though rnnc's cache holds the function")

    monkeypatch.setattr(layer, "_compile_run", fail)


def test_run_keeps_its_functions_in_rnnc_cache(data, tmp_path, monkeypatch):
    monkeypatch.setenv("RNNC_CACHE_DIR", str(tmp_path))
    entries = lambda: len(list((tmp_path / "functions").glob("*.pkl")))  # noqa: E731
    first = rnnc.Recurrent("gru", I=IN, H=H, dtype="float64", backend="c", seed=1)
    first.run(data, mask=MASK)
    assert entries() == 1
    # another layer of the same kind (a new process would make it): loaded, with its
    # own parameters
    again = rnnc.Recurrent("gru", I=IN, H=H, dtype="float64", backend="c", seed=2)
    _forbid_compiling(again, monkeypatch)
    got = again.run(data, mask=MASK)
    params = {k: v.get_value() for k, v in again.params.items()}
    want, final = run(again.cell, params, {"x": data}, mask=MASK)
    np.testing.assert_allclose(got.outputs["y"], want["y"], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(got.state["h"], final["h"], rtol=1e-9, atol=1e-12)
    assert entries() == 1
    # what changes the function is a new entry: the kind of call, an option, the cell
    first.run(data)
    rnnc.Recurrent("gru", I=IN, H=H, dtype="float64", backend="c", optimize=False).run(data)
    rnnc.Recurrent("gru", I=IN, H=H + 1, dtype="float64", backend="c").run(data)
    rnnc.Recurrent("gru", I=IN, H=H, dtype="float64", backend="c", bias=False).run(data)
    assert entries() == 5


def test_run_of_stacks_through_the_cache(data, tmp_path, monkeypatch):
    monkeypatch.setenv("RNNC_CACHE_DIR", str(tmp_path))

    def make(seed, name="a"):
        return rnnc.Stack(
            [
                rnnc.Recurrent("lstm", I=IN, H=H, dtype="float64", backend="c", name=name),
                rnnc.Bidirectional(
                    rnnc.Recurrent("rnn", I=H, H=2, dtype="float64", backend="c", seed=seed)
                ),
            ]
        )

    make(1).run(data)
    stack = make(2)
    _forbid_compiling(stack, monkeypatch)
    got = stack.run(data)
    want = make(2)  # the same parameters, compiled with the cache off
    monkeypatch.setenv("RNNC_CACHE", "0")
    np.testing.assert_allclose(got.outputs["y"], want.run(data).outputs["y"], rtol=1e-12)
    # two layers whose parameters have the same names: never cached (a loaded
    # function finds parameters by name)
    twins = rnnc.Stack([rnnc.Recurrent("rnn", I=IN, H=IN, backend="c") for _ in range(2)])
    monkeypatch.setenv("RNNC_CACHE", "1")
    twins.run(data.astype("float32"))
    assert len(list((tmp_path / "functions").glob("*.pkl"))) == 1  # the first stack's


def test_jax_rejects_truncated_gradient():
    if not _available("jax"):
        pytest.skip("jax is not installed")
    layer = rnnc.Recurrent("rnn", I=IN, H=H)
    x = pt.tensor("x", dtype="float32", shape=(B, T, IN))
    y = layer(x, truncate_gradient=2).outputs["y"]
    with pytest.raises(OptionError, match="truncated gradient"):
        function([x], y, "jax")


def test_cached_function_survives_a_new_process_and_keeps_shared_variables(tmp_path, monkeypatch):
    monkeypatch.setenv("RNNC_CACHE_DIR", str(tmp_path))
    layer = rnnc.Recurrent("rnn", I=IN, H=H, dtype="float64")
    x = pt.tensor3("x", dtype="float64")
    y = layer(x).outputs["y"]
    parts = {"test": "rnn", "I": IN, "H": H}
    first = cache.cached_function(parts, lambda: function([x], y, FAST), layer.params)
    assert len(list((tmp_path / "functions").glob("*.pkl"))) == 1
    data = np.ones((B, T, IN))
    built = []
    again = cache.cached_function(parts, lambda: built.append(1), layer.params)
    assert not built  # loaded, not rebuilt
    np.testing.assert_allclose(again(data), first(data))
    layer.params["W_ih"].set_value(np.zeros((IN, H)))  # the loaded copy reads the layer's
    np.testing.assert_allclose(again(data), first(data))
    assert cache.clear() == 1


def test_a_cached_function_updates_the_callers_shared_variables(tmp_path, monkeypatch):
    monkeypatch.setenv("RNNC_CACHE_DIR", str(tmp_path))
    count = pytensor.shared(np.float64(0), name="count")
    step = pt.dscalar("step")

    def build():
        return function([step], count * 2, FAST, updates={count: count + step})

    parts = {"test": "updates"}
    cache.cached_function(parts, build, {"count": count})(1.0)
    mine = pytensor.shared(np.float64(10), name="count")  # a new process's variable
    loaded = cache.cached_function(parts, lambda: None, {"count": mine})
    assert loaded(5.0) == 20.0 and mine.get_value() == 15.0  # read and updated in place
    mine.set_value(np.float64(1))
    assert loaded(0.0) == 2.0
    assert count.get_value() == 1.0  # the first variable is not touched


def test_cached_function_keys_the_backend_and_never_stores_python(tmp_path, monkeypatch):
    monkeypatch.setenv("RNNC_CACHE_DIR", str(tmp_path))
    x = pt.dscalar("x")
    built = []

    def build(factor):
        built.append(factor)
        return function([x], factor * x, FAST)

    assert cache.cached_function({"test": "b"}, lambda: build(2), backend="c")(1.0) == 2.0
    # the same parts for another backend: another entry
    assert cache.cached_function({"test": "b"}, lambda: build(3), backend="numba")(1.0) == 3.0
    assert cache.cached_function({"test": "b"}, lambda: build(4), backend="c")(1.0) == 2.0
    assert built == [2, 3]
    for _ in range(2):  # "python": built each time, nothing stored
        assert cache.cached_function({"test": "p"}, lambda: build(5), backend="python")(1.0) == 5.0
    assert built == [2, 3, 5, 5]
    assert len(list((tmp_path / "functions").glob("*.pkl"))) == 2


LOAD_IN_A_NEW_PROCESS = """
import sys
import numpy as np
import pytensor
from pytensor.link.c.basic import CLinker
import rnnc
from rnnc import cache

compiled = []
original = CLinker.compile_cmodule
CLinker.compile_cmodule = lambda self, *a: compiled.append(1) or original(self, *a)
layer = rnnc.Recurrent("rnn", I=3, H=5, dtype="float64")
fn = cache.cached_function({"test": sys.argv[1]}, lambda: sys.exit("missed"), layer.params)
fn(np.ones((2, 4, 3)))
print(len(compiled), "-g0" in pytensor.config.gcc__cxxflags.split())
if sys.argv[1] == "jax":
    import jax
    print(jax.config.jax_compilation_cache_dir)
"""


@pytest.mark.parametrize("backend", ["c", "jax"])
def test_a_function_loaded_in_a_new_process_is_set_up_like_its_backend(
    backend, tmp_path, monkeypatch
):
    # The loading process must set up the backend as rnnc.compile.function did: for C
    # the compiler's flags (rnnc adds -g0; else PyTensor's keys differ and every module
    # is built again), for JAX the persistent cache (else XLA compiles again)

    if not _available(backend):
        pytest.skip(f"{backend} is not installed")
    monkeypatch.setenv("RNNC_CACHE_DIR", str(tmp_path))
    layer = rnnc.Recurrent("rnn", I=3, H=5, dtype="float64")
    x = pt.tensor("x", dtype="float64", shape=(2, 4, 3))
    y = layer(x).outputs["y"]
    cache.cached_function({"test": backend}, lambda: function([x], y, backend), layer.params)
    out = subprocess.run(
        [sys.executable, "-c", LOAD_IN_A_NEW_PROCESS, backend],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    expected = ["0", "True"] + ([str(tmp_path / "jax")] if backend == "jax" else [])
    assert out.stdout.split() == expected


def test_configure_c_keeps_a_debug_level_the_user_chose():
    for flags, expected in (("-O2", "-O2 -g0"), ("", "-g0"), ("-O2 -g", "-O2 -g"), ("-g3", "-g3")):
        with pytensor.config.change_flags(gcc__cxxflags=flags):
            cache.configure_c()
            assert pytensor.config.gcc__cxxflags == expected


def test_the_cache_keeps_the_most_recently_used_within_its_size(tmp_path, monkeypatch):

    for age, name in enumerate(["d", "c", "b", "a"]):  # a is the oldest
        path = tmp_path / f"{name}.pkl"
        path.write_bytes(b"x" * 1000)
        os.utime(path, (1e9 - age, 1e9 - age))
    (tmp_path / "notes.txt").write_bytes(b"x" * 5000)  # not an entry
    for name, age in (("old.tmp", 7200), ("new.tmp", 60)):  # a killed writer's, a live one's
        (tmp_path / name).write_bytes(b"x")
        os.utime(tmp_path / name, (time.time() - age,) * 2)
    monkeypatch.setenv("RNNC_CACHE_MAX_MB", str(2500 / 2**20))
    assert sorted(p.name for p in cache.trim(tmp_path)) == ["a.pkl", "b.pkl"]
    assert sorted(p.name for p in tmp_path.glob("*.pkl")) == ["c.pkl", "d.pkl"]
    assert [p.name for p in tmp_path.glob("*.tmp")] == ["new.tmp"]


def test_a_hit_marks_an_entry_as_used(tmp_path, monkeypatch):

    monkeypatch.setenv("RNNC_CACHE_DIR", str(tmp_path))
    x = pt.dscalar("x")
    cache.cached_function({"test": "used"}, lambda: function([x], 2 * x, FAST))
    (path,) = (tmp_path / "functions").glob("*.pkl")
    os.utime(path, (1e9, 1e9))
    assert cache.cached_function({"test": "used"}, lambda: None)(3.0) == 6.0
    assert path.stat().st_mtime > 1e9


ALLOCATE_AND_COUNT_FAULTS = """
import ctypes, resource, sys, threading
from rnnc import cache

print(cache.keep_freed_memory())
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]

def allocate():  # as PyTensor's C code and XLA do: malloc, write every page, free
    for size in (13 * 2**20, 13 * 2**20, 48 * 2**20):  # 48 MB: above mmap's bound
        block = libc.malloc(size)
        ctypes.memset(block, 1, size)
        libc.free(block)

def faults_per_round():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    allocate()
    worker = threading.Thread(target=allocate)  # XLA allocates in a thread of its own
    worker.start()
    worker.join()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

faults_per_round()  # the first round maps the memory
print(faults_per_round())  # 37,000 pages are written in a round
"""


def test_freed_memory_is_kept_for_the_next_call(monkeypatch):
    # in a process of its own: threads that allocated before keep their own arenas
    monkeypatch.setenv("RNNC_KEEP_MEMORY", "0")
    assert not cache.keep_freed_memory()
    monkeypatch.delenv("RNNC_KEEP_MEMORY")
    out = subprocess.run(
        [sys.executable, "-c", ALLOCATE_AND_COUNT_FAULTS], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-2000:]
    kept, faults = out.stdout.split()
    if kept != "True":
        pytest.skip("not glibc")
    assert int(faults) < 100


def test_shared_variables_of_one_name_are_never_cached(tmp_path, monkeypatch):
    # a loaded function finds the caller's shared variables by name: with two of one
    # name it could read the wrong one
    monkeypatch.setenv("RNNC_CACHE_DIR", str(tmp_path))
    a, b = pytensor.shared(1.0, name="w"), pytensor.shared(2.0, name="w")
    built = []

    def build():
        built.append(1)
        return function([], a * 10 + b, FAST)

    for _ in range(2):
        assert cache.cached_function({"test": "twins"}, build, {"a": a, "b": b})() == 12.0
    assert len(built) == 2 and not (tmp_path / "functions").exists()


def test_key_digest_depends_on_every_part(monkeypatch):
    assert cache.key_digest({"a": 1}) == cache.key_digest({"a": 1})
    assert cache.key_digest({"a": 1}) != cache.key_digest({"a": 2})
    from rnnc import simd

    if simd.available():  # other C code without the vector loops: another entry
        on = cache.key_digest({"a": 1})
        monkeypatch.setenv("RNNC_SIMD", "0")
        assert cache.key_digest({"a": 1}) != on


def test_doctor_reports_blas_and_caches(capsys):
    from rnnc.commands import doctor

    rows = dict((what, finding) for what, finding, _ in doctor.diagnose())
    assert {"C backend BLAS", "rnnc cache", "default backend", "C modules built"} <= set(rows)
    from rnnc import simd

    assert ("vector loops" in rows["C elementwise loops"]) == simd.available()
    from rnnc import packedgemm

    kernel = "AVX-512" if packedgemm.panel_op() is packedgemm.PanelDot512 else "AVX2"
    assert (f"rnnc's {kernel} kernel" in rows["C loop products"]) == packedgemm.in_use()
    if "openblas" in rows["C backend BLAS"] and rows["system OpenBLAS"] != "not found":
        assert rows["OpenBLAS kernels"].split()[0].isalnum()  # a core name, as "Haswell"
    if _available("jax"):  # the flags JAX compiles with, rnnc's one-core flag included
        assert rows["XLA_FLAGS"] == (os.environ.get("XLA_FLAGS") or "unset")


@pytest.mark.parametrize(
    ("version", "hint"), [("0.6.0", None), ("0.7.0", "pip install 'ml_dtypes<0.7'")]
)
def test_doctor_names_the_ml_dtypes_that_slows_importing_jax(monkeypatch, version, hint):
    import importlib.metadata

    from rnnc.commands import doctor

    monkeypatch.setattr(importlib.metadata, "version", lambda name: version)
    what, finding, fix = doctor._ml_dtypes()
    assert (what, fix) == ("ml_dtypes", hint)
    assert finding.startswith(version) and ("0.7 s" in finding) == (hint is not None)


def test_a_file_is_written_whole_or_not_at_all(monkeypatch, tmp_path):
    from rnnc import files

    target = tmp_path / "sub" / "entry.pkl"
    files.write_atomically(target, b"whole")
    assert target.read_bytes() == b"whole"

    def fail(*args):
        raise OSError("disk full")

    monkeypatch.setattr(files.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        files.write_atomically(target, b"half")
    assert target.read_bytes() == b"whole"
    assert [p.name for p in target.parent.iterdir()] == ["entry.pkl"]  # no temporary left


@pytest.fixture
def gcc():
    """PyTensor's compiler class, where PyTensor would probe it for ``-march`` flags."""
    from pytensor.link.c.cmodule import GCC_compiler

    if not pytensor.config.cxx or "-march=" in pytensor.config.gcc__cxxflags:
        pytest.skip("no C++ compiler, or -march chosen by the user")
    return GCC_compiler


def test_the_march_probe_is_remembered_and_equals_pytensors_own(gcc, monkeypatch, tmp_path):
    """The flags a later process reads back are those PyTensor's probe found; with them
    set, PyTensor does not probe again."""
    from rnnc import march

    monkeypatch.setattr(gcc, "march_flags", None)
    probed = march.remember_march_flags(tmp_path)  # probes, as PyTensor would
    assert probed and any(f.startswith("-march=") for f in probed)
    assert [p.suffix for p in tmp_path.iterdir()] == [".json"]

    monkeypatch.setattr(gcc, "march_flags", None)  # as in a new process
    monkeypatch.setattr(gcc, "compile_args", lambda *a, **k: pytest.fail("probed"))
    assert march.remember_march_flags(tmp_path) == probed
    assert gcc.march_flags == probed


def test_a_broken_or_foreign_march_entry_is_probed_again(gcc, monkeypatch, tmp_path):
    from rnnc import march

    probes = []

    def probe(*args, **kwargs):
        probes.append(1)
        gcc.march_flags = ["-march=probed"]

    monkeypatch.setattr(gcc, "compile_args", probe)
    monkeypatch.setattr(gcc, "march_flags", None)
    march.remember_march_flags(tmp_path)
    (entry,) = tmp_path.iterdir()
    entry.write_text("{not json")
    monkeypatch.setattr(gcc, "march_flags", None)
    assert march.remember_march_flags(tmp_path) == ["-march=probed"]
    assert json.loads(entry.read_text()) == ["-march=probed"] and len(probes) == 2
    # another CPU (or compiler) has another entry
    monkeypatch.setattr(march, "_cpu", lambda: "another CPU")
    monkeypatch.setattr(gcc, "march_flags", None)
    march.remember_march_flags(tmp_path)
    assert len(probes) == 3 and len(list(tmp_path.iterdir())) == 2


def test_the_header_is_made_in_the_background_and_a_failed_one_leaves_nothing(tmp_path):
    from rnnc import pch

    if not pytensor.config.cxx:
        pytest.skip("no C++ compiler")
    header = Path(sysconfig.get_path("include")) / "Python.h"
    good, bad = tmp_path / "good", tmp_path / "bad"
    assert pch._start(good, header, pch.module_flags())
    assert pch._start(good, header, pch.module_flags())  # already under way: once
    assert pch._start(bad, header, ["--no-such-option"])
    assert not (good / "Python.h.gch").exists()  # g++ writes to a temporary name
    pch.ready()
    assert (good / "Python.h.gch").is_file() and not (bad / "Python.h.gch").exists()
    assert not list(tmp_path.rglob("*.tmp"))


def test_the_precompiled_python_header_is_valid_for_pytensors_modules(tmp_path):
    """g++ takes rnnc's precompiled ``Python.h`` for a file compiled with the options of
    PyTensor's modules (a stale or mismatched one would be skipped silently: this test
    says when PyTensor's options change under it)."""

    from rnnc import pch

    if not pytensor.config.cxx:
        pytest.skip("no C++ compiler")
    cache.configure("c")
    folder = pch.use_precompiled_header()
    pch.ready()
    assert folder is not None and f"-I{folder}" in pytensor.config.gcc__cxxflags.split()
    source = tmp_path / "mod.cpp"
    source.write_text(
        "#include <Python.h>\n#include <numpy/arrayobject.h>\nint f() { return 1; }\n"
    )
    flags = pch.module_flags()
    out = subprocess.run(
        [pytensor.config.cxx, "-H", "-fsyntax-only", *flags, str(source)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stderr.splitlines()[0] == f"! {folder}/Python.h.gch"


def test_doctor_advises_pips_mkl_on_an_intel_cpu_only(monkeypatch, tmp_path):
    from rnnc import blas
    from rnnc.commands import doctor

    monkeypatch.setattr(blas, "intel_cpu", lambda: True)
    what, finding, advice = doctor._mkl(None, user_flags=False)
    assert (what, finding) == ("MKL from pip", "not installed") and "pip install mkl" in advice
    assert doctor._mkl(None, user_flags=True)[2] is None  # the user chose a BLAS
    assert doctor._mkl(tmp_path / "libmkl_rt.so.3", user_flags=False)[2] is None
    monkeypatch.setattr(blas, "intel_cpu", lambda: False)
    assert doctor._mkl(None, user_flags=False)[2] is None


def test_doctor_says_whether_mkl_is_linked_and_loops_multiply_by_packed_weights(
    monkeypatch, tmp_path
):
    from rnnc import blas, mklpacked
    from rnnc.commands import doctor

    library = tmp_path / "libmkl_rt.so.3"
    monkeypatch.setattr(blas, "linked_mkl", lambda: True)
    monkeypatch.setattr(mklpacked, "in_use", lambda: True)
    assert doctor._mkl(library, user_flags=False)[1].endswith("(loops multiply by packed weights)")
    monkeypatch.setattr(mklpacked, "in_use", lambda: False)
    monkeypatch.setenv("RNNC_MKL_PACKED", "0")
    assert "RNNC_MKL_PACKED=0" in doctor._mkl(library, user_flags=False)[1]
    monkeypatch.delenv("RNNC_MKL_PACKED")
    assert doctor._mkl(library, user_flags=False)[1] == str(library)
    monkeypatch.setattr(blas, "linked_mkl", lambda: False)
    assert "OpenBLAS is faster on this CPU" in doctor._mkl(library, user_flags=False)[1]
    assert doctor._mkl(library, user_flags=True)[1] == f"{library} (not linked)"


@pytest.mark.parametrize(
    ("mkl", "panel", "mkl_linked", "env", "want"),
    [
        (True, False, True, None, "MKL's packed GEMM"),
        (False, "PanelDot", False, None, "rnnc's AVX2 kernel"),
        (False, "PanelDot512", False, None, "rnnc's AVX-512 kernel"),
        (False, False, True, None, "RNNC_MKL_PACKED=0"),
        (False, False, False, "0", "(RNNC_PANEL_GEMM=0)"),
        (False, False, False, None, "no AVX2 and FMA"),
    ],
)
def test_doctor_says_how_the_c_loops_multiply(monkeypatch, mkl, panel, mkl_linked, env, want):
    from rnnc import blas, mklpacked, packedgemm
    from rnnc.commands import doctor

    monkeypatch.setattr(mklpacked, "in_use", lambda: mkl)
    monkeypatch.setattr(packedgemm, "in_use", lambda: bool(panel))
    if panel:
        monkeypatch.setattr(packedgemm, "panel_op", lambda: getattr(packedgemm, panel))
    monkeypatch.setattr(blas, "linked_mkl", lambda: mkl_linked)
    if env is None:
        monkeypatch.delenv("RNNC_PANEL_GEMM", raising=False)
    else:
        monkeypatch.setenv("RNNC_PANEL_GEMM", env)
    what, finding, _ = doctor._loop_products()
    assert what == "C loop products" and want in finding


def test_doctor_says_whether_input_products_are_made_in_the_loops(monkeypatch):
    from rnnc import mklpacked, packedgemm
    from rnnc.commands import doctor

    monkeypatch.setattr(mklpacked, "in_use", lambda: False)
    monkeypatch.setattr(packedgemm, "in_use", lambda: True)
    monkeypatch.delenv("RNNC_LOOP_INPUTS", raising=False)
    assert "input products step by step in the loops" in doctor._loop_products()[1]
    monkeypatch.setenv("RNNC_LOOP_INPUTS", "0")
    assert "input products" not in doctor._loop_products()[1]


def test_doctor_says_whether_the_kernel_makes_the_weight_gradients(monkeypatch):
    from rnnc import mklpacked, packedgemm, rowsdot
    from rnnc.commands import doctor

    monkeypatch.setattr(mklpacked, "in_use", lambda: False)
    monkeypatch.setattr(packedgemm, "in_use", lambda: True)
    monkeypatch.setattr(rowsdot, "in_use", lambda: True)
    assert "weight gradients after the loops too" in doctor._loop_products()[1]
    monkeypatch.setattr(rowsdot, "in_use", lambda: False)
    assert "weight gradients" not in doctor._loop_products()[1]


def _composites(fgraph) -> list:
    """The scalar graphs of the ``Composite`` operations of a compiled graph and of
    its loops."""
    from pytensor.scalar.basic import Composite
    from pytensor.scan.op import Scan
    from pytensor.tensor.elemwise import Elemwise

    out = []
    for node in fgraph.toposort():
        op = getattr(node.op, "op", node.op)  # rnnc.interpreted wraps some
        if isinstance(op, Elemwise) and isinstance(op.scalar_op, Composite):
            out.append(op.scalar_op.fgraph)
        elif isinstance(op, Scan):
            out.extend(_composites(op.fn.maker.fgraph))
    return out


def test_a_pickled_function_keeps_the_c_code_it_was_compiled_with():
    """A ``Composite`` whose scalar graph holds one computation twice loses the copy
    when it is pickled: loaded from rnnc's cache in a new process, its module has
    other C code than the one compiled, and is compiled again. The LSTM's gradient
    had one (two loop states' buffer lengths, fused before PyTensor merged them)."""
    import pickle

    layer = rnnc.Recurrent("lstm", I=3, H=4, backend="c", seed=0)
    x = pt.tensor3("x", dtype="float32")
    y = layer(x).outputs["y"]
    fn = function([x], [y, *pytensor.grad((y * y).sum(), list(layer.params.values()))], "c")
    compiled = _composites(fn.maker.fgraph)
    loaded = _composites(pickle.loads(pickle.dumps(fn)).maker.fgraph)
    assert compiled and all(len(set(g.toposort())) == len(g.toposort()) for g in compiled)
    assert [len(g.toposort()) for g in loaded] == [len(g.toposort()) for g in compiled]
