"""The pipeline in one place: source -> AST -> checked IR -> optimised IR -> compiled.

``parse`` and ``load_cell`` turn what a user names (a built-in, a ``.cell`` file, text,
a Python-DSL cell) into checked IR; ``optimize`` runs the passes; ``function``
compiles PyTensor graphs with the chosen backend.
"""

from __future__ import annotations

import functools
import hashlib
import os
import pickle
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import pytensor
from pytensor.compile.mode import Mode, get_mode
from pytensor.graph.rewriting.db import RewriteDatabaseQuery

from rnnc import interpreted, ir, scanjoin, stepsums
from rnnc.cbuild import parallel_modules
from rnnc.check import check_module
from rnnc.errors import OptionError, UnknownNameError
from rnnc.files import write_atomically
from rnnc.jaxlink import JAXLinker

__all__ = ["BACKENDS", "BUILTIN_CELLS", "default_backend", "function", "load_cell", "mode", "parse"]

#: The built-in cells and the file each lives in (``rnnc/cells/*.cell``).
BUILTIN_CELLS = {"rnn": "rnn", "rnn_relu": "rnn", "lstm": "lstm", "gru": "gru"}

#: ``backend=`` values: PyTensor's C backend, Numba, JAX, and PyTensor's fast-compiling
#: Python mode (slow to run, quick to build: for small tests and debugging).
BACKENDS = ("c", "numba", "jax", "python")


def parse(text: str, filename: str | None = None) -> dict[str, ir.CellIR]:
    """Parse and check the cells of ``text``; returns ``{name: cell}`` in file order.

    Raises an :class:`~rnnc.errors.RnncError` subclass carrying ``.line`` and ``.column``.

    >>> cells = rnnc.parse("cell acc(x: [N]) -> (y: [N]):\\n    state s: [N] = 0\\n"
    ...                    "    s' = s + x\\n    y = s'\\n")
    >>> list(cells)
    ['acc']
    """
    from rnnc.lang.parser import parse_module  # Lark: imported when a text is parsed

    return check_module(parse_module(text, filename or "<string>"))


@functools.cache
def _parse_file(path: str, mtime: float) -> dict[str, ir.CellIR]:
    return _stored_parse(Path(path).read_text(encoding="utf-8"), path)


def parse_file(path: str | os.PathLike) -> dict[str, ir.CellIR]:
    """Parse and check a ``.cell`` file (cached while the file is unchanged, and in
    rnnc's cache across processes: :func:`_stored_parse`)."""
    p = Path(path)
    return _parse_file(str(p), p.stat().st_mtime)


def _stored_parse(text: str, filename: str) -> dict[str, ir.CellIR]:
    """``parse(text, filename)``, its checked cells kept in rnnc's cache (``cells/``,
    keyed by the text, the file's name and rnnc's own sources). A process that loads a
    cell file it has checked before then imports no Lark and parses nothing: 0.05-0.1 s
    of the start of every process that builds a layer (importing Lark took 0.07 s,
    parsing the LSTM 0.03), where a new process has the LSTM's gradient from rnnc's
    cache and has called it once in 0.8-0.95 s. A text that does not parse raises as
    ever and is not kept."""
    from rnnc import cache

    if not cache.enabled():
        return parse(text, filename)
    key = hashlib.sha256("\0".join((text, filename, cache.source_digest())).encode())
    path = cache.cache_dir() / "cells" / f"{key.hexdigest()[:32]}.pkl"
    try:
        cells = pickle.loads(path.read_bytes())
        if isinstance(cells, dict):
            return cells
    except Exception:  # not there yet, or broken: parse again
        pass
    cells = parse(text, filename)
    try:
        write_atomically(path, pickle.dumps(cells, protocol=pickle.HIGHEST_PROTOCOL))
    except (OSError, RecursionError, pickle.PicklingError):  # read-only, or too deep:
        pass  # parsing every time is correct, only slower
    return cells


def builtin_path(name: str) -> Path:
    return Path(str(resources.files("rnnc") / "cells" / f"{BUILTIN_CELLS[name]}.cell"))


def load_cell(cell: Any) -> ir.CellIR:
    """The checked IR of what a user passes as ``cell``.

    ``cell`` is a built-in name (``"rnn"``, ``"rnn_relu"``, ``"lstm"``, ``"gru"``), a path
    to a ``.cell`` file (``"path.cell:name"`` picks one cell of several), a
    :class:`~rnnc.ir.CellIR`, or a cell made with :func:`rnnc.cell`.
    """
    if isinstance(cell, ir.CellIR):
        return cell
    if hasattr(cell, "ir") and isinstance(cell.ir, ir.CellIR):
        return cell.ir
    if not isinstance(cell, str | os.PathLike):
        raise OptionError(
            f"cannot make a cell of {type(cell).__name__}",
            fix="pass a built-in name, a path to a .cell file, or a cell made with @rnnc.cell",
        )
    text = os.fspath(cell)
    if text in BUILTIN_CELLS:
        return parse_file(builtin_path(text))[text]
    path, _, wanted = (
        text.rpartition(":") if text.count(":") and not Path(text).exists() else (text, "", "")
    )
    if not Path(path).is_file():
        raise UnknownNameError(
            f"no built-in cell and no file named {text!r}",
            fix=f"use one of {', '.join(BUILTIN_CELLS)}, or the path of a .cell file",
        )
    cells = parse_file(path)
    if wanted:
        if wanted not in cells:
            raise UnknownNameError(
                f"{path} has no cell named {wanted!r}",
                fix=f"the cells there are: {', '.join(cells)}",
            )
        return cells[wanted]
    if len(cells) != 1:
        raise OptionError(
            f"{path} holds {len(cells)} cells ({', '.join(cells)}); which one?",
            fix=f"name it after a colon: '{path}:{next(iter(cells), 'NAME')}'",
        )
    return next(iter(cells.values()))


