"""Fuzzing the cell language: whatever the text, the parser and checker either accept it
or raise an :class:`rnnc.RnncError` that points inside the text, quickly, and never run
what the text says.

The cases (``tests/cellgen.py``): random text, cells of the corpus and random valid cells
after random mutations, and random valid cells, which must check to exactly the IR they
were made from. ``tests/fuzz/run.py`` runs 100,000 such cases; the regression tests at
the end hold the bugs that fuzzing found.
"""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import cellgen
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import rnnc
from rnnc.check import check_cell
from rnnc.errors import (
    CellSyntaxError,
    DuplicateDefinitionError,
    RnncWarning,
    ShapeInferenceError,
    UnknownNameError,
)
from rnnc.lang import ast
from rnnc.lang.parser import MAX_DIMENSION

CORPUS = cellgen.corpus()
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def check_text(text: str) -> str:
    with cellgen.time_box(10):
        return cellgen.outcome(text)


# ---------------------------------------------------------------- properties
@FUZZ
@given(cellgen.strategy(cellgen.random_text))
def test_random_text(text: str):
    check_text(text)


@FUZZ
@given(st.sampled_from(CORPUS), st.data())
def test_mutated_corpus(text: str, data):
    check_text(cellgen.mutated(cellgen.DrawChooser(data.draw), text))


@settings(FUZZ, max_examples=60)
@given(cellgen.valid_cells(safe=False), st.data())
def test_mutated_valid_cells(cell: cellgen.Generated, data):
    check_text(cellgen.mutated(cellgen.DrawChooser(data.draw), cell.text))


@settings(FUZZ, max_examples=100)
@given(cellgen.valid_cells(safe=False))
def test_random_valid_cell_checks_to_its_ir(cell: cellgen.Generated):
    # every parameter, shape and operation comes back: names, inference, precedence
    assert check_text(cell.text) == "ok"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RnncWarning)
        assert rnnc.parse(cell.text)["rand"] == cell.ir


@settings(FUZZ, max_examples=40)
@given(cellgen.valid_cells(safe=True))
def test_safe_cells_get_no_warning(cell: cellgen.Generated):
    # log(softplus(v) + 1) and the like are not numerics the checker warns about
    with warnings.catch_warnings():
        warnings.simplefilter("error", RnncWarning)
        assert rnnc.parse(cell.text)["rand"] == cell.ir


def test_every_kind_of_mutation_on_the_corpus():
    # with fixed seeds: each cell of the corpus with two kinds of mutation, each kind
    # on several cells
    kinds = cellgen.MUTATIONS
    for n, text in enumerate(CORPUS):
        for kind in (kinds[n % len(kinds)], kinds[(n * 5 + 3) % len(kinds)]):
            check_text(cellgen.mutate(cellgen.RandomChooser(f"{n}:{kind}"), text, kind))


# ---------------------------------------------------------------- no code runs
_AUDIT = """
import json
import sys
sys.path.insert(0, {tests!r})
import cellgen
texts = {texts!r}
cellgen.outcome(texts[0])   # the imports a parse needs, done before the watch starts
seen = []
watching = False
forbidden = ("exec", "compile", "import", "open", "os.", "subprocess.", "socket.",
             "ctypes.", "shutil.")

def hook(event, args):
    if watching and event.startswith(forbidden):
        seen.append(event)

sys.addaudithook(hook)
results = []
for text in texts:
    watching = True
    results.append(cellgen.outcome(text))
    watching = False
print(json.dumps([seen, results]))
"""


def test_a_cell_file_never_runs_code(tmp_path):
    # Python in a cell is a syntax error, a parameter's name or an unknown function;
    # an audit hook sees no exec, compile, import, open, process or socket meanwhile
    marker = tmp_path / "pwned"
    texts = []
    for payload in [*cellgen.PAYLOADS, f"__import__('os').system('touch {marker}')"]:
        for where in ("    y = {p}\n", "    y = x + {p}\n", "    {p}\n", "    param {p}\n"):
            texts.append("cell c(x: [I]) -> (y: [I]):\n" + where.format(p=payload))
    texts.append('cell c(x: [I]) -> (y: [I]):\n    """{}""".format(__import__("os"))\n    y = x\n')
    texts.append("cell c(x: [I]) -> (y: [I]):\n    y = x  # __import__('os').system('ls')\n")
    texts.append("cell c(x: [I]) -> (y: [I]):\n    y = __import__ * x\n")
    script = _AUDIT.format(tests=str(cellgen.ROOT / "tests"), texts=texts)
    run = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    seen, results = json.loads(run.stdout)
    assert seen == []
    assert not marker.exists()
    assert all(r == "ok" or r.endswith("Error") for r in results)
    assert results[-1] == "ok"  # `__import__` is only a name: a parameter


# ---------------------------------------------------------------- regressions
HEAD = "cell a(x: [I]) -> (y: [I]):\n"


def _error(text: str, error=CellSyntaxError):
    assert check_text(text) == error.__name__  # and the place is inside the text
    with pytest.raises(error) as info:
        rnnc.parse(text, "t.cell")
    return info.value


