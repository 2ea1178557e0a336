"""The Python front end: a cell written as a Python function over symbolic values.

The function runs once, when it is decorated. Its arguments are symbolic values (one
per input and per state, named as in the header) and a parameter namespace ``p``. The
operators ``+ - * / ** @``, unary ``-``, the comparisons ``< > <= >=`` and rnnc's
functions record what the function computes; from that record rnnc builds the same AST
(:mod:`rnnc.lang.ast`) that the parser builds from ``.cell`` text and runs the same
checker, so both front ends give the same IR. The Elman network

.. math::  h_t = \\tanh(x_t W + h_{t-1} U + b), \\qquad y_t = h_t

in both forms::

    cell rnn(x: [I]) -> (y: [H]):           @rnnc.cell(inputs={"x": "I"}, state={"h": "H"},
        state h: [H] = 0                               outputs={"y": "H"})
        h' = tanh(x @ W + h @ U + b)        def rnn(x, h, p):
        y = h'                                  h_next = rnnc.tanh(x @ p.W + h @ p.U + p.b)
                                                return {"h": h_next}, {"y": h_next}

How Python maps to the language:

- ``return {"h": ...}, {"y": ...}`` gives the next value of every state and every output.
- A value returned as the next value of ``h`` is ``h'`` wherever else it is read (in an
  output or in another state's next value); the argument ``h`` is the old value.
- ``p.W`` (or ``p["W"]``) is the parameter ``W``; its shape is inferred from its uses.
  ``p.declare("W", ("H", "H"), init="orthogonal")`` declares shape and initialiser.
- Local variables of the function become bindings of the same name (``r = ...``).
- Python runs as usual while the cell is traced: loops unroll, helper functions inline.
  A symbolic value has no truth value, though: ``if h > 0:`` is an error (choose
  elementwise with :func:`where`).

Every AST node carries the span of the user's Python expression (file, line, column), so
the checker's errors show the user's line with a caret under the expression.

>>> @rnnc.cell(inputs={"x": "I"}, state={"h": "H"}, outputs={"y": "H"})
... def rnn(x, h, p):
...     \"\"\"Elman network.\"\"\"
...     h_next = rnnc.tanh(x @ p.W + h @ p.U + p.b)
...     return {"h": h_next}, {"y": h_next}
>>> print(rnn.text, end="")
cell rnn(x: [I]) -> (y: [H]):
    \"\"\"Elman network.\"\"\"
    state h: [H] = 0
    param W
    param U
    param b
    h' = tanh(x @ W + h @ U + b)
    y = h'
>>> rnn.ir.params["U"].shape
('H', 'H')
"""

from __future__ import annotations

import ast as pyast
import functools
import inspect
import linecache
import math
import numbers
import os
import re
import sys
import warnings
from collections.abc import Callable, Mapping
from types import CodeType, FrameType
from typing import Any, TypeAlias

from rnnc import ir
from rnnc.check import FUNCTIONS, check_cell
from rnnc.errors import (
    DslError,
    DuplicateDefinitionError,
    MissingNextStateError,
    MissingOutputError,
    OptionError,
    Span,
    UnknownNameError,
)
from rnnc.lang import ast
from rnnc.lang.pretty import format_cell

__all__ = [
    "Cell",
    "Params",
    "Value",
    "abs",
    "cell",
    "concat",
    "exp",
    "layer_norm",
    "log",
    "maximum",
    "minimum",
    "relu",
    "sigmoid",
    "softplus",
    "sqrt",
    "tanh",
    "where",
]

#: A dimension: ``"H"``, ``"4*H"``, ``"H + I"`` or a whole number.
DimLike: TypeAlias = str | int
#: A shape: one dimension, a tuple of them, ``()`` for a scalar, or text ``"[H, H]"``.
ShapeLike: TypeAlias = DimLike | tuple[DimLike, ...] | list[DimLike]
#: A state: its shape (initial value 0), or ``(shape, init)`` with ``init`` a float
#: or ``"learned"``: ``("H", 1.0)``, ``(("H", "H"), "learned")``.
StateLike: TypeAlias = ShapeLike | tuple[Any, ...]
#: What an operator or function accepts: a symbolic value or a Python number.
Operand: TypeAlias = "Value | float | int"

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_TERM = re.compile(
    r"\s*(?:(\d+)\s*\*\s*([A-Za-z_][A-Za-z0-9_]*)|(\d+)|([A-Za-z_][A-Za-z0-9_]*))\s*\Z"
)
_OPERATORS = "+ - * / ** @ (and unary -), comparisons < > <= >="
#: How deeply unnamed operations nest in one expression before one gets a name.
_INLINE_DEPTH = 32

# ---------------------------------------------------------------- source positions
# A position is what ``code.co_positions()`` yields and what Python's ``ast`` nodes
# carry: (line, end_line, column, end_column), columns 0-based UTF-8 byte offsets.
Position: TypeAlias = tuple[int, int, int, int]

_THIS_FILE = os.path.abspath(__file__)
_PACKAGE_DIR = os.path.dirname(_THIS_FILE) + os.sep


@functools.lru_cache(maxsize=256)
def _is_internal(filename: str) -> bool:
    """True for rnnc's own source files, whose frames spans skip."""
    return os.path.abspath(filename).startswith(_PACKAGE_DIR)


@functools.lru_cache(maxsize=512)
def _positions(code: CodeType) -> tuple[tuple[int | None, ...], ...]:
    return tuple(code.co_positions())


def _frame_position(frame: FrameType) -> Position | None:
    positions = _positions(frame.f_code)
    index = frame.f_lasti // 2
    pos = positions[index] if 0 <= index < len(positions) else None
    if pos is None or None in pos:
        return None
    return pos  # type: ignore[return-value]


def _column(filename: str, line: int, byte_col: int, module_globals: Any) -> int:
    """The 1-based character column of a 0-based byte offset in a line of source."""
    text = linecache.getline(filename, line, module_globals)
    if not text:
        return byte_col + 1
    return len(text.encode("utf-8")[:byte_col].decode("utf-8", "replace")) + 1


class _Source:
    """Python's own syntax tree of one file, indexed by position (built once per file)."""

    _cache: dict[str, _Source] = {}

    def __init__(self, lines: list[str]):
        self.lines = lines
        self.nodes: dict[Position, list[pyast.AST]] = {}
        self.functions: list[pyast.FunctionDef | pyast.AsyncFunctionDef] = []
        try:
            tree = pyast.parse("".join(lines))
        except (SyntaxError, ValueError):
            return
        for node in pyast.walk(tree):
            if getattr(node, "end_col_offset", None) is not None:
                key = (node.lineno, node.end_lineno, node.col_offset, node.end_col_offset)  # type: ignore[attr-defined]
                self.nodes.setdefault(key, []).append(node)
            if isinstance(node, pyast.FunctionDef | pyast.AsyncFunctionDef):
                self.functions.append(node)

    @classmethod
    def of(cls, filename: str, module_globals: Any) -> _Source | None:
        lines = linecache.getlines(filename, module_globals)
        if not lines:
            return None
        source = cls._cache.get(filename)
        if source is None or source.lines is not lines:
            source = cls._cache[filename] = cls(lines)
        return source