# ---------------------------------------------------------------- backends
def default_backend() -> str:
    """The backend used when none is given: ``$RNNC_BACKEND``, else ``"c"``.

    C is the default because it compiles 3x faster than Numba cold and runs faster
    (docs/backends.md has the figures); JAX is faster still but an optional extra.
    """
    backend = os.environ.get("RNNC_BACKEND", "c")
    check_backend(backend)
    return backend


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise OptionError(
            f"unknown backend {backend!r}",
            fix=f"use one of: {', '.join(repr(b) for b in BACKENDS)}",
        )
    if backend == "jax":
        try:
            import jax  # noqa: F401
        except ImportError:
            raise OptionError(
                "the JAX backend needs jax, which is not installed",
                fix="pip install 'rnnc[jax]'",
            ) from None
    return backend


def mode(backend: str | None = None, interpreted_ops: bool | None = None) -> Mode:
    """PyTensor's compilation mode for a backend.

    The C mode leaves out PyTensor's ``scan_pushout_add``, which turns a weight
    gradient summed inside the backward loop into one product after it, keeping the
    per-step factor for every step: measured on an LSTM (B=32 H=256, C), it made the
    gradient no faster and, without the ``hoist`` pass, took 315 instead of 193 MiB
    for 1000 steps (35 instead of 26 MiB for 100). ``rnnc.cscan.local_sums_after_loop``
    does it for the sums whose factors the loop keeps for every step anyway.

    The C and Numba modes leave out ``scan_pushout_seqs_ops``, which computes
    elementwise work on a loop's sequences (``1 - sigmoid(a)`` of the saved gate
    pre-activations, in the backward loop) for all steps before the loop: each such
    op becomes its own pass over a ``[T, B, K]`` array and a new array to keep, where
    inside the loop it is fused with the step's other elementwise work. Without it,
    forward+gradient at B=32 T=100 I=128 H=256 took 110 instead of 114 ms (LSTM, C),
    62.4 instead of 65.0 ms (the benchmark's MGU, masked, C) and 262 instead of 270 ms
    (LSTM, Numba), the forward the same, and the LSTM gradient of 1000 steps 519
    instead of 707 MiB (C). On JAX it changed nothing measurable.

    The C mode runs :mod:`rnnc.interpreted` last (unless ``RNNC_INTERPRETED=0``, or
    ``interpreted_ops=False``): the function's bookkeeping outside its loops runs in
    Python, so that fewer C modules are compiled.
    """
    backend = check_backend(backend or default_backend())
    scanjoin.register()
    stepsums.register()
    if backend == "c":
        c_mode = Mode(linker="cvm", optimizer="fast_run").excluding(
            "scan_pushout_add", "scan_pushout_seqs_ops"
        )
        if interpreted_ops is False or not interpreted.in_use():
            return c_mode
        interpreted.register()
        return c_mode.including("rnnc_interpreted")
    if backend == "python":
        return get_mode("FAST_COMPILE")
    if backend == "jax":
        return Mode(JAXLinker(), RewriteDatabaseQuery(include=["fast_run", "jax"]))
    return get_mode("NUMBA").excluding("scan_pushout_seqs_ops")


def function(
    inputs: Sequence[Any],
    outputs: Any,
    backend: str | None = None,
    updates: Any = None,
    interpreted_ops: bool | None = None,
    **kwargs: Any,
) -> pytensor.compile.function.types.Function:
    """``pytensor.function`` with the mode of ``backend`` (its caches and BLAS set up
    by :func:`rnnc.cache.configure`; see docs/backends.md). ``interpreted_ops=False``
    compiles the C function's bookkeeping too (:mod:`rnnc.interpreted`): slower to
    build, faster at every call, for a function called many times (a training step)."""
    from rnnc import cache

    backend = check_backend(backend or default_backend())
    cache.configure(backend)
    if backend == "jax":
        cache.reject_truncated_scan_on_jax(outputs)
    with parallel_modules(backend):
        return pytensor.function(
            list(inputs),
            outputs,
            updates=updates,
            mode=mode(backend, interpreted_ops),
            on_unused_input="ignore",
            **kwargs,
        )
