"""PyTensor operations of rnnc's own: a ``tanh`` that is fast in PyTensor's C code, and
a ``softplus`` without branches for rnnc's vector loops.

PyTensor's C backend computes ``tanh`` with the C library's ``tanh``, one number at a
time: 68 us for 32x256 float32 numbers on the machine of ``benchmarks/README.md``,
against 15 us for ``sigmoid``, which is one ``exp``. rnnc lowers every ``tanh`` of a
cell to :data:`fast_tanh`, which C code computes as::

    tanh(x) = 2 / (1 + exp(-2x)) - 1

in 16 us, within 1.2e-7 of ``tanh`` in float32 (1.1e-16 in float64); an LSTM-like
elementwise step (one ``sigmoid``, two ``tanh``) takes 47 us instead of 206. Its
derivative is written with its output, ``1 - tanh(x)**2``, so the backward pass of a
scan reads the value the forward pass kept (the ``save`` pass) instead of computing
it again. The other backends see an ordinary ``tanh``: the op names NumPy's ``tanh``
(``nfunc_spec``), which the JAX and Numba backends translate, and Python evaluates.

PyTensor's C code for ``softplus`` picks one of four formulas by the value of ``x``,
each calling ``exp``; g++ cannot turn those branches into a vector loop without masked
vector calls (AVX-512), so on an AVX2 CPU a loop that computes one ``softplus`` stays
scalar, whatever else it computes. :class:`BranchFreeSoftplus` computes::

    softplus(x) = max(x, 0) + log1p(exp(-|x|))

in a vector loop (float32: within 3 ulp of the exact value over [-100, 100]);
:mod:`rnnc.simd` puts it in place of PyTensor's in the loops it writes, and nowhere
else.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pytensor.scalar.basic import UnaryScalarOp, upgrade_to_float
from pytensor.scalar.math import Softplus
from pytensor.tensor.elemwise import Elemwise

__all__ = ["BranchFreeSoftplus", "FastTanh", "fast_tanh"]


class FastTanh(UnaryScalarOp):
    """``tanh`` computed as ``2 / (1 + exp(-2x)) - 1`` in C (see the module)."""

    nfunc_spec = ("tanh", 1, 1)

    def impl(self, x: Any) -> Any:
        return np.tanh(x)

    def pullback(self, inputs: Any, outputs: Any, gout: Any) -> Any:
        (gz,) = gout
        (z,) = outputs
        return (gz * (1 - z * z),)

    def c_code(self, node: Any, name: str, inputs: Any, outputs: Any, sub: Any) -> str:
        (x,) = inputs
        (z,) = outputs
        if node.outputs[0].type.dtype == "float32":
            return f"{z} = 2.0f / (1.0f + exp(-2.0f * {x})) - 1.0f;"
        return f"{z} = 2.0 / (1.0 + exp(-2.0 * {x})) - 1.0;"

    def c_code_cache_version(self) -> tuple[int, ...]:
        return (3, *super().c_code_cache_version())


#: Elementwise :class:`FastTanh` on tensors.
fast_tanh = Elemwise(FastTanh(upgrade_to_float, name="fast_tanh"))


class BranchFreeSoftplus(Softplus):
    """``softplus`` computed as ``max(x, 0) + log1p(exp(-|x|))`` in C (see the module);
    PyTensor's ``Softplus`` otherwise (its values in Python, its gradient)."""

    def c_code(self, node: Any, name: str, inputs: Any, outputs: Any, sub: Any) -> str:
        (x,) = inputs
        (z,) = outputs
        zero = "0.0f" if node.inputs[0].type.dtype == "float32" else "0.0"
        return f"{z} = ({x} > {zero} ? {x} : {zero}) + log1p(exp(-fabs({x})));"

    def c_code_cache_version(self) -> tuple[int, ...]:
        return (1, *super().c_code_cache_version())
