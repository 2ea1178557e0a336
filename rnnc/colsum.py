"""Sums over the rows of a matrix as one vectorised loop in PyTensor's C backend.

A bias's gradient is the sum of the gate gradients over the examples: over a step's
``[B, 4H]`` block in a backward loop (a bias added in the loop, the GRU's ``b_hn``),
or over all ``[T*B, 4H]`` rows after it. PyTensor's C code for ``Sum{axis=0}`` walks
the matrix with strides known only at run time and adds in ``float64`` one element at
a time: 13 us for ``[32, 1024]`` float32 on one core of an Intel Xeon (family 6,
model 207, 2026-12-06), against NumPy's 6 with the call.

:class:`ColumnSum` computes the same sum, each column from the first row to the last,
in the same accumulator type, by a loop over rows whose inner loop over a row's
elements g++ vectorises::

    acc[j] = 0;  for i in rows: acc[j] += (acc_t) x[i, j];  out[j] = (out_t) acc[j]

The additions are those of PyTensor's loop, in the same order, so the result is the
same value. :func:`local_column_sums` replaces ``Sum{axis=0}`` of a float32 or
float64 matrix (accumulated in ``float64`` or in its own dtype) by it, in loops and
outside; registered by :func:`register` in PyTensor's C rewrites (tag ``cxx_only``),
after elementwise fusion and before the in-place rewrites.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytensor.tensor as pt
from pytensor.graph.basic import Apply
from pytensor.graph.rewriting.basic import dfs_rewriter, node_rewriter
from pytensor.link.c.op import COp
from pytensor.tensor.math import Sum

from rnnc.simd import VECTOR_LOOP

__all__ = ["ColumnSum", "column_sums", "local_column_sums", "register", "summed_columns"]

FLOATS = ("float32", "float64")


def column_sums(x: np.ndarray, acc_dtype: str) -> np.ndarray:
    """``x.sum(axis=0)`` in ``x``'s dtype, each column added in ``acc_dtype`` from the
    first row to the last (the C loop's order)."""
    total = np.zeros(x.shape[1], dtype=acc_dtype)
    for row in x:
        total += row
    return total.astype(x.dtype)


class ColumnSum(COp):
    """``x.sum(axis=0)`` of a float matrix, accumulated in ``acc_dtype``, the result
    in ``x``'s dtype."""

    __props__ = ("acc_dtype",)

    def __init__(self, acc_dtype: str = "float64") -> None:
        self.acc_dtype = acc_dtype

    def make_node(self, x: Any) -> Apply:
        x = pt.as_tensor_variable(x)
        if x.ndim != 2 or x.dtype not in FLOATS or self.acc_dtype not in FLOATS:
            raise TypeError(f"ColumnSum takes a float matrix, not {x.type}")
        out = pt.tensor(dtype=x.dtype, shape=(x.type.shape[1],))
        return Apply(self, [x], [out])

    def perform(self, node: Any, inputs: Any, output_storage: Any) -> None:
        output_storage[0][0] = column_sums(inputs[0], self.acc_dtype)

    def infer_shape(self, fgraph: Any, node: Any, shapes: Any) -> Any:
        return [(shapes[0][1],)]

    def c_support_code(self, **kwargs: Any) -> str:
        return VECTOR_LOOP

    def c_support_code_apply(self, node: Any, name: str) -> str:
        item = f"npy_{node.inputs[0].dtype}"
        acc = f"npy_{self.acc_dtype}"
        return f"""
RNNC_VECTOR_LOOP
static void {name}_loop(npy_intp rows, npy_intp cols, const {item}* x, npy_intp step,
                        {acc}* acc) {{
    for (npy_intp j = 0; j < cols; j++) acc[j] = 0;
    for (npy_intp i = 0; i < rows; i++) {{
        const {item}* row = x + i * step;
        #pragma GCC ivdep
        for (npy_intp j = 0; j < cols; j++) acc[j] += ({acc})row[j];
    }}
}}
"""

    def c_code(self, node: Any, name: str, inames: Any, onames: Any, sub: Any) -> str:
        (x,), (z,) = inames, onames
        dtype = node.inputs[0].dtype
        typenum = np.dtype(dtype).num
        item, acc = f"npy_{dtype}", f"npy_{self.acc_dtype}"
        fail = sub["fail"]
        # the sum accumulates in the output where the types agree, else in a buffer
        own = self.acc_dtype != dtype
        return f"""
{{
    PyArrayObject* src = {x};
    Py_INCREF(src);
    npy_intp cols = PyArray_DIMS(src)[1];
    if (cols > 1 && PyArray_STRIDES(src)[1] != sizeof({item})) {{  /* rows of unit stride */
        Py_DECREF(src);
        src = (PyArrayObject*)PyArray_NewCopy({x}, NPY_CORDER);
        if (!src) {fail}
    }}
    if (!{z} || PyArray_NDIM({z}) != 1 || PyArray_DIMS({z})[0] != cols
        || PyArray_TYPE({z}) != {typenum} || !PyArray_IS_C_CONTIGUOUS({z})) {{
        Py_XDECREF({z});
        {z} = (PyArrayObject*)PyArray_EMPTY(1, &cols, {typenum}, 0);
        if (!{z}) {{ Py_DECREF(src); {fail} }}
    }}
    npy_intp rows = PyArray_DIMS(src)[0];
    npy_intp step = rows > 1 ? PyArray_STRIDES(src)[0] / (npy_intp)sizeof({item}) : 0;
    {item}* out = ({item}*)PyArray_DATA({z});
    {acc}* acc = {f"({acc}*)malloc((cols ? cols : 1) * sizeof({acc}))" if own else f"({acc}*)out"};
    if (!acc) {{
        Py_DECREF(src);
        PyErr_NoMemory();
        {fail}
    }}
    {name}_loop(rows, cols, ({item}*)PyArray_DATA(src), step, acc);
    {f"for (npy_intp j = 0; j < cols; j++) out[j] = ({item})acc[j]; free(acc);" if own else ""}
    Py_DECREF(src);
}}
"""

    def c_code_cache_version(self) -> tuple[int, ...]:
        return (2,)


@node_rewriter([Sum])
def local_column_sums(fgraph: Any, node: Apply) -> Any:
    """``Sum{axis=0}`` of a float matrix, accumulated in float64 or its own dtype, as
    :class:`ColumnSum`."""
    acc = summed_columns(node)
    return None if acc is None else [ColumnSum(acc)(node.inputs[0])]


def summed_columns(node: Apply) -> str | None:
    """The accumulator's dtype if ``node`` is a ``Sum{axis=0}`` that :class:`ColumnSum`
    computes (of a float matrix, in float64 or its own dtype), else None."""
    if not isinstance(node.op, Sum):
        return None
    (x,) = node.inputs
    acc = node.op.acc_dtype or x.dtype
    if x.ndim != 2 or tuple(node.op.axis or ()) != (0,) or x.dtype not in FLOATS:
        return None
    if node.outputs[0].dtype != x.dtype or acc not in (x.dtype, "float64"):
        return None
    return acc


_registered = False


def register() -> None:
    """Add :func:`local_column_sums` to PyTensor's C rewrites (once)."""
    global _registered
    if _registered:
        return
    from pytensor.compile.mode import optdb

    optdb.register(
        "rnnc_column_sums",
        dfs_rewriter(local_column_sums),
        "fast_run",
        "cxx_only",
        position=49.4,  # after elementwise fusion (49), before in-place (49.5)
    )
    _registered = True
