"""Parse cell-language text into the AST (:mod:`rnnc.lang.ast`).

The grammar is ``grammar/cell.lark`` at the top of the repository; a wheel carries it
as ``rnnc/_grammar/cell.lark``. Syntax errors become :class:`CellSyntaxError` with the
place and a friendly message, chosen by matching the parser's state at the error against
a table of typical mistakes (the idea of Lark's ``match_examples``).
"""

from __future__ import annotations

import functools
import math
from importlib import resources
from pathlib import Path

from lark import Lark, Token, Transformer, Tree, v_args
from lark.exceptions import (
    UnexpectedCharacters,
    UnexpectedInput,
    UnexpectedToken,
    VisitError,
)
from lark.indenter import DedentError, Indenter

from rnnc.errors import CellSyntaxError, RnncError, Span
from rnnc.lang import ast

__all__ = ["MAX_DIMENSION", "grammar_path", "grammar_text", "parse_module"]

#: The largest number a dimension may be written with.
MAX_DIMENSION = 2**31 - 1


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
    #: The line break last read: where a :class:`DedentError` is.
    last_newline: Token | None = None

    def handle_NL(self, token: Token):  # noqa: N802 - Lark's name
        self.last_newline = token
        yield from super().handle_NL(token)


def _lines(text: str) -> list[str]:
    """The lines of ``text`` as the parser numbers them: split at "\n" only."""
    lines = [line.removesuffix("\r") for line in text.split("\n")]
    if len(lines) > 1 and not lines[-1]:
        lines.pop()
    return lines


@functools.cache
def _lark(strict: bool = False) -> Lark:
    return Lark(
        grammar_text(),
        parser="lalr",
        postlex=_CellIndenter(),
        propagate_positions=True,
        maybe_placeholders=True,
        strict=strict,
        cache=_lark_cache(strict),
    )


def _lark_cache(strict: bool) -> str | bool:
    """Where Lark keeps its analysed grammar across processes: building the parser took
    0.36 s of every process's start (Lark's own ``cache``; it checks the grammar's hash
    and rebuilds a stale file). In rnnc's cache folder, not in the shared temporary
    folder, as the file is a pickle; off with ``RNNC_CACHE=0``."""
    import lark

    from rnnc import cache

    if not cache.enabled():
        return False
    folder = cache.cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return str(folder / f"lark-{lark.__version__}-{'strict' if strict else 'lalr'}.pickle")


