"""Checkpoints: one ``.npz`` file per save, written atomically and checked on load.

A checkpoint holds everything needed to sample from a model and to resume its
training exactly where it stopped:

- ``param/<name>``: the parameters (``layer0.W_ii``, ``head.W``, ...);
- ``opt/<name>``: the optimiser's slots, step count and learning rate;
- ``state/<layer>/<name>``: the hidden state carried across batches;
- ``meta``: UTF-8 JSON: the cell's source text, the model's dimensions and options,
  the vocabulary, the training options, step and epoch, the random generators'
  states, the losses so far;
- ``checksum``: SHA-256 over every other entry (names, dtypes, shapes, bytes).

Files are named like char-rnn's, with the epoch and the validation loss:
``lm_lstm_epoch0.95_2.0681.npz``. They are written to a temporary file in the same
folder, flushed to disk (fsync) and renamed over the final name (``os.replace``), so a
crash leaves either the old file or the new one, never a partial one. A truncated or
corrupt file raises :class:`~rnnc.errors.CheckpointError` naming the file.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rnnc.errors import CheckpointError

__all__ = [
    "FORMAT",
    "Checkpoint",
    "checkpoint_name",
    "load_checkpoint",
    "save_checkpoint",
]

#: The format's version, stored in the metadata.
FORMAT = 1


@dataclass
class Checkpoint:
    """What a checkpoint file holds (see the module's docstring)."""

    meta: dict[str, Any]
    params: dict[str, np.ndarray]
    optimizer: dict[str, np.ndarray] = field(default_factory=dict)
    state: list[dict[str, np.ndarray]] | None = None
    path: Path | None = None


def checkpoint_name(savefile: str, epoch: float, val_loss: float) -> str:
    """char-rnn's file name: ``lm_<savefile>_epoch<epoch>_<val loss>.npz``.

    >>> checkpoint_name("lstm", 0.953, 2.06812)
    'lm_lstm_epoch0.95_2.0681.npz'
    """
    return f"lm_{savefile}_epoch{epoch:.2f}_{val_loss:.4f}.npz"


def _digest(arrays: Mapping[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for key in sorted(arrays):
        a = np.ascontiguousarray(arrays[key])
        h.update(f"{key}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _to_arrays(ckpt: Checkpoint) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    arrays |= {f"param/{k}": np.asarray(v) for k, v in ckpt.params.items()}
    arrays |= {f"opt/{k}": np.asarray(v) for k, v in ckpt.optimizer.items()}
    for i, layer in enumerate(ckpt.state or []):
        arrays |= {f"state/{i}/{k}": np.asarray(v) for k, v in layer.items()}
    meta = {"format": FORMAT, **ckpt.meta}
    arrays["meta"] = np.frombuffer(json.dumps(meta, sort_keys=True).encode(), dtype=np.uint8)
    arrays["checksum"] = np.frombuffer(_digest(arrays).encode(), dtype=np.uint8)
    return arrays


def save_checkpoint(path: str | os.PathLike, ckpt: Checkpoint) -> Path:
    """Write ``ckpt`` to ``path`` atomically; returns the path.

    The data go to a temporary file in the same folder, are flushed and fsynced, and
    the file is renamed over ``path`` (then the folder is fsynced, so the rename
    itself survives a power cut).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = _to_arrays(ckpt)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:  # some systems cannot open a folder; the rename is done anyway
        return path
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)
    return path


def _corrupt(path: Path, why: str) -> CheckpointError:
    return CheckpointError(
        f"checkpoint {str(path)!r} is truncated or corrupt: {why}",
        fix="resume or sample from an earlier checkpoint of the run (the files in the "
        "same folder are named by epoch and validation loss)",
    )


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read and verify a checkpoint; raises :class:`CheckpointError` naming the file
    when it is missing, truncated, corrupt or of an unknown format."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"no checkpoint file {str(path)!r}",
            fix="pass the path of a .npz file written by `rnnc train`",
        )
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError) as exc:
        raise _corrupt(path, str(exc) or type(exc).__name__) from None
    if "meta" not in arrays or "checksum" not in arrays:
        raise _corrupt(path, "it has no metadata (is it an rnnc checkpoint?)")
    stored = arrays.pop("checksum").tobytes().decode("ascii", "replace")
    if _digest(arrays) != stored:
        raise _corrupt(path, "the checksum does not match its contents")
    try:
        meta = json.loads(arrays.pop("meta").tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _corrupt(path, f"unreadable metadata ({exc})") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(
            f"checkpoint {str(path)!r} has format {meta.get('format')!r}; "
            f"this rnnc reads format {FORMAT}",
            fix="use the rnnc version that wrote it",
        )
    params, opt, state = {}, {}, {}
    for key, value in arrays.items():
        kind, _, name = key.partition("/")
        if kind == "param":
            params[name] = value
        elif kind == "opt":
            opt[name] = value
        elif kind == "state":
            layer, _, sname = name.partition("/")
            state.setdefault(int(layer), {})[sname] = value
    layers = [state[i] for i in sorted(state)] if state else None
    return Checkpoint(meta=meta, params=params, optimizer=opt, state=layers, path=path)
