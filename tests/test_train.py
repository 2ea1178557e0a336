"""The trainer: char-rnn batches, repeatable runs, bit-for-bit resume, NaN stops,
sampling and the ``rnnc train`` / ``rnnc sample`` commands, on a tiny model.

Every run here uses the same model options, so the trainer's in-process cache
compiles its functions once per test process.
"""

from __future__ import annotations

import argparse
import csv
import os

import numpy as np
import pytest
from conftest import FAST, TINY, make_text, quiet

from rnnc.commands import sample as sample_cmd
from rnnc.commands import train as train_cmd
from rnnc.errors import (
    CheckpointError,
    InputDtypeError,
    InputShapeError,
    InputValueError,
    OptionError,
    RnncError,
    TrainingDivergedError,
)
from rnnc.train import (
    CharData,
    TrainConfig,
    Vocabulary,
    default_corpus,
    load_checkpoint,
    load_sampler,
    resume,
    sample,
    train,
)

TEXT = make_text()


def config(tmp_path, **kw) -> TrainConfig:
    """A tiny run: 2 layers of 8 with dropout, 4 x 8 batches, 4 train batches per epoch
    (so 6 steps cross an epoch: the state resets and the learning rate decays)."""
    base = {
        "cell": "lstm",
        "rnn_size": 8,
        "num_layers": 2,
        "dropout": 0.25,
        "batch_size": 4,
        "seq_length": 8,
        "train_frac": 0.8,
        "lr": 1e-2,
        "lr_decay": 0.5,
        "lr_decay_after": 1,
        "eval_every": 3,
        "max_steps": 6,
        "backend": FAST,
        "checkpoint_dir": str(tmp_path),
        "progress": False,
        "sample_length": 20,
    }
    return TrainConfig(**{**base, **kw})


# ---------------------------------------------------------------- data
def test_batches_continue_along_rows():
    text = "".join(chr(ord("a") + i % 26) for i in range(2 * 3 * 4 + 1))
    data = CharData(text, batch_size=2, seq_length=3, train_frac=0.5)
    assert len(data) == 4 and data.count("train") == 2 and data.count("val") == 2
    ids = data.vocab.encode(text)
    x0, y0 = data.batch("train", 0)
    x1, _ = data.batch("train", 1)
    assert x0.dtype == np.int32 and x0.shape == (2, 3)
    # row r of batch i+1 continues row r of batch i; targets are inputs shifted by one
    np.testing.assert_array_equal(np.concatenate([x0, x1], 1)[0], ids[:6])
    np.testing.assert_array_equal(np.concatenate([x0, x1], 1)[1], ids[12:18])
    np.testing.assert_array_equal(y0[0], ids[1:4])
    xv, _ = data.batch("val", 0)
    np.testing.assert_array_equal(xv[0], ids[6:9])


def test_vocabulary_and_errors():
    v = Vocabulary.from_text("hello")
    assert v.chars == ["e", "h", "l", "o"] and len(v) == 4
    assert v.decode(v.encode("hole")) == "hole"
    with pytest.raises(OptionError, match="not in the vocabulary: 'xz'"):
        v.encode("zx")
    assert v.decode(v.encode("hex", unknown="skip")) == "he"
    with pytest.raises(OptionError, match="too few for two batches"):
        CharData("abc", batch_size=2, seq_length=2)


def test_default_corpus_ships_with_python():
    text = default_corpus()
    assert len(text) > 300_000 and "def" in text
    assert text == default_corpus()