# ---------------------------------------------------------------- syntax errors
# Friendly messages, chosen by Lark's ``match_examples``: a syntax error gets the
# message of the example below that fails in the same parser state (and, where several
# do, with the same kind of token). Each key is ``(message, fix)``.
_HEADER = "cell a(x: [I]) -> (y: [H]):\n"
_BODY = _HEADER + "    "
_SYNTAX_EXAMPLES: dict[tuple[str, str], list[str]] = {
    (
        "a file holds cells, and a cell starts with its header",
        "write `cell NAME(x: [I]) -> (y: [H]):` and indent the body below it",
    ): ["x = 1\n", "state h: [H] = 0\n", "cell\n", "cell a\n", "def a(x):\n", "cell a x\n"],
    (
        "the header needs `->` and the outputs after the inputs",
        "write the outputs after the inputs: `cell NAME(x: [I]) -> (y: [H]):`",
    ): ["cell a(x: [I]):\n", "cell a(x: [I]) (y: [H]):\n", "cell a(x: [I]) -> y: [H]:\n"],
    (
        "the header must end with a colon",
        "add `:` at the end of the `cell` line",
    ): [_HEADER[:-2] + "\n    y = x\n", _HEADER[:-2] + " y = x\n"],
    (
        "an input or output needs a name and a shape",
        "write each one as `name: [DIMS]`, e.g. `x: [I]`",
    ): [
        "cell a(x) -> (y: [H]):\n",
        "cell a(x: [I]) -> (y):\n",
        "cell a([I]) -> (y: [H]):\n",
        "cell a(x: [I], [I]) -> (y: [H]):\n",
        "cell a(x: [I]) -> ([H]):\n",
    ],
    (
        "a comma is missing between two inputs or outputs",
        "separate them with commas: `(x: [I], h: [H])`",
    ): ["cell a(x: [I] y: [I]) -> (y: [H]):\n", "cell a(x: [I]) -> (y: [H] z: [H]):\n"],
    (
        "the list of inputs is not closed",
        "close it with `)` before `->`",
    ): ["cell a(x: [I] -> (y: [H]):\n", "cell a(x: [I], -> (y: [H]):\n"],
    (
        "a shape is written in brackets",
        "write the dimensions in brackets: `[H]`, `[I, H]`, or `[]` for a scalar",
    ): [
        "cell a(x: I) -> (y: [H]):\n",
        "cell a(x: [I]) -> (y: H):\n",
        _BODY + "state h: H = 0\n",
        _BODY + "param W: H\n",
    ],
    (
        "a dimension is a sum of terms such as `H`, `4` or `2*H`",
        "write a whole number before `*` (`2*H`, not `H*2`) and join terms with `+`",
    ): [
        _BODY + "state h: [H*2] = 0\n",
        _BODY + "state h: [H-1] = 0\n",
        _BODY + "state h: [2H] = 0\n",
        _BODY + "state h: [2*] = 0\n",
        _BODY + "state h: [H+] = 0\n",
        _BODY + "state h: [H H] = 0\n",
        _BODY + "state h: [H,] = 0\n",
        "cell a(x: [I*2]) -> (y: [H]):\n",
        "cell a(x: [I H]) -> (y: [H]):\n",
    ],
    (
        "the body of a cell must be indented below its header",
        "indent each statement of the body, e.g. by four spaces",
    ): [_HEADER + "y = x\n", _HEADER],
    (
        "a cell needs at least one statement after its docstring",
        "add the statements that compute the next states and outputs",
    ): [_BODY + '"""A docstring."""\n'],
    (
        "a string can only be the docstring, on the first line of a cell's body",
        "write remarks as comments: `# ...`",
    ): [_BODY + '"""A docstring."""\n    "More."\n', _BODY + 'y = x\n    "Doc."\n'],
    (
        "a state needs a shape and an initial value",
        "write `state h: [H] = 0` (or `= learned`)",
    ): [
        _BODY + "state\n",
        _BODY + "state h\n",
        _BODY + "state h: [H]\n",
        _BODY + "state h = 0\n",
        _BODY + "state h: [H] 0\n",
    ],
    (
        "the initial value of a state must be a number or `learned`",
        "write e.g. `state h: [H] = 0`, `= -1.5` or `= learned` (a trained initial state)",
    ): [
        _BODY + "state h: [H] = \n",
        _BODY + "state h: [H] = learn\n",
        _BODY + "state h: [H] = 0 0\n",
    ],
    (
        "an initialiser follows `~` after the parameter's name and shape",
        "write `param W: [H, H] ~ orthogonal` (shape and initialiser are both optional)",
    ): [
        _BODY + "param\n",
        _BODY + "param W: [H, H] = orthogonal\n",
        _BODY + "param W = orthogonal\n",
        _BODY + "param W ~\n",
        _BODY + "param W ~ normal 1\n",
        _BODY + "param W [H, H]\n",
    ],
    (
        "the arguments of an initialiser are plain numbers",
        "write e.g. `~ normal(0.1)` or `~ uniform(-0.1, 0.1)`",
    ): [
        _BODY + "param W ~ normal(std=0.1)\n",
        _BODY + "param W ~ normal(0.1 0.2)\n",
        _BODY + "param W ~ normal(0.1\n",
        _BODY + "param W ~ normal(0.1,)\n",
    ],
    (
        "a statement must be `name = expression`, `name' = expression`, `state ...` or `param ...`",
        "check the start of this line: keywords are lower case and an assignment needs `=`",
    ): [
        _BODY + "x\n",
        _BODY + "x + 1 = y\n",
        _BODY + "tanh(x)\n",
        _BODY + "State h: [H] = 0\n",
        _BODY + "if x:\n",
        _BODY + "h'\n",
        _BODY + "1 = x\n",
        _BODY + "-x = 1\n",
        _BODY + "return x\n",
    ],
    (
        "an expression is incomplete",
        "complete the expression: an operator needs a value on each side",
    ): [
        _BODY + "y = \n",
        _BODY + "y = x +\n",
        _BODY + "y = x -\n",
        _BODY + "y = x * \n",
        _BODY + "y = x / \n",
        _BODY + "y = x @\n",
        _BODY + "y = x **\n",
        _BODY + "y = x <\n",
        _BODY + "y = -\n",
        _BODY + "y = tanh(\n",
        _BODY + "y = (\n",
        _BODY + "h' = \n",
    ],
    (
        "a call has an empty argument",
        "remove the extra comma or add the missing argument",
    ): [_BODY + "y = maximum(x, )\n", _BODY + "y = maximum(,x)\n"],
    (
        "square brackets are only for shapes",
        "join vectors with `concat(a, b)`; use parentheses to group",
    ): [_BODY + "y = [x, x]\n", _BODY + "y = x[0]\n", _BODY + "y = x + [1]\n"],
    (
        "two values stand side by side without an operator",
        "put an operator (`+`, `*`, `@`, ...) or a comma between them",
    ): [
        _BODY + "y = x x\n",
        _BODY + "y = x 2\n",
        _BODY + "y = 2 x\n",
        _BODY + "y = (x) x\n",
        _BODY + "y = h' x\n",
        _BODY + "y = tanh(x) x\n",
        _BODY + "y = tanh(x x)\n",
        _BODY + "y = (x x)\n",
        _BODY + "y = 2 (x)\n",
    ],
    (
        "`=` cannot appear inside an expression",
        "assign one name per line; to compare, use `<`, `>`, `<=` or `>=` (there is no `==`)",
    ): [_BODY + "y = x == 1\n", _BODY + "y = x = 1\n", _BODY + "y = tanh(x = 1)\n"],
    (
        "unbalanced parentheses: this `)` closes nothing",
        "remove it, or add the `(` it was meant to close",
    ): [_BODY + "y = (x))\n", _BODY + "y = tanh(x))\n", _BODY + "y = x)\n", _BODY + "y = 1)\n"],
    (
        "a comparison cannot be chained",
        "compare two values at a time: `(a < b) * (b < c)` is 1 where both hold",
    ): [_BODY + "y = x < 1 < 2\n"],
}

