"""The Python DSL (rnnc.dsl): the same AST, IR and PyTensor graph as the cell language.

Each built-in cell is written here in Python and compared with its ``.cell`` file: the
AST, the checked IR and the lowered scan graph must be equal. Errors must point at this
file's lines, with the caret under the right expression.
"""

from __future__ import annotations

import doctest
import math
import re
from pathlib import Path

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest
from conftest import FAST
from pytensor.graph.basic import equal_computations

import rnnc
from rnnc import dsl, ir, reference
from rnnc.compile import builtin_path
from rnnc.errors import (
    CellSyntaxError,
    DuplicateDefinitionError,
    MissingNextStateError,
    MissingOutputError,
    OptionError,
    RnncWarning,
    ShapeMismatchError,
    UnknownNameError,
)
from rnnc.lang import ast
from rnnc.lang.parser import parse_module
from rnnc.lower import scan_cell

HERE = str(Path(__file__))
LINES = Path(__file__).read_text(encoding="utf-8").splitlines()


def where(marker: str, text: str) -> tuple[int, int]:
    """(line, column) of ``text`` on the line of this file that ends with ``marker``."""
    hits = [(n, line) for n, line in enumerate(LINES, 1) if line.rstrip().endswith(marker)]
    assert len(hits) == 1, marker
    number, line = hits[0]
    return number, line.index(text) + 1


# ---------------------------------------------------------------- the built-ins in Python
def declare_torch(p: dsl.Params, gates: str) -> None:
    """The parameters of a PyTorch cell, in the order the .cell files declare them."""
    for g in gates:
        p.declare(f"W_i{g}", ("I", "H"), init="uniform")
    for g in gates:
        p.declare(f"W_h{g}", ("H", "H"), init="uniform")
    for g in gates:
        p.declare(f"b_i{g}", "H", init="uniform")
    for g in gates:
        p.declare(f"b_h{g}", "H", init="uniform")


@rnnc.cell(inputs={"x": "I"}, state={"h": "H"}, outputs={"y": "H"})
def rnn(x, h, p):
    """Elman recurrent network with tanh: h' = tanh(x W_ih + b_ih + h W_hh + b_hh); y = h'."""
    declare_torch(p, "h")
    h_next = rnnc.tanh(x @ p.W_ih + p.b_ih + h @ p.W_hh + p.b_hh)
    return {"h": h_next}, {"y": h_next}


@rnnc.cell(inputs={"x": "I"}, state={"h": "H"}, outputs={"y": "H"})
def rnn_relu(x, h, p):
    """Elman recurrent network with ReLU: h' = relu(x W_ih + b_ih + h W_hh + b_hh); y = h'."""
    declare_torch(p, "h")
    h_next = rnnc.relu(x @ p.W_ih + p.b_ih + h @ p.W_hh + p.b_hh)
    return {"h": h_next}, {"y": h_next}


@rnnc.cell(inputs={"x": "I"}, state={"h": "H", "c": "H"}, outputs={"y": "H"})
def lstm(x, h, c, p):
    """Long short-term memory (Hochreiter & Schmidhuber 1997, with a forget gate).

    i = sigmoid(x W_ii + b_ii + h W_hi + b_hi)     input gate
    f = sigmoid(x W_if + b_if + h W_hf + b_hf)     forget gate
    g = tanh(x W_ig + b_ig + h W_hg + b_hg)        candidate
    o = sigmoid(x W_io + b_io + h W_ho + b_ho)     output gate
    c' = f * c + i * g;  h' = o * tanh(c');  y = h'
    """
    declare_torch(p, "ifgo")
    i = rnnc.sigmoid(x @ p.W_ii + p.b_ii + h @ p.W_hi + p.b_hi)
    f = rnnc.sigmoid(x @ p.W_if + p.b_if + h @ p.W_hf + p.b_hf)
    g = rnnc.tanh(x @ p.W_ig + p.b_ig + h @ p.W_hg + p.b_hg)
    o = rnnc.sigmoid(x @ p.W_io + p.b_io + h @ p.W_ho + p.b_ho)
    c_next = f * c + i * g
    h_next = o * rnnc.tanh(c_next)  # reads the new c: `h' = o * tanh(c')`
    return {"h": h_next, "c": c_next}, {"y": h_next}


