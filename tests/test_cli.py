"""``rnnc check`` and ``rnnc show``, called through :func:`rnnc.cli.main`; one test runs
the installed ``rnnc`` console script."""

from __future__ import annotations

import gc
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import rnnc
from rnnc import ir
from rnnc.cli import console, main
from rnnc.ir_format import format_ir, format_signature, format_value

VALID = Path(__file__).resolve().parents[1] / "grammar" / "examples" / "valid"

ACC = '''\
cell acc(x: [N]) -> (y: [N]):
    """Running sum, scaled."""
    state s: [N] = 0
    total = s + x
    s' = total
    y = g * s'
'''


@pytest.fixture
def acc(tmp_path: Path) -> Path:
    path = tmp_path / "acc.cell"
    path.write_text(ACC, encoding="utf-8")
    return path


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


# ---------------------------------------------------------------- check
def test_check_prints_one_line_per_cell(capsys):
    status, out, err = _run(capsys, "check", "gru", str(VALID / "several_cells.cell"))
    assert (status, err) == (0, "")
    path = VALID / "several_cells.cell"
    assert out.splitlines() == [
        "gru.cell: gru(x: [I]) -> (y: [H]), 1 state, 12 parameters, dims H, I",
        f"{path}: elman(x: [I]) -> (y: [O]), 1 state, 4 parameters, dims H, I, O",
        f"{path}: jordan(x: [I]) -> (y: [O]), 1 state, 5 parameters, dims H, I, O",
        f"{path}: indrnn(x: [I]) -> (y: [H]), 1 state, 3 parameters, dims H, I",
    ]


def test_check_summary_of_a_cell_without_state_or_dimension(capsys, tmp_path: Path):
    path = tmp_path / "double.cell"
    path.write_text("cell double(x: [4]) -> (y: [4]):\n    y = 2 * x\n", encoding="utf-8")
    status, out, _ = _run(capsys, "check", str(path))
    assert (status, out) == (0, f"{path}: double(x: [4]) -> (y: [4]), 0 states, 0 parameters\n")


def test_check_reports_the_error_and_goes_on(capsys, acc: Path, tmp_path: Path):
    bad = tmp_path / "bad.cell"
    bad.write_text("cell bad(x: [I]) -> (y: [H]):\n    y = tahn(x @ W)\n", encoding="utf-8")
    status, out, err = _run(capsys, "check", str(bad), str(acc))
    assert status == 1
    assert out == f"{acc}: acc(x: [N]) -> (y: [N]), 1 state, 1 parameter, dims N\n"
    assert err == (
        f"{bad}:2:9: error: unknown function `tahn`\n"
        "        y = tahn(x @ W)\n"
        "            ^^^^\n"
        "fix: did you mean `tanh`? The built-in functions are: sigmoid, tanh, relu, exp, "
        "log, sqrt, abs, softplus, layer_norm, maximum, minimum, where, concat\n"
        "see: https://github.com/rnnc/rnnc/blob/main/docs/errors.md#unknownnameerror\n"
    )


def test_check_of_a_missing_file(capsys):
    status, out, err = _run(capsys, "check", "no/such.cell")
    assert (status, out) == (1, "")
    assert err.startswith("error: no file and no built-in cell named 'no/such.cell'\n")


def test_check_prints_warnings_and_strict_fails_on_them(capsys, tmp_path: Path):
    path = tmp_path / "unused.cell"
    path.write_text("cell f(x: [I], u: [I]) -> (y: [I]):\n    y = x\n", encoding="utf-8")
    status, out, err = _run(capsys, "check", str(path))
    assert status == 0
    assert out == f"{path}: f(x: [I], u: [I]) -> (y: [I]), 0 states, 0 parameters, dims I\n"
    assert err.startswith(f"{path}:1:16: warning: input `u` is never used\n")
    status, _, _ = _run(capsys, "check", "--strict", str(path))
    assert status == 1


def test_check_needs_a_file(capsys):
    with pytest.raises(SystemExit) as info:
        main(["check"])
    assert info.value.code == 2
    assert "the following arguments are required: FILE" in capsys.readouterr().err


