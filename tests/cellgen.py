"""Random cells for the tests: well-typed cells (their IR, and text that says the same),
mutations of cells, and random text.

Used by ``tests/test_passes.py`` (random IR through the passes), ``tests/test_fuzz.py``
(hypothesis: the parser and checker on every kind of text), ``tests/test_random_cells.py``
(compiled cells against the reference interpreter) and the long fuzz script
``tests/fuzz/run.py``. Every generator takes a :class:`Chooser`, so the same code draws
from hypothesis (which shrinks a failure to a small case) or from a seeded
``random.Random`` (fast, and any case is rebuilt from its seed).

A random cell is first made as IR (:class:`CellGen`), with every shape known, and then
written as text (:func:`render`) with some values bound to names and some parameters
declared. Checking the text must give back exactly that IR: this tests the parser, the
name resolution and the shape inference on every cell the generator can make.
"""

from __future__ import annotations

import random
import re
import signal
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rnnc import ir
from rnnc.check import check_module
from rnnc.errors import RnncError, RnncWarning, ShapeInferenceError, Span
from rnnc.lang import ast
from rnnc.lang.parser import parse_module
from rnnc.lang.pretty import format_expr

ROOT = Path(__file__).resolve().parents[1]

S: ir.Shape = ()
H: ir.Shape = ("H",)
I: ir.Shape = ("I",)  # noqa: E741 - the dimension's name
HI: ir.Shape = ("H + I",)  # what concat([H], [I]) gives


# ---------------------------------------------------------------- choosers
class Chooser:
    """The random decisions a generator makes."""

    def integer(self, lo: int, hi: int) -> int:
        """A whole number in ``[lo, hi]``."""
        raise NotImplementedError

    def choice(self, options: Sequence[Any]) -> Any:
        return options[self.integer(0, len(options) - 1)]

    def coin(self, p: float = 0.5) -> bool:
        """True with probability ``p``; hypothesis shrinks it to False."""
        return self.integer(0, 99) >= 100 - round(100 * p)


class RandomChooser(Chooser):
    def __init__(self, rng: random.Random | int | str):
        self.rng = rng if isinstance(rng, random.Random) else random.Random(rng)

    def integer(self, lo: int, hi: int) -> int:
        return self.rng.randint(lo, hi)


class DrawChooser(Chooser):
    """Decisions drawn by hypothesis (inside ``@st.composite`` or ``st.data()``)."""

    def __init__(self, draw: Callable[[Any], Any]):
        from hypothesis import strategies as st

        self.draw = draw
        self.st = st

    def integer(self, lo: int, hi: int) -> int:
        return self.draw(self.st.integers(lo, hi))


def strategy(make: Callable[[Chooser], Any]):
    """A hypothesis strategy of ``make(chooser)``."""
    from hypothesis import strategies as st

    return st.composite(lambda draw: make(DrawChooser(draw)))()


# ---------------------------------------------------------------- random IR
def node(op: str, args: tuple[ir.Node, ...], shape: ir.Shape, value: Any = None) -> ir.Node:
    return ir.Node(op, args, shape, value)


def const(value: float) -> ir.Node:
    return node("const", (), S, float(value))


