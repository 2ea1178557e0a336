"""Every error the cell language produces, with the exact text a user sees.

Each case is a small cell with one mistake and the full rendered message
(``str(exc)``): the place, the message, the source line with a caret, the notes that
point at the other places involved, the fix and the link to docs/errors.md. A change
of wording is a change of these texts: review it as a user would read it.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest

import rnnc
from rnnc import errors
from rnnc.compile import parse_file
from rnnc.errors import (
    ArgumentCountError,
    CellSyntaxError,
    DuplicateDefinitionError,
    MissingNextStateError,
    MissingOutputError,
    NextStateShapeError,
    RnncError,
    RnncWarning,
    ShapeInferenceError,
    ShapeMismatchError,
    Span,
    UnknownNameError,
    UseBeforeDefinitionError,
)
from rnnc.lang.parser import _SYNTAX_EXAMPLES, parse_module

DOCS = Path(__file__).resolve().parents[1] / "docs" / "errors.md"
HEAD = "cell rnn(x: [I]) -> (y: [H]):\n    state h: [H] = 0\n"

#: The errors a cell's text can produce (the others are about arguments and files).
LANGUAGE_ERRORS = {
    CellSyntaxError,
    UnknownNameError,
    DuplicateDefinitionError,
    UseBeforeDefinitionError,
    ShapeMismatchError,
    NextStateShapeError,
    ShapeInferenceError,
    MissingNextStateError,
    MissingOutputError,
    ArgumentCountError,
}

CASES = [
    pytest.param(
        "cell rnn(x: [I]) -> (y: [H])\n    y = x @ W\n",
        CellSyntaxError,
        """\
rnn.cell:1:29: error: the header must end with a colon
    cell rnn(x: [I]) -> (y: [H])
                                ^
fix: add `:` at the end of the `cell` line
see: https://github.com/rnnc/rnnc/blob/main/docs/errors.md#cellsyntaxerror
""",
        id="syntax_missing_colon",
    ),
    pytest.param(
        HEAD + "    h' = tanh(x @ W + h @ U)\n    y = h' *\n",
        CellSyntaxError,
        """\
rnn.cell:4:13: error: an expression is incomplete
        y = h' *
                ^
fix: complete the expression: an operator needs a value on each side
see: https://github.com/rnnc/rnnc/blob/main/docs/errors.md#cellsyntaxerror
""",
        id="syntax_incomplete",
    ),
    pytest.param(
        HEAD + "    h' = tanh(x @ W + h @ U\n    y = h'\n",
        CellSyntaxError,
        """\
rnn.cell:3:14: error: this `(` is never closed
        h' = tanh(x @ W + h @ U
                 ^
rnn.cell:4:5: note: the statement was still open here
        y = h'
        ^
fix: add the `)` that closes it at the end of its statement
see: https://github.com/rnnc/rnnc/blob/main/docs/errors.md#cellsyntaxerror
""",
        id="syntax_unclosed",
    ),
    pytest.param(
        "cell sq(x: [I]) -> (y: [I]):\n    y = x ^ 2\n",
        CellSyntaxError,
        """\
rnn.cell:2:11: error: `^` is not an operator
        y = x ^ 2
              ^
fix: write powers with `**`: `x ** 2`
see: https://github.com/rnnc/rnnc/blob/main/docs/errors.md#cellsyntaxerror
""",
        id="syntax_character",
    ),
    pytest.param(
        HEAD + "    h' = tanh(x @ W + h @ U)\n        y = h'\n",
        CellSyntaxError,
        """\
rnn.cell:4:1: error: unexpected indentation: this line is indented more than the one above
            y = h'
    ^^^^^^^^
fix: indent every statement of a cell body by the same amount
see: https://github.com/rnnc/rnnc/blob/main/docs/errors.md#cellsyntaxerror
""",
        id="syntax_indent",
    ),
    pytest.param(
        HEAD + "    h' = tanh(x @ W + h @ U)\n  y = h'\n",
        CellSyntaxError,
        """\
rnn.cell:4:1: error: this line's indentation matches no enclosing block
      y = h'
    ^^
fix: indent every statement of a cell body by the same amount
see: https://github.com/rnnc/rnnc/blob/main/docs/errors.md#cellsyntaxerror
""",
        id="syntax_dedent",
    ),
    pytest.param(
        "cell half(x: [I]) -> (y: [1.5]):\n    y = x @ W\n",
        CellSyntaxError,
        """\
rnn.cell:1:27: error: a dimension must be a whole number, not 1.5
    cell half(x: [I]) -> (y: [1.5]):
                              ^^^
fix: write a whole number such as `4`
see: https://github.com/rnnc/rnnc/blob/main/docs/errors.md#cellsyntaxerror
""",
        id="syntax_fraction",
    ),
    pytest.param(
        HEAD + "    state c: [H] = 0 0\n",
        CellSyntaxError,
        """\
