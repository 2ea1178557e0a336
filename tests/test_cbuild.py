"""Parallel compilation of C modules (rnnc.cbuild)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest
from pytensor.link.c.cmodule import ModuleCache
from pytensor.link.vm import VMLinker

from rnnc import cbuild
from rnnc.compile import function

# A graph whose C modules a fresh compile dir lacks: an elementwise composite, a
# product, a sum, a transpose, and a scan whose step has modules of its own. Prints
# how many modules the pool built, how many PyTensor built, and the result.
CHILD = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import pytensor
    import pytensor.tensor as pt
    from pytensor.link.c.cmodule import get_module_cache
    import rnnc.cbuild as cbuild
    from rnnc.compile import function

    built = []
    original = cbuild._compile if sys.argv[1] != "broken" else lambda job: 1 / 0
    cbuild._compile = lambda job: built.append(job) or original(job)
    x = pt.matrix("x", dtype="float64")
    w = pt.matrix("w", dtype="float64")
    h, _ = pytensor.scan(lambda r, h: pt.sin(h + r) * 0.5, sequences=[x], outputs_info=[x[0]])
    y = (pt.exp(x) * 2 + 1) @ w.T + pt.tanh(x).sum() + h[-1].sum()
    fn = function([x, w], y, "c")
    a = np.arange(6.0).reshape(2, 3) / 10
    stats = get_module_cache(pytensor.config.compiledir).stats
    print(json.dumps({"built": len(built), "by_pytensor": stats[2], "y": fn(a, a).tolist()}))
    """
)


def _child(compiledir: str, how: str = "") -> dict:
    env = dict(os.environ, RNNC_PARALLEL_COMPILE="2", RNNC_CACHE="0")
    env["PYTENSOR_FLAGS"] = f"base_compiledir={compiledir}"
    out = subprocess.run(
        [sys.executable, "-c", CHILD, how], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _expected() -> np.ndarray:
    a = np.arange(6.0).reshape(2, 3) / 10
    h = a[0]
    for r in a:
        h = np.sin(h + r) * 0.5
    return (np.exp(a) * 2 + 1) @ a.T + np.tanh(a).sum() + h.sum()


def test_a_cold_compile_builds_the_modules_in_parallel_and_a_warm_one_none(tmp_path):
    cold = _child(str(tmp_path))
    assert cold["built"] >= 2 and cold["by_pytensor"] == 0  # the scan's step's too
    np.testing.assert_allclose(cold["y"], _expected())
    warm = _child(str(tmp_path))  # every module is in the compile dir now
    assert warm["built"] == 0 and warm["by_pytensor"] == 0
    np.testing.assert_allclose(warm["y"], _expected())


def test_a_failed_build_leaves_the_work_to_pytensor(tmp_path):
    broken = _child(str(tmp_path), "broken")
    assert broken["built"] >= 2 and broken["by_pytensor"] == broken["built"]
    np.testing.assert_allclose(broken["y"], _expected())
    assert not [d for d in tmp_path.rglob("tmp*") if not (d / "key.pkl").exists()]


def test_an_error_in_the_pool_leaves_the_work_to_pytensor(monkeypatch):
    def broken(self, nodes):
        raise RuntimeError("broken")

    monkeypatch.setattr(cbuild._Pool, "submit", broken)
    monkeypatch.setenv("RNNC_PARALLEL_COMPILE", "2")
    x = pt.vector("x", dtype="float64")
    fn = function([x], pt.exp(x) + 1, "c")
    np.testing.assert_allclose(fn(np.zeros(3)), np.full(3, 2.0))


def test_the_patch_is_undone_after_the_block(monkeypatch):
    monkeypatch.setenv("RNNC_PARALLEL_COMPILE", "2")
    originals = VMLinker.make_all, ModuleCache.module_from_key
    with cbuild.parallel_modules():
        with cbuild.parallel_modules():  # nested: one patch, one pool
            assert VMLinker.make_all.__wrapped__ is originals[0]
            assert ModuleCache.module_from_key.__wrapped__ is originals[1]
            assert cbuild._pool is not None
        assert (VMLinker.make_all, ModuleCache.module_from_key) != originals
    assert (VMLinker.make_all, ModuleCache.module_from_key) == originals
    assert cbuild._pool is None


@pytest.mark.parametrize(("value", "expected"), [("0", 0), ("off", 0), ("3", 3), ("", None)])
def test_workers(monkeypatch, value, expected):
    monkeypatch.setenv("RNNC_PARALLEL_COMPILE", value)
    if expected is None:  # the cores this process may run on
        expected = min(len(os.sched_getaffinity(0)), cbuild.MAX_WORKERS)
    assert cbuild.workers() == expected
    if expected < 2:
        with cbuild.parallel_modules():
            assert not hasattr(VMLinker.make_all, "__wrapped__")


def test_pytensor_has_the_api_cbuild_relies_on():
    from pytensor.scan.op import Scan

    for name in ("_get_from_key", "_get_from_hash", "_add_to_cache", "refresh"):
        assert hasattr(ModuleCache, name), f"PyTensor {pytensor.__version__} lacks {name}"
    assert isinstance(Scan.fn, property)


def test_an_interrupted_build_leaves_no_module_folder_behind(monkeypatch, tmp_path):
    """Ctrl-C while g++ runs: the folders made for the modules are removed (PyTensor
    would keep a folder without a key forever)."""
    from pytensor.link.c import cmodule

    made = []

    def workdir(base):
        path = tmp_path / f"m{len(made)}"
        path.mkdir()
        made.append(path)
        return str(path)

    monkeypatch.setattr(cmodule, "dlimport_workdir", workdir)
    monkeypatch.setattr(cbuild, "_compile", lambda job: time.sleep(0.2))
    monkeypatch.setattr(cbuild, "_missing", lambda nodes, cache, pending: [_job(), _job(), _job()])
    monkeypatch.setenv("RNNC_PARALLEL_COMPILE", "2")
    with pytest.raises(KeyboardInterrupt), cbuild.parallel_modules():
        cbuild._pool.submit([])
        raise KeyboardInterrupt
    assert len(made) == 3 and not any(p.exists() for p in made)


def _job():
    job = object.__new__(cbuild._Job)
    job.keys, job.module_hash = [object()], str(id(job))
    job.location = job.library = ""
    job.claim, job.finished = threading.Lock(), threading.Event()
    job.built = job.done = False
    return job
