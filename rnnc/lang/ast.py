"""The abstract syntax tree of the cell language.

Both front ends produce it: the parser from ``.cell`` text and :mod:`rnnc.dsl` from
Python. Every node carries a :class:`~rnnc.errors.Span`; spans are left out of
equality, so two trees that say the same thing compare equal wherever they came from.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rnnc.errors import CellSyntaxError, Span

NOWHERE = Span("<unknown>", 0, 0, 0, 0)


def _span() -> Span:
    return field(default=NOWHERE, compare=False, repr=False)


# ---------------------------------------------------------------- shapes
@dataclass(frozen=True)
class Dim:
    """A dimension: a sum of terms ``coeff * name`` (name None for a constant)."""

    terms: tuple[tuple[int, str | None], ...]
    span: Span = _span()

    def __str__(self) -> str:
        out = []
        for coeff, name in self.terms:
            if name is None:
                out.append(str(coeff))
            else:
                out.append(name if coeff == 1 else f"{coeff}*{name}")
        return " + ".join(out)


@dataclass(frozen=True)
class Shape:
    dims: tuple[Dim, ...]
    span: Span = _span()

    def __str__(self) -> str:
        return "[" + ", ".join(str(d) for d in self.dims) + "]"


# ---------------------------------------------------------------- expressions
@dataclass(frozen=True)
class Number:
    value: float
    span: Span = _span()


@dataclass(frozen=True)
class Name:
    """A name read in an expression: input, old state, binding or parameter."""

    id: str
    span: Span = _span()


@dataclass(frozen=True)
class Primed:
    """``h'``: the next value of state ``h``."""

    id: str
    span: Span = _span()


@dataclass(frozen=True)
class BinOp:
    """``left op right`` with op one of ``+ - * / @ ** < > <= >=``."""

    op: str
    left: Expr
    right: Expr
    span: Span = _span()


@dataclass(frozen=True)
class Neg:
    operand: Expr
    span: Span = _span()


@dataclass(frozen=True)
class Call:
    func: str
    args: tuple[Expr, ...]
    span: Span = _span()


Expr = Number | Name | Primed | BinOp | Neg | Call

#: How deeply expressions may nest (``-(-(-x))`` is 4 deep, and so is ``a + b + c + d``
#: without parentheses). Deeper expressions are rejected: every stage after the parser
#: walks expressions recursively. Intermediate values on their own lines have no limit.
MAX_DEPTH = 200


def subexpressions(e: Expr) -> tuple[Expr, ...]:
    if isinstance(e, BinOp):
        return (e.left, e.right)
    if isinstance(e, Neg):
        return (e.operand,)
    if isinstance(e, Call):
        return e.args
    return ()


def too_deep(e: Expr) -> Expr | None:
    """The outermost part of ``e`` that lies deeper than :data:`MAX_DEPTH`, if any
    (found without recursion, so any depth can be measured)."""
    stack = [(e, 1)]
    while stack:
        part, depth = stack.pop()
        if depth > MAX_DEPTH:
            return part
        stack.extend((sub, depth + 1) for sub in reversed(subexpressions(part)))
    return None


def too_deep_error(span: Span) -> CellSyntaxError:
    return CellSyntaxError(
        f"this expression is nested more than {MAX_DEPTH} levels deep",
        span,
        "give parts of it names on lines of their own (`a = ...`) and use the names",
    )


# ---------------------------------------------------------------- statements
@dataclass(frozen=True)
class Port:
    """An input or output in the cell's header: ``x: [I]``."""

    name: str
    shape: Shape
    span: Span = _span()


@dataclass(frozen=True)
class StateDecl:
    """``state h: [H] = 0``; ``init`` is a number or the string ``"learned"``."""

    name: str
    shape: Shape
    init: float | str
    span: Span = _span()


@dataclass(frozen=True)
class Initializer:
    name: str
    args: tuple[float, ...] = ()
    span: Span = _span()


@dataclass(frozen=True)
class ParamDecl:
    """``param W: [H, H] ~ orthogonal``; shape and initialiser are optional."""

    name: str
    shape: Shape | None
    init: Initializer | None
    span: Span = _span()


@dataclass(frozen=True)
class Assign:
    """``name = expr`` (a binding or an output) or ``name' = expr`` (a next state)."""

    target: str
    value: Expr
    primed: bool = False
    span: Span = _span()


Statement = StateDecl | ParamDecl | Assign


@dataclass(frozen=True)
class Cell:
    name: str
    inputs: tuple[Port, ...]
    outputs: tuple[Port, ...]
    doc: str | None
    body: tuple[Statement, ...]
    span: Span = _span()
    source: str = field(default="", compare=False, repr=False)


@dataclass(frozen=True)
class Module:
    """The cells of one file, in order."""

    cells: tuple[Cell, ...]
    filename: str = field(default="<string>", compare=False)