# ---------------------------------------------------------------- runs
@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Run A: 6 steps. Run A again. Run B: 3 steps, then resumed for 3 more."""
    a_dir = tmp_path_factory.mktemp("a")
    a = train(config(a_dir), text=TINY, out=quiet)
    a2 = train(config(tmp_path_factory.mktemp("a2")), text=TINY, out=quiet)
    b_dir = tmp_path_factory.mktemp("b")
    b1 = train(config(b_dir, max_steps=3), text=TINY, out=quiet)
    b2 = resume(b1.last_checkpoint, text=TINY, out=quiet, max_steps=6, progress=False)
    return {"a": a, "a2": a2, "b1": b1, "b2": b2, "a_dir": a_dir, "b_dir": b_dir}


def test_run_writes_checkpoints_log_and_samples(runs):
    a = runs["a"]
    assert a.steps == 6 and a.stopped == "max_steps"
    assert [s for s, _ in a.val_losses] == [3, 6]
    names = sorted(p.name for p in runs["a_dir"].glob("lm_lstm_epoch*.npz"))
    assert len(names) == 2 and names[0].startswith("lm_lstm_epoch0.75_")
    assert a.best_checkpoint.name == min(names, key=lambda n: float(n.rsplit("_", 1)[1][:-4]))
    with open(a.log, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["step"] for r in rows if r["loss"]] == ["1", "2", "3", "4", "5", "6"]
    assert [r["step"] for r in rows if r["val_loss"]] == ["3", "6"]
    assert float(rows[-2]["lr"]) == pytest.approx(1e-2 * 0.5)  # decayed after epoch 1
    assert len(a.sample) == 20
    meta = load_checkpoint(a.last_checkpoint).meta
    assert meta["step"] == 6 and meta["vocab"] == sorted(set(TINY))
    assert meta["model"]["cell_source"].startswith("cell lstm(")
    assert meta["config"]["dropout"] == 0.25 and meta["optimizer"]["name"] == "rmsprop"


def test_seeds_make_runs_repeatable(runs):
    assert runs["a"].train_losses == runs["a2"].train_losses
    pa = load_checkpoint(runs["a"].last_checkpoint).params
    pa2 = load_checkpoint(runs["a2"].last_checkpoint).params
    assert all(np.array_equal(pa[k], pa2[k]) for k in pa)


def test_resume_is_bit_for_bit(runs):
    """Train 6 steps; or train 3, stop, resume 3: the same parameters, bit for bit."""
    a, b1, b2 = runs["a"], runs["b1"], runs["b2"]
    assert b1.steps == 3 and b2.steps == 6
    assert b2.train_losses == a.train_losses
    ca, cb = load_checkpoint(a.last_checkpoint), load_checkpoint(b2.last_checkpoint)
    assert set(ca.params) == set(cb.params)
    for k in ca.params:
        assert ca.params[k].tobytes() == cb.params[k].tobytes(), k
    for k in ca.optimizer:
        assert ca.optimizer[k].tobytes() == cb.optimizer[k].tobytes(), k
    assert ca.meta["dropout_rng"] == cb.meta["dropout_rng"]
    assert a.last_checkpoint.name == b2.last_checkpoint.name
    # the resumed run appended to the log
    with open(b2.log, newline="") as f:
        steps = [r["step"] for r in csv.DictReader(f) if r["loss"]]
    assert steps == ["1", "2", "3", "4", "5", "6"]


def test_resume_refuses_other_options_or_data(runs, tmp_path):
    ckpt = runs["b1"].last_checkpoint
    with pytest.raises(OptionError, match="cannot change --rnn-size when resuming"):
        resume(ckpt, text=TINY, out=quiet, rnn_size=16)
    with pytest.raises(CheckpointError, match="the text differs"):
        resume(ckpt, text=TINY.upper(), out=quiet, max_steps=4)


def test_nan_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint(tmp_path):
    def poison(step, loss, model):
        if step == 3:
            model.params["head.b"].set_value(np.full(model.vocab_size, np.nan, "float32"))

    with pytest.raises(TrainingDivergedError) as e:
        train(config(tmp_path, max_steps=10), text=TINY, out=quiet, on_step=poison)
    message = str(e.value)
    assert "the training loss became nan (gradient norm nan) at step 4" in message
    (good,) = tmp_path.glob("lm_lstm_epoch*.npz")
    assert str(good) in message and "fix: lower --lr" in message
    ckpt = load_checkpoint(good)  # still whole, and finite
    assert ckpt.meta["step"] == 3
    assert all(np.isfinite(v).all() for v in ckpt.params.values())


# ---------------------------------------------------------------- sampling
@pytest.fixture(scope="module")
def sampler(runs):
    """The step function of run A's last checkpoint, rebuilt from the file alone."""
    model, compiled, vocab, ckpt = load_sampler(runs["a"].last_checkpoint, backend=FAST)
    return model, compiled, vocab, ckpt


