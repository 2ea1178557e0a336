"""Shared fixtures: the PyTorch reference cases and the backend used by fast tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

REFERENCE = Path(__file__).parent / "reference"

#: Most tests compile with PyTensor's FAST_COMPILE mode ("python"): quick to build,
#: fine for small shapes. Tests about a backend name it explicitly.
FAST = "python"

#: rnnc's name for each PyTorch mode in tests/reference.
TORCH_MODES = {"rnn_tanh": "rnn", "rnn_relu": "rnn_relu", "lstm": "lstm", "gru": "gru"}


def load_reference(name: str) -> dict[str, np.ndarray]:
    """One PyTorch reference case (see tests/reference/README.md), NumPy only."""
    with np.load(REFERENCE / f"{name}.npz", allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


@pytest.fixture
def reference():
    return load_reference
