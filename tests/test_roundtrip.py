"""Printing an AST and parsing the text gives the same AST: ``parse(format(m)) == m``.

The trees are random but syntactically valid (hypothesis): every statement and
expression form, operators nested at every precedence, numbers of every size, shapes
with sums and multiples, docstrings. They need not check (a random cell rarely has
consistent shapes); the round trip is about the syntax alone. Spans are left out of
AST equality, so the comparison is of structure only.
"""

from __future__ import annotations

import textwrap

from hypothesis import given, settings
from hypothesis import strategies as st

from rnnc.lang import ast
from rnnc.lang.parser import parse_module
from rnnc.lang.pretty import format_expr, format_module

KEYWORDS = {"cell", "state", "param", "learned"}

LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_"
names = st.builds(
    str.__add__, st.sampled_from(LETTERS), st.text(LETTERS + "0123456789", max_size=5)
).filter(lambda n: n not in KEYWORDS)

# Numbers as the parser makes them: never negative (a minus is a Neg node), finite.
magnitudes = st.one_of(
    st.integers(0, 10**18).map(float),
    st.floats(0, 1e300, allow_nan=False, allow_infinity=False),
    st.sampled_from([0.5, 1e-3, 2.5e-12, 1e15, 1e16, 5e-324]),
)
signed = st.one_of(magnitudes, magnitudes.map(lambda v: -v))

BINARY_OPS = ["+", "-", "*", "/", "@", "**", "<", ">", "<=", ">="]


def _expressions(max_leaves: int) -> st.SearchStrategy[ast.Expr]:
    leaves = st.one_of(
        magnitudes.map(ast.Number),
        names.map(ast.Name),
        names.map(ast.Primed),
    )

    def extend(inner: st.SearchStrategy[ast.Expr]) -> st.SearchStrategy[ast.Expr]:
        return st.one_of(
            st.builds(ast.BinOp, st.sampled_from(BINARY_OPS), inner, inner),
            st.builds(ast.Neg, inner),
            st.builds(ast.Call, names, st.lists(inner, max_size=3).map(tuple)),
        )

    return st.recursive(leaves, extend, max_leaves=max_leaves)


expressions = _expressions(12)

dim_terms = st.one_of(
    st.integers(0, 99).map(lambda c: (c, None)),
    names.map(lambda n: (1, n)),
    st.tuples(st.integers(0, 99), names),
)
dims = st.lists(dim_terms, min_size=1, max_size=3).map(lambda t: ast.Dim(tuple(t)))
shapes = st.lists(dims, max_size=3).map(lambda d: ast.Shape(tuple(d)))


def _docstring(lines: list[str]) -> str | None:
    """A docstring in the form the parser gives it: stripped, the common indentation of
    the lines after the first removed, no trailing spaces."""
    if not lines:
        return None
    first, rest = lines[0].strip(), textwrap.dedent("\n".join(x.rstrip() for x in lines[1:]))
    text = f"{first}\n{rest}".strip() if rest.strip() else first
    return text or None


docstrings = st.lists(
    st.text(
        st.characters(min_codepoint=32, max_codepoint=126, exclude_characters='"'), max_size=20
    ),
    max_size=4,
).map(_docstring)

initializers = st.builds(ast.Initializer, names, st.lists(signed, max_size=3).map(tuple))

statements = st.one_of(
    st.builds(ast.StateDecl, names, shapes, st.one_of(signed, st.just("learned"))),
    st.builds(ast.ParamDecl, names, st.none() | shapes, st.none() | initializers),
    st.builds(ast.Assign, names, _expressions(6), st.booleans()),
)

ports = st.lists(st.builds(ast.Port, names, shapes), max_size=3).map(tuple)

cells = st.builds(
    ast.Cell,
    names,
    ports,
    ports,
    docstrings,
    st.lists(statements, min_size=1, max_size=5).map(tuple),
)

modules = st.lists(cells, max_size=3).map(lambda c: ast.Module(tuple(c)))


@settings(max_examples=200, deadline=None)
@given(modules)
def test_module_round_trip(module: ast.Module):
    text = format_module(module)
    assert parse_module(text) == module, text


@settings(max_examples=200, deadline=None)
@given(expressions)
def test_expression_round_trip(expr: ast.Expr):
    # An expression alone, with the fewest parentheses the printer can use.
    text = f"cell c() -> ():\n    v = {format_expr(expr)}\n"
    (cell,) = parse_module(text).cells
    assert cell.body[0].value == expr, text


def test_printer_adds_only_needed_parentheses():
    x, y, z = ast.Name("x"), ast.Name("y"), ast.Name("z")
    cases = {
        "x - (y - z)": ast.BinOp("-", x, ast.BinOp("-", y, z)),
        "x - y - z": ast.BinOp("-", ast.BinOp("-", x, y), z),
        "x**y**z": ast.BinOp("**", x, ast.BinOp("**", y, z)),
        "(x**y)**z": ast.BinOp("**", ast.BinOp("**", x, y), z),
        "-x**2": ast.Neg(ast.BinOp("**", x, ast.Number(2))),
        "(-x)**2": ast.BinOp("**", ast.Neg(x), ast.Number(2)),
        "x**-y": ast.BinOp("**", x, ast.Neg(y)),
        "(x < y) < z": ast.BinOp("<", ast.BinOp("<", x, y), z),
        "2 * x @ y": ast.BinOp("@", ast.BinOp("*", ast.Number(2), x), y),
        "2 * (x @ y)": ast.BinOp("*", ast.Number(2), ast.BinOp("@", x, y)),
    }
    for text, expr in cases.items():
        assert format_expr(expr) == text
