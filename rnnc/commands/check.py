"""``rnnc check FILE.cell...``: check cells and say in one line what each one is.

::

    $ rnnc check gru.cell
    gru.cell: gru(x: [I]) -> (y: [H]), 1 state, 12 parameters, dims H, I

A file with a mistake prints the error with its caret and fix instead; the status is 1
when any file has an error (or, with ``--strict``, a warning). A built-in cell's name
(``rnnc check lstm``) checks the built-in.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Any

from rnnc import ir
from rnnc.compile import BUILTIN_CELLS, builtin_path, parse
from rnnc.errors import RnncError, RnncWarning, UnknownNameError
from rnnc.ir_format import format_signature

__all__ = ["add_parser", "load_cells", "plural", "resolve", "run", "summary"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "check",
        help="check .cell files and summarise each cell in one line",
        description=(
            "Parse and check each FILE: names, shapes, next states and outputs. Prints one "
            "line per cell, or the first error of a file with its place and fix."
        ),
    )
    p.add_argument("files", nargs="+", metavar="FILE", help="a .cell file or a built-in cell")
    p.add_argument("--strict", action="store_true", help="count warnings as errors (status 1)")
    return p


def resolve(target: str) -> Path:
    """The file ``target`` names: a path, or the file of a built-in cell."""
    path = Path(target)
    if path.is_file():
        return path
    if target in BUILTIN_CELLS:
        return builtin_path(target)
    raise UnknownNameError(
        f"no file and no built-in cell named {target!r}",
        fix=f"give the path of a .cell file, or one of: {', '.join(BUILTIN_CELLS)}",
    )


def load_cells(target: str) -> tuple[Path, dict[str, ir.CellIR], list[RnncWarning]]:
    """The checked cells of ``target`` (a built-in name gives only that cell), and the
    warnings the check raised. (Not cached, so that every call reports its warnings.)"""
    path = resolve(target)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RnncWarning)
        cells = parse(path.read_text(encoding="utf-8"), str(path))
    if target in BUILTIN_CELLS and not Path(target).is_file():
        cells = {target: cells[target]}
    found = [w.message for w in caught if isinstance(w.message, RnncWarning)]
    return path, cells, found


def plural(n: int, word: str) -> str:
    """``1 state``, ``2 states``, ``1,024 numbers``."""
    return f"{n:,} {word}" + ("" if n == 1 else "s")


def summary(cell: ir.CellIR) -> str:
    """``gru(x: [I]) -> (y: [H]), 1 state, 12 parameters, dims H, I``."""
    parts = [
        format_signature(cell),
        plural(len(cell.states), "state"),
        plural(len(cell.params), "parameter"),
    ]
    if dims := cell.dims():
        parts.append("dims " + ", ".join(sorted(dims)))
    return ", ".join(parts)


def run(args: argparse.Namespace) -> int:
    status = 0
    for target in args.files:
        try:
            path, cells, found = load_cells(target)
        except RnncError as exc:
            print(exc, file=sys.stderr)
            status = 1
            continue
        for warning in found:
            print(warning, file=sys.stderr)
        if found and args.strict:
            status = 1
        label = target if Path(target).is_file() else path.name
        for cell in cells.values():
            print(f"{label}: {summary(cell)}")
    return status
