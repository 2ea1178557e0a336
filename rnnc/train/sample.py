"""Sampling text from a trained language model, one step at a time.

The step function is compiled from the same cell the model was trained with
(:meth:`rnnc.train.model.LanguageModel.compile`): it maps the previous character and
the state to the next character's logits and the new state. The prime text is fed
first; then each next character is drawn from ``softmax(logits / temperature)``,
restricted to the ``top_k`` most likely when ``top_k > 0`` (``temperature=0`` picks
the most likely one, char-rnn's ``-sample 0``).

>>> model, compiled, vocab, ckpt = load_sampler("cv/lm_lstm_epoch20.00_1.3866.npz")
>>> print(sample(compiled, vocab, 200, prime="ROMEO:", temperature=0.8, seed=1))
"""

from __future__ import annotations

import os

import numpy as np

from rnnc.errors import OptionError
from rnnc.train.checkpoint import Checkpoint, load_checkpoint
from rnnc.train.data import Vocabulary
from rnnc.train.model import CompiledModel, LanguageModel

__all__ = ["load_sampler", "sample", "sample_ids"]


def _draw(logits: np.ndarray, temperature: float, top_k: int, rng: np.random.Generator) -> int:
    logits = np.asarray(logits, np.float64)
    if temperature <= 0:
        return int(np.argmax(logits))
    z = logits / temperature
    if 0 < top_k < len(z):
        cut = np.partition(z, -top_k)[-top_k]
        z = np.where(z >= cut, z, -np.inf)
    p = np.exp(z - z.max())
    p /= p.sum()
    return int(rng.choice(len(p), p=p))


def sample_ids(
    compiled: CompiledModel,
    length: int,
    prime: np.ndarray | None = None,
    temperature: float = 1.0,
    top_k: int = 0,
    seed: int | None = None,
) -> np.ndarray:
    """``length`` token ids drawn after the ``prime`` ids (not included)."""
    if length < 0:
        raise OptionError(f"length must be >= 0, not {length}")
    if temperature < 0:
        raise OptionError(f"temperature must be >= 0, not {temperature}")
    model = compiled.model
    rng = np.random.default_rng(seed)
    state = model.zero_state(1)
    if prime is not None and len(prime):
        logits = None
        for token in prime:
            logits, state = compiled.step(np.array([token], np.int32), state)
        next_logits = logits[0]
    else:  # char-rnn starts from a uniform distribution
        next_logits = np.zeros(model.vocab_size)
    out = np.empty(length, np.int32)
    for i in range(length):
        token = _draw(next_logits, temperature, top_k, rng)
        out[i] = token
        if i + 1 < length:
            logits, state = compiled.step(np.array([token], np.int32), state)
            next_logits = logits[0]
    return out


def sample(
    compiled: CompiledModel,
    vocab: Vocabulary,
    length: int,
    prime: str = "",
    temperature: float = 1.0,
    top_k: int = 0,
    seed: int | None = None,
) -> str:
    """The prime text followed by ``length`` sampled characters."""
    ids = vocab.encode(prime) if prime else None
    return prime + vocab.decode(sample_ids(compiled, length, ids, temperature, top_k, seed))


def load_sampler(
    path: str | os.PathLike, backend: str | None = None
) -> tuple[LanguageModel, CompiledModel, Vocabulary, Checkpoint]:
    """Rebuild the model of a checkpoint and compile its step function."""
    ckpt = load_checkpoint(path)
    model = LanguageModel.from_options(ckpt.meta["model"])
    model.set_params(ckpt.params)
    compiled = model.compile(None, backend=backend, parts=("step",))
    return model, compiled, Vocabulary(ckpt.meta["vocab"]), ckpt