def test_sampling_is_seeded_and_honours_top_k_and_prime(sampler):
    _, compiled, vocab, _ = sampler
    s1 = sample(compiled, vocab, 30, prime="the ", temperature=1.0, seed=5)
    s2 = sample(compiled, vocab, 30, prime="the ", temperature=1.0, seed=5)
    assert s1 == s2 and s1.startswith("the ") and len(s1) == 34
    greedy = sample(compiled, vocab, 30, prime="the ", temperature=0.0)
    assert sample(compiled, vocab, 30, prime="the ", top_k=1, seed=9) == greedy
    assert set(sample(compiled, vocab, 50, seed=1)) <= set(vocab.chars)
    with pytest.raises(OptionError, match="not in the vocabulary"):
        sample(compiled, vocab, 5, prime="XYZ")


def test_token_arrays_are_checked_before_the_compiled_functions(sampler):
    model, compiled, _, _ = sampler
    state = model.zero_state(1)
    logits, _ = compiled.step(np.array([1], np.int64), state)  # NumPy's default ints
    assert logits.shape == (1, model.vocab_size)
    with pytest.raises(InputDtypeError, match="integer token ids"):
        compiled.step(np.array([1.0]), state)
    with pytest.raises(InputValueError, match="outside the vocabulary"):
        compiled.step(np.array([model.vocab_size]), state)
    with pytest.raises(InputShapeError, match=r"the axes \[batch\]"):
        compiled.step(np.array([[1]]), state)
    x = np.zeros((2, 3), np.int64)
    with pytest.raises(InputShapeError, match="must be the same"):
        compiled.evaluate(x, x[:, :2], state)
    with pytest.raises(InputValueError, match="token id -1"):
        compiled.train(x - 1, x, state)


def test_load_sampler_rebuilds_the_trained_model(runs, sampler):
    model, compiled, vocab, ckpt = sampler
    assert vocab.chars == runs["a"].vocab.chars and model.num_layers == 2
    here = sample(compiled, vocab, 25, prime="a ", temperature=0.7, seed=3)
    # the model the trainer compiled (later runs in this process reuse it: reset it)
    runs["a"].model.set_params(ckpt.params)
    there = sample(runs["a"].compiled, runs["a"].vocab, 25, prime="a ", temperature=0.7, seed=3)
    assert here == there


# ---------------------------------------------------------------- CLI
def cli(argv):
    parser = argparse.ArgumentParser(prog="rnnc")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in (train_cmd, sample_cmd):
        module.add_parser(sub).set_defaults(run=module.run)
    args = parser.parse_args(argv)
    return args.run(args)