@rnnc.cell(inputs={"x": "I"}, state={"h": "H"}, outputs={"y": "H"})
def gru(x, h, p):
    """Gated recurrent unit (Cho et al. 2014), as PyTorch defines it.

    r = sigmoid(x W_ir + b_ir + h W_hr + b_hr)         reset gate
    z = sigmoid(x W_iz + b_iz + h W_hz + b_hz)         update gate
    n = tanh(x W_in + b_in + r * (h W_hn + b_hn))      candidate
    h' = (1 - z) * n + z * h;  y = h'
    """
    declare_torch(p, "rzn")
    r = rnnc.sigmoid(x @ p.W_ir + p.b_ir + h @ p.W_hr + p.b_hr)
    z = rnnc.sigmoid(x @ p.W_iz + p.b_iz + h @ p.W_hz + p.b_hz)
    n = rnnc.tanh(x @ p.W_in + p.b_in + r * (h @ p.W_hn + p.b_hn))
    h_next = (1 - z) * n + z * h
    return {"h": h_next}, {"y": h_next}


BUILTINS = {"rnn": rnn, "rnn_relu": rnn_relu, "lstm": lstm, "gru": gru}


def builtin_ast(name: str) -> ast.Cell:
    path = builtin_path(name)
    cells = parse_module(path.read_text(encoding="utf-8"), str(path)).cells
    return next(c for c in cells if c.name == name)


@pytest.mark.parametrize("name", BUILTINS)
def test_builtin_in_python_has_the_same_ast_and_ir(name):
    cell = BUILTINS[name]
    text = rnnc.load_cell(name)
    assert cell.ir == text
    assert cell.ir.doc == text.doc  # CellIR compares these too; say so explicitly
    assert dict(cell.ir.params) == dict(text.params)
    assert dict(cell.ir.states) == dict(text.states)
    # the trees are equal statement by statement (spans are left out of equality)
    assert cell.ast == builtin_ast(name)
    assert rnnc.load_cell(cell) is cell.ir
    # the DSL cell written back as text parses to the same IR
    assert rnnc.parse(cell.text)[name] == text


def lowered(cell: ir.CellIR, x, params, mask=None) -> list:
    result = scan_cell(cell, {"x": x}, params, {"I": 3, "H": 2}, "float64", mask=mask)
    return [*result.outputs.values(), *result.state.values()]


def shared_params(cell: ir.CellIR) -> dict:
    rng = np.random.default_rng(0)
    sizes = {"I": 3, "H": 2}
    return {
        name: pytensor.shared(rng.normal(size=ir.shape_size(spec.shape, sizes)), name=name)
        for name, spec in cell.params.items()
    }


@pytest.mark.parametrize("name", BUILTINS)
def test_builtin_in_python_lowers_to_the_same_graph(name):
    text = rnnc.load_cell(name)
    params = shared_params(text)
    x = pt.tensor3("x", dtype="float64")
    mask = pt.matrix("mask", dtype="float64")
    assert equal_computations(lowered(BUILTINS[name].ir, x, params), lowered(text, x, params))
    assert equal_computations(
        lowered(BUILTINS[name].ir, x, params, mask), lowered(text, x, params, mask)
    )


def test_graph_comparison_tells_cells_apart():
    params = shared_params(rnnc.load_cell("rnn"))
    x = pt.tensor3("x", dtype="float64")
    assert not equal_computations(
        lowered(rnn.ir, x, params), lowered(rnnc.load_cell("rnn_relu"), x, params)
    )