rnn.cell:3:22: error: the initial value of a state must be a number or `learned`
        state c: [H] = 0 0
                         ^
fix: write e.g. `state h: [H] = 0`, `= -1.5` or `= learned` (a trained initial state)
see: https://github.com/rnnc/rnnc/blob/main/docs/errors.md#cellsyntaxerror
""",
        id="syntax_fallback",
    ),
    pytest.param(
        HEAD + "    h' = tahn(x @ W + h @ U)\n    y = h'\n",
        UnknownNameError,
        """\
rnn.cell:3:10: error: unknown function `tahn`
        h' = tahn(x @ W + h @ U)
             ^^^^
fix: did you mean `tanh`? The built-in functions are: sigmoid, tanh, relu, exp, log, sqrt, abs, softplus, layer_norm, maximum, minimum, where, concat
see: https://github.com/rnnc/rnnc/blob/main/docs/errors.md#unknownnameerror
""",
        id="unknown_function",
    ),
    pytest.param(
        HEAD + "    param W: [I, H] ~ xavier\n    h' = tanh(x @ W + h @ U)\n    y = h'\n",
        UnknownNameError,
        """\
rnn.cell:3:23: error: unknown initialiser `xavier`
        param W: [I, H] ~ xavier
                          ^^^^^^
fix: the initialisers are: uniform, normal, glorot, orthogonal, zeros, ones, constant
see: https://github.com/rnnc/rnnc/blob/main/docs/errors.md#unknownnameerror
""",
        id="unknown_initializer",
    ),
    pytest.param(
        HEAD + "    h' = tanh(x @ W + h @ U)\n    y' = h'\n",
        UnknownNameError,
        """\
rnn.cell:4:5: error: `y'` is the next value of `y`, but `y` is not a state
        y' = h'
        ^^
fix: an output is assigned without a prime: `y = ...`
see: https://github.com/rnnc/rnnc/blob/main/docs/errors.md#unknownnameerror
""",
        id="prime_on_output",
    ),
    pytest.param(
        HEAD + "    g = x @ W\n    h' = tanh(g' + h @ U)\n    y = h'\n",
        UnknownNameError,
        """\
rnn.cell:4:15: error: `g'` reads the next value of `g`, but `g` is not a state
        h' = tanh(g' + h @ U)
                  ^^
fix: `g` is a local value, which has no next value: write `g`
see: https://github.com/rnnc/rnnc/blob/main/docs/errors.md#unknownnameerror
""",
        id="prime_on_binding_read",
    ),
    pytest.param(
        HEAD + "    h' = tanh(x @ W + h @ U)\n    y = sigmoid * h'\n",
        UnknownNameError,
        """\
rnn.cell:4:9: error: `sigmoid` is a function, not a value
        y = sigmoid * h'
            ^^^^^^^
fix: call it: `sigmoid(...)`
see: https://github.com/rnnc/rnnc/blob/main/docs/errors.md#unknownnameerror
""",
        id="function_as_value",
    ),
    pytest.param(
        HEAD + "    a = x @ W\n    a = h @ U\n    h' = tanh(a)\n    y = h'\n",
        DuplicateDefinitionError,
        """\
rnn.cell:4:5: error: `a` is assigned twice
        a = h @ U
        ^
rnn.cell:3:5: note: first assigned here
        a = x @ W
        ^
fix: assign each name once; give the second value another name
see: https://github.com/rnnc/rnnc/blob/main/docs/errors.md#duplicatedefinitionerror
""",
        id="assigned_twice",
    ),
    pytest.param(
        HEAD + "    x = x * 2\n    h' = tanh(x @ W + h @ U)\n    y = h'\n",
        DuplicateDefinitionError,
        """\
rnn.cell:3:5: error: cannot assign to `x`: it is an input
        x = x * 2
        ^
rnn.cell:1:10: note: `x` is defined here
    cell rnn(x: [I]) -> (y: [H]):
             ^
fix: give the value another name
see: https://github.com/rnnc/rnnc/blob/main/docs/errors.md#duplicatedefinitionerror
""",
        id="assign_to_input",
    ),
    pytest.param(
        HEAD + "    h = tanh(x @ W + h @ U)\n    y = h\n",
        DuplicateDefinitionError,
        """\
rnn.cell:3:5: error: cannot assign to `h`: it is a state
        h = tanh(x @ W + h @ U)
        ^
rnn.cell:2:11: note: `h` is defined here
        state h: [H] = 0
              ^
fix: give the value another name, or write `h' = ...` for the next value of a state
see: https://github.com/rnnc/rnnc/blob/main/docs/errors.md#duplicatedefinitionerror
""",
        id="assign_to_state",
    ),
    pytest.param(
        "cell a(x: [I], x: [I]) -> (y: [I]):\n    y = x\n",
        DuplicateDefinitionError,
        """\