def test_cli_train_and_sample(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # else the commands set it for the process
    data = tmp_path / "input.txt"
    data.write_text(TINY, encoding="utf-8")
    argv = ["train", "--data", str(data), "--rnn-size", "8", "--batch-size", "4"]
    argv += ["--seq-length", "8", "--train-frac", "0.8", "--lr", "0.01", "--dropout", "0.25"]
    argv += ["--lr-decay", "0.5", "--lr-decay-after", "1", "--max-steps", "2", "--no-progress"]
    argv += ["--backend", FAST, "--checkpoint-dir", str(tmp_path / "cv"), "--sample-length", "20"]
    assert cli(argv) == 0
    out = capsys.readouterr().out
    assert "stopped by max_steps" in out and "rnnc sample " in out
    (ckpt,) = (tmp_path / "cv").glob("lm_lstm_epoch0.50_*.npz")
    assert (
        cli(
            [
                "sample",
                str(ckpt),
                "--length",
                "15",
                "--prime",
                "the",
                "--seed",
                "2",
                "--temperature",
                "0.5",
                "--top-k",
                "3",
                "--backend",
                FAST,
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert text.startswith("the") and len(text) == 3 + 15 + 1
    ckpt.write_bytes(ckpt.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=ckpt.name):
        cli(["sample", str(ckpt), "--backend", FAST])


def test_cli_defaults_are_char_rnns_and_default_corpus_runs_a_minute(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    seen = {}

    def fake_train(cfg):
        seen["config"] = cfg
        raise RnncError("stop here")

    monkeypatch.setattr(train_cmd, "train", fake_train)
    with pytest.raises(RnncError, match="stop here"):
        cli(["train"])
    c = seen["config"]
    assert (c.cell, c.rnn_size, c.num_layers, c.seq_length, c.batch_size) == (
        "lstm",
        128,
        2,
        50,
        50,
    )
    assert (c.lr, c.decay_rate, c.grad_clip, c.optimizer, c.data) == (
        2e-3,
        0.95,
        5.0,
        "rmsprop",
        None,
    )
    assert c.time_budget == train_cmd.DEFAULT_CORPUS_BUDGET
    with pytest.raises(RnncError):
        cli(["train", "--data", "x.txt", "--grad-clip", "0"])
    assert seen["config"].time_budget is None and seen["config"].grad_clip is None


def test_loss_curve_png_where_matplotlib_is_installed(runs):
    pytest.importorskip("matplotlib")
    png = runs["a_dir"] / "lstm_loss.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_time_budget_counts_training_not_compilation(tmp_path):
    result = train(
        config(tmp_path, max_steps=None, epochs=1e6, time_budget=0.3), text=TINY, out=quiet
    )
    assert result.stopped == "time budget" and result.steps >= 1
    assert result.best_checkpoint is not None and result.best_checkpoint.exists()


def test_commands_use_one_blas_thread_unless_told(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
    train_cmd.one_blas_thread()
    assert os.environ["OMP_NUM_THREADS"] == os.environ["OPENBLAS_NUM_THREADS"] == "1"
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    monkeypatch.delenv("OPENBLAS_NUM_THREADS")
    train_cmd.one_blas_thread()
    assert "OPENBLAS_NUM_THREADS" not in os.environ  # the user's choice stands


def test_evaluation_and_sampling_functions_come_from_rnnc_cache(tmp_path, monkeypatch):
    from rnnc.train import LanguageModel
    from rnnc.train import model as model_module

    def model(seed=123):
        return LanguageModel("rnn", 7, rnn_size=4, num_layers=1, dtype="float64", seed=seed)

    def results(compiled, m):
        x = np.arange(12, dtype="int32").reshape(2, 6) % 7
        loss, _ = compiled.evaluate(x, x[:, ::-1], m.zero_state(2))
        logits, _ = compiled.step(np.array([3]), m.zero_state(1))
        return loss, logits

    monkeypatch.setenv("RNNC_CACHE_DIR", str(tmp_path))
    model().compile(None, "c", ("eval", "step"))
    assert len(list((tmp_path / "functions").glob("*.pkl"))) == 2
    other = model(seed=5)  # other parameters
    want = results(other.compile(None, FAST, ("eval", "step")), other)
    original = model_module.function
    monkeypatch.setattr(model_module, "function", lambda *a, **k: pytest.fail("compiled"))
    loaded = other.compile(None, "c", ("eval", "step"))
    monkeypatch.setattr(model_module, "function", original)
    for got, expected in zip(results(loaded, other), want, strict=True):
        np.testing.assert_allclose(got, expected, rtol=1e-10)


def test_a_training_step_from_rnnc_cache_trains_like_a_compiled_one(tmp_path, monkeypatch):
    from rnnc.train import LanguageModel
    from rnnc.train import model as model_module
    from rnnc.train.optim import Adam

    x = np.arange(12, dtype="int32").reshape(2, 6) % 7

    def three_steps(cache: str):
        monkeypatch.setenv("RNNC_CACHE", cache)
        model = LanguageModel("rnn", 7, rnn_size=4, num_layers=1, dtype="float64")
        optimizer = Adam(lr=0.05, clip_norm=1.0)
        compiled = model.compile(optimizer, "c", ("train",))
        state, losses = model.zero_state(2), []
        for _ in range(3):
            loss, _, state = compiled.train(x, x[:, ::-1], state)
            losses.append(loss)
        return losses, model.get_params(), optimizer.state_dict()

    monkeypatch.setenv("RNNC_CACHE_DIR", str(tmp_path))
    want = three_steps("0")
    three_steps("1")  # fills the cache
    original = model_module.function
    monkeypatch.setattr(model_module, "function", lambda *a, **k: pytest.fail("compiled"))
    got = three_steps("1")
    monkeypatch.setattr(model_module, "function", original)
    np.testing.assert_array_equal(got[0], want[0])
    for mine, theirs in zip(got[1:], want[1:], strict=True):  # parameters, slots, t, lr
        assert mine.keys() == theirs.keys()
        for k in mine:
            np.testing.assert_array_equal(mine[k], theirs[k], err_msg=k)
