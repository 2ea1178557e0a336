"""A precompiled ``Python.h`` for PyTensor's C modules: a cold compile in less time.

Every C module PyTensor builds (one per kind of operation: an LSTM gradient needs 38)
starts with ``#include <Python.h>``, and g++ spends about a third of a small module's
time reading that header and what it includes. g++ can read a *precompiled header*
instead: when it looks for ``Python.h`` in a folder, it first looks for
``Python.h.gch`` there, and uses it if it was made with the same options that matter
(target, optimisation level, macros); otherwise it ignores it and reads the header.

:func:`use_precompiled_header` makes ``Python.h.gch`` once per machine, compiler,
Python and set of flags (in PyTensor's compile dir, under a name that digests them),
with the options PyTensor gives its modules, next to a link to the real ``Python.h``
(g++ opens it again for the include guard of a second ``#include``), and puts that
folder first on the include path (``-I`` in ``pytensor.config.gcc__cxxflags``). The
machine code of a module is the same with or without it (checked with ``objdump``);
the medium LSTM gradient's 38 modules took 8.3 s of g++ instead of 11.4 s.

Making the header takes g++ 0.5-0.8 s, once. It runs in the background while PyTensor
rewrites the graph (one core's work); :func:`ready` waits for it, and ``rnnc.cbuild``
calls it before building a module. A module PyTensor builds meanwhile by itself reads
the header instead, which gives the same code.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import subprocess
import sysconfig
import tempfile
import threading
from pathlib import Path

from rnnc.env import switched_off

__all__ = ["module_flags", "ready", "use_precompiled_header"]

_lock = threading.Lock()
_making: list[tuple[subprocess.Popen, str, Path]] = []  # g++, its output, the target

#: The options CLinker gives every module before the compiler's own (PyTensor 3.0).
_CLINKER_FLAGS = [
    "-O3",
    "-fno-math-errno",
    "-Wno-unused-label",
    "-Wno-unused-variable",
    "-Wno-write-strings",
]


def module_flags() -> list[str]:
    """The options and include folders PyTensor compiles a module with (those of
    ``CLinker.compile_args`` for most operations, and ``header_dirs``)."""
    import numpy
    import pytensor
    from pytensor.link.c.cmodule import GCC_compiler

    c_code = Path(pytensor.__file__).parent / "link" / "c" / "c_code"
    includes = [numpy.get_include(), sysconfig.get_path("include"), str(c_code)]
    return [*_CLINKER_FLAGS, *GCC_compiler.compile_args(), *(f"-I{d}" for d in includes)]


def use_precompiled_header() -> Path | None:
    """Use a precompiled ``Python.h`` for PyTensor's C modules, and start making it if
    it is not made yet (:func:`ready` waits for it); returns its folder, or None where
    it cannot be made (no g++, an error: modules then read the header as before).
    ``RNNC_PCH=0`` switches it off."""
    import pytensor

    if switched_off("RNNC_PCH") or not pytensor.config.cxx:
        return None
    header = Path(sysconfig.get_path("include")) / "Python.h"
    root = Path(pytensor.config.compiledir) / "rnnc_pch"
    try:  # the options without the folder this adds (the same digest when run again)
        flags = [f for f in module_flags() if not f.startswith(f"-I{root}")]
        stat = header.stat()
    except (OSError, subprocess.SubprocessError):  # the probe of -march runs g++
        return None
    compiler = f"{pytensor.config.cxx} {pytensor.config.gcc_version_str}"
    key = "\0".join([compiler, str(header), str(stat.st_mtime_ns), str(stat.st_size), *flags])
    folder = root / hashlib.sha256(key.encode()).hexdigest()[:16]
    if " " in str(folder):  # PyTensor splits gcc__cxxflags at spaces
        return None
    if not (folder / "Python.h.gch").is_file() and not _start(folder, header, flags):
        return None
    option = f"-I{folder}"
    if option not in pytensor.config.gcc__cxxflags.split():
        pytensor.config.gcc__cxxflags = f"{pytensor.config.gcc__cxxflags} {option}".strip()
    return folder


def _start(folder: Path, header: Path, flags: list[str]) -> bool:
    """Start g++ compiling ``header`` into ``folder/Python.h.gch``, unless this process
    already does (it writes to a temporary name, renamed by :func:`ready`, so that
    neither g++ nor a concurrent process ever reads half a file)."""
    import pytensor

    target = folder / "Python.h.gch"
    with _lock:
        if any(made == target for _, _, made in _making):
            return True
        folder.mkdir(parents=True, exist_ok=True)
        link = folder / "Python.h"
        if not link.exists():
            try:
                link.symlink_to(header)
            except FileExistsError:  # another process made it meanwhile
                pass
            except OSError:
                return False
        fd, tmp = tempfile.mkstemp(dir=folder, suffix=".gch.tmp")
        os.close(fd)
        cmd = [pytensor.config.cxx, "-x", "c++-header", *flags, str(header), "-o", tmp]
        try:
            process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        except OSError:
            Path(tmp).unlink(missing_ok=True)
            return False
        _making.append((process, tmp, target))
    return True


def ready(timeout: float = 120) -> None:
    """Wait until the headers this process started making are made (or failed: then
    modules read the header as before)."""
    with _lock:
        while _making:
            process, tmp, target = _making.pop()
            try:
                if process.wait(timeout) == 0:
                    os.replace(tmp, target)
            except (OSError, subprocess.SubprocessError):
                process.kill()
                process.wait()
            finally:
                Path(tmp).unlink(missing_ok=True)


atexit.register(ready)  # never leave a header half made at exit