# ---------------------------------------------------------------- show
def test_show_everything_about_a_cell(capsys, acc: Path):
    status, out, err = _run(capsys, "show", str(acc), "--dims", "N=3000")
    assert (status, err) == (0, "")
    assert (
        out
        == """\
cell acc(x: [N]) -> (y: [N])
  Running sum, scaled.

dimensions: N=3000
inputs
  x  [N]  [3000]
states
  s  [N]  [3000]  = 0
parameters: 1 tensor, 3,000 numbers
  g  [N]  [3000]  3,000  ~ zeros (default)
local values
  total  [N]  [3000]
  y      [N]  [3000]
next states
  s'  [N]  [3000]
outputs
  y  [N]  [3000]

step, for one example (* marks values that depend on a state):
%0 = state s               [N]      *
%1 = input x               [N]
%2 = add(%0, %1)           [N]      * # total
s' = %2
%3 = param g               [N]
%4 = mul(%3, %2)           [N]      * # y
y = %4
"""
    )


def test_show_a_builtin_without_dims(capsys):
    status, out, _ = _run(capsys, "show", "lstm")
    assert status == 0
    assert out.startswith("cell lstm(x: [I]) -> (y: [H])\n")
    assert "\ndimensions: H, I\n" in out
    assert "\nparameters: 16\n" in out
    assert "  W_hi  [H, H]  ~ uniform\n" in out
    assert "\n  c  [H]  = 0\n" in out
    assert "\n  c'  [H]\n" in out
    assert "\n%2 = matmul(%0, %1)        [H]\n" in out
    assert out.endswith("h' = %47\nc' = %45\ny = %47\n")


def test_show_parameter_count_of_the_gru(capsys):
    status, out, _ = _run(capsys, "show", "gru", "--dims", "I=64,H=256")
    assert status == 0
    assert "\nparameters: 12 tensors, 247,296 numbers\n" in out
    assert "\n  W_hr  [H, H]  [256, 256]  65,536  ~ uniform\n" in out


def test_show_one_cell_of_several(capsys):
    path = str(VALID / "several_cells.cell")
    status, out, _ = _run(capsys, "show", path, "--cell", "jordan")
    assert status == 0
    assert out.startswith("cell jordan(x: [I]) -> (y: [O])\n")
    assert "cell elman" not in out
    assert "%9 = tanh(%8)              [H]      * # hidden\n" in out
    status, out, _ = _run(capsys, "show", path)
    assert [line for line in out.splitlines() if line.startswith("cell ")] == [
        "cell elman(x: [I]) -> (y: [O])",
        "cell jordan(x: [I]) -> (y: [O])",
        "cell indrnn(x: [I]) -> (y: [H])",
    ]


def test_show_learned_state_and_initialisers(capsys):
    status, out, _ = _run(capsys, "show", str(VALID / "initializers.cell"))
    assert status == 0
    assert "  h  [H]  = -0.5\n" in out
    assert "  U   [H, H]  ~ orthogonal(0.9)\n" in out
    assert "  u3  [H]     ~ uniform(-0.1, 0.3)\n" in out
    status, out, _ = _run(capsys, "show", str(VALID / "learned_state.cell"))
    assert "  h  [H]  = learned (h0)\n" in out


def test_show_unknown_cell(capsys):
    status, _, err = _run(capsys, "show", "rnn", "--cell", "lstm")
    assert status == 1
    assert err.startswith("error: rnn has no cell named 'lstm'\nfix: the cells there are: rnn\n")


def test_show_with_missing_or_unknown_dims(capsys):
    status, _, err = _run(capsys, "show", "lstm", "--dims", "I=3")
    assert status == 1
    assert err.splitlines()[:2] == [
        "error: cell `lstm` needs the size of H",
        "fix: give every dimension: --dims H=64,I=3",
    ]
    assert err.rstrip().endswith("#missingdimensionerror")
    status, _, err = _run(capsys, "show", "lstm", "--dims", "I=3,H=4,Q=5")
    assert status == 1
    assert err.splitlines()[:2] == [
        "error: no cell shown has a dimension Q",
        "fix: the dimensions are: H, I",
    ]


