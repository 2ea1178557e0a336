"""Elementwise work as vector loops in PyTensor's C backend.

PyTensor's C code for an elementwise operation (after fusion, one ``Composite`` per
group: an LSTM step's gates, for instance) walks its arrays with strides known only at
run time and calls the C library's scalar ``expf`` once per element, so g++ vectorises
none of it. In an LSTM step (B=32, H=256) that operation took 188 us of the step's
408, nearly as much as the product's 220.

:class:`VectorElemwise` computes the same scalar code in one loop over rows of
elements, which g++ vectorises: ``exp`` and ``log`` are declared ``simd``, so that g++
calls glibc's vector versions from ``libmvec`` (``_ZGVeN16v_expf`` on AVX-512: 16
values per call; also ``pow``, and ``log1p``, ``expm1``, ``tanh`` from glibc 2.35). The loop is a function of its own, because in PyTensor's generated
function g++ takes it for a cold path and does not vectorise it; the function asks for
512-bit vectors, which g++ does not prefer for Intel's AVX-512 CPUs (there it called
the 8-wide ``_ZGVdN8v_expf``; with 16-wide calls the LSTM step's gates took 37.5
instead of 46 us on a Xeon of family 6, model 207). Measured: the LSTM
step's gates 38 instead of 272 us; results differ within ``libmvec``'s 4 ulp (scalar
``expf``: 1).

:func:`register` adds the rewrite :func:`local_vector_elemwise` to PyTensor's
``fast_run`` rewrites for C (tag ``cxx_only``: not for JAX or Numba), after elementwise
fusion and before the in-place rewrites. It replaces an ``Elemwise`` whose outputs
share one float dtype and whose inputs (numbers of any dtype) have the outputs' shape,
are one row repeated (a bias), one value per row (a mask of examples) or one value,
so that a loop over rows of elements is exact. It is on where g++
and glibc's ``libmvec`` are (:func:`available`); ``RNNC_SIMD=0`` switches it off.
Registered when rnnc sets up the C backend, it applies to every C function the process
compiles from then on. :func:`local_joined_outputs` has the loop write outputs that are
only joined along the last axis straight into the joined array (an LSTM's backward
step joins its four gate gradients), instead of each into its own.
See docs/backends.md for the figures.
"""

from __future__ import annotations

import functools
import os
import platform
import subprocess
from typing import Any

import numpy as np
from pytensor.graph.basic import Apply, Constant
from pytensor.graph.rewriting.basic import dfs_rewriter, node_rewriter
from pytensor.link.c.op import COp
from pytensor.scalar import get_scalar_type
from pytensor.scalar.basic import Composite
from pytensor.scalar.math import Softplus
from pytensor.tensor.basic import Join
from pytensor.tensor.elemwise import Elemwise

from rnnc.env import switched_off
from rnnc.ops import BranchFreeSoftplus

__all__ = [
    "VectorElemwise",
    "available",
    "branch_free",
    "in_use",
    "local_joined_outputs",
    "local_vector_elemwise",
    "register",
]

#: The C library's functions that glibc's libmvec has vector versions of, by the glibc
#: release that added them (float and double each).
VECTOR_FUNCTIONS = {(2, 22): ["exp", "log", "pow"], (2, 35): ["log1p", "expm1", "tanh"]}


def _glibc() -> tuple[int, ...]:
    try:
        name, version = os.confstr("CS_GNU_LIBC_VERSION").split()
        return tuple(int(p) for p in version.split(".")[:2]) if name == "glibc" else ()
    except (AttributeError, ValueError, OSError):
        return ()


