"""Generate the PyTorch reference data that rnnc's tests compare against.

Each case runs one ``torch.nn.RNN`` / ``LSTM`` / ``GRU`` module (always
``batch_first=True``) forward on fixed random inputs, takes a fixed random
linear functional of its outputs as a scalar loss, back-propagates it, and
stores inputs, parameters, outputs, cotangents, loss and gradients as a
small float64 ``.npz`` file next to this script.

The files are read by the tests with numpy alone; torch is only needed to
run this script and is not a dependency of rnnc.  See ``README.md`` in this
folder for the file names and every key.

Regenerate with::

    python tests/reference/make_torch_refs.py

and check that the files on disk still match what torch produces with::

    python tests/reference/make_torch_refs.py --check
"""

from __future__ import annotations

import argparse
import io
import sys
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

OUT_DIR = Path(__file__).resolve().parent

# Mode name -> (torch module class, extra constructor keyword arguments).
MODES: dict[str, tuple[type[torch.nn.RNNBase], dict[str, str]]] = {
    "rnn_tanh": (torch.nn.RNN, {"nonlinearity": "tanh"}),
    "rnn_relu": (torch.nn.RNN, {"nonlinearity": "relu"}),
    "lstm": (torch.nn.LSTM, {}),
    "gru": (torch.nn.GRU, {}),
}

# Lengths of the packed cases: unsorted, one sequence of length 1.
PACKED_LENGTHS = (6, 3, 1, 4)

# Fixed timestamp for the zip members, so that regenerating gives the same
# bytes whenever torch gives the same numbers.
ZIP_DATE_TIME = (1980, 1, 1, 0, 0, 0)


@dataclass(frozen=True)
class Case:
    """One reference configuration, shared by all four modes."""

    name: str
    layers: int
    bias: bool
    bidirectional: bool
    batch: int
    steps: int
    input_size: int
    hidden_size: int
    packed: bool

    @property
    def directions(self) -> int:
        """Number of directions: 2 if bidirectional, else 1."""
        return 2 if self.bidirectional else 1

    def lengths(self) -> tuple[int, ...]:
        """Return the valid length of every sequence in the batch."""
        if self.packed:
            assert len(PACKED_LENGTHS) == self.batch
            assert max(PACKED_LENGTHS) <= self.steps
            return PACKED_LENGTHS
        return (self.steps,) * self.batch


def _case(
    name: str,
    *,
    layers: int = 1,
    bias: bool = True,
    bidirectional: bool = False,
    packed: bool = False,
    small: bool = False,
) -> Case:
    """Build a case with the standard sizes for its kind."""
    if small:
        batch, steps, input_size, hidden_size = 1, 4, 2, 1
    elif packed:
        batch, steps, input_size, hidden_size = 4, 6, 4, 3
    else:
        batch, steps, input_size, hidden_size = 3, 5, 4, 3
    return Case(
        name=name,
        layers=layers,
        bias=bias,
        bidirectional=bidirectional,
        batch=batch,
        steps=steps,
        input_size=input_size,
        hidden_size=hidden_size,
        packed=packed,
    )


CASES: tuple[Case, ...] = (
    _case("L1_bias"),
    _case("L1_nobias", bias=False),
    _case("L2_bias", layers=2),
    _case("L1_bias_H1", small=True),
    _case("L1_bias_packed", packed=True),
    _case("L2_bias_packed", layers=2, packed=True),
    _case("L1_bias_bidir", bidirectional=True),
    _case("L1_bias_bidir_packed", bidirectional=True, packed=True),
)


def file_name(mode: str, case: Case) -> str:
    """File name of one reference case, e.g. ``lstm_L2_bias_packed.npz``."""
    return f"{mode}_{case.name}.npz"


def case_seed(mode: str, case: Case) -> int:
    """Return the fixed seed of one case, stable across runs and platforms."""
    return zlib.crc32(file_name(mode, case).encode("ascii"))


def _to_numpy(tensor: torch.Tensor) -> np.ndarray:
    """Detached float64 copy of a tensor as a numpy array."""
    array = tensor.detach().cpu().numpy()
    assert array.dtype == np.float64, array.dtype
    # np.array, not np.ascontiguousarray, which turns 0-d arrays into 1-d.
    return np.array(array, order="C")