@dataclass
class CellGen:
    """Makes one random, well-typed cell as IR.

    ``safe`` keeps the numbers finite and the derivatives defined for any inputs, so the
    cell can be compared with finite differences: ``log``, ``sqrt``, ``/`` and ``**`` only
    of values that are evidently positive (``log(softplus(v) + 1)``), states updated
    through ``tanh``, ``sigmoid`` or a gated mix, ``maximum`` of two different values.
    Unsafe cells use every operation on anything (for the parser and checker only).
    """

    ch: Chooser
    safe: bool = True
    depth: int = 3
    max_states: int = 3
    max_outputs: int = 3
    #: Every next state and output reads an input or a state (none is a function of
    #: parameters alone).
    anchored: bool = False
    params: dict[str, ir.ParamSpec] = field(default_factory=dict)
    #: Parameters the text must declare: inference would give them another shape
    #: (a scalar, a vector on either side of ``@``).
    must_declare: set[str] = field(default_factory=set)
    #: Values expressions may read, by shape: inputs, old states, new states.
    pool: dict[ir.Shape, list[ir.Node]] = field(default_factory=dict)

    # ---- leaves
    def param(self, shape: ir.Shape, declare: bool = False) -> ir.Node:
        prefix = {0: "s", 1: "b", 2: "W"}[len(shape)]
        name = f"{prefix}_{len(self.params)}"
        self.params[name] = ir.ParamSpec(shape)
        if declare or not shape:
            self.must_declare.add(name)
        return node("param", (), shape, name)

    def vector_shape(self) -> ir.Shape:
        return self.ch.choice([s for s in (H, I) if self.pool.get(s)] or [I])

    def leaf(self, shape: ir.Shape) -> ir.Node:
        kinds = ["value", "value", "product", "param"] + ["const"] * (not shape)
        kind = self.ch.choice(kinds)
        if kind == "value" and self.pool.get(shape):
            return self.ch.choice(self.pool[shape])
        if kind == "const" or (kind == "value" and not shape):
            values = [0.0, 0.5, 1.0, 2.0] if self.safe else [0.0, 1.0, 0.5, 3.0, 1e-3, 2.5e3]
            return const(self.ch.choice(values))
        if kind in ("product", "value"):
            return self.product(shape, 0)
        return self.param(shape)

    def product(self, shape: ir.Shape, depth: int) -> ir.Node:
        """A matrix product of shape ``shape``: ``v @ W``, ``W @ v``, ``v @ w`` (a dot
        product with a declared vector) or ``concat(a, b) @ W``."""
        kind = self.ch.choice(["right", "right", "left", "concat"] if shape else ["dot"])
        if kind == "concat":
            a, b = self.expr(H, depth - 1), self.expr(I, depth - 1)
            joined = node("concat", (a, b) if self.ch.coin() else (b, a), HI)
            return node("matmul", (joined, self.param((*HI, *shape))), shape)
        inner = self.vector_shape()
        v = self.expr(inner, depth - 1) if depth > 0 else self.ch.choice(self.pool[inner])
        # An operand of `@` whose shape is unknown is taken for a matrix: declare the
        # parameters that would leave it unknown.
        self.must_declare |= _loose_params(v)
        if kind == "dot":
            return node("matmul", (v, self.param(inner, declare=True)), S)
        if kind == "left":
            return node("matmul", (self.param((*shape, *inner)), v), shape)
        return node("matmul", (v, self.param((*inner, *shape))), shape)

    # ---- expressions
    def expr(self, shape: ir.Shape, depth: int | None = None) -> ir.Node:
        """A random expression of exactly ``shape``."""
        depth = self.depth if depth is None else depth
        if depth <= 0 or self.ch.integer(0, 4) == 0:
            return self.leaf(shape)
        kinds = ["unary", "unary", "binary", "binary", "product", "where", "special"]
        kinds += ["gain", "layer_norm"] if shape else []
        kind = self.ch.choice(kinds)
        sub = lambda s=shape: self.expr(s, depth - 1)  # noqa: E731
        if kind == "unary":
            op = self.ch.choice(["tanh", "sigmoid", "relu", "abs", "softplus", "neg"])
            return node(op, (sub(),), shape)
        if kind == "binary":
            return self.binary(shape, sub)
        if kind == "product":
            return self.product(shape, depth)
        if kind == "where":
            cond = self.compare(shape if self.ch.coin(0.7) else S, depth - 1)
            if self.ch.coin(0.3):
                return node("mul", (cond, sub()), shape)
            a, b = sub(), sub(shape if self.ch.coin(0.7) else S)
            return node("where", (cond, a, b), shape)
        if kind == "gain":
            return node("mul", (self.param(shape), sub()), shape)
        if kind == "layer_norm":
            return node("layer_norm", (sub(),), shape)
        return self.special(shape, sub)

    def binary(self, shape: ir.Shape, sub: Callable[..., ir.Node]) -> ir.Node:
        op = self.ch.choice(["add", "add", "sub", "mul", "maximum", "minimum"])
        a = sub()
        b = sub(shape if not shape or self.ch.coin(0.7) else S)
        if op in ("maximum", "minimum") and self.safe and a == b:
            op = "add"  # at a tie the derivative of maximum is not defined
        if self.ch.coin():
            a, b = b, a
        return node(op, (a, b), shape)

    def compare(self, shape: ir.Shape, depth: int) -> ir.Node:
        op = self.ch.choice(["lt", "gt", "le", "ge"])
        a = self.expr(shape, depth)
        b = self.expr(shape if self.ch.coin() else S, depth)
        return node(op, (a, b), shape)

    def special(self, shape: ir.Shape, sub: Callable[..., ir.Node]) -> ir.Node:
        """exp, log, sqrt, division and powers: in safe forms when ``safe``."""
        op = self.ch.choice(["exp", "log", "sqrt", "div", "pow"])
        if not self.safe:
            if op in ("div", "pow"):
                return node(op, (sub(), sub(self.ch.choice([S, shape]))), shape)
            return node(op, (sub(),), shape)
        a = sub()
        if op == "exp":  # bounded argument
            return node("exp", (node("tanh", (a,), shape),), shape)
        positive = self.positive(a, shape)
        if op in ("log", "sqrt"):
            return node(op, (positive,), shape)
        if op == "div":
            return node("div", (sub(), positive), shape)
        if self.ch.coin():
            return node("pow", (a, const(self.ch.choice([2.0, 3.0]))), shape)
        exponent = self.ch.choice([const(0.5), const(1.5), node("neg", (const(1.0),), S)])
        return node("pow", (positive, exponent), shape)

    def positive(self, a: ir.Node, shape: ir.Shape) -> ir.Node:
        """A value that is at least about 0.5 whatever ``a`` is."""
        f = self.ch.choice(["softplus", "abs", "sigmoid", "exp"])
        if f == "exp":
            a = node("tanh", (a,), shape)
        return node("add", (node(f, (a,), shape), const(self.ch.choice([0.5, 1.0]))), shape)

    # ---- the cell
    def next_value(self, old: ir.Node) -> ir.Node:
        """The next value of a state: bounded, so long runs stay finite."""
        shape = old.shape
        e = self.anchor(self.expr(shape))
        kind = self.ch.choice(["tanh", "tanh", "sigmoid", "mix"] + ["norm"] * bool(shape))
        if kind == "mix":
            g = node("sigmoid", (self.expr(shape, 1),), shape)
            keep = node("mul", (g, old), shape)
            new = node(
                "mul", (node("sub", (const(1.0), g), shape), node("tanh", (e,), shape)), shape
            )
            return node("add", (keep, new), shape)
        if kind == "norm":
            return node("layer_norm", (e,), shape)
        return node(kind, (e,), shape)

    def anchor(self, e: ir.Node) -> ir.Node:
        """``e``, plus a product of an input or a state where ``anchored`` asks for it."""
        if self.anchored and not e.batched:
            return node("add", (e, self.product(e.shape, 0)), e.shape)
        return e

    def cell(self, name: str = "rand") -> ir.CellIR:
        ch = self.ch
        inputs = {"x": I}
        if ch.coin(0.4):
            inputs["u"] = H
        for n, s in inputs.items():
            self.pool.setdefault(s, []).append(node("input", (), s, n))
        states: dict[str, ir.StateSpec] = {}
        for n in ["h", "c", "m"][: ch.integer(1, self.max_states)]:
            shape = ch.choice([H, H, I, S])
            if ch.coin(0.2):
                states[n] = ir.StateSpec(shape, "learned")
            else:
                states[n] = ir.StateSpec(shape, "constant", ch.choice([0.0, 0.1, -0.5, 1.0]))
            self.pool.setdefault(shape, []).append(node("state", (), shape, n))
        nexts = {}
        for n, spec in states.items():
            nexts[n] = self.next_value(node("state", (), spec.shape, n))
            if ch.coin(0.7):  # later lines may read the new value
                self.pool.setdefault(spec.shape, []).append(nexts[n])
        outputs = {}
        for i in range(ch.integer(1, self.max_outputs)):
            outputs[f"y{i}"] = self.anchor(self.expr(ch.choice([H, H, I, S, HI])))
        used = {n.value for n in ir.walk([*nexts.values(), *outputs.values()]) if n.op == "input"}
        for n in sorted(inputs.keys() - used):
            x = node("input", (), inputs[n], n)
            outputs[f"y{len(outputs)}"] = node("matmul", (x, self.param((*inputs[n], "H"))), H)
        # The reference interpreter reads the size of H from the arrays of the inputs and
        # parameters (rnnc.reference.infer_sizes): some array must have a plain H.
        if not any("H" in p.shape for p in self.params.values()) and "u" not in inputs:
            x = node("input", (), I, "x")
            outputs[f"y{len(outputs)}"] = node("matmul", (x, self.param(("I", "H"))), H)
        for n, spec in states.items():
            if spec.init == "learned":
                self.params[f"{n}0"] = ir.ParamSpec(spec.shape, "zeros")
        return ir.CellIR(name, inputs, states, dict(self.params), nexts, outputs)


