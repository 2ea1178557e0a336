"""Shared fixtures: the PyTorch reference cases and the backend used by fast tests."""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

REFERENCE = Path(__file__).parent / "reference"

# rnnc's cache (compiled functions, the analysed grammar) of a test session lives in a
# folder of its own, removed at the end: tests neither read nor fill the user's.
if "RNNC_CACHE_DIR" not in os.environ:
    os.environ["RNNC_CACHE_DIR"] = tempfile.mkdtemp(prefix="rnnc-tests-")
    atexit.register(shutil.rmtree, os.environ["RNNC_CACHE_DIR"], ignore_errors=True)

#: Most tests compile with PyTensor's FAST_COMPILE mode ("python"): quick to build,
#: fine for small shapes. Tests about a backend name it explicitly.
FAST = "python"

#: Words of the small training texts.
WORDS = "the quick brown fox jumps over a lazy dog while seven wizards hex".split()


def make_text(n: int = 200, seed: int = 0) -> str:
    """``n`` random words of :data:`WORDS`, a full stop and a newline."""
    rng = np.random.default_rng(seed)
    return " ".join(WORDS[i] for i in rng.integers(0, len(WORDS), n)) + ".\n"


#: A training text of five batches of 4 x 8 characters: four train, one validation.
TINY = make_text()[: 5 * 32 + 1]


def quiet(line: str) -> None:
    """An ``out=`` for training runs that prints nothing."""


#: rnnc's name for each PyTorch mode in tests/reference.
TORCH_MODES = {"rnn_tanh": "rnn", "rnn_relu": "rnn_relu", "lstm": "lstm", "gru": "gru"}


def tanh_rnn_and_gradient(dtype: str):
    """``h_t = tanh(x_t + h_{t-1} @ W)``: inputs ``[x, W]`` and outputs ``[hs, dx, dW]``
    of ``sum(hs**2)``, the product written ``pt.dot`` as ``rnnc.lower`` emits it."""
    import pytensor
    import pytensor.tensor as pt

    x = pt.tensor3("x", dtype=dtype)
    w = pt.matrix("w", dtype=dtype)
    h0 = pt.zeros((x.shape[1], w.shape[0]), dtype=dtype)
    hs = pytensor.scan(
        lambda xt, h, w: pt.tanh(xt + pt.dot(h, w)),
        sequences=[x],
        outputs_info=[h0],
        non_sequences=[w],
        return_updates=False,
    )
    return [x, w], [hs, *pytensor.grad((hs**2).sum(), [x, w])]


def op_types(fn) -> set[type]:
    """The kinds of operation of a compiled function's own graph (not its loops' steps)."""
    return {type(node.op) for node in fn.maker.fgraph.apply_nodes}


def ops_in_loops(fn, op_type) -> int:
    """How many nodes of ``op_type`` the steps of a compiled function's scans hold."""
    from pytensor.scan.op import Scan

    return sum(
        isinstance(inner.op, op_type)
        for node in fn.maker.fgraph.apply_nodes
        if isinstance(node.op, Scan)
        for inner in node.op.fn.maker.fgraph.apply_nodes
    )


def row_major_copies(fn) -> int:
    """How many row-major copies (of loop invariants) a compiled function makes."""
    from rnnc.cscan import RowMajorCopy

    return sum(isinstance(n.op, RowMajorCopy) for n in fn.maker.fgraph.apply_nodes)


def load_reference(name: str) -> dict[str, np.ndarray]:
    """One PyTorch reference case (see tests/reference/README.md), NumPy only."""
    with np.load(REFERENCE / f"{name}.npz", allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


@pytest.fixture
def reference():
    return load_reference


class _RewriteFailures(logging.Handler):
    """The tracebacks PyTensor logs when a graph rewrite raises (it then skips the
    rewrite and goes on) that pass through rnnc's source."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.tracebacks: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if f"{os.sep}rnnc{os.sep}" in text and "Traceback" in text:
            self.tracebacks.append(text)


@pytest.fixture(autouse=True)
def _no_failing_rnnc_rewrites():
    """Fail a test in which one of rnnc's rewrites raised: they must decline a graph
    they do not match, not leave PyTensor to skip them with a traceback on stderr.
    (PyTensor's own rewrites are left alone: its constant folding fails on some of
    rnnc's integer graphs and is skipped harmlessly.)"""
    handler = _RewriteFailures()
    logger = logging.getLogger("pytensor.graph.rewriting.basic")
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
    assert not handler.tracebacks, "an rnnc rewrite raised:\n" + handler.tracebacks[0]