rnn.cell:1:16: error: `x` is already defined as an input
    cell a(x: [I], x: [I]) -> (y: [I]):
                   ^
rnn.cell:1:8: note: `x` is first defined here
    cell a(x: [I], x: [I]) -> (y: [I]):
           ^
fix: rename one of the two definitions of `x`
see: https://github.com/rnnc/rnnc/blob/main/docs/errors.md#duplicatedefinitionerror
""",
        id="duplicate_port",
    ),
    pytest.param(
        "cell a(x: [I]) -> (y: [I]):\n    y = x\n\ncell a(x: [I]) -> (y: [I]):\n    y = -x\n",
        DuplicateDefinitionError,
        """\
rnn.cell:4:1: error: a cell named `a` is already defined in this file
    cell a(x: [I]) -> (y: [I]):
    ^^^^^^^^^^^^^^^^^^^^^^^^^^^
rnn.cell:1:1: note: the first one is here
    cell a(x: [I]) -> (y: [I]):
    ^^^^^^^^^^^^^^^^^^^^^^^^^^^
fix: give each cell of a file its own name
see: https://github.com/rnnc/rnnc/blob/main/docs/errors.md#duplicatedefinitionerror
""",
        id="duplicate_cell",
    ),
    pytest.param(
        "cell rnn(x: [I]) -> (y: [H]):\n    state h: [H] = learned\n    param h0: [H]\n    h' = tanh(x @ W + h @ U + h0)\n    y = h'\n",
        DuplicateDefinitionError,
        """\
rnn.cell:2:11: error: state `h` is learned, which makes a parameter `h0`, but `h0` is already defined as a parameter
        state h: [H] = learned
              ^
rnn.cell:3:11: note: `h0` is defined here
        param h0: [H]
              ^^
fix: rename `h0`: the name is taken by the learned initial state
see: https://github.com/rnnc/rnnc/blob/main/docs/errors.md#duplicatedefinitionerror
""",
        id="learned_clash",
    ),
    pytest.param(
        HEAD + "    h' = tanh(pre)\n    pre = x @ W + h @ U\n    y = h'\n",
        UseBeforeDefinitionError,
        """\
rnn.cell:3:15: error: `pre` is used before it is defined
        h' = tanh(pre)
                  ^^^
rnn.cell:4:5: note: `pre` is defined here
        pre = x @ W + h @ U
        ^^^
fix: move the line that defines `pre` above this one
see: https://github.com/rnnc/rnnc/blob/main/docs/errors.md#usebeforedefinitionerror
""",
        id="use_before",
    ),
    pytest.param(
        "cell s(x: [I]) -> (y: [I]):\n    total = total + x\n    y = total\n",
        UseBeforeDefinitionError,
        """\
rnn.cell:2:13: error: `total` is used in its own definition
        total = total + x
                ^^^^^
fix: a value cannot depend on itself within one step; to carry `total` to the next step, make it a state (`state total: [H] = 0`) and write `total' = ...`
see: https://github.com/rnnc/rnnc/blob/main/docs/errors.md#usebeforedefinitionerror
""",
        id="self_reference",
    ),
    pytest.param(
        HEAD + "    y = h'\n    h' = tanh(x @ W + h @ U)\n",
        UseBeforeDefinitionError,
        """\
rnn.cell:3:9: error: `h'` is used before it is defined
        y = h'
            ^^
rnn.cell:4:5: note: `h'` is defined here
        h' = tanh(x @ W + h @ U)
        ^^
fix: move the line `h' = ...` above this one, or read the old value `h`
see: https://github.com/rnnc/rnnc/blob/main/docs/errors.md#usebeforedefinitionerror
""",
        id="next_read_early",
    ),
    pytest.param(
        HEAD + "    h' = tanh(x + h)\n    y = h'\n",
        ShapeMismatchError,
        """\
rnn.cell:3:19: error: shape mismatch in `x + h`: `x` has shape [I] but `h` has shape [H]
        h' = tanh(x + h)
                      ^
rnn.cell:3:15: note: `x` has shape [I]
        h' = tanh(x + h)
                  ^
fix: elementwise operations need equal shapes (or a scalar on one side): `x @ W`, with a parameter W: [I, H], turns `x` into [H]; if I and H are meant to be equal, use one name
see: https://github.com/rnnc/rnnc/blob/main/docs/errors.md#shapemismatcherror
""",
        id="elementwise_mismatch",
    ),
    pytest.param(
        HEAD + "    param W: [I, H]\n    h' = tanh(x @ W + h @ W)\n    y = h'\n",
        ShapeMismatchError,
        """\
rnn.cell:4:27: error: matrix product `h @ W`: the last dimension of `h` [H] differs from the first of `W` [I, H]
        h' = tanh(x @ W + h @ W)
                              ^