# ---------------------------------------------------------------- the whole language
@rnnc.cell(
    inputs={"x": "I", "u": ()},
    state={"h": "H", "m": ("H", "learned"), "n": ((), 1.5)},
    outputs={"y": "H", "z": "2*H", "s": "[]"},
)
def kitchen(x, u, h, m, n, p):
    """Every operator and function of the language."""
    p.declare("W", ("I", "H"), init="orthogonal")
    p.declare("g", "H", init=("constant", 0.5))
    a = rnnc.layer_norm(x @ p.W) * p.g + p.b
    gate = rnnc.where(0 < a, rnnc.sigmoid(a), 1 - rnnc.relu(-a))
    soft = rnnc.softplus(a) / (1 + rnnc.exp(-2 * a)) ** 2
    h_next = rnnc.tanh(gate * h + soft - m * u)
    m_next = rnnc.maximum(m, abs(h_next)) - rnnc.minimum(a, 0.5) * 0.1
    n_next = n * 0.9 + rnnc.sqrt(rnnc.log(1 + u * u) + 1)
    return (
        {"h": h_next, "m": m_next, "n": n_next},
        {
            "y": h_next - h,
            "z": rnnc.concat(h_next, m),
            "s": n_next + (u >= 0) - (u <= 1) + (u > 2) / 2**u,
        },
    )


KITCHEN = '''
cell kitchen(x: [I], u: []) -> (y: [H], z: [2*H], s: []):
    """Every operator and function of the language."""
    state h: [H] = 0
    state m: [H] = learned
    state n: [] = 1.5
    param W: [I, H] ~ orthogonal
    param g: [H] ~ constant(0.5)
    a = layer_norm(x @ W) * g + b
    gate = where(0 < a, sigmoid(a), 1 - relu(-a))
    soft = softplus(a) / (1 + exp(-2 * a)) ** 2
    h' = tanh(gate * h + soft - m * u)
    m' = maximum(m, abs(h')) - minimum(a, 0.5) * 0.1
    n' = n * 0.9 + sqrt(log(1 + u * u) + 1)
    y = h' - h
    z = concat(h', m)
    s = n' + (u >= 0) - (u <= 1) + (u > 2) / 2 ** u
'''


def test_every_operator_and_function_matches_the_text_form():
    text = rnnc.parse(KITCHEN)["kitchen"]
    assert kitchen.ir == text
    assert rnnc.parse(kitchen.text)["kitchen"] == text
    # `0 < a` reaches Python as `a.__gt__(0)`; it is recorded as written
    gate = next(s for s in kitchen.ast.body if isinstance(s, ast.Assign) and s.target == "gate")
    assert gate.value.args[0] == ast.BinOp("<", ast.Number(0.0), ast.Name("a"))
    # a negative number is a negated number, as the parser reads `-2`
    assert "exp(-2 * a)" in kitchen.text


def test_new_state_reads_are_primed_and_old_ones_are_not():
    outputs = {s.target: s.value for s in kitchen.ast.body if isinstance(s, ast.Assign)}
    assert outputs["y"] == ast.BinOp("-", ast.Primed("h"), ast.Name("h"))
    assert outputs["z"] == ast.Call("concat", (ast.Primed("h"), ast.Name("m")))
    # in another state's next value too (LSTM: h' = o * tanh(c'))
    h_next = next(s for s in lstm.ast.body if isinstance(s, ast.Assign) and s.primed)
    assert (h_next.target, h_next.value.op) == ("c", "+")
    last = [s for s in lstm.ast.body if isinstance(s, ast.Assign) and s.primed][-1]
    assert last.value == ast.BinOp("*", ast.Name("o"), ast.Call("tanh", (ast.Primed("c"),)))


def test_numpy_scalars_are_numbers():
    @rnnc.cell(inputs={"x": "H"}, state={"h": "H"}, outputs={"y": "H"})
    def scaled(x, h):
        h_next = np.float64(0.5) * h + x * np.float32(2.0) - (np.float64(0) < x)
        return {"h": h_next}, {"y": h_next}

    assert "h' = 0.5 * h + x * 2 - (0 < x)" in scaled.text