@pytest.mark.parametrize("dims", ["I", "I=0", "I=x", "3=4", "I=2.5"])
def test_show_rejects_malformed_dims(capsys, dims: str):
    with pytest.raises(SystemExit) as info:
        main(["show", "lstm", "--dims", dims])
    assert info.value.code == 2
    assert "is not NAME=SIZE with a positive whole SIZE" in capsys.readouterr().err


# ---------------------------------------------------------------- ir_format
def test_format_signature_and_values():
    assert format_signature(rnnc.load_cell("gru")) == "gru(x: [I]) -> (y: [H])"
    assert [format_value(v) for v in (1.0, -2.0, 0.5, 1e-5, 1e20)] == [
        "1",
        "-2",
        "0.5",
        "1e-05",
        "1e+20",
    ]


def test_format_ir_splits_work_before_and_after_the_loop():
    x = ir.Node("input", (), ("I",), "x")
    w = ir.Node("param", (), ("I", "H"), "W")
    xw = ir.Node("matmul", (x, w), ("H",))
    h = ir.Node("state", (), ("H",), "h")
    new = ir.Node("add", (ir.Node("seq", (), ("H",), "xw"), h), ("H",))
    cell = ir.CellIR(
        name="c",
        inputs={"x": ("I",)},
        states={"h": ir.StateSpec(("H",))},
        params={"W": ir.ParamSpec(("I", "H"))},
        next_state={"h": new},
        outputs={},
        precompute={"xw": xw},
        postcompute={"y": ir.Node("slice", (ir.Node("new", (), ("H",), "h"),), (1,), (0, 1))},
    )
    assert format_ir(cell, {new: "sum"}) == "\n".join(
        [
            "before the loop, for every step at once:",
            "  %0 = input x               [I]",
            "  %1 = param W               [I, H]",
            "  %2 = matmul(%0, %1)        [H]",
            "  xw = %2",
            "in the loop, step by step:",
            "  %3 = seq xw                [H]",
            "  %4 = state h               [H]      *",
            "  %5 = add(%3, %4)           [H]      * # sum",
            "  h' = %5",
            "after the loop, for every step at once:",
            "  %6 = new h                 [H]      *",
            "  %7 = slice(%6, 0:1)        [1]      *",
            "  y = %7",
        ]
    )


