"""Products that share their right operand, made as one product (C backend).

The gradient of a cell's weights sums over every step's rows: for an LSTM with the
input products hoisted and fused, ``dW_h = H.T @ dG`` and ``dW_x = X.T @ dG``, where
``dG`` is ``[T*B, 4H]``, the gradients of the gates' pre-activations, ``H`` the
previous states and ``X`` the inputs (``[T*B, H]`` and ``[T*B, I]``). A BLAS packs
its right operand for each call, so two products pack ``dG`` (13 MB at the medium size
of ``benchmarks/``) twice, and each has fewer rows to spread the packing over. The
rewrite::

    A_1.T @ B, ..., A_n.T @ B   ->   C = JoinRows(A_1, ..., A_n).T @ B,
                                      A_k.T @ B = C[K_1 + ... + K_{k-1} : ... + K_k]

where the ``A_k`` are ``[N, K_k]`` (``N`` rows each) and ``B`` is the same matrix
(the same variable, or the same array reshaped to the same number of columns).
:class:`JoinRows` joins the ``A_k`` side by side; where ``A_k`` is a reshape of an
array into its rows (``[T, B, K] -> [T*B, K]``: the states read from the end, which
NumPy must copy to reshape), it reads the array itself, so the rows are copied once.
The blocks of ``C`` are views; every sum runs in the same order as before, so the
results are bitwise equal.

One core of an AMD EPYC of family 25, model 17 (Zen 4, OpenBLAS 0.3.21), the LSTM of
``benchmarks/`` at the medium size (B=32, T=100, I=128, H=256): ``H.T @ dG`` took
18.1 ms and ``X.T @ dG`` 10.0 ms, the joined product 25.8 ms, and joining the rows
0.9 ms: the function took 0.98 of its time. Whole functions are in
``docs/backends.md`` ("Weight gradients as one product"). For the C backend only
(JAX's shapes must be static, and XLA was not measured); ``RNNC_SHARED_PRODUCTS=0``
switches it off (part of the key of rnnc's function cache).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytensor.tensor as pt
from pytensor.graph.basic import Apply
from pytensor.graph.op import Op
from pytensor.graph.rewriting.basic import dfs_rewriter, node_rewriter
from pytensor.tensor.blas import Dot22
from pytensor.tensor.math import Dot
from pytensor.tensor.shape import Reshape
from pytensor.tensor.type import TensorType

from rnnc.env import switched_off
from rnnc.loopinputs import _dim, _sizes, _transposed

__all__ = [
    "JoinRows",
    "in_use",
    "join_rows",
    "local_products_sharing_an_operand",
    "register",
    "same_matrices",
]

_registered = False


class JoinRows(Op):
    """The rows of arrays side by side: ``[N, K_1 + ... + K_n]`` from arrays whose
    last axes are ``K_k`` long and whose other axes hold ``N`` rows in all (in C
    order), as ``join(1, reshape(a_1, [N, K_1]), ...)`` without the copies the
    reshapes of views make."""

    __props__ = ()

    def make_node(self, *arrays: Any) -> Apply:
        arrays = [pt.as_tensor_variable(a) for a in arrays]
        dtypes = {a.dtype for a in arrays}
        if len(dtypes) != 1 or any(a.ndim < 2 for a in arrays):
            raise TypeError("JoinRows: arrays of one dtype, of two axes or more")
        widths = [a.type.shape[-1] for a in arrays]
        width = None if None in widths else sum(widths)
        out = TensorType(arrays[0].dtype, shape=(None, width))()
        return Apply(self, arrays, [out])

    def perform(self, node: Any, inputs: Any, output_storage: Any) -> None:
        output_storage[0][0] = join_rows(inputs)

    def infer_shape(self, fgraph: Any, node: Any, shapes: Any) -> Any:
        first = shapes[0]
        rows = first[0]
        for s in first[1:-1]:
            rows = rows * s
        width = shapes[0][-1]
        for s in shapes[1:]:
            width = width + s[-1]
        return [(rows, width)]


def join_rows(arrays: Any) -> np.ndarray:
    """The rows of NumPy ``arrays`` side by side (what :class:`JoinRows` computes)."""
    rows = {int(np.prod(a.shape[:-1])) for a in arrays}
    if len(rows) != 1:
        raise ValueError(f"JoinRows: the arrays hold different numbers of rows {rows}")
    out = np.empty((rows.pop(), sum(a.shape[-1] for a in arrays)), arrays[0].dtype)
    start = 0
    for a in arrays:
        block = out[:, start : start + a.shape[-1]]
        block.shape = a.shape  # splits the rows: a view, never a copy
        block[...] = a
        start += a.shape[-1]
    return out


def _unreshaped(matrix: Any) -> Any:
    """The array whose rows ``matrix`` is (``reshape(a, [N, K])`` with ``K`` provably
    ``a``'s last axis), else ``matrix`` itself."""
    owner = matrix.owner
    if owner is None or not isinstance(owner.op, Reshape) or owner.inputs[0].ndim < 2:
        return matrix
    array, shape = owner.inputs
    width = matrix.type.shape[1]
    if width is not None and width == array.type.shape[-1]:
        return array
    sizes = _sizes(shape)
    if sizes is not None and sizes[-1] == _dim(array, array.ndim - 1):
        return array
    return matrix


def _same_matrix(var: Any) -> Any:
    """A key that two right operands share when they are the same matrix: the
    variable, or the array it reshapes with the static number of columns."""
    owner = var.owner
    if owner is not None and isinstance(owner.op, Reshape) and var.type.shape[1] is not None:
        return (owner.inputs[0], var.type.shape[1])
    return var


def same_matrices(fgraph: Any, var: Any) -> list[Any]:
    """``var`` and the other variables of ``fgraph`` that are the same matrix (reshapes
    of the array ``var`` reshapes, to the same static number of columns)."""
    key = _same_matrix(var)
    if key is var:
        return [var]
    return [var] + [
        client.outputs[0]
        for client, _ in fgraph.clients[key[0]]
        if isinstance(client.op, Reshape)  # not the function's output, say
        and client.outputs[0] is not var
        and _same_matrix(client.outputs[0]) == key
    ]


def _sharing(fgraph: Any, node: Any) -> list[Apply]:
    """The products ``A.T @ B`` of the same kind as ``node`` whose ``B`` is
    ``node``'s, ``node`` first."""
    group = [node]
    for candidate in same_matrices(fgraph, node.inputs[1]):
        for client, position in fgraph.clients[candidate]:
            if (
                position == 1
                and client not in group
                and client.op == node.op
                and client.inputs[0].ndim == 2
                and _transposed(client.inputs[0]) is not None
                and client.outputs[0].dtype == node.outputs[0].dtype
            ):
                group.append(client)
    return group


@node_rewriter([Dot22, Dot])
def local_products_sharing_an_operand(fgraph: Any, node: Any) -> Any:
    """``A_1.T @ B, ..., A_n.T @ B`` as one product (see the module)."""
    left, right = node.inputs
    if not in_use() or left.ndim != 2 or right.ndim != 2 or _transposed(left) is None:
        return None
    group = _sharing(fgraph, node)
    if len(group) < 2:
        return None
    lefts = [_transposed(n.inputs[0]) for n in group]
    if len({m.dtype for m in lefts}) != 1:
        return None
    joined = JoinRows()(*[_unreshaped(m) for m in lefts])
    product = node.op(joined.T, right)
    widths = [m.type.shape[1] if m.type.shape[1] is not None else m.shape[1] for m in lefts]
    if any(not isinstance(w, int) for w in widths):
        widths = pt.stack([pt.as_tensor(w, dtype="int64") for w in widths])
    blocks = pt.split(product, widths, n_splits=len(group), axis=0)
    return {
        n.outputs[0]: pt.specify_shape(b, n.outputs[0].type.shape)
        for n, b in zip(group, blocks, strict=True)
    }


def in_use() -> bool:
    """Whether the rewrite is on (``RNNC_SHARED_PRODUCTS`` does not switch it off)."""
    return not switched_off("RNNC_SHARED_PRODUCTS")


def register() -> None:
    """Add the rewrite to PyTensor's C rewrites (once), after rnnc's loop rewrites
    (:mod:`rnnc.loopinputs`, 49.32-49.33), which may leave a product after a loop."""
    global _registered
    if _registered:
        return
    from pytensor.compile.mode import optdb

    optdb.register(
        "rnnc_products_sharing_an_operand",
        dfs_rewriter(local_products_sharing_an_operand),
        "fast_run",
        "cxx_only",
        position=49.34,
    )
    _registered = True
