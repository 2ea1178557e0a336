"""Check a cell's AST and turn it into IR.

The checker resolves every name (input, old state, binding, next state, built-in
function; any other name is a **parameter**), infers the shape of every value by
unification over symbolic dimensions, and rejects what cannot work, each time with the
user's span, a caret and the fix. Parameters need no declaration: ``x @ W`` with
``x: [I]`` makes ``W: [I, ?]``, and the ``?`` is found where the product meets a value
of known shape (``h' = tanh(x @ W)`` with ``state h: [H]`` gives ``? = H``). A next
state and an output take their declared shapes on the line that assigns them, so the
lines below know them.

Elementwise operations broadcast as NumPy does on the example shape, with one rule for
unknown shapes: a parameter whose shape is still unknown takes the shape of the other
operand (``x @ W + b`` makes ``b: [H]``), unless that operand is a scalar.
grammar/README.md explains these rules to users.
"""

from __future__ import annotations

import difflib
import warnings
from dataclasses import dataclass, field

from rnnc import ir
from rnnc.errors import (
    ArgumentCountError,
    DuplicateDefinitionError,
    MissingNextStateError,
    MissingOutputError,
    MisspelledNameWarning,
    NextStateShapeError,
    NonPositiveArgumentWarning,
    RnncWarning,
    ShapeInferenceError,
    ShapeMismatchError,
    Span,
    UnknownNameError,
    UnusedInputWarning,
    UnusedParameterWarning,
    UseBeforeDefinitionError,
)
from rnnc.lang import ast

__all__ = ["FUNCTIONS", "INITIALIZERS", "check_cell", "check_module", "local_values"]

#: Built-in functions: name -> (IR op, number of arguments, None for any).
FUNCTIONS: dict[str, tuple[str, int | None]] = {
    **{f: (f, 1) for f in ("sigmoid", "tanh", "relu", "exp", "log", "sqrt", "abs", "softplus")},
    "layer_norm": ("layer_norm", 1),
    "maximum": ("maximum", 2),
    "minimum": ("minimum", 2),
    "where": ("where", 3),
    "concat": ("concat", None),
}

#: How each built-in function is called, for messages.
_SIGNATURES = {
    **{f: f"{f}(x)" for f, (_, n) in FUNCTIONS.items() if n == 1},
    "maximum": "maximum(a, b)",
    "minimum": "minimum(a, b)",
    "where": "where(condition, a, b)",
    "concat": "concat(a, b, ...)",
}

#: Initialisers: name -> the numbers of arguments it accepts.
INITIALIZERS: dict[str, tuple[int, ...]] = {
    "uniform": (0, 1, 2),
    "normal": (0, 1, 2),
    "glorot": (0,),
    "orthogonal": (0, 1),
    "zeros": (0,),
    "ones": (0,),
    "constant": (1,),
}

_BINOPS = {"+": "add", "-": "sub", "*": "mul", "/": "div", "**": "pow", "@": "matmul"}
_BINOPS |= {"<": "lt", ">": "gt", "<=": "le", ">=": "ge"}


# ---------------------------------------------------------------- unification
class _DimVar:
    """An unknown dimension."""


class _ShapeVar:
    """An unknown shape (rank unknown too)."""


DimTerm = ir.Dim | _DimVar
ShapeTerm = tuple[DimTerm, ...] | _ShapeVar


def _dim(dim: ast.Dim) -> ir.Dim:
    """A written dimension in canonical form: ``[I + H + H]`` -> ``"2*H + I"``."""
    total: dict[str, int] = {}
    for coeff, name in dim.terms:
        total[name or ""] = total.get(name or "", 0) + coeff
    return _canon(total)


def _canon(terms: dict[str, int]) -> ir.Dim:
    """Canonical form of a sum of dimensions: names sorted, the constant last."""
    named = [n if c == 1 else f"{c}*{n}" for n, c in sorted(terms.items()) if n and c]
    const = terms.get("", 0)
    if not named:
        return const
    return " + ".join(named + ([str(const)] if const else []))


