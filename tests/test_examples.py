"""The examples run end to end at tiny settings (slow: each compiles its own model)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import FAST

import rnnc

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TEXT = " ".join(["the quick brown fox jumps over a lazy dog"] * 20) + "\n"

pytestmark = pytest.mark.slow


def load(relative: str):
    """Import an example script as a module (examples/ is not a package)."""
    path = EXAMPLES / relative
    name = "example_" + relative.replace("/", "_").removesuffix(".py")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_char_rnn_train_and_sample(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # else the commands set it for the process
    data = tmp_path / "input.txt"
    data.write_text(TEXT, encoding="utf-8")
    train = load("char_rnn/train.py")
    argv = ["--data", str(data), "--rnn-size", "8", "--num-layers", "1", "--batch-size", "4"]
    argv += ["--seq-length", "8", "--max-steps", "4", "--eval-every", "2", "--no-progress"]
    argv += ["--backend", FAST, "--checkpoint-dir", str(tmp_path / "cv"), "--sample-length", "10"]
    assert train.main(argv) == 0
    assert "best validation loss" in capsys.readouterr().out
    ckpts = sorted((tmp_path / "cv").glob("lm_lstm_epoch*.npz"))
    assert len(ckpts) == 2
    sample = load("char_rnn/sample.py")
    assert (
        sample.main([str(ckpts[-1]), "--length", "12", "--prime", "the ", "--backend", FAST]) == 0
    )
    out = capsys.readouterr().out
    assert out.startswith("the ") and len(out) == 4 + 12 + 1


def test_char_rnn_reads_shakespeare_in_place():
    train = load("char_rnn/train.py")
    assert train.SHAKESPEARE.parts[-3:] == ("shared", "data", "tinyshakespeare.txt")
    assert not (EXAMPLES / "char_rnn" / "tinyshakespeare.txt").exists()


def test_adding_problem(capsys):
    adding = load("adding_problem.py")
    x, mask, target = adding.make_batch(np.random.default_rng(0), 50, 20)
    lengths = mask.sum(1).astype(int)
    assert lengths.min() >= 20 and lengths.max() <= 22
    marked = x[:, :, 1] == 1
    assert (marked.sum(1) == 2).all()
    np.testing.assert_allclose(target, 0.5 + (x[:, :, 0] * marked).sum(1) / 4, atol=1e-6)
    assert (x[np.arange(50), lengths - 1, 1] != 0).all()  # the last pair is marked
    result = adding.run(
        "lstm",
        T=10,
        hidden=4,
        batch_size=8,
        max_sequences=64,
        window=16,
        test_size=16,
        backend=FAST,
    )
    assert result["sequences"] == 64 and 0 <= result["test_accuracy"] <= 1
    assert "training sequences" in capsys.readouterr().out


def test_custom_cell_text_and_dsl_agree_and_train(tmp_path, capsys):
    custom = load("custom_cell.py")
    assert rnnc.parse(custom.MGU)["mgu"] == custom.mgu.ir
    data = tmp_path / "input.txt"
    data.write_text(TEXT, encoding="utf-8")
    argv = ["--cells", "gru,mgu", "--data", str(data), "--rnn-size", "8", "--batch-size", "4"]
    argv += ["--seq-length", "8", "--max-steps", "2", "--eval-every", "2", "--backend", FAST]
    argv += ["--checkpoint-dir", str(tmp_path / "cv")]
    assert custom.main(argv) == 0
    table = capsys.readouterr().out.rsplit("best val loss", 1)[1]
    assert "gru" in table and "mgu" in table
    (ckpt,) = (tmp_path / "cv").glob("lm_mgu_epoch*.npz")
    meta = rnnc.train.load_checkpoint(ckpt).meta
    assert meta["model"]["cell_source"].strip().startswith("cell mgu(x: [I])")


def test_seq2seq(capsys):
    seq2seq = load("seq2seq.py")
    b = seq2seq.make_batch(np.random.default_rng(0), 5, 4, 2, 4)
    for i in range(5):
        n = int(b["src_mask"][i].sum())
        np.testing.assert_array_equal(b["dec_out"][i, :n], b["src"][i, :n][::-1])
        assert b["dec_out"][i, n] == seq2seq.EOS and b["dec_in"][i, 0] == seq2seq.BOS
    assert seq2seq.exact_match(b["dec_out"], b) == 1.0
    result = seq2seq.run(
        letters=4,
        min_len=2,
        max_len=4,
        emb=4,
        hidden=8,
        batch_size=8,
        steps=3,
        test_size=8,
        backend=FAST,
    )
    assert result["steps"] == 3 and 0 <= result["accuracy"] <= 1
    assert "exact match" in capsys.readouterr().out