def _loose_params(n: ir.Node) -> set[str]:
    """The parameters whose shape ``n``'s shape follows (not through a product)."""
    if n.op == "param":
        return {n.value}
    if n.op in ("matmul", "concat"):
        return set()
    return set().union(*(_loose_params(a) for a in n.args))


def random_ir(ch: Chooser, safe: bool = True) -> ir.CellIR:
    return CellGen(ch, safe).cell()


#: Smaller cells, for tests that compile them (a scan's gradient compiles slowly).
SMALL = {"depth": 2, "max_states": 2, "max_outputs": 2}


def random_cells():
    """Hypothesis: random well-typed cells as IR (safe numerics)."""
    return strategy(random_ir)


# ---------------------------------------------------------------- IR to text
_SYMBOLS = {"add": "+", "sub": "-", "mul": "*", "div": "/", "pow": "**", "matmul": "@"}
_SYMBOLS |= {"lt": "<", "gt": ">", "le": "<=", "ge": ">="}
_INITS = [("glorot", ()), ("orthogonal", (0.9,)), ("uniform", (-0.1, 0.1)), ("normal", (0.2,))]
_INITS += [("zeros", ()), ("ones", ()), ("constant", (0.5,)), ("uniform", ())]


def to_ast(n: ir.Node, names: dict[ir.Node, str]) -> ast.Expr:
    """The expression of ``n``, reading the values in ``names`` by their name."""
    if n in names:
        name = names[n]
        return ast.Primed(name[:-1]) if name.endswith("'") else ast.Name(name)
    if n.op == "const":
        return ast.Number(n.value)
    if n.op in ("input", "state", "param"):
        return ast.Name(n.value)
    args = tuple(to_ast(a, names) for a in n.args)
    if n.op == "neg":
        return ast.Neg(args[0])
    if n.op in _SYMBOLS:
        return ast.BinOp(_SYMBOLS[n.op], *args)
    return ast.Call(n.op, args)


