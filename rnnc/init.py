"""Parameter initialisers, named as in the cell language (``param W ~ orthogonal``).

Each takes the concrete shape, a NumPy ``Generator`` and the declared arguments. A
parameter declared without an initialiser gets :func:`default_initializer`: Glorot for
matrices, zeros for vectors and scalars (Keras' defaults for kernels and biases).
"""

from __future__ import annotations

import numpy as np

__all__ = ["INITIALIZERS", "default_initializer", "initialize"]


def uniform(shape, rng, *args):
    """``uniform``: U(-1/sqrt(n), 1/sqrt(n)), n the last dimension (PyTorch's RNN
    init, as rnnc stores weights ``[in, out]``); ``uniform(a)``: U(-a, a);
    ``uniform(lo, hi)``: U(lo, hi)."""
    if not args:
        bound = 1.0 / np.sqrt(shape[-1]) if shape else 1.0
        lo, hi = -bound, bound
    elif len(args) == 1:
        lo, hi = -abs(args[0]), abs(args[0])
    else:
        lo, hi = args
    return rng.uniform(lo, hi, size=shape)


def normal(shape, rng, *args):
    """``normal``: N(0, 0.01^2); ``normal(std)``; ``normal(mean, std)``."""
    mean, std = (0.0, 0.01) if not args else (0.0, args[0]) if len(args) == 1 else args
    return rng.normal(mean, std, size=shape)


def glorot(shape, rng):
    """Glorot/Xavier uniform: U(-a, a) with a = sqrt(6 / (fan_in + fan_out))."""
    if not shape:  # a scalar: fan_in = fan_out = 1
        return rng.uniform(-np.sqrt(3.0), np.sqrt(3.0))
    fan_in, fan_out = (shape[0], shape[-1]) if len(shape) >= 2 else (shape[0], shape[0])
    bound = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-bound, bound, size=shape)


def orthogonal(shape, rng, gain=1.0):
    """A (semi-)orthogonal matrix from the QR decomposition of a Gaussian one."""
    if len(shape) != 2:
        return glorot(shape, rng)
    rows, cols = shape
    a = rng.normal(size=(max(rows, cols), min(rows, cols)))
    q, r = np.linalg.qr(a)
    q *= np.sign(np.diag(r))
    if rows < cols:
        q = q.T
    return gain * q[:rows, :cols]


def zeros(shape, rng):
    return np.zeros(shape)


def ones(shape, rng):
    return np.ones(shape)


def constant(shape, rng, value):
    return np.full(shape, value)


INITIALIZERS = {
    "uniform": uniform,
    "normal": normal,
    "glorot": glorot,
    "orthogonal": orthogonal,
    "zeros": zeros,
    "ones": ones,
    "constant": constant,
}


def default_initializer(shape: tuple[int, ...]) -> str:
    return "glorot" if len(shape) >= 2 else "zeros"


def initialize(
    name: str | None, args: tuple[float, ...], shape: tuple[int, ...], rng: np.random.Generator
) -> np.ndarray:
    """An array of ``shape`` drawn by the initialiser ``name`` (None: the default)."""
    fn = INITIALIZERS[name or default_initializer(shape)]
    return np.asarray(fn(tuple(shape), rng, *args), dtype=np.float64)
