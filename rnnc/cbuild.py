"""Compile a graph's C modules in parallel: a cold C compile in less time.

PyTensor's C backend builds one module per kind of operation (an LSTM gradient needs
38) one after another: ``VMLinker.make_all`` asks each node for its thunk, and a node
whose module is not in PyTensor's compile dir runs g++ there and then, holding the
compile dir's lock. On a machine with two cores half of it sits idle.

:func:`parallel_modules` is a context manager under which every ``VMLinker`` (the
function's and those of its scans' inner functions) first finds, for the nodes it is
about to link, the modules the compile dir lacks, and builds them with as many g++
processes at once as the process may use cores, before PyTensor links the nodes one
by one as usual and finds every module already there. What it does per node is what
PyTensor does (``CLinker.cmodule_key``, ``get_src_code``, ``compile_str`` with the
linker's own flags, ``ModuleCache._add_to_cache`` under the lock); only the g++ runs
overlap. A module some other process added meanwhile is kept and ours thrown away.
Anything unexpected (another PyTensor version, an operation without C code) leaves
the node to PyTensor's own path, so the worst case is the old speed.

:func:`rnnc.compile.function` (C and "python" backends) and the loader of rnnc's
cache use it. The medium LSTM's forward+gradient on 2 cores: cold 11.5-12.1 s -> 7.6-8.1
s from the process's start (3 runs each, alternated); a warm process pays for the keys
computed twice, 0.03-0.05 s of its 1.4-1.5 s. ``RNNC_PARALLEL_COMPILE=0`` switches it
off; ``=N`` sets the number of g++ processes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from rnnc.env import switched_off

__all__ = ["MAX_WORKERS", "build_modules", "parallel_modules", "workers"]

_log = logging.getLogger(__name__)
_patch_lock = threading.Lock()
_depth = 0


#: At most this many g++ processes at once unless ``RNNC_PARALLEL_COMPILE`` says more
#: (each takes 100-200 MB; an LSTM gradient has 38 modules to build).
MAX_WORKERS = 8


def workers() -> int:
    """How many modules to compile at once: ``$RNNC_PARALLEL_COMPILE``, else the number
    of cores this process may run on, at most :data:`MAX_WORKERS`."""
    text = os.environ.get("RNNC_PARALLEL_COMPILE", "")
    if text.strip().isdigit():
        return int(text)
    if switched_off("RNNC_PARALLEL_COMPILE"):
        return 0
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return min(cores, MAX_WORKERS)


class _Job:
    """One module to build: its key and source, and the compiler and flags that the
    node's ``CLinker`` gives it (read here, in the main thread)."""

    def __init__(self, linker: Any, key: Any, src: str, module_hash: str) -> None:
        self.key, self.src, self.module_hash = key, src, module_hash
        self.name = linker.get_dynamic_module().code_hash
        self.compiler = linker.c_compiler()
        self.options = {
            "include_dirs": linker.header_dirs(),
            "lib_dirs": linker.lib_dirs(),
            "libs": linker.libraries(),
            "preargs": linker.compile_args(),
        }
        self.location = ""
        self.library = ""


def _missing(nodes: list[Any], cache: Any) -> list[_Job]:
    """The modules of ``nodes`` that the compile dir has neither by key nor by source."""
    from pytensor.graph.fg import FunctionGraph
    from pytensor.link.c.basic import CLinker
    from pytensor.link.c.cmodule import get_module_hash
    from pytensor.link.c.op import COp

    jobs: dict[str, _Job] = {}
    for node in nodes:
        if not isinstance(node.op, COp):
            continue
        try:
            linker = CLinker().accept(FunctionGraph(node.inputs, node.outputs))
            key = linker.cmodule_key()
            if key is None or not key[0] or cache._get_from_key(key) is not None:
                continue
            src = linker.get_src_code()
            module_hash = get_module_hash(src, key)
            if module_hash in cache.module_hash_to_key_data or module_hash in jobs:
                continue
            jobs[module_hash] = _Job(linker, key, src, module_hash)
        except Exception:  # no C code, no key: PyTensor's own path decides
            continue
    return list(jobs.values())