def _shape_text(shape: ir.Shape) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


@dataclass
class Rendering:
    """How a cell is written: which values get names, which parameters are declared
    (and with what initialiser), comments and blank lines."""

    bound: set[ir.Node]
    declared: set[str]
    inits: dict[str, tuple[str, tuple[float, ...]]]
    doc: str | None = None
    comments: bool = False
    param_first: bool = True

    @classmethod
    def draw(cls, ch: Chooser, cell: ir.CellIR, must_declare: set[str]) -> Rendering:
        roots = list(cell.roots())
        inner = [n for n in ir.walk(roots) if n.args and n not in roots]
        bound = {n for n in inner if ch.coin(0.3)}
        learned = {f"{n}0" for n, spec in cell.states.items() if spec.init == "learned"}
        declared = set(must_declare) | {p for p in cell.params if ch.coin(0.3)} - learned
        inits = {p: ch.choice(_INITS) for p in cell.params if ch.coin(0.5)}
        doc = ch.choice([None, None, "A random cell.", "Random.\n\nWith two paragraphs."])
        return cls(bound, declared, inits, doc, ch.coin(0.3), ch.coin())

    def expected(self, cell: ir.CellIR) -> ir.CellIR:
        """The IR the text means: ``cell`` with the initialisers that were written."""
        params = dict(cell.params)
        for p in self.declared & set(self.inits):
            if p in params:
                params[p] = ir.ParamSpec(params[p].shape, *self.inits[p])
        return cell.replace(params=params, doc=self.doc or "")