def test_every_node_points_at_this_file():
    first = min(n for n, line in enumerate(LINES, 1) if line.startswith("def gru("))
    spans = []
    stack: list = [gru.ast]
    while stack:
        node = stack.pop()
        if isinstance(node, tuple):
            stack.extend(node)
        elif hasattr(node, "__dataclass_fields__"):
            if hasattr(node, "span") and not isinstance(node, ast.Cell):
                spans.append(node.span)
            stack.extend(getattr(node, f) for f in node.__dataclass_fields__ if f != "span")
    assert len(spans) > 100
    assert all(s.filename == HERE for s in spans)
    helper = min(n for n, line in enumerate(LINES, 1) if line.startswith("def declare_torch("))
    gru_lines = range(first - 1, first + 15)  # the decorator, the function
    declare_lines = range(helper, helper + 10)  # the parameters' declarations
    assert all(s.column > 0 and (s.line in gru_lines or s.line in declare_lines) for s in spans)
    params = [s for s in gru.ast.body if isinstance(s, ast.ParamDecl)]
    assert {s.span.line for s in params} < set(declare_lines)
    r = next(s for s in gru.ast.body if isinstance(s, ast.Assign) and s.target == "r")
    line, column = where("+ h @ p.W_hr + p.b_hr)", "rnnc.sigmoid")
    assert (r.value.span.line, r.value.span.column) == (line, column)
    product = r.value.args[0].left.right  # h @ W_hr
    assert product.span.render().splitlines()[1].strip() == "^" * len("h @ p.W_hr")


def test_shared_values_are_written_once():
    @rnnc.cell(inputs={"x": "H"}, state={"h": "H"}, outputs={"y": "H"})
    def deep(x, h):
        v = h + x
        for _ in range(60):  # each value is read twice: inlining would double each time
            v = rnnc.tanh(v) * v
        x = x * 2  # a local that reuses the input's name is not a binding named `x`
        return {"h": v + x + x}, {"y": v}

    assigns = [s for s in deep.ast.body if isinstance(s, ast.Assign)]
    assert len(assigns) == 63  # h + x, 59 steps, y (the 60th), x * 2, h'
    assert "_t61 = x * 2" in deep.text and "h' = y + _t61 + _t61" in deep.text
    assert len(ir.walk([deep.ir.next_state["h"]])) < 200
    # the text form says the same (compared as trees: comparing the two IR DAGs by `==`
    # is exponential in the depth of sharing, see the report on rnnc.ir.Node.__eq__)
    assert parse_module(deep.text).cells[0] == deep.ast


def test_long_unrolled_chains_are_split():
    @rnnc.cell(inputs={"x": "H"}, state={"h": "H"}, outputs={"y": "H"})
    def long(x, h):
        for step in range(300):  # 300 nested additions would reach Python's recursion limit
            h = h + x * step
        return {"h": h}, {"y": x}

    assigns = [s for s in long.ast.body if isinstance(s, ast.Assign)]
    assert len(assigns) == 300 // 33 + 2  # a name every 33 nested additions; h', y
    assert rnnc.parse(long.text)["long"] == long.ir