class _Site:
    """A place in the user's Python source: a file and a position in it."""

    __slots__ = ("filename", "globals", "pos", "span")

    def __init__(self, filename: str, pos: Position | None, module_globals: Any, line: int = 0):
        self.filename = filename
        self.pos = pos
        self.globals = module_globals
        self.span = (
            self.span_at(pos)
            if pos is not None
            else Span(filename, line, 1, line, len(linecache.getline(filename, line)) or 1)
        )

    def span_at(self, pos: Position) -> Span:
        line, end_line, col, end_col = pos
        return Span(
            self.filename,
            line,
            _column(self.filename, line, col, self.globals),
            end_line,
            _column(self.filename, end_line, end_col, self.globals),
        )

    def span_of(self, node: pyast.AST) -> Span:
        return self.span_at(_node_position(node))

    def source(self) -> _Source | None:
        return _Source.of(self.filename, self.globals)

    def nodes(self) -> list[pyast.AST]:
        """Python's expression (or statement) nodes exactly at this site."""
        source = self.source()
        if source is None or self.pos is None:
            return []
        return source.nodes.get(self.pos, [])


def _node_position(node: pyast.AST) -> Position:
    return (node.lineno, node.end_lineno, node.col_offset, node.end_col_offset)  # type: ignore[attr-defined,return-value]


def _site(trace: _Trace | None = None) -> _Site:
    """Where the user's code is now: the innermost frame outside rnnc.

    On the way out it remembers the frame of the function being traced (its local
    variables name the bindings, its last instruction is the ``return``).
    """
    frame: FrameType | None = sys._getframe(1)
    user: FrameType | None = None
    fallback: FrameType | None = None
    while frame is not None:
        code = frame.f_code
        if trace is not None and code is trace.code:
            if trace.frame is None:
                trace.frame = frame
            user = user or frame
            break
        if fallback is None and code.co_filename != _THIS_FILE:
            fallback = frame
        if user is None and not _is_internal(code.co_filename):
            user = frame
            if trace is None or trace.frame is not None:
                break
        frame = frame.f_back
    chosen = user or fallback or sys._getframe(1)
    return _Site(
        chosen.f_code.co_filename, _frame_position(chosen), chosen.f_globals, chosen.f_lineno
    )


# ---------------------------------------------------------------- errors
def _misuse(message: str, span: Span | None, fix: str) -> DslError:
    """Python that the cell language cannot express."""
    return DslError(message, span, fix)


def _text(span: Span) -> str:
    """The user's source text under a one-line span (for messages)."""
    line = span.source_line()
    if span.end_line == span.line and line and span.end_column > span.column:
        return line[span.column - 1 : span.end_column - 1]
    return "value"


# ---------------------------------------------------------------- tracing
class _Header:
    """The decorator's arguments, checked: ports, states and the spans naming them."""

    def __init__(
        self,
        site: _Site,
        inputs: Mapping[str, ShapeLike],
        state: Mapping[str, StateLike],
        outputs: Mapping[str, ShapeLike],
        name: str | None,
    ):
        self.site = site
        self.name = name
        call = next((n for n in site.nodes() if isinstance(n, pyast.Call)), None)
        self.spans: dict[tuple[str, str], Span] = {}
        for arg, given in (("inputs", inputs), ("state", state), ("outputs", outputs)):
            if not isinstance(given, Mapping) or not all(isinstance(k, str) for k in given):
                raise OptionError(
                    f"`{arg}=` must be a dict from names to shapes, not {type(given).__name__}",
                    site.span,
                    f'write e.g. {arg}={{"{"x" if arg == "inputs" else "h"}": "H"}}',
                )
            entries = _dict_entries(site, call, arg) if call is not None else {}
            for key in given:
                span = entries.get(key, site.span)
                if not _NAME.match(key):
                    raise OptionError(
                        f"{key!r} is not a valid name in `{arg}=`",
                        span,
                        "use letters, digits and underscores (ASCII), starting with a letter",
                    )
                self.spans[arg, key] = span
        self.inputs = {k: _shape(v, self.spans["inputs", k]) for k, v in inputs.items()}
        self.outputs = {k: _shape(v, self.spans["outputs", k]) for k, v in outputs.items()}
        self.states = {k: _state(v, self.spans["state", k]) for k, v in state.items()}

    def port(self, kind: str, name: str) -> Span:
        return self.spans[kind, name]


def _dict_entries(site: _Site, call: pyast.Call, keyword: str) -> dict[str, Span]:
    """The spans of the entries ``"name": value`` of ``keyword={...}`` in a call."""
    out: dict[str, Span] = {}
    for kw in call.keywords:
        if kw.arg == keyword and isinstance(kw.value, pyast.Dict):
            out |= _entry_spans(site, kw.value)
    return out


def _entry_spans(site: _Site, node: pyast.Dict) -> dict[str, Span]:
    """``{"name": value}`` -> the span from the key to the end of the value."""
    out: dict[str, Span] = {}
    for key, value in zip(node.keys, node.values, strict=True):
        if isinstance(key, pyast.Constant) and isinstance(key.value, str):
            start, stop = _node_position(key), _node_position(value)
            out[key.value] = site.span_at((start[0], stop[1], start[2], stop[3]))
    return out


class _Trace:
    """The record of one run of a cell function."""

    def __init__(self, header: _Header, fn: Callable[..., Any], name: str):
        self.header = header
        self.name = name
        self.code: CodeType | None = getattr(fn, "__code__", None)
        self.frame: FrameType | None = None
        self.count = 0
        self.done = False
        self.params: dict[str, Span] = {}  # name -> first use
        self.decls: list[ast.ParamDecl] = []

    def reserved(self) -> set[str]:
        """Names that are not free for bindings."""
        h = self.header
        learned = {f"{s}0" for s, (_, init) in h.states.items() if init == "learned"}
        return {*h.inputs, *h.states, *h.outputs, *self.params, *FUNCTIONS, *learned}


_ACTIVE: list[_Trace] = []


