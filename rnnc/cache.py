"""Compile time as a feature: caches that survive the process, and BLAS for the C backend.

Compiling a scan and its gradient costs tens of seconds cold. Four caches take that
down, each keyed so that a changed cell, size or version never reuses a stale entry:

* PyTensor's compile directory (``pytensor.config.compiledir``) keeps the C code it
  built; it is on by default.
* Numba's file cache, which PyTensor turns on (``pytensor.config.numba__cache``)
  under the same directory.
* JAX's persistent compilation cache, which :func:`configure` points at
  ``<rnnc cache>/jax``.
* rnnc's own cache of compiled functions (:func:`cached_function`), keyed by the
  cell's text, dimensions, dtype, backend, options and the versions of rnnc, PyTensor
  and NumPy. A hit skips PyTensor's graph rewriting as well as the compilation, and,
  when the graph is built inside ``build``, the graph too; on JAX the entry holds XLA's
  executable (:mod:`rnnc.jaxlink`). 0.54-0.66 s (C) and 0.73-0.82 s (JAX) from a
  process's start to the end of the first call of an LSTM gradient.

The cache lives in ``$RNNC_CACHE_DIR``, else ``$XDG_CACHE_HOME/rnnc``, else
``~/.cache/rnnc``; ``RNNC_CACHE=0`` switches rnnc's own cache off, and its functions
keep within ``$RNNC_CACHE_MAX_MB`` (1024 MB; the least recently used go first). It also
keeps the result of PyTensor's probe of the CPU for C compiler flags
(:mod:`rnnc.march`), which every process using the C backend paid 0.23-0.26 s for,
and the checked cells of the ``.cell`` files it loads (``cells/``, 5 KB each:
:func:`rnnc.compile.parse_file`), so that a new process builds a layer without
importing Lark or parsing.

The C backend's BLAS is :mod:`rnnc.blas`'s job; :func:`configure_c` also drops the
debug information PyTensor asks of the C compiler (a fifth of a cold compile).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import pickle
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from rnnc import (
    blas,
    colsum,
    cscan,
    interpreted,
    jaxlink,
    jaxsetup,
    loopinputs,
    march,
    mklpacked,
    onehot,
    packedgemm,
    pch,
    rowreduce,
    rowsdot,
    sharedproducts,
    simd,
)
from rnnc.cbuild import parallel_modules
from rnnc.env import switched_off
from rnnc.files import write_atomically

__all__ = [
    "cache_dir",
    "cached_function",
    "clear",
    "configure",
    "configure_c",
    "configure_jax",
    "keep_freed_memory",
    "key_digest",
    "max_bytes",
    "trim",
]

_configured: set[str] = set()


def cache_dir() -> Path:
    """Where rnnc keeps what it caches across processes."""
    if os.environ.get("RNNC_CACHE_DIR"):
        return Path(os.environ["RNNC_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "rnnc"


def enabled() -> bool:
    return not switched_off("RNNC_CACHE")


_merging = False


def merge_before_fusion() -> None:
    """Merge identical computations right before PyTensor's elementwise fusion (once).

    PyTensor runs its ``merge2`` and ``elemwise_fusion`` at the same position (49), the
    fusion first, so a graph with two identical chains of shape arithmetic (an LSTM's
    gradient sums two loop states whose buffers have the same length) gets a
    ``Composite`` that computes the chain twice. Its ``FrozenFunctionGraph`` keeps the
    copy in its C code, but a pickled one is built again without it: a function
    loaded from rnnc's cache then had other C code than it was compiled with, and
    the first process to load it compiled that module again (0.5 s of 1.3)."""
    global _merging
    if _merging:
        return
    from pytensor.compile.mode import optdb
    from pytensor.graph.rewriting.basic import MergeOptimizer

    optdb.register("rnnc_merge_before_fusion", MergeOptimizer(), "fast_run", position=48.99)
    _merging = True


def configure_c() -> None:
    """Set up PyTensor's C backend: BLAS (:func:`rnnc.blas.configure`), and C modules built
    without debug information (``-g0`` added to ``pytensor.config.gcc__cxxflags``,
    unless the user's flags already choose a ``-g`` level).

    PyTensor always passes ``-g`` to the compiler; the debug information costs a fifth
    of a cold compile (an LSTM gradient: 48 modules, 20.0 s with it, 15.8 s without)
    and nothing at run time (the same code, bitwise equal results). Only someone who
    debugs PyTensor's C code in gdb needs it: they set ``gcc__cxxflags=-g``.

    Also: identical computations are merged once more just before elementwise fusion
    (:func:`merge_before_fusion`).
    """
    import pytensor

    blas.configure()
    merge_before_fusion()
    simd.register()
    colsum.register()
    rowreduce.register()
    cscan.register()
    onehot.register()
    loopinputs.register()
    sharedproducts.register()
    rowsdot.register()
    mklpacked.register()  # and rnnc.packedgemm's rewrite
    flags = pytensor.config.gcc__cxxflags
    if not any(f.startswith("-g") for f in flags.split()):
        pytensor.config.gcc__cxxflags = f"{flags} -g0".strip()


def keep_freed_memory() -> bool:
    """Make glibc keep the memory of freed arrays for the next ones; returns whether it
    did. ``RNNC_KEEP_MEMORY=0`` leaves malloc alone.

    PyTensor's C code allocates its arrays (a scan's outputs, their gradients) anew at
    every call, and XLA the memory of a call's intermediate values, from a thread of
    its own. glibc serves large blocks with fresh pages from the system (``mmap``) and
    gives freed memory back (trimming the heap, and each thread's arena), so every call
    faulted its memory in again, page by page. Three ``mallopt`` settings keep it:
    no ``mmap`` (every block from the heap), one arena for all threads (XLA's thread
    allocates from the main heap too), and no trimming below 2 GB. Measured on the
    medium LSTM's forward+gradient (B=32 T=100 I=128 H=256), each in a process of its
    own: C 11,900 page faults per call and 113-118 ms before, none and 95-100 ms after;
    JAX 18,600 faults (73 MiB) and 79-87 ms before, 26 and 54 ms after; PyTorch's LSTM
    in the same process 57 -> 39 ms. The process keeps the memory it has used, and
    threads share one malloc arena.
    """
    if switched_off("RNNC_KEEP_MEMORY"):
        return False
    try:
        import ctypes

        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    m_trim_threshold, m_mmap_max, m_arena_max = -1, -4, -8
    return all(
        mallopt(option, value)
        for option, value in ((m_arena_max, 1), (m_mmap_max, 0), (m_trim_threshold, 2**31 - 1))
    )


# ---------------------------------------------------------------- JAX
def configure_jax() -> Path | None:
    """Point JAX's persistent compilation cache at ``<rnnc cache>/jax`` (unless the user
    chose a directory); caches every compilation, however quick. On a process bound
    to one core, XLA runs operations one after another
    (:func:`rnnc.jaxsetup.one_core_schedule`)."""
    try:
        import jax
    except ImportError:
        return None
    jaxsetup.one_core_schedule()
    if not jax.config.jax_compilation_cache_dir:
        path = cache_dir() / "jax"
        path.mkdir(parents=True, exist_ok=True)
        jax.config.update("jax_compilation_cache_dir", str(path))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return Path(jax.config.jax_compilation_cache_dir)


def reject_truncated_scan_on_jax(outputs: Any) -> None:
    """Raise :class:`~rnnc.errors.OptionError` if a graph for the JAX backend holds a
    scan with a truncated gradient: PyTensor's JAX scan crashes on one that is
    shorter than the sequence."""
    from pytensor.graph.traversal import ancestors
    from pytensor.scan.op import Scan

    from rnnc.errors import OptionError

    outs = outputs if isinstance(outputs, list | tuple) else [outputs]
    for var in ancestors([o for o in outs if o is not None]):
        op = getattr(var.owner, "op", None) if var.owner else None
        if isinstance(op, Scan) and op.truncate_gradient != -1:
            raise OptionError(
                f"the JAX backend cannot take a truncated gradient "
                f"(truncate_gradient={op.truncate_gradient}): PyTensor's JAX scan crashes on it",
                fix="use backend='c' or 'numba' for truncated back-propagation through time, "
                "or truncate_gradient=-1 with JAX",
            )


def configure(backend: str) -> None:
    """Set up the caches and libraries ``backend`` uses (once per process)."""
    if backend in _configured:
        return
    _configured.add(backend)
    # "python" too: a scan built for another backend still compiles its step with C
    if backend in ("c", "python"):
        configure_c()
        keep_freed_memory()
        if enabled():
            march.remember_march_flags(cache_dir() / "march")
        pch.use_precompiled_header()
    elif backend == "jax":
        configure_jax()  # rnnc.jaxsetup.setup() waits for a graph to convert (jaxlink)
        onehot.register()
        keep_freed_memory()


# ---------------------------------------------------------------- rnnc's own cache
@functools.cache
def source_digest() -> str:
    """A digest of rnnc's own code (its modules and cell files): a function compiled by
    other code, the same version number notwithstanding (a checkout being edited), is
    never loaded."""
    root = Path(__file__).parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.suffix in (".py", ".cell", ".lark") and path.is_file():
            digest.update(path.relative_to(root).as_posix().encode() + b"\0")
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _versions() -> dict[str, str]:
    import numpy
    import pytensor

    import rnnc

    # Before reading the flags (else PyTensor probes for a BLAS: 0.24 s), and so that a
    # function loaded here links the C modules its maker compiled (same compiler flags).
    configure_c()

    return {
        "rnnc": rnnc.__version__,
        "rnnc source": source_digest(),
        "pytensor": pytensor.__version__,
        "numpy": numpy.__version__,
        "python": sys.version.split()[0],
        "blas": str(pytensor.config.blas__ldflags),
        "vector loops": simd.in_use(),  # RNNC_SIMD=0 compiles other C code
        "mkl packed": mklpacked.in_use(),  # RNNC_MKL_PACKED=0 too
        "panel gemm": packedgemm.in_use(),  # RNNC_PANEL_GEMM=0 too
        "loop inputs": loopinputs.in_use(),  # RNNC_LOOP_INPUTS=0 too
        "shared products": sharedproducts.in_use(),  # RNNC_SHARED_PRODUCTS=0
        "rows dot": rowsdot.in_use(),  # RNNC_ROWS_DOT=0
        "one-hot products": onehot.in_use(),  # RNNC_ONE_HOT=0
        "interpreted": interpreted.in_use(),  # and RNNC_INTERPRETED=0
    }


def key_digest(parts: Mapping[str, Any]) -> str:
    """A stable digest of the key parts (JSON with sorted keys) and the versions."""
    text = json.dumps({"key": parts, "versions": _versions()}, sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def cached_function(
    parts: Mapping[str, Any],
    build: Callable[[], Any],
    shared: Mapping[str, Any] | None = None,
    *,
    complete: bool = False,
    backend: str | None = None,
) -> Any:
    """A compiled function from rnnc's cache, or ``build()`` (then stored).

    ``parts`` must name everything the function depends on (cell text, dimensions,
    dtype, backend, options, the kind of call); ``backend``, when given, is added to
    them, and a function for the ``"python"`` backend (FAST_COMPILE: built in no time)
    is built, never stored. ``shared`` maps names to the shared
    variables the caller owns: a function loaded from disk reads and updates them (by
    name) instead of the copies it was pickled with, so training updates reach the
    caller; shared variables not named there keep the values they were pickled with,
    unless ``complete=True``: then such a function is built again. The names and types
    of ``shared`` are part of the key; shared variables whose names are not distinct
    cannot be matched, so such a function is built every time. Build the graph inside
    ``build`` so that a hit skips it too. ``build`` may also return a tuple holding
    compiled functions and other values (names, say), stored together.
    """
    variables = {v.name: str(v.type) for v in (shared or {}).values()}
    if not enabled() or backend == "python" or len(variables) < len(shared or {}):
        return build()
    parts = {**parts, "backend": backend} if backend else parts
    parts = {**parts, "shared": variables} if variables else parts
    if backend == "jax":  # XLA's flags shape the executable the entry keeps
        configure("jax")
        parts = {**parts, "XLA_FLAGS": os.environ.get("XLA_FLAGS", "")}
    path = cache_dir() / "functions" / f"{key_digest(parts)}.pkl"
    if path.exists():
        try:
            with path.open("rb") as f:
                fn = _Loader(f, shared or {}, complete).load()
            os.utime(path)  # used now: the last to go when the cache is trimmed
            return fn
        except Exception:  # a stale, broken or incomplete entry: build it again
            path.unlink(missing_ok=True)
    fn = build()
    jaxlink.compile_ahead(fn)  # a JAX function keeps its XLA executable
    try:
        data = pickle.dumps(fn, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:  # some graphs do not pickle: compile every time
        return fn
    write_atomically(path, data)
    trim(path.parent)
    return fn


def max_bytes() -> int:
    """The most rnnc's cached functions may take on disk: ``$RNNC_CACHE_MAX_MB``
    megabytes, 1024 by default."""
    return int(float(os.environ.get("RNNC_CACHE_MAX_MB", "1024")) * 2**20)


def trim(folder: Path) -> list[Path]:
    """Delete the least recently used functions in ``folder`` until the rest fit in
    :func:`max_bytes`; returns the paths deleted. (An entry holds a copy of the
    parameters it was compiled with, and ``layer.run`` on JAX makes one per shape.)
    Temporary files older than an hour (of writers killed mid-write) go too."""
    for path in folder.glob("*.tmp"):  # a writer killed before its rename, an hour ago
        try:
            if path.stat().st_mtime < time.time() - 3600:
                path.unlink()
        except FileNotFoundError:
            pass
    entries = []
    for path in folder.glob("*.pkl"):
        try:
            stat = path.stat()
        except FileNotFoundError:  # another process trimmed it
            continue
        entries.append((stat.st_mtime, stat.st_size, path))
    total, limit, deleted = sum(e[1] for e in entries), max_bytes(), []
    for _, size, path in sorted(entries):
        if total <= limit:
            break
        path.unlink(missing_ok=True)
        total -= size
        deleted.append(path)
    return deleted


class _Loader(pickle.Unpickler):
    """Unpickles a compiled function so that it reads and updates the caller's shared
    variables (matched by name): their containers are handed to the linker when the
    function is made, once. (``Function.copy(swap=...)`` after loading would make the
    function a second time: 0.4 s of a 1.6 s load for an LSTM gradient on C.)"""

    def __init__(self, file: Any, shared: Mapping[str, Any], complete: bool = False) -> None:
        super().__init__(file)
        self.shared = {v.name: v for v in shared.values()}
        self.complete = complete

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("pytensor.compile.executor", "_constructor_Function"):
            return self._function
        return super().find_class(module, name)

    def _function(
        self, maker: Any, input_storage: list, inputs_data: list, trust_input: bool = False
    ) -> Any:
        from pytensor.compile.sharedvalue import SharedVariable

        storage = []
        for inp, container in zip(maker.expanded_inputs, input_storage, strict=True):
            var = getattr(inp, "variable", None)
            mine = self.shared.get(var.name) if isinstance(var, SharedVariable) else None
            if mine is not None and mine.type.in_same_class(var.type):
                container = mine.container
            elif self.complete and isinstance(var, SharedVariable):
                raise LookupError(f"the caller has no shared variable {var.name!r}")
            storage.append(container)
        # set up its backend as rnnc.compile.function did where it was made (else JAX's
        # persistent cache is off here, and the first call compiles XLA anew: 1 s)
        backend = {"JAXLinker": "jax", "NumbaLinker": "numba"}.get(type(maker.linker).__name__, "c")
        configure(backend)
        with parallel_modules(backend):
            fn = maker.create(storage)  # C: rebuilds the modules PyTensor's compile dir lost
        fn.trust_input = trust_input
        return fn


def clear() -> int:
    """Delete rnnc's cached functions; returns how many files went."""
    folder = cache_dir() / "functions"
    count = 0
    for path in folder.glob("*.pkl") if folder.is_dir() else []:
        path.unlink(missing_ok=True)
        count += 1
    return count