def run_case(mode: str, case: Case) -> dict[str, np.ndarray]:
    """Run one case in torch and return every array to store, in file order."""
    cls, extra = MODES[mode]
    is_lstm = mode == "lstm"
    seed = case_seed(mode, case)
    state_shape = (case.layers * case.directions, case.batch, case.hidden_size)
    out_shape = (case.batch, case.steps, case.directions * case.hidden_size)

    # Parameters: torch's default initialisation under a fixed seed.
    torch.manual_seed(seed)
    module = cls(
        input_size=case.input_size,
        hidden_size=case.hidden_size,
        num_layers=case.layers,
        bias=case.bias,
        batch_first=True,
        bidirectional=case.bidirectional,
        **extra,
    )
    params = dict(module.named_parameters())
    assert list(params) == list(module.state_dict())

    # Inputs, initial state and cotangents from their own generator.  The
    # padded steps of x are filled like the valid ones, so they are nonzero.
    gen = torch.Generator().manual_seed(seed + 1)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen)

    x = randn(case.batch, case.steps, case.input_size).requires_grad_()
    h0 = randn(*state_shape).requires_grad_()
    c0 = randn(*state_shape).requires_grad_() if is_lstm else None
    gy = randn(*out_shape)
    gh_n = randn(*state_shape)
    gc_n = randn(*state_shape) if is_lstm else None
    lengths = torch.tensor(case.lengths(), dtype=torch.int64)

    # Forward.
    hx = (h0, c0) if is_lstm else h0
    if case.packed:
        packed_in = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        packed_out, state = module(packed_in, hx)
        y, y_lengths = pad_packed_sequence(packed_out, batch_first=True, total_length=case.steps)
        assert torch.equal(y_lengths, lengths)
    else:
        y, state = module(x, hx)
    h_n, c_n = state if is_lstm else (state, None)

    # Scalar loss and backward.
    loss = (y * gy).sum() + (h_n * gh_n).sum()
    if is_lstm:
        loss = loss + (c_n * gc_n).sum()
    loss.backward()

    arrays: dict[str, np.ndarray] = {
        "x": _to_numpy(x),
        "lengths": lengths.numpy().astype(np.int64),
        "h0": _to_numpy(h0),
    }
    if is_lstm:
        arrays["c0"] = _to_numpy(c0)
    for name, param in params.items():
        arrays[name] = _to_numpy(param)
    arrays["y"] = _to_numpy(y)
    arrays["h_n"] = _to_numpy(h_n)
    if is_lstm:
        arrays["c_n"] = _to_numpy(c_n)
    arrays["gy"] = _to_numpy(gy)
    arrays["gh_n"] = _to_numpy(gh_n)
    if is_lstm:
        arrays["gc_n"] = _to_numpy(gc_n)
    arrays["loss"] = _to_numpy(loss)
    arrays["grad_x"] = _to_numpy(x.grad)
    arrays["grad_h0"] = _to_numpy(h0.grad)
    if is_lstm:
        arrays["grad_c0"] = _to_numpy(c0.grad)
    for name, param in params.items():
        arrays[f"grad_{name}"] = _to_numpy(param.grad)
    arrays["meta_mode"] = np.array(mode)
    arrays["meta_layers"] = np.array(case.layers, dtype=np.int64)
    arrays["meta_bidirectional"] = np.array(case.bidirectional)
    arrays["meta_bias"] = np.array(case.bias)
    return arrays