@functools.cache
def declarations() -> str:
    """The C library's functions declared ``simd`` (those this glibc has in libmvec),
    so that g++ calls their vector versions in a vectorised loop."""
    lines = []
    for since, names in VECTOR_FUNCTIONS.items():
        if _glibc() >= since:
            for name in names:
                args = {"pow": 2}.get(name, 1)
                for ctype, suffix in (("float", "f"), ("double", "")):
                    params = ", ".join([ctype] * args)
                    lines.append(
                        f'extern "C" {ctype} {name}{suffix}({params}) __THROW '
                        '__attribute__((simd("notinbranch")));'
                    )
    return "\n".join(lines) + "\n"


#: The dtypes an input may have (a mask may be bool or int8; outputs are float).
NUMERIC = {"bool", "int8", "int16", "int32", "int64", "uint8", "float32", "float64"}

#: What the scalar code is given to jump to on an error: never there in code accepted.
NO_FAIL = "RNNC_SCALAR_CODE_CANNOT_FAIL"

#: The attributes of a vector loop's function: not inlined, and 512-bit vectors where
#: the CPU has them (g++ 8 and later; g++ prefers 256 bits for Intel's AVX-512 CPUs).
VECTOR_LOOP = """
#ifndef RNNC_VECTOR_LOOP
#if defined(__x86_64__) && defined(__GNUC__) && __GNUC__ >= 8
#define RNNC_VECTOR_LOOP __attribute__((noinline, target("prefer-vector-width=512")))
#else
#define RNNC_VECTOR_LOOP __attribute__((noinline))
#endif
#endif
"""

#: Whether an array is rows of contiguous elements, one step apart (in elements, put
#: in ``*step``): its last axis contiguous and its other axes one axis with one stride.
ROWS = """
static int rnnc_rows(PyArrayObject* a, npy_intp* step) {
    const int nd = PyArray_NDIM(a);
    const npy_intp* dims = PyArray_DIMS(a);
    const npy_intp* strides = PyArray_STRIDES(a);
    const npy_intp item = PyArray_ITEMSIZE(a);
    if (nd == 0 || PyArray_SIZE(a) == 0) { *step = 0; return 1; }
    if (dims[nd - 1] > 1 && strides[nd - 1] != item) return 0;
    npy_intp outer = (nd > 1 && dims[nd - 2] > 1) ? strides[nd - 2] : dims[nd - 1] * item;
    npy_intp expected = outer;
    for (int k = nd - 3; k >= 0; k--) {
        expected *= dims[k + 1];
        if (dims[k] > 1 && strides[k] != expected) return 0;
    }
    if (outer % item) return 0;
    *step = outer / item;
    return 1;
}
"""