def render(cell: ir.CellIR, how: Rendering) -> str:
    """The text of ``cell``: bound values on their own lines before their first use,
    the next states (``h' = ...``) and then the outputs."""
    names: dict[ir.Node, str] = {}
    body: list[str] = []

    def line(text: str) -> None:
        if how.comments and len(body) % 3 == 1:
            text += "  # a comment"
        body.append(text)
        if how.comments and len(body) % 4 == 2:
            body.append("")

    for n, spec in cell.states.items():
        init = "learned" if spec.init == "learned" else repr(spec.value)
        line(f"state {n}: {_shape_text(spec.shape)} = {init}")
    decls = []
    for p in sorted(how.declared & set(cell.params)):
        text = f"param {p}: {_shape_text(cell.params[p].shape)}"
        if p in how.inits:
            init, args = how.inits[p]
            text += f" ~ {init}" + (f"({', '.join(map(repr, args))})" if args else "")
        decls.append(text)
    if how.param_first:
        for d in decls:
            line(d)
    roots = [(f"{n}'", r) for n, r in cell.next_state.items()] + list(
        (n, r) for n, r in cell.outputs.items()
    )
    for target, root in roots:
        for n in ir.walk([root]):
            if n in how.bound and n not in names:
                name = f"v{len(names)}"
                line(f"{name} = {format_expr(to_ast(n, names))}")
                names[n] = name
        line(f"{target} = {format_expr(to_ast(root, names))}")
        if target.endswith("'"):
            names.setdefault(root, target)
    if not how.param_first:
        for d in decls:
            line(d)
    ports = [
        ", ".join(f"{n}: {_shape_text(s)}" for n, s in side.items())
        for side in (cell.inputs, cell.output_shapes())
    ]
    head = [f"cell {cell.name}({ports[0]}) -> ({ports[1]}):"]
    if how.doc:
        head.append('    """' + how.doc.replace("\n", "\n    ") + '"""')
    return "\n".join(head + [("    " + b) if b else "" for b in body]) + "\n"


@dataclass
class Generated:
    """A random valid cell: its text and the IR that checking the text must give."""

    text: str
    ir: ir.CellIR