#: What a terminal of the grammar is called in a message.
_TERMINAL_NAMES = {
    "NAME": "a name",
    "PRIMED": "a primed name",
    "NUMBER": "a number",
    "STRING": "a docstring",
    "COMPARE": "a comparison",
    "_NL": "the end of the line",
    "_INDENT": "an indented line",
    "_DEDENT": "the end of the indented block",
    "$END": "the end of the file",
}

#: Characters that start no token, and what to say about them: (message, fix).
_BAD_CHARACTERS = {
    "'": (
        "a prime (') must come right after a state's name, as in `h'`",
        "remove the space before it, or the prime itself where no next value is meant",
    ),
    "^": ("`^` is not an operator", "write powers with `**`: `x ** 2`"),
    "!": (
        "`!=` is not an operator",
        "the comparisons are `<`, `>`, `<=` and `>=`; `where(c, a, b)` chooses by a condition",
    ),
    ";": ("one statement per line: `;` is not allowed", "put each statement on its own line"),
    '"': ("a string is not closed", 'end a docstring with the quotes it started with: `"""`'),
    ".": (
        "`.` cannot follow a value: cells have no attributes or methods",
        "for a transposed product swap the operands: `W @ x` instead of `x @ W.T`",
    ),
    "{": ("braces are not part of the language", "group with parentheses `( )`"),
    "}": ("braces are not part of the language", "group with parentheses `( )`"),
}


def _clip(token: str, width: int = 24) -> str:
    """A long token shortened for a message."""
    return token if len(token) <= width else token[: width - 3] + "..."


def _show_char(char: str) -> str:
    """A character for a message: ```$` ``, or its code point when it does not print
    (``U+000D``, a carriage return)."""
    if char.isprintable():
        return f"`{char}`"
    return f"U+{ord(char):04X}" + (" (a carriage return)" if char == "\r" else "")


def _context(exc: UnexpectedToken) -> tuple[int, frozenset[str]]:
    """What identifies the place of a syntax error: the LALR state and the terminals
    the parser would accept there."""
    return exc.state.position, frozenset(exc.accepts or exc.expected)


@functools.cache
def _example_table(parser: Lark) -> dict[tuple[int, frozenset[str]], dict[str, tuple[str, str]]]:
    """``context -> {token type: (message, fix)}``; the type ``""`` stands for any.

    This is Lark's ``match_examples`` computed once per parser (the numbers of the
    parser states differ from one build of the grammar to the next). Lark's own
    comparison also wants the parse stack of the same depth, which differs with optional
    parts before the error (a docstring, the ports of the header), so an example would
    match only a text shaped exactly like it.
    """
    table: dict[tuple[int, frozenset[str]], dict[str, tuple[str, str]]] = {}
    for label, examples in _SYNTAX_EXAMPLES.items():
        for text in examples:
            try:
                parser.parse(text)
            except UnexpectedToken as exc:
                by_type = table.setdefault(_context(exc), {})
                by_type.setdefault(exc.token.type, label)
                by_type.setdefault("", label)
    return table