class _Unifier:
    def __init__(self) -> None:
        self.dims: dict[_DimVar, DimTerm] = {}
        self.shapes: dict[_ShapeVar, ShapeTerm] = {}

    def dim(self, d: DimTerm) -> DimTerm:
        while isinstance(d, _DimVar) and d in self.dims:
            d = self.dims[d]
        return d

    def shape(self, s: ShapeTerm) -> ShapeTerm:
        while isinstance(s, _ShapeVar) and s in self.shapes:
            s = self.shapes[s]
        if isinstance(s, tuple):
            return tuple(self.dim(d) for d in s)
        return s

    def unify_dim(self, a: DimTerm, b: DimTerm) -> bool:
        a, b = self.dim(a), self.dim(b)
        if a is b or a == b:
            return True
        if isinstance(a, _DimVar):
            self.dims[a] = b
            return True
        if isinstance(b, _DimVar):
            self.dims[b] = a
            return True
        return False

    def unify_exact(self, a: ShapeTerm, b: ShapeTerm) -> bool:
        a, b = self.shape(a), self.shape(b)
        if a is b:
            return True
        if isinstance(a, _ShapeVar):
            self.shapes[a] = b
            return True
        if isinstance(b, _ShapeVar):
            self.shapes[b] = a
            return True
        return len(a) == len(b) and all(self.unify_dim(x, y) for x, y in zip(a, b, strict=True))

    def broadcast(self, a: ShapeTerm, b: ShapeTerm) -> ShapeTerm | None:
        """The shape of an elementwise result, or None when the shapes conflict."""
        a, b = self.shape(a), self.shape(b)
        if isinstance(a, _ShapeVar) or isinstance(b, _ShapeVar):
            known, unknown = (b, a) if isinstance(a, _ShapeVar) else (a, b)
            if isinstance(known, tuple) and len(known) == 0:
                return unknown
            self.unify_exact(unknown, known)
            return known
        if len(a) < len(b):
            a, b = b, a
        for x, y in zip(a[len(a) - len(b) :], b, strict=True):
            if not self.unify_dim(x, y):
                return None
        return a

    def sum_dims(self, dims: list[DimTerm]) -> DimTerm | None:
        total: dict[str, int] = {}
        for d in dims:
            d = self.dim(d)
            if isinstance(d, _DimVar):
                return None
            for name, coeff in ir._dim_terms(d).items():
                total[name] = total.get(name, 0) + coeff
        return _canon(total)


def _suggest(name: str, choices: list[str], what: str) -> str:
    """``did you mean `tanh`? The built-in functions are: ...``"""
    known = f"the {what} are: {', '.join(choices)}"
    close = difflib.get_close_matches(name, choices, n=1)
    return f"did you mean `{close[0]}`? {known[0].upper()}{known[1:]}" if close else known


def _either(words: list[str]) -> str:
    """``["a", "b", "c"]`` -> ``"a, b or c"``."""
    return words[-1] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


def _count(counts: tuple[int, ...]) -> str:
    """``(0, 1, 2)`` -> ``"0, 1 or 2 arguments"``."""
    return f"{_either([str(n) for n in counts])} argument" + ("" if counts == (1,) else "s")


#: The argument names of each initialiser, by the number of arguments, for messages.
_INITIALIZER_ARGS = {
    ("uniform", 1): "a",
    ("uniform", 2): "lo, hi",
    ("normal", 1): "std",
    ("normal", 2): "mean, std",
    ("orthogonal", 1): "gain",
    ("constant", 1): "value",
}


def _initializer_form(name: str, count: int) -> str:
    """How an initialiser is written with ``count`` arguments, e.g. ``uniform(lo, hi)``."""
    return name if count == 0 else f"{name}({_INITIALIZER_ARGS[name, count]})"


def _name_span(call: ast.Call) -> Span:
    """The span of the function's name in a call."""
    s = call.span
    return Span(s.filename, s.line, s.column, s.line, s.column + len(call.func), s.text)


def _names(expr: ast.Expr) -> list[str]:
    """The names an expression reads, left to right."""
    if isinstance(expr, ast.Name):
        return [expr.id]
    if isinstance(expr, ast.BinOp):
        return _names(expr.left) + _names(expr.right)
    if isinstance(expr, ast.Neg):
        return _names(expr.operand)
    if isinstance(expr, ast.Call):
        return [n for a in expr.args for n in _names(a)]
    return []


def _param_name(expr: ast.Expr) -> str:
    """The name to use in a suggested ``param`` line: the parameter's, or ``W``."""
    return expr.id if isinstance(expr, ast.Name) else "W"


def _operand(expr: ast.Expr) -> str:
    """The text of an expression as the left operand of ``@``."""
    text = _text(expr)
    return f"({text})" if isinstance(expr, ast.BinOp | ast.Neg) else text


def _one_edit_apart(a: str, b: str) -> bool:
    """Whether ``b`` is ``a`` with one letter added, removed or changed, or two swapped."""
    if a == b or abs(len(a) - len(b)) > 1:
        return False
    if len(a) > len(b):
        a, b = b, a
    i = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), len(a))
    if len(a) < len(b):
        return a[i:] == b[i + 1 :]
    swapped = a[i : i + 2] == b[i : i + 2][::-1] and a[i + 2 :] == b[i + 2 :]
    return a[i + 1 :] == b[i + 1 :] or swapped


def _warn(kind: type[RnncWarning], message: str, span: Span, fix: str) -> None:
    """Issue a warning of ``kind`` attributed to the user's line, not to rnnc's."""
    warnings.warn_explicit(kind(message, span, fix), kind, span.filename, span.line, "rnnc.check")


def _show(shape: ShapeTerm) -> str:
    if isinstance(shape, _ShapeVar):
        return "[?]"
    return "[" + ", ".join("?" if isinstance(d, _DimVar) else str(d) for d in shape) + "]"


def _text(expr: ast.Expr) -> str:
    """The source text of an expression, for messages."""
    span = expr.span
    line = span.source_line()
    if line and span.end_line == span.line and span.end_column > span.column:
        return line[span.column - 1 : span.end_column - 1]
    from rnnc.lang.pretty import format_expr

    return format_expr(expr)


