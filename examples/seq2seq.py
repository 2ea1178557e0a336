"""Sequence to sequence: an encoder's final state starts a decoder.

The task is to reverse short strings (``"abcde" -> "edcba"``). The encoder runs over
the embedded source (padded, with a mask, so its final state is the state after each
string's last real letter); that state is the decoder's initial state; the decoder
reads the target shifted right (``<s> e d c b``; teacher forcing) and predicts the
next letter, then ``</s>``. At test time a one-step function compiled from the same
decoder cell generates greedily until ``</s>``, and exact-match accuracy is measured
on fresh strings::

    python examples/seq2seq.py                       # GRU, strings of 3 to 8 letters
    python examples/seq2seq.py --cell lstm --steps 3000

Measured with the defaults (GRU of 128 units, embeddings of 32, 10 letters, strings of
3 to 8, Adam 3e-3, 2000 steps of 64 strings, C backend, 2 shared cores): 93.8% of 1000
fresh strings reversed exactly (``jaeicbb -> bbcieaj``) after 133 s of training.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import numpy as np
import pytensor.tensor as pt

import rnnc
from rnnc.compile import function
from rnnc.nn import Dense, Embedding, sequence_cross_entropy
from rnnc.train.optim import Adam

PAD, BOS, EOS = 0, 1, 2
SPECIAL = ["_", "<s>", "</s>"]


def make_batch(
    rng: np.random.Generator, n: int, letters: int, min_len: int, max_len: int
) -> dict[str, np.ndarray]:
    """``n`` random strings and their reversals, as padded int32 arrays with masks."""
    lengths = rng.integers(min_len, max_len + 1, n)
    src = np.full((n, max_len), PAD, np.int32)
    dec_in = np.full((n, max_len + 1), PAD, np.int32)
    dec_out = np.full((n, max_len + 1), PAD, np.int32)
    for i, length in enumerate(lengths):
        s = rng.integers(3, 3 + letters, length)
        src[i, :length] = s
        rev = s[::-1]
        dec_in[i, 0] = BOS
        dec_in[i, 1 : length + 1] = rev
        dec_out[i, :length] = rev
        dec_out[i, length] = EOS
    src_mask = (src != PAD).astype(np.float32)
    tgt_mask = (np.arange(max_len + 1)[None, :] <= lengths[:, None]).astype(np.float32)
    return {
        "src": src,
        "src_mask": src_mask,
        "dec_in": dec_in,
        "dec_out": dec_out,
        "tgt_mask": tgt_mask,
    }


class Seq2Seq:
    """Embedding, encoder, decoder and output layer, and their compiled functions."""

    def __init__(self, cell: str, vocab: int, emb: int, hidden: int, seed: int = 0) -> None:
        self.embed = Embedding(vocab, emb, seed=seed, name="embed")
        self.encoder = rnnc.Recurrent(cell, I=emb, H=hidden, seed=seed + 1, name="encoder")
        self.decoder = rnnc.Recurrent(cell, I=emb, H=hidden, seed=seed + 2, name="decoder")
        self.head = Dense(hidden, vocab, seed=seed + 3, name="head")
        self.state_names = list(self.decoder.cell.states)

    @property
    def params(self) -> dict[str, Any]:
        out = {}
        for name in ("embed", "encoder", "decoder", "head"):
            out |= {f"{name}.{k}": v for k, v in getattr(self, name).params.items()}
        return out

    def compile(self, lr: float, backend: str | None) -> None:
        src, dec_in, dec_out = pt.imatrix("src"), pt.imatrix("dec_in"), pt.imatrix("dec_out")
        src_mask = pt.matrix("src_mask", dtype="float32")
        tgt_mask = pt.matrix("tgt_mask", dtype="float32")
        enc = self.encoder(self.embed(src), mask=src_mask)
        dec = self.decoder(self.embed(dec_in), initial_state=enc.state, mask=tgt_mask)
        logits = self.head(dec.outputs["y"])
        loss = sequence_cross_entropy(logits, dec_out, tgt_mask)
        updates, _ = Adam(lr=lr, clip_norm=5.0).updates(self.params, loss)
        self.train_fn = function(
            [src, src_mask, dec_in, dec_out, tgt_mask], loss, backend, updates=updates
        )
        self.encode_fn = function([src, src_mask], list(enc.state.values()), backend)
        token = pt.ivector("token")
        states = {
            n: pt.matrix(n, dtype="float32") for n in self.state_names
        }  # one vector per example
        step = self.decoder(self.embed(token[:, None]), initial_state=states)
        self.step_fn = function(
            [token, *states.values()],
            [self.head(step.outputs["y"][:, 0]), *step.state.values()],
            backend,
        )

    def train_step(self, b: dict[str, np.ndarray]) -> float:
        return float(
            self.train_fn(b["src"], b["src_mask"], b["dec_in"], b["dec_out"], b["tgt_mask"])
        )

    def greedy(self, src: np.ndarray, src_mask: np.ndarray, max_len: int) -> np.ndarray:
        """Decode greedily (a whole batch at once) until ``</s>`` or ``max_len + 1`` steps."""
        states = self.encode_fn(src, src_mask)
        token = np.full(len(src), BOS, np.int32)
        out = np.full((len(src), max_len + 1), PAD, np.int32)
        for t in range(max_len + 1):
            logits, *states = self.step_fn(token, *states)
            token = logits.argmax(-1).astype(np.int32)
            out[:, t] = token
        return out


def exact_match(pred: np.ndarray, batch: dict[str, np.ndarray]) -> float:
    """The fraction of strings whose decoding up to and including ``</s>`` is exact."""
    mask = batch["tgt_mask"] > 0
    same = (pred == batch["dec_out"]) | ~mask
    return float(same.all(axis=1).mean())


def run(
    cell: str = "gru",
    letters: int = 10,
    min_len: int = 3,
    max_len: int = 8,
    emb: int = 32,
    hidden: int = 128,
    batch_size: int = 64,
    steps: int = 2000,
    lr: float = 3e-3,
    time_budget: float | None = None,
    test_size: int = 1000,
    backend: str | None = None,
    seed: int = 0,
    out: Any = print,
) -> dict[str, Any]:
    """Train on random strings; returns exact-match accuracy on fresh ones and timings."""
    t0 = time.perf_counter()
    model = Seq2Seq(cell, letters + len(SPECIAL), emb, hidden, seed)
    model.compile(lr, backend)
    compile_time = time.perf_counter() - t0
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    step = 0
    losses = []
    while step < steps:
        if time_budget is not None and time.perf_counter() - start > time_budget:
            break
        losses.append(model.train_step(make_batch(rng, batch_size, letters, min_len, max_len)))
        step += 1
        if step % 250 == 0:
            out(f"step {step}: loss {np.mean(losses[-250:]):.4f}")
    train_time = time.perf_counter() - start
    test = make_batch(np.random.default_rng(seed + 999), test_size, letters, min_len, max_len)
    acc = exact_match(model.greedy(test["src"], test["src_mask"], max_len), test)
    chars = SPECIAL + [chr(ord("a") + i) for i in range(letters)]
    pred = model.greedy(test["src"][:3], test["src_mask"][:3], max_len)
    for i in range(3):
        s = "".join(chars[c] for c in test["src"][i] if c != PAD)
        p = "".join(chars[c] for c in pred[i]).split("</s>")[0]
        out(f"  {s:>{max_len}} -> {p}")
    out(
        f"{cell} seq2seq, reversing {min_len}-{max_len} letter strings: exact match "
        f"{acc:.1%} on {test_size} fresh strings after {step} steps ({step * batch_size:,} "
        f"strings) in {train_time:.0f} s (+{compile_time:.0f} s compiling)"
    )
    return {
        "accuracy": acc,
        "steps": step,
        "train_time": train_time,
        "compile_time": compile_time,
        "loss": float(np.mean(losses[-50:])) if losses else float("nan"),
    }


def main(argv: list[str] | None = None) -> int:
    """Command line: see ``--help``."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cell", default="gru", help="lstm, gru, rnn or a .cell file (default: gru)")
    p.add_argument("--letters", type=int, default=10, help="alphabet size (default: 10)")
    p.add_argument("--min-len", type=int, default=3, help="default: 3")
    p.add_argument("--max-len", type=int, default=8, help="default: 8")
    p.add_argument("--hidden", type=int, default=128, help="default: 128")
    p.add_argument("--batch-size", type=int, default=64, help="default: 64")
    p.add_argument("--steps", type=int, default=2000, help="default: 2000")
    p.add_argument("--lr", type=float, default=3e-3, help="Adam's learning rate (default: 3e-3)")
    p.add_argument("--time-budget", type=float, help="stop training after this many seconds")
    p.add_argument("--test-size", type=int, default=1000, help="default: 1000")
    p.add_argument("--backend", help="PyTensor backend (default: $RNNC_BACKEND, else c)")
    p.add_argument("--seed", type=int, default=0, help="default: 0")
    a = p.parse_args(argv)
    run(
        a.cell,
        a.letters,
        a.min_len,
        a.max_len,
        hidden=a.hidden,
        batch_size=a.batch_size,
        steps=a.steps,
        lr=a.lr,
        time_budget=a.time_budget,
        test_size=a.test_size,
        backend=a.backend,
        seed=a.seed,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
