"""The training loop: char-rnn's experience on any cell.

:func:`train` builds a :class:`~rnnc.train.model.LanguageModel`, compiles its
functions once, and runs stateful batches (the hidden state carried from one batch
to the next along each row of the text, reset at each epoch; or reset every batch
with ``stateful=False``). Each step shows loss, characters per second and gradient
norm on a tqdm bar. Every ``eval_every`` steps, and at the end, it computes the loss
on the validation split, prints a sample and writes a checkpoint named by epoch and
validation loss. A CSV log (and a loss-curve PNG where matplotlib is installed) sits
beside the checkpoints.

A NaN or infinite loss (or gradient norm, taken before clipping) stops training with
:class:`~rnnc.errors.TrainingDivergedError` naming the last good checkpoint; the
checkpoints already written are left as they are, and none is written of parameters
that are not all finite. A run starting in a folder removes the temporary files that
the checkpoint writes of a killed run left there
(:func:`~rnnc.train.checkpoint.remove_stale_temporaries`).

Everything random is seeded (initialisation, dropout, samples), and a checkpoint
holds the parameters, the optimiser's state, the carried hidden state and the
dropout generator, so a run resumed with :func:`resume` continues bit for bit as if
it had never stopped.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

import rnnc
from rnnc.errors import CheckpointError, OptionError, TrainingDivergedError
from rnnc.train.checkpoint import (
    Checkpoint,
    checkpoint_name,
    load_checkpoint,
    remove_stale_temporaries,
    save_checkpoint,
    write_atomic,
)
from rnnc.train.data import CharData, Vocabulary, default_corpus, load_text
from rnnc.train.model import CompiledModel, LanguageModel, State, training_backend
from rnnc.train.optim import Optimizer, make_optimizer, step_decay
from rnnc.train.sample import sample

__all__ = ["RESUMABLE", "TrainConfig", "TrainResult", "resume", "train"]


@dataclass
class TrainConfig:
    """The options of a training run, with char-rnn's defaults.

    Model: ``cell`` (a built-in name or a ``.cell`` path), ``rnn_size``,
    ``num_layers``, ``dropout``, ``embedding`` (0: one-hot inputs). Data: ``data`` (a
    text file; None: Python's own pydoc topics), ``seq_length``, ``batch_size``,
    ``train_frac``. Optimiser: ``optimizer`` (rmsprop, adam, sgd, adagrad), ``lr``,
    ``decay_rate`` (RMSprop's), ``momentum`` (SGD's), ``lr_decay`` applied per epoch
    from epoch ``lr_decay_after`` on, ``grad_clip`` (by value, char-rnn's),
    ``clip_norm`` (by global norm), ``weight_decay``. Length: ``epochs``,
    ``max_steps``, ``time_budget`` (seconds of training in this call, validations
    included, compilation not: the first compilation of a model takes 10 to 75 s).
    Output: ``eval_every`` steps (and at the end), ``checkpoint_dir``, ``savefile``
    (default: the cell's name), ``sample_length`` and ``temperature`` of the sample
    shown at each validation, ``progress`` (the tqdm bar; without it a line every
    ``print_every`` steps).
    """

    cell: str = "lstm"
    rnn_size: int = 128
    num_layers: int = 2
    dropout: float = 0.0
    embedding: int = 0
    data: str | None = None
    seq_length: int = 50
    batch_size: int = 50
    train_frac: float = 0.95
    optimizer: str = "rmsprop"
    lr: float = 2e-3
    decay_rate: float = 0.95
    momentum: float = 0.9
    lr_decay: float = 0.97
    lr_decay_after: int = 10
    grad_clip: float | None = 5.0
    clip_norm: float | None = None
    weight_decay: float = 0.0
    epochs: float = 50.0
    max_steps: int | None = None
    time_budget: float | None = None
    stateful: bool = True
    seed: int = 123
    eval_every: int = 1000
    checkpoint_dir: str = "cv"
    savefile: str | None = None
    sample_length: int = 200
    temperature: float = 0.8
    backend: str | None = None
    dtype: str = "float32"
    progress: bool = True
    print_every: int = 100

    def validate(self) -> TrainConfig:
        """Check the values; raise :class:`OptionError` naming the option."""
        positive = ("rnn_size", "num_layers", "seq_length", "batch_size", "eval_every")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise OptionError(
                    f"--{name.replace('_', '-')} must be a positive integer, not {value}"
                )
        if not self.lr > 0:
            raise OptionError(f"--lr must be positive, not {self.lr}")
        if not 0 <= self.dropout < 1:
            raise OptionError(f"--dropout must be in [0, 1), not {self.dropout}")
        if not self.epochs > 0:
            raise OptionError(f"--epochs must be positive, not {self.epochs}")
        if self.grad_clip is not None and self.grad_clip <= 0:
            self.grad_clip = None
        if self.time_budget is not None and self.time_budget <= 0:
            raise OptionError(f"--time-budget must be positive seconds, not {self.time_budget}")
        return self


#: Options that may change when a run is resumed (they do not alter the steps).
RESUMABLE = frozenset(
    {
        "epochs",
        "max_steps",
        "time_budget",
        "eval_every",
        "checkpoint_dir",
        "sample_length",
        "temperature",
        "backend",
        "progress",
        "print_every",
        "data",
    }
)


@dataclass
class TrainResult:
    """What a run did: steps and epochs reached, losses, checkpoints, timings, and
    the trained model with its compiled functions and vocabulary (a later run with the
    same model options in this process reuses and so changes that model; reload a
    checkpoint to keep one)."""

    steps: int
    epoch: float
    best_val_loss: float
    best_checkpoint: Path | None
    last_checkpoint: Path | None
    val_losses: list[tuple[int, float]]
    train_losses: list[float]
    wall_time: float
    compile_time: float
    chars_per_s: float
    stopped: str
    sample: str = ""
    log: Path | None = None
    model: LanguageModel | None = field(default=None, repr=False)
    compiled: CompiledModel | None = field(default=None, repr=False)
    vocab: Vocabulary | None = field(default=None, repr=False)


def _text_of(config: TrainConfig) -> str:
    return load_text(config.data) if config.data else default_corpus()


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _plot(csv_path: Path, png: Path) -> None:
    """A loss-curve PNG from the CSV log, where matplotlib is installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    steps, losses, vsteps, vlosses = [], [], [], []
    with open(csv_path, newline="") as f:
        for row in csv.DictReader(f):
            if row["loss"]:
                steps.append(int(row["step"]))
                losses.append(float(row["loss"]))
            if row["val_loss"]:
                vsteps.append(int(row["step"]))
                vlosses.append(float(row["val_loss"]))
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, losses, lw=0.6, label="train")
    ax.plot(vsteps, vlosses, "o-", label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/char)")
    ax.legend()
    fig.tight_layout()
    write_atomic(png, lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)


#: Compiled models by what their functions depend on, so that runs of the same
#: model in one process (resumed runs, tests, examples) compile once.
_CACHE: dict[str, tuple[LanguageModel, Optimizer, CompiledModel]] = {}
_CACHE_SIZE = 4


def _compiled(
    model: LanguageModel,
    name: str,
    options: dict[str, Any],
    backend: str | None,
    batch_shape: tuple[int, int],
) -> tuple[LanguageModel, Optimizer, CompiledModel]:
    """``model`` with a fresh optimiser, compiled; or an equal model compiled before
    in this process, reset to ``model``'s initial parameters and a fresh optimiser
    state (the learning rate is a shared variable, so it is not part of the key)."""
    backend = backend or training_backend()
    rest = {k: v for k, v in options.items() if k != "lr"}
    key = json.dumps([model.options(), name, rest, backend, batch_shape], sort_keys=True)
    if key in _CACHE:
        cached, optimizer, compiled = _CACHE[key]
        cached.set_params(model.get_params())
        cached.dropout.set_state(model.dropout.get_state())
        optimizer.reset(options["lr"])
        return cached, optimizer, compiled
    optimizer = make_optimizer(name, **options)
    compiled = model.compile(optimizer, backend=backend, batch_shape=batch_shape)
    while len(_CACHE) >= _CACHE_SIZE:
        _CACHE.pop(next(iter(_CACHE)))
    _CACHE[key] = (model, optimizer, compiled)
    return model, optimizer, compiled


class _Run:
    """One training run's objects and loop (see :func:`train`)."""

    COLUMNS = ("step", "epoch", "lr", "loss", "grad_norm", "val_loss", "chars_per_s", "elapsed_s")

    def __init__(
        self,
        config: TrainConfig,
        text: str | None,
        ckpt: Checkpoint | None,
        out: Callable[[str], None],
        on_step: Callable[[int, float, LanguageModel], None] | None = None,
    ) -> None:
        self.start = time.perf_counter()
        self.on_step = on_step
        self.config = config.validate()
        self.out = out
        text = _text_of(config) if text is None else text
        vocab = Vocabulary(ckpt.meta["vocab"]) if ckpt else None
        if ckpt and ckpt.meta.get("data_sha256") != _digest(text):
            raise CheckpointError(
                f"the text differs from the one checkpoint {str(ckpt.path)!r} was trained on",
                fix="resume with the same --data file",
            )
        self.text_digest = _digest(text)
        self.data = CharData(text, config.batch_size, config.seq_length, config.train_frac, vocab)
        self.vocab = self.data.vocab
        if ckpt:
            model = LanguageModel.from_options(ckpt.meta["model"])
        else:
            model = LanguageModel(
                config.cell,
                len(self.vocab),
                rnn_size=config.rnn_size,
                num_layers=config.num_layers,
                dropout=config.dropout,
                embedding=config.embedding,
                dtype=config.dtype,
                seed=config.seed,
            )
        opts: dict[str, Any] = {
            "lr": config.lr,
            "clip_value": config.grad_clip,
            "clip_norm": config.clip_norm,
            "weight_decay": config.weight_decay,
        }
        if config.optimizer == "rmsprop":
            opts["decay"] = config.decay_rate
        elif config.optimizer == "sgd":
            opts["momentum"] = config.momentum
        t0 = time.perf_counter()
        self.backend = config.backend or training_backend()
        self.model, self.optimizer, self.compiled = _compiled(
            model, config.optimizer, opts, config.backend, (config.batch_size, config.seq_length)
        )
        self.compile_time = time.perf_counter() - t0
        self.savefile = config.savefile or self.model.cell.name
        self.dir = Path(config.checkpoint_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        stale = remove_stale_temporaries(self.dir)
        if stale:
            self.out(
                f"removed {len(stale)} unfinished checkpoint file(s) that a killed run "
                f"left in {self.dir}"
            )
        self.csv = self.dir / f"{self.savefile}_log.csv"
        self.step = 0
        self.state: State = self.model.zero_state(config.batch_size)
        self.train_losses: list[float] = []
        self.val_losses: list[tuple[int, float]] = []
        self.best: tuple[float, Path | None] = (math.inf, None)
        self.last: Path | None = None
        self.last_norm: float | None = None  # the gradient norm of the last step
        self.elapsed_before = 0.0
        if ckpt:
            self._restore(ckpt)
        elif self.csv.exists():
            self.csv.unlink()

    # ---------------------------------------------------------------- state
    def _restore(self, ckpt: Checkpoint) -> None:
        meta = ckpt.meta
        self.model.set_params(ckpt.params)
        self.optimizer.load_state_dict(ckpt.optimizer)
        if ckpt.state is not None:
            self.state = [{k: np.asarray(v) for k, v in s.items()} for s in ckpt.state]
        if meta.get("dropout_rng") is not None:
            self.model.dropout.set_state(meta["dropout_rng"])
        self.step = int(meta["step"])
        self.train_losses = list(meta.get("train_losses", []))
        self.val_losses = [(int(s), float(v)) for s, v in meta.get("val_losses", [])]
        best = meta.get("best")
        if best:
            self.best = (float(best[0]), Path(best[1]) if best[1] else None)
        self.last = ckpt.path
        self.elapsed_before = float(meta.get("elapsed_s", 0.0))
        if self.csv.exists():  # drop what a run from a later point logged
            with open(self.csv, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= self.step]
            text = io.StringIO(newline="")
            writer = csv.DictWriter(text, fieldnames=self.COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
            write_atomic(self.csv, lambda f: f.write(text.getvalue().encode()))

    def _checkpoint(self, val_loss: float) -> Path:
        epoch = self.step / self.data.n_train
        path = self.dir / checkpoint_name(self.savefile, epoch, val_loss)
        best = (val_loss, path) if val_loss < self.best[0] else self.best
        meta = {
            "rnnc_version": rnnc.__version__,
            "model": self.model.options(),
            "dims": [layer.sizes for layer in self.model.layers],
            "vocab": self.vocab.chars,
            "config": asdict(self.config),
            "optimizer": self.optimizer.options(),
            "data_sha256": self.text_digest,
            "step": self.step,
            "epoch": epoch,
            "val_loss": val_loss,
            "val_losses": self.val_losses,
            "train_losses": self.train_losses,
            "best": [best[0], str(best[1])],
            "dropout_rng": self.model.dropout.get_state(),
            "elapsed_s": self.elapsed(),
        }
        ckpt = Checkpoint(
            meta=meta,
            params=self.model.get_params(),
            optimizer=self.optimizer.state_dict(),
            state=self.state,
        )
        bad = [
            k
            for k, v in (ckpt.params | ckpt.optimizer).items()
            if v.dtype.kind == "f" and not np.isfinite(v).all()
        ]
        if bad:  # a loss can stay finite over parameters that are not (relu of -inf)
            raise self._diverged(
                f"{', '.join(bad[:3])}{' and more' if len(bad) > 3 else ''} became "
                f"infinite or NaN by step {self.step}"
            )
        save_checkpoint(path, ckpt)
        self.best = best
        self.last = path
        return path

    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.start

    # ---------------------------------------------------------------- pieces
    def validate(self) -> float:
        state = self.model.zero_state(self.config.batch_size)
        total = 0.0
        for i in range(self.data.n_val):
            x, y = self.data.batch("val", i)
            loss, state = self.compiled.evaluate(x, y, state)
            total += loss
        return total / self.data.n_val

    def sample(self, length: int, seed: int) -> str:
        return sample(
            self.compiled,
            self.vocab,
            length,
            temperature=self.config.temperature,
            seed=seed,
        )

    def _diverged(self, what: str) -> TrainingDivergedError:
        where = f"{self.last}" if self.last else "none was written yet"
        return TrainingDivergedError(
            f"{what}; training stopped. The last good checkpoint: {where}",
            fix="lower --lr, or clip the gradients (--grad-clip, --clip-norm), "
            "then resume from the last good checkpoint",
        )

    def _log_row(self, writer: Any, **row: Any) -> None:
        writer.writerow({k: row.get(k, "") for k in self.COLUMNS})
        self.log_file.flush()  # a killed run keeps its log

    # ---------------------------------------------------------------- loop
    def run(self) -> TrainResult:
        c = self.config
        n_train = self.data.n_train
        total = max(1, round(c.epochs * n_train))
        if c.max_steps is not None:
            total = min(total, c.max_steps)
        chars = c.batch_size * c.seq_length
        self.out(
            f"rnnc train: {self.model.cell.name}, {c.num_layers} x {c.rnn_size}, "
            f"{self.model.num_params():,} parameters; vocabulary {len(self.vocab)}; "
            f"{n_train} train / {self.data.n_val} validation batches of {c.batch_size} x "
            f"{c.seq_length}; {self.backend} backend, compiled in {self.compile_time:.1f} s"
        )
        new_file = not self.csv.exists()
        f = self.log_file = open(self.csv, "a", newline="")  # closed in the finally below
        writer = csv.DictWriter(f, fieldnames=self.COLUMNS)
        if new_file:
            writer.writeheader()
        bar = tqdm(
            total=total,
            initial=self.step,
            disable=not c.progress,
            unit="step",
            dynamic_ncols=True,
            file=sys.stderr,
        )
        stopped = "epochs" if c.max_steps is None or total < c.max_steps else "max_steps"
        train_time, train_steps = 0.0, 0
        validated_at = -1
        sample_text = ""
        started = time.perf_counter()
        try:
            while self.step < total:
                if c.time_budget is not None and time.perf_counter() - started >= c.time_budget:
                    stopped = "time budget"
                    break
                b = self.step % n_train
                epoch_done = self.step // n_train
                if not c.stateful or (b == 0 and self.step > 0):
                    self.state = self.model.zero_state(c.batch_size)
                lr = step_decay(c.lr, epoch_done, c.lr_decay, c.lr_decay_after)
                self.optimizer.lr.set_value(np.float64(lr))
                x, y = self.data.batch("train", b)
                t0 = time.perf_counter()
                loss, norm, state = self.compiled.train(x, y, self.state)
                dt = time.perf_counter() - t0
                if not (math.isfinite(loss) and math.isfinite(norm)):
                    raise self._diverged(
                        f"the training loss became {loss} (gradient norm {norm}) at step "
                        f"{self.step + 1}, epoch {(self.step + 1) / n_train:.2f}"
                    )
                self.state = state
                self.last_norm = norm
                self.step += 1
                train_time += dt
                train_steps += 1
                self.train_losses.append(loss)
                rate = chars / dt if dt > 0 else 0.0
                self._log_row(
                    writer,
                    step=self.step,
                    epoch=f"{self.step / n_train:.4f}",
                    lr=f"{lr:.6g}",
                    loss=f"{loss:.6f}",
                    grad_norm=f"{norm:.5g}",
                    chars_per_s=f"{rate:.0f}",
                    elapsed_s=f"{self.elapsed():.2f}",
                )
                bar.set_postfix(
                    loss=f"{loss:.4f}", chars_s=f"{rate:,.0f}", gnorm=f"{norm:.3f}", refresh=False
                )
                bar.update(1)
                if not c.progress and self.step % c.print_every == 0:
                    self.out(
                        f"{self.step}/{total} (epoch {self.step / n_train:.3f}), "
                        f"train_loss = {loss:.4f}, grad norm = {norm:.3f}, "
                        f"time/batch = {dt:.3f}s"
                    )
                if self.step % c.eval_every == 0 and self.step < total:
                    sample_text = self._evaluate(writer, bar)
                    validated_at = self.step
                if self.on_step is not None:
                    self.on_step(self.step, loss, self.model)
            if validated_at != self.step:
                sample_text = self._evaluate(writer, bar)
        finally:
            bar.close()
            f.close()
        return TrainResult(
            steps=self.step,
            epoch=self.step / n_train,
            best_val_loss=self.best[0],
            best_checkpoint=self.best[1],
            last_checkpoint=self.last,
            val_losses=self.val_losses,
            train_losses=self.train_losses,
            wall_time=self.elapsed(),
            compile_time=self.compile_time,
            chars_per_s=chars * train_steps / train_time if train_time else 0.0,
            stopped=stopped,
            sample=sample_text,
            log=self.csv,
            model=self.model,
            compiled=self.compiled,
            vocab=self.vocab,
        )

    def _evaluate(self, writer: Any, bar: Any) -> str:
        val = self.validate()
        if not math.isfinite(val):
            norm = (
                f", after a step of gradient norm {self.last_norm:.4g}"
                if self.last_norm is not None
                else ""
            )
            raise self._diverged(f"the validation loss became {val} at step {self.step}{norm}")
        self.val_losses.append((self.step, val))
        path = self._checkpoint(val)
        self._log_row(
            writer,
            step=self.step,
            epoch=f"{self.step / self.data.n_train:.4f}",
            val_loss=f"{val:.6f}",
            elapsed_s=f"{self.elapsed():.2f}",
        )
        text = self.sample(self.config.sample_length, seed=self.config.seed + self.step)
        mean = (
            np.mean(self.train_losses[-self.config.eval_every :]) if self.train_losses else math.nan
        )
        message = (
            f"step {self.step} (epoch {self.step / self.data.n_train:.2f}): train loss {mean:.4f}, "
            f"validation loss {val:.4f} nats/char; saved {path}\n--- sample ---\n{text}\n---"
        )
        if self.config.progress:
            bar.write(message, file=sys.stdout)  # clears and redraws the bar on stderr
        else:
            self.out(message)
        _plot(self.csv, self.dir / f"{self.savefile}_loss.png")
        return text


def train(
    config: TrainConfig | None = None,
    text: str | None = None,
    out: Callable[[str], None] = print,
    on_step: Callable[[int, float, LanguageModel], None] | None = None,
    **options: Any,
) -> TrainResult:
    """Train a language model; returns a :class:`TrainResult`.

    ``config`` holds the options (keyword ``options`` override its fields); ``text``
    replaces the corpus named by ``config.data``. ``out`` receives the log lines;
    ``on_step(step, loss, model)`` is called after every step.

    >>> result = train(cell="gru", rnn_size=64, time_budget=60)
    >>> result.best_val_loss, result.best_checkpoint
    """
    config = replace(config or TrainConfig(), **options)
    return _Run(config, text, None, out, on_step).run()


def resume(
    path: str | os.PathLike,
    text: str | None = None,
    out: Callable[[str], None] = print,
    on_step: Callable[[int, float, LanguageModel], None] | None = None,
    **overrides: Any,
) -> TrainResult:
    """Continue the run a checkpoint was saved from, bit for bit.

    ``overrides`` may change only the options in :data:`RESUMABLE` (how long to run,
    where to write, how often to validate), not those that change the steps.
    """
    ckpt = load_checkpoint(path)
    names = {f.name for f in fields(TrainConfig)}
    stored = {k: v for k, v in ckpt.meta["config"].items() if k in names}
    bad = sorted(k for k, v in overrides.items() if k not in RESUMABLE and stored.get(k) != v)
    if bad:
        raise OptionError(
            f"cannot change {', '.join('--' + b.replace('_', '-') for b in bad)} when resuming",
            fix="resume with the checkpoint's options, or start a new run",
        )
    config = replace(TrainConfig(**stored), **overrides)
    return _Run(config, text, ckpt, out, on_step).run()