def _with_argument(call: ast.Call, old: str, new: str) -> str:
    """The source text of ``call`` with its argument's text ``old`` replaced by ``new``:
    ``log(r + 1e-6)`` in a cell file, ``rn.log(r + 1e-6)`` in the Python DSL."""
    text = _text(call)
    at = text.rfind(old)
    return text[:at] + new + text[at + len(old) :] if at >= 0 else f"{call.func}({new})"


# ---------------------------------------------------------------- signs
# A simple sign analysis finds `log` and `sqrt` of values that are evidently not
# positive. The sign of a value is the set of signs it can take: "-", "+", and "0" for
# a value that is exactly 0 over a range of inputs (`relu(v)` for every v < 0; an
# input or a parameter is 0 only by chance, which does not count).
Sign = frozenset[str]
_ANY: Sign = frozenset("-+")
_NONNEGATIVE: Sign = frozenset("0+")
_POSITIVE_FUNCTIONS = ("sigmoid", "exp", "softplus")


def _flip(a: Sign) -> Sign:
    return frozenset({"-": "+", "+": "-", "0": "0"}[x] for x in a)


def _times(a: Sign, b: Sign) -> Sign:
    return frozenset("0" if "0" in (x, y) else "+" if x == y else "-" for x in a for y in b)


def _plus(a: Sign, b: Sign) -> Sign:
    if a == {"0"}:
        return b
    if b == {"0"}:
        return a
    for side in "+-":
        if a <= {side, "0"} and b <= {side, "0"}:
            zero = {"0"} if "0" in a and "0" in b else set()
            return frozenset(({side} & (a | b)) | zero)
    return _ANY


def _extreme(a: Sign, b: Sign, pick) -> Sign:
    """The signs of ``maximum`` (``pick=max``) or ``minimum`` of two values."""
    return frozenset(pick(x, y, key="-0+".index) for x in a for y in b)


class _Signs:
    """Warns (:class:`NonPositiveArgumentWarning`) about ``log`` and ``sqrt`` of values
    that are never positive (``log(-softplus(v))``, ``sqrt(0 - exp(v))``) or that are 0
    over a range of inputs (``log(relu(v))`` is -inf wherever v < 0; ``sqrt`` there has
    an infinite derivative)."""

    def __init__(self) -> None:
        self.values: dict[str, Sign] = {}
        self.nexts: dict[str, Sign] = {}

    def warn(self, cell: ast.Cell) -> None:
        for stmt in cell.body:
            if isinstance(stmt, ast.Assign):
                (self.nexts if stmt.primed else self.values)[stmt.target] = self.sign(stmt.value)

    def sign(self, e: ast.Expr) -> Sign:
        if isinstance(e, ast.Number):
            return frozenset("+" if e.value > 0 else "-" if e.value < 0 else "0")
        if isinstance(e, ast.Name):
            return self.values.get(e.id, _ANY)
        if isinstance(e, ast.Primed):
            return self.nexts.get(e.id, _ANY)
        if isinstance(e, ast.Neg):
            return _flip(self.sign(e.operand))
        if isinstance(e, ast.BinOp):
            return self.binop(e.op, self.sign(e.left), self.sign(e.right), e.right)
        if isinstance(e, ast.Call):
            return self.call(e, [self.sign(a) for a in e.args])
        return _ANY

    def binop(self, op: str, a: Sign, b: Sign, right: ast.Expr) -> Sign:
        if op == "+":
            return _plus(a, b)
        if op == "-":
            return _plus(a, _flip(b))
        if op in ("*", "/"):
            return _times(a, b - {"0"} if op == "/" else b) or _ANY
        if op == "@":  # a sum of products
            terms = _times(a, b)
            return terms if terms <= _NONNEGATIVE or terms <= {"-", "0"} else _ANY
        if op == "**":
            if a <= {"+"}:
                return a
            if isinstance(right, ast.Number) and right.value == int(right.value):
                even = int(right.value) % 2 == 0
                return frozenset("+" if even and x == "-" else x for x in a)
            return a if a <= _NONNEGATIVE else _ANY
        return _NONNEGATIVE  # a comparison: 0 or 1

    def call(self, e: ast.Call, args: list[Sign]) -> Sign:
        f = e.func
        if f in ("log", "sqrt"):
            self.check(e, args[0])
            return _ANY if f == "log" or "+" not in args[0] else args[0] - {"-"}
        if f in _POSITIVE_FUNCTIONS:
            return frozenset("+")
        if f == "tanh":
            return args[0]
        if f == "relu":
            return _extreme(args[0], frozenset("0"), max)
        if f == "abs":
            return frozenset("+" if x == "-" else x for x in args[0])
        if f in ("maximum", "minimum"):
            return _extreme(args[0], args[1], max if f == "maximum" else min)
        if f == "where":
            return args[1] | args[2]
        if f == "concat":
            return frozenset().union(*args)
        return _ANY  # layer_norm

    def check(self, e: ast.Call, arg: Sign) -> None:
        value = e.args[0]
        text = _text(value)
        compare = isinstance(value, ast.BinOp) and value.op in ("<", ">", "<=", ">=")
        padded = f"({text})" if compare else text
        if "+" not in arg:
            at_zero = "-inf" if e.func == "log" else "0, with an infinite derivative"
            result = " or ".join({"-": "NaN", "0": at_zero}[x] for x in sorted(arg))
            _warn(
                NonPositiveArgumentWarning,
                f"`{e.func}` of `{text}`, which is never positive: the result is {result}",
                value.span,
                f"`{e.func}` needs a positive value: check the signs in `{text}`",
            )
        elif "0" in arg and "-" not in arg:
            why = (
                "log(0) is -inf"
                if e.func == "log"
                else "the derivative of sqrt at 0 is infinite, so gradients become inf or NaN"
            )
            _warn(
                NonPositiveArgumentWarning,
                f"`{e.func}` of `{text}`, which is 0 for some inputs: {why}",
                value.span,
                f"add a small constant: `{_with_argument(e, text, f'{padded} + 1e-6')}`",
            )


