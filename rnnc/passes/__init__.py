"""The optimiser: passes that rewrite a cell's IR into a faster one with the same meaning.

Each pass is a pure function ``CellIR -> CellIR`` in its own module, with a
before/after example in its docstring, and is tested by running the reference
interpreter on the cell before and after it. :func:`optimize` runs them in order:

1. :mod:`~rnnc.passes.fold`  constants and exact identities (``x + 0``, ``x * 1``)
2. :mod:`~rnnc.passes.cse`   one node per value (commutative operands in one order)
3. :mod:`~rnnc.passes.sink`  outputs computable from the new state go after the loop
4. :mod:`~rnnc.passes.hoist` state-free work goes before the loop, for all steps at once
5. :mod:`~rnnc.passes.fuse`  products sharing an operand become one product
6. :mod:`~rnnc.passes.widen` additions on the slices of a product become one addition
7. :mod:`~rnnc.passes.save`  values the backward loop needs become extra outputs

>>> cell = rnnc.load_cell("lstm")
>>> fast = optimize(cell, True, sizes={"I": 8, "H": 16})
>>> len(fast.precompute), list(fast.postcompute)
(1, ['y'])

``options`` is ``True`` (every pass, the defaults below), ``False`` (none), or a
dict that changes some of the defaults, e.g. ``{"fuse": False, "save": "all"}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rnnc import ir
from rnnc.errors import OptionError
from rnnc.passes.cse import cse
from rnnc.passes.fold import fold
from rnnc.passes.fuse import fuse
from rnnc.passes.hoist import hoist
from rnnc.passes.save import MODES, PREFIX, save
from rnnc.passes.sink import sink
from rnnc.passes.widen import widen

__all__ = ["BACKEND_DEFAULTS", "DEFAULTS", "OFF", "PASSES", "SAVED_PREFIX", "optimize", "resolve"]

#: The passes in the order they run.
PASSES = ("fold", "cse", "sink", "hoist", "fuse", "widen", "save")
#: ``optimize=True``: every pass; ``save`` keeps the nonlinearities' results.
DEFAULTS: dict[str, Any] = {
    "fold": True,
    "cse": True,
    "sink": True,
    "hoist": True,
    "fuse": True,
    "widen": True,
    "save": "auto",
}
#: Defaults that differ on one backend, by measurement (benchmarks/README.md): on JAX,
#: ``widen`` made the LSTM's forward 1.5x slower (XLA runs a scan over one [T, B, 4H]
#: sequence sliced in the step more slowly than over four [T, B, H] ones).
BACKEND_DEFAULTS: dict[str, dict[str, Any]] = {"jax": {"widen": False}}
#: ``optimize=False``: the cell as written.
OFF: dict[str, Any] = {
    "fold": False,
    "cse": False,
    "sink": False,
    "hoist": False,
    "fuse": False,
    "widen": False,
    "save": "none",
}
#: Outputs whose names start with this are internal (saved for the backward pass).
SAVED_PREFIX = PREFIX


def resolve(options: bool | Mapping[str, Any] | None, backend: str | None = None) -> dict[str, Any]:
    """The full option dict for ``optimize=options`` (True, False or a partial dict),
    with the defaults of ``backend`` (:data:`BACKEND_DEFAULTS`) for what it leaves out."""
    defaults = {**DEFAULTS, **BACKEND_DEFAULTS.get(backend or "", {})}
    if options is None or options is True:
        return defaults
    if options is False:
        return dict(OFF)
    if not isinstance(options, Mapping):
        raise OptionError(
            f"optimize must be True, False or a dict, not {type(options).__name__}",
            fix="e.g. optimize={'fuse': False}",
        )
    unknown = sorted(set(options) - set(PASSES))
    if unknown:
        raise OptionError(
            f"unknown pass {', '.join(map(repr, unknown))} in optimize=",
            fix=f"the passes are: {', '.join(PASSES)}",
        )
    out = {**defaults, **options}
    if out["save"] is True:
        out["save"] = "auto"
    elif out["save"] is False:
        out["save"] = "none"
    if out["save"] not in MODES:
        raise OptionError(
            f"optimize['save'] must be one of {', '.join(map(repr, MODES))}, not {out['save']!r}",
            fix="'auto' (default) keeps what the derivatives read; 'none' saves memory",
        )
    for name in PASSES[:-1]:
        if not isinstance(out[name], bool):
            raise OptionError(f"optimize[{name!r}] must be True or False, not {out[name]!r}")
    return out


def optimize(
    cell: ir.CellIR,
    options: bool | Mapping[str, Any] | None = True,
    sizes: Mapping[str, int] | None = None,
) -> ir.CellIR:
    """Run the passes ``options`` switch on over ``cell``.

    ``sizes`` (the layer's dimension sizes) is needed by ``fuse``, which writes the
    numeric bounds of the slices it makes, and ``widen``; without it both are skipped.
    """
    opts = resolve(options)
    if opts["fold"]:
        cell = fold(cell)
    if opts["cse"]:
        cell = cse(cell)
    if opts["sink"]:
        cell = sink(cell)
    if opts["hoist"]:
        cell = hoist(cell)
    if opts["fuse"] and sizes is not None:
        cell = fuse(cell, sizes)
    if opts["widen"] and sizes is not None:
        cell = widen(cell, sizes)
    if opts["save"] != "none":
        cell = save(cell, opts["save"])
    return cell
