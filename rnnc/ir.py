"""The typed intermediate representation of one step of a cell.

A :class:`CellIR` is a small expression DAG for ONE example at ONE time step. Leaves
are inputs ``x_t``, previous states ``h_{t-1}``, parameters and constants; the roots
are the next states ``h_t`` and the outputs ``y_t``. Batch and time are added only by
the lowering. Shapes are tuples of dimensions: a dimension is an ``int`` or a string
``"H"``, ``"4*H"``, ``"H + I"`` whose size :func:`dim_size` computes from the sizes a
layer is given.

Nodes are immutable and compare by structure, so equal subexpressions are equal
nodes (common-subexpression elimination is a dictionary) and two front ends that say
the same thing build equal IR. The passes in :mod:`rnnc.passes` rewrite a
:class:`CellIR` into another one; :mod:`rnnc.reference` gives it a meaning in NumPy.

This module imports nothing of rnnc.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

__all__ = [
    "BINARY",
    "LEAVES",
    "UNARY",
    "CellIR",
    "Dim",
    "Node",
    "ParamSpec",
    "StateSpec",
    "dim_size",
    "format_shape",
    "shape_size",
]

Dim = int | str
Shape = tuple[Dim, ...]

#: Leaf operations; ``Node.value`` holds the name (or the number, for ``const``).
#: ``seq`` is a per-example value precomputed for every step before the loop (the
#: hoist pass makes them); ``new`` reads the next value of a state (the sink pass
#: makes them in outputs computed after the loop).
LEAVES = ("input", "state", "param", "const", "seq", "new")
#: Elementwise functions of one argument.
UNARY = ("neg", "sigmoid", "tanh", "relu", "exp", "log", "sqrt", "abs", "softplus")
#: Elementwise functions of two arguments (numpy broadcasting on the example shape).
BINARY = ("add", "sub", "mul", "div", "pow", "maximum", "minimum", "lt", "gt", "le", "ge")
#: Other operations: ``matmul`` (vector or matrix products), ``where(c, a, b)``,
#: ``concat`` (last axis), ``layer_norm`` (last axis, no parameters), ``slice``
#: (``value = (start, stop)`` on the last axis, made by the fuse pass).
OTHER = ("matmul", "where", "concat", "layer_norm", "slice")


@dataclass(frozen=True, eq=False)
class Node:
    """One value of the step: ``op`` applied to ``args``; ``shape`` per example.

    ``value`` is the name of a leaf, the number of a ``const`` or the bounds of a
    ``slice``. ``batched`` is True when the value differs between examples (it depends
    on an input or a state); ``stateful`` when it depends on a previous state, i.e.
    must be computed inside the loop.
    """

    op: str
    args: tuple[Node, ...] = ()
    shape: Shape = ()
    value: Any = None
    _hash: int = field(default=0, init=False, repr=False)
    batched: bool = field(default=False, init=False, repr=False)
    stateful: bool = field(default=False, init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_hash", hash((self.op, self.args, self.shape, self.value)))
        if self.op in ("input", "seq", "new"):
            batched, stateful = True, self.op == "new"
        elif self.op == "state":
            batched, stateful = True, True
        else:
            batched = any(a.batched for a in self.args)
            stateful = any(a.stateful for a in self.args)
        object.__setattr__(self, "batched", batched)
        object.__setattr__(self, "stateful", stateful)

    def __hash__(self) -> int:
        return self._hash

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled as its constructor's arguments, so that the hash (of strings, which
        Python salts per process) and the flags are computed where it is loaded."""
        return (Node, (self.op, self.args, self.shape, self.value))

    def __eq__(self, other: object) -> bool:
        """Structural equality, each pair of shared subgraphs compared once (a
        recursive comparison would take exponential time on DAGs built apart)."""
        if not isinstance(other, Node):
            return False
        seen: set[tuple[int, int]] = set()
        stack = [(self, other)]
        while stack:
            a, b = stack.pop()
            if a is b or (id(a), id(b)) in seen:
                continue
            if (
                a._hash != b._hash
                or (a.op, a.shape, a.value) != (b.op, b.shape, b.value)
                or len(a.args) != len(b.args)
            ):
                return False
            seen.add((id(a), id(b)))
            stack.extend(zip(a.args, b.args, strict=True))
        return True

    def __repr__(self) -> str:
        if self.op in LEAVES:
            return f"{self.op}:{self.value}"
        return f"{self.op}({', '.join(map(repr, self.args))})"


@dataclass(frozen=True)
class StateSpec:
    """A state: its example shape and initial value (``init`` is ``"constant"``,
    with the number in ``value``, or ``"learned"``: a parameter named ``<state>0``)."""

    shape: Shape
    init: str = "constant"
    value: float = 0.0


