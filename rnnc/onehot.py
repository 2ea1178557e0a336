"""Products by one-hot codes as row gathers and scatters (C and JAX backends).

A character model fed one-hot codes (char-rnn's inputs, :func:`rnnc.nn.one_hot`)
multiplies them by its first layer's input weights: the hoisted ``X @ W_x``, ``X``
of ``[T*B, V]`` ones and zeros, and in the gradient ``X.T @ dG``. Each row of ``X``
picks one row of ``W_x``, so the products are a gather and a scatter-add::

    one_hot(ids) @ W       ->  join(0, W, zeros([1, N]))[where(0 <= ids < V, ids, V)]
    one_hot(ids).T @ dG    ->  RowSums(V)(dG, ids)

(an id outside the code makes a row of zeros, as the product does; :class:`RowSums`
adds the rows of ``dG`` by id, skipping those). The rewrite follows the code through
what the layer does to it on the way to the product (casts, reshapes into rows,
transpositions and slices of the leading axes, ``specify_shape``) and does the same
to the ids. The sums of the gradient run in another order than BLAS's; the
forward values are the same unless ``W`` holds an infinity or a NaN (the product then
spreads it to every row).

The training step of ``rnnc train`` (two LSTM layers of 128, batches of 50 x 50,
one core of an AMD EPYC of family 25, model 17, float32) took 0.873 of the time with
103 characters and 0.936 with 65 (``docs/backends.md``, "One-hot inputs"); on JAX, 0.908 with 103.
For the C and JAX backends (:class:`RowSums` is ``jax.ops.segment_sum`` there; Numba
would run it in Python); ``RNNC_ONE_HOT=0`` switches it off (part of the key of
rnnc's function cache).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytensor.tensor as pt
from pytensor.graph.basic import Apply, Constant
from pytensor.graph.rewriting.basic import dfs_rewriter, node_rewriter
from pytensor.link.c.op import COp
from pytensor.scalar.basic import EQ, Cast
from pytensor.tensor.basic import MakeVector
from pytensor.tensor.blas import Dot22
from pytensor.tensor.elemwise import DimShuffle, Elemwise
from pytensor.tensor.math import Dot
from pytensor.tensor.shape import Reshape, Shape, SpecifyShape
from pytensor.tensor.subtensor import Subtensor, advanced_subtensor1, get_idx_list

from rnnc.env import switched_off
from rnnc.loopinputs import _size, _transposed
from rnnc.simd import VectorElemwise

__all__ = ["RowSums", "ids_of", "in_use", "local_one_hot_products", "register", "register_jax"]

_registered = False


class RowSums(COp):
    """``out[i] = sum of rows r of g with ids[r] == i`` for ``i`` in ``[0, depth)``:
    ``one_hot(ids, depth).T @ g``, rows with an id outside the code skipped. PyTensor's
    ``inc_subtensor(zeros[ids], g)`` runs NumPy's ``add.at`` for matrices (11 ms for
    2,500 rows of 512 floats, against 1.6 ms for the product by the codes); this C
    loop adds each row once."""

    __props__ = ("depth",)

    def __init__(self, depth: int) -> None:
        self.depth = int(depth)

    def make_node(self, g: Any, ids: Any) -> Apply:
        g, ids = pt.as_tensor_variable(g), pt.as_tensor_variable(ids)
        if g.ndim != 2 or ids.ndim != 1 or not ids.dtype.startswith(("int", "uint")):
            raise TypeError("RowSums takes a matrix and a vector of integer ids")
        out = pt.tensor(dtype=g.dtype, shape=(self.depth, g.type.shape[1]))
        return Apply(self, [g, ids], [out])

    def perform(self, node: Any, inputs: Any, output_storage: Any) -> None:
        g, ids = inputs
        out = np.zeros((self.depth, g.shape[1]), dtype=g.dtype)
        valid = (ids >= 0) & (ids < self.depth)
        np.add.at(out, ids[valid], g[valid])
        output_storage[0][0] = out

    def infer_shape(self, fgraph: Any, node: Any, shapes: Any) -> Any:
        return [(self.depth, shapes[0][1])]

    def c_code_cache_version(self) -> tuple[int, ...]:
        return (1,)

    def c_code(self, node: Any, name: str, inames: Any, onames: Any, sub: Any) -> str:
        g, ids = inames
        (out,) = onames
        real = f"npy_{node.inputs[0].dtype}"
        index = f"npy_{node.inputs[1].dtype}"
        typenum = np.dtype(node.inputs[0].dtype).num
        fail = sub["fail"]
        return f"""
{{
    const npy_intp n = PyArray_DIMS({g})[0], k = PyArray_DIMS({g})[1];
    if (PyArray_DIMS({ids})[0] != n) {{
        PyErr_Format(PyExc_ValueError, "RowSums: %ld rows and %ld ids", (long)n,
                     (long)PyArray_DIMS({ids})[0]);
        {fail}
    }}
    npy_intp dims[2] = {{{self.depth}, k}};
    if (!{out} || !PyArray_IS_C_CONTIGUOUS({out}) || PyArray_DIMS({out})[0] != dims[0]
        || PyArray_DIMS({out})[1] != k) {{
        Py_XDECREF({out});
        {out} = (PyArrayObject*)PyArray_EMPTY(2, dims, {typenum}, 0);
        if (!{out}) {{ {fail} }}
    }}
    {real}* o = ({real}*)PyArray_DATA({out});
    memset(o, 0, (size_t)dims[0] * k * sizeof({real}));
    const npy_intp gr = PyArray_STRIDES({g})[0], gc = PyArray_STRIDES({g})[1];
    const npy_intp is = PyArray_STRIDES({ids})[0];
    const char* gd = (const char*)PyArray_DATA({g});
    const char* id = (const char*)PyArray_DATA({ids});
    for (npy_intp r = 0; r < n; r++) {{
        const npy_int64 i = (npy_int64)*(const {index}*)(id + r * is);
        if (i < 0 || i >= {self.depth}) continue;
        {real}* row = o + i * k;
        const char* src = gd + r * gr;
        if (gc == (npy_intp)sizeof({real})) {{
            const {real}* s = (const {real}*)src;
            #pragma GCC ivdep
            for (npy_intp j = 0; j < k; j++) row[j] += s[j];
        }} else {{
            for (npy_intp j = 0; j < k; j++) row[j] += *(const {real}*)(src + j * gc);
        }}
    }}
}}
"""


def _is_range(var: Any, depth: int) -> bool:
    """Whether ``var`` is the constant ``0, 1, ..., depth - 1`` along its last axis,
    every other axis of length one."""
    if not isinstance(var, Constant):
        return False
    data = np.asarray(var.data)
    return (
        data.shape[-1:] == (depth,)
        and data.size == depth
        and bool((data.reshape(-1) == np.arange(depth)).all())
    )


def _code(eq_node: Any) -> tuple[Any, int] | None:
    """The ids compared with ``0 .. V-1`` by an elementwise ``==`` that makes one-hot
    codes (``ids[..., None] == arange(V)``), and ``V``; else None."""
    depth = eq_node.outputs[0].type.shape[-1]
    if depth is None:
        return None
    for ids, code in (eq_node.inputs, eq_node.inputs[::-1]):
        if (
            _is_range(code, depth)
            and ids.dtype.startswith(("int", "uint"))
            and ids.type.shape[-1] == 1
        ):
            return ids[..., 0], depth
    return None


def _codes_axis(array: Any, axis: int, fgraph: Any) -> int | None:
    """The depth of the codes ``array`` holds where ``axis`` is its last; else None."""
    if axis not in (array.ndim - 1, -1):
        return None
    found = ids_of(array, fgraph)
    return None if found is None else found[1]


def _width(size: Any, fgraph: Any) -> int | None:
    """A reshape's last size as a number: a constant, or the last axis of an array of
    codes (read from its shape); else None."""
    found = _size(size)  # a constant, or an axis read with Shape_i
    if isinstance(found, tuple):
        return _codes_axis(*found, fgraph)
    if found is not None:
        return found
    node = size.owner  # an axis read from the whole shape: shape(array)[axis]
    if node is not None and isinstance(node.op, Subtensor) and len(node.op.idx_list) == 1:
        shape, (axis,) = node.inputs[0], get_idx_list(node.inputs, node.op.idx_list)
        if shape.owner is not None and isinstance(shape.owner.op, Shape):
            if isinstance(axis, Constant | int | np.integer):
                return _codes_axis(shape.owner.inputs[0], int(getattr(axis, "data", axis)), fgraph)
    return None


def _multiplied(var: Any, depth: int, fgraph: Any) -> bool:
    """Whether ``var`` (or a cast of it) is multiplied by a matrix ``depth`` high, so
    that its last axis is ``depth`` long when the function runs."""
    for client, i in fgraph.clients[var]:
        if isinstance(client.op, Dot22 | Dot) and i == 0:
            if client.inputs[1].type.shape[0] == depth:
                return True
        elif isinstance(getattr(client.op, "scalar_op", None), Cast):
            if _multiplied(client.outputs[0], depth, fgraph):
                return True
    return False


def _leading(shape: Any) -> Any:
    """A reshape's shape without its last entry, as a constant or a vector of the same
    scalars where it is one (JAX takes only shapes it can read when it traces)."""
    if isinstance(shape, Constant):
        return pt.as_tensor_variable(np.asarray(shape.data)[:-1])
    if shape.owner is not None and isinstance(shape.owner.op, MakeVector):
        return shape.owner.op(*shape.owner.inputs[:-1])
    return shape[:-1]


def _rows_whole(node: Any, depth: int, fgraph: Any) -> bool:
    """Whether the reshape ``node`` of codes of ``depth`` makes rows ``depth`` long
    (so each is one code, whole): its output's last size is ``depth``, statically, by
    its shape, or because a product by a matrix ``depth`` high takes it. The last
    proof is kept on the output's tag (``codes_depth``): the product it came from may
    have been rewritten when another use of the codes asks."""
    out, shape = node.outputs[0], node.inputs[1]
    if out.type.shape[-1] == depth or getattr(out.tag, "codes_depth", None) == depth:
        return True
    if _multiplied(out, depth, fgraph):
        out.tag.codes_depth = depth
        return True
    if isinstance(shape, Constant):
        return int(shape.data[-1]) == depth
    if shape.owner is not None and isinstance(shape.owner.op, MakeVector):
        return _width(shape.owner.inputs[-1], fgraph) == depth
    if shape.owner is not None and isinstance(shape.owner.op, Shape):
        like = shape.owner.inputs[0]
        return like.ndim == out.ndim and _codes_axis(like, like.ndim - 1, fgraph) == depth
    return False


def ids_of(var: Any, fgraph: Any) -> tuple[Any, int] | None:
    """The integer ids whose one-hot codes ``var`` holds along its last axis, and the
    codes' depth ``V``: ``var`` computed from ``ids[..., None] == arange(V)`` by casts,
    and by reshapes into rows of ``V`` (:func:`_rows_whole`), transpositions, slices
    and ``specify_shape`` of the leading axes, the same steps taken on the ids; else
    None."""
    node = var.owner
    if node is None or var.ndim < 1:
        return None
    op, source = node.op, node.inputs[0]
    scalar = op.scalar_op if isinstance(op, Elemwise | VectorElemwise) else None
    if isinstance(scalar, EQ):
        return _code(node)
    kept = (  # steps that keep the codes' axis last and whole (reshapes: checked below)
        isinstance(scalar, Cast)
        or isinstance(op, Reshape | SpecifyShape)
        or (isinstance(op, DimShuffle) and op.new_order[-1:] == (source.ndim - 1,))
        or (isinstance(op, Subtensor) and len(op.idx_list) < source.ndim)
    )
    found = ids_of(source, fgraph) if kept and source.ndim >= 1 else None
    if found is None:
        return None
    ids, depth = found
    if isinstance(scalar, Cast):
        return ids, depth
    if isinstance(op, Reshape):
        if not _rows_whole(node, depth, fgraph):
            return None
        return ids.reshape(_leading(node.inputs[1]), ndim=var.ndim - 1), depth
    if isinstance(op, SpecifyShape):
        return pt.specify_shape(ids, node.inputs[1:-1]), depth
    if isinstance(op, DimShuffle):
        return ids.dimshuffle(*op.new_order[:-1]), depth
    return ids[tuple(get_idx_list(node.inputs, op.idx_list))], depth


@node_rewriter([Dot22, Dot])
def local_one_hot_products(fgraph: Any, node: Any) -> Any:
    """A product by one-hot codes (or by their transpose) as a gather (a scatter-add);
    see the module."""
    left, right = node.inputs
    if not in_use() or left.ndim != 2 or right.ndim != 2:
        return None
    (out,) = node.outputs
    codes = _transposed(left)
    found = ids_of(left if codes is None else codes, fgraph)
    if found is None:
        return None
    ids, depth = found
    if codes is None:  # one_hot(ids) @ W: rows of W
        if right.type.shape[0] not in (None, depth):
            return None
        # a row of zeros past the last, for the ids outside the code
        padded = pt.join(0, right, pt.zeros((1, right.shape[1]), dtype=right.dtype))
        valid = (ids >= 0) & (ids < depth)
        new = advanced_subtensor1(padded, pt.where(valid, ids, depth))
    else:  # one_hot(ids).T @ dG: the rows of dG added up by id
        new = RowSums(depth)(right, ids)
    return [pt.specify_shape(new.astype(out.dtype), out.type.shape)]


def in_use() -> bool:
    """Whether the rewrite is on (``RNNC_ONE_HOT`` does not switch it off)."""
    return not switched_off("RNNC_ONE_HOT")


def register() -> None:
    """Add the rewrite to PyTensor's rewrites for C and for JAX (once), before rnnc's
    rewrites of the products around the loops (:mod:`rnnc.loopinputs`,
    :mod:`rnnc.sharedproducts`)."""
    global _registered
    if _registered:
        return
    from pytensor.compile.mode import optdb

    for name, tags in (("", ("fast_run", "cxx_only")), ("_jax", ("jax",))):
        optdb.register(
            f"rnnc_one_hot_products{name}",
            dfs_rewriter(local_one_hot_products),
            *tags,
            position=49.31,
        )
    _registered = True


def register_jax() -> None:
    """Give PyTensor's JAX backend :class:`RowSums`: ``jax.ops.segment_sum``, which
    drops the ids outside the code (:mod:`rnnc.jaxsetup` calls this before JAX
    converts a graph)."""
    import jax
    from pytensor.link.jax.dispatch import jax_funcify

    @jax_funcify.register(RowSums)
    def _row_sums(op: RowSums, **kwargs: Any) -> Any:
        def row_sums(g: Any, ids: Any) -> Any:
            return jax.ops.segment_sum(g, ids, num_segments=op.depth)

        return row_sums