rnn.cell:4:23: note: `h` has shape [H]
        h' = tanh(x @ W + h @ W)
                          ^
rnn.cell:4:19: note: parameter `W` got its shape from this use
        h' = tanh(x @ W + h @ W)
                      ^
fix: the inner dimensions of `a @ b` must be equal; check the orientation (rnnc writes `x @ W` with W: [in, out])
see: https://github.com/rnnc/rnnc/blob/main/docs/errors.md#shapemismatcherror
""",
        id="matmul_mismatch",
    ),
    pytest.param(
        HEAD + "    h' = tanh(x @ W + h @ U)\n    y = x\n",
        ShapeMismatchError,
        """\
rnn.cell:4:9: error: output `y` is declared with shape [H] but is assigned a value of shape [I]
        y = x
            ^
rnn.cell:1:22: note: `y` is declared here
    cell rnn(x: [I]) -> (y: [H]):
                         ^
fix: change the value or the declared shape in the header
see: https://github.com/rnnc/rnnc/blob/main/docs/errors.md#shapemismatcherror
""",
        id="output_shape",
    ),
    pytest.param(
        "cell s(x: [I]) -> (y: [I]):\n    param k: []\n    y = x @ k\n",
        ShapeMismatchError,
        """\
rnn.cell:3:13: error: `k` has shape []; `@` multiplies vectors and matrices
        y = x @ k
                ^
fix: multiply by a scalar with `*`
see: https://github.com/rnnc/rnnc/blob/main/docs/errors.md#shapemismatcherror
""",
        id="matmul_scalar",
    ),
    pytest.param(
        "cell s(x: [I]) -> (y: [H]):\n    param W: [I, H, H]\n    y = x @ W\n",
        ShapeMismatchError,
        """\
rnn.cell:3:13: error: `W` has shape [I, H, H]; `@` multiplies vectors and matrices
        y = x @ W
                ^
fix: give `W` one or two dimensions, e.g. [I, H]
see: https://github.com/rnnc/rnnc/blob/main/docs/errors.md#shapemismatcherror
""",
        id="matmul_rank3",
    ),
    pytest.param(
        "cell s(x: [I]) -> (y: [I + 1]):\n    param k: []\n    y = concat(x, k)\n",
        ShapeMismatchError,
        """\
rnn.cell:3:19: error: concat joins vectors, but `k` has shape []
        y = concat(x, k)
                      ^
fix: pass vectors only; a parameter can be declared as one, e.g. `param k: [1]`
see: https://github.com/rnnc/rnnc/blob/main/docs/errors.md#shapemismatcherror
""",
        id="concat_scalar",
    ),
    pytest.param(
        "cell n(x: []) -> (y: []):\n    y = layer_norm(x)\n",
        ShapeMismatchError,
        """\
rnn.cell:2:20: error: `layer_norm` normalises over the last axis of a vector, not a scalar
        y = layer_norm(x)
                       ^
fix: apply it to a vector, e.g. a matrix product `layer_norm(x @ W)`
see: https://github.com/rnnc/rnnc/blob/main/docs/errors.md#shapemismatcherror
""",
        id="layer_norm_scalar",
    ),
    pytest.param(
        HEAD + "    h' = tanh(x)\n    y = h'\n",
        NextStateShapeError,
        """\
rnn.cell:3:10: error: the next value of `h` has shape [I], but state `h` has shape [H]
        h' = tanh(x)
             ^^^^^^^
rnn.cell:2:11: note: state `h` is declared here
        state h: [H] = 0
              ^
fix: compute a value of shape [H] for `h'`, or change the state's declared shape
see: https://github.com/rnnc/rnnc/blob/main/docs/errors.md#nextstateshapeerror
""",
        id="next_state_shape",
    ),
    pytest.param(
        HEAD + "    hidden = tanh(x @ W)\n    h' = tanh(hidden @ V + h @ U)\n    y = h'\n",
        ShapeInferenceError,
        """\
rnn.cell:3:23: error: cannot infer the shape of parameter `W` (so far [I, ?])
        hidden = tanh(x @ W)
                          ^
fix: declare it with its shape, e.g. `param W: [I, N]`, N standing for the size you mean
see: https://github.com/rnnc/rnnc/blob/main/docs/errors.md#shapeinferenceerror
""",
        id="uninferable",
    ),
    pytest.param(
        HEAD + "    extra = x @ E\n    h' = tanh(x @ W + h @ U)\n    y = h'\n",
        ShapeInferenceError,
        """\
rnn.cell:3:17: error: cannot infer the shape of parameter `E` (so far [I, ?])
        extra = x @ E
                    ^
rnn.cell:3:5: note: `extra` is never used, so nothing fixes it
        extra = x @ E
        ^^^^^