@functools.cache
def available() -> bool:
    """Whether vector loops can be built here: g++ on x86-64, and glibc's libmvec where
    the linker finds it (``libmvec.so`` comes with glibc's development files, which
    g++ needs anyway)."""
    import pytensor

    cxx = str(pytensor.config.cxx)
    if platform.machine() not in ("x86_64", "AMD64") or "g++" not in cxx or not _glibc():
        return False
    try:
        out = subprocess.run(
            [cxx, "-print-file-name=libmvec.so"], capture_output=True, text=True, timeout=60
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return False
    return os.path.isabs(out) and os.path.exists(out)


class VectorElemwise(COp):
    """``Elemwise(scalar_op)`` with outputs of one float dtype, computed by one
    vectorisable loop over rows of elements; each input is laid over the rows in one of
    the ways of :func:`_kinds` (the outputs' shape, a repeated row, one value per row,
    one value)."""

    __props__ = ("scalar_op", "joined")

    def __init__(self, scalar_op: Any, joined: tuple[int, ...] = ()) -> None:
        self.scalar_op = branch_free(scalar_op)
        self.joined = tuple(joined)
        self.elemwise = Elemwise(scalar_op)

    def make_node(self, *inputs: Any) -> Apply:
        node = self.elemwise.make_node(*inputs)
        types = [o.type for o in node.outputs]
        if self.joined:
            rest = [t for k, t in enumerate(types) if k not in self.joined]
            *lead, last = types[0].shape
            wide = None if last is None else last * len(self.joined)
            types = [types[0].clone(shape=(*lead, wide)), *rest]
        return Apply(self, node.inputs, [t() for t in types])

    def perform(self, node: Any, inputs: Any, output_storage: Any) -> None:
        elemwise = self.elemwise.make_node(*node.inputs)
        storage = [[None] for _ in elemwise.outputs]
        self.elemwise.perform(elemwise, inputs, storage)
        values = [s[0] for s in storage]
        if self.joined:
            rest = [v for k, v in enumerate(values) if k not in self.joined]
            values = [np.concatenate([values[k] for k in self.joined], axis=-1), *rest]
        for out, value in zip(output_storage, values, strict=True):
            out[0] = value

    def infer_shape(self, fgraph: Any, node: Any, shapes: Any) -> Any:
        full = shapes[_kinds(node).index(FULL)]
        if not self.joined:
            return [full] * len(node.outputs)
        wide = (*full[:-1], full[-1] * len(self.joined))
        return [wide] + [full] * (len(node.outputs) - 1)

    def _order(self, node: Any) -> list[int]:
        """The scalar operation's outputs in the order of the node's: the joined ones
        first (one output), then the others."""
        n = len(self.elemwise.make_node(*node.inputs).outputs)
        return [*self.joined, *(k for k in range(n) if k not in self.joined)]

    def _scalar_node(self, node: Any) -> Apply:
        dtype = node.outputs[0].type.dtype
        return Apply(
            self.scalar_op,
            [get_scalar_type(dtype=i.type.dtype).make_variable() for i in node.inputs],
            [get_scalar_type(dtype=dtype).make_variable() for _ in self._order(node)],
        )

    def c_headers(self, **kwargs: Any) -> list[str]:
        return ["<math.h>", *self.scalar_op.c_headers(**kwargs)]

    def c_header_dirs(self, **kwargs: Any) -> list[str]:
        return self.scalar_op.c_header_dirs(**kwargs)

    def c_libraries(self, **kwargs: Any) -> list[str]:
        return ["mvec", "m", *self.scalar_op.c_libraries(**kwargs)]

    def c_support_code(self, **kwargs: Any) -> str:
        return declarations() + VECTOR_LOOP + ROWS + self.scalar_op.c_support_code(**kwargs)

    def _body(self, node: Any, name: str) -> tuple[list[str], list[str], str]:
        """The scalar operation's C code for one element: its input and output names,
        and the code."""
        elem_in = [f"{name}_in{k}" for k in range(len(node.inputs))]
        elem_out = [f"{name}_out{k}" for k in range(len(self._order(node)))]
        body = self.scalar_op.c_code(
            self._scalar_node(node), f"{name}_scalar_", elem_in, elem_out, {"fail": NO_FAIL}
        )
        return elem_in, elem_out, body

    def c_support_code_apply(self, node: Any, name: str) -> str:
        """The scalar operation's support code, and the loop over rows of elements as
        a function of its own: in PyTensor's generated function g++ would take the loop
        for a cold path (its many error branches) and not vectorise it."""
        ctype = f"npy_{node.outputs[0].type.dtype}"
        itypes = [f"npy_{v.type.dtype}" for v in node.inputs]
        kinds = _kinds(node)
        nin, nout = len(node.inputs), len(node.outputs)
        elem_in, elem_out, body = self._body(node, name)
        params = ["npy_intp rows", "npy_intp cols"]
        params += [f"const {t}* p{k}, npy_intp rs{k}" for k, t in enumerate(itypes)]
        params += [f"{ctype}* q{k}" for k in range(nout)]
        per_row = [k for k in range(nin) if kinds[k] in (COLUMN, SCALAR)]
        # where the scalar operation's output k goes in row r: its own output, or its
        # block of columns in the joined one (output 0)
        n = len(self.joined)
        rest = self._order(node)[n:]
        rows_of = {k: f"q0 + r * {n} * cols + {j} * cols" for j, k in enumerate(self.joined)}
        rows_of |= {k: f"q{j} + r * cols" for j, k in enumerate(rest, 1 if n else 0)}
        code = [
            f"RNNC_VECTOR_LOOP static void {name}_loop({', '.join(params)}) {{",
            "for (npy_intp r = 0; r < rows; r++) {",
            *(f"const {itypes[k]}* a{k} = p{k} + r * rs{k};" for k in range(nin)),
            *(f"const {itypes[k]} v{k} = a{k}[0];" for k in per_row),
            *(f"{ctype}* b{k} = {rows_of[k]};" for k in range(len(elem_out))),
            "#pragma GCC ivdep",
            "for (npy_intp i = 0; i < cols; i++) {",
            *(
                f"const {itypes[k]} {e} = {f'v{k}' if k in per_row else f'a{k}[i]'};"
                for k, e in enumerate(elem_in)
            ),
            *(f"{ctype} {e};" for e in elem_out),
            f"{{ {body} }}",
            *(f"b{k}[i] = {e};" for k, e in enumerate(elem_out)),
            "}",
            "}",
            "}",
        ]
        scalar = self.scalar_op.c_support_code_apply(self._scalar_node(node), f"{name}_scalar_")
        return scalar + "\n" + "\n".join(code)

    def c_code_cache_version_apply(self, node: Any) -> tuple:
        inner = self.scalar_op.c_code_cache_version_apply(self._scalar_node(node))
        return (9, declarations(), inner) if inner else ()

    def c_code(self, node: Any, name: str, inames: Any, onames: Any, sub: Any) -> str:
        dtype = node.outputs[0].type.dtype
        typenum = np.dtype(dtype).num
        ndim = node.outputs[0].type.ndim
        nin = len(inames)
        free = f"for (int j = 0; j < {nin}; j++) Py_XDECREF({name}_a[j]);"
        fail = f"{{ {free} {sub['fail']} }}"
        kinds = _kinds(node)
        first = kinds.index(FULL)  # an input with the outputs' shape
        code = [
            f"PyArrayObject* {name}_a[{nin}] = {{0}};",
            f"npy_intp {name}_rs[{nin}];  // the step between rows, in elements",
            "{",
        ]
        # every array as rows of its last axis (one step between rows, elements next
        # to each other in a row); an input that is not is copied; one repeated for
        # every row (a bias, a single value) has the step 0
        for k, iname in enumerate(inames):
            code.append(
                f"{name}_a[{k}] = {iname}; Py_INCREF({iname});"
                f"if (!rnnc_rows({name}_a[{k}], &{name}_rs[{k}])) {{"
                f"  Py_DECREF({name}_a[{k}]);"
                f"  {name}_a[{k}] = (PyArrayObject*)PyArray_NewCopy({iname}, NPY_CORDER);"
                f"  if (!{name}_a[{k}]) {fail}"
                f"  rnnc_rows({name}_a[{k}], &{name}_rs[{k}]); }}"
            )
        dims = f"PyArray_DIMS({name}_a[{first}])"
        for k in range(nin):
            mine = f"PyArray_DIMS({name}_a[{k}])"
            if kinds[k] == FULL:
                if k == first:
                    continue
                same = f"PyArray_SAMESHAPE({name}_a[{k}], {name}_a[{first}])"
            elif kinds[k] == ROW:
                same = f"{mine}[{ndim - 1}] == {dims}[{ndim - 1}]"
            elif kinds[k] == COLUMN:
                same = " && ".join(f"{mine}[{d}] == {dims}[{d}]" for d in range(ndim - 1))
                same = f"{mine}[{ndim - 1}] == 1" + (f" && {same}" if same else "")
            else:
                same = f"PyArray_SIZE({name}_a[{k}]) == 1"
            if kinds[k] in (ROW, SCALAR):
                code.append(f"{name}_rs[{k}] = 0;")
            code.append(
                f"if (!({same})) {{"
                f'PyErr_SetString(PyExc_ValueError, "VectorElemwise: input shapes differ");'
                f"{free} {sub['fail']} }}"
            )
        code.append(f"npy_intp* {name}_dims = PyArray_DIMS({name}_a[{first}]);")
        code.append(f"npy_intp {name}_wide[{ndim}];  // the joined output's shape")
        code.append(f"memcpy({name}_wide, {name}_dims, sizeof({name}_wide));")
        code.append(f"{name}_wide[{ndim - 1}] *= {max(len(self.joined), 1)};")
        for j, oname in enumerate(onames):
            dims = f"{name}_wide" if j == 0 and self.joined else f"{name}_dims"
            code.append(
                f"if (!{oname} || !PyArray_IS_C_CONTIGUOUS({oname}) "
                f"|| PyArray_NDIM({oname}) != {ndim} || PyArray_TYPE({oname}) != {typenum} "
                f"|| !PyArray_CompareLists(PyArray_DIMS({oname}), {dims}, {ndim})) {{"
                f"  Py_XDECREF({oname});"
                f"  {oname} = (PyArrayObject*)PyArray_EMPTY({ndim}, {dims}, {typenum}, 0);"
                f"  if (!{oname}) {fail} }}"
            )
        cols = f"{name}_dims[{ndim - 1}]"
        args = [f"{cols} ? PyArray_SIZE({name}_a[{first}]) / {cols} : 0", cols]
        args += [
            f"(npy_{v.type.dtype}*)PyArray_DATA({name}_a[{k}]), {name}_rs[{k}]"
            for k, v in enumerate(node.inputs)
        ]
        args += [f"(npy_{dtype}*)PyArray_DATA({o})" for o in onames]
        code += [f"{name}_loop({', '.join(args)});", free, "}"]
        return "\n".join(code)


#: How an input is laid over the outputs' rows of elements: the outputs' shape
#: (``FULL``), one row repeated for every row (``ROW``: a bias), one value per row
#: (``COLUMN``: a mask of examples), one value for all (``SCALAR``).
FULL, ROW, COLUMN, SCALAR = "full", "row", "column", "scalar"


def branch_free(scalar_op: Any) -> Any:
    """``scalar_op`` with every PyTensor ``softplus`` in it (a ``Composite``'s inner
    graph included) replaced by :class:`rnnc.ops.BranchFreeSoftplus`, whose C code has
    no branches to keep g++ from vectorising the loop on a CPU without AVX-512."""
    if type(scalar_op) is Softplus:
        return BranchFreeSoftplus(scalar_op.output_types_preference, name=scalar_op.name)
    if not isinstance(scalar_op, Composite):
        return scalar_op
    graph = scalar_op.fgraph
    if all(branch_free(node.op) is node.op for node in graph.apply_nodes):
        return scalar_op
    inputs = [i.clone() for i in graph.inputs]
    new = dict(zip(graph.inputs, inputs, strict=True))
    for node in graph.toposort():
        outs = branch_free(node.op).make_node(*(new.get(i, i) for i in node.inputs)).outputs
        new.update(zip(node.outputs, outs, strict=True))
    return Composite(inputs, [new.get(o, o) for o in graph.outputs])


def _kinds(node: Any) -> list[str] | None:
    """The kind of every input of ``node`` (see :data:`FULL`), or None if one is
    broadcast otherwise, or if none has the outputs' shape."""
    out = node.outputs[0].type.broadcastable
    kinds = []
    for v in node.inputs:
        pattern = v.type.broadcastable
        outer, last = pattern[:-1], pattern[-1]
        if pattern == out:
            kinds.append(FULL)
        elif all(pattern):
            kinds.append(SCALAR)
        elif last == out[-1] and all(outer):
            kinds.append(ROW)
        elif last and outer == out[:-1]:
            kinds.append(COLUMN)
        else:
            return None
    return kinds if FULL in kinds else None


def _replacement(node: Any) -> VectorElemwise | None:
    """The :class:`VectorElemwise` for an ``Elemwise`` whose outputs share one float
    dtype and shape, whose inputs are numbers laid over them in one of the ways of
    :func:`_kinds`, with C code for its scalar operation; None for any other node."""
    if type(node.op) is not Elemwise or not node.inputs:
        return None
    out = node.outputs[0].type
    if out.dtype not in ("float32", "float64") or out.ndim == 0:
        return None
    if any(
        v.type.dtype != out.dtype or v.type.broadcastable != out.broadcastable for v in node.outputs
    ):
        return None
    if any(getattr(v.type, "dtype", None) not in NUMERIC for v in node.inputs):
        return None
    if _kinds(node) is None:
        return None
    op = VectorElemwise(node.op.scalar_op)
    try:  # a scalar operation without C code, or whose code can fail, stays with PyTensor
        if not op.c_code_cache_version_apply(node) or NO_FAIL in op._body(node, "probe")[2]:
            return None
    except Exception:  # whatever it is, PyTensor's own code does the work
        return None
    return op


@node_rewriter([Elemwise])
def local_vector_elemwise(fgraph: Any, node: Any) -> Any:
    """Replace an ``Elemwise`` that :func:`_replacement` accepts by
    :class:`VectorElemwise`."""
    op = _replacement(node) if in_use() else None
    return None if op is None else op(*node.inputs, return_list=True)


@node_rewriter([Join])
def local_joined_outputs(fgraph: Any, node: Any) -> Any:
    """``join(-1, v[i], v[j], ...)`` of outputs of one :class:`VectorElemwise` ``v``
    (or of an ``Elemwise`` that becomes one), used by the join alone: ``v`` writes them
    into the joined array's blocks of columns instead (an LSTM's backward step joins
    its four gate gradients so)."""
    axis, *parts = node.inputs
    source = parts[0].owner
    if source is None or not in_use():
        return None
    if isinstance(source.op, VectorElemwise):
        if source.op.joined:
            return None
    elif _replacement(source) is None:  # an Elemwise this module does not take
        return None
    if not isinstance(axis, Constant) or int(axis.data) not in (-1, parts[0].ndim - 1):
        return None
    if any(p.owner is not source or len(fgraph.clients[p]) != 1 for p in parts):
        return None
    joined = tuple(source.outputs.index(p) for p in parts)
    if len(set(joined)) != len(joined) or len(joined) < 2:
        return None
    outputs = VectorElemwise(source.op.scalar_op, joined)(*source.inputs, return_list=True)
    rest = [k for k in range(len(source.outputs)) if k not in joined]
    replaced = {node.outputs[0]: node.outputs[0].type.filter_variable(outputs[0])}
    replaced |= {source.outputs[k]: out for k, out in zip(rest, outputs[1:], strict=True)}
    return replaced


def in_use() -> bool:
    """Whether the vector loops are on: they can be built here (:func:`available`)
    and ``RNNC_SIMD`` does not switch them off."""
    return not switched_off("RNNC_SIMD") and available()


_registered = False


def register() -> bool:
    """Add :func:`local_vector_elemwise` to PyTensor's C rewrites (once, where the loops
    can be built); each rewrites only while in use (asked at each compilation, so that
    ``RNNC_SIMD=0`` at the first set-up does not switch them off for the process).
    Returns whether they are in use now (:func:`in_use`)."""
    global _registered
    if not available():
        return False
    if not _registered:
        from pytensor.compile.mode import optdb

        optdb.register(
            "rnnc_vector_elemwise",
            dfs_rewriter(local_vector_elemwise, local_joined_outputs),
            "fast_run",
            "cxx_only",
            "rnnc_simd",
            position=49.4,  # after elementwise fusion (49), before in-place (49.5)
        )
        _registered = True
    return in_use()
