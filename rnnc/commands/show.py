"""``rnnc show FILE.cell``: what rnnc made of a cell.

::

    $ rnnc show gru.cell --dims I=64,H=256

prints, for each cell of the file (or the one ``--cell`` names; a built-in cell's name
such as ``lstm`` works too): the header and docstring, the inferred shape of every
name (inputs, states, parameters with their initialisers, local values, next states,
outputs), and the IR of one step, one node per line. With ``--dims`` it also gives
each shape in numbers and counts the parameters.

::

    $ rnnc show lstm --optimized --dims I=128,H=256

shows the step after the passes (``rnnc.Recurrent``'s default ``optimize=True``, with
the defaults of ``--backend``, C unless given: JAX goes without ``widen``): the
IR split into the work done before the loop for every step at once, in the loop and
after it, then the matrix products and FLOPs per step and example in each of those
parts, beside the cell as written. ``--optimized`` needs ``--dims``: ``fuse`` writes the
numeric bounds of the slices it makes, and FLOPs are counted in numbers.
"""

from __future__ import annotations

import argparse
import math
import sys
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rnnc import ir
from rnnc.check import local_values
from rnnc.commands.check import load_cells, plural
from rnnc.compile import BACKENDS
from rnnc.errors import MissingDimensionError, UnknownDimensionError, UnknownNameError
from rnnc.ir_format import format_ir, format_signature, format_value
from rnnc.passes import SAVED_PREFIX, optimize, resolve
from rnnc.passes.stats import cost

__all__ = ["add_parser", "format_cell", "parse_dims", "run"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "show",
        help="show the inferred shapes, parameters and IR of a cell",
        description=(
            "Show what rnnc infers for each cell of FILE (a .cell file or a built-in "
            "cell): the shape of every name, the parameters, and the IR of one step."
        ),
    )
    p.add_argument("file", metavar="FILE", help="a .cell file or a built-in cell (e.g. lstm)")
    p.add_argument("--cell", metavar="NAME", help="show only this cell of the file")
    p.add_argument(
        "--dims",
        metavar="I=64,H=256",
        type=parse_dims,
        help="sizes of the dimensions: shapes in numbers and the parameter count",
    )
    p.add_argument(
        "--optimized",
        action="store_true",
        help=(
            "show the IR after the passes, with the matrix products and FLOPs per step "
            "before, in and after the loop (needs --dims)"
        ),
    )
    p.add_argument(
        "--backend",
        choices=BACKENDS,
        default="c",
        help="with --optimized: use the passes' defaults of this backend (default: c)",
    )
    return p


def parse_dims(text: str) -> dict[str, int]:
    """``"I=64,H=256"`` -> ``{"I": 64, "H": 256}``."""
    sizes: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, value = item.partition("=")
        name = name.strip()
        if not name.isidentifier() or not value.strip().isdigit() or int(value) < 1:
            raise argparse.ArgumentTypeError(
                f"{item!r} is not NAME=SIZE with a positive whole SIZE (write e.g. I=64,H=256)"
            )
        sizes[name] = int(value)
    return sizes


def _check_sizes(cells: list[ir.CellIR], sizes: Mapping[str, int]) -> None:
    known = set().union(*(c.dims() for c in cells))
    if unknown := sorted(set(sizes) - known):
        raise UnknownDimensionError(
            f"no cell shown has a dimension {', '.join(unknown)}",
            fix=f"the dimensions are: {', '.join(sorted(known)) or 'none'}",
        )
    for cell in cells:
        if missing := sorted(cell.dims() - set(sizes)):
            raise MissingDimensionError(
                f"cell `{cell.name}` needs the size of {', '.join(missing)}",
                fix="give every dimension: --dims "
                + ",".join(f"{d}={sizes.get(d, 64)}" for d in sorted(cell.dims())),
            )


def _table(rows: list[list[str]]) -> list[str]:
    """Rows of cells, indented by two, each column as wide as its widest cell; a column
    of numbers is aligned to the right."""
    columns = list(zip(*rows, strict=True))
    widths = [max(map(len, column)) for column in columns]
    numeric = [all(c.replace(",", "").isdigit() for c in column) for column in columns]
    lines = []
    for row in rows:
        cells = zip(row, widths, numeric, strict=True)
        lines.append("  " + "  ".join(c.rjust(w) if r else c.ljust(w) for c, w, r in cells))
    return [line.rstrip() for line in lines]


_REGIONS = {"before": "before the loop", "loop": "in the loop", "after": "after the loop"}


def format_cost(written: ir.CellIR, fast: ir.CellIR, sizes: Mapping[str, int]) -> list[str]:
    """The lines that compare the cost per step of the optimised cell ``fast`` with the
    cell as ``written``: matrix products and FLOPs (per example) in each region."""
    after, before = cost(fast, sizes), cost(written, sizes)
    rows = [("", "products", "FLOPs", "as written: products", "FLOPs")]
    for region, title in _REGIONS.items():
        a, b = after[region], before[region]
        rows.append(
            (title, str(a["products"]), f"{a['flops']:,}", str(b["products"]), f"{b['flops']:,}")
        )
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = [
        "  "
        + row[0].ljust(widths[0])
        + "".join(f"  {c:>{w}}" for c, w in zip(row[1:], widths[1:], strict=True))
        for row in rows
    ]
    total = sum(c["flops"] for c in after.values())
    return [
        "",
        "cost per step and example ([K] @ [K, N] counts 2*K*N FLOPs, elementwise 1 each):",
        *lines,
        f"  in all: {total:,} FLOPs per step after the passes, "
        f"{sum(c['flops'] for c in before.values()):,} as written",
    ]


