"""Compile a graph's C modules in parallel: a cold C compile in less time.

PyTensor's C backend builds one module per kind of operation (an LSTM gradient needs
about 40) one after another: ``VMLinker.make_all`` asks each node for its thunk, and a
node whose module is not in PyTensor's compile dir runs g++ there and then, holding the
compile dir's lock. On a machine with two cores half of it sits idle. A scan's step is
a function of its own, rewritten and linked only when PyTensor links the scan's node,
so its modules are found late: built one linker after another, they were the last
seconds of a cold compile, with one core idle.

Within :func:`parallel_modules`:

* every ``VMLinker`` (the function's, and those of its scans' steps) first finds, for
  the nodes it is about to link, the modules the compile dir lacks and hands them to a
  pool of g++ processes (as many as the process may use cores), without waiting;
* it then has its scans make their step functions, so that the steps' modules join
  the pool while the others build;
* when PyTensor links a node and asks its module cache for the module
  (``ModuleCache.module_from_key``), the pool's module is added to that cache first:
  waited for if g++ is running, built at once in the asking thread if the pool has not
  started it (so one g++ more than the pool's may run).

What is done per node is what PyTensor does (``CLinker.cmodule_key``, ``get_src_code``,
``compile_str`` with the linker's own flags, ``ModuleCache._add_to_cache`` under its
lock); only the g++ runs overlap. A module some other process added meanwhile is kept
and ours thrown away. Anything unexpected (another PyTensor version, an operation
without C code, a failed g++) leaves the node to PyTensor's own path, which reports
errors as it always does; the worst case is the old speed.

:func:`rnnc.compile.function` (C and "python" backends) and the loader of rnnc's cache
use it. ``RNNC_PARALLEL_COMPILE=0`` switches it off; ``=N`` sets the number of g++
processes. Figures (medium LSTM forward+gradient, 2 cores, cold, from the process's
start, runs alternated): PyTensor alone 11.5-12.1 s, one batch per linker 7.6-8.1 s on
the machine of 2026-11-29; on the slower one of 2026-12-04 one batch per linker
12.7-15.1 s, this pool (with ``rnnc.pch`` making its header in the background)
11.4-12.5 s (six pairs, each faster by 1.1-3.2 s).
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

__all__ = ["MAX_WORKERS", "parallel_modules", "workers"]

_log = logging.getLogger(__name__)
_patch_lock = threading.Lock()
_depth = 0
_pool: _Pool | None = None


#: At most this many g++ processes at once unless ``RNNC_PARALLEL_COMPILE`` says more
#: (each takes 100-200 MB; an LSTM gradient has about 40 modules to build).
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
    """One module to build: the keys PyTensor will ask for it by, its source, and the
    compiler and flags that the node's ``CLinker`` gives it (read in the linking
    thread)."""

    def __init__(self, linker: Any, key: Any, src: str, module_hash: str) -> None:
        self.keys, self.src, self.module_hash = [key], src, module_hash
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
        self.claim = threading.Lock()  # taken, never released, by the thread that builds
        self.finished = threading.Event()
        self.built = False  # g++ succeeded
        self.done = False  # added to PyTensor's cache, or thrown away


def _cache() -> Any:
    from pytensor.configdefaults import config
    from pytensor.link.c.cmodule import get_module_cache

    return get_module_cache(config.compiledir)


def _missing(nodes: list[Any], cache: Any, pending: dict[str, _Job]) -> list[_Job]:
    """The modules of ``nodes`` that the compile dir has neither by key nor by source
    and that are not ``pending`` (by module hash; a new key for one of those is added
    to its job)."""
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
            if module_hash in cache.module_hash_to_key_data:
                continue
            known = jobs.get(module_hash) or pending.get(module_hash)
            if known is not None:
                if key not in known.keys:
                    known.keys.append(key)
                continue
            jobs[module_hash] = _Job(linker, key, src, module_hash)
        except Exception:  # no C code, no key: PyTensor's own path decides
            continue
    return list(jobs.values())


def _compile(job: _Job) -> None:
    """g++ for one module, without the lock and without importing it."""
    job.compiler.compile_str(job.name, job.src, job.location, py_module=False, **job.options)
    job.library = next(
        os.path.join(job.location, f)
        for f in os.listdir(job.location)
        if f.startswith(job.name) and not f.endswith(".cpp")
    )


def _build(job: _Job) -> None:
    """Build one module, unless another thread has started it (a pool thread's task,
    and what a thread that needs the module does); a failure is left to PyTensor, which
    builds the module again and reports what fails."""
    from rnnc import pch

    if not job.claim.acquire(blocking=False):
        return
    try:
        pch.ready()
        _compile(job)
        job.built = True
    except Exception as exc:
        _log.debug("parallel compile of a module failed (%s); PyTensor retries it", exc)
    finally:
        job.finished.set()


class _Pool:
    """The modules being built during one :func:`parallel_modules` block."""

    def __init__(self, n_workers: int) -> None:
        self.executor = ThreadPoolExecutor(n_workers, thread_name_prefix="rnnc-g++")
        self.jobs: dict[str, _Job] = {}  # by module hash
        self.by_key: dict[Any, _Job] = {}
        self.steps: list[Any] = []  # scans whose step function is yet to be made
        self.lock = threading.RLock()

    def submit(self, nodes: list[Any]) -> int:
        """Start building the missing modules of ``nodes``; returns how many."""
        from pytensor.link.c.cmodule import dlimport_workdir

        cache = _cache()
        with self.lock:
            jobs = _missing(nodes, cache, self.jobs)
            for job in jobs:
                job.location = dlimport_workdir(cache.dirname)
                self.executor.submit(_build, job)
                self.jobs[job.module_hash] = job
            for job in self.jobs.values():
                if not job.done:
                    self.by_key.update(dict.fromkeys(job.keys, job))
        return len(jobs)

    def make_steps(self, nodes: list[Any]) -> None:
        """Have the scans among ``nodes``, and those met before, make their step
        functions now, which PyTensor would do when it links them (the function is
        kept on the scan): each step's linker hands its modules to the pool before it
        waits for any, so the modules of every step are built while the others are."""
        from pytensor.scan.op import Scan

        self.steps.extend(node.op for node in nodes if isinstance(node.op, Scan))
        while self.steps:
            scan = self.steps.pop(0)
            try:
                scan.fn  # noqa: B018 (a property that compiles the step and keeps it)
            except Exception as exc:  # PyTensor meets it again, and reports it
                _log.debug("a scan's step did not compile early: %s", exc)

    def provide(self, key: Any) -> None:
        """If the pool builds the module of ``key``, put it in PyTensor's cache now."""
        with self.lock:
            job = self.by_key.get(key)
        if job is not None:
            self._finish([job])

    def close(self) -> None:
        """Finish every module (those nobody asked for too)."""
        try:
            self._finish(list(self.jobs.values()))
        finally:
            self.executor.shutdown(wait=True)

    def abort(self) -> None:
        """Stop (Ctrl-C, an error): wait for the g++ processes that run, and remove
        the folder of every module not added to PyTensor's cache."""
        for job in self.jobs.values():
            job.claim.acquire(blocking=False)  # a pool thread that comes to it skips it
        self.executor.shutdown(wait=True)
        for job in self.jobs.values():
            if not job.done:
                shutil.rmtree(job.location, ignore_errors=True)

    def _finish(self, jobs: list[_Job]) -> None:
        """Build those of ``jobs`` no thread has started, wait for the others, and add
        every module built by now to PyTensor's cache."""
        for job in jobs:
            _build(job)
        for job in jobs:
            job.finished.wait()
        with self.lock:
            ready = [j for j in self.jobs.values() if j.finished.is_set() and not j.done]
            _register(ready, _cache())
            for job in ready:
                job.done = True
                for key in job.keys:
                    self.by_key.pop(key, None)


