"""The grammar, its corpus and its reference.

- ``grammar/cell.lark`` builds with ``strict=True``: LALR(1) with no conflicts.
- Every ``grammar/examples/valid/*.cell`` checks without a warning, and its IR runs in
  the reference interpreter.
- Every ``grammar/examples/invalid/*.cell`` raises exactly the error its first line
  names (``# error: ClassName at LINE:COLUMN``), with the message of the optional
  second line (``# message: ...``).
- Every ```` ```cell ```` block of ``grammar/README.md`` checks.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

import rnnc
from rnnc import errors, ir, reference
from rnnc.init import initialize
from rnnc.lang.parser import _lark, grammar_path, parse_module
from rnnc.lang.pretty import format_module

GRAMMAR = Path(__file__).resolve().parents[1] / "grammar"
VALID = sorted((GRAMMAR / "examples" / "valid").glob("*.cell"))
INVALID = sorted((GRAMMAR / "examples" / "invalid").glob("*.cell"))
EXPECTED = re.compile(r"# error: (\w+) at (\d+):(\d+)\n(?:# message: (.*)\n)?")

#: Sizes for the dimension names the corpus uses (all different, to catch mix-ups).
SIZES = {"I": 3, "H": 4, "K": 2, "O": 5, "F": 6}


def _id(path: Path) -> str:
    return path.stem


def test_grammar_is_conflict_free():
    pytest.importorskip("interegular")
    parser = _lark(strict=True)  # raises on any shift/reduce or reduce/reduce conflict
    assert parser.options.parser == "lalr"


def test_parser_reads_the_grammar_of_the_source_tree():
    # In an editable install the single copy is grammar/cell.lark (the wheel test
    # covers the installed copy).
    assert grammar_path() == GRAMMAR / "cell.lark"


def test_the_corpus_is_large_enough():
    assert len(VALID) >= 10
    assert len(INVALID) >= 15


def _run_reference(cell: ir.CellIR) -> None:
    """Run ``cell`` on a small random batch; every output must be finite."""
    rng = np.random.default_rng(0)
    params = {
        name: initialize(spec.init, spec.args, ir.shape_size(spec.shape, SIZES), rng)
        for name, spec in cell.params.items()
    }
    inputs = {
        name: rng.normal(size=(2, 3, *ir.shape_size(shape, SIZES)))
        for name, shape in cell.inputs.items()
    }
    outputs, final = reference.run(cell, params, inputs)
    for name, node in cell.outputs.items():
        assert outputs[name].shape == (2, 3, *ir.shape_size(node.shape, SIZES))
        assert np.all(np.isfinite(outputs[name])), name
    for name, spec in cell.states.items():
        assert final[name].shape == (2, *ir.shape_size(spec.shape, SIZES))


@pytest.mark.parametrize("path", VALID, ids=_id)
def test_valid_cell_checks_and_runs(path: Path):
    text = path.read_text(encoding="utf-8")
    cells = rnnc.parse(text, str(path))  # RnncWarning is an error in the test suite
    assert cells
    for cell in cells.values():
        assert isinstance(cell, ir.CellIR)
        assert set(cell.next_state) == set(cell.states)
        for spec in cell.params.values():
            assert all(isinstance(d, int | str) for d in spec.shape)
        _run_reference(cell)


@pytest.mark.parametrize("path", VALID, ids=_id)
def test_valid_cell_prints_back_to_the_same_tree(path: Path):
    module = parse_module(path.read_text(encoding="utf-8"), str(path))
    assert parse_module(format_module(module)) == module


@pytest.mark.parametrize("path", INVALID, ids=_id)
def test_invalid_cell_raises_the_stated_error(path: Path):
    text = path.read_text(encoding="utf-8")
    header = EXPECTED.match(text)
    assert header, f"{path.name} must begin with `# error: ClassName at LINE:COLUMN`"
    name, line, column, message = header.groups()
    expected = getattr(errors, name)
    assert issubclass(expected, errors.RnncError)
    with pytest.raises(errors.RnncError) as info:
        rnnc.parse(text, str(path))
    exc = info.value
    assert type(exc) is expected, str(exc)
    assert (exc.line, exc.column) == (int(line), int(column)), str(exc)
    if message is not None:
        assert exc.message == message
    assert str(exc).startswith(f"{path}:{line}:{column}: error: ")


def test_invalid_corpus_covers_every_language_error():
    named = {EXPECTED.match(p.read_text(encoding="utf-8")).group(1) for p in INVALID}
    language = {
        "CellSyntaxError",
        "UnknownNameError",
        "DuplicateDefinitionError",
        "UseBeforeDefinitionError",
        "ShapeMismatchError",
        "NextStateShapeError",
        "ShapeInferenceError",
        "MissingNextStateError",
        "MissingOutputError",
        "ArgumentCountError",
    }
    assert language <= named


def _readme_blocks() -> list[tuple[int, str]]:
    """The ```` ```cell ```` blocks of grammar/README.md with the line they start on."""
    text = (GRAMMAR / "README.md").read_text(encoding="utf-8")
    blocks = []
    for match in re.finditer(r"^```cell\n(.*?)^```$", text, re.S | re.M):
        blocks.append((text.count("\n", 0, match.start()) + 2, match.group(1)))
    return blocks


def test_readme_quotes_the_grammar_as_it_is():
    readme = (GRAMMAR / "README.md").read_text(encoding="utf-8")
    grammar = {line.strip() for line in (GRAMMAR / "cell.lark").read_text().splitlines()}
    quoted = re.findall(r"^```lark\n(.*?)^```$", readme, re.S | re.M)
    assert quoted
    for block in quoted:
        for line in block.splitlines():
            assert not line.strip() or line.strip() in grammar, line


def test_readme_has_examples():
    assert len(_readme_blocks()) >= 15


@pytest.mark.parametrize("line, block", _readme_blocks(), ids=lambda v: str(v)[:12])
def test_readme_example_checks(line: int, block: str):
    cells = rnnc.parse(block, f"grammar/README.md (block at line {line})")
    assert cells
    module = parse_module(block)
    assert parse_module(format_module(module)) == module


def test_builtin_cells_check():
    for name in rnnc.compile.BUILTIN_CELLS:
        cell = rnnc.load_cell(name)
        assert cell.name == name
