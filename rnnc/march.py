"""PyTensor's probe of this CPU's compiler flags, remembered from one process to the next.

PyTensor compiles its C modules for the CPU it runs on. The first time a process asks
for the compiler's options (to compile a module, or only to compute the key under
which a compiled one is found) it probes: ``g++ -march=native -E -v -``, ``g++ -E -v
-``, then a test program compiled and run with the flags it read off (``-march=...``,
``-mtune=...`` and one ``-m...`` per instruction set). It keeps the result in
``GCC_compiler.march_flags`` for the rest of the process. On the machine of
``benchmarks/README.md`` that took 0.23-0.26 s of every process, a process that only
loads its functions from rnnc's cache included (0.9-1.3 s in all).

:func:`remember_march_flags` keeps the probe's result in ``<rnnc cache>/march``,
under a digest of what it depends on: the compiler (its path, version, and the
executable's size and time), the CPU (model name and the instruction sets the kernel
lists) and PyTensor's version. A process with the same digest hands the flags to
PyTensor, which then does not probe; any other runs the probe, as before, and stores
what it found. Flags the user chose (``-march=`` in ``gcc__cxxflags``) are left to
PyTensor, which does not probe then either. ``RNNC_CACHE=0`` switches it off with the
rest of rnnc's cache.
"""

from __future__ import annotations

import hashlib
import json
import platform
import shutil
from pathlib import Path

from rnnc.files import write_atomically

__all__ = ["remember_march_flags"]


def remember_march_flags(folder: Path) -> list[str] | None:
    """Set PyTensor's ``-march`` flags from ``folder`` where an earlier process stored
    them for this compiler and CPU, else let PyTensor probe and store its result there.
    Returns the flags in force (None where there is no C compiler)."""
    import pytensor
    from pytensor.link.c.cmodule import GCC_compiler

    if GCC_compiler.march_flags is not None:  # probed (or given) in this process
        return GCC_compiler.march_flags
    if not pytensor.config.cxx or "-march=" in pytensor.config.gcc__cxxflags:
        return None
    path = folder / f"{_digest()}.json"
    try:
        flags = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        flags = None
    if isinstance(flags, list) and all(isinstance(f, str) for f in flags):
        GCC_compiler.march_flags = flags
        return flags
    GCC_compiler.compile_args()  # PyTensor's probe
    flags = GCC_compiler.march_flags
    if flags is not None:
        try:
            write_atomically(path, json.dumps(flags).encode())
        except OSError:  # an unwritable cache: probe again next time
            pass
    return flags


def _digest() -> str:
    """What the probe's result depends on: the compiler, the CPU, PyTensor."""
    import pytensor

    cxx = pytensor.config.cxx
    exe = shutil.which(cxx) or cxx
    try:
        stat = Path(exe).resolve().stat()
        binary = f"{stat.st_size} {stat.st_mtime_ns}"
    except OSError:
        binary = "?"
    parts = [cxx, exe, binary, pytensor.config.gcc_version_str, _cpu(), pytensor.__version__]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def _cpu() -> str:
    """The CPU's model name and instruction sets (the first processor's, on Linux)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            lines = f.read().split("\n\n", 1)[0].splitlines()
    except OSError:
        return f"{platform.machine()} {platform.processor()}"
    keep = ("model name", "flags", "Features", "CPU part", "CPU implementer")
    return "\n".join(line for line in lines if line.split(":")[0].strip() in keep)
