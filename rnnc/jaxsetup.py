"""PyTensor's JAX backend set up for rnnc: one bug worked around, one cost removed.

:func:`setup` runs once, when rnnc first sets up the JAX backend
(:func:`rnnc.cache.configure`):

* **constants** (:func:`patch_constants`): PyTensor turns each array constant of a
  graph into a JAX array with ``jnp.array``, which compiles a small XLA program per
  constant (5-10 ms each, 80 ms for the ten of an LSTM gradient, in every compile and
  every load from rnnc's cache; measured, a second process's load of a cached LSTM
  gradient went from 1.02-1.03 to 0.90-0.95 s). ``jax.device_put`` makes the same
  array (same values, same dtype rules) without compiling anything.
* **Sum** (:func:`patch_sum`): PyTensor 3.0's JAX ``Sum`` returns its float64
  accumulator instead of the float32 its type promises; inside a scan gradient that
  breaks ``lax.scan`` (carry dtypes differ) for every parameter broadcast in the loop
  (a bias). The patch casts the result to the declared dtype.

Both apply to the whole process, to PyTensor graphs that are not rnnc's too; neither
changes a result.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["patch_constants", "patch_sum", "setup"]


def setup() -> None:
    """Everything this module does, in the order it must happen."""
    patch_constants()
    patch_sum()


def patch_constants() -> None:
    """Convert NumPy constants with ``jax.device_put`` instead of ``jnp.array``."""
    import jax
    import numpy as np
    from pytensor.link.jax.dispatch import jax_typify

    if getattr(jax_typify.dispatch(np.ndarray), "_rnnc", False):
        return

    def typify_ndarray(data: np.ndarray, dtype: Any = None, **kwargs: Any) -> Any:
        if data.ndim == 0:
            return data.item()  # as PyTensor does: a Python scalar
        return jax.device_put(data if dtype is None else np.asarray(data, dtype=dtype))

    typify_ndarray._rnnc = True  # type: ignore[attr-defined]
    jax_typify.register(np.ndarray)(typify_ndarray)


def patch_sum() -> None:
    """Cast the result of PyTensor's JAX ``Sum`` to the dtype of its output."""
    from pytensor.link.jax.dispatch import jax_funcify
    from pytensor.tensor.math import Sum

    original = jax_funcify.dispatch(Sum)
    if getattr(original, "_rnnc", False):
        return

    def funcify_sum(op: Any, node: Any = None, **kwargs: Any) -> Callable:
        fn = original(op, node=node, **kwargs)
        if node is None:
            return fn
        dtype = node.outputs[0].dtype

        def sum_cast(*args: Any) -> Any:
            return fn(*args).astype(dtype)

        return sum_cast

    funcify_sum._rnnc = True  # type: ignore[attr-defined]
    jax_funcify.register(Sum)(funcify_sum)