# ---------------------------------------------------------------- the checker
@dataclass
class _Param:
    shape: ShapeTerm
    decl: ast.ParamDecl | None = None
    uses: list[Span] = field(default_factory=list)
    statement: ast.Assign | None = None  # where it is first used


class _Checker:
    def __init__(self, cell: ast.Cell):
        self.cell = cell
        self.u = _Unifier()
        self.types: dict[int, ShapeTerm] = {}
        self.inputs = {p.name: p for p in cell.inputs}
        self.outputs = {p.name: p for p in cell.outputs}
        self.states: dict[str, ast.StateDecl] = {}
        self.params: dict[str, _Param] = {}
        self.bindings: dict[str, tuple[ast.Assign, ShapeTerm]] = {}
        self.nexts: dict[str, tuple[ast.Assign, ShapeTerm]] = {}
        self.used: set[str] = set()
        self.assigned_later: dict[str, ast.Assign] = {}
        self.next_later: dict[str, ast.Assign] = {}
        self.statement: ast.Assign | None = None  # the one being checked

    # ---- helpers
    def shape_of(self, shape: ast.Shape) -> tuple[ir.Dim, ...]:
        return tuple(_dim(d) for d in shape.dims)

    def duplicate(self, name: str, span: Span, first: Span, what: str) -> None:
        raise DuplicateDefinitionError(
            f"`{name}` is already defined as {what}",
            span,
            f"rename one of the two definitions of `{name}`",
            notes=((first, f"`{name}` is first defined here"),),
        )

    def declare(self) -> None:
        """Register ports, states and parameters; reject duplicates."""
        seen: dict[str, tuple[Span, str]] = {}
        for kind, ports in (("an input", self.cell.inputs), ("an output", self.cell.outputs)):
            for port in ports:
                if port.name in seen:
                    self.duplicate(port.name, port.span, *seen[port.name])
                seen[port.name] = (port.span, kind)
        for stmt in self.cell.body:
            if isinstance(stmt, ast.StateDecl):
                if stmt.name in seen:
                    self.duplicate(stmt.name, stmt.span, *seen[stmt.name])
                seen[stmt.name] = (stmt.span, "a state")
                self.states[stmt.name] = stmt
            elif isinstance(stmt, ast.ParamDecl):
                if stmt.name in seen:
                    self.duplicate(stmt.name, stmt.span, *seen[stmt.name])
                seen[stmt.name] = (stmt.span, "a parameter")
                self.check_initializer(stmt)
                shape = self.shape_of(stmt.shape) if stmt.shape else _ShapeVar()
                self.params[stmt.name] = _Param(shape, stmt)
        for stmt in self.cell.body:
            if isinstance(stmt, ast.Assign):
                table = self.next_later if stmt.primed else self.assigned_later
                if not stmt.primed and stmt.target in seen and stmt.target not in self.outputs:
                    span, kind = seen[stmt.target]
                    raise DuplicateDefinitionError(
                        f"cannot assign to `{stmt.target}`: it is {kind}",
                        stmt.span,
                        f"give the value another name, or write `{stmt.target}' = ...` "
                        "for the next value of a state"
                        if kind == "a state"
                        else "give the value another name",
                        notes=((span, f"`{stmt.target}` is defined here"),),
                    )
                if stmt.target in table:
                    first = table[stmt.target]
                    prime = "'" if stmt.primed else ""
                    raise DuplicateDefinitionError(
                        f"`{stmt.target}{prime}` is assigned twice",
                        stmt.span,
                        "assign each name once; give the second value another name",
                        notes=((first.span, "first assigned here"),),
                    )
                table[stmt.target] = stmt
        for state in self.states.values():
            if state.init == "learned":
                name = f"{state.name}0"
                if name in seen:
                    raise DuplicateDefinitionError(
                        f"state `{state.name}` is learned, which makes a parameter `{name}`, "
                        f"but `{name}` is already defined as {seen[name][1]}",
                        state.span,
                        f"rename `{name}`: the name is taken by the learned initial state",
                        notes=((seen[name][0], f"`{name}` is defined here"),),
                    )
                self.params[name] = _Param(self.shape_of(state.shape))

    def check_initializer(self, decl: ast.ParamDecl) -> None:
        init = decl.init
        if init is None:
            return
        if init.name not in INITIALIZERS:
            raise UnknownNameError(
                f"unknown initialiser `{init.name}`",
                init.span,
                _suggest(init.name, list(INITIALIZERS), "initialisers"),
            )
        if len(init.args) not in INITIALIZERS[init.name]:
            counts = INITIALIZERS[init.name]
            forms = _either([f"`~ {_initializer_form(init.name, n)}`" for n in counts])
            raise ArgumentCountError(
                f"initialiser `{init.name}` takes {_count(counts)}, not {len(init.args)}",
                init.span,
                f"write {forms}",
            )

    # ---- expressions
    def type(self, expr: ast.Expr) -> ShapeTerm:
        shape = self._type(expr)
        self.types[id(expr)] = shape
        return shape

    def _type(self, e: ast.Expr) -> ShapeTerm:
        if isinstance(e, ast.Number):
            return ()
        if isinstance(e, ast.Name):
            return self.type_name(e)
        if isinstance(e, ast.Primed):
            return self.type_primed(e)
        if isinstance(e, ast.Neg):
            return self.type(e.operand)
        if isinstance(e, ast.BinOp):
            left, right = self.type(e.left), self.type(e.right)
            if e.op == "@":
                return self.type_matmul(e, left, right)
            return self.elementwise(e, [e.left, e.right], [left, right])
        if isinstance(e, ast.Call):
            return self.type_call(e)
        raise TypeError(f"not an expression: {e!r}")

    def type_name(self, e: ast.Name) -> ShapeTerm:
        name = e.id
        self.used.add(name)
        if name in self.bindings:
            return self.bindings[name][1]
        if name in self.inputs:
            return self.shape_of(self.inputs[name].shape)
        if name in self.states:
            return self.shape_of(self.states[name].shape)
        if name in self.assigned_later:
            later = self.assigned_later[name]
            if later is self.statement:
                raise UseBeforeDefinitionError(
                    f"`{name}` is used in its own definition",
                    e.span,
                    f"a value cannot depend on itself within one step; to carry `{name}` "
                    f"to the next step, make it a state (`state {name}: [H] = 0`) and "
                    f"write `{name}' = ...`",
                )
            raise UseBeforeDefinitionError(
                f"`{name}` is used before it is defined",
                e.span,
                f"move the line that defines `{name}` above this one",
                notes=((later.span, f"`{name}` is defined here"),),
            )
        if name in FUNCTIONS:
            raise UnknownNameError(
                f"`{name}` is a function, not a value",
                e.span,
                f"call it: `{name}(...)`",
            )
        param = self.params.get(name)
        if param is None:
            param = self.params[name] = _Param(_ShapeVar())
            self.warn_if_misspelt(e)
        if not param.uses:
            param.statement = self.statement
        param.uses.append(e.span)
        return param.shape

    def warn_if_misspelt(self, e: ast.Name) -> None:
        """Warn when a new parameter's name is one typo away from a value's name."""
        known = [*self.inputs, *self.states, *self.bindings, *self.assigned_later]
        close = [k for k in known if _one_edit_apart(e.id, k)]
        if close and len(e.id) >= 3:
            _warn(
                MisspelledNameWarning,
                f"`{e.id}` is not defined, so it becomes a parameter",
                e.span,
                f"did you mean `{close[0]}`? If `{e.id}` is meant to be a parameter, "
                f"declare it (`param {e.id}`) to silence this warning",
            )

    def type_primed(self, e: ast.Primed) -> ShapeTerm:
        name = e.id
        if name in self.nexts:
            return self.nexts[name][1]
        if name not in self.states:
            kind = (
                "an input"
                if name in self.inputs
                else "a local value"
                if name in self.bindings or name in self.assigned_later
                else None
            )
            raise UnknownNameError(
                f"`{name}'` reads the next value of `{name}`, but `{name}` is not a state",
                e.span,
                f"`{name}` is {kind}, which has no next value: write `{name}`"
                if kind
                else f"declare the state (`state {name}: [H] = 0`), or drop the prime",
            )
        if name in self.next_later:
            raise UseBeforeDefinitionError(
                f"`{name}'` is used before it is defined",
                e.span,
                f"move the line `{name}' = ...` above this one, or read the old value `{name}`",
                notes=((self.next_later[name].span, f"`{name}'` is defined here"),),
            )
        self.missing_next(self.states[name])
        raise AssertionError("unreachable")

    def missing_next(self, state: ast.StateDecl) -> None:
        raise MissingNextStateError(
            f"state `{state.name}` has no next value",
            state.span,
            f"add a line `{state.name}' = ...` that computes the state of the next step",
        )

    def mismatch(self, e: ast.Expr, parts: list[ast.Expr], shapes: list[ShapeTerm]) -> None:
        first, last = self.u.shape(shapes[0]), self.u.shape(shapes[-1])
        fix = "elementwise operations need equal shapes (or a scalar on one side)"
        if isinstance(first, tuple) and isinstance(last, tuple) and len(first) == len(last) == 1:
            a, b = first[0], last[0]
            fix += (
                f": `{_operand(parts[0])} @ W`, with a parameter W: [{a}, {b}], turns "
                f"`{_text(parts[0])}` into [{b}]; if {a} and {b} are meant to be equal, "
                "use one name"
            )
        else:
            fix += "; change one side, for instance with a matrix product"
        described = [
            f"`{_text(p)}` has shape {_show(self.u.shape(s))}"
            for p, s in zip(parts, shapes, strict=True)
        ]
        notes = tuple((p.span, d) for p, d in zip(parts[:-1], described[:-1], strict=True))
        notes += self.param_notes(parts)
        raise ShapeMismatchError(
            f"shape mismatch in `{_text(e)}`: " + " but ".join(described),
            parts[-1].span,
            fix,
            notes=notes,
        )

    def param_notes(self, parts: list[ast.Expr]) -> tuple[tuple[Span, str], ...]:
        notes = []
        for p in parts:
            if isinstance(p, ast.Name) and p.id in self.params and self.params[p.id].uses:
                first = self.params[p.id].uses[0]
                if first != p.span:
                    notes.append((first, f"parameter `{p.id}` got its shape from this use"))
        return tuple(notes)

    def elementwise(self, e: ast.Expr, parts: list[ast.Expr], shapes: list[ShapeTerm]) -> ShapeTerm:
        result = shapes[0]
        for i in range(1, len(shapes)):
            new = self.u.broadcast(result, shapes[i])
            if new is None:
                self.mismatch(e, parts[: i + 1], shapes[: i + 1])
            result = new
        return result

    def type_matmul(self, e: ast.BinOp, a: ShapeTerm, b: ShapeTerm) -> ShapeTerm:
        u = self.u
        a, b = u.shape(a), u.shape(b)
        if isinstance(a, _ShapeVar) and isinstance(b, _ShapeVar):
            raise ShapeInferenceError(
                f"cannot infer the shapes of both sides of `{_text(e)}`",
                e.span,
                f"declare one of them with its shape, e.g. `param {_param_name(e.left)}: [H, H]`",
            )
        if isinstance(b, _ShapeVar):
            if len(a) not in (1, 2):
                self.rank_error(e.left, a)
            out = _DimVar()
            u.unify_exact(b, (a[-1], out))
            return (*a[:-1], out)
        if isinstance(a, _ShapeVar):
            if len(b) not in (1, 2):
                self.rank_error(e.right, b)
            out = _DimVar()
            u.unify_exact(a, (out, b[0]))
            return (out, *b[1:])
        for side, shape in ((e.left, a), (e.right, b)):
            if len(shape) not in (1, 2):
                self.rank_error(side, shape)
        if not u.unify_dim(a[-1], b[0]):
            raise ShapeMismatchError(
                f"matrix product `{_text(e)}`: the last dimension of `{_text(e.left)}` "
                f"{_show(a)} differs from the first of `{_text(e.right)}` {_show(b)}",
                e.right.span,
                "the inner dimensions of `a @ b` must be equal; check the orientation "
                "(rnnc writes `x @ W` with W: [in, out])",
                notes=(
                    (e.left.span, f"`{_text(e.left)}` has shape {_show(a)}"),
                    *self.param_notes([e.left, e.right]),
                ),
            )
        return (*a[:-1], *b[1:])

    def rank_error(self, e: ast.Expr, shape: ShapeTerm) -> None:
        scalar = isinstance(shape, tuple) and not shape
        raise ShapeMismatchError(
            f"`{_text(e)}` has shape {_show(shape)}; `@` multiplies vectors and matrices",
            e.span,
            "multiply by a scalar with `*`"
            if scalar
            else f"give `{_text(e)}` one or two dimensions, e.g. [I, H]",
        )

    def type_call(self, e: ast.Call) -> ShapeTerm:
        if e.func not in FUNCTIONS:
            raise UnknownNameError(
                f"unknown function `{e.func}`",
                _name_span(e),
                _suggest(e.func, list(FUNCTIONS), "built-in functions"),
            )
        op, arity = FUNCTIONS[e.func]
        if (arity is not None and len(e.args) != arity) or (arity is None and not e.args):
            want = _count((arity,)) if arity else "at least 1 argument"
            raise ArgumentCountError(
                f"`{e.func}` takes {want}, not {len(e.args)}",
                e.span,
                f"call it as `{_SIGNATURES[e.func]}`",
            )
        shapes = [self.type(a) for a in e.args]
        if op == "concat":
            return self.type_concat(e, shapes)
        if op == "layer_norm":
            shape = self.u.shape(shapes[0])
            if isinstance(shape, tuple) and not shape:
                raise ShapeMismatchError(
                    "`layer_norm` normalises over the last axis of a vector, not a scalar",
                    e.args[0].span,
                    "apply it to a vector, e.g. a matrix product `layer_norm(x @ W)`",
                )
            return shape
        return self.elementwise(e, list(e.args), shapes)

    def type_concat(self, e: ast.Call, shapes: list[ShapeTerm]) -> ShapeTerm:
        resolved = [self.u.shape(s) for s in shapes]
        for arg, s in zip(e.args, resolved, strict=True):
            if isinstance(s, tuple) and len(s) != 1:
                raise ShapeMismatchError(
                    f"concat joins vectors, but `{_text(arg)}` has shape {_show(s)}",
                    arg.span,
                    "pass vectors only; a parameter can be declared as one, e.g. `param k: [1]`",
                )
            if isinstance(s, _ShapeVar) or isinstance(s[0], _DimVar):
                unknown = self.incomplete_params(arg) or ["W"]
                raise ShapeInferenceError(
                    f"cannot infer the length of `{_text(arg)}` inside concat (so far {_show(s)})",
                    arg.span,
                    "concat needs the shapes of its arguments where it stands: "
                    f"declare {self.declaration(unknown[0])}",
                )
        total = self.u.sum_dims([s[0] for s in resolved])
        assert total is not None
        return (total,)

    def incomplete_params(self, expr: ast.Expr) -> list[str]:
        """The parameters with a shape still (partly) unknown that ``expr`` reads,
        directly or through the local values it reads, in the order of the text."""
        found: list[str] = []
        pending, seen = _names(expr), set()
        while pending:
            name = pending.pop(0)
            if name in seen:
                continue
            seen.add(name)
            if name in self.bindings:
                pending[:0] = _names(self.bindings[name][0].value)
            elif not self.is_complete(name):
                found.append(name)
        return found

    def is_complete(self, name: str) -> bool:
        """Whether ``name`` is not a parameter with a shape still (partly) unknown."""
        if name not in self.params:
            return True
        shape = self.u.shape(self.params[name].shape)
        return isinstance(shape, tuple) and not any(isinstance(d, _DimVar) for d in shape)

    def declaration(self, name: str) -> str:
        """A ``param`` line that would give ``name`` a complete shape, for messages."""
        shape = self.u.shape(self.params[name].shape) if name in self.params else _ShapeVar()
        if isinstance(shape, tuple):
            dims = ", ".join("N" if isinstance(d, _DimVar) else str(d) for d in shape)
            return f"`param {name}: [{dims}]`, N standing for the size you mean"
        return f"`param {name}: [H]`"

    # ---- statements
    def run(self) -> _Builder:
        """Check the cell; the builder that is returned makes its IR."""
        self.declare()
        for stmt in self.cell.body:
            if not isinstance(stmt, ast.Assign):
                continue
            self.statement = stmt
            if stmt.primed and stmt.target not in self.states:
                self.not_a_state(stmt)
            shape = self.type(stmt.value)
            if stmt.primed:
                del self.next_later[stmt.target]
                self.check_declared(stmt, shape)
                self.nexts[stmt.target] = (stmt, shape)
            else:
                del self.assigned_later[stmt.target]
                if stmt.target in self.outputs:
                    self.check_declared(stmt, shape)
                self.bindings[stmt.target] = (stmt, shape)
        self.finish()
        _Signs().warn(self.cell)
        return _Builder(self)

    def not_a_state(self, stmt: ast.Assign) -> None:
        name = stmt.target
        if name in self.outputs:
            fix = f"an output is assigned without a prime: `{name} = ...`"
        else:
            fix = f"declare the state (`state {name}: [H] = 0`), or drop the prime"
        raise UnknownNameError(
            f"`{name}'` is the next value of `{name}`, but `{name}` is not a state",
            stmt.span,
            fix,
        )

    def check_declared(self, stmt: ast.Assign, shape: ShapeTerm) -> None:
        """Give a next state or an output its declared shape, where it is assigned (so
        that the lines below, an output reading `h'`, already know it)."""
        name = stmt.target
        decl = self.states[name] if stmt.primed else self.outputs[name]
        want = self.shape_of(decl.shape)
        if self.u.unify_exact(shape, want):
            return
        got = _show(self.u.shape(shape))
        if stmt.primed:
            raise NextStateShapeError(
                f"the next value of `{name}` has shape {got}, "
                f"but state `{name}` has shape {_show(want)}",
                stmt.value.span,
                f"compute a value of shape {_show(want)} for `{name}'`, "
                "or change the state's declared shape",
                notes=((decl.span, f"state `{name}` is declared here"),),
            )
        raise ShapeMismatchError(
            f"output `{name}` is declared with shape {_show(want)} "
            f"but is assigned a value of shape {got}",
            stmt.value.span,
            "change the value or the declared shape in the header",
            notes=((decl.span, f"`{name}` is declared here"),),
        )

    def finish(self) -> None:
        for state in self.states.values():
            if state.name not in self.nexts:
                self.missing_next(state)
        for name, port in self.outputs.items():
            if name not in self.bindings:
                raise MissingOutputError(
                    f"output `{name}` is never assigned",
                    port.span,
                    f"add a line `{name} = ...` to the cell"
                    + (
                        f" (for instance `{name} = {next(iter(self.states))}'`)"
                        if self.states
                        else ""
                    ),
                )
        for name, param in self.params.items():
            shape = self.u.shape(param.shape)
            if isinstance(shape, tuple) and not any(isinstance(d, _DimVar) for d in shape):
                continue
            if not param.uses:
                if param.decl is not None:
                    raise ShapeInferenceError(
                        f"parameter `{name}` is declared without a shape and never used",
                        param.decl.span,
                        f"use it, give it a shape (`param {name}: [H]`) or delete the line",
                    )
                continue
            notes = ()
            stmt = param.statement
            if stmt and not stmt.primed and stmt.target not in self.used | set(self.outputs):
                notes = ((stmt.span, f"`{stmt.target}` is never used, so nothing fixes it"),)
            raise ShapeInferenceError(
                f"cannot infer the shape of parameter `{name}` (so far {_show(shape)})",
                param.uses[0],
                f"declare it with its shape, e.g. {self.declaration(name)}",
                notes=notes,
            )
        for name, port in self.inputs.items():
            if name not in self.used:
                _warn(
                    UnusedInputWarning,
                    f"input `{name}` is never used",
                    port.span,
                    "use it in the cell's body, or remove it from the header",
                )
        for name, param in self.params.items():
            if param.decl is not None and not param.uses:
                _warn(
                    UnusedParameterWarning,
                    f"parameter `{name}` is declared but never used",
                    param.decl.span,
                    "use it, or delete the declaration",
                )