class Value:
    """A symbolic value of one example at one step, recorded while a cell is traced.

    Values combine with ``+ - * / ** @``, unary ``-``, ``abs()``, ``< > <= >=`` (1.0
    where true, 0.0 where false) and Python numbers on either side, and go into rnnc's
    functions (:func:`sigmoid`, :func:`where`, ...). They have no truth value, no
    length, no elements and no number: Python decides nothing from them.
    """

    __slots__ = ("_args", "_index", "_kind", "_op", "_span", "_trace", "_uses")

    def __init__(
        self,
        trace: _Trace,
        kind: str,
        op: str,
        span: Span,
        args: tuple[Value | float, ...] = (),
        uses: tuple[Span, ...] = (),
    ):
        self._trace = trace
        self._kind = kind  # input | state | param | binop | neg | call
        self._op = op  # the name of a leaf, the operator, or the function
        self._span = span
        self._args = args
        self._uses = uses  # the span of each argument where this value reads it
        self._index = trace.count
        trace.count += 1

    @property
    def _leaf(self) -> bool:
        return self._kind in ("input", "state", "param")

    def __repr__(self) -> str:
        what = self._op if self._leaf else _text(self._span)
        return f"<rnnc.Value {what} at {self._span}>"

    # arithmetic
    def __add__(self, other: Operand) -> Value:
        return _apply("binop", "+", (self, other))

    def __radd__(self, other: Operand) -> Value:
        return _apply("binop", "+", (other, self))

    def __sub__(self, other: Operand) -> Value:
        return _apply("binop", "-", (self, other))

    def __rsub__(self, other: Operand) -> Value:
        return _apply("binop", "-", (other, self))

    def __mul__(self, other: Operand) -> Value:
        return _apply("binop", "*", (self, other))

    def __rmul__(self, other: Operand) -> Value:
        return _apply("binop", "*", (other, self))

    def __truediv__(self, other: Operand) -> Value:
        return _apply("binop", "/", (self, other))

    def __rtruediv__(self, other: Operand) -> Value:
        return _apply("binop", "/", (other, self))

    def __pow__(self, other: Operand, modulo: None = None) -> Value:
        if modulo is not None:
            raise _misuse(
                "pow() with a modulus is not in the cell language", _site().span, "use x ** y"
            )
        return _apply("binop", "**", (self, other))

    def __rpow__(self, other: Operand) -> Value:
        return _apply("binop", "**", (other, self))

    def __matmul__(self, other: Operand) -> Value:
        return _apply("binop", "@", (self, other))

    def __rmatmul__(self, other: Operand) -> Value:
        return _apply("binop", "@", (other, self))

    def __neg__(self) -> Value:
        return _apply("neg", "-", (self,))

    def __pos__(self) -> Value:
        return self

    def __abs__(self) -> Value:
        return _apply("call", "abs", (self,))

    # comparisons: 1.0 where true, 0.0 where false
    def __lt__(self, other: Operand) -> Value:
        return _apply("compare", "<", (self, other))

    def __gt__(self, other: Operand) -> Value:
        return _apply("compare", ">", (self, other))

    def __le__(self, other: Operand) -> Value:
        return _apply("compare", "<=", (self, other))

    def __ge__(self, other: Operand) -> Value:
        return _apply("compare", ">=", (self, other))

    def __eq__(self, other: object) -> bool:  # type: ignore[override]
        raise _misuse(
            "`==` and `!=` are not in the cell language",
            _site().span,
            "compare with < > <= >= (e.g. rnnc.where(x > 0, a, b)); "
            "to test whether two Python objects are the same value, use `is`",
        )

    __ne__ = __eq__  # type: ignore[assignment]
    __hash__ = object.__hash__

    # what Python would need a number for
    def __bool__(self) -> bool:
        site = _site()
        fix = "choose between values elementwise with rnnc.where(condition, a, b)"
        for node in site.nodes():
            if isinstance(node, pyast.Call) and isinstance(node.func, pyast.Name):
                if node.func.id in ("max", "min"):
                    fix = f"use rnnc.{node.func.id}imum(a, b) instead of {node.func.id}(a, b)"
        raise _misuse(
            "a symbolic value has no truth value: it is computed for every example at "
            "every step, so Python's `if`, `while`, `and`, `or`, `not` cannot decide on it",
            site.span,
            fix,
        )

    def __index__(self) -> int:
        raise _misuse(
            "a symbolic value cannot be used as a Python integer or index",
            _site().span,
            "use Python numbers for sizes and positions; dimensions go in the decorator",
        )

    def __float__(self) -> float:
        raise _misuse(
            "a symbolic value has no number while the cell is traced",
            _site().span,
            "use rnnc's functions (rnnc.tanh, rnnc.exp, ...) instead of math or NumPy",
        )

    __int__ = __float__  # type: ignore[assignment]
    __complex__ = __float__  # type: ignore[assignment]

    def __getitem__(self, key: Any) -> Value:
        raise _misuse(
            "symbolic values cannot be indexed or sliced",
            _site().span,
            "compute the parts separately (e.g. `x @ p.W1` and `x @ p.W2`), "
            "and join vectors with rnnc.concat",
        )

    def __iter__(self) -> Any:
        raise _misuse(
            "symbolic values cannot be iterated or unpacked",
            _site().span,
            "compute each part as its own value",
        )

    def __len__(self) -> int:
        raise _misuse(
            "a symbolic value has no length while the cell is traced",
            _site().span,
            "sizes are dimensions of the header (e.g. 'H'), given to the layer later",
        )

    def __array__(self, *args: Any, **kwargs: Any) -> Any:
        raise _misuse(
            "a symbolic value cannot become a NumPy array",
            _site().span,
            "use rnnc's functions (rnnc.tanh, rnnc.concat, ...) instead of NumPy's",
        )

    def __array_ufunc__(self, ufunc: Any, method: str, *inputs: Any, **kwargs: Any) -> Any:
        # NumPy scalars on the other side (``np.float64(2) * h``) are numbers; anything
        # else from NumPy (arrays, np.tanh) cannot enter a cell
        name = getattr(ufunc, "__name__", "")
        inputs = tuple(i.item() if getattr(i, "ndim", None) == 0 else i for i in inputs)
        numbers_only = all(
            isinstance(i, Value) or (isinstance(i, numbers.Real) and not isinstance(i, bool))
            for i in inputs
        )
        if method == "__call__" and name in _UFUNC_OPERATORS and numbers_only and not kwargs:
            op = _UFUNC_OPERATORS[name]
            return _apply("compare" if op in _MIRROR else "binop", op, inputs)
        if name in FUNCTIONS or name in ("absolute", "concatenate"):
            fix = f"use rnnc.{ {'absolute': 'abs', 'concatenate': 'concat'}.get(name, name) }"
        else:
            fix = (
                "NumPy arrays cannot appear in a cell: make the array a parameter (p.NAME); "
                "use rnnc's functions and operators on symbolic values"
            )
        raise _misuse(f"NumPy's `{name}` cannot take a symbolic value", _site().span, fix)

    def __array_function__(self, func: Any, types: Any, args: Any, kwargs: Any) -> Any:
        name = getattr(func, "__name__", "")
        fix = "use rnnc.concat(a, b)" if name == "concatenate" else "use rnnc's functions"
        raise _misuse(f"NumPy's `{name}` cannot take a symbolic value", _site().span, fix)


def _unsupported(symbol: str) -> Callable[..., Any]:
    def method(self: Value, *args: Any) -> Any:
        raise _misuse(
            f"the operator `{symbol}` is not in the cell language",
            _site().span,
            f"the operators are {_OPERATORS}; the functions rnnc.{', rnnc.'.join(FUNCTIONS)}",
        )

    return method