@dataclass(frozen=True)
class ParamSpec:
    """A parameter: its shape and initialiser (a name from :mod:`rnnc.init` and
    its numeric arguments)."""

    shape: Shape
    init: str | None = None
    args: tuple[float, ...] = ()


@dataclass(frozen=True)
class CellIR:
    """One step of a cell: next states and outputs as DAGs over the leaves.

    ``inputs`` and ``states`` map names to example shapes; ``params`` to their specs.
    ``precompute`` holds values computed for every step before the loop (name ->
    node over inputs and parameters, read in the step as ``seq`` leaves);
    ``postcompute`` outputs computed after the loop (over inputs, ``seq`` and ``new``
    leaves). Both are empty until the passes fill them.
    """

    name: str
    inputs: Mapping[str, Shape]
    states: Mapping[str, StateSpec]
    params: Mapping[str, ParamSpec]
    next_state: Mapping[str, Node]
    outputs: Mapping[str, Node]
    doc: str = ""
    source: str = field(default="", compare=False)
    filename: str = field(default="<string>", compare=False)
    precompute: Mapping[str, Node] = field(default_factory=dict)
    postcompute: Mapping[str, Node] = field(default_factory=dict)

    def roots(self) -> Iterator[Node]:
        """Every value the step computes (next states, then in-loop outputs)."""
        yield from self.next_state.values()
        yield from self.outputs.values()

    def dims(self) -> set[str]:
        """The names of the symbolic dimensions the cell uses."""
        names: set[str] = set()
        shapes = [*self.inputs.values(), *(s.shape for s in self.states.values())]
        shapes += [p.shape for p in self.params.values()]
        for shape in shapes:
            for dim in shape:
                names |= set(_dim_terms(dim))
        names.discard("")
        return names

    def output_shapes(self) -> dict[str, Shape]:
        both = {**self.outputs, **self.postcompute}
        return {name: node.shape for name, node in both.items()}

    def replace(self, **changes: Any) -> CellIR:
        return replace(self, **changes)

    def transform(self, fn: Callable[[Node], Node]) -> CellIR:
        """Apply ``fn`` to every root (next states, outputs, pre- and post-computed)."""
        return self.replace(
            next_state={k: fn(v) for k, v in self.next_state.items()},
            outputs={k: fn(v) for k, v in self.outputs.items()},
            precompute={k: fn(v) for k, v in self.precompute.items()},
            postcompute={k: fn(v) for k, v in self.postcompute.items()},
        )


def _dim_terms(dim: Dim) -> dict[str, int]:
    """``"4*H + I + 2"`` -> ``{"H": 4, "I": 1, "": 2}``."""
    if isinstance(dim, int):
        return {"": dim}
    terms: dict[str, int] = {}
    for term in dim.replace(" ", "").split("+"):
        coeff, _, name = term.rpartition("*")
        if name.isdigit():
            terms[""] = terms.get("", 0) + int(name)
        else:
            terms[name] = terms.get(name, 0) + int(coeff or 1)
    return terms


def dim_size(dim: Dim, sizes: Mapping[str, int]) -> int:
    """The size of a dimension given the size of each name."""
    return sum(coeff * (sizes[name] if name else 1) for name, coeff in _dim_terms(dim).items())


def shape_size(shape: Shape, sizes: Mapping[str, int]) -> tuple[int, ...]:
    return tuple(dim_size(d, sizes) for d in shape)


def format_shape(shape: Shape) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def walk(roots: Iterator[Node] | list[Node]) -> list[Node]:
    """Every node reachable from ``roots``, each once, arguments before users."""
    order: list[Node] = []
    seen: set[int] = set()
    stack: list[tuple[Node, bool]] = [(r, False) for r in reversed(list(roots))]
    while stack:
        node, expanded = stack.pop()
        if id(node) in seen:
            continue
        if expanded:
            seen.add(id(node))
            order.append(node)
            continue
        stack.append((node, True))
        stack.extend((a, False) for a in reversed(node.args) if id(a) not in seen)
    return order


def rebuild(root: Node, fn: Callable[[Node, tuple[Node, ...]], Node], memo: dict) -> Node:
    """Rebuild ``root`` bottom-up: ``fn(node, new_args)`` returns the new node."""
    for node in walk([root]):
        if node in memo:
            continue
        memo[node] = fn(node, tuple(memo[a] for a in node.args))
    return memo[root]


def consecutive_slices(slices: Iterable[Node]) -> list[Node] | None:
    """``slices`` (``slice`` nodes of one value) in order, when there are two or more
    and they cut the value into consecutive pieces from 0 (each starts where the one
    before stops); else None. Whether they reach the value's end is the caller's
    question: the size may be symbolic."""
    pieces = sorted(set(slices), key=lambda s: tuple(s.value))
    if len(pieces) < 2 or pieces[0].value[0] != 0:
        return None
    if any(a.value[1] != b.value[0] for a, b in itertools.pairwise(pieces)):
        return None
    return pieces
