"""Parse cell-language text into the AST (:mod:`rnnc.lang.ast`).

The grammar is ``grammar/cell.lark`` at the top of the repository; a wheel carries it
as ``rnnc/_grammar/cell.lark``. Syntax errors become :class:`CellSyntaxError` with the
place and a friendly message chosen by Lark's ``match_examples``.
"""

from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path

from lark import Lark, Token, Transformer, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, VisitError
from lark.indenter import DedentError, Indenter

from rnnc.errors import CellSyntaxError, RnncError, Span
from rnnc.lang import ast

__all__ = ["grammar_path", "grammar_text", "parse_module"]


def grammar_path() -> Path:
    """Where ``cell.lark`` is: inside the installed package, or in the source tree."""
    packaged = resources.files("rnnc") / "_grammar" / "cell.lark"
    if packaged.is_file():
        return Path(str(packaged))
    source = Path(__file__).resolve().parents[2] / "grammar" / "cell.lark"
    if source.is_file():
        return source
    raise FileNotFoundError("rnnc's grammar (cell.lark) is missing from this installation")


def grammar_text() -> str:
    return grammar_path().read_text(encoding="utf-8")


class _CellIndenter(Indenter):
    NL_type = "_NL"
    OPEN_PAREN_types = ["LPAR", "LSQB"]
    CLOSE_PAREN_types = ["RPAR", "RSQB"]
    INDENT_type = "_INDENT"
    DEDENT_type = "_DEDENT"
    tab_len = 8


@functools.cache
def _lark(strict: bool = False) -> Lark:
    return Lark(
        grammar_text(),
        parser="lalr",
        postlex=_CellIndenter(),
        propagate_positions=True,
        maybe_placeholders=True,
        strict=strict,
    )


# Friendly messages for syntax errors: each is matched by Lark to the parser state of
# the examples (see Lark's examples/advanced/error_reporting_lalr.py).
_SYNTAX_EXAMPLES: dict[tuple[str, str], list[str]] = {
    (
        "a cell starts with a header",
        "write `cell NAME(x: [I]) -> (y: [H]):` and indent the body below it",
    ): ["x = 1\n", "state h: [H] = 0\n", "cell\n", "cell a\n"],
    (
        "the header needs `-> (outputs)` after the inputs",
        "add the outputs after the inputs: `cell NAME(x: [I]) -> (y: [H]):`",
    ): ["cell a(x: [I]):\n", "cell a(x: [I]) (y: [H]):\n", "cell a(x: [I]) -> y: [H]:\n"],
    (
        "the header must end with a colon",
        "add `:` at the end of the `cell` line",
    ): ["cell a(x: [I]) -> (y: [H])\n    y = x\n"],
    (
        "an input or output needs a shape",
        "give it a shape in brackets, e.g. `x: [I]`",
    ): ["cell a(x) -> (y: [H]):\n", "cell a(x: I) -> (y: [H]):\n", "cell a(x: [I]) -> (y):\n"],
    (
        "a state needs a shape and an initial value",
        "write `state h: [H] = 0` (or `= learned`)",
    ): [
        "cell a(x: [I]) -> ():\n    state h\n",
        "cell a(x: [I]) -> ():\n    state h: [H]\n",
        "cell a(x: [I]) -> ():\n    state h = 0\n",
        "cell a(x: [I]) -> ():\n    state h: [H] = \n",
    ],
    (
        "an expression is incomplete",
        "complete the expression: an operator needs a value on each side",
    ): [
        "cell a(x: [I]) -> ():\n    y = \n",
        "cell a(x: [I]) -> ():\n    y = x +\n",
        "cell a(x: [I]) -> ():\n    y = x * \n",
        "cell a(x: [I]) -> ():\n    y = x @\n",
        "cell a(x: [I]) -> ():\n    y = tanh(\n",
    ],
    (
        "two values stand side by side without an operator",
        "put an operator (`+`, `*`, `@`, ...) between them",
    ): [
        "cell a(x: [I]) -> ():\n    y = x x\n",
        "cell a(x: [I]) -> ():\n    y = x 2\n",
        "cell a(x: [I]) -> ():\n    y = 2 x\n",
        "cell a(x: [I]) -> ():\n    y = (x) x\n",
    ],
    (
        "unbalanced parentheses",
        "close every `(` with a `)` on the same statement",
    ): [
        "cell a(x: [I]) -> ():\n    y = (x))\n",
        "cell a(x: [I]) -> ():\n    y = tanh(x))\n",
    ],
    (
        "a statement must assign to a name",
        "write `name = expression`, or `name' = expression` for a next state",
    ): [
        "cell a(x: [I]) -> ():\n    x\n",
        "cell a(x: [I]) -> ():\n    x + 1 = y\n",
        "cell a(x: [I]) -> ():\n    tanh(x)\n",
    ],
}


