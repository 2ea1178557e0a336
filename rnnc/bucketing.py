"""Batches of sequences: padding, bucketing by length, and chunks for truncated BPTT.

A batch of sequences of different lengths is padded to its longest one, and the
padded steps cost as much as real ones. Bucketing puts sequences of similar length
into the same batch, so that little is padded::

    batches = bucket(sequences, batch_size=32, seed=0)
    for batch in batches:                       # shuffled order, each sequence once
        out = layer(batch.x, mask=batch.mask)   # [B, T_batch, ...], [B, T_batch]
    print(batches.report())                     # padding 3.1% (random batches: 41.7%)

The padding fraction of a set of batches is

.. math::

    p = 1 - \\frac{\\sum_i L_i}{\\sum_b B_b \\max_{i \\in b} L_i}

(padded steps over all steps computed); :attr:`Buckets.random_padding` is the same
for batches drawn at random, what bucketing is measured against.

:func:`chunks` cuts long sequences along time for truncated back-propagation through
time with a stateful layer (``layer.run(chunk, stateful=True)``).

This module needs only NumPy.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from rnnc.errors import InputShapeError, OptionError

__all__ = ["Batch", "Buckets", "bucket", "chunks", "pad", "padding_fraction"]

Sequences = Sequence[np.ndarray] | Mapping[str, Sequence[np.ndarray]]


@dataclass
class Batch:
    """One padded batch: ``x`` ``[batch, time, ...]`` (a dict of such arrays when the
    sequences were given as a dict), ``mask`` ``[batch, time]`` (1 for a real step),
    ``lengths`` ``[batch]``, and ``index``: the position of each row in the input."""

    x: Any
    mask: np.ndarray
    lengths: np.ndarray
    index: np.ndarray


def pad(
    sequences: Sequence[np.ndarray],
    length: int | None = None,
    side: str = "right",
    value: float = 0.0,
    dtype: Any = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Pad ``[T_i, ...]`` arrays to one ``[batch, length, ...]`` array and its mask.

    ``length`` defaults to the longest sequence; ``side="left"`` puts the padding
    before the sequences (rnnc's masks work with either).

    >>> x, mask = pad([np.ones((2, 3)), np.ones((1, 3))])
    >>> x.shape, mask.tolist()
    ((2, 2, 3), [[1.0, 1.0], [1.0, 0.0]])
    """
    if side not in ("right", "left"):
        raise OptionError(f"side must be 'right' or 'left', not {side!r}")
    arrays = [np.asarray(s) for s in sequences]
    if not arrays:
        raise InputShapeError("pad() got no sequences", fix="pass at least one sequence")
    tails = {a.shape[1:] for a in arrays}
    if any(a.ndim == 0 for a in arrays) or len(tails) > 1:
        raise InputShapeError(
            f"the sequences must be [time, ...] arrays with one feature shape, got "
            f"{sorted(str(list(a.shape)) for a in arrays)[:4]}",
            fix="give every sequence the same shape apart from its length",
        )
    lengths = np.array([len(a) for a in arrays])
    longest = int(lengths.max())
    length = longest if length is None else int(length)
    if length < longest:
        raise InputShapeError(
            f"length={length} is shorter than the longest sequence ({longest} steps)",
            fix="leave length out, or cut the sequences first",
        )
    dtype = dtype or np.result_type(*arrays)
    out = np.full((len(arrays), length, *tails.pop()), value, dtype=dtype)
    mask = np.zeros((len(arrays), length))
    for i, (a, n) in enumerate(zip(arrays, lengths, strict=True)):
        where = slice(0, n) if side == "right" else slice(length - n, length)
        out[i, where] = a
        mask[i, where] = 1.0
    return out, mask


def padding_fraction(lengths: Sequence[int], groups: Sequence[Sequence[int]]) -> float:
    """The fraction of padded steps when the sequences of ``lengths`` are batched as
    ``groups`` (lists of indices), each padded to its longest member."""
    lengths = np.asarray(lengths)
    total = sum(len(g) * int(lengths[list(g)].max()) for g in groups if len(g))
    return 0.0 if total == 0 else 1.0 - float(sum(lengths[list(g)].sum() for g in groups)) / total


class Buckets(Sequence[Batch]):
    """Batches made by :func:`bucket`, with how much padding they save.

    ``groups`` are the indices in each batch; ``padding`` the padding fraction of
    these batches; ``random_padding`` the mean padding fraction of random batches
    of the same size (over a few seeded draws); ``saved`` the fraction of computed
    steps bucketing saves against random batches.
    """

    def __init__(
        self,
        sequences: Sequences,
        groups: list[np.ndarray],
        lengths: np.ndarray,
        random_padding: float,
        side: str,
    ) -> None:
        self.sequences = sequences
        self.groups = groups
        self.lengths = lengths
        self.side = side
        self.padding = padding_fraction(lengths, groups)
        self.random_padding = random_padding
        steps = sum(len(g) * int(lengths[g].max()) for g in groups)
        random_steps = lengths.sum() / (1.0 - random_padding) if random_padding < 1 else steps
        self.saved = 0.0 if random_steps == 0 else 1.0 - steps / random_steps

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, i: int) -> Batch:  # type: ignore[override]
        index = self.groups[i]
        if isinstance(self.sequences, Mapping):
            padded = {
                k: pad([v[j] for j in index], side=self.side) for k, v in self.sequences.items()
            }
            x = {k: p[0] for k, p in padded.items()}
            mask = next(iter(padded.values()))[1]
        else:
            x, mask = pad([self.sequences[j] for j in index], side=self.side)
        return Batch(x, mask, self.lengths[index], index)

    def __iter__(self) -> Iterator[Batch]:
        return (self[i] for i in range(len(self)))

    def report(self) -> str:
        """One line: the padding of these batches and of random ones."""
        return (
            f"{len(self)} batches: padding {100 * self.padding:.1f}% "
            f"(random batches: {100 * self.random_padding:.1f}%), "
            f"{100 * self.saved:.1f}% fewer steps computed"
        )