fix: declare it with its shape, e.g. `param E: [I, N]`, N standing for the size you mean
see: https://github.com/rnnc/rnnc/blob/main/docs/errors.md#shapeinferenceerror
""",
        id="unused_binding",
    ),
    pytest.param(
        HEAD + "    M = A @ B\n    h' = tanh(x @ W + h @ M)\n    y = h'\n",
        ShapeInferenceError,
        """\
rnn.cell:3:9: error: cannot infer the shapes of both sides of `A @ B`
        M = A @ B
            ^^^^^
fix: declare one of them with its shape, e.g. `param A: [H, H]`
see: https://github.com/rnnc/rnnc/blob/main/docs/errors.md#shapeinferenceerror
""",
        id="both_unknown",
    ),
    pytest.param(
        HEAD + "    h' = tanh(concat(x, x @ V) @ W + h @ U)\n    y = h'\n",
        ShapeInferenceError,
        """\
rnn.cell:3:25: error: cannot infer the length of `x @ V` inside concat (so far [?])
        h' = tanh(concat(x, x @ V) @ W + h @ U)
                            ^^^^^
fix: concat needs the shapes of its arguments where it stands: declare `param V: [I, N]`, N standing for the size you mean
see: https://github.com/rnnc/rnnc/blob/main/docs/errors.md#shapeinferenceerror
""",
        id="concat_unknown",
    ),
    pytest.param(
        HEAD + "    param V ~ glorot\n    h' = tanh(x @ W + h @ U)\n    y = h'\n",
        ShapeInferenceError,
        """\
rnn.cell:3:11: error: parameter `V` is declared without a shape and never used
        param V ~ glorot
              ^
fix: use it, give it a shape (`param V: [H]`) or delete the line
see: https://github.com/rnnc/rnnc/blob/main/docs/errors.md#shapeinferenceerror
""",
        id="declared_unused",
    ),
    pytest.param(
        HEAD + "    state c: [H] = 0\n    h' = tanh(x @ W + h @ U)\n    y = h'\n",
        MissingNextStateError,
        """\
rnn.cell:3:11: error: state `c` has no next value
        state c: [H] = 0
              ^
fix: add a line `c' = ...` that computes the state of the next step
see: https://github.com/rnnc/rnnc/blob/main/docs/errors.md#missingnextstateerror
""",
        id="missing_next",
    ),
    pytest.param(
        "cell rnn(x: [I]) -> (y: [H], z: [H]):\n    state h: [H] = 0\n    h' = tanh(x @ W + h @ U)\n    y = h'\n",
        MissingOutputError,
        """\
rnn.cell:1:30: error: output `z` is never assigned
    cell rnn(x: [I]) -> (y: [H], z: [H]):
                                 ^
fix: add a line `z = ...` to the cell (for instance `z = h'`)
see: https://github.com/rnnc/rnnc/blob/main/docs/errors.md#missingoutputerror
""",
        id="missing_output",
    ),
    pytest.param(
        "cell f(x: [I]) -> (y: [H]):\n    z = x @ W\n",
        MissingOutputError,
        """\
rnn.cell:1:20: error: output `y` is never assigned
    cell f(x: [I]) -> (y: [H]):
                       ^
fix: add a line `y = ...` to the cell
see: https://github.com/rnnc/rnnc/blob/main/docs/errors.md#missingoutputerror
""",
        id="missing_output_stateless",
    ),
    pytest.param(
        HEAD + "    h' = tanh(maximum(x @ W + h @ U))\n    y = h'\n",
        ArgumentCountError,
        """\
rnn.cell:3:15: error: `maximum` takes 2 arguments, not 1
        h' = tanh(maximum(x @ W + h @ U))
                  ^^^^^^^^^^^^^^^^^^^^^^
fix: call it as `maximum(a, b)`
see: https://github.com/rnnc/rnnc/blob/main/docs/errors.md#argumentcounterror
""",
        id="function_arguments",
    ),
    pytest.param(
        HEAD + "    h' = tanh(concat() @ W + h @ U)\n    y = h'\n",
        ArgumentCountError,
        """\
rnn.cell:3:15: error: `concat` takes at least 1 argument, not 0
        h' = tanh(concat() @ W + h @ U)
                  ^^^^^^^^
fix: call it as `concat(a, b, ...)`
see: https://github.com/rnnc/rnnc/blob/main/docs/errors.md#argumentcounterror
""",
        id="concat_no_arguments",
    ),
    pytest.param(
        HEAD + "    param b: [H] ~ constant\n    h' = tanh(x @ W + h @ U + b)\n    y = h'\n",
        ArgumentCountError,
        """\
rnn.cell:3:20: error: initialiser `constant` takes 1 argument, not 0
        param b: [H] ~ constant
                       ^^^^^^^^
