"""``rnnc bench``: run ``benchmarks/run.py`` (rnnc against PyTorch and JAX).

The benchmark lives in the source tree, not in the wheel; this command finds it next
to the package (an editable install or a clone) and runs it in a new process, so
that it can pin threads before NumPy, PyTensor and PyTorch start. Every option after
``bench`` goes to the script (``rnnc bench --cells lstm --sizes medium``). Like the
script, it records its figures in ``benchmarks/results.json`` and
``benchmarks/README.md`` unless given ``--no-write``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from typing import Any

from rnnc.errors import OptionError

__all__ = ["add_parser", "run", "script"]


def add_parser(sub: Any) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        "bench",
        help="benchmark rnnc against PyTorch and JAX (benchmarks/run.py)",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument("options", nargs=argparse.REMAINDER, help="passed to benchmarks/run.py")
    return parser


def script() -> Path:
    """The benchmark script of this source tree."""
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "run.py"
    if not path.is_file():
        raise OptionError(
            "rnnc bench needs the source tree: benchmarks/run.py is not installed with the wheel",
            fix="clone the repository and run `python benchmarks/run.py` there",
        )
    return path


def run(args: argparse.Namespace) -> int:
    return subprocess.call([sys.executable, str(script()), *args.options])