@pytest.mark.parametrize(
    "expr",
    [
        " + ".join(["x"] * 201),
        "-" * 200 + "x",
        " ** ".join(["x"] * 201),
        "tanh(" * 200 + "x" + ")" * 200,
        "(" * 5000 + "x" + ")" * 5000 + " + " + "tanh(" * 3000 + "x" + ")" * 3000,
    ],
    ids=["sum", "neg", "pow", "call", "mixed"],
)
def test_deep_expression_is_an_error_not_a_recursion_error(expr: str):
    # found by fuzzing: RecursionError (and VisitError) from 1,000 levels on
    exc = _error(HEAD + f"    y = {expr}\n")
    assert exc.message == "this expression is nested more than 200 levels deep"
    assert exc.line == 2


def test_expression_of_the_largest_depth_checks():
    for expr in [" + ".join(["x"] * 200), "-" * 199 + "x", "tanh(" * 199 + "x" + ")" * 199]:
        rnnc.parse(HEAD + f"    y = {expr}\n")


def test_deep_tree_from_python_is_an_error():
    # the Python DSL builds trees without the parser: the checker measures them too
    x = ast.Name("x", ast.NOWHERE)
    value: ast.Expr = x
    for _ in range(500):
        value = ast.Neg(value, ast.NOWHERE)
    port = ast.Port("x", ast.Shape((ast.Dim(((1, "I"),)),)))
    out = ast.Port("y", port.shape)
    cell = ast.Cell("a", (port,), (out,), None, (ast.Assign("y", value),))
    with pytest.raises(CellSyntaxError, match="nested more than 200 levels"):
        check_cell(cell)


@pytest.mark.parametrize("odd", ["\x0c", "\u2028", "\x85", "\x1c", "\x0b"])
def test_lines_are_counted_as_the_parser_counts_them(odd: str):
    # found by fuzzing: str.splitlines broke lines at these characters, so the caret
    # was drawn under the wrong line
    exc = _error(f"# a{odd}comment\n" + HEAD + "    y = tahn(x)\n", UnknownNameError)
    assert (exc.line, exc.column) == (3, 9)
    assert str(exc).splitlines()[1:3] == ["        y = tahn(x)", "            ^^^^"]


def test_a_stray_carriage_return_is_part_of_its_line():
    # found by the long fuzz run (case 93540): "\r\r\n" ends a line with a "\r" in it
    exc = _error("\x85=,e]\r\r\nH@ ~[\n#0\u2028t")
    assert exc.span.source_line() == "\x85=,e]\r"
    assert exc.message == "unexpected character U+0085"


def test_unclosed_single_quote_points_at_it():
    # found by fuzzing: the caret under an unclosed `"` reached past the line's end
    exc = _error(HEAD + '    y = x "\n')
    assert (exc.span.column, exc.span.end_column) == (11, 12)
    assert exc.message == "a string is not closed"


def test_a_character_that_does_not_print_is_named():
    assert _error(HEAD + "    y = x\x00\n").message == "unexpected character U+0000"
    text = HEAD.replace("\n", "\r") + "    y = x\n"
    assert _error(text).message == "unexpected character U+000D (a carriage return)"


@pytest.mark.parametrize(
    "text, message",
    [
        (HEAD + "    y = x * 1e999\n", "the number 1e999 is too large: it is infinite as a float"),
        (
            HEAD + "    state h: [I] = -1e400\n    h' = h\n    y = x\n",
            "the number 1e400 is too large: it is infinite as a float",
        ),
        (HEAD + "    y = x * 1E-400\n", "the number 1E-400 is too small: it is 0 as a float"),
        (
            "cell a(x: [1e999]) -> (y: [I]):\n    y = x\n",
            "a dimension must be a whole number, not 1e999",
        ),
        (
            "cell a(x: [" + "9" * 5000 + "]) -> (y: [I]):\n    y = x\n",
            "the dimension 999999999999999999999... is too large",
        ),
        (
            f"cell a(x: [{MAX_DIMENSION + 1}*H]) -> (y: [I]):\n    y = x\n",
            f"the dimension {MAX_DIMENSION + 1} is too large",
        ),
    ],
    ids=["inf", "state_init", "underflow", "float_dimension", "5000_digits", "over_the_limit"],
)
def test_numbers_out_of_range(text: str, message: str):
    # found by fuzzing: 1e999 became inf, a dimension 1e999 raised OverflowError and one
    # of 5,000 digits ValueError (Python's limit on converting long strings to int)
    assert _error(text).message == message


@pytest.mark.parametrize("zero", ["0", "0.0", "0e-400", "0E-400", "0.000e5"])
def test_zero_in_any_spelling_is_zero(zero: str):
    (cell,) = rnnc.parse(HEAD + f"    y = x * {zero}\n").values()
    assert cell.outputs["y"].args[1].value == 0.0


