"""rnnc.blas: which BLAS the C backend links when the user has not chosen one."""

from __future__ import annotations

import os
import sys
from types import SimpleNamespace

import pytensor
import pytest

from rnnc import blas, blaskernels


@pytest.fixture
def pip_mkl(tmp_path, monkeypatch):
    """A prefix whose ``lib`` holds what pip's mkl wheel installs (a stand-in file)."""
    lib = tmp_path / "prefix" / "lib"
    lib.mkdir(parents=True)
    (lib / "libmkl_rt.so.3").write_bytes(b"")
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "prefix"))
    return lib / "libmkl_rt.so.3"


def test_pips_mkl_is_found_in_the_environment(pip_mkl):
    assert blas.find_mkl() == pip_mkl


def test_mkl_is_linked_by_name_through_a_link_with_a_run_path(pip_mkl, tmp_path):
    links = tmp_path / "links"
    flags = blas.mkl_flags(pip_mkl, links)
    assert flags.split() == [f"-L{links}", "-lmkl_rt", f"-Wl,-rpath,{pip_mkl.parent.resolve()}"]
    assert (links / "libmkl_rt.so").resolve() == pip_mkl.resolve()
    assert blas.mkl_flags(pip_mkl, links) == flags  # the link made once is kept
    # no folder for the link: the file's own name
    assert blas.mkl_flags(pip_mkl, None).split()[1] == "-l:libmkl_rt.so.3"


@pytest.mark.parametrize("intel", [True, False])
def test_the_faster_blas_for_the_cpu_comes_first_and_the_users_flags_before_both(
    intel, pip_mkl, tmp_path, monkeypatch
):
    monkeypatch.setenv("RNNC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(blas, "intel_cpu", lambda: intel)
    monkeypatch.setattr(blas, "find_openblas", lambda: tmp_path / "libopenblas.so")
    monkeypatch.setattr(blaskernels, "choose", lambda *args: None)
    # a stand-in for PyTensor's config: reading the real one may start its BLAS search
    monkeypatch.setattr(pytensor, "config", SimpleNamespace(blas__ldflags=""))
    monkeypatch.setattr(blas, "user_flags", lambda: None)
    monkeypatch.delenv("MKL_CBWR", raising=False)
    if intel:  # MKL first
        assert "-lmkl_rt" in blas.configure().split()
        assert os.environ["MKL_CBWR"] == "AUTO,STRICT"  # reproducible results
    else:  # OpenBLAS first, MKL where there is no OpenBLAS
        assert blas.configure() == "-lopenblas"
        monkeypatch.setattr(blas, "find_openblas", lambda: None)
        assert "-lmkl_rt" in blas.configure().split()
    monkeypatch.setattr(blas, "find_mkl", lambda: None)
    monkeypatch.setattr(blas, "find_openblas", lambda: tmp_path / "libopenblas.so")
    assert blas.configure() == "-lopenblas"
    pytensor.config.blas__ldflags = "-lblis"
    monkeypatch.setattr(blas, "user_flags", lambda: "-lblis")
    assert blas.configure() == "-lblis"


def test_an_intel_cpu_is_told_from_proc_cpuinfo():
    text = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    assert blas.intel_cpu() == ("GenuineIntel" in text and os.uname().machine == "x86_64")


def test_the_users_flags_are_read_from_pytensor_flags(monkeypatch, tmp_path):
    monkeypatch.setenv("PYTENSORRC", str(tmp_path / "none"))
    monkeypatch.setenv("PYTENSOR_FLAGS", "floatX=float32,blas__ldflags=-lblis")
    assert blas.user_flags() == "-lblis"
    monkeypatch.setenv("PYTENSOR_FLAGS", "floatX=float32")
    assert blas.user_flags() is None