def _compile(job: _Job) -> None:
    """g++ for one module, without the lock and without importing it (a thread's job)."""
    job.compiler.compile_str(job.name, job.src, job.location, py_module=False, **job.options)
    job.library = next(
        os.path.join(job.location, f)
        for f in os.listdir(job.location)
        if f.startswith(job.name) and not f.endswith(".cpp")
    )


def _register(jobs: list[_Job], cache: Any) -> int:
    """Load built modules and add them to PyTensor's cache under its lock, as
    ``module_from_key`` does, but for all at once; a module another process added
    meanwhile is kept and ours thrown away. Returns how many were added."""
    from pytensor.compile.compilelock import lock_ctx
    from pytensor.link.c.cmodule import dlimport

    added = 0
    with lock_ctx():
        cache.refresh(cleanup=False)
        for job in jobs:
            try:
                if (
                    cache._get_from_key(job.key) is None
                    and cache._get_from_hash(job.module_hash, job.key) is None
                ):
                    module = dlimport(job.library)
                    cache.module_from_name[module.__file__] = module
                    key_data = cache._add_to_cache(module, job.key, job.module_hash)
                    cache.module_hash_to_key_data[job.module_hash] = key_data
                    added += 1
                    continue
            except Exception as exc:  # PyTensor builds it again, and reports what fails
                _log.debug("could not add a module to the cache: %s", exc)
            shutil.rmtree(job.location, ignore_errors=True)
    return added


def build_modules(nodes: list[Any], n_workers: int) -> int:
    """Build the missing C modules of ``nodes``, ``n_workers`` at a time; returns how
    many were built. Failures are left to PyTensor (which reports them as it would)."""
    from pytensor.configdefaults import config
    from pytensor.link.c.cmodule import dlimport_workdir, get_module_cache

    cache = get_module_cache(config.compiledir)
    jobs = _missing(nodes, cache)
    if len(jobs) < 2:
        return 0  # nothing to overlap: PyTensor's path is as fast
    for job in jobs:
        job.location = dlimport_workdir(cache.dirname)

    def run(job: _Job) -> _Job | None:
        try:
            _compile(job)
            return job
        except Exception as exc:
            _log.debug("parallel compile of a module failed (%s); PyTensor retries it", exc)
            shutil.rmtree(job.location, ignore_errors=True)
            return None

    try:
        with ThreadPoolExecutor(max_workers=n_workers) as pool:
            built = [job for job in pool.map(run, jobs) if job is not None]
    except BaseException:  # Ctrl-C: leave no unregistered module behind
        for job in jobs:
            shutil.rmtree(job.location, ignore_errors=True)
        raise
    return _register(built, cache)


@contextlib.contextmanager
def parallel_modules(backend: str = "c") -> Iterator[None]:
    """Within this block, linking a PyTensor function for ``backend`` compiles its
    missing C modules in parallel (see the module's docstring): for "c", and for
    "python", whose scans built for C still compile their step with C code."""
    global _depth
    n = workers()
    if n < 2 or backend not in ("c", "python"):
        yield
        return
    from pytensor.link.vm import VMLinker

    with _patch_lock:
        _depth += 1
        if _depth == 1:
            original = VMLinker.make_all

            def make_all(self: Any, *args: Any, **kwargs: Any) -> Any:
                if getattr(self, "c_thunks", True) is not False:
                    try:
                        build_modules(self.fgraph.toposort(), n)
                    except Exception as exc:  # never worse than PyTensor alone
                        _log.debug("parallel compile skipped: %s", exc)
                return original(self, *args, **kwargs)

            make_all.__wrapped__ = original  # type: ignore[attr-defined]
            VMLinker.make_all = make_all  # type: ignore[method-assign]
    try:
        yield
    finally:
        with _patch_lock:
            _depth -= 1
            if _depth == 0:
                VMLinker.make_all = VMLinker.make_all.__wrapped__  # type: ignore[attr-defined]