for _dunder, _symbol in {
    "floordiv": "//",
    "mod": "%",
    "divmod": "divmod",
    "lshift": "<<",
    "rshift": ">>",
    "and": "&",
    "or": "|",
    "xor": "^",
}.items():
    setattr(Value, f"__{_dunder}__", _unsupported(_symbol))
    setattr(Value, f"__r{_dunder}__", _unsupported(_symbol))
for _dunder, _symbol in {"invert": "~", "round": "round", "floor": "floor", "ceil": "ceil"}.items():
    setattr(Value, f"__{_dunder}__", _unsupported(_symbol))
setattr(Value, "__trunc__", _unsupported("trunc"))  # noqa: B010
del _dunder, _symbol


_PY_BINOPS: dict[type, str] = {
    pyast.Add: "+",
    pyast.Sub: "-",
    pyast.Mult: "*",
    pyast.Div: "/",
    pyast.Pow: "**",
    pyast.MatMult: "@",
}
_PY_COMPARE: dict[type, str] = {pyast.Lt: "<", pyast.Gt: ">", pyast.LtE: "<=", pyast.GtE: ">="}
_MIRROR = {"<": ">", ">": "<", "<=": ">=", ">=": "<="}
_UFUNC_OPERATORS = {
    "add": "+",
    "subtract": "-",
    "multiply": "*",
    "divide": "/",
    "true_divide": "/",
    "power": "**",
    "matmul": "@",
    "less": "<",
    "greater": ">",
    "less_equal": "<=",
    "greater_equal": ">=",
}


def _children(site: _Site, kind: str, op: str, count: int) -> tuple[list[pyast.AST], str] | None:
    """The Python operand nodes of the expression at ``site`` (and its operator as
    written: ``0 < h`` arrives as ``h.__gt__(0)``), or None where they are not known."""
    for node in site.nodes():
        if kind == "binop":
            if isinstance(node, pyast.BinOp) and _PY_BINOPS.get(type(node.op)) == op:
                return [node.left, node.right], op
            if isinstance(node, pyast.AugAssign) and _PY_BINOPS.get(type(node.op)) == op:
                return [node.target, node.value], op
        elif kind == "compare":
            if isinstance(node, pyast.Compare) and len(node.ops) == 1:
                written = _PY_COMPARE.get(type(node.ops[0]))
                if written in (op, _MIRROR[op]):
                    return [node.left, node.comparators[0]], written
        elif kind == "neg":
            if isinstance(node, pyast.UnaryOp) and isinstance(node.op, pyast.USub):
                return [node.operand], op
        elif kind == "call" and isinstance(node, pyast.Call):
            plain = not node.keywords and not any(isinstance(a, pyast.Starred) for a in node.args)
            if plain and len(node.args) == count:
                return list(node.args), op
    return None


def _operand(value: Any, trace: _Trace, span: Span, what: str) -> Value | float:
    """A checked operand: a value of this trace, or a finite Python number."""
    if isinstance(value, Value):
        if value._trace is not trace:
            other = value._trace
            raise _misuse(
                f"a symbolic value of cell `{other.name}` is used "
                + (f"in cell `{trace.name}`" if not other.done else "after that cell was built"),
                span,
                "keep symbolic values inside the function that makes them; "
                "write shared parts as helper functions called inside each cell",
            )
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        hint = (
            "make the array a parameter (p.NAME) and set its value on the layer"
            if hasattr(value, "shape")
            else "pass a symbolic value or a Python number"
        )
        raise _misuse(f"{what} cannot take a value of type {type(value).__name__}", span, hint)
    number = float(value)
    if not math.isfinite(number):
        raise _misuse(f"{what} cannot take {number}", span, "use a finite number")
    return number


def _apply(kind: str, op: str, operands: tuple[Any, ...]) -> Value:
    """Record an operation on ``operands`` at the user's current line."""
    owners = [o._trace for o in operands if isinstance(o, Value)]
    trace = owners[0] if owners else (_ACTIVE[-1] if _ACTIVE else None)
    site = _site(trace)
    what = f"rnnc.{op}" if kind == "call" else f"the operator `{op}`"
    if trace is None:
        raise _misuse(
            f"{what} works on symbolic values inside a function decorated with @rnnc.cell",
            site.span,
            "call it inside the cell's function",
        )
    if trace.done:
        raise _misuse(
            f"a symbolic value of cell `{trace.name}` is used after the cell was built",
            site.span,
            "keep symbolic values inside the function that makes them",
        )
    args = tuple(_operand(o, trace, site.span, what) for o in operands)
    found = _children(site, kind, op, len(args))
    if found is not None and kind == "compare" and found[1] != op:
        # Python turned ``0 < h`` into ``h > 0``: record it as written
        op, args = found[1], args[::-1]
    if found is not None:
        uses = tuple(site.span_of(n) for n in found[0])
    else:
        uses = tuple(a._span if isinstance(a, Value) and not a._leaf else site.span for a in args)
    return Value(
        trace,
        "call" if kind == "call" else "neg" if kind == "neg" else "binop",
        op,
        site.span,
        args,
        uses,
    )


# ---------------------------------------------------------------- functions
def sigmoid(x: Operand) -> Value:
    """The logistic function :math:`\\sigma(x) = 1 / (1 + e^{-x})`, elementwise.

    >>> r = rnnc.sigmoid(x @ p.W_ir + h @ p.W_hr)      # inside a cell function
    """
    return _apply("call", "sigmoid", (x,))


def tanh(x: Operand) -> Value:
    """The hyperbolic tangent :math:`\\tanh(x)`, elementwise.

    >>> h_next = rnnc.tanh(x @ p.W + h @ p.U + p.b)
    """
    return _apply("call", "tanh", (x,))


def relu(x: Operand) -> Value:
    """The rectifier :math:`\\max(x, 0)`, elementwise.

    >>> h_next = rnnc.relu(x @ p.W + h @ p.U)
    """
    return _apply("call", "relu", (x,))


def exp(x: Operand) -> Value:
    """The exponential :math:`e^x`, elementwise.

    >>> rate = rnnc.exp(p.log_rate)
    """
    return _apply("call", "exp", (x,))


def log(x: Operand) -> Value:
    """The natural logarithm :math:`\\ln x`, elementwise.

    >>> y = rnnc.log(1 + rnnc.exp(h))
    """
    return _apply("call", "log", (x,))


def sqrt(x: Operand) -> Value:
    """The square root :math:`\\sqrt{x}`, elementwise.

    >>> norm = rnnc.sqrt(h @ h)
    """
    return _apply("call", "sqrt", (x,))


def abs(x: Operand) -> Value:
    """The absolute value :math:`|x|`, elementwise (Python's ``abs(x)`` does the same).

    >>> size = rnnc.abs(h)
    """
    return _apply("call", "abs", (x,))


def softplus(x: Operand) -> Value:
    """The softplus :math:`\\ln(1 + e^x)`, elementwise.

    >>> rate = rnnc.softplus(x @ p.W)
    """
    return _apply("call", "softplus", (x,))


