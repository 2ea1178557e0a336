"""The wheel carries everything a cell needs, the grammar above all.

``grammar/cell.lark`` is the only copy of the grammar; pyproject.toml puts it into the
wheel as ``rnnc/_grammar/cell.lark``. This test builds the wheel, installs it into a new
virtual environment (which sees this environment's packages, so that PyTensor is not
installed again, but not this checkout), and from a folder outside the repository
imports rnnc there, parses a cell and runs the ``rnnc`` command.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

PROBE = """
import json, rnnc
from rnnc.lang.parser import grammar_path
cells = rnnc.parse("cell acc(x: [N]) -> (y: [N]):\\n    state s: [N] = 0\\n    s' = s + x\\n    y = s'\\n")
print(json.dumps({
    "rnnc": rnnc.__file__,
    "grammar": str(grammar_path()),
    "grammar_text": grammar_path().read_text(encoding="utf-8"),
    "cells": list(cells),
    "lstm": rnnc.load_cell("lstm").name,
}))
"""


def _run(*argv: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    done = subprocess.run(
        [str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, f"{' '.join(map(str, argv))}\n{done.stdout}\n{done.stderr}"
    return done


def _build_wheel(out: Path) -> Path:
    if importlib.util.find_spec("build") is not None:
        command = [sys.executable, "-m", "build", "--wheel", "--outdir", out, ROOT]
        if importlib.util.find_spec("hatchling") is not None:
            command.append("--no-isolation")  # no download of the build backend
    else:
        command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", out, ROOT]
    _run(*command, cwd=out)
    (wheel,) = out.glob("rnnc-*.whl")
    return wheel


@pytest.mark.slow
def test_installed_wheel_finds_its_grammar(tmp_path: Path):
    dist = tmp_path / "dist"
    dist.mkdir()
    wheel = _build_wheel(dist)

    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", "--system-site-packages", venv, cwd=tmp_path)
    bin_dir = venv / ("Scripts" if os.name == "nt" else "bin")
    python = bin_dir / "python"
    _run(python, "-m", "pip", "install", "--no-deps", "--no-index", "-q", wheel, cwd=tmp_path)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    probe = json.loads(_run(python, "-c", PROBE, cwd=elsewhere).stdout)
    package = Path(probe["rnnc"]).parent
    assert venv in package.parents, f"rnnc was imported from {package}, not from the wheel"
    assert Path(probe["grammar"]) == package / "_grammar" / "cell.lark"
    assert probe["grammar_text"] == (ROOT / "grammar" / "cell.lark").read_text(encoding="utf-8")
    assert probe["cells"] == ["acc"]
    assert probe["lstm"] == "lstm"

    (elsewhere / "acc.cell").write_text(
        "cell acc(x: [N]) -> (y: [N]):\n    state s: [N] = 0\n    s' = s + x\n    y = s'\n",
        encoding="utf-8",
    )
    done = _run(bin_dir / "rnnc", "check", "acc.cell", cwd=elsewhere)
    assert done.stdout == "acc.cell: acc(x: [N]) -> (y: [N]), 1 state, 0 parameters, dims N\n"