def _friendly_syntax_error(exc: UnexpectedInput, text: str, filename: str) -> CellSyntaxError:
    line, column = exc.line, exc.column
    if line is None or line < 1:
        lines = text.splitlines() or [""]
        line, column = len(lines), len(lines[-1]) + 1
    token = getattr(exc, "token", None)
    width = 1
    if isinstance(token, Token) and token.end_column and token.end_line == line:
        width = max(1, token.end_column - column)
    span = Span(filename, line, column, line, column + width, text)

    try:
        found = exc.match_examples(_lark().parse, _SYNTAX_EXAMPLES, use_accepts=True)
    except Exception:  # match_examples is best effort; fall back to a plain message
        found = None
    if found is not None:
        message, fix = found
    elif isinstance(exc, UnexpectedCharacters):
        char = text.splitlines()[line - 1][column - 1 : column] if text else ""
        message, fix = f"unexpected character {char!r}", "remove it or check the spelling"
        if char == "'":
            message = "a prime (') must follow a state name directly, as in `h'`"
            fix = "remove the space before the prime"
    elif isinstance(exc, UnexpectedEOF):
        message, fix = "the text ends in the middle of a statement", "complete the statement"
    else:
        message, fix = "unexpected text here", "compare with the examples in grammar/README.md"
    if (isinstance(token, Token) and token.type == "_DEDENT") or (
        isinstance(token, Token) and token.type == "_INDENT"
    ):
        message = "unexpected indentation"
        fix = "indent every statement of a cell body by the same amount"
    if isinstance(token, Token) and token.type == "$END" and found is None:
        message = "the text ends in the middle of a statement"
    return CellSyntaxError(message, span, fix)