def _register(jobs: list[_Job], cache: Any) -> None:
    """Load built modules and add them to PyTensor's cache under its lock, as
    ``module_from_key`` does; a module another process added meanwhile is kept and
    ours thrown away, as is a module that failed to build."""
    from pytensor.compile.compilelock import lock_ctx
    from pytensor.link.c.cmodule import dlimport

    if not jobs:
        return
    with lock_ctx():
        cache.refresh(cleanup=False)
        for job in jobs:
            try:
                if (
                    job.built
                    and all(cache._get_from_key(key) is None for key in job.keys)
                    and cache._get_from_hash(job.module_hash, job.keys[0]) is None
                ):
                    module = dlimport(job.library)
                    cache.module_from_name[module.__file__] = module
                    key_data = cache._add_to_cache(module, job.keys[0], job.module_hash)
                    cache.module_hash_to_key_data[job.module_hash] = key_data
                    continue
            except Exception as exc:  # PyTensor builds it again, and reports what fails
                _log.debug("could not add a module to the cache: %s", exc)
            job.built = False
            shutil.rmtree(job.location, ignore_errors=True)


@contextlib.contextmanager
def parallel_modules(backend: str = "c") -> Iterator[None]:
    """Within this block, linking a PyTensor function for ``backend`` compiles its
    missing C modules in parallel (see the module's docstring): for "c", and for
    "python", whose scans built for C still compile their step with C code."""
    global _depth, _pool
    n = workers()
    if n < 2 or backend not in ("c", "python"):
        yield
        return
    from pytensor.link.c.cmodule import ModuleCache
    from pytensor.link.vm import VMLinker

    with _patch_lock:
        _depth += 1
        if _depth == 1:
            _pool = pool = _Pool(n)
            make_all_original = VMLinker.make_all
            from_key_original = ModuleCache.module_from_key

            def make_all(self: Any, *args: Any, **kwargs: Any) -> Any:
                if getattr(self, "c_thunks", True) is not False:
                    try:
                        nodes = self.fgraph.toposort()
                        pool.submit(nodes)
                        pool.make_steps(nodes)
                    except Exception as exc:  # never worse than PyTensor alone
                        _log.debug("parallel compile skipped: %s", exc)
                return make_all_original(self, *args, **kwargs)

            def module_from_key(self: Any, key: Any, lnk: Any) -> Any:
                try:
                    pool.provide(key)
                except Exception as exc:
                    _log.debug("a module of the pool was not added: %s", exc)
                return from_key_original(self, key, lnk)

            make_all.__wrapped__ = make_all_original  # type: ignore[attr-defined]
            module_from_key.__wrapped__ = from_key_original  # type: ignore[attr-defined]
            VMLinker.make_all = make_all  # type: ignore[method-assign]
            ModuleCache.module_from_key = module_from_key  # type: ignore[method-assign]
    failed = False
    try:
        yield
    except BaseException:
        failed = True
        raise
    finally:
        finished = None
        with _patch_lock:
            _depth -= 1
            if _depth == 0:
                VMLinker.make_all = VMLinker.make_all.__wrapped__  # type: ignore[attr-defined]
                ModuleCache.module_from_key = ModuleCache.module_from_key.__wrapped__  # type: ignore[attr-defined]
                finished, _pool = _pool, None
        if finished is not None:  # its g++ processes are waited for outside the lock
            finished.abort() if failed else finished.close()
