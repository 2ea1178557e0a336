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

The temporary file is named ``.<final name>.<random>.tmp`` (for example
``.lm_lstm_epoch0.95_2.0681.npz.k3j9_x0a.tmp``), and its writer holds an exclusive lock
on it (``flock``) until it has been renamed. A process killed while writing leaves that file behind, unlocked:
:func:`remove_stale_temporaries`, which ``rnnc train`` calls when it starts in a folder,
deletes such files of ``.npz`` checkpoints, ``.csv`` logs and ``.png`` loss curves
(the trainer writes all three with :func:`write_atomic`), and only those (a file another process is
still writing is locked, and is left alone), so repeated kills do not leak disk. Where
``fcntl`` does not exist (Windows) nothing is locked and nothing is removed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from rnnc.errors import CheckpointError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "FORMAT",
    "Checkpoint",
    "checkpoint_name",
    "load_checkpoint",
    "remove_stale_temporaries",
    "save_checkpoint",
]

#: The format's version, stored in the metadata.
FORMAT = 1

#: The names :func:`write_atomic` gives its temporary files, for the kinds of file
#: training writes: ``.<name>.npz.<tempfile's random letters>.tmp`` (or ``.csv``, ``.png``).
TEMPORARY = re.compile(r"\.[^/]+\.(npz|csv|png)\.[a-z0-9_]+\.tmp")


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


def _same_file(fd: int, path: str) -> bool:
    """Whether ``path`` still names the file open as ``fd``."""
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path, follow_symlinks=False))
    except FileNotFoundError:
        return False


def _locked_temporary(folder: Path, name: str) -> tuple[int, str]:
    """A new temporary file in ``folder`` for ``name``, open and locked by this process.

    The file exists for a moment before it is locked; should
    :func:`remove_stale_temporaries` take it for a dead writer's in that moment and
    delete it, this sees the name gone once it holds the lock, and makes another. On a
    file system that cannot lock, the file stays unlocked (and no cleaner can lock it
    either, so none removes it).
    """
    while True:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")
        if fcntl is None:
            return fd, tmp
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:
            return fd, tmp
        if _same_file(fd, tmp):
            return fd, tmp
        os.close(fd)


def write_atomic(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """Write a file atomically: ``write(f)`` fills a temporary file in the same folder
    (locked while it is written, see :func:`remove_stale_temporaries`), which is
    flushed, fsynced and renamed over ``path``; then the folder is fsynced, so the
    rename itself survives a power cut. A reader sees the old file or the new one,
    never a part. Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _locked_temporary(path.parent, path.name)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
            if fcntl is not None:  # renamed while the lock is held
                os.replace(tmp, path)
        if fcntl is None:  # Windows cannot rename an open file
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


def save_checkpoint(path: str | os.PathLike, ckpt: Checkpoint) -> Path:
    """Write ``ckpt`` to ``path`` atomically (:func:`write_atomic`); returns the path."""
    arrays = _to_arrays(ckpt)
    return write_atomic(path, lambda f: np.savez(f, **arrays))


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files of checkpoints, logs and plots whose writer died
    (killed in the middle of :func:`write_atomic`); returns their paths.

    Only names of :data:`TEMPORARY`'s form are looked at, and of those only the files
    no process holds locked: a live writer's file stays. Without ``fcntl`` (Windows), or
    on a file system that cannot lock, nothing is removed.
    """
    removed: list[Path] = []
    if fcntl is None:
        return removed
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return removed
    for entry in entries:
        if not TEMPORARY.fullmatch(entry.name) or not entry.is_file(follow_symlinks=False):
            continue
        try:
            fd = os.open(entry.path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError:  # renamed or removed meanwhile
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:  # a live writer holds it (or nothing can be locked here)
                continue
            # a writer that finished meanwhile has renamed it: then this is not its name
            if _same_file(fd, entry.path):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        finally:
            os.close(fd)
    return removed


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
    with open(path, "rb") as f:
        head = f.read(2)
    if len(head) == 2 and head != b"PK":  # a truncated .npz still starts as a zip
        raise CheckpointError(
            f"{str(path)!r} is not an rnnc checkpoint: it is not an .npz (zip) file",
            fix="pass the path of a checkpoint written by `rnnc train` (in its folder, "
            "named lm_<cell>_epoch<epochs>_<validation loss>.npz)",
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