fix: write `~ constant(value)`
see: https://github.com/rnnc/rnnc/blob/main/docs/errors.md#argumentcounterror
""",
        id="initializer_arguments",
    ),
    pytest.param(
        HEAD
        + "    param b: [H] ~ uniform(1, 2, 3)\n    h' = tanh(x @ W + h @ U + b)\n    y = h'\n",
        ArgumentCountError,
        """\
rnn.cell:3:20: error: initialiser `uniform` takes 0, 1 or 2 arguments, not 3
        param b: [H] ~ uniform(1, 2, 3)
                       ^^^^^^^^^^^^^^^^
fix: write `~ uniform`, `~ uniform(a)` or `~ uniform(lo, hi)`
see: https://github.com/rnnc/rnnc/blob/main/docs/errors.md#argumentcounterror
""",
        id="initializer_too_many",
    ),
]


@pytest.mark.parametrize("source, error, expected", CASES)
def test_message(source: str, error: type[RnncError], expected: str):
    with pytest.raises(RnncError) as info:
        rnnc.parse(source, "rnn.cell")
    assert type(info.value) is error
    assert str(info.value) == expected.rstrip("\n")


def test_every_language_error_has_a_message_test():
    assert {case.values[1] for case in CASES} == LANGUAGE_ERRORS


def test_error_carries_its_place():
    with pytest.raises(ShapeMismatchError) as info:
        rnnc.parse(HEAD + "    h' = tanh(x + h)\n    y = h'\n", "rnn.cell")
    exc = info.value
    assert (exc.filename, exc.line, exc.column) == ("rnn.cell", 3, 19)
    assert exc.message.startswith("shape mismatch in `x + h`")
    assert exc.fix.startswith("elementwise operations need equal shapes")
    assert [str(span) for span, _ in exc.notes] == ["rnn.cell:3:15"]


def test_caret_is_read_from_the_file_on_disk(tmp_path: Path):
    path = tmp_path / "bad.cell"
    path.write_text("cell f(x: [I]) -> (y: [I]):\n    y = tahn(x)\n", encoding="utf-8")
    with pytest.raises(UnknownNameError) as info:
        parse_file(path)
    lines = str(info.value).splitlines()
    assert lines[:3] == [
        f"{path}:2:9: error: unknown function `tahn`",
        "        y = tahn(x)",
        "            ^^^^",
    ]


def test_caret_keeps_the_tabs_of_the_line():
    span = Span("t.cell", 1, 6, 1, 7, "\tx = \ty\n")
    assert span.render() == "    \tx = \ty\n    \t    ^"


def test_error_without_a_place():
    exc = errors.OptionError("unknown backend 'cuda'", fix="use one of: 'c', 'numba'")
    assert exc.line is None and exc.column is None
    assert str(exc) == (
        "error: unknown backend 'cuda'\n"
        "fix: use one of: 'c', 'numba'\n"
        "see: https://github.com/rnnc/rnnc/blob/main/docs/errors.md#optionerror"
    )


# ---------------------------------------------------------------- syntax examples
@pytest.mark.parametrize(
    "label, example",
    [(label, example) for label, examples in _SYNTAX_EXAMPLES.items() for example in examples],
    ids=lambda v: v[0][:30] if isinstance(v, tuple) else repr(v)[-24:],
)
def test_syntax_example_gets_its_own_message(label: tuple[str, str], example: str):
    # Each example of the table in rnnc/lang/parser.py fails, with its own message.
    with pytest.raises(CellSyntaxError) as info:
        parse_module(example, "t.cell")
    assert (info.value.message, info.value.fix) == label


@pytest.mark.parametrize(
    "body, message",
    [
        ("y = tanh(x,)", "a call has an empty argument"),
        ("y = x[0]", "square brackets are only for shapes"),
        ("y = x != 1", "`!=` is not an operator"),
        ("y = x; z = x", "one statement per line: `;` is not allowed"),
        ("y = x.T", "`.` cannot follow a value: cells have no attributes or methods"),
        (
            '"""Another string."""',
            "a string can only be the docstring, on the first line of a cell's body",
        ),
        ("y = x $ 2", "unexpected character `$`"),
        (
            "param W: [H, H] = orthogonal",
            "an initialiser follows `~` after the parameter's name and shape",
        ),
        ("state h: [H]", "a state needs a shape and an initial value"),
        ("state h: H = 0", "a shape is written in brackets"),
        (
            "State h: [H] = 0",
            "a statement must be `name = expression`, `name' = expression`, `state ...` or `param ...`",
        ),
        ("y = x < 1 < 2", "a comparison cannot be chained"),
        ("state h: [H] = learned learned", "unexpected `learned`: expected the end of the line"),
        ("y = x (x) x", "two values stand side by side without an operator"),
    ],
)
def test_common_mistake(body: str, message: str):
    # Mistakes inside a cell whose header has other ports than the examples' ones.
    text = f"cell c(a: [I], b: [J]) -> (y: [I]):\n    '''doc'''\n    {body}\n"
    text = text.replace("'''doc'''", '"""A docstring."""')
    with pytest.raises(CellSyntaxError) as info:
        parse_module(text, "t.cell")
    assert info.value.message == message


def test_unclosed_docstring():
    with pytest.raises(CellSyntaxError) as info:
        parse_module('cell c(x: [I]) -> (y: [I]):\n    """A docstring\n    y = x\n', "t.cell")
    assert (info.value.line, info.value.column) == (2, 5)
    assert info.value.message == "a string is not closed"


