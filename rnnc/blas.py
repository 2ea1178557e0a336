"""The BLAS that PyTensor's C backend links, chosen when the user has not.

PyTensor links a BLAS through ``pytensor.config.blas__ldflags``; what it finds by
itself on a pip install is often nothing: it looks for ``libcblas``, or for
``libgfortran.so``/``libgomp.so`` next to OpenBLAS, or for MKL under names that pip's
``mkl`` wheel does not install (``libmkl_rt.so.3``, no ``libmkl_rt.so``). Matrix
products then go through NumPy's C API. Unless the user set the flags (``PYTENSOR_FLAGS``
or ``.pytensorrc``), :func:`configure` links one of two, whichever is faster on this
CPU where both are installed, else the one that is:

* **MKL from pip** (rnnc's ``mkl`` extra: ``libmkl_rt.so.N`` in the environment's
  ``lib``), first on an Intel CPU, through a link named ``libmkl_rt.so`` in rnnc's
  cache and a run path to the wheel's directory. On an Intel Xeon (family 6, model
  207, AVX-512), one core, 2026-12-05, the medium LSTM's forward+gradient on C ran at
  1.18-1.24x ``torch.nn.LSTM`` with MKL 2026.2 (no ``MKL_CBWR``) against 1.41-1.47x
  with OpenBLAS 0.3.21: MKL's products of a step (``[32,256] @ [256,1024]``) take
  95-150 us against OpenBLAS's 166.
  MKL's results depend on how its operands are aligned in memory unless
  ``MKL_CBWR=AUTO,STRICT``, which rnnc sets (where the user has not set the variable)
  so that a run resumed from a checkpoint computes what the first run did: without
  it, a product of a padded and of an unpadded weight matrix differed in the last
  bit. It costs a step's products about 15% (``[32,256] @ [256,1024]``: 125-136 us
  against 107-126, five processes each), some 2 ms of the LSTM's 80; whoever
  needs no reproducible results sets ``MKL_CBWR=AUTO`` for that.
* **The system OpenBLAS** (Debian/Ubuntu: ``apt-get install libopenblas-dev``), first
  on any other CPU, with its kernels checked by :mod:`rnnc.blaskernels`. On an AMD
  EPYC (family 23, model 49: Zen 2, AVX2), one core, 2026-12-06, the same LSTM ran at
  1.10-1.11x ``torch.nn.LSTM`` with OpenBLAS 0.3.21 (``Zen`` kernels) against
  1.27-1.29x with MKL 2026.2, whatever ``MKL_CBWR``, ``MKL_ENABLE_INSTRUCTIONS`` or
  :mod:`rnnc.mklpacked` said; and at 3.5x with neither (NumPy's C API), so MKL is
  still linked there when it is the only one.
"""

from __future__ import annotations

import functools
import os
import platform
import sys
from pathlib import Path

from rnnc import blaskernels

__all__ = [
    "configure",
    "find_mkl",
    "find_openblas",
    "intel_cpu",
    "linked_mkl",
    "mkl_flags",
    "user_flags",
]


def _library_dirs() -> list[Path]:
    dirs = [Path(p) for p in os.environ.get("LIBRARY_PATH", "").split(":") if p]
    dirs += [Path(sys.prefix) / "lib", Path("/usr/local/lib"), Path("/usr/lib"), Path("/lib")]
    dirs += sorted(Path("/usr/lib").glob("*-linux-gnu")) + sorted(Path("/lib").glob("*-linux-gnu"))
    return [d for d in dirs if d.is_dir()]


@functools.cache
def intel_cpu() -> bool:
    """Whether this is an Intel CPU of x86-64 (Linux's ``/proc/cpuinfo``, read once
    per process)."""
    try:
        return (
            platform.machine() in ("x86_64", "AMD64")
            and "GenuineIntel" in Path("/proc/cpuinfo").read_text()
        )
    except OSError:
        return False


def find_openblas() -> Path | None:
    """The OpenBLAS a linker would take for ``-lopenblas`` (``libopenblas.so``), or None."""
    for directory in _library_dirs():
        for name in ("libopenblas.so", "libopenblas.dylib"):
            if (directory / name).exists():
                return directory / name
    return None


def find_mkl() -> Path | None:
    """MKL's single dynamic library as pip's ``mkl`` wheel installs it into this
    environment (``<prefix>/lib/libmkl_rt.so.N``), or None."""
    found = sorted((Path(sys.prefix) / "lib").glob("libmkl_rt.so.*"))
    return found[-1] if found else None


def mkl_flags(library: Path, links: Path | None) -> str:
    """The flags that link ``library`` (a ``libmkl_rt.so.N``): through a link named
    ``libmkl_rt.so`` made in the folder ``links`` (a linker's ``-lmkl_rt`` needs that
    name), else by file name (``-l:libmkl_rt.so.N``, which PyTensor warns about); and
    a run path, so that no ``LD_LIBRARY_PATH`` is needed."""
    folder = library.parent.resolve()
    rpath = f"-Wl,-rpath,{folder}"
    if links is not None:
        link = links / "libmkl_rt.so"
        try:
            links.mkdir(parents=True, exist_ok=True)
            if not (link.is_symlink() and link.resolve() == library.resolve()):
                temporary = links / f".libmkl_rt.so.{os.getpid()}"
                temporary.unlink(missing_ok=True)
                temporary.symlink_to(library.resolve())
                temporary.replace(link)  # atomic: another process may be linking
            return f"-L{links} -lmkl_rt {rpath}"
        except OSError:
            pass
    return f"-L{folder} -l:{library.name} {rpath}"


def linked_mkl() -> bool:
    """Whether PyTensor's C backend links MKL (``mkl_rt`` in its BLAS flags)."""
    import pytensor

    return "mkl_rt" in pytensor.config.blas__ldflags


def user_flags() -> str | None:
    """The BLAS flags the user gave PyTensor (``PYTENSOR_FLAGS`` or ``.pytensorrc``), or None."""
    flags = os.environ.get("PYTENSOR_FLAGS", "")
    for part in flags.split(","):
        name, _, value = part.partition("=")
        if name.strip() in ("blas__ldflags", "blas.ldflags"):
            return value.strip()
    rcs = os.environ.get("PYTENSORRC", "~/.pytensorrc").split(os.pathsep)
    for rc in rcs:
        path = Path(rc).expanduser()
        if path.is_file() and "ldflags" in path.read_text(errors="replace"):
            return "(set in " + str(path) + ")"
    return None


def configure() -> str:
    """Link the C backend to MKL or OpenBLAS (module docstring) unless the user chose
    flags; returns the flags in force. Must run before the first C compilation of a
    BLAS op to take effect there; :func:`rnnc.cache.configure` runs it when a function
    is compiled."""
    import pytensor

    from rnnc import cache

    mkl, openblas = find_mkl(), find_openblas()
    if user_flags() is None:
        if mkl is not None and (openblas is None or intel_cpu()):
            links = cache.cache_dir() / "mkl" if cache.enabled() else None
            pytensor.config.blas__ldflags = mkl_flags(mkl, links)
            os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")  # read when MKL loads
        elif openblas is not None:
            pytensor.config.blas__ldflags = "-lopenblas"
    flags = pytensor.config.blas__ldflags
    if openblas is not None and "openblas" in flags:
        remember = cache.cache_dir() / "openblas.json" if cache.enabled() else None
        blaskernels.choose(openblas, remember)
    return flags
