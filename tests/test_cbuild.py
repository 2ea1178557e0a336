"""Parallel compilation of C modules (rnnc.cbuild)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest
from pytensor.link.vm import VMLinker

from rnnc import cbuild
from rnnc.compile import function

# A graph whose C modules a fresh compile dir lacks: an elementwise composite, a
# product, a sum, a transpose. Prints what was built by whom, and the result.
CHILD = textwrap.dedent(
    """
    import json
    import numpy as np
    import pytensor
    import pytensor.tensor as pt
    from pytensor.link.c.cmodule import get_module_cache
    import rnnc.cbuild as cbuild
    from rnnc.compile import function

    built = []
    original = cbuild.build_modules
    cbuild.build_modules = lambda nodes, n: built.append(original(nodes, n)) or built[-1]
    x = pt.matrix("x", dtype="float64")
    w = pt.matrix("w", dtype="float64")
    y = (pt.exp(x) * 2 + 1) @ w.T + pt.tanh(x).sum()
    fn = function([x, w], y, "c")
    a = np.arange(6.0).reshape(2, 3) / 10
    stats = get_module_cache(pytensor.config.compiledir).stats
    print(json.dumps({"built": sum(built), "by_pytensor": stats[2], "y": fn(a, a).tolist()}))
    """
)


def _child(compiledir: str) -> dict:
    env = dict(os.environ, RNNC_PARALLEL_COMPILE="2", RNNC_CACHE="0")
    env["PYTENSOR_FLAGS"] = f"base_compiledir={compiledir}"
    out = subprocess.run(
        [sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_cold_compile_builds_the_modules_in_parallel_and_a_warm_one_none(tmp_path):
    a = np.arange(6.0).reshape(2, 3) / 10
    expected = (np.exp(a) * 2 + 1) @ a.T + np.tanh(a).sum()
    cold = _child(str(tmp_path))
    assert cold["built"] >= 2 and cold["by_pytensor"] == 0
    np.testing.assert_allclose(cold["y"], expected)
    warm = _child(str(tmp_path))  # every module is in the compile dir now
    assert warm["built"] == 0 and warm["by_pytensor"] == 0
    np.testing.assert_allclose(warm["y"], expected)


def test_a_failure_leaves_the_work_to_pytensor(monkeypatch):
    def broken(nodes, n):
        raise RuntimeError("broken")

    monkeypatch.setattr(cbuild, "build_modules", broken)
    monkeypatch.setenv("RNNC_PARALLEL_COMPILE", "2")
    x = pt.vector("x", dtype="float64")
    fn = function([x], pt.exp(x) + 1, "c")
    np.testing.assert_allclose(fn(np.zeros(3)), np.full(3, 2.0))


def test_the_patch_is_undone_after_the_block(monkeypatch):
    monkeypatch.setenv("RNNC_PARALLEL_COMPILE", "2")
    original = VMLinker.make_all
    with cbuild.parallel_modules():
        with cbuild.parallel_modules():  # nested: one patch
            assert VMLinker.make_all is not original
            assert VMLinker.make_all.__wrapped__ is original
        assert VMLinker.make_all is not original
    assert VMLinker.make_all is original


@pytest.mark.parametrize(("value", "expected"), [("0", 0), ("off", 0), ("3", 3), ("", None)])
def test_workers(monkeypatch, value, expected):
    monkeypatch.setenv("RNNC_PARALLEL_COMPILE", value)
    if expected is None:  # the cores this process may run on
        expected = min(len(os.sched_getaffinity(0)), cbuild.MAX_WORKERS)
    assert cbuild.workers() == expected
    if expected < 2:
        with cbuild.parallel_modules():
            assert not hasattr(VMLinker.make_all, "__wrapped__")


def test_pytensor_has_the_cache_api_cbuild_relies_on():
    from pytensor.link.c.cmodule import ModuleCache

    for name in ("_get_from_key", "_get_from_hash", "_add_to_cache", "refresh"):
        assert hasattr(ModuleCache, name), f"PyTensor {pytensor.__version__} lacks {name}"


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

    def interrupted(job):
        raise KeyboardInterrupt

    monkeypatch.setattr(cmodule, "dlimport_workdir", workdir)
    monkeypatch.setattr(cbuild, "_compile", interrupted)
    monkeypatch.setattr(cbuild, "_missing", lambda nodes, cache: [_fake_job(), _fake_job()])
    with pytest.raises(KeyboardInterrupt):
        cbuild.build_modules([], 2)
    assert len(made) == 2 and not any(p.exists() for p in made)


def _fake_job():
    job = object.__new__(cbuild._Job)
    job.location = job.library = ""
    return job