def _match_example(exc: UnexpectedToken, parser: Lark) -> tuple[str, str] | None:
    by_type = _example_table(parser).get(_context(exc), {})
    return by_type.get(exc.token.type) or by_type.get("")


def _describe(terminal: str) -> str:
    if terminal in _TERMINAL_NAMES:
        return _TERMINAL_NAMES[terminal]
    for t in _lark().terminals:
        if t.name == terminal and t.pattern.type == "str":
            return f"`{t.pattern.value}`"
    return terminal


def _found(token: Token) -> str:
    if token.type in ("_NL", "_INDENT", "_DEDENT", "$END"):
        return _describe(token.type)
    return f"`{token}`"


def _error_span(exc: UnexpectedInput, text: str, filename: str) -> Span:
    """Where a syntax error is: the unexpected token, or the place of a bad character."""
    token = getattr(exc, "token", None)
    lines = _lines(text)
    if isinstance(token, Token) and token.type == "_INDENT":
        # Lark places the indent at the end of the line above; point at the indentation.
        line = token.end_line or exc.line
        return Span(filename, line, 1, line, max(2, token.end_column or 2), text)
    line, column = exc.line, exc.column
    if line is None or line < 1 or (isinstance(token, Token) and token.type == "$END"):
        line, column = len(lines), len(lines[-1]) + 1
    width = 1
    if isinstance(token, Token) and token.end_column and token.end_line == line:
        width = max(1, token.end_column - column)
    return Span(filename, line, column, line, column + width, text)


def _unclosed_bracket(parser: Lark, text: str, span: Span) -> Token | None:
    """The ``(`` or ``[`` still open at ``span``, if it was opened on an earlier line
    (inside brackets a line break does not end the statement)."""
    stack: list[Token] = []
    try:
        for token in parser.lex(text):
            if (token.line, token.column) >= (span.line, span.column):
                break
            if token.type in ("LPAR", "LSQB"):
                stack.append(token)
            elif token.type in ("RPAR", "RSQB") and stack:
                stack.pop()
    except (UnexpectedInput, DedentError):  # the text after the error need not lex
        pass
    return stack[-1] if stack and stack[-1].line < span.line else None


def _syntax_error(exc: UnexpectedInput, parser: Lark, text: str, filename: str) -> CellSyntaxError:
    span = _error_span(exc, text, filename)
    token = getattr(exc, "token", None)
    if isinstance(exc, UnexpectedCharacters):
        line = span.source_line()
        char = line[span.column - 1 : span.column]
        if char == '"':  # the lexer read `""` as an empty string: point at the first quote
            start = len(line[: span.column - 1].rstrip('"')) + 1
            quotes = len(line[start - 1 :]) - len(line[start - 1 :].lstrip('"'))
            span = Span(filename, span.line, start, span.line, start + min(quotes, 3), text)
        message, fix = _BAD_CHARACTERS.get(
            char,
            (
                f"unexpected character {_show_char(char)}",
                "remove it; grammar/README.md lists what a cell may hold",
            ),
        )
        return CellSyntaxError(message, span, fix)
    if (opened := _unclosed_bracket(parser, text, span)) is not None:
        line, column = opened.line, opened.column
        closer = ")" if opened == "(" else "]"
        return CellSyntaxError(
            f"this `{opened}` is never closed",
            Span(filename, line, column, line, column + 1, text),
            f"add the `{closer}` that closes it at the end of its statement",
            notes=((span, "the statement was still open here"),),
        )
    if isinstance(token, Token) and token.type == "_INDENT":
        return CellSyntaxError(
            "unexpected indentation: this line is indented more than the one above",
            span,
            "indent every statement of a cell body by the same amount",
        )
    found = _match_example(exc, parser) if isinstance(exc, UnexpectedToken) else None
    if found is not None:
        message, fix = found
        return CellSyntaxError(message, span, fix)
    expected = sorted({_describe(t) for t in getattr(exc, "expected", ()) or ()})
    what = _found(token) if isinstance(token, Token) else "text"
    if 0 < len(expected) <= 4:
        head = [", ".join(expected[:-1])] if len(expected) > 1 else []
        message = f"unexpected {what}: expected {' or '.join([*head, expected[-1]])}"
    else:
        message = f"unexpected {what} here"
    return CellSyntaxError(message, span, "compare with the examples in grammar/README.md")