class _Builder:
    """The second pass: the AST, with every shape known, becomes IR nodes."""

    def __init__(self, checker: _Checker):
        self.c = checker
        self.values: dict[str, ir.Node] = {}
        self.nexts: dict[str, ir.Node] = {}

    def shape(self, expr: ast.Expr) -> tuple[ir.Dim, ...]:
        shape = self.c.u.shape(self.c.types[id(expr)])
        assert isinstance(shape, tuple), expr
        return shape  # type: ignore[return-value]

    def node(self, e: ast.Expr) -> ir.Node:
        shape = self.shape(e)
        if isinstance(e, ast.Number):
            return ir.Node("const", (), (), float(e.value))
        if isinstance(e, ast.Name):
            if e.id in self.values:
                return self.values[e.id]
            c = self.c
            op = "input" if e.id in c.inputs else "state" if e.id in c.states else "param"
            return ir.Node(op, (), shape, e.id)
        if isinstance(e, ast.Primed):
            return self.nexts[e.id]
        if isinstance(e, ast.Neg):
            return ir.Node("neg", (self.node(e.operand),), shape)
        if isinstance(e, ast.BinOp):
            return ir.Node(_BINOPS[e.op], (self.node(e.left), self.node(e.right)), shape)
        if isinstance(e, ast.Call):
            return ir.Node(FUNCTIONS[e.func][0], tuple(self.node(a) for a in e.args), shape)
        raise TypeError(e)

    def build(self) -> ir.CellIR:
        c = self.c
        for stmt in c.cell.body:
            if isinstance(stmt, ast.Assign):
                node = self.node(stmt.value)
                (self.nexts if stmt.primed else self.values)[stmt.target] = node
        states = {}
        for name, s in c.states.items():
            shape = c.shape_of(s.shape)
            if s.init == "learned":
                states[name] = ir.StateSpec(shape, "learned")
            else:
                states[name] = ir.StateSpec(shape, "constant", float(s.init))
        params = {}
        for name, p in c.params.items():
            shape = c.u.shape(p.shape)
            if not isinstance(shape, tuple):
                continue  # declared, never used, warned about
            init = p.decl.init if p.decl else None
            if name.endswith("0") and name[:-1] in states and states[name[:-1]].init == "learned":
                init = ast.Initializer("zeros")
            params[name] = ir.ParamSpec(
                shape, init.name if init else None, tuple(init.args) if init else ()
            )
        return ir.CellIR(
            name=c.cell.name,
            inputs={n: c.shape_of(p.shape) for n, p in c.inputs.items()},
            states=states,
            params=params,
            next_state={n: self.nexts[n] for n in c.states},
            outputs={n: self.values[n] for n in c.outputs},
            doc=c.cell.doc or "",
            source=c.cell.source,
            filename=c.cell.span.filename,
        )