# ---------------------------------------------------------------- tree to AST
class _ToAst(Transformer):
    def __init__(self, filename: str, text: str):
        super().__init__()
        self.filename = filename
        self.text = text

    def _span(self, item) -> Span:
        """The span of a Lark meta or token."""
        return Span(
            self.filename,
            getattr(item, "line", 0) or 0,
            getattr(item, "column", 0) or 0,
            getattr(item, "end_line", 0) or 0,
            getattr(item, "end_column", 0) or 0,
            self.text,
        )

    @staticmethod
    def _number(token: Token) -> float:
        return float(token)

    @v_args(meta=True)
    def start(self, meta, cells):
        return tuple(c for c in cells if isinstance(c, ast.Cell))

    @v_args(meta=True)
    def cell(self, meta, items):
        name, inputs, outputs, doc, *body = items
        span = self._span(meta)
        lines = self.text.splitlines()[meta.line - 1 : meta.end_line]
        return ast.Cell(
            str(name), inputs or (), outputs or (), doc, tuple(body), span, "\n".join(lines) + "\n"
        )

    def ports(self, items):
        return tuple(p for p in items if p is not None)

    @v_args(meta=True)
    def port(self, meta, items):
        name, shape = items
        return ast.Port(str(name), shape, self._span(name))

    def docstring(self, items):
        raw = str(items[0])
        body = raw[3:-3] if raw.startswith('"""') else raw[1:-1]
        return _dedent_doc(body)

    @v_args(meta=True)
    def shape(self, meta, dims):
        return ast.Shape(tuple(d for d in dims if d is not None), self._span(meta))

    @v_args(meta=True)
    def dim(self, meta, terms):
        return ast.Dim(tuple(terms), self._span(meta))

    def _whole(self, token: Token) -> int:
        value = float(token)
        if value != int(value) or "." in token or "e" in token.lower():
            raise CellSyntaxError(
                f"a dimension must be a whole number, not {token}",
                self._span(token),
                "write a whole number such as `4`",
            )
        return int(value)

    def dim_int(self, items):
        return (self._whole(items[0]), None)

    def dim_name(self, items):
        return (1, str(items[0]))

    def dim_scaled(self, items):
        return (self._whole(items[0]), str(items[1]))

    @v_args(meta=True)
    def state_decl(self, meta, items):
        name, shape, init = items
        return ast.StateDecl(str(name), shape, init, self._span(name))

    def learned(self, items):
        return "learned"

    def signed_number(self, items):
        return self._number(items[0])

    def negative_number(self, items):
        return -self._number(items[0])

    @v_args(meta=True)
    def param_decl(self, meta, items):
        name, shape, init = items
        return ast.ParamDecl(str(name), shape, init, self._span(name))

    @v_args(meta=True)
    def initializer(self, meta, items):
        name, *args = items
        return ast.Initializer(str(name), tuple(a for a in args if a is not None), self._span(meta))

    @v_args(meta=True)
    def assign(self, meta, items):
        name, value = items
        return ast.Assign(str(name), value, False, self._span(name))

    @v_args(meta=True)
    def next_assign(self, meta, items):
        name, value = items
        return ast.Assign(str(name)[:-1], value, True, self._span(name))

    # expressions
    @v_args(meta=True)
    def number(self, meta, items):
        return ast.Number(self._number(items[0]), self._span(meta))

    @v_args(meta=True)
    def name(self, meta, items):
        return ast.Name(str(items[0]), self._span(meta))

    @v_args(meta=True)
    def primed(self, meta, items):
        return ast.Primed(str(items[0])[:-1], self._span(meta))

    @v_args(meta=True)
    def call(self, meta, items):
        func, *args = items
        return ast.Call(str(func), tuple(a for a in args if a is not None), self._span(meta))

    @v_args(meta=True)
    def neg(self, meta, items):
        return ast.Neg(items[0], self._span(meta))

    @v_args(meta=True)
    def compare(self, meta, items):
        left, op, right = items
        return ast.BinOp(str(op), left, right, self._span(meta))

    def _binop(op):  # noqa: N805 - a factory used in the class body
        @v_args(meta=True)
        def method(self, meta, items):
            return ast.BinOp(op, items[0], items[1], self._span(meta))

        return method

    add = _binop("+")
    sub = _binop("-")
    mul = _binop("*")
    div = _binop("/")
    matmul = _binop("@")
    pow = _binop("**")
    del _binop


def _dedent_doc(body: str) -> str:
    lines = body.strip("\n").splitlines()
    indents = [len(x) - len(x.lstrip()) for x in lines[1:] if x.strip()]
    cut = min(indents, default=0)
    return (
        "\n".join([lines[0].strip()] + [x[cut:].rstrip() for x in lines[1:]]).strip()
        if lines
        else ""
    )


def parse_module(text: str, filename: str = "<string>") -> ast.Module:
    """Parse the text of a ``.cell`` file into an :class:`ast.Module`.

    Raises :class:`CellSyntaxError` with the line and column of the first error.
    """
    source = text if text.endswith("\n") else text + "\n"
    try:
        tree = _lark().parse(source)
    except UnexpectedInput as exc:
        raise _friendly_syntax_error(exc, source, filename) from None
    except DedentError as exc:
        raise _dedent_error(exc, source, filename) from None
    try:
        cells = _ToAst(filename, source).transform(tree)
    except VisitError as exc:
        if isinstance(exc.orig_exc, RnncError):
            raise exc.orig_exc from None
        raise
    return ast.Module(cells, filename)


def _dedent_error(exc: DedentError, text: str, filename: str) -> CellSyntaxError:
    # Lark's Indenter does not say where; find the first line whose indentation is
    # deeper than the line after the header but shallower than the previous one.
    stack = [0]
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.lstrip()
        if not stripped or stripped.startswith("#"):
            continue
        indent = len(line) - len(stripped)
        if indent > stack[-1]:
            stack.append(indent)
            continue
        while indent < stack[-1]:
            stack.pop()
        if indent != stack[-1]:
            span = Span(filename, number, 1, number, indent + 1, text)
            return CellSyntaxError(
                "this line's indentation matches no enclosing block",
                span,
                "indent every statement of a cell body by the same amount",
            )
    return CellSyntaxError(
        str(exc), None, "indent every statement of a cell body by the same amount"
    )