def test_byte_order_mark_and_windows_line_ends_are_read():
    text = '\ufeffcell a(x: [H]) -> (y: [H]):\r\n    """Doc."""\r\n    y = x\r\n'
    assert rnnc.parse(text)["a"].doc == "Doc."
    with pytest.raises(CellSyntaxError) as info:
        rnnc.parse(text.replace("y = x", "y = x +"), "t.cell")
    assert (info.value.line, info.value.column) == (3, 12)


def test_syntax_error_at_the_end_of_the_file():
    with pytest.raises(CellSyntaxError) as info:
        parse_module("cell c(x: [I]) -> (y: [I]):", "t.cell")
    assert (info.value.line, info.value.column) == (1, 28)
    assert info.value.message == "the body of a cell must be indented below its header"


# ---------------------------------------------------------------- warnings
#: A cell with one thing to warn about, per kind of warning, and the text it prints.
WARNING_CASES = [
    pytest.param(
        "cell rnn(x: [I], u: [K]) -> (y: [H]):\n    y = x @ W\n",
        errors.UnusedInputWarning,
        """\
rnn.cell:1:18: warning: input `u` is never used
    cell rnn(x: [I], u: [K]) -> (y: [H]):
                     ^
fix: use it in the cell's body, or remove it from the header
see: https://github.com/rnnc/rnnc/blob/main/docs/errors.md#unusedinputwarning
""",
        id="unused_input",
    ),
    pytest.param(
        "cell g(x: [I]) -> (y: [I]):\n    param V: [I, I]\n    y = x\n",
        errors.UnusedParameterWarning,
        """\
rnn.cell:2:11: warning: parameter `V` is declared but never used
        param V: [I, I]
              ^
fix: use it, or delete the declaration
see: https://github.com/rnnc/rnnc/blob/main/docs/errors.md#unusedparameterwarning
""",
        id="unused_parameter",
    ),
    pytest.param(
        "cell rnn(x: [I]) -> (y: [I]):\n    gate = sigmoid(x)\n    y = gaet * x\n",
        errors.MisspelledNameWarning,
        """\
rnn.cell:3:9: warning: `gaet` is not defined, so it becomes a parameter
        y = gaet * x
            ^^^^
fix: did you mean `gate`? If `gaet` is meant to be a parameter, declare it (`param gaet`) to silence this warning
see: https://github.com/rnnc/rnnc/blob/main/docs/errors.md#misspellednamewarning
""",
        id="misspelled_name",
    ),
    pytest.param(
        HEAD + "    h' = tanh(x @ W + h @ U)\n    y = log(-softplus(h' @ V))\n",
        errors.NonPositiveArgumentWarning,
        """\
rnn.cell:4:13: warning: `log` of `-softplus(h' @ V)`, which is never positive: the result is NaN
        y = log(-softplus(h' @ V))
                ^^^^^^^^^^^^^^^^^
fix: `log` needs a positive value: check the signs in `-softplus(h' @ V)`
see: https://github.com/rnnc/rnnc/blob/main/docs/errors.md#nonpositiveargumentwarning
""",
        id="log_never_positive",
    ),
    pytest.param(
        HEAD + "    h' = tanh(x @ W + h @ U)\n    y = log(relu(h' @ V))\n",
        errors.NonPositiveArgumentWarning,
        """\
rnn.cell:4:13: warning: `log` of `relu(h' @ V)`, which is 0 for some inputs: log(0) is -inf
        y = log(relu(h' @ V))
                ^^^^^^^^^^^^
fix: add a small constant: `log(relu(h' @ V) + 1e-6)`
see: https://github.com/rnnc/rnnc/blob/main/docs/errors.md#nonpositiveargumentwarning
""",
        id="log_of_zero",
    ),
    pytest.param(
        HEAD + "    h' = tanh(x @ W + h @ U)\n    y = sqrt(relu(h'))\n",
        errors.NonPositiveArgumentWarning,
        """\
rnn.cell:4:14: warning: `sqrt` of `relu(h')`, which is 0 for some inputs: the derivative of sqrt at 0 is infinite, so gradients become inf or NaN
        y = sqrt(relu(h'))
                 ^^^^^^^^
fix: add a small constant: `sqrt(relu(h') + 1e-6)`
see: https://github.com/rnnc/rnnc/blob/main/docs/errors.md#nonpositiveargumentwarning
""",
        id="sqrt_of_zero",
    ),
]


