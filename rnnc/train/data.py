"""Text data as char-rnn batches it: a vocabulary, and a stream cut into
``[batch, seq_length]`` blocks whose rows continue from one batch to the next.

The text is encoded, trimmed to a multiple of ``batch_size * seq_length``, laid out as
``batch_size`` rows (row ``r`` is the ``r``-th contiguous stretch of the text) and cut
along time into batches; batch ``i+1`` row ``r`` continues where batch ``i`` row ``r``
stopped, so a hidden state can be carried across batches. Targets are the inputs
shifted by one character. The first ``train_frac`` of the batches train, the rest
validate (char-rnn's 0.95 / 0.05 split).

>>> data = CharData(default_corpus(), batch_size=50, seq_length=50)
>>> x, y = data.batch("train", 0)          # int32 [50, 50] each
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from rnnc.errors import OptionError

__all__ = ["CharData", "Vocabulary", "default_corpus", "load_text"]


def default_corpus() -> str:
    """English text that ships with every Python: the reference topics of ``pydoc``
    (``pydoc_data.topics``, about 0.47 M characters), in a fixed order."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k] for k in sorted(topics))


def load_text(path: str | os.PathLike) -> str:
    """The text of a UTF-8 file, with a clear error when it cannot be read."""
    p = Path(path)
    if not p.is_file():
        raise OptionError(f"no data file {str(p)!r}", fix="pass --data FILE with a text file")
    try:
        return p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise OptionError(
            f"{p} is not UTF-8 text ({exc.reason} at byte {exc.start})",
            fix="convert the file to UTF-8",
        ) from None


class Vocabulary:
    """The characters of a text, sorted; ids are positions in that order."""

    def __init__(self, chars: Iterable[str]) -> None:
        self.chars = sorted(set(chars))
        self.index = {c: i for i, c in enumerate(self.chars)}

    @classmethod
    def from_text(cls, text: str) -> Vocabulary:
        return cls(text)

    def __len__(self) -> int:
        return len(self.chars)

    def encode(self, text: str, unknown: str = "error") -> np.ndarray:
        """int32 ids of ``text``; ``unknown="skip"`` drops characters not in the
        vocabulary, ``"error"`` raises."""
        missing = sorted({c for c in text if c not in self.index})
        if missing and unknown == "error":
            raise OptionError(
                f"characters not in the vocabulary: {''.join(missing[:20])!r}",
                fix="use only characters of the training text",
            )
        return np.array([self.index[c] for c in text if c in self.index], dtype=np.int32)

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        return "".join(self.chars[int(i)] for i in ids)


class CharData:
    """A text cut into char-rnn's stateful batches, split into train and validation.

    Parameters
    ----------
    text
        The corpus.
    batch_size, seq_length
        Rows per batch and steps per row.
    train_frac
        Fraction of the batches used for training; the rest validate (at least one
        batch each).
    vocab
        A vocabulary to encode with (default: the text's own).
    """

    def __init__(
        self,
        text: str,
        batch_size: int = 50,
        seq_length: int = 50,
        train_frac: float = 0.95,
        vocab: Vocabulary | None = None,
    ) -> None:
        if batch_size < 1 or seq_length < 1:
            raise OptionError("batch_size and seq_length must be positive")
        if not 0 < train_frac < 1:
            raise OptionError(f"train_frac must be in (0, 1), not {train_frac}")
        self.vocab = vocab or Vocabulary.from_text(text)
        ids = self.vocab.encode(text, unknown="skip")
        block = batch_size * seq_length
        n_batches = (len(ids) - 1) // block
        if n_batches < 2:
            raise OptionError(
                f"the text has {len(ids)} characters, too few for two batches of "
                f"{batch_size} x {seq_length} (one to train, one to validate)",
                fix="use a longer text, or a smaller --batch-size or --seq-length",
            )
        n = n_batches * block
        x = ids[:n].reshape(batch_size, n_batches, seq_length)
        y = ids[1 : n + 1].reshape(batch_size, n_batches, seq_length)
        self.x = np.ascontiguousarray(x.transpose(1, 0, 2))  # [batches, batch, seq]
        self.y = np.ascontiguousarray(y.transpose(1, 0, 2))
        self.batch_size, self.seq_length = batch_size, seq_length
        self.n_train = min(max(1, int(n_batches * train_frac)), n_batches - 1)
        self.n_val = n_batches - self.n_train

    def __len__(self) -> int:
        return len(self.x)

    def count(self, split: str) -> int:
        """Number of batches in ``split`` (``"train"`` or ``"val"``)."""
        return self.n_train if split == "train" else self.n_val

    def batch(self, split: str, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Inputs and targets of batch ``i`` of ``split``, int32 ``[batch, seq_length]``."""
        k = i if split == "train" else self.n_train + i
        return self.x[k], self.y[k]