def layer_norm(x: Operand) -> Value:
    """Normalise a vector over its last axis, with no parameters of its own:
    :math:`(x - \\mu) / \\sqrt{\\sigma^2 + \\epsilon}` (add gain and bias yourself).

    >>> z = rnnc.layer_norm(x @ p.W) * p.gain + p.bias
    """
    return _apply("call", "layer_norm", (x,))


def maximum(a: Operand, b: Operand) -> Value:
    """The larger of ``a`` and ``b``, elementwise (use it instead of Python's ``max``).

    >>> h_next = rnnc.maximum(x @ p.W, 0)
    """
    return _apply("call", "maximum", (a, b))


def minimum(a: Operand, b: Operand) -> Value:
    """The smaller of ``a`` and ``b``, elementwise (use it instead of Python's ``min``).

    >>> clipped = rnnc.minimum(h, 1)
    """
    return _apply("call", "minimum", (a, b))


def where(condition: Operand, a: Operand, b: Operand) -> Value:
    """``a`` where ``condition`` is non-zero, else ``b``, elementwise: the cell
    language's ``if`` (Python's ``if`` cannot decide on a symbolic value).

    >>> h_next = rnnc.where(x > 0, h + x, h)
    """
    return _apply("call", "where", (condition, a, b))


def concat(*values: Operand) -> Value:
    """Join vectors along their axis: ``[a_1, ..., a_n]`` has the sum of their sizes.

    >>> xh = rnnc.concat(x, h)            # [I + H]
    >>> gates = xh @ p.W                  # W: [I + H, 4*H]
    """
    if len(values) == 1 and isinstance(values[0], list | tuple):
        raise _misuse(
            "rnnc.concat takes the values as separate arguments, not a list",
            _site().span,
            "write rnnc.concat(a, b) or rnnc.concat(*values)",
        )
    return _apply("call", "concat", values)


# ---------------------------------------------------------------- parameters
class Params:
    """The parameters of a cell, passed to its function as the argument after the
    inputs and states (``p`` by convention).

    ``p.W`` (or ``p["W"]``) reads parameter ``W``; its shape is inferred from its uses
    (``x @ p.W`` with ``x: [I]`` makes ``W: [I, ?]``). :meth:`declare` also gives its
    shape and initialiser.

    >>> W = p.W_hh                                      # shape inferred
    >>> U = p.declare("U", ("H", "H"), init="orthogonal")
    """

    __slots__ = ("_trace",)

    def __init__(self, trace: _Trace):
        object.__setattr__(self, "_trace", trace)

    def __getattr__(self, name: str) -> Value:
        if name.startswith("__"):
            raise AttributeError(name)
        return self._read(name, _site(self._trace))

    def __getitem__(self, name: str) -> Value:
        return self._read(name, _site(self._trace))

    def __setattr__(self, name: str, value: Any) -> None:
        raise _misuse(
            f"cannot assign to parameter `{name}`: parameters are read, not assigned",
            _site(self._trace).span,
            f'read it as p.{name}; declare its shape with p.declare("{name}", shape)',
        )

    def __repr__(self) -> str:
        return f"<rnnc.Params of cell {self._trace.name}>"

    def declare(
        self,
        name: str,
        shape: ShapeLike | None = None,
        init: str | tuple[Any, ...] | None = None,
    ) -> Value:
        """Declare parameter ``name`` with a shape and/or an initialiser; return it.

        ``init`` is an initialiser's name (``"uniform"``, ``"normal"``, ``"glorot"``,
        ``"orthogonal"``, ``"zeros"``, ``"ones"``, ``"constant"``) or a tuple of a name
        and its numbers, e.g. ``("normal", 0.0, 0.1)``; the same as the language's
        ``param W: [H, H] ~ orthogonal``.

        >>> W = p.declare("W_hh", ("H", "H"), init="orthogonal")
        >>> b = p.declare("b", "H", init=("constant", 1.0))
        """
        trace = self._trace
        site = _site(trace)
        value = self._read(name, site)
        initializer = None
        if init is not None:
            parts = (init,) if isinstance(init, str) else tuple(init)
            if not parts or not isinstance(parts[0], str):
                raise OptionError(
                    f"init={init!r} is not an initialiser",
                    site.span,
                    'write init="orthogonal" or init=("normal", 0.0, 0.1)',
                )
            args = []
            for a in parts[1:]:
                if isinstance(a, bool) or not isinstance(a, numbers.Real) or not math.isfinite(a):
                    raise OptionError(
                        f"initialiser arguments are numbers, not {a!r}",
                        site.span,
                        'write e.g. init=("uniform", 0.1)',
                    )
                args.append(float(a))
            initializer = ast.Initializer(parts[0], tuple(args), site.span)
        decl_shape = None if shape is None else _shape(shape, site.span, param=True)
        trace.decls.append(ast.ParamDecl(name, decl_shape, initializer, site.span))
        return value

    def _read(self, name: str, site: _Site) -> Value:
        trace = self._trace
        if trace.done:
            raise _misuse(
                f"the parameters of cell `{trace.name}` are read after the cell was built",
                site.span,
                "read parameters inside the cell's function",
            )
        if not isinstance(name, str) or not _NAME.match(name):
            raise _misuse(
                f"{name!r} is not a valid parameter name",
                site.span,
                "use letters, digits and underscores (ASCII), starting with a letter",
            )
        h = trace.header
        for kind, names in (
            ("an input", h.inputs),
            ("a state", h.states),
            ("an output", h.outputs),
        ):
            if name in names:
                raise DuplicateDefinitionError(
                    f"`p.{name}` names a parameter, but `{name}` is {kind} of this cell",
                    site.span,
                    f"give the parameter another name (read the {kind[kind.index(' ') + 1 :]} "
                    f"through the function's argument `{name}`)",
                )
        if name in FUNCTIONS:
            raise DuplicateDefinitionError(
                f"`p.{name}` names a parameter, but `{name}` is a built-in function",
                site.span,
                "give the parameter another name",
            )
        trace.params.setdefault(name, site.span)
        return Value(trace, "param", name, site.span)


