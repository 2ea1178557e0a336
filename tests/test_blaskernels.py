"""rnnc.blaskernels: OpenBLAS's fallback for a CPU it does not know is caught."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from rnnc import blaskernels
from rnnc.blas import find_openblas

AVX512 = {"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl", "avx2", "fma", "sse3"}


@pytest.mark.parametrize(
    ("flags", "kernels"),
    [
        (AVX512, "SkylakeX"),
        ({"avx2", "fma", "avx512f"}, "Haswell"),  # AVX-512F alone is not SkylakeX's set
        ({"avx2"}, None),  # Haswell's kernels need FMA too
        ({"sse3", "ssse3"}, None),
        (set(), None),
    ],
)
def test_widest_kernels_need_every_flag_of_their_set(flags, kernels):
    assert blaskernels.widest_kernels(flags) == kernels


def test_the_users_coretype_and_the_switch_are_left_alone(monkeypatch, tmp_path):
    def ask(*args, **kwargs):
        raise AssertionError("OpenBLAS was asked")

    monkeypatch.setattr(blaskernels, "_own_pick", ask)
    monkeypatch.setattr(blaskernels, "chosen", None)
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Haswell")
    assert blaskernels.choose(tmp_path / "libopenblas.so") is None
    monkeypatch.delenv("OPENBLAS_CORETYPE")
    monkeypatch.setenv("RNNC_BLAS_KERNELS", "0")
    assert blaskernels.choose(tmp_path / "libopenblas.so") is None


def test_the_librarys_own_pick_is_asked_once_and_remembered(monkeypatch, tmp_path):
    library, remember = tmp_path / "libopenblas.so", tmp_path / "openblas.json"
    library.write_bytes(b"not a library")
    calls = []

    def child(argv, **kwargs):
        calls.append(argv)
        assert "OPENBLAS_CORETYPE" not in kwargs["env"]  # the library's own pick
        return subprocess.CompletedProcess(argv, 0, stdout="Prescott\n", stderr="")

    monkeypatch.setenv("OPENBLAS_CORETYPE", "Haswell")
    monkeypatch.setattr(blaskernels.subprocess, "run", child)
    assert blaskernels._own_pick(library, remember) == "Prescott"
    assert blaskernels._own_pick(library, remember) == "Prescott"
    assert len(calls) == 1 and list(json.loads(remember.read_text()).values()) == ["Prescott"]
    library.write_bytes(b"another library, another answer")  # a new size: asked again
    blaskernels._own_pick(library, remember)
    assert len(calls) == 2


def test_a_failing_child_means_no_choice(monkeypatch, tmp_path):
    library = tmp_path / "libopenblas.so"
    library.write_bytes(b"")
    failed = subprocess.CompletedProcess([], 1, stdout="", stderr="OSError")
    monkeypatch.setattr(blaskernels.subprocess, "run", lambda *a, **k: failed)
    assert blaskernels._own_pick(library, None) is None


@pytest.mark.skipif(find_openblas() is None, reason="no system OpenBLAS")
@pytest.mark.skipif(
    blaskernels.widest_kernels(blaskernels.cpu_flags()) is None, reason="no AVX2 here"
)
def test_a_fallback_loads_the_library_with_the_widest_kernels(tmp_path):
    """In a fresh process, with OpenBLAS's own pick made out to be the fallback: the
    library is loaded with the CPU's widest kernels and the environment put back."""
    script = textwrap.dedent(
        f"""
        import ctypes, os
        from pathlib import Path
        from rnnc import blaskernels
        blaskernels._own_pick = lambda library, remember: blaskernels.FALLBACK
        library = Path({str(find_openblas())!r})
        kernels = blaskernels.choose(library)
        assert "OPENBLAS_CORETYPE" not in os.environ
        lib = ctypes.CDLL(str(library))
        lib.openblas_get_corename.restype = ctypes.c_char_p
        print(kernels, lib.openblas_get_corename().decode())
        """
    )
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE",)}
    env.pop("RNNC_BLAS_KERNELS", None)
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    )
    want = blaskernels.widest_kernels(blaskernels.cpu_flags())
    assert out.stdout.split() == [want, want]