def _warning(source: str) -> RnncWarning:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rnnc.parse(source, "rnn.cell")
    assert len(caught) == 1, [str(w.message) for w in caught]
    assert caught[0].category is type(caught[0].message)
    assert (caught[0].filename, caught[0].lineno) == ("rnn.cell", caught[0].message.span.line)
    return caught[0].message


@pytest.mark.parametrize("source, kind, expected", WARNING_CASES)
def test_warning_message(source: str, kind: type[RnncWarning], expected: str):
    warning = _warning(source)
    assert type(warning) is kind
    assert str(warning) == expected.rstrip("\n")
    assert str(warning).endswith(f"\nsee: {errors.DOCS}#{kind.anchor}")
    assert str(warning).startswith(f"{warning.span}: warning: {warning.message}\n")
    assert f"\nfix: {warning.fix}\n" in str(warning)


def test_every_kind_of_warning_has_a_message_test():
    assert {case.values[1] for case in WARNING_CASES} == set(_classes(RnncWarning)) - {RnncWarning}


def test_a_kind_of_warning_is_an_rnnc_warning_and_filters_on_its_own():
    source = "cell g(x: [I], u: [I]) -> (y: [I]):\n    gate = sigmoid(x)\n    y = gaet * x\n"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.filterwarnings("ignore", category=errors.UnusedInputWarning)
        rnnc.parse(source, "rnn.cell")
    assert [w.category for w in caught] == [errors.MisspelledNameWarning]
    with warnings.catch_warnings(), pytest.raises(RnncWarning):
        warnings.simplefilter("error", RnncWarning)
        rnnc.parse(source, "rnn.cell")


def test_declared_parameter_silences_the_misspelling_warning():
    source = "cell g(x: [I]) -> (y: [I]):\n    param gaet\n    gate = x\n    y = gaet * gate\n"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rnnc.parse(source)


def test_no_warning_for_names_more_than_one_letter_apart():
    source = "cell g(x: [I]) -> (score: []):\n    param w_score: [I]\n    score = x @ w_score\n"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rnnc.parse(source)


# ---------------------------------------------------------------- docs/errors.md
def _classes(root: type) -> list[type]:
    """The classes of rnnc.errors that derive from ``root`` (root included)."""
    found = [getattr(errors, name) for name in errors.__all__]
    return [c for c in found if isinstance(c, type) and issubclass(c, root)]


def test_every_error_and_warning_class_has_a_section_in_the_docs():
    # Every message ends with `see: ...#anchor`; the anchor is the class's section, which
    # shows a message of the class (but for the two roots) and says how to mend it.
    parts = re.split(r"^## (\w+)\n", DOCS.read_text(encoding="utf-8"), flags=re.M)
    sections = dict(zip(parts[1::2], parts[2::2], strict=True))
    classes = _classes(RnncError) + _classes(RnncWarning)
    assert len(classes) == len(errors.__all__) - 1  # all but Span
    for cls in classes:
        assert cls.anchor == cls.__name__.lower()
        assert cls.__name__ in sections, f"docs/errors.md lacks a section `## {cls.__name__}`"
        assert cls.__doc__
        if cls not in (RnncError, RnncWarning):
            section = sections[cls.__name__]
            assert f"errors.md#{cls.anchor}\n```" in section, f"no example of {cls.__name__}"
            assert "**Fix:**" in section, f"no fix for {cls.__name__}"


def _shown_messages(path: Path) -> list[str]:
    """The ```` ```text ```` blocks of ``path`` that show an error or a warning."""
    blocks = re.findall(r"^```text\n(.*?)\n```$", path.read_text(encoding="utf-8"), re.S | re.M)
    return [b for b in blocks if "docs/errors.md#" in b]


def test_the_docs_show_the_messages_of_the_language_errors_and_the_warnings():
    # The examples in docs/errors.md are real messages: each language error's and each
    # warning's example is the text this version renders for one of the cases above.
    rendered = {case.values[2].rstrip("\n") for case in CASES + WARNING_CASES}
    shown = _shown_messages(DOCS)
    warning_kinds = {case.values[1] for case in WARNING_CASES}
    for cls in LANGUAGE_ERRORS | warning_kinds:
        mine = [b for b in shown if b.endswith(f"#{cls.anchor}")]
        assert mine, f"docs/errors.md shows no message of {cls.__name__}"
        assert all(b in rendered for b in mine), cls.__name__


def test_the_language_reference_shows_real_messages():
    rendered = {case.values[2].rstrip("\n") for case in CASES + WARNING_CASES}
    shown = _shown_messages(DOCS.parents[1] / "grammar" / "README.md")
    assert shown
    assert all(b in rendered for b in shown)