# ---------------------------------------------------------------- tree to AST
class _ToAst(Transformer):
    def __init__(self, filename: str, text: str):
        super().__init__()
        self.filename = filename
        self.text = text
        self.lines = _lines(text)

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

    def _number(self, token: Token) -> float:
        value = float(token)
        if not math.isfinite(value):
            raise CellSyntaxError(
                f"the number {_clip(token)} is too large: it is infinite as a float",
                self._span(token),
                "write a number below 1.8e308",
            )
        if value == 0 and any(c in "123456789" for c in token.lower().partition("e")[0]):
            raise CellSyntaxError(
                f"the number {_clip(token)} is too small: it is 0 as a float",
                self._span(token),
                "write 0 if 0 is meant (the smallest float above 0 is about 4.9e-324)",
            )
        return value

    @v_args(meta=True)
    def start(self, meta, cells):
        return tuple(c for c in cells if isinstance(c, ast.Cell))

    @v_args(meta=True)
    def cell(self, meta, items):
        name, inputs, outputs, doc, *body = items
        # The cell's place ends with its last line that is not blank (Lark's includes
        # the line breaks after it, up to the next cell or past the end of the file).
        lines = self.lines[meta.line - 1 : meta.end_line]
        while len(lines) > 1 and not lines[-1].strip():
            lines.pop()
        end_line = meta.line + len(lines) - 1
        span = Span(self.filename, meta.line, meta.column, end_line, len(lines[-1]) + 1, self.text)
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
        if not token.isdigit():
            raise CellSyntaxError(
                f"a dimension must be a whole number, not {token}",
                self._span(token),
                "write a whole number such as `4`",
            )
        if len(token.lstrip("0")) > len(str(MAX_DIMENSION)) or int(token) > MAX_DIMENSION:
            raise CellSyntaxError(
                f"the dimension {_clip(token)} is too large",
                self._span(token),
                f"write a number of at most {MAX_DIMENSION}, or a dimension's name",
            )
        return int(token)

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
    lines = [line.removesuffix("\r") for line in body.strip("\r\n").split("\n")]
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
    text = text.removeprefix("\ufeff")  # the byte-order mark some editors write
    source = text if text.endswith("\n") else text + "\n"
    parser = _lark()
    try:
        tree = parser.parse(source)
    except UnexpectedInput as exc:
        raise _syntax_error(exc, parser, source, filename) from None
    except DedentError:
        raise _dedent_error(parser, source, filename) from None
    _check_depth(tree, source, filename)
    try:
        cells = _ToAst(filename, source).transform(tree)
    except VisitError as exc:
        if isinstance(exc.orig_exc, RnncError):
            raise exc.orig_exc from None
        raise
    return ast.Module(cells, filename)


#: The rules of the grammar that make an expression.
_EXPRESSIONS = {"add", "sub", "mul", "div", "matmul", "pow", "neg", "compare", "call"}
_EXPRESSIONS |= {"number", "name", "primed"}


def _check_depth(tree: Tree, text: str, filename: str) -> None:
    """Reject expressions deeper than :data:`ast.MAX_DEPTH` before the transformer, which
    recurses, meets them."""
    stack = [(tree, 0)]
    while stack:
        node, depth = stack.pop()
        depth += node.data in _EXPRESSIONS
        if depth > ast.MAX_DEPTH:
            meta = node.meta
            end = meta.end_column if meta.end_line == meta.line else meta.column + 1
            raise ast.too_deep_error(Span(filename, meta.line, meta.column, meta.line, end, text))
        children = [c for c in node.children if isinstance(c, Tree)]
        stack.extend((child, depth) for child in reversed(children))  # leftmost first


def _dedent_error(parser: Lark, text: str, filename: str) -> CellSyntaxError:
    """Lark's Indenter says only that a line's indentation is wrong, not which line:
    it is the one after the line break the indenter read last."""
    newline = parser.options.postlex.last_newline
    line = newline.end_line if newline is not None else 1
    indent = newline.rsplit("\n", 1)[-1] if newline is not None else ""
    return CellSyntaxError(
        "this line's indentation matches no enclosing block",
        Span(filename, line, 1, line, len(indent) + 1, text),
        "indent every statement of a cell body by the same amount",
    )
