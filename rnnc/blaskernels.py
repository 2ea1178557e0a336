"""OpenBLAS's kernels: catch its fallback for a CPU it does not know.

A ``DYNAMIC_ARCH`` OpenBLAS (Debian's and Ubuntu's) picks its kernels by CPU model when
it loads. A model newer than the library gets its fallback, Prescott's SSE3 kernels,
whatever the CPU can do. Measured 2026-12-05 on an Intel Xeon of family 6, model 207
(AVX-512) with Debian 12's OpenBLAS 0.3.21, one core: the custom cell of the benchmark,
forward and gradient at the medium size, took 181 ms on Prescott's kernels, 82 ms on
``Haswell`` (AVX2) and 50 ms on ``SkylakeX`` (AVX-512); the LSTM 293, 132 and 99-130.

:func:`choose` runs before the C backend's first module loads OpenBLAS. It asks a child
process which kernels the library picks here (once per library and CPU; the answer is
kept in rnnc's cache). When the answer is the fallback, it loads the library into this
process with ``OPENBLAS_CORETYPE`` naming the kernels of the widest instruction set
the CPU has, and puts the environment back: the C modules then link the library
already loaded, and child processes choose for themselves. Nothing happens when
``OPENBLAS_CORETYPE`` is set (the user's choice stands), when OpenBLAS is already
loaded, or with ``RNNC_BLAS_KERNELS=0``.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Set
from pathlib import Path

from rnnc.env import switched_off
from rnnc.files import write_atomically

__all__ = ["FALLBACK", "choose", "chosen", "cpu_flags", "widest_kernels"]

#: The kernels a DYNAMIC_ARCH OpenBLAS falls back to for a CPU it does not know.
FALLBACK = "Prescott"

#: OpenBLAS's names for kernels, widest first, with the CPU flags each needs.
KERNELS = (
    ("SkylakeX", {"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"}),
    ("Haswell", {"avx2", "fma"}),
)

_PROBE = (
    "import ctypes, sys; lib = ctypes.CDLL(sys.argv[1]); "
    "lib.openblas_get_corename.restype = ctypes.c_char_p; "
    "print(lib.openblas_get_corename().decode())"
)

#: The kernels this process asked OpenBLAS for, or None where it kept its own pick.
chosen: str | None = None


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (Linux's ``/proc/cpuinfo``; empty elsewhere), read once
    per process."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def widest_kernels(flags: Set[str]) -> str | None:
    """OpenBLAS's kernels for the widest instruction set in ``flags``, or None."""
    return next((name for name, needs in KERNELS if needs <= flags), None)


def _loaded(library: Path) -> bool:
    """Whether this process has loaded ``library`` already (Linux; False elsewhere)."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return False
    return str(library.resolve()) in maps


def _own_pick(library: Path, remember: Path | None) -> str | None:
    """The kernels ``library`` picks on this CPU by itself, asked of a child process
    (about 50 ms) and kept in the file ``remember``; None where the child fails."""
    stat = library.resolve().stat()
    cpu = hashlib.sha256(" ".join(sorted(cpu_flags())).encode()).hexdigest()[:16]
    key = f"{library.resolve()}:{stat.st_size}:{stat.st_mtime_ns}:{cpu}"
    known: dict[str, str] = {}
    if remember is not None and remember.is_file():
        try:
            known = json.loads(remember.read_text())
        except (OSError, ValueError):
            known = {}
    if key in known:
        return known[key]
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_CORETYPE"}
    try:
        done = subprocess.run(
            [sys.executable, "-c", _PROBE, str(library)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0 or not done.stdout.strip():
        return None
    pick = done.stdout.strip()
    if remember is not None:
        try:
            write_atomically(remember, json.dumps({**known, key: pick}).encode())
        except OSError:
            pass  # read-only cache: ask again next time
    return pick


def choose(library: Path, remember: Path | None = None) -> str | None:
    """Load ``library`` with kernels for this CPU where it would fall back to
    :data:`FALLBACK`; returns the kernels chosen, or None where OpenBLAS keeps its own.
    ``remember`` is the file that keeps the library's own pick across processes."""
    global chosen
    if chosen is not None:
        return chosen
    if switched_off("RNNC_BLAS_KERNELS") or "OPENBLAS_CORETYPE" in os.environ:
        return None
    if _loaded(library):
        return None
    kernels = widest_kernels(cpu_flags())
    if kernels is None or _own_pick(library, remember) != FALLBACK:
        return None
    os.environ["OPENBLAS_CORETYPE"] = kernels
    try:
        ctypes.CDLL(str(library), mode=ctypes.RTLD_GLOBAL)
    except OSError:
        return None
    finally:
        del os.environ["OPENBLAS_CORETYPE"]
    chosen = kernels
    return chosen