def check_case(mode: str, case: Case, arrays: dict[str, np.ndarray]) -> None:
    """Sanity-check one case's arrays; raise AssertionError on a problem."""
    is_lstm = mode == "lstm"
    hidden = case.hidden_size
    dirs = case.directions
    lengths = arrays["lengths"]
    state_shape = (case.layers * dirs, case.batch, hidden)

    # Shapes and dtypes.
    assert arrays["x"].shape == (case.batch, case.steps, case.input_size)
    assert lengths.shape == (case.batch,) and lengths.dtype == np.int64
    assert arrays["y"].shape == (case.batch, case.steps, dirs * hidden)
    assert arrays["gy"].shape == arrays["y"].shape
    state_keys = ["h0", "h_n", "gh_n", "grad_h0"]
    if is_lstm:
        state_keys += ["c0", "c_n", "gc_n", "grad_c0"]
    for key in state_keys:
        assert arrays[key].shape == state_shape, key
    assert ("c0" in arrays) == is_lstm
    assert arrays["loss"].shape == ()
    assert arrays["meta_mode"].dtype.kind == "U"
    for key, value in arrays.items():
        assert value.dtype != object, key
        if key != "lengths" and not key.startswith("meta_"):
            assert value.dtype == np.float64, key
            assert np.all(np.isfinite(value)), key

    # Every parameter has a gradient, and bias parameters match meta_bias.
    param_names = [k for k in arrays if k.startswith(("weight_", "bias_"))]
    for name in param_names:
        assert arrays[f"grad_{name}"].shape == arrays[name].shape, name
    has_bias = any(name.startswith("bias_") for name in param_names)
    assert has_bias == case.bias
    assert any(name.endswith("_reverse") for name in param_names) == (dirs == 2)
    assert len(param_names) == case.layers * dirs * (4 if case.bias else 2)

    # The stored loss is the documented functional of the stored outputs.
    loss = np.sum(arrays["y"] * arrays["gy"])
    loss += np.sum(arrays["h_n"] * arrays["gh_n"])
    if is_lstm:
        loss += np.sum(arrays["c_n"] * arrays["gc_n"])
    np.testing.assert_allclose(loss, arrays["loss"], rtol=1e-12, atol=1e-12)

    # Padded steps: x nonzero there, y and grad_x exactly zero there.
    for b, length in enumerate(lengths):
        assert 1 <= length <= case.steps
        if not case.packed:
            assert length == case.steps
        assert np.all(arrays["x"][b] != 0.0)
        assert np.all(arrays["y"][b, length:] == 0.0)
        assert np.all(arrays["grad_x"][b, length:] == 0.0)
        assert np.any(arrays["grad_x"][b, :length] != 0.0)

    # The last layer's final states are read off y: the forward direction
    # at the last valid step, the reverse direction at step 0.
    top = (case.layers - 1) * dirs
    for b, length in enumerate(lengths):
        forward = arrays["y"][b, length - 1, :hidden]
        np.testing.assert_array_equal(arrays["h_n"][top, b], forward)
        if dirs == 2:
            reverse = arrays["y"][b, 0, hidden:]
            np.testing.assert_array_equal(arrays["h_n"][top + 1, b], reverse)


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """Serialise arrays as an uncompressed ``.npz`` with fixed timestamps."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as zf:
        for key, value in arrays.items():
            member = io.BytesIO()
            np.lib.format.write_array(member, value, allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=ZIP_DATE_TIME)
            info.external_attr = 0o644 << 16
            zf.writestr(info, member.getvalue())
    return buffer.getvalue()


def check_round_trip(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Reload a written file with numpy alone and compare it exactly."""
    with np.load(path, allow_pickle=False) as loaded:
        assert list(loaded.keys()) == list(arrays), path
        for key, value in arrays.items():
            stored = loaded[key]
            assert stored.dtype == value.dtype, (path, key)
            assert stored.shape == value.shape, (path, key)
            assert np.array_equal(stored, value), (path, key)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check",
        action="store_true",
        help="regenerate in memory and compare with the files on disk instead of writing them",
    )
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=OUT_DIR,
        help="folder to write to or check (default: next to this script)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Write (or, with ``--check``, verify) every reference file."""
    args = parse_args(argv)
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)

    out_dir: Path = args.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    mismatches = []
    total = 0
    for mode in MODES:
        for case in CASES:
            arrays = run_case(mode, case)
            check_case(mode, case, arrays)
            path = out_dir / file_name(mode, case)
            if args.check:
                try:
                    check_round_trip(path, arrays)
                except (AssertionError, OSError) as exc:
                    mismatches.append(f"{path.name}: {exc!r}")
                continue
            path.write_bytes(npz_bytes(arrays))
            check_round_trip(path, arrays)
            total += path.stat().st_size

    if args.check:
        for line in mismatches:
            print(f"MISMATCH {line}", file=sys.stderr)
        count = len(MODES) * len(CASES)
        print(f"checked {count} files, {len(mismatches)} mismatched")
        return 1 if mismatches else 0
    count = len(MODES) * len(CASES)
    print(f"wrote {count} files to {out_dir} ({total} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
