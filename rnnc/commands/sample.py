"""``rnnc sample``: text from a checkpoint written by ``rnnc train``.

The one-step function is compiled from the cell text the checkpoint holds, so a
checkpoint is all that is needed (char-rnn's ``sample.lua``)::

    rnnc sample cv/lm_lstm_epoch20.00_1.3866.npz --temperature 0.8 --prime "ROMEO:" --length 2000
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from rnnc.commands.train import one_blas_thread
from rnnc.train.sample import load_sampler, sample

__all__ = ["add_parser", "run"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "sample",
        help="sample text from a trained checkpoint",
        description="Sample text from a checkpoint written by `rnnc train`.",
    )
    p.add_argument("checkpoint", metavar="CKPT", help="a .npz checkpoint")
    p.add_argument(
        "--temperature",
        type=float,
        default=1.0,
        help="softmax temperature; lower is more conservative, 0 picks the most "
        "likely character (default: 1.0)",
    )
    p.add_argument("--prime", default="", help="text to start from (printed first)")
    p.add_argument("--length", type=int, default=2000, help="characters to sample (default: 2000)")
    p.add_argument("--seed", type=int, default=123, help="random seed (default: 123)")
    p.add_argument(
        "--top-k",
        type=int,
        default=0,
        help="draw only among the k most likely characters; 0: all (default: 0)",
    )
    p.add_argument(
        "--backend",
        choices=["c", "numba", "jax", "python"],
        help="PyTensor backend (default: $RNNC_BACKEND, else jax if installed, else c)",
    )
    return p


def run(args: argparse.Namespace) -> int:
    one_blas_thread()
    _, compiled, vocab, _ = load_sampler(args.checkpoint, backend=args.backend)
    text = sample(
        compiled,
        vocab,
        args.length,
        prime=args.prime,
        temperature=args.temperature,
        top_k=args.top_k,
        seed=args.seed,
    )
    sys.stdout.write(text + "\n")
    return 0