def valid_cell(ch: Chooser, safe: bool = True, **options: Any) -> Generated:
    """A random valid cell as text (``options``: those of :class:`CellGen`). Parameters
    are declared where the text asks for it: at random, where inference would give
    another shape, and where the checker says it cannot infer one (one at a time, until
    the text checks)."""
    gen = CellGen(ch, safe, **options)
    cell = gen.cell()
    how = Rendering.draw(ch, cell, gen.must_declare)
    for _ in range(len(cell.params) + 1):
        text = render(cell, how)
        try:
            with warnings.catch_warnings():
                # unsafe numerics may be warned about (`log(relu(v))`), nothing else
                warnings.simplefilter("error" if safe else "ignore", RnncWarning)
                check_module(parse_module(text, "random.cell"))
        except ShapeInferenceError as exc:
            # the fix names the parameter to declare: `param W_3: [H, N]`
            named = re.search(r"`param (\w+)", exc.fix or "")
            if not named or named.group(1) not in cell.params or named.group(1) in how.declared:
                raise
            how.declared.add(named.group(1))
            continue
        return Generated(text, how.expected(cell))
    raise AssertionError("declaring parameters did not help:\n" + text)


def valid_cells(safe: bool = True):
    """Hypothesis: :class:`Generated` valid cells."""
    return strategy(lambda ch: valid_cell(ch, safe))


# ---------------------------------------------------------------- the corpus
def corpus() -> list[str]:
    """Cells to mutate: the valid and invalid examples of the grammar, the built-in
    cells and the ``cell`` blocks of the language reference."""
    paths = sorted((ROOT / "grammar" / "examples").glob("*/*.cell"))
    paths += sorted((ROOT / "rnnc" / "cells").glob("*.cell"))
    texts = [p.read_text(encoding="utf-8") for p in paths]
    readme = (ROOT / "grammar" / "README.md").read_text(encoding="utf-8")
    texts += re.findall(r"^```cell\n(.*?)^```$", readme, re.S | re.M)
    return texts


# ---------------------------------------------------------------- mutations
_TOKEN = re.compile(
    r'"""(?:.|\n)*?"""|"[^"\n]*"|#[^\n]*|\r?\n[ \t]*|[A-Za-z_][A-Za-z0-9_]*\'?'
    r"|(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?|\*\*|<=|>=|->|[ \t]+|.|\n",
)
#: Tokens a mutation may put anywhere.
VOCABULARY = [
    *"cell state param learned ~ = ' h' x y h W I H 0 1 2.5 1e-3 1e999 ( ) [ ] , : ->".split(),
    *'+ - * / @ ** < > <= >= == ! ^ ; . { } \\ " tanh sigmoid concat where layer_norm'.split(),
    *"log sqrt maximum orthogonal uniform constant glorot 2*H H+1".split(),
    *["\n", "\n    ", "\n        ", "\t", " ", '"""doc"""', "# c", "\n  "],
]
_OPERATORS = ["+", "-", "*", "/", "@", "**", "<", ">", "<=", ">=", "=", ",", "~"]
#: Characters that are rarely in a cell, for random insertions.
ODD = ["\x00", "\r", "\x0c", "\x0b", "\u2028", "\x85", "\ufeff", "é", "λ", "\t", "\\", "'", '"']
#: Python a hostile cell file might hold: it must never run.
PAYLOADS = [
    "__import__('os').system('touch /tmp/rnnc_pwned')",
    "eval('1')",
    'exec("import os")',
    "open('/etc/passwd').read()",
    "x.__class__.__bases__",
    "lambda: 0",
    "[c for c in ()]",
    "import os",
    "__import__",
    "globals()",
    "f'{1}'",
    "os.system",
    "$(rm -rf /)",
]


def tokens(text: str) -> list[str]:
    return _TOKEN.findall(text)


def _edit_name(ch: Chooser, name: str) -> str:
    """``name`` with one letter added, removed, changed or two swapped."""
    i = ch.integer(0, len(name) - 1)
    letter = ch.choice("abcxyzWHI_019")
    kind = ch.choice(["insert", "delete", "replace", "swap"])
    if kind == "insert":
        return name[:i] + letter + name[i:]
    if kind == "delete" and len(name) > 1:
        return name[:i] + name[i + 1 :]
    if kind == "swap" and i + 1 < len(name):
        return name[:i] + name[i + 1] + name[i] + name[i + 2 :]
    return name[:i] + letter + name[i + 1 :]


