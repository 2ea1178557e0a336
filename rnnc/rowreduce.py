"""Sums and maxima along the last axis, several rows at a time, in PyTensor's C backend.

A softmax over a character model's vocabulary takes the maximum and the sum of each
row of its logits, ``[B, T, V]`` with ``V`` about a hundred. PyTensor's C code for
``Max{axis=-1}`` and ``Sum{axis=-1}`` walks such an array one element at a time with
strides computed at run time: 1127 and 655 us for ``[50, 50, 96]`` float32 on one
core of an Intel Xeon (family 6, model 207, 2026-12-06), against NumPy's 336 for the
maximum; four such reductions were a tenth of ``rnnc train``'s step on C.

:class:`LastAxisReduce` computes the same reductions, each row from its first
element to its last as PyTensor does (the same additions in the same order, in the
same accumulator type; the maximum with PyTensor's ``maximum``, which returns NaN
where either value is NaN), so the results are the same values. It reduces eight
rows at a time: eight independent chains of operations instead of one, which the
CPU overlaps::

    for each block of 8 rows:
        acc[k] = first(k);  for i in columns: acc[k] = op(acc[k], x[row k, i])

:func:`local_last_axis_reductions` replaces ``Sum`` (accumulated in ``float64`` or
the input's dtype) and ``Max`` over the last axis of a float array by it;
:func:`register` adds it to PyTensor's C rewrites (tag ``cxx_only``), after
elementwise fusion and before the in-place rewrites.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytensor.tensor as pt
from pytensor.graph.basic import Apply
from pytensor.graph.rewriting.basic import dfs_rewriter, node_rewriter
from pytensor.link.c.op import COp
from pytensor.tensor.math import Max, Sum

from rnnc.simd import ROWS, VECTOR_LOOP

__all__ = ["LastAxisReduce", "local_last_axis_reductions", "register"]

FLOATS = ("float32", "float64")

#: Rows reduced together: independent chains of additions or comparisons.
BLOCK = 8


class LastAxisReduce(COp):
    """``x.sum(axis=-1)`` (``kind="sum"``, accumulated in ``acc_dtype``) or
    ``x.max(axis=-1)`` (``kind="max"``) of a float array, in ``x``'s dtype."""

    __props__ = ("kind", "acc_dtype")

    def __init__(self, kind: str, acc_dtype: str | None = None) -> None:
        if kind not in ("sum", "max"):
            raise ValueError(f"LastAxisReduce: kind 'sum' or 'max', not {kind!r}")
        self.kind = kind
        self.acc_dtype = acc_dtype

    def _acc(self, dtype: str) -> str:
        return dtype if self.kind == "max" or self.acc_dtype is None else self.acc_dtype

    def make_node(self, x: Any) -> Apply:
        x = pt.as_tensor_variable(x)
        if x.ndim < 1 or x.dtype not in FLOATS or self._acc(x.dtype) not in FLOATS:
            raise TypeError(f"LastAxisReduce takes a float array, not {x.type}")
        out = pt.tensor(dtype=x.dtype, shape=x.type.shape[:-1])
        return Apply(self, [x], [out])

    def perform(self, node: Any, inputs: Any, output_storage: Any) -> None:
        (x,) = inputs
        dtype = x.dtype
        if self.kind == "max":
            if x.shape[-1] == 0:
                raise ValueError("LastAxisReduce: the maximum of an empty axis")
            acc = x[..., 0].copy()
            for i in range(1, x.shape[-1]):  # PyTensor's maximum, column after column
                v = x[..., i]
                with np.errstate(invalid="ignore"):
                    acc = np.where(v > acc, v, np.where(acc >= v, acc, np.nan))
        else:
            acc = np.zeros(x.shape[:-1], dtype=self._acc(dtype))
            for i in range(x.shape[-1]):  # each row from its first element to its last
                acc += x[..., i]
        output_storage[0][0] = np.asarray(acc, dtype=dtype)

    def infer_shape(self, fgraph: Any, node: Any, shapes: Any) -> Any:
        return [tuple(shapes[0][:-1])]

    def c_headers(self, **kwargs: Any) -> list[str]:
        return ["<math.h>"]

    def c_support_code(self, **kwargs: Any) -> str:
        return VECTOR_LOOP + ROWS

    def c_support_code_apply(self, node: Any, name: str) -> str:
        item = f"npy_{node.inputs[0].dtype}"
        acc = f"npy_{self._acc(node.inputs[0].dtype)}"
        if self.kind == "max":
            # PyTensor's maximum, (v > a) ? v : ((a >= v) ? a : nan), keeps the first
            # of equal values and is NaN from a NaN on: the same as the larger value
            # without branches (v > a ? v : a) and a NaN at the end where one was seen
            seen = "    int seen[M];"
            first = "a[k] = x[(r + k) * step]; seen[k] = (a[k] != a[k]);"
            start = 1
            step_op = "a[k] = (v > a[k]) ? v : a[k]; seen[k] |= (v != v);"
            last = f'(seen[k] && cols > 1) ? ({item})nan("") : ({item})a[k]'
        else:
            seen, first, start = "", "a[k] = 0;", 0
            step_op = f"a[k] += ({acc})v;"
            last = f"({item})a[k]"
        block = "\n".join(
            [
                "{",
                f"    {acc} a[M];",
                seen,
                f"    for (int k = 0; k < M; k++) {{ {first} }}",
                f"    for (npy_intp i = {start}; i < cols; i++) {{",
                "        for (int k = 0; k < M; k++) {",
                f"            const {acc} v = x[(r + k) * step + i];",
                f"            {step_op}",
                "        }",
                "    }",
                f"    for (int k = 0; k < M; k++) out[r + k] = {last};",
                "}",
            ]
        )
        return f"""
RNNC_VECTOR_LOOP
static void {name}_loop(npy_intp rows, npy_intp cols, const {item}* x, npy_intp step,
                        {item}* out) {{
    npy_intp r = 0;
    for (; r + {BLOCK} <= rows; r += {BLOCK}) {{  /* {BLOCK} rows: independent chains */
        const int M = {BLOCK};
        {block}
    }}
    for (; r < rows; r++) {{
        const int M = 1;
        {block}
    }}
}}
"""

    def c_code(self, node: Any, name: str, inames: Any, onames: Any, sub: Any) -> str:
        (x,), (z,) = inames, onames
        dtype = node.inputs[0].dtype
        typenum = np.dtype(dtype).num
        nd = node.inputs[0].ndim
        item = f"npy_{dtype}"
        fail = sub["fail"]
        empty = (
            f"""if (cols == 0 && rows > 0) {{
        Py_DECREF(src);
        PyErr_SetString(PyExc_ValueError, "LastAxisReduce: the maximum of an empty axis");
        {fail}
    }}"""
            if self.kind == "max"
            else ""
        )
        return f"""
{{
    PyArrayObject* src = {x};
    Py_INCREF(src);
    npy_intp step;
    if (!rnnc_rows(src, &step)) {{  /* rows of unit stride, one step apart */
        Py_DECREF(src);
        src = (PyArrayObject*)PyArray_NewCopy({x}, NPY_CORDER);
        if (!src) {fail}
        rnnc_rows(src, &step);
    }}
    const npy_intp cols = PyArray_DIMS(src)[{nd - 1}];
    npy_intp dims[{max(nd - 1, 1)}];
    npy_intp rows = 1;  /* the output's elements */
    for (int d = 0; d < {nd - 1}; d++) {{ dims[d] = PyArray_DIMS(src)[d]; rows *= dims[d]; }}
    {empty}
    if (!{z} || PyArray_NDIM({z}) != {nd - 1} || PyArray_TYPE({z}) != {typenum}
        || !PyArray_IS_C_CONTIGUOUS({z})
        || !PyArray_CompareLists(PyArray_DIMS({z}), dims, {nd - 1})) {{
        Py_XDECREF({z});
        {z} = (PyArrayObject*)PyArray_EMPTY({nd - 1}, dims, {typenum}, 0);
        if (!{z}) {{ Py_DECREF(src); {fail} }}
    }}
    {name}_loop(cols ? rows : 0, cols, ({item}*)PyArray_DATA(src), step,
                ({item}*)PyArray_DATA({z}));
    if (cols == 0) {{  /* a sum over nothing */
        {item}* out = ({item}*)PyArray_DATA({z});
        for (npy_intp j = 0; j < rows; j++) out[j] = 0;
    }}
    Py_DECREF(src);
}}
"""

    def c_code_cache_version(self) -> tuple[int, ...]:
        return (2,)


@node_rewriter([Sum, Max])
def local_last_axis_reductions(fgraph: Any, node: Apply) -> Any:
    """``Sum`` (accumulated in float64 or the input's dtype) or ``Max`` over the last
    axis of a float array, as :class:`LastAxisReduce`."""
    op = node.op
    (x,) = node.inputs
    if x.ndim < 1 or x.dtype not in FLOATS or node.outputs[0].dtype != x.dtype:
        return None
    if tuple(op.axis or range(x.ndim)) != (x.ndim - 1,):
        return None
    if type(op) is Max:
        return [LastAxisReduce("max")(x)]
    acc = op.acc_dtype or x.dtype
    if type(op) is not Sum or acc not in (x.dtype, "float64"):
        return None
    return [LastAxisReduce("sum", acc)(x)]


def register() -> None:
    """Add :func:`local_last_axis_reductions` to PyTensor's C rewrites (once)."""
    from pytensor.compile.mode import optdb

    if "rnnc_last_axis_reductions" in optdb:
        return
    optdb.register(
        "rnnc_last_axis_reductions",
        dfs_rewriter(local_last_axis_reductions),
        "fast_run",
        "cxx_only",
        position=49.4,  # after elementwise fusion (49), before in-place (49.5)
    )