def test_wrong_indentation_after_a_tab_has_a_place():
    # found by fuzzing: the error had no place when the lines mixed tabs and spaces
    exc = _error(HEAD + "\ty = x\n    z = x\n")
    assert (exc.line, exc.column) == (3, 1)
    assert exc.message == "this line's indentation matches no enclosing block"


def test_wrong_indentation_after_brackets_is_found():
    # the line inside the brackets does not count; the wrong one is after them
    exc = _error(HEAD + "    y = (x +\n  x)\n  z = x\n")
    assert (exc.line, exc.column) == (4, 1)


def test_the_place_of_a_cell_ends_with_its_last_line():
    # found by fuzzing: a cell's place ran past the end of a file ending in spaces
    text = HEAD + "    y = x\n" + HEAD + "    y = x\n   "
    exc = _error(text, DuplicateDefinitionError)
    assert (exc.span.line, exc.span.end_line, exc.span.end_column) == (3, 4, 10)


def test_concat_of_a_local_value_names_the_parameter_to_declare():
    # the fix named `W` when the unknown length came through a local value
    exc = _error(HEAD + "    v = x @ W_v\n    y = concat(v)\n", ShapeInferenceError)
    assert exc.fix.endswith("declare `param W_v: [I, N]`, N standing for the size you mean")


def test_payload_as_a_parameter_name_is_only_a_name():
    cell = rnnc.parse(HEAD + "    y = x * __import__\n")["a"]
    assert list(cell.params) == ["__import__"]


def test_fuzz_script_shows_a_case():
    run = subprocess.run(
        [sys.executable, str(cellgen.ROOT / "tests" / "fuzz" / "run.py"), "--show", "7"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("# case 7 (mutant)\n")
    cellgen.outcome(run.stdout)


# ---------------------------------------------------------------- numerics warnings
def _warnings(body: str) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rnnc.parse(HEAD + "    state h: [I] = 0\n    h' = tanh(x @ W + h)\n" + body, "t.cell")
    return [str(w.message) for w in caught if issubclass(w.category, RnncWarning)]


@pytest.mark.parametrize(
    "expr, what",
    [
        ("log(-1)", "`log` of `-1`, which is never positive: the result is NaN"),
        ("log(0 * x)", "`log` of `0 * x`, which is never positive: the result is -inf"),
        (
            "log(-softplus(x))",
            "`log` of `-softplus(x)`, which is never positive: the result is NaN",
        ),
        (
            "sqrt(0 - exp(h'))",
            "`sqrt` of `0 - exp(h')`, which is never positive: the result is NaN",
        ),
        (
            "log(-relu(x))",
            "`log` of `-relu(x)`, which is never positive: the result is NaN or -inf",
        ),
        ("log(relu(x))", "`log` of `relu(x)`, which is 0 for some inputs: log(0) is -inf"),
        ("log(maximum(x, 0) * 2)", "`log` of `maximum(x, 0) * 2`, which is 0 for some inputs"),
        ("log(tanh(x > 1))", "`log` of `tanh(x > 1)`, which is 0 for some inputs"),
        ("sqrt(relu(h))", "`sqrt` of `relu(h)`, which is 0 for some inputs: the derivative"),
    ],
)
def test_log_and_sqrt_of_values_that_are_evidently_not_positive(expr: str, what: str):
    (message,) = _warnings(f"    y = x + {expr}\n")
    column = len("    y = x + log(") + 1 if expr.startswith("log") else len("    y = x + sqrt(") + 1
    assert message.startswith(f"t.cell:4:{column}: warning: {what}")


def test_numerics_warning_text():
    (message,) = _warnings("    r = relu(x)\n    y = log(r)\n")
    assert message == (
        "t.cell:5:13: warning: `log` of `r`, which is 0 for some inputs: log(0) is -inf\n"
        "        y = log(r)\n"
        "                ^\n"
        "fix: add a small constant: `log(r + 1e-6)`\n"
        "see: https://github.com/rnnc/rnnc/blob/main/docs/errors.md#nonpositiveargumentwarning"
    )
    (message,) = _warnings("    y = sqrt(x < 1)\n")
    assert "\nfix: add a small constant: `sqrt((x < 1) + 1e-6)`\n" in message
    (message,) = _warnings("    y = log(-exp(x))\n")
    assert "\nfix: `log` needs a positive value: check the signs in `-exp(x)`\n" in message


@pytest.mark.parametrize(
    "expr",
    [
        "log(x)",  # an input may have any sign: not evident
        "sqrt(h)",
        "log(relu(x) + 1e-6)",
        "log(softplus(x))",
        "log(sigmoid(x) * exp(h))",
        "sqrt(x ** 2 + 1)",
        "log(abs(x))",  # 0 only where x is exactly 0
        "log(1 - exp(x))",  # any sign
        "log(maximum(x, 1))",
        "log(where(x > 0, x, 1))",
        "sqrt(relu(x) - relu(h))",
        "log(h' * h' + 1)",
    ],
)
def test_no_numerics_warning_where_nothing_is_evident(expr: str):
    assert _warnings(f"    y = x + {expr}\n") == []