def _dims_at(toks: list[str]) -> list[int]:
    """The indices of the tokens inside square brackets (the dimensions of shapes)."""
    inside, out = 0, []
    for i, t in enumerate(toks):
        inside += (t == "[") - (t == "]")
        if inside > 0 and t != "[" and t.strip():
            out.append(i)
    return out


MUTATIONS = ["delete", "swap", "duplicate", "replace", "dimension", "misspell", "line"]
MUTATIONS += ["indent", "char", "payload", "rename", "operator", "prime", "number"]


def mutate(ch: Chooser, text: str, kind: str | None = None) -> str:
    """``text`` after one random edit (of the kind given, one of :data:`MUTATIONS`): a
    token deleted, swapped, duplicated or replaced, a dimension changed, a name
    misspelt or swapped for another, an operator or number changed, a prime added or
    removed, a line moved or re-indented, an odd character or a piece of Python put in."""
    toks = tokens(text) or [""]
    kind = kind or ch.choice(MUTATIONS)
    i = ch.integer(0, len(toks) - 1)
    names = [k for k, t in enumerate(toks) if re.fullmatch(r"[A-Za-z_]\w*'?", t)] or [i]
    if kind == "rename":  # a name replaced by another of the text: still parses
        toks[ch.choice(names)] = toks[ch.choice(names)].rstrip("'")
    elif kind == "operator":
        ops = [k for k, t in enumerate(toks) if t in _OPERATORS] or [i]
        toks[ch.choice(ops)] = ch.choice(_OPERATORS)
    elif kind == "prime":
        k = ch.choice(names)
        toks[k] = toks[k][:-1] if toks[k].endswith("'") else toks[k] + "'"
    elif kind == "number":
        numbers = [k for k, t in enumerate(toks) if t[:1].isdigit()] or [i]
        toks[ch.choice(numbers)] = ch.choice(["0", "1", "2", "0.5", "1e-6", "3", "1e308", "00"])
    elif kind == "delete":
        del toks[i]
    elif kind == "swap":
        j = (
            min(len(toks) - 1, i + ch.integer(1, 3))
            if ch.coin(0.8)
            else ch.integer(0, len(toks) - 1)
        )
        toks[i], toks[j] = toks[j], toks[i]
    elif kind == "duplicate":
        toks.insert(i, toks[i])
    elif kind == "replace":
        toks[i] = ch.choice(VOCABULARY)
    elif kind == "dimension":
        places = _dims_at(toks) or [i]
        toks[ch.choice(places)] = ch.choice(
            ["H", "I", "K", "x", "0", "3", "2*H", "H + 1", "1.5", "-1", "", ",", "H*2"]
        )
    elif kind == "misspell":
        k = ch.choice(names)
        toks[k] = _edit_name(ch, toks[k]) if toks[k] else "z"
    elif kind == "char":
        pos = ch.integer(0, len(text))
        return text[:pos] + ch.choice(ODD + list("()[]:=,'#\"\\@*+-<>~")) + text[pos:]
    elif kind == "payload":
        names = [k for k, t in enumerate(toks) if re.fullmatch(r"[A-Za-z_]\w*", t)] or [i]
        toks[ch.choice(names)] = ch.choice(PAYLOADS)
    else:
        return _mutate_lines(ch, text, kind)
    return "".join(toks)


