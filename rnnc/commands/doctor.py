"""``rnnc doctor``: what rnnc will compile with, and what would make it faster.

Reports the versions, the default backend, the C compiler (and how many modules
rnnc builds with it at once), the BLAS the C backend links (and whether a system
OpenBLAS could be used), Numba's and JAX's caches (and an ``ml_dtypes`` that slows
JAX's import) and rnnc's own cache. Exits 0; ``--strict`` exits 1 when the C backend
has no BLAS.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import os
import platform
from pathlib import Path
from typing import Any

from rnnc import blas

__all__ = ["add_parser", "diagnose", "run"]


def add_parser(sub: Any) -> argparse.ArgumentParser:
    parser = sub.add_parser("doctor", help="report backends, BLAS and caches")
    parser.add_argument(
        "--strict", action="store_true", help="exit 1 when the C backend has no BLAS"
    )
    return parser


def _version(module: str) -> str | None:
    try:
        return importlib.import_module(module).__version__
    except ImportError:
        return None


def _ml_dtypes() -> tuple[str, str, str | None]:
    """The version of ``ml_dtypes``, which JAX imports: 0.7.0 spends 0.65-0.85 s of
    every such process registering its NumPy loops, 0.6.0 5 ms (docs/backends.md)."""
    version = importlib.metadata.version("ml_dtypes")
    major_minor = tuple(int(p) for p in version.split(".")[:2] if p.isdigit())
    slow = major_minor >= (0, 7)
    return (
        "ml_dtypes",
        f"{version}{' (about 0.7 s more to import JAX)' if slow else ''}",
        "pip install 'ml_dtypes<0.7'" if slow else None,
    )


def _openblas_kernels(path: Any) -> tuple[str, str, str | None]:
    """The kernels the system OpenBLAS runs here (``openblas_get_corename``): a
    ``DYNAMIC_ARCH`` build picks them by CPU unless ``OPENBLAS_CORETYPE`` forces some
    (docs/backends.md: what that costs), or rnnc does for a CPU OpenBLAS does not know
    (:mod:`rnnc.blaskernels`)."""
    import ctypes

    from rnnc import blaskernels

    try:
        lib = ctypes.CDLL(str(path))
        lib.openblas_get_corename.restype = ctypes.c_char_p
        lib.openblas_get_config.restype = ctypes.c_char_p
        core = lib.openblas_get_corename().decode()
        config = lib.openblas_get_config().decode().split()
    except (OSError, AttributeError):
        return ("OpenBLAS kernels", "unknown (cannot ask the library)", None)
    version = " ".join(config[:2])
    forced = os.environ.get("OPENBLAS_CORETYPE")
    if forced:
        return (
            "OpenBLAS kernels",
            f"{core} ({version}; forced by OPENBLAS_CORETYPE={forced})",
            "OPENBLAS_CORETYPE was set in your environment; keep it if it was set because "
            "this OpenBLAS computes wrong results on this CPU, else unset it to let "
            "OpenBLAS pick the kernels of this CPU",
        )
    if blaskernels.chosen:
        why = "chosen by rnnc: this OpenBLAS does not know this CPU"
        return ("OpenBLAS kernels", f"{core} ({version}; {why})", None)
    wider = blaskernels.widest_kernels(blaskernels.cpu_flags())
    if core == blaskernels.FALLBACK and wider:
        return (
            "OpenBLAS kernels",
            f"{core} ({version}: its fallback for a CPU it does not know)",
            f"unset RNNC_BLAS_KERNELS to let rnnc load it with the {wider} kernels "
            "this CPU can run (several times faster)",
        )
    return ("OpenBLAS kernels", f"{core} ({version}, chosen for this CPU)", None)


def _mkl(path: Path | None, user_flags: bool) -> tuple[str, str, str | None]:
    """pip's MKL: whether rnnc links it (before OpenBLAS on an Intel CPU, after it
    elsewhere: :mod:`rnnc.blas`) and whether loops multiply through its packed
    products (:mod:`rnnc.mklpacked`); on an Intel CPU without it, the advice to
    install it (the C backend's LSTM was 15% faster)."""
    if path is not None:
        from rnnc import mklpacked
        from rnnc.env import switched_off

        if not blas.linked_mkl():
            why = "" if user_flags else ": the system OpenBLAS is faster on this CPU"
            return ("MKL from pip", f"{path} (not linked{why})", None)
        if mklpacked.in_use():
            return ("MKL from pip", f"{path} (loops multiply by packed weights)", None)
        if switched_off("RNNC_MKL_PACKED"):
            return ("MKL from pip", f"{path} (packed products off: RNNC_MKL_PACKED=0)", None)
        return ("MKL from pip", str(path), None)
    advice = None
    if blas.intel_cpu() and not user_flags:
        advice = (
            "on this Intel CPU, pip install mkl (rnnc's [mkl] extra) makes the C "
            "backend's products faster (an LSTM's training step: about 15%)"
        )
    return ("MKL from pip", "not installed", advice)


def _parallel_compile() -> tuple[str, str, str | None]:
    """How many C modules rnnc compiles at once (``rnnc.cbuild``)."""
    from rnnc.cbuild import workers

    n = workers()
    if n < 2:
        return ("C modules built", "one at a time", "RNNC_PARALLEL_COMPILE=N builds N at once")
    return ("C modules built", f"{n} at a time (RNNC_PARALLEL_COMPILE to change)", None)


def _vector_loops() -> tuple[str, str, str | None]:
    """Whether the C backend's elementwise work runs as vector loops (``rnnc.simd``)."""
    from rnnc import simd
    from rnnc.env import switched_off

    if switched_off("RNNC_SIMD"):
        return ("C elementwise loops", "PyTensor's (RNNC_SIMD=0)", None)
    if not simd.available():
        return (
            "C elementwise loops",
            "PyTensor's (no g++ with glibc's libmvec on x86-64 here)",
            "rnnc's vector loops need g++ and glibc's libmvec (Linux, x86-64)",
        )
    return ("C elementwise loops", "rnnc's vector loops (libmvec)", None)


def _loop_products() -> tuple[str, str, str | None]:
    """How the C backend's loops multiply by their weights: packed once per call by
    MKL (:mod:`rnnc.mklpacked`) or by rnnc's own kernel (:mod:`rnnc.packedgemm`), or
    by the BLAS at every step; with rnnc's kernel, whether the input products are made
    in the loops too (:mod:`rnnc.loopinputs`), and whether the weight gradients after
    the loops are its too (:mod:`rnnc.rowsdot`)."""
    from rnnc import loopinputs, mklpacked, packedgemm, rowsdot
    from rnnc.env import switched_off

    if mklpacked.in_use():
        return ("C loop products", "MKL's packed GEMM, weights packed once per call", None)
    if packedgemm.in_use():
        kernel = "AVX-512" if packedgemm.panel_op() is packedgemm.PanelDot512 else "AVX2"
        inputs = "; input products step by step in the loops" if loopinputs.in_use() else ""
        grads = "; weight gradients after the loops too" if rowsdot.in_use() else ""
        finding = f"rnnc's {kernel} kernel, weights packed once per call{inputs}{grads}"
        return ("C loop products", finding, None)
    if blas.linked_mkl():
        why = "RNNC_MKL_PACKED=0 or MKL_INTERFACE_LAYER=ILP64"
    elif switched_off("RNNC_PANEL_GEMM"):
        why = "RNNC_PANEL_GEMM=0"
    else:
        why = "no AVX2 and FMA here"
    return ("C loop products", f"the BLAS at every step ({why})", None)


def _compile_dir(path: Path) -> tuple[str, str, str | None]:
    """PyTensor's compile dir and the number of C modules in it: PyTensor reads the key
    of every one when a process first compiles for C (2,172 modules: 2.2 s)."""
    modules = sum(1 for _ in path.glob("*/key.pkl")) if path.is_dir() else 0
    advice = None
    if modules > 1000:
        advice = (
            f"each process reads all {modules} modules' keys at its first C compilation "
            "(about 1 s per 1000); `pytensor-cache clear` empties the dir (the modules "
            "rnnc needs are built again once)"
        )
    return ("compile dir", f"{path} ({modules} C modules)", advice)


def diagnose() -> list[tuple[str, str, str | None]]:
    """``(what, finding, advice or None)`` rows."""
    import numpy
    import pytensor

    import rnnc
    from rnnc import cache
    from rnnc.compile import default_backend

    rows: list[tuple[str, str, str | None]] = [
        ("rnnc", rnnc.__version__, None),
        ("python", platform.python_version(), None),
        ("pytensor", pytensor.__version__, None),
        ("numpy", numpy.__version__, None),
        ("default backend", default_backend(), "choose with backend=... or $RNNC_BACKEND"),
        (
            "C compiler",
            pytensor.config.cxx or "none",
            None
            if pytensor.config.cxx
            else "install g++ (Debian: apt-get install g++); without it only numba/jax work",
        ),
        _compile_dir(Path(pytensor.config.compiledir)),
        _parallel_compile(),
        _vector_loops(),
    ]
    user, mkl, openblas = blas.user_flags(), blas.find_mkl(), blas.find_openblas()
    flags = blas.configure()
    if flags:
        found = "pip's MKL" if blas.linked_mkl() else "the system OpenBLAS"
        if mkl is not None and openblas is not None:
            found += ", the faster of two on this CPU"
        how = "set by you" if user is not None else f"set by rnnc: {found}"
        rows.append(("C backend BLAS", f"{flags} ({how})", None))
    else:
        rows.append(
            (
                "C backend BLAS",
                "none: matrix products go through NumPy's C API",
                "Debian/Ubuntu: apt-get install libopenblas-dev, or pip install mkl "
                "(rnnc then links it by itself); elsewhere set "
                "PYTENSOR_FLAGS=blas__ldflags='-L/path -lopenblas'",
            )
        )
    rows.append(_mkl(mkl, user is not None))
    rows.append(_loop_products())
    rows.append(("system OpenBLAS", str(openblas) if openblas else "not found", None))
    if openblas and "openblas" in flags:
        rows.append(_openblas_kernels(openblas))
    numba = _version("numba")
    rows.append(
        (
            "numba",
            f"{numba} (cache {'on' if pytensor.config.numba__cache else 'off'})"
            if numba
            else "missing",
            None if numba else "pip install numba",
        )
    )
    jax = _version("jax")
    rows.append(
        (
            "jax",
            f"{jax} (persistent cache: {cache.configure_jax()})" if jax else "not installed",
            None if jax else "optional: pip install 'rnnc[jax]' for the JAX backend",
        )
    )
    if jax:
        rows.append(_ml_dtypes())
        # configure_jax (above) added rnnc's flag if this process may use one core only
        rows.append(("XLA_FLAGS", os.environ.get("XLA_FLAGS") or "unset", None))
    folder = cache.cache_dir() / "functions"
    entries = list(folder.glob("*.pkl")) if folder.is_dir() else []
    size = sum(p.stat().st_size for p in entries) / 2**20
    state = "on" if cache.enabled() else "off (RNNC_CACHE=0)"
    rows.append(
        (
            "rnnc cache",
            f"{cache.cache_dir()} ({state}, {len(entries)} functions, "
            f"{size:.0f} of {cache.max_bytes() / 2**20:.0f} MB)",
            None,
        )
    )
    threads = os.environ.get("OMP_NUM_THREADS", "unset")
    rows.append(("OMP_NUM_THREADS", threads, None))
    return rows


def run(args: argparse.Namespace) -> int:
    rows = diagnose()
    width = max(len(what) for what, _, _ in rows)
    for what, finding, advice in rows:
        print(f"{what:<{width}}  {finding}")
        if advice and (what != "default backend"):
            print(f"{'':<{width}}  -> {advice}")
    no_blas = any(
        what == "C backend BLAS" and finding.startswith("none") for what, finding, _ in rows
    )
    return 1 if args.strict and no_blas else 0