# ---------------------------------------------------------------- the console script
def test_installed_console_script(tmp_path: Path):
    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    script = shutil.which("rnnc", path=search)
    if script is None:
        pytest.skip("the rnnc console script is not installed")
    (tmp_path / "acc.cell").write_text(ACC, encoding="utf-8")
    done = subprocess.run(
        [script, "check", "acc.cell", "lstm"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "acc.cell: acc(x: [N]) -> (y: [N]), 1 state, 1 parameter, dims N",
        "lstm.cell: lstm(x: [I]) -> (y: [H]), 2 states, 16 parameters, dims H, I",
    ]
    bad = subprocess.run([script, "check", "nothing.cell"], cwd=tmp_path, capture_output=True)
    assert bad.returncode == 1


@pytest.mark.parametrize(("cell", "status"), [("lstm", 0), ("nothing.cell", 1)])
def test_console_returns_the_status_and_freezes_the_heap(monkeypatch, capsys, cell, status):
    """The console script's faster exit: objects alive at the end are frozen, so the
    collection Python runs as it exits passes over them."""
    monkeypatch.setattr(sys, "argv", ["rnnc", "check", cell])
    try:
        assert console() == status
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
    assert capsys.readouterr().out.startswith("lstm.cell") == (status == 0)


# ---------------------------------------------------------------- show --optimized
def _cost_rows(out: str) -> dict[str, list[str]]:
    """The rows of the cost table ``show --optimized`` prints, by region."""
    rows = {}
    for line in out.splitlines():
        for region in ("before the loop", "in the loop", "after the loop"):
            if line.startswith(f"  {region} "):
                rows[region] = line[len(region) + 2 :].split()
    return rows


def test_show_optimized_lstm_has_one_product_in_the_loop(capsys):
    status, out, err = _run(capsys, "show", "lstm", "--optimized", "--dims", "I=3,H=2")
    assert (status, err) == (0, "")
    assert out.startswith("cell lstm(x: [I]) -> (y: [H])\n")  # saved values stay internal
    assert "step after the passes, for one example" in out
    ir_text = out.split("step after the passes", 1)[1]
    assert "before the loop, for every step at once:" in ir_text
    assert "in the loop, step by step:" in ir_text
    assert "after the loop, for every step at once:" in ir_text
    assert "concat(" in ir_text and "_save0 = " in ir_text
    # products and FLOPs (per example): after the passes, then as written
    assert _cost_rows(out) == {
        "before the loop": ["1", "48", "0", "0"],  # x @ W
        "in the loop": ["1", "66", "8", "122"],  # with the [4H] bias add: 8
        "after the loop": ["0", "0", "0", "0"],
    }
    assert "in all: 114 FLOPs per step after the passes, 122 as written" in out


def test_show_optimized_takes_a_backend_s_defaults(capsys):
    argv = ("show", "lstm", "--optimized", "--dims", "I=3,H=2")
    _, c_out, _ = _run(capsys, *argv)
    status, jax_out, err = _run(capsys, *argv, "--backend", "jax")
    assert (status, err) == (0, "")
    # widen is off on JAX: the biases go into the loop as four sequences, not one
    assert "seq _wide0" in c_out and "seq _wide0" not in jax_out
    assert "seq _pre3" in jax_out


def test_show_optimized_matches_the_stats_module(capsys):
    from rnnc.passes import optimize
    from rnnc.passes.stats import cost

    sizes = {"I": 128, "H": 256}
    status, out, _ = _run(capsys, "show", "gru", "--optimized", "--dims", "I=128,H=256")
    assert status == 0
    fast = optimize(rnnc.load_cell("gru"), True, sizes)
    c = cost(fast, sizes)
    rows = _cost_rows(out)
    assert rows["in the loop"][:2] == [str(c["loop"]["products"]), f"{c['loop']['flops']:,}"]
    assert rows["before the loop"][0] == "1"  # the three input products, fused and hoisted
    assert rows["in the loop"][0] == "1"  # the three state products, fused


def test_show_optimized_sinks_an_output_projection(capsys):
    path = str(VALID / "several_cells.cell")
    argv = ("show", path, "--cell", "elman", "--optimized", "--dims", "I=4,H=5,O=6")
    status, out, _ = _run(capsys, *argv)
    assert status == 0
    assert _cost_rows(out)["after the loop"][0] == "1"
    assert _cost_rows(out)["in the loop"][0] == "1"


def test_show_optimized_needs_dims(capsys):
    status, out, err = _run(capsys, "show", "lstm", "--optimized")
    assert (status, out) == (1, "")
    assert err.splitlines()[:2] == [
        "error: --optimized needs the size of every dimension: fuse writes numeric slice "
        "bounds, and FLOPs are counted in numbers",
        "fix: add --dims H=64,I=64",
    ]


def test_show_optimized_cell_without_dimensions(capsys, tmp_path: Path):
    path = tmp_path / "double.cell"
    path.write_text("cell double(x: [4]) -> (y: [4]):\n    y = 2 * x\n", encoding="utf-8")
    status, out, _ = _run(capsys, "show", str(path), "--optimized")
    assert status == 0
    assert "in all: 4 FLOPs per step after the passes, 4 as written" in out


def test_bench_rejects_an_unknown_mode_before_building_anything():
    """``rnnc bench`` passes its options to ``benchmarks/run.py``, which names the choices
    for a misspelt one instead of failing later inside a candidate."""
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "run.py"
    if not script.exists():
        pytest.skip("no benchmarks/ beside this test")
    done = subprocess.run(
        [sys.executable, str(script), "--modes", "fwd+grad", "--no-write"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "--modes: unknown fwd+grad; choose from forward, gradient" in done.stderr
