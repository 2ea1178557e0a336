"""``rnnc train``: train a character language model, char-rnn style.

Every option has char-rnn's default. Without ``--data`` it trains on English text
that ships with Python (the pydoc topics) for about a minute (``--time-budget 60``
unless given) and prints a sample::

    rnnc train                                          # offline, about a minute
    rnnc train --data input.txt --rnn-size 128 --num-layers 2 --cell lstm
    rnnc train --resume cv/lm_lstm_epoch1.00_1.8123.npz --epochs 20
"""

from __future__ import annotations

import argparse
import os
from dataclasses import fields
from typing import Any

from rnnc.train.trainer import TrainConfig, resume, train

__all__ = ["DEFAULT_CORPUS_BUDGET", "add_parser", "one_blas_thread", "run"]

#: Seconds ``rnnc train`` runs on the default corpus when no length is given.
DEFAULT_CORPUS_BUDGET = 60.0


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "train",
        help="train a character language model (char-rnn's options)",
        description=(
            "Train a character-level language model on a text file, with checkpoints "
            "named by validation loss. Without --data: Python's own pydoc text, for about "
            "a minute."
        ),
        argument_default=argparse.SUPPRESS,  # absent options stay absent: see run()
    )
    d = TrainConfig()

    def opt(group: Any, flag: str, help: str, **kw: Any) -> None:
        name = kw.get("dest", flag.lstrip("-").replace("-", "_"))
        default = getattr(d, name, None)
        if default is not None and kw.get("action") is None:
            help += f" (default: {default})"
        group.add_argument(flag, help=help, **kw)

    m = p.add_argument_group("model")
    opt(m, "--cell", "the recurrent cell: lstm, gru, rnn, rnn_relu or a FILE.cell", metavar="CELL")
    opt(m, "--rnn-size", "size of the hidden state", type=int)
    opt(m, "--num-layers", "number of stacked layers", type=int)
    opt(m, "--dropout", "dropout between layers and before the output layer", type=float)
    opt(m, "--embedding", "embedding size; 0 feeds one-hot characters as char-rnn", type=int)
    g = p.add_argument_group("data")
    opt(g, "--data", "a UTF-8 text file (default: Python's own pydoc text)", metavar="FILE")
    opt(g, "--seq-length", "characters per sequence (steps of backpropagation)", type=int)
    opt(g, "--batch-size", "sequences per batch", type=int)
    opt(g, "--train-frac", "fraction of the batches to train on; the rest validate", type=float)
    opt(
        g,
        "--no-stateful",
        "reset the hidden state every batch instead of carrying it",
        dest="stateful",
        action="store_false",
    )
    o = p.add_argument_group("optimisation")
    opt(o, "--optimizer", "the optimiser", choices=["rmsprop", "adam", "sgd", "adagrad"])
    opt(o, "--lr", "learning rate", type=float)
    opt(o, "--decay-rate", "RMSprop's decay of the squared-gradient average", type=float)
    opt(o, "--momentum", "SGD's momentum", type=float)
    opt(o, "--lr-decay", "learning-rate factor per epoch from --lr-decay-after on", type=float)
    opt(o, "--lr-decay-after", "epoch from which the learning rate decays", type=int)
    opt(o, "--grad-clip", "clip each gradient element to [-c, c]; 0 turns it off", type=float)
    opt(o, "--clip-norm", "clip the global gradient norm to this", type=float)
    opt(o, "--weight-decay", "L2 weight decay", type=float)
    opt(o, "--seed", "seed of everything random", type=int)
    r = p.add_argument_group("length and output")
    opt(r, "--epochs", "passes over the training data", type=float)
    opt(r, "--max-steps", "stop after this many steps", type=int)
    opt(
        r,
        "--time-budget",
        "stop after this many seconds of training (compilation not counted; "
        f"default: {DEFAULT_CORPUS_BUDGET:g} without --data, else none)",
        type=float,
        metavar="SECONDS",
    )
    opt(
        r,
        "--eval-every",
        "validate, sample and checkpoint every this many steps and at the end",
        type=int,
    )
    opt(r, "--checkpoint-dir", "where checkpoints and logs go")
    opt(r, "--savefile", "checkpoint name stem (default: the cell's name)")
    opt(r, "--sample-length", "characters of the sample shown at each validation", type=int)
    opt(r, "--temperature", "temperature of those samples", type=float)
    opt(
        r,
        "--backend",
        "PyTensor backend (default: $RNNC_BACKEND, else jax if installed, else c)",
        choices=["c", "numba", "jax", "python"],
    )
    opt(r, "--dtype", "precision of parameters and states", choices=["float32", "float64"])
    opt(
        r,
        "--no-progress",
        "log lines instead of a progress bar",
        dest="progress",
        action="store_false",
    )
    opt(r, "--print-every", "steps between log lines (with --no-progress)", type=int)
    opt(
        r,
        "--resume",
        "continue the run of this checkpoint bit for bit; only length and "
        "output options may change",
        metavar="CKPT",
    )
    return p


def one_blas_thread() -> None:
    """Use one BLAS/OpenMP thread unless the user chose (``OMP_NUM_THREADS``,
    ``OPENBLAS_NUM_THREADS``): the products of these models are small, and on two
    cores OpenBLAS's spinning threads made a C-backend step several times slower.
    Set before the C backend loads its BLAS."""
    if not {"OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"} & set(os.environ):
        os.environ["OMP_NUM_THREADS"] = "1"
        os.environ["OPENBLAS_NUM_THREADS"] = "1"


def run(args: argparse.Namespace) -> int:
    one_blas_thread()
    names = {f.name for f in fields(TrainConfig)}
    given: dict[str, Any] = {k: v for k, v in vars(args).items() if k in names}
    if given.get("grad_clip") == 0:
        given["grad_clip"] = None
    if getattr(args, "resume", None):
        result = resume(args.resume, **given)
    else:
        if "data" not in given and not {"time_budget", "epochs", "max_steps"} & set(given):
            given["time_budget"] = DEFAULT_CORPUS_BUDGET
        result = train(TrainConfig(**given))
    best = result.best_checkpoint
    print(
        f"done: {result.steps} steps ({result.epoch:.2f} epochs, stopped by {result.stopped}) in "
        f"{result.wall_time:.0f} s ({result.compile_time:.0f} s compiling), "
        f"{result.chars_per_s:,.0f} chars/s; best validation loss {result.best_val_loss:.4f} "
        f"nats/char: {best}"
    )
    if best is not None:
        print(f"sample more: rnnc sample {best} --temperature 0.8 --length 2000")
    return 0
