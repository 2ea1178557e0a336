"""The adding problem (Hochreiter & Schmidhuber 1997, experiment 4), with rnnc.

Each input is a sequence of pairs (value, marker): values uniform in [-1, 1]; exactly
two pairs are marked with 1: one of the first ten (its value X1) and one of the first
T/2 - 1 still unmarked ones (X2); the first and the last pair are marked -1 unless
marked 1 (if the first pair is the one marked, X1 is set to 0). Lengths are random
between T and T + T/10. Only at the end of a sequence is the target known:
0.5 + (X1 + X2) / 4. A sequence counts as solved when the absolute error of the
prediction is below 0.04; training stops, as in the paper, when the last 2000 training
sequences were all solved and their mean squared error is below 0.01.

The paper's LSTM needed 74,000 training sequences at T=100 (online learning). Here
the model is one recurrent layer (any cell) followed by a linear unit reading the
state at each sequence's last real step (sequences of different lengths are padded
and masked), trained with Adam (learning rate 3e-3, gradient norm clipped at 1) on
batches of 32::

    python examples/adding_problem.py --cell lstm --T 100          # solves it
    python examples/adding_problem.py --cell rnn --T 100           # a tanh RNN does not

The paper's LSTM had no forget gate (it always remembers); PyTorch's, which rnnc's
built-in cell follows, forgets. Its forget-gate bias therefore starts at 5 here
(``--forget-bias``): sigmoid(5)^100 = 0.5, so the state lasts a hundred steps.

Measured (32 units, seed 0, JAX backend, 2 shared cores; training sequences until the
paper's criterion held):

==========  ===  ===========  =================================================
cell        T    forget bias  result
==========  ===  ===========  =================================================
LSTM        10   1            solved after 47,872 sequences (7 s)
LSTM        25   1            solved after 76,128 sequences (20 s)
LSTM        50   1            not solved after 1,021,600 sequences (240 s)
LSTM        100  1            not solved after 1,548,800 sequences (stopped at ~400 s)
LSTM        100  1, 128 units not solved after 477,120 sequences (600 s; lr 1e-3, batch 20)
LSTM        100  5            **solved after 205,248 sequences** (105 s)
LSTM        100  5, seed 1    **solved after 75,424 sequences** (31 s)
tanh RNN    10   -            solved after 534,272 sequences (79 s)
tanh RNN    25   -            not solved after 3,000,000 sequences (154 s)
tanh RNN    100  -            **not solved after 2,074,560 sequences** (300 s)
==========  ===  ===========  =================================================

Unsolved runs stay at the mean-prediction plateau (mean squared error about 0.04,
15% of sequences within 0.04). At T=100 the LSTM needed 75,424 and 205,248 training
sequences for two seeds, against the paper's 74,000, in 2,357 and 6,414 updates (batches
of 32) where the paper made one update per sequence; the tanh RNN saw ten times more
and learned nothing.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import deque
from typing import Any

import numpy as np
import pytensor.tensor as pt

import rnnc
from rnnc.compile import function
from rnnc.nn import Dense
from rnnc.train.optim import Adam


def make_batch(
    rng: np.random.Generator, n: int, T: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` sequences of the adding problem: inputs ``[n, time, 2]``, mask
    ``[n, time]`` (lengths between T and T + T/10) and targets ``[n]``."""
    lengths = rng.integers(T, T + T // 10 + 1, n)
    tmax = T + T // 10  # every batch has the same shape (the JAX backend needs that)
    x = np.zeros((n, tmax, 2), np.float32)
    x[:, :, 0] = rng.uniform(-1.0, 1.0, (n, tmax))
    mask = (np.arange(tmax)[None, :] < lengths[:, None]).astype(np.float32)
    x[:, :, 0] *= mask
    target = np.empty(n, np.float32)
    for i in range(n):
        first = rng.integers(0, 10)
        others = [k for k in range(T // 2) if k != first][: T // 2 - 1]
        second = others[rng.integers(0, len(others))]
        x[i, 0, 1] = -1.0
        x[i, lengths[i] - 1, 1] = -1.0
        x[i, first, 1] = 1.0
        x[i, second, 1] = 1.0
        if first == 0:
            x[i, 0, 0] = 0.0
        target[i] = 0.5 + (x[i, first, 0] + x[i, second, 0]) / 4.0
    return x, mask, target


def build(
    cell: str,
    hidden: int,
    lr: float,
    backend: str | None,
    seed: int,
    forget_bias: float = 5.0,
    shape: tuple[int, int] | tuple[None, None] = (None, None),
) -> dict[str, Any]:
    """The model and its compiled training and evaluation functions.

    An LSTM's forget-gate bias ``b_hf`` starts at ``forget_bias`` (Gers et al. 2000
    start it high), so that the cell remembers by default.
    """
    layer = rnnc.Recurrent(cell, I=2, H=hidden, seed=seed)
    if "b_hf" in layer.params:
        layer.params["b_hf"].set_value(np.full(hidden, forget_bias, layer.dtype))
    head = Dense(hidden, 1, seed=seed + 1, name="head")
    batch, time = shape
    x = pt.tensor("x", dtype="float32", shape=(batch, time, 2))
    mask = pt.tensor("mask", dtype="float32", shape=(batch, time))
    target = pt.tensor("target", dtype="float32", shape=(batch,))
    out = layer(x, mask=mask)
    pred = head(out.state["h"])[:, 0]
    err = pt.abs(pred - target)
    loss = pt.mean(pt.sqr(pred - target))
    params = {f"layer.{k}": v for k, v in layer.params.items()}
    params |= {f"head.{k}": v for k, v in head.params.items()}
    updates, norm = Adam(lr=lr, clip_norm=1.0).updates(params, loss)
    return {
        "train": function([x, mask, target], [loss, err, norm], backend, updates=updates),
        "evaluate": function([x, mask, target], [loss, err], backend),
    }


def run(
    cell: str = "lstm",
    T: int = 100,
    hidden: int = 32,
    batch_size: int = 32,
    lr: float = 3e-3,
    max_sequences: int = 400_000,
    time_budget: float | None = None,
    backend: str | None = None,
    seed: int = 0,
    window: int = 2000,
    test_size: int = 2000,
    forget_bias: float = 5.0,
    out: Any = print,
) -> dict[str, Any]:
    """Train until solved (the paper's criterion), ``max_sequences`` or the time budget.

    Returns how many training sequences were seen, whether and when the criterion was
    met, the test accuracy (fraction of fresh sequences solved) and timings.
    """
    t0 = time.perf_counter()
    fns = build(cell, hidden, lr, backend, seed, forget_bias, (batch_size, T + T // 10))
    compile_time = time.perf_counter() - t0
    rng = np.random.default_rng(seed)
    recent_ok: deque[bool] = deque(maxlen=window)
    recent_sq: deque[float] = deque(maxlen=window)
    seen, solved_at, steps = 0, None, 0
    start = time.perf_counter()
    while seen < max_sequences:
        if time_budget is not None and time.perf_counter() - start > time_budget:
            break
        x, mask, target = make_batch(rng, batch_size, T)
        loss, err, _ = fns["train"](x, mask, target)
        if not np.isfinite(loss):
            raise rnnc.RnncError(f"the loss became {loss} after {seen} sequences")
        seen += batch_size
        steps += 1
        recent_ok.extend((err < 0.04).tolist())
        recent_sq.extend((err**2).tolist())
        if steps % 200 == 0:
            out(
                f"{cell}: {seen:>7} sequences, mse {np.mean(recent_sq):.4f}, "
                f"solved {np.mean(recent_ok):6.1%} of the last {len(recent_ok)}"
            )
        if len(recent_ok) == window and all(recent_ok) and np.mean(recent_sq) < 0.01:
            solved_at = seen
            break
    train_time = time.perf_counter() - start
    test_rng = np.random.default_rng(seed + 12345)
    test_sq, test_ok = [], []
    for _ in range(max(1, test_size // batch_size)):
        x, mask, target = make_batch(test_rng, batch_size, T)
        _, err = fns["evaluate"](x, mask, target)
        test_sq.extend((err**2).tolist())
        test_ok.extend((err < 0.04).tolist())
    test_size = len(test_ok)
    result = {
        "cell": cell,
        "T": T,
        "sequences": seen,
        "solved_at": solved_at,
        "test_mse": float(np.mean(test_sq)),
        "test_accuracy": float(np.mean(test_ok)),
        "train_time": train_time,
        "compile_time": compile_time,
    }
    verdict = (
        f"solved after {solved_at:,} training sequences"
        if solved_at
        else f"not solved after {seen:,} training sequences"
    )
    out(
        f"{cell} (T={T}, {hidden} units): {verdict} in {train_time:.0f} s "
        f"(+{compile_time:.0f} s compiling); test: {result['test_accuracy']:.1%} of "
        f"{test_size} fresh sequences within 0.04, mse {result['test_mse']:.4f} "
        f"(predicting 0.5 always: mse about 0.042)"
    )
    return result


def main(argv: list[str] | None = None) -> int:
    """Command line: see ``--help``."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cell", default="lstm", help="lstm, gru, rnn or a .cell file (default: lstm)")
    p.add_argument("--T", type=int, default=100, help="minimum sequence length (default: 100)")
    p.add_argument("--hidden", type=int, default=32, help="hidden units (default: 32)")
    p.add_argument("--batch-size", type=int, default=32, help="sequences per step (default: 32)")
    p.add_argument("--lr", type=float, default=3e-3, help="Adam's learning rate (default: 3e-3)")
    p.add_argument(
        "--max-sequences",
        type=int,
        default=400_000,
        help="give up after this many training sequences (default: 400000)",
    )
    p.add_argument("--time-budget", type=float, help="give up after this many seconds")
    p.add_argument(
        "--window",
        type=int,
        default=2000,
        help="the last this many sequences must all be solved (default: 2000)",
    )
    p.add_argument("--test-size", type=int, default=2000, help="fresh test sequences")
    p.add_argument("--backend", help="PyTensor backend (default: $RNNC_BACKEND, else c)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument(
        "--forget-bias",
        type=float,
        default=1.0,
        help="initial forget-gate bias of an LSTM (default: 1.0)",
    )
    a = p.parse_args(argv)
    run(
        a.cell,
        a.T,
        a.hidden,
        a.batch_size,
        a.lr,
        a.max_sequences,
        a.time_budget,
        a.backend,
        a.seed,
        a.window,
        a.test_size,
        a.forget_bias,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