# ---------------------------------------------------------------- runs like any cell
def test_dsl_cell_runs_and_equals_the_reference_hidden_1():
    layer = rnnc.Recurrent(gru, I=3, H=1, backend=FAST, dtype="float64", seed=3)
    x = np.random.default_rng(1).normal(size=(2, 3, 3))
    out = layer.run(x)
    params = {k: v.get_value() for k, v in layer.params.items()}
    outputs, state = reference.run(layer.cell, params, {"x": x})
    np.testing.assert_allclose(out.outputs["y"], outputs["y"], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(out.state["h"], state["h"], rtol=1e-12, atol=1e-12)
    assert out.outputs["y"].shape == (2, 3, 1)


def test_kitchen_sink_runs_and_equals_the_reference():
    layer = rnnc.Recurrent(kitchen, I=3, H=2, backend=FAST, dtype="float64", seed=5)
    assert set(layer.params) == {"W", "g", "b", "m0"}
    rng = np.random.default_rng(2)
    inputs = {"x": rng.normal(size=(2, 3, 3)), "u": rng.normal(size=(2, 3))}
    layer.params["m0"].set_value(rng.normal(size=2))
    out = layer.run(inputs)
    params = {k: v.get_value() for k, v in layer.params.items()}
    outputs, state = reference.run(layer.cell, params, inputs)
    for name in ("y", "z", "s"):
        np.testing.assert_allclose(out.outputs[name], outputs[name], rtol=1e-10, atol=1e-12)
    for name in ("h", "m", "n"):
        np.testing.assert_allclose(out.state[name], state[name], rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------- errors point home
def test_shape_mismatch_points_at_this_line():
    with pytest.raises(ShapeMismatchError) as info:

        @rnnc.cell(inputs={"x": "I"}, state={"h": "H"}, outputs={"y": "H"})
        def bad(x, h, p):
            a = rnnc.sigmoid(x @ p.W)
            h_next = rnnc.tanh(a * 2 + (x + h))  # <- mismatch
            return {"h": h_next}, {"y": h_next}

    err = info.value
    line, column = where("# <- mismatch", "h))")
    assert (err.filename, err.line, err.column) == (HERE, line, column)
    caret = err.span.render().splitlines()
    assert caret[0] == "    " + LINES[line - 1]
    assert caret[1] == "    " + " " * (column - 1) + "^"
    # the other side of the conflict is named too, in this file
    assert [(s.filename, s.line, s.column) for s, _ in err.notes] == [(HERE, line, column - 4)]


def test_a_symbolic_value_has_no_truth_value():
    with pytest.raises(CellSyntaxError) as info:

        @rnnc.cell(inputs={"x": "H"}, state={"h": "H"}, outputs={"y": "H"})
        def bad(x, h):
            if h > 0:  # <- bool
                h = h + x
            return {"h": h}, {"y": h}

    line, column = where("# <- bool", "h > 0")
    assert str(info.value) == (
        f"{HERE}:{line}:{column}: error: a symbolic value has no truth value: it is computed "
        "for every example at every step, so Python's `if`, `while`, `and`, `or`, `not` "
        "cannot decide on it\n"
        f"    {LINES[line - 1]}\n"
        f"    {' ' * (column - 1)}^^^^^\n"
        "fix: choose between values elementwise with rnnc.where(condition, a, b)\n"
        "see: https://github.com/rnnc/rnnc/blob/main/docs/errors.md#dslerror"
    )


def test_python_max_says_to_use_maximum():
    with pytest.raises(CellSyntaxError, match="no truth value") as info:

        @rnnc.cell(inputs={"x": "H"}, state={"h": "H"}, outputs={"y": "H"})
        def bad(x, h):
            return {"h": max(h, x)}, {"y": h}  # <- max

    assert info.value.fix == "use rnnc.maximum(a, b) instead of max(a, b)"
    assert (info.value.line, info.value.column) == where("# <- max", "max(h, x)")


def test_bad_return_structure():
    with pytest.raises(CellSyntaxError) as info:

        @rnnc.cell(inputs={"x": "H"}, state={"h": "H"}, outputs={"y": "H"})
        def bad(x, h):
            return {"h": h + x}  # <- one dict

    line, column = where("# <- one dict", "return")
    returned = 'return {"h": h + x}'
    assert str(info.value) == (
        f"{HERE}:{line}:{column}: error: the function of cell `bad` must return two dicts "
        "(next states, outputs), but it returned a dict\n"
        f"    {LINES[line - 1]}\n"
        f"    {' ' * (column - 1)}{'^' * len(returned)}\n"
        'fix: end it with return {"h": h_next}, {"y": ...}\n'
        "see: https://github.com/rnnc/rnnc/blob/main/docs/errors.md#dslerror"
    )


@pytest.mark.parametrize(
    ("returned", "error", "message"),
    [
        ("None", CellSyntaxError, "but it returned None (no return statement?)"),
        ("{'h': h}, {'y': h}, {}", CellSyntaxError, "but it returned a tuple of 3"),
        ("{'h': h, 'c': h}, {'y': h}", UnknownNameError, "the returned next states name 'c'"),
        ("{'h': h}, {'y': h, 'z': h}", UnknownNameError, "the returned outputs name 'z'"),
        ("{}, {'y': h}", MissingNextStateError, "returns no next value for state `h`"),
        ("{'h': h}, {}", MissingOutputError, "returns no output `y`"),
        (
            "{'h': 'h'}, {'y': h}",
            CellSyntaxError,
            "the returned state 'h' cannot take a value of type str",
        ),
    ],
)
def test_returned_values_are_checked(returned, error, message):
    with pytest.raises(error, match=re.escape(message)) as info:

        @rnnc.cell(inputs={"x": "H"}, state={"h": "H"}, outputs={"y": "H"})
        def bad(x, h):
            h = h * 2
            return eval(returned)  # <- returned

    line, column = where("# <- returned", "return")
    assert (info.value.filename, info.value.line, info.value.column) == (HERE, line, column)


def test_unknown_returned_state_points_at_its_entry():
    with pytest.raises(UnknownNameError) as info:

        @rnnc.cell(inputs={"x": "H"}, state={"h": "H"}, outputs={"y": "H"})
        def bad(x, h):
            return {"h": h + x, "hh": h}, {"y": h}  # <- entry

    assert (info.value.line, info.value.column) == where("# <- entry", '"hh": h')
    assert info.value.fix == "the cell's states are: `h`; declare it in @rnnc.cell(state=...)"


def _leaked() -> dsl.Value:
    """A symbolic value kept after its cell was built."""
    kept = []

    @rnnc.cell(inputs={"x": "H"}, state={"h": "H"}, outputs={"y": "H"})
    def leaky(x, h):
        kept.append(h + x)
        return {"h": kept[0]}, {"y": h}

    return kept[0]


MISUSES = [  # (what the cell does, the error's text, its fix, the text under the caret)
    (lambda x, h, p: h[0], "cannot be indexed", "rnnc.concat", "h[0]"),
    (lambda x, h, p: [1, 2][h], "as a Python integer or index", "Python numbers", "[1, 2][h]"),
    (lambda x, h, p: list(h), "cannot be iterated", "each part", "list(h)"),
    (lambda x, h, p: math.tanh(h), "has no number", "rnnc.tanh", "math.tanh(h)"),
    (lambda x, h, p: np.tanh(h), "NumPy's `tanh` cannot take a", "rnnc.tanh", "np.tanh(h)"),
    (
        lambda x, h, p: h + np.ones(2),
        "`+` cannot take a value of type ndarray",
        "p.NAME",
        "h + np.ones(2)",
    ),
    (lambda x, h, p: np.ones(2) * h, "NumPy's `multiply`", "p.NAME", "np.ones(2) * h"),
    (lambda x, h, p: h == x, "`==` and `!=` are not in the cell language", "where", "h == x"),
    (
        lambda x, h, p: h // 2,
        "the operator `//` is not in the cell language",
        "rnnc.where",
        "h // 2",
    ),
    (lambda x, h, p: h * "a", "`*` cannot take a value of type str", "Python number", 'h * "a"'),
    (lambda x, h, p: h * math.inf, "`*` cannot take inf", "finite", "h * math.inf"),
    (
        lambda x, h, p: rnnc.concat([h, x]),
        "separate arguments",
        "concat(*values)",
        "rnnc.concat([h, x])",
    ),
    (lambda x, h, p: h + _leaked(), "is used after that cell was built", "inside", "h + _leaked()"),
    (lambda x, h, p: p.h, "`p.h` names a parameter, but `h` is a state", "another name", "p.h"),
    (lambda x, h, p: p.tanh, "`tanh` is a built-in function", "another name", "p.tanh"),
    (
        lambda x, h, p: setattr(p, "W", 1),
        "parameters are read, not assigned",
        "p.declare",
        'setattr(p, "W", 1)',
    ),
]


@pytest.mark.parametrize(("case", "message", "fix", "text"), MISUSES, ids=[m[1] for m in MISUSES])
def test_python_misuse_names_the_line_and_the_fix(case, message, fix, text):
    with pytest.raises(rnnc.RnncError, match=re.escape(message)) as info:

        @rnnc.cell(inputs={"x": "H"}, state={"h": "H"}, outputs={"y": "H"})
        def bad(x, h, p):
            return {"h": h + case(x, h, p)}, {"y": h}

    err = info.value
    assert isinstance(err, CellSyntaxError | DuplicateDefinitionError)
    assert fix in err.fix
    line = case.__code__.co_firstlineno
    assert (err.filename, err.line) == (HERE, line)
    assert LINES[line - 1][err.column - 1 : err.span.end_column - 1] == text


def test_function_arguments_must_name_the_ports():
    with pytest.raises(CellSyntaxError, match="has no argument for `x`") as info:

        @rnnc.cell(inputs={"x": "H"}, state={"h": "H"}, outputs={"y": "H"})
        def bad(h, p):  # <- signature
            return {"h": h}, {"y": h}

    assert (info.value.filename, info.value.line) == (HERE, where("# <- signature", "")[0])
    assert info.value.fix.endswith("def bad(x, h, p):")


def test_decorator_arguments_are_checked():
    with pytest.raises(OptionError, match="needs the cell's inputs and outputs"):

        @rnnc.cell
        def bare(x, h):
            return {"h": h}, {"y": h}

    with pytest.raises(OptionError, match="cannot read 'H\\*2'") as info:
        rnnc.cell(inputs={"x": "H*2"}, outputs={"y": "H"})  # <- shape
    assert (info.value.line, info.value.column) == where("# <- shape", '"x": "H*2"')
    with pytest.raises(OptionError, match="a dimension of size 0"):
        rnnc.cell(inputs={"x": "H"}, state={"h": ("H", 0)}, outputs={"y": "H"})


def test_functions_need_a_cell():
    with pytest.raises(CellSyntaxError, match=r"inside a function decorated with @rnnc\.cell"):
        rnnc.tanh(1.0)


def test_checker_warnings_point_at_this_file():
    with pytest.warns(RnncWarning, match="input `u` is never used") as record:

        @rnnc.cell(inputs={"x": "H", "u": "H"}, state={"h": "H"}, outputs={"y": "H"})  # <- u
        def unused(x, u, h):
            return {"h": h + x}, {"y": h}

    assert (record[0].filename, record[0].lineno) == (HERE, where("# <- u", "")[0])


def test_numerics_warning_fix_is_written_in_python():
    with pytest.warns(RnncWarning, match="which is 0 for some inputs") as record:

        @rnnc.cell(inputs={"x": "H"}, state={"h": "H"}, outputs={"y": "H"})
        def logs(x, h):
            return {"h": h + x}, {"y": rnnc.log(rnnc.relu(h))}

    assert "fix: add a small constant: `rnnc.log(rnnc.relu(h) + 1e-6)`" in str(record[0].message)


def test_states_shapes_and_declarations():
    with pytest.warns(RnncWarning, match="parameter `unused_bias` is declared but never"):

        @rnnc.cell(
            inputs={"x": ("H", 3)},
            state={"h": ("H", 3), "s": ((), "learned"), "t": ("2*H + 1", -0.5)},
            outputs={"y": "[H, 3]"},
        )
        def shapes(x, h, s, t, p):
            W = p.declare("W", (3, 3), init=("normal", 0.0, 0.1))
            p.declare("unused_bias", "H")
            return {"h": x @ W * s + h, "s": s, "t": t}, {"y": h}

    assert shapes.ir.states == {
        "h": ir.StateSpec(("H", 3)),
        "s": ir.StateSpec((), "learned"),
        "t": ir.StateSpec(("2*H + 1",), "constant", -0.5),
    }
    assert shapes.ir.params["W"] == ir.ParamSpec((3, 3), "normal", (0.0, 0.1))
    assert "s0" in shapes.ir.params
    assert "param unused_bias: [H]" in shapes.text  # declared, so kept (and warned about)


def test_module_examples():
    """The runnable ``>>>`` examples of rnnc.dsl (the module's and rnnc.cell's)."""
    attempted = 0
    for obj in (dsl, dsl.cell):
        for test in doctest.DocTestFinder(recurse=False).find(obj, globs={"rnnc": rnnc}):
            result = doctest.DocTestRunner().run(test)
            assert result.failed == 0, test.name
            attempted += result.attempted
    assert attempted == 5