def format_cell(
    cell: ir.CellIR,
    sizes: Mapping[str, int] | None = None,
    locals_: Mapping[str, ir.Node] | None = None,
    optimized: bool = False,
    backend: str = "c",
) -> str:
    """The text ``rnnc show`` prints for one cell; with ``optimized`` (which needs
    ``sizes``) the step is shown after the passes (``backend``'s defaults), with its
    cost per step."""
    locals_ = locals_ or {}
    step = cell
    if optimized:
        if sizes is None:
            raise _needs_dims([cell])
        step = optimize(cell, resolve(True, backend), sizes)

    def shape(s: ir.Shape) -> list[str]:
        cols = [ir.format_shape(s)]
        if sizes is not None:
            cols.append(ir.format_shape(ir.shape_size(s, sizes)))
        return cols

    out = [f"cell {format_signature(cell)}"]
    if cell.doc:
        out += ["  " + line if line else "" for line in cell.doc.splitlines()]
    dims = sorted(cell.dims())
    if sizes is not None:
        dims = [f"{d}={sizes[d]}" for d in dims]
    out += ["", f"dimensions: {', '.join(dims) or 'none'}"]

    sections: list[tuple[str, list[list[str]]]] = [
        ("inputs", [[n, *shape(s)] for n, s in cell.inputs.items()]),
        ("states", [[n, *shape(s.shape), _initial(n, s)] for n, s in cell.states.items()]),
    ]
    params = [
        [n, *shape(p.shape), *_count(p.shape, sizes), _init(p)] for n, p in cell.params.items()
    ]
    title = f"parameters: {len(params)}"
    if sizes is not None:
        total = sum(math.prod(ir.shape_size(p.shape, sizes)) for p in cell.params.values())
        title = f"parameters: {plural(len(params), 'tensor')}, {plural(total, 'number')}"
    sections.append((title, params))
    sections.append(("local values", [[n, *shape(node.shape)] for n, node in locals_.items()]))
    sections.append(("next states", [[f"{n}'", *shape(s.shape)] for n, s in cell.states.items()]))
    sections.append(("outputs", [[n, *shape(s)] for n, s in cell.output_shapes().items()]))
    for title, rows in sections:
        out.append(title)
        out += _table(rows) if rows else ["  (none)"]

    labels: dict[ir.Node, list[str]] = {}
    for name, node in locals_.items():
        labels.setdefault(node, []).append(name)
    title = "step, for one example (* marks values that depend on a state):"
    if optimized:
        title = "step after the passes, for one example (* marks values that depend on a state):"
    out += ["", title]
    out.append(format_ir(step, {node: ", ".join(names) for node, names in labels.items()}))
    if optimized:
        if any(name.startswith(SAVED_PREFIX) for name in step.outputs):
            out.append(
                f"({SAVED_PREFIX}* outputs: values the loop keeps for the gradient, "
                "so that the backward loop does not compute them again)"
            )
        out += format_cost(cell, step, sizes or {})
    return "\n".join(out)


def _needs_dims(cells: list[ir.CellIR]) -> MissingDimensionError:
    dims = sorted(set().union(*(c.dims() for c in cells)))
    return MissingDimensionError(
        "--optimized needs the size of every dimension: fuse writes numeric slice "
        "bounds, and FLOPs are counted in numbers",
        fix="add --dims " + (",".join(f"{d}=64" for d in dims) or "(none needed)"),
    )


def _initial(name: str, state: ir.StateSpec) -> str:
    return f"= learned ({name}0)" if state.init == "learned" else f"= {format_value(state.value)}"


def _init(param: ir.ParamSpec) -> str:
    if param.init is None:
        return "~ glorot (default)" if len(param.shape) >= 2 else "~ zeros (default)"
    args = f"({', '.join(format_value(a) for a in param.args)})" if param.args else ""
    return f"~ {param.init}{args}"


def _count(shape: ir.Shape, sizes: Mapping[str, int] | None) -> list[str]:
    return [] if sizes is None else [f"{math.prod(ir.shape_size(shape, sizes)):,}"]


def _locals(path: Path, name: str) -> dict[str, ir.Node]:
    """The local values of cell ``name`` in ``path``, to label the IR with."""
    from rnnc.lang.parser import parse_module  # Lark: imported when a file is shown

    module = parse_module(path.read_text(encoding="utf-8"), str(path))
    cell = next(c for c in module.cells if c.name == name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # reported once already, by load_cells
        return local_values(cell)


def run(args: argparse.Namespace) -> int:
    path, cells, found = load_cells(args.file)
    for warning in found:
        print(warning, file=sys.stderr)
    if args.cell is not None:
        if args.cell not in cells:
            raise UnknownNameError(
                f"{args.file} has no cell named {args.cell!r}",
                fix=f"the cells there are: {', '.join(cells)}",
            )
        cells = {args.cell: cells[args.cell]}
    if args.optimized and args.dims is None:
        if any(c.dims() for c in cells.values()):
            raise _needs_dims(list(cells.values()))
        args.dims = {}
    if args.dims is not None:
        _check_sizes(list(cells.values()), args.dims)
    texts = [
        format_cell(c, args.dims, _locals(path, name), args.optimized, args.backend)
        for name, c in cells.items()
    ]
    print("\n\n".join(texts))
    return 0