# ---------------------------------------------------------------- header values
def _shape(spec: Any, span: Span, param: bool = False) -> ast.Shape:
    """An AST shape from ``"H"``, ``"2*H + I"``, ``("H", "H")``, ``"[H, H]"``, ``()``."""
    what = "a parameter's shape" if param else "a shape"
    fix = "write dimensions as 'H', '4*H', 'H + I' or whole numbers: \"H\", (\"H\", \"H\"), ()"
    if isinstance(spec, str):
        text = spec.strip()
        if text.startswith("[") and text.endswith("]"):
            text = text[1:-1]
        items: list[Any] = [t for t in text.split(",")] if text.strip() else []
    elif isinstance(spec, tuple | list):
        items = list(spec)
    else:
        items = [spec]
    dims = []
    for item in items:
        terms: list[tuple[int, str | None]] = []
        if isinstance(item, int) and not isinstance(item, bool):
            terms = [(item, None)]
        elif isinstance(item, str) and item.strip():
            for term in item.split("+"):
                m = _TERM.match(term)
                if m is None:
                    raise OptionError(f"{spec!r} is not {what}: cannot read {item!r}", span, fix)
                scale, scaled, number, name = m.groups()
                terms.append(
                    (int(scale), scaled) if scaled else (int(number), None) if number else (1, name)
                )
        else:
            raise OptionError(f"{spec!r} is not {what}", span, fix)
        if sum(c for c, n in terms if n is None) == 0 and all(n is None for _, n in terms):
            raise OptionError(
                f"{spec!r} has a dimension of size 0",
                span,
                'dimensions are positive; for a state\'s initial value write a float: ("H", 0.0)',
            )
        dims.append(ast.Dim(tuple(terms), span))
    return ast.Shape(tuple(dims), span)


def _state(spec: Any, span: Span) -> tuple[ast.Shape, float | str]:
    """A state's shape and initial value from ``"H"`` or ``(shape, init)``."""
    if isinstance(spec, tuple) and spec:
        last = spec[-1]
        is_init = last == "learned" or (isinstance(last, float) and not isinstance(last, bool))
        if is_init:
            rest = spec[:-1]
            shape = rest[0] if len(rest) == 1 and isinstance(rest[0], tuple | list) else rest
            if isinstance(last, float) and not math.isfinite(last):
                raise OptionError(
                    f"initial value {last} is not finite", span, "use a finite number"
                )
            return _shape(shape, span), last if last == "learned" else float(last)
    return _shape(spec, span), 0.0


def _doc(fn: Callable[..., Any]) -> str | None:
    """The function's docstring, dedented as the parser dedents a cell's."""
    raw = fn.__doc__
    if raw is None:
        return None
    lines = inspect.cleandoc(raw).splitlines()
    return "\n".join(line.rstrip() for line in lines).strip() or None


# ---------------------------------------------------------------- building the AST
def _number(value: float, span: Span) -> ast.Expr:
    """A number as the parser reads it: ``-2`` is ``Neg(Number(2))``."""
    if value < 0:
        return ast.Neg(ast.Number(-value, span), span)
    return ast.Number(value, span)


class _Builder:
    """Turn a finished trace and its return value into an :class:`ast.Cell`.

    Every operation the function recorded becomes exactly one expression node: a value
    read in several places is bound to a name (the function's local variable name when
    it has one) and read by that name; a value returned as the next value of state
    ``h`` is read as ``h'``.
    """

    def __init__(self, trace: _Trace, nexts: dict[str, Any], outs: dict[str, Any], spans: Any):
        self.trace = trace
        self.nexts = nexts
        self.outs = outs
        self.spans = spans  # (kind, name) -> (entry span, value span)
        self.primed: dict[int, str] = {}
        self.names: dict[int, str] = {}

    def build(self) -> tuple[ast.Statement, ...]:
        trace = self.trace
        for state, v in self.nexts.items():
            if isinstance(v, Value) and not v._leaf:
                self.primed.setdefault(id(v), state)
        taken = trace.reserved()
        for out, v in self.outs.items():
            if isinstance(v, Value) and not v._leaf and id(v) not in self.primed:
                self.names.setdefault(id(v), out)
        local_values = []
        if trace.frame is not None:
            for name, v in trace.frame.f_locals.items():
                if not (isinstance(v, Value) and v._trace is trace and not v._leaf):
                    continue
                local_values.append(v)
                free = _NAME.match(name) and name not in taken
                if free and id(v) not in self.primed and id(v) not in self.names:
                    self.names[id(v)] = name
                    taken.add(name)
        roots = [v for v in (*self.nexts.values(), *self.outs.values()) if isinstance(v, Value)]
        order = self.reachable([*roots, *local_values])
        # a value read in more than one place gets a name, so it is written once
        readers: dict[int, int] = {id(v): 0 for v in order}
        for v in order:
            for a in v._args:
                if isinstance(a, Value) and not a._leaf:
                    readers[id(a)] += 1
        for v in roots:
            if not v._leaf:
                readers[id(v)] += 1
        # ... and so does a value nested deeper than _INLINE_DEPTH (an unrolled loop)
        counter = 0
        depth: dict[int, int] = {}
        for v in order:
            inner = [depth[id(a)] for a in v._args if isinstance(a, Value) and not a._leaf]
            named = id(v) in self.primed or id(v) in self.names
            if not named and (readers[id(v)] > 1 or max(inner, default=0) >= _INLINE_DEPTH):
                counter += 1
                while f"_t{counter}" in taken:
                    counter += 1
                self.names[id(v)] = f"_t{counter}"
                named = True
            depth[id(v)] = 0 if named else 1 + max(inner, default=0)
        body: list[ast.Statement] = []
        for v in order:  # creation order: every value after the values it reads
            if id(v) in self.primed:
                state = self.primed[id(v)]
                span = self.spans.get(("state", state), (v._span,))[0]
                body.append(ast.Assign(state, self.define(v), True, span))
            elif id(v) in self.names:
                name = self.names[id(v)]
                span = self.spans.get(("output", name), (v._span,))[0]
                body.append(ast.Assign(name, self.define(v), False, span))
        for kind, table in (("state", self.nexts), ("output", self.outs)):
            for name, v in table.items():
                is_own = isinstance(v, Value) and (
                    self.primed.get(id(v)) == name
                    if kind == "state"
                    else self.names.get(id(v)) == name and id(v) not in self.primed
                )
                if is_own:
                    continue
                span, value_span = self.spans.get((kind, name), (trace.header.site.span,) * 2)
                body.append(ast.Assign(name, self.read(v, value_span), kind == "state", span))
        return tuple(body)

    def reachable(self, starts: list[Value]) -> list[Value]:
        """The operations that ``starts`` read, in creation order."""
        seen: dict[int, Value] = {}
        stack = [v for v in starts if not v._leaf]
        while stack:
            v = stack.pop()
            if id(v) in seen:
                continue
            seen[id(v)] = v
            stack.extend(a for a in v._args if isinstance(a, Value) and not a._leaf)
        return sorted(seen.values(), key=lambda v: v._index)

    def read(self, v: Value | float, span: Span) -> ast.Expr:
        """The expression that reads ``v`` at ``span``."""
        if not isinstance(v, Value):
            return _number(v, span)
        if v._leaf:
            return ast.Name(v._op, span)
        if id(v) in self.primed:
            return ast.Primed(self.primed[id(v)], span)
        if id(v) in self.names:
            return ast.Name(self.names[id(v)], span)
        return self.define(v)

    def define(self, v: Value) -> ast.Expr:
        """The expression that computes ``v`` from what it reads."""
        args = [self.read(a, u) for a, u in zip(v._args, v._uses, strict=True)]
        if v._kind == "neg":
            return ast.Neg(args[0], v._span)
        if v._kind == "call":
            return ast.Call(v._op, tuple(args), v._span)
        return ast.BinOp(v._op, args[0], args[1], v._span)