def check_cell(cell: ast.Cell) -> ir.CellIR:
    """Check one cell and return its IR, or raise an :class:`~rnnc.errors.RnncError`."""
    _check_depth(cell)
    return _Checker(cell).run().build()


def _check_depth(cell: ast.Cell) -> None:
    """Reject expressions nested deeper than :data:`ast.MAX_DEPTH` (the parser rejects
    them in text; the Python DSL builds trees of any depth), which the recursive walks
    below could not take."""
    for stmt in cell.body:
        if isinstance(stmt, ast.Assign) and (part := ast.too_deep(stmt.value)) is not None:
            raise ast.too_deep_error(part.span)


def local_values(cell: ast.Cell) -> dict[str, ir.Node]:
    """The IR node of each local value of a cell (outputs included), by name, in the
    order of the body: for labelling the IR where people read it (``rnnc show``)."""
    _check_depth(cell)
    builder = _Checker(cell).run()
    builder.build()
    return dict(builder.values)


def check_module(module: ast.Module) -> dict[str, ir.CellIR]:
    """Check every cell of a module; the result maps cell names to IR."""
    cells: dict[str, ir.CellIR] = {}
    spans: dict[str, Span] = {}
    for cell in module.cells:
        if cell.name in cells:
            raise DuplicateDefinitionError(
                f"a cell named `{cell.name}` is already defined in this file",
                cell.span,
                "give each cell of a file its own name",
                notes=((spans[cell.name], "the first one is here"),),
            )
        cells[cell.name] = check_cell(cell)
        spans[cell.name] = cell.span
    return cells