def _mutate_lines(ch: Chooser, text: str, kind: str) -> str:
    lines = text.split("\n")
    i = ch.integer(0, len(lines) - 1)
    if kind == "indent":
        change = ch.choice(["+ ", "-", "+\t", "+    ", "--", "strip"])
        if change == "strip":
            lines[i] = lines[i].lstrip()
        elif change.startswith("-"):
            lines[i] = lines[i][len(change) :] if lines[i][: len(change)].isspace() else lines[i]
        else:
            lines[i] = change[1:] + lines[i]
        return "\n".join(lines)
    op = ch.choice(["delete", "duplicate", "swap", "join"])
    j = ch.integer(0, len(lines) - 1)
    if op == "delete":
        del lines[i]
    elif op == "duplicate":
        lines.insert(j, lines[i])
    elif op == "swap":
        lines[i], lines[j] = lines[j], lines[i]
    elif i + 1 < len(lines):
        lines[i : i + 2] = [lines[i] + " " + lines[i + 1].lstrip()]
    return "\n".join(lines)


def mutated(ch: Chooser, text: str) -> str:
    for _ in range(ch.integer(1, 3)):
        text = mutate(ch, text)
    return text


def random_text(ch: Chooser) -> str:
    """Random text: tokens of the language in random order, or random characters."""
    if ch.coin(0.3):
        alphabet = "cel stapr()[]:,-><=+*/@'\"#\n    \tHIxyWh01.e~_\\" + "".join(ODD)
        return "".join(ch.choice(alphabet) for _ in range(ch.integer(0, 80)))
    parts = ["cell c(x: [I]) -> (y: [H]):\n    "] if ch.coin(0.5) else []
    parts += [ch.choice(VOCABULARY) + ch.choice(["", " "]) for _ in range(ch.integer(0, 40))]
    return "".join(parts)


# ---------------------------------------------------------------- the property
class CaseTimeout(Exception):  # noqa: N818 - it is what happened
    """A case ran past its time box."""


@contextmanager
def time_box(seconds: float) -> Iterator[None]:
    """Raise :class:`CaseTimeout` in the block after ``seconds`` (a no-op where there is
    no ``SIGALRM``, or outside the main thread)."""

    def expire(signum, frame):
        raise CaseTimeout(f"ran past {seconds} s")

    try:
        previous = signal.signal(signal.SIGALRM, expire)
    except (AttributeError, ValueError):
        yield
        return
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def check_span(span: Span | None, text: str, what: str) -> None:
    """``span`` points into ``text``: its line exists, its columns lie within the line
    (the start at most at the line break, the end at most just after it), and it shows
    that line."""
    assert span is not None, f"{what} has no place"
    lines = text.removeprefix("\ufeff").split("\n")
    assert 1 <= span.line <= len(lines), f"{what}: line {span.line} of {len(lines)}"
    width = len(lines[span.line - 1].removesuffix("\r"))
    assert 1 <= span.column <= width + 1, f"{what}: column {span.column} of a line of {width}"
    assert span.line <= span.end_line <= len(lines), f"{what}: end line {span.end_line}"
    end_width = len(lines[span.end_line - 1].removesuffix("\r"))
    # the end may include the line break (a caret under the end of the line)
    assert 1 <= span.end_column <= end_width + 2, (
        f"{what}: end column {span.end_column} of a line of {end_width}"
    )
    if span.end_line == span.line:
        assert span.end_column >= span.column, f"{what}: ends before it starts"
    if span.text is not None:
        assert span.source_line() == lines[span.line - 1].removesuffix("\r"), f"{what}: wrong line"


def outcome(text: str, filename: str = "fuzz.cell") -> str:
    """Parse and check ``text``: ``"ok"`` or the name of the :class:`RnncError` raised.

    Asserts that the error (its notes, and every warning) points inside the text and
    renders. Any other exception propagates: it is a bug.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            cells = check_module(parse_module(text, filename))
        except RnncError as exc:
            check_span(exc.span, text, type(exc).__name__)
            for span, _ in exc.notes:
                check_span(span, text, f"a note of {type(exc).__name__}")
            assert exc.message and exc.fix and str(exc)
            return type(exc).__name__
    for w in caught:
        if issubclass(w.category, RnncWarning):
            check_span(w.message.span, text, "a warning")
    assert all(isinstance(c, ir.CellIR) for c in cells.values())
    return "ok"