# ---------------------------------------------------------------- the decorator
class Cell:
    """A cell made by :func:`cell`: its AST, its checked IR and the function it came from.

    Use it wherever rnnc takes a cell: ``rnnc.Recurrent(cell, I=8, H=16)``,
    ``rnnc.load_cell(cell)``. ``text`` is the same cell in the cell language.
    """

    def __init__(self, fn: Callable[..., Any], tree: ast.Cell, cell_ir: ir.CellIR):
        self.fn = fn
        self.__wrapped__ = fn
        self.__doc__ = fn.__doc__
        self.name = tree.name
        self.ast = tree
        self.ir = cell_ir

    @property
    def text(self) -> str:
        """The cell written in the cell language (``rnnc.parse(cell.text)`` gives the same IR)."""
        return format_cell(self.ast)

    def __repr__(self) -> str:
        ports = [
            ", ".join(f"{p.name}: {p.shape}" for p in side)
            for side in (self.ast.inputs, self.ast.outputs)
        ]
        return f"<rnnc cell {self.name}({ports[0]}) -> ({ports[1]}) at {self.ast.span}>"


def cell(
    _fn: Callable[..., Any] | None = None,
    /,
    *,
    inputs: Mapping[str, ShapeLike] | None = None,
    outputs: Mapping[str, ShapeLike] | None = None,
    state: Mapping[str, StateLike] | None = None,
    name: str | None = None,
) -> Callable[[Callable[..., Any]], Cell]:
    """Make a cell from a Python function over symbolic values (a decorator).

    ``inputs``, ``state`` and ``outputs`` give each port's shape for ONE example:
    ``"H"``, ``("H", "H")``, ``"2*H + I"``, ``()`` (a scalar). A state is a shape (its
    initial value is 0) or ``(shape, init)`` with ``init`` a float or ``"learned"``
    (a parameter ``<state>0``). The function takes one argument per input and state,
    by those names, and optionally one more for the parameters (:class:`Params`); it
    returns ``(next_states, outputs)``, two dicts by name. The cell's name is the
    function's (or ``name``), its doc the function's docstring.

    The GRU of PyTorch (:math:`r, z` gates, candidate :math:`n`):

    .. math::
        r = \\sigma(x W_{ir} + b_{ir} + h W_{hr} + b_{hr}), \\quad
        z = \\sigma(x W_{iz} + b_{iz} + h W_{hz} + b_{hz}) \\\\
        n = \\tanh(x W_{in} + b_{in} + r \\odot (h W_{hn} + b_{hn})), \\quad
        h' = (1 - z) \\odot n + z \\odot h, \\quad y = h'

    >>> @rnnc.cell(inputs={"x": "I"}, state={"h": "H"}, outputs={"y": "H"})
    ... def gru(x, h, p):
    ...     r = rnnc.sigmoid(x @ p.W_ir + p.b_ir + h @ p.W_hr + p.b_hr)
    ...     z = rnnc.sigmoid(x @ p.W_iz + p.b_iz + h @ p.W_hz + p.b_hz)
    ...     n = rnnc.tanh(x @ p.W_in + p.b_in + r * (h @ p.W_hn + p.b_hn))
    ...     h_next = (1 - z) * n + z * h
    ...     return {"h": h_next}, {"y": h_next}
    >>> layer = rnnc.Recurrent(gru, I=3, H=4)

    Errors (the checker's too) name the function's file and line with a caret.
    """
    site = _site()
    if _fn is not None or inputs is None or outputs is None:
        raise OptionError(
            "rnnc.cell needs the cell's inputs and outputs (and states)",
            site.span,
            'write @rnnc.cell(inputs={"x": "I"}, state={"h": "H"}, outputs={"y": "H"})',
        )
    header = _Header(site, inputs, state or {}, outputs, name)

    def decorate(fn: Callable[..., Any]) -> Cell:
        return _trace(fn, header)

    return decorate


def _function_node(fn: Callable[..., Any], source: _Source | None) -> pyast.AST | None:
    code = getattr(fn, "__code__", None)
    if source is None or code is None:
        return None
    for node in source.functions:
        first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
        if node.name == fn.__name__ and first == code.co_firstlineno:
            return node
    return None


def _trace(fn: Callable[..., Any], header: _Header) -> Cell:
    code = getattr(fn, "__code__", None)
    site = (
        _Site(code.co_filename, None, getattr(fn, "__globals__", None), code.co_firstlineno)
        if code is not None
        else header.site
    )
    source = site.source()
    node = _function_node(fn, source)
    def_span = site.span
    arg_spans: dict[str, Span] = {}
    if isinstance(node, pyast.FunctionDef | pyast.AsyncFunctionDef):
        line = node.lineno
        def_span = Span(
            site.filename,
            line,
            node.col_offset + 1,
            line,
            len(linecache.getline(site.filename, line)),
        )
        for a in (*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs):
            arg_spans[a.arg] = site.span_of(a)
    name = header.name or getattr(fn, "__name__", "")
    if not _NAME.match(name) or name == "<lambda>":
        raise OptionError(
            f"{name!r} cannot name a cell",
            def_span,
            'name the function like a cell, or pass name="..." to rnnc.cell',
        )
    trace = _Trace(header, fn, name)
    kwargs = _arguments(fn, trace, def_span, arg_spans)
    _ACTIVE.append(trace)
    try:
        result = fn(**kwargs)
    finally:
        _ACTIVE.pop()
        trace.done = True
    nexts, outs, spans = _returned(result, trace, node, site, def_span)
    body = _Builder(trace, nexts, outs, spans).build()
    trace.frame = None  # its locals are named; let the frame go
    h = header
    states = tuple(
        ast.StateDecl(k, shape, init, h.port("state", k)) for k, (shape, init) in h.states.items()
    )
    declared = {d.name for d in trace.decls}
    used = {e.id for e in _names(body)}
    implicit = tuple(
        ast.ParamDecl(k, None, None, span)
        for k, span in trace.params.items()
        if k not in declared and k in used
    )
    tree = ast.Cell(
        name=name,
        inputs=tuple(ast.Port(k, s, h.port("inputs", k)) for k, s in h.inputs.items()),
        outputs=tuple(ast.Port(k, s, h.port("outputs", k)) for k, s in h.outputs.items()),
        doc=_doc(fn),
        body=(*states, *trace.decls, *implicit, *body),
        span=def_span,
        source=_source_text(fn),
    )
    return Cell(fn, tree, _check(tree))


