"""Checkpoints: round trip, atomic writes, and clear errors for damaged files."""

from __future__ import annotations

import os

import numpy as np
import pytest

from rnnc.errors import CheckpointError
from rnnc.train.checkpoint import (
    Checkpoint,
    checkpoint_name,
    load_checkpoint,
    save_checkpoint,
    write_atomic,
)


def make() -> Checkpoint:
    rng = np.random.default_rng(0)
    return Checkpoint(
        meta={"step": 7, "vocab": ["\n", " ", "a", "é"], "model": {"cell_source": "cell x..."}},
        params={"layer0.W_ii": rng.normal(size=(4, 3)).astype("float32"), "head.b": np.zeros(4)},
        optimizer={"layer0.W_ii/m": np.ones((4, 3), "float32"), "__t": np.asarray(7)},
        state=[{"h": np.ones((2, 3), "float32"), "c": np.zeros((2, 3), "float32")}],
    )


def test_round_trip(tmp_path):
    ckpt = make()
    path = save_checkpoint(tmp_path / "sub" / "a.npz", ckpt)
    back = load_checkpoint(path)
    assert back.path == path
    assert back.meta["step"] == 7 and back.meta["vocab"] == ckpt.meta["vocab"]
    assert back.meta["format"] == 1
    for k, v in ckpt.params.items():
        np.testing.assert_array_equal(back.params[k], v)
        assert back.params[k].dtype == v.dtype
    assert set(back.optimizer) == set(ckpt.optimizer)
    np.testing.assert_array_equal(back.state[0]["h"], ckpt.state[0]["h"])


def test_name_is_char_rnns():
    assert checkpoint_name("lstm", 0.953, 2.06812) == "lm_lstm_epoch0.95_2.0681.npz"
    assert checkpoint_name("gru", 20, 1.38664) == "lm_gru_epoch20.00_1.3866.npz"


def test_write_is_atomic_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    path = tmp_path / "a.npz"
    save_checkpoint(path, make())
    before = path.read_bytes()
    calls = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: calls.append(fd) or real_fsync(fd))

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, make())
    assert path.read_bytes() == before  # the old file is untouched
    assert [p.name for p in tmp_path.iterdir()] == ["a.npz"]  # no temporary left
    monkeypatch.undo()
    monkeypatch.setattr(os, "fsync", lambda fd: calls.append(fd) or real_fsync(fd))
    ckpt = make()
    ckpt.meta["step"] = 8
    save_checkpoint(path, ckpt)
    assert calls  # the data (and the folder) are flushed to disk
    assert load_checkpoint(path).meta["step"] == 8
    assert [p.name for p in tmp_path.iterdir()] == ["a.npz"]


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match=r"no checkpoint file .*nope\.npz"):
        load_checkpoint(tmp_path / "nope.npz")


@pytest.mark.parametrize("keep", [0.0, 0.3, 0.9, 0.999])
def test_truncated_file_names_the_file(tmp_path, keep):
    path = save_checkpoint(tmp_path / "lm_lstm_epoch1.00_2.0000.npz", make())
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(
        CheckpointError, match=r"lm_lstm_epoch1\.00_2\.0000\.npz.*truncated or corrupt"
    ) as e:
        load_checkpoint(path)
    assert "earlier checkpoint" in str(e.value)


def test_flipped_bytes_are_caught(tmp_path):
    path = save_checkpoint(tmp_path / "a.npz", make())
    data = bytearray(path.read_bytes())
    # damage a byte inside the stored metadata (zip's CRC or the checksum catches it)
    at = data.index(b'"step": 7')
    data[at + 8] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"a\.npz"):
        load_checkpoint(path)


def test_checksum_catches_a_consistent_edit(tmp_path):
    path = save_checkpoint(tmp_path / "a.npz", make())
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["param/head.b"] = arrays["param/head.b"] + 1  # a valid zip with other numbers
    np.savez(path, **arrays)
    with pytest.raises(CheckpointError, match="checksum does not match"):
        load_checkpoint(path)


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "other.npz"
    np.savez(path, x=np.zeros(3))
    with pytest.raises(CheckpointError, match="no metadata"):
        load_checkpoint(path)
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(CheckpointError, match=r"text\.npz"):
        load_checkpoint(tmp_path / "text.npz")
    (tmp_path / "lm_loss.png").write_bytes(b"\x89PNG\r\n\x1a\n")  # the run's plot, say
    with pytest.raises(CheckpointError, match=r"lm_loss\.png' is not an rnnc checkpoint") as e:
        load_checkpoint(tmp_path / "lm_loss.png")
    assert "written by `rnnc train`" in str(e.value)


def test_write_atomic_keeps_the_old_file_when_the_writer_fails(tmp_path):
    path = tmp_path / "lm_log.csv"
    write_atomic(path, lambda f: f.write(b"step,loss\n1,2.0\n"))
    assert path.read_bytes() == b"step,loss\n1,2.0\n"

    def half_then_fail(f):
        f.write(b"step,lo")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_atomic(path, half_then_fail)
    assert path.read_bytes() == b"step,loss\n1,2.0\n"
    assert [p.name for p in tmp_path.iterdir()] == ["lm_log.csv"]  # no temporary left