def bucket(
    sequences: Sequences,
    batch_size: int,
    *,
    window: int | None = None,
    shuffle: bool = True,
    drop_last: bool = False,
    side: str = "right",
    seed: int = 0,
) -> Buckets:
    """Group sequences of similar length into padded batches of ``batch_size``.

    The sequences (in a random order, for ties) are sorted by length within windows
    of ``window`` batches (all of them by default; a smaller window keeps more
    randomness in which sequences meet), cut into batches, and the batches shuffled.
    ``sequences`` is a list of ``[T_i, ...]`` arrays, or a dict of such lists of equal
    lengths (inputs and targets); a batch pads each.

    >>> batches = bucket([np.zeros((n, 3)) for n in (5, 1, 4, 2)], batch_size=2)
    >>> sorted(b.x.shape[1] for b in batches)
    [2, 5]
    """
    if (
        isinstance(batch_size, bool)
        or not isinstance(batch_size, int | np.integer)
        or batch_size < 1
    ):
        raise OptionError(f"batch_size must be a positive integer, not {batch_size!r}")
    if window is not None and (not isinstance(window, int | np.integer) or window < 1):
        raise OptionError(f"window must be a positive number of batches or None, not {window!r}")
    lengths = _lengths(sequences)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(lengths))
    span = len(order) if window is None else window * batch_size
    groups = []
    for start in range(0, len(order), max(span, 1)):
        part = order[start : start + span]
        part = part[np.argsort(lengths[part], kind="stable")]
        groups += [part[i : i + batch_size] for i in range(0, len(part), batch_size)]
    if drop_last:
        groups = [g for g in groups if len(g) == batch_size]
    if shuffle:
        groups = [groups[i] for i in rng.permutation(len(groups))]
    random = []
    for draw in range(8):
        perm = np.random.default_rng([seed, draw]).permutation(len(lengths))
        chunks_ = [perm[i : i + batch_size] for i in range(0, len(perm), batch_size)]
        if drop_last:
            chunks_ = [c for c in chunks_ if len(c) == batch_size]
        random.append(padding_fraction(lengths, chunks_))
    return Buckets(sequences, groups, lengths, float(np.mean(random)), side)


def _lengths(sequences: Sequences) -> np.ndarray:
    if isinstance(sequences, Mapping):
        per_key = {k: [len(s) for s in v] for k, v in sequences.items()}
        first = next(iter(per_key.values()), [])
        for k, v in per_key.items():
            if v != first:
                raise InputShapeError(
                    f"sequences[{k!r}] do not have the lengths of the other entries",
                    fix="give inputs and targets the same number of steps per sequence",
                )
        return np.asarray(first, dtype=int)
    return np.asarray([len(s) for s in sequences], dtype=int)


def chunks(
    arrays: np.ndarray | Mapping[str, np.ndarray | None],
    size: int,
    *,
    remainder: str = "keep",
) -> Iterator[Any]:
    """Cut ``[batch, time, ...]`` arrays along time into chunks of ``size`` steps.

    ``arrays`` is one array or a dict of arrays with the same batch and time (inputs,
    mask, reset, targets; None entries are passed through). The last chunk is shorter
    when ``size`` does not divide the time: ``remainder="keep"`` yields it,
    ``"drop"`` leaves it out, ``"error"`` raises. With a stateful layer the chunks
    give the same numbers as the whole sequence::

        for chunk in chunks({"x": x, "mask": mask}, 100):
            out = layer.run(chunk["x"], mask=chunk["mask"], stateful=True)
    """
    if remainder not in ("keep", "drop", "error"):
        raise OptionError(
            f"remainder must be 'keep', 'drop' or 'error', not {remainder!r}",
        )
    named = arrays if isinstance(arrays, Mapping) else {"": arrays}
    given = {k: np.asarray(v) for k, v in named.items() if v is not None}
    if not given:
        raise InputShapeError("chunks() got no arrays", fix="pass [batch, time, ...] arrays")
    for k, v in given.items():
        if v.ndim < 2:
            raise InputShapeError(
                f"{'arrays' + (f'[{k!r}]' if k else '')} must be [batch, time, ...], but it "
                f"has shape {list(v.shape)}",
                fix="add the batch axis",
            )
    lead = {v.shape[:2] for v in given.values()}
    if len(lead) > 1:
        raise InputShapeError(
            f"the arrays disagree on [batch, time]: {sorted(lead)}",
            fix="cut arrays of one batch and one time axis together",
        )
    time = lead.pop()[1]
    if isinstance(size, bool) or not isinstance(size, int | np.integer) or size < 1:
        raise OptionError(f"chunk size must be a positive number of steps, not {size!r}")
    if size > time and remainder != "keep":
        raise OptionError(
            f"chunk size {size} does not fit in the {time} steps of the sequences",
            fix=f"use a size of at most {time}, or remainder='keep' for one short chunk",
        )
    if remainder == "error" and time % size:
        raise OptionError(
            f"chunk size {size} does not divide the {time} steps of the sequences "
            f"({time % size} left over)",
            fix=f"use a divisor of {time}, or remainder='keep' / 'drop'",
        )
    stop = time - time % size if remainder == "drop" else time
    for start in range(0, stop, size):
        part = {
            k: (v[:, start : start + size] if v is not None else None) for k, v in named.items()
        }
        yield part if isinstance(arrays, Mapping) else part[""]