def _arguments(
    fn: Callable[..., Any], trace: _Trace, def_span: Span, arg_spans: dict[str, Span]
) -> dict[str, Any]:
    """The keyword arguments of the traced call: input and state values, parameters."""
    h = trace.header
    ports = [*h.inputs, *h.states]
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        signature = None
    example = f"def {trace.name}({', '.join([*ports, 'p'])}):"
    if signature is None:
        raise OptionError(f"cannot read the arguments of {fn!r}", def_span, example)
    params = signature.parameters.values()
    named = [a.name for a in params if a.kind not in (a.VAR_POSITIONAL, a.VAR_KEYWORD)]
    var_kw = any(a.kind == a.VAR_KEYWORD for a in params)
    positional_only = [a.name for a in params if a.kind == a.POSITIONAL_ONLY]
    missing = [n for n in ports if n not in named and not var_kw]
    extra = [
        a.name
        for a in params
        if a.name not in ports
        and a.kind not in (a.VAR_POSITIONAL, a.VAR_KEYWORD)
        and a.default is a.empty
    ]
    if missing or len(extra) > 1 or positional_only:
        problem = (
            f"has no argument for {', '.join(f'`{n}`' for n in missing)}"
            if missing
            else f"takes positional-only arguments {', '.join(positional_only)}"
            if positional_only
            else f"takes more than one argument besides the inputs and states: {', '.join(extra)}"
        )
        raise DslError(
            f"the function of cell `{trace.name}` {problem}",
            def_span,
            "take one argument per input and state, by name, then one for the parameters: "
            + example,
        )
    kwargs: dict[str, Any] = {}
    for kind, names in (("input", h.inputs), ("state", h.states)):
        for n in names:
            span = arg_spans.get(n) or h.port("inputs" if kind == "input" else "state", n)
            kwargs[n] = Value(trace, kind, n, span)
    if extra:
        kwargs[extra[0]] = Params(trace)
    return kwargs


def _return_node(trace: _Trace, fn_node: pyast.AST | None, site: _Site) -> pyast.Return | None:
    """The ``return`` statement that ended the traced call."""
    frame = trace.frame
    if frame is not None:
        pos = _frame_position(frame)
        ret_site = _Site(frame.f_code.co_filename, pos, frame.f_globals)
        for node in ret_site.nodes():
            if isinstance(node, pyast.Return):
                return node
    if isinstance(fn_node, pyast.FunctionDef | pyast.AsyncFunctionDef):
        returns = [n for n in _own_statements(fn_node) if isinstance(n, pyast.Return)]
        if len(returns) == 1:
            return returns[0]
    return None


def _own_statements(fn_node: pyast.AST) -> list[pyast.AST]:
    """The nodes of a function, not of functions or classes defined inside it."""
    out: list[pyast.AST] = []
    stack = list(pyast.iter_child_nodes(fn_node))
    while stack:
        node = stack.pop()
        out.append(node)
        if not isinstance(node, pyast.FunctionDef | pyast.AsyncFunctionDef | pyast.ClassDef):
            stack.extend(pyast.iter_child_nodes(node))
    return out


def _returned(
    result: Any, trace: _Trace, fn_node: pyast.AST | None, site: _Site, def_span: Span
) -> tuple[dict[str, Any], dict[str, Any], dict[tuple[str, str], tuple[Span, Span]]]:
    """Check the function's return value; also the spans of its ``"name": value`` entries."""
    ret = _return_node(trace, fn_node, site)
    ret_span = site.span_of(ret) if ret is not None else def_span
    h = trace.header
    example = (
        "return {"
        + ", ".join(f'"{s}": {s}_next' for s in h.states)
        + "}, {"
        + ", ".join(f'"{o}": ...' for o in h.outputs)
        + "}"
    )
    if not (
        isinstance(result, tuple)
        and len(result) == 2
        and all(isinstance(r, Mapping) for r in result)
    ):
        got = (
            f"a tuple of {len(result)}"
            if isinstance(result, tuple)
            else "None (no return statement?)"
            if result is None
            else f"a {type(result).__name__}"
        )
        raise DslError(
            f"the function of cell `{trace.name}` must return two dicts "
            f"(next states, outputs), but it returned {got}",
            ret_span,
            f"end it with {example}",
        )
    spans: dict[tuple[str, str], tuple[Span, Span]] = {}
    if ret is not None and isinstance(ret.value, pyast.Tuple) and len(ret.value.elts) == 2:
        for kind, elt in zip(("state", "output"), ret.value.elts, strict=True):
            if isinstance(elt, pyast.Dict):
                entries = _entry_spans(site, elt)
                for key, value in zip(elt.keys, elt.values, strict=True):
                    if isinstance(key, pyast.Constant) and key.value in entries:
                        spans[kind, key.value] = (entries[key.value], site.span_of(value))
    nexts, outs = (dict(r) for r in result)
    for kind, got, want in (("state", nexts, h.states), ("output", outs, h.outputs)):
        listed = ", ".join(f"`{n}`" for n in want) or "none"
        for key in got:
            if not isinstance(key, str) or key not in want:
                raise UnknownNameError(
                    f"the returned {'next states' if kind == 'state' else 'outputs'} name "
                    f"{key!r}, which is not {'a state' if kind == 'state' else 'an output'} "
                    f"of cell `{trace.name}`",
                    spans.get((kind, key), (ret_span,))[0] if isinstance(key, str) else ret_span,
                    f"the cell's {kind}s are: {listed}; declare it in "
                    f"@rnnc.cell({'state' if kind == 'state' else 'outputs'}=...)",
                )
        for key in want:
            if key not in got:
                error = MissingNextStateError if kind == "state" else MissingOutputError
                raise error(
                    f"the function of cell `{trace.name}` returns no "
                    + (f"next value for state `{key}`" if kind == "state" else f"output `{key}`"),
                    ret_span,
                    f"add it to the returned dict: {example}",
                    notes=(
                        (h.port("state" if kind == "state" else "outputs", key), "declared here"),
                    ),
                )
        for key, v in got.items():
            where = spans.get((kind, key), (ret_span, ret_span))[1]
            _operand(v, trace, where, f"the returned {kind} {key!r}")
        for key in want:  # in the header's order
            got[key] = got.pop(key)
    return nexts, outs, spans


def _names(body: tuple[ast.Statement, ...]) -> list[ast.Name]:
    out: list[ast.Name] = []
    stack: list[Any] = [s.value for s in body if isinstance(s, ast.Assign)]
    while stack:
        e = stack.pop()
        if isinstance(e, ast.Name):
            out.append(e)
        elif isinstance(e, ast.BinOp):
            stack += [e.left, e.right]
        elif isinstance(e, ast.Neg):
            stack.append(e.operand)
        elif isinstance(e, ast.Call):
            stack.extend(e.args)
    return out


def _source_text(fn: Callable[..., Any]) -> str:
    try:
        return inspect.getsource(fn)
    except (OSError, TypeError):
        return ""


def _check(tree: ast.Cell) -> ir.CellIR:
    """Check the AST; the checker's warnings are re-issued at the user's Python line."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cell_ir = check_cell(tree)
    for w in caught:
        span = getattr(w.message, "span", None)
        filename, line = (span.filename, span.line) if span else (w.filename, w.lineno)
        warnings.warn_explicit(w.message, w.category, filename, line)
    return cell_ir
