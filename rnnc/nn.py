"""Model pieces around recurrent layers: embeddings, one-hot codes, dense heads,
dropout and the masked sequence cross-entropy.

Everything here builds PyTensor graphs, so gradients come from ``pytensor.grad``.
Layers hold their parameters as shared variables in ``.params`` (name -> shared),
as :class:`rnnc.Recurrent` does.

>>> ids = pt.imatrix("ids")                                # [batch, time]
>>> emb = rnnc.Embedding(65, 32)
>>> head = rnnc.Dense(32, 65)
>>> logits = head(emb(ids))                                # [batch, time, 65]
>>> loss = rnnc.sequence_cross_entropy(logits, ids)        # mean nats per real step
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytensor
import pytensor.tensor as pt
from pytensor.gradient import zero_grad
from pytensor.tensor.variable import TensorVariable

from rnnc.errors import InputShapeError, OptionError
from rnnc.init import initialize

__all__ = [
    "Dense",
    "Dropout",
    "Embedding",
    "log_softmax",
    "one_hot",
    "sequence_cross_entropy",
]


def _check_dtype(dtype: str) -> str:
    if dtype not in ("float32", "float64"):
        raise OptionError(f"dtype must be 'float32' or 'float64', not {dtype!r}")
    return dtype


def _check_size(what: str, size: Any) -> int:
    if not isinstance(size, int | np.integer) or size < 1:
        raise OptionError(f"{what} must be a positive integer, not {size!r}")
    return int(size)


def _shared(value: np.ndarray, name: str) -> Any:
    """A shared variable with a static shape, sizes of 1 included, as in
    :class:`rnnc.Recurrent`: the JAX backend needs every size known when it traces."""
    return pytensor.shared(value, name=name, shape=value.shape)


def one_hot(ids: Any, depth: int, dtype: str = "float32") -> TensorVariable:
    """The one-hot code of integer ``ids`` (any shape): a new last axis of size ``depth``.

    >>> one_hot(np.array([[0, 2]]), 3).eval()
    array([[[1., 0., 0.],
            [0., 0., 1.]]], dtype=float32)
    """
    ids = pt.as_tensor_variable(ids)
    return pt.cast(pt.eq(ids[..., None], pt.arange(_check_size("depth", depth))), dtype)


class Embedding:
    """A lookup table: integer ids ``[...]`` to vectors ``[..., dim]``.

    Equal to ``one_hot(ids, vocab) @ W`` (and so to a first layer fed one-hot codes),
    but a row gather instead of a product.

    Parameters
    ----------
    vocab, dim
        Number of ids and size of each vector.
    init
        An initialiser of :mod:`rnnc.init` and its arguments (default ``normal(1)``:
        N(0, 1), PyTorch's choice).
    """

    def __init__(
        self,
        vocab: int,
        dim: int,
        *,
        dtype: str = "float32",
        seed: int = 0,
        name: str = "embedding",
        init: tuple[str, tuple[float, ...]] = ("normal", (1.0,)),
    ) -> None:
        self.vocab = _check_size("vocab", vocab)
        self.dim = _check_size("dim", dim)
        self.dtype = _check_dtype(dtype)
        rng = np.random.default_rng(seed)
        value = initialize(init[0], init[1], (self.vocab, self.dim), rng).astype(dtype)
        self.params = {"W": _shared(value, f"{name}.W")}

    def __call__(self, ids: Any) -> TensorVariable:
        ids = pt.as_tensor_variable(ids)
        if not ids.dtype.startswith(("int", "uint")):
            raise InputShapeError(
                f"an embedding takes integer ids, not {ids.dtype}",
                fix="pass token ids (e.g. np.int32), not one-hot vectors",
            )
        return self.params["W"][ids]


class Dense:
    """An affine map on the last axis: ``x @ W + b``, ``[..., n_in] -> [..., n_out]``.

    Parameters
    ----------
    n_in, n_out
        Input and output sizes.
    bias
        False leaves out ``b``.
    init
        The initialiser of ``W`` (default Glorot uniform); ``b`` starts at zero.
    """

    def __init__(
        self,
        n_in: int,
        n_out: int,
        *,
        bias: bool = True,
        dtype: str = "float32",
        seed: int = 0,
        name: str = "dense",
        init: tuple[str, tuple[float, ...]] = ("glorot", ()),
    ) -> None:
        self.n_in = _check_size("n_in", n_in)
        self.n_out = _check_size("n_out", n_out)
        self.dtype = _check_dtype(dtype)
        rng = np.random.default_rng(seed)
        W = initialize(init[0], init[1], (self.n_in, self.n_out), rng).astype(dtype)
        self.params = {"W": _shared(W, f"{name}.W")}
        if bias:
            self.params["b"] = _shared(np.zeros(self.n_out, dtype), f"{name}.b")

    def __call__(self, x: Any) -> TensorVariable:
        x = pt.as_tensor_variable(x)
        if x.ndim == 0 or x.type.shape[-1] not in (None, self.n_in):
            got = x.type.shape[-1] if x.ndim else "a scalar"
            raise InputShapeError(
                f"Dense({self.n_in}, {self.n_out}) got {got} features",
                fix=f"pass [..., {self.n_in}] inputs",
            )
        if x.ndim <= 2:
            y = pt.dot(x, self.params["W"])
        else:
            y = pt.tensordot(x, self.params["W"], axes=[[x.ndim - 1], [0]])
        if "b" in self.params:
            y = y + self.params["b"]
        return y


class Dropout:
    """Inverted dropout: in training each value is zeroed with probability ``p`` and
    the rest scaled by ``1 / (1 - p)``; at test time the identity.

    The random generator is a shared variable (``.rng``); the graph's updates
    (``.updates``, filled by each call) advance it, and its state can be saved and
    restored (``get_state``/``set_state``) so that a resumed run draws the same masks.
    The JAX backend copies the generator into its own, so there the saved state does
    not follow the draws (:class:`rnnc.train.model.DropoutMasks` draws masks in NumPy
    and works with every backend).
    """

    def __init__(self, p: float, *, seed: int = 0) -> None:
        if not 0.0 <= p < 1.0:
            raise OptionError(f"dropout must be in [0, 1), not {p}")
        self.p = float(p)
        self.rng = pytensor.shared(np.random.default_rng(seed), name="dropout.rng")
        self.updates: dict[Any, Any] = {}

    def __call__(self, x: Any, training: bool = True) -> TensorVariable:
        x = pt.as_tensor_variable(x)
        if not training or self.p == 0.0:
            return x
        rng = self.updates.get(self.rng, self.rng)
        next_rng, u = pt.random.uniform(0.0, 1.0, size=x.shape, rng=rng, return_next_rng=True)
        self.updates[self.rng] = next_rng
        keep = pt.cast(pt.ge(u, self.p), x.dtype)
        return x * keep / np.asarray(1.0 - self.p, x.dtype)

    def get_state(self) -> dict[str, Any]:
        """The generator's state (JSON-serialisable)."""
        return self.rng.get_value(borrow=True).bit_generator.state

    def set_state(self, state: dict[str, Any]) -> None:
        gen = np.random.default_rng()
        gen.bit_generator.state = state
        self.rng.set_value(gen, borrow=True)


def log_softmax(logits: Any, axis: int = -1) -> TensorVariable:
    """``log(softmax(logits))`` computed stably (the maximum is subtracted first).

    On C the maximum and the sums over the last axis are :mod:`rnnc.rowreduce`'s: the
    loss and gradient of ``[50, 50, 100]`` float32 logits take 1.49 ms, against 4.40 ms
    with PyTensor's own ``pt.special.log_softmax`` (2026-12-06; before those reductions,
    3.3 against 4.9 ms, and ``rnnc train``'s step was still faster with this one:
    elementwise ops that PyTensor fuses with the rest of the graph). No gradient flows
    through the maximum (the result does not depend on the shift; PyTensor would
    compute a sum of zeros and the maximum's gradient): ``rnnc train`` 40,700-41,250
    against 40,600-40,800 chars/s."""
    logits = pt.as_tensor_variable(logits)
    shifted = logits - zero_grad(pt.max(logits, axis=axis, keepdims=True))
    return shifted - pt.log(pt.sum(pt.exp(shifted), axis=axis, keepdims=True))


def sequence_cross_entropy(logits: Any, targets: Any, mask: Any = None) -> TensorVariable:
    """Mean softmax cross-entropy in nats over the real steps of a batch of sequences.

    ``logits`` is ``[batch, time, classes]``, ``targets`` integer ``[batch, time]``,
    ``mask`` ``[batch, time]`` (1 for a real step; padded steps are left out of the
    sum and of the count). Without a mask every step counts.
    """
    logits = pt.as_tensor_variable(logits)
    targets = pt.as_tensor_variable(targets)
    if logits.ndim != 3 or targets.ndim != 2:
        raise InputShapeError(
            f"sequence_cross_entropy takes logits [batch, time, classes] and targets "
            f"[batch, time]; got {logits.ndim} and {targets.ndim} axes"
        )
    logp = log_softmax(logits)
    b = pt.arange(logits.shape[0])[:, None]
    t = pt.arange(logits.shape[1])[None, :]
    nll = -logp[b, t, targets]
    if mask is None:
        return nll.mean()
    m = pt.cast(pt.as_tensor_variable(mask), logits.dtype)
    return (nll * m).sum() / pt.maximum(m.sum(), np.asarray(1.0, logits.dtype))
