"""PyTensor's JAX backend set up for rnnc: one bug worked around, four costs removed.

:func:`setup` runs when rnnc's JAX linker turns a graph into JAX code
(:class:`rnnc.jaxlink.JAXLinker`; each step applies once per process):

* **sparse arrays** (:func:`defer_sparse`): PyTensor's JAX dispatch imports
  ``jax.experimental.sparse`` for sparse constants, which rnnc's graphs never have.
  rnnc puts a stand-in in ``sys.modules`` that imports the module when something
  first reads from it. Importing PyTensor's JAX dispatch, which every JAX process
  that converts a graph does, took 0.126-0.143 s and takes 0.092-0.103 s (six runs
  each, 2026-12-04). Most of what remains is ``scipy.sparse`` (0.086 s), which the
  dispatch imports too. (A function loaded from rnnc's cache with its executable
  imports none of it: :mod:`rnnc.jaxlink`.)
* **constants** (:func:`patch_constants`): PyTensor turns each array constant of a
  graph into a JAX array with ``jnp.array``, which compiles a small XLA program per
  constant (5-10 ms each, 80 ms for the ten of an LSTM gradient, in every compile and
  every load from rnnc's cache). ``jax.device_put`` makes the same array (same values,
  same dtype rules) without compiling anything.
* **transposed products** (:func:`patch_dot`): the gradient of a product ``x @ W``
  by ``W`` is ``x.T @ g``. XLA folds the transpose into the product, which then sums
  over the rows of both operands, a form its fast library (XNNPACK) does not take, so
  Eigen computes it: ``[1024,3200] x [3200,512]`` in 21 ms against 14 ms for the same
  product of a transposed copy. An ``optimization_barrier`` on the transposed operand
  makes XLA copy it first (2-3 ms). Measured, forward+gradient: the custom cell at
  input size 1024 81.1 -> 78.6 ms, LSTM I=1024 137.3 -> 135.2, I=128 51.9 -> 51.3.
  Since 2026-12-05 only an operand of at least :data:`COPY_TRANSPOSED_FROM` rows (or
  of rows unknown) is copied: ``x.T @ g`` with ``x`` of ``[3200, K]`` and ``g`` of
  ``[3200, N]``, one core, took with and without the copy (ms): K=128 N=512 4.44 and
  3.98; K=256 N=256, 768, 1024 4.68 and 4.66, 12.96-13.28 and 12.04-12.16,
  17.11-17.28 and 16.17-16.37; K=512 N=512 17.50-17.80 and 18.61-18.66; K=768 N=512
  26.06-27.68 and 25.07-25.16; K=1024 N=512, 768, 1024 35.9 and 39.1, 51.6-55.3 and
  54.3-54.6, 66.0-67.7 and 71.4-71.9. Forward+gradient with the threshold against
  without it (with :mod:`rnnc.stepsums`, which gives XLA more such products), calls
  alternated: the custom cell 58.9 against 60.8 ms, the LSTM 91.7 against 94.1.
* **right operands with 4 KB rows** (:func:`patch_dot`, :func:`_padded`): on an AMD
  EPYC of family 23 (Zen 2, AVX2; 2026-12-06, one core) XLA multiplied by a matrix
  whose rows are 4 KB long (1024 float32: an LSTM's fused ``[H, 4H]`` weights at
  H=256, its gate gradients ``[T*B, 4H]``) far more slowly than by one a cache line
  wider, its reads of the operand's columns falling into the same few cache sets:
  ``[32,256] @ [256,1024]`` 329 us against 220 with 1040 columns, ``h.T @ g`` of
  ``[3200,256]`` and ``[3200,1024]`` 44.9 ms against 18.2, ``x.T @ g`` with ``x`` of
  ``[3200,128]`` 22.6 against 9.1. Such a product, when it sums over at least
  :data:`PAD_FROM_ROWS` rows, multiplies by the operand with 64 bytes of zero
  columns more and drops the extra columns of its result (the same values, bitwise).
  The medium LSTM's forward+gradient took 118 instead of 164 ms (forward 37 instead
  of 47), the large one 343 instead of 366; rows of 2 KB (the custom cell's
  ``[256, 512]``) gained nothing and are left alone, as is the hoisted input product
  ``[3200,128] @ [128,1024]`` (9.1 against 8.9 ms).
* **loops that run backwards** (:func:`patch_reversed_scans`): the backward loop of a
  scan's gradient reads the forward loop's values reversed in time (``h[::-1]``, and
  values made of them elementwise). XLA copies each reversed sequence before the loop
  (3.2 MB each for the medium LSTM). For such a scan rnnc has ``lax.scan`` walk the
  sequences turned back, from the end (``reverse=True``), and turns the outputs
  around: the same values in the same order, and XLA cancels the two reversals.
  Forward + gradient, same process, calls alternated: LSTM 98.7 -> 97.0 and 107.0
  -> 105.0 ms, GRU 80.6 -> 78.4, the custom cell 67.4 -> 66.5 (2026-12-04).
* **Sum** (:func:`patch_sum`): PyTensor 3.0's JAX ``Sum`` returns its float64
  accumulator instead of the float32 its type promises; inside a scan gradient that
  breaks ``lax.scan`` (carry dtypes differ) for every parameter broadcast in the loop
  (a bias). The patch casts the result to the declared dtype.

Each applies to the whole process, to PyTensor graphs that are not rnnc's too; none
changes a result. :func:`setup` also gives the JAX backend rnnc's own
:class:`rnnc.onehot.RowSums` (``jax.ops.segment_sum``).

One more is not a patch of PyTensor: **one core** (:func:`one_core_schedule`, run by
:func:`rnnc.cache.configure_jax` before JAX compiles anything). XLA:CPU orders a
program's operations so that independent ones (a gradient's ``dx = g @ W.T`` and
``dW = x.T @ g``) run at the same time on its thread pool. On a process bound to one
core (``taskset``, ``os.sched_setaffinity``) they then share the core and evict each
other's operands from its caches: the two products of the LSTM's gradient at input
size 1024 took 136 ms each, overlapped, against 66 and 63 ms one after the other.
When the process may run on one core only, rnnc adds
``--xla_cpu_enable_concurrency_optimized_scheduler=false`` to ``XLA_FLAGS`` (unless
that flag is there already). Forward+gradient on one core, processes alternated
(2026-12-05): LSTM at input size 1024 279.7-281.1 against 292.5-295.8 ms, the custom
cell at 1024 146.5-149.7 against 147.9-152.1, LSTM and GRU at the medium size within
1-2%. On two cores the flag made the LSTM 1-2% slower and the custom cell 3-5% faster,
so rnnc leaves it alone there.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from contextvars import ContextVar
from types import ModuleType
from typing import Any

__all__ = [
    "defer_sparse",
    "one_core_schedule",
    "patch_constants",
    "patch_dot",
    "patch_reversed_scans",
    "patch_sum",
    "runs_backwards",
    "setup",
]

_SPARSE = "jax.experimental.sparse"
#: Set while PyTensor's JAX function of a scan that runs backwards is traced.
_BACKWARDS: ContextVar[bool] = ContextVar("rnnc_scan_backwards", default=False)


def setup() -> None:
    """Everything this module does, in the order it must happen."""
    defer_sparse()
    patch_constants()
    patch_dot()
    patch_reversed_scans()
    patch_sum()
    from rnnc import onehot  # rnnc's own ops in JAX

    onehot.register_jax()


#: The XLA flag :func:`one_core_schedule` sets.
ONE_CORE_FLAG = "--xla_cpu_enable_concurrency_optimized_scheduler=false"


def one_core_schedule() -> bool:
    """Have XLA:CPU run a program's operations one after another when this process
    may run on one core only (see the module); returns whether it set the flag.
    XLA reads ``XLA_FLAGS`` once, when JAX compiles its first program: a flag set
    later does nothing."""
    if not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) != 1:
        return False
    flags = os.environ.get("XLA_FLAGS", "")
    name = ONE_CORE_FLAG.split("=")[0]
    if name in flags:
        return False
    os.environ["XLA_FLAGS"] = f"{flags} {ONE_CORE_FLAG}".strip()
    return True


class _Deferred(ModuleType):
    """A module that stands in for another until something reads an attribute it
    lacks; it then imports the real one and takes over its attributes.

    (``importlib.util.LazyLoader`` does not do here: Python 3.11's ``import a.b.c``
    reads ``__spec__`` of a module it finds, which makes a lazy module load.)
    """

    def __getattr__(self, attr: str) -> Any:
        import importlib
        import sys

        name = self.__name__
        if sys.modules.get(name) is self:
            del sys.modules[name]
        module = importlib.import_module(name)
        self.__dict__.update(module.__dict__)
        return getattr(module, attr)


def defer_sparse() -> None:
    """Put a stand-in for ``jax.experimental.sparse`` (:class:`_Deferred`) in
    ``sys.modules``, unless the module is imported already."""
    import importlib.util
    import sys

    if _SPARSE in sys.modules:
        return
    spec = importlib.util.find_spec(_SPARSE)
    if spec is None:
        return
    module = _Deferred(_SPARSE)
    module.__spec__ = spec
    sys.modules[_SPARSE] = module
    parent, _, child = _SPARSE.rpartition(".")
    setattr(sys.modules[parent], child, module)


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


#: :func:`patch_dot` copies a transposed left operand with at least this many rows.
COPY_TRANSPOSED_FROM = 512


#: :func:`patch_dot` pads a right operand whose rows are this many bytes long, or a
#: multiple, by :data:`PAD_BYTES` of zero columns.
ALIASED_ROW_BYTES = 4096
PAD_BYTES = 64
#: Products summing over fewer rows of the right operand are left as they are.
PAD_FROM_ROWS = 256


def patch_dot() -> None:
    """Copy the transposed left operand of a product before multiplying, and pad a
    right operand whose rows are 4 KB long (see the module)."""
    import jax
    from pytensor.tensor.elemwise import DimShuffle
    from pytensor.tensor.math import Dot

    def around(fn: Callable, node: Any) -> Callable:
        fn = _padded(fn, node)
        source = node.inputs[0].owner
        if source is None or not isinstance(source.op, DimShuffle):
            return fn
        if tuple(source.op.new_order) != (1, 0):
            return fn
        rows = node.inputs[0].type.shape[0]
        if rows is not None and rows < COPY_TRANSPOSED_FROM:
            return fn
        return lambda x, y: fn(jax.lax.optimization_barrier(x), y)

    _wrap_dispatch(Dot, around)


def _padded(fn: Callable, node: Any) -> Callable:
    """``fn`` multiplying by ``y`` with :data:`PAD_BYTES` of zero columns more, the
    result's extra columns dropped, where ``y``'s rows are a multiple of
    :data:`ALIASED_ROW_BYTES` long and at least :data:`PAD_FROM_ROWS` of them are
    summed over (see :func:`patch_dot`)."""
    import jax.numpy as jnp
    import numpy as np

    y = node.inputs[1]
    if y.ndim != 2 or None in y.type.shape:
        return fn
    depth, width = y.type.shape
    itemsize = np.dtype(y.dtype).itemsize
    if depth < PAD_FROM_ROWS or (width * itemsize) % ALIASED_ROW_BYTES:
        return fn
    pad = PAD_BYTES // itemsize
    return lambda x, y: fn(x, jnp.pad(y, ((0, 0), (0, pad))))[..., :width]


def patch_reversed_scans() -> None:
    """Run a scan whose sequences are all reversed in time (:func:`runs_backwards`)
    as ``lax.scan(..., reverse=True)`` over the sequences turned back."""
    import jax
    import pytensor.link.jax.dispatch.scan as dispatch
    from pytensor.scan.op import Scan

    original = getattr(dispatch, "jax_scan", None)
    if original is None or getattr(original, "_rnnc", False):
        return  # another PyTensor, or patched already

    def flip(tree: Any) -> Any:
        return jax.tree_util.tree_map(lambda a: a[::-1], tree)

    def jax_scan(f: Callable, init: Any, xs: Any, *args: Any, **kwargs: Any) -> Any:
        if not _BACKWARDS.get():
            return original(f, init, xs, *args, **kwargs)
        _BACKWARDS.set(False)  # the scans inside f run as written
        carry, ys = original(f, init, flip(xs), *args, reverse=True, **kwargs)
        return carry, flip(ys)

    jax_scan._rnnc = True  # type: ignore[attr-defined]
    dispatch.jax_scan = jax_scan

    def around(fn: Callable, node: Any) -> Callable:
        if not runs_backwards(node):
            return fn

        def backwards(*args: Any) -> Any:
            token = _BACKWARDS.set(True)
            try:
                return fn(*args)
            finally:
                _BACKWARDS.reset(token)

        return backwards

    _wrap_dispatch(Scan, around)


def runs_backwards(node: Any) -> bool:
    """Whether every sequence of a scan is reversed in time (:func:`_reversed`)."""
    sequences = node.op.outer_seqs(node.inputs)
    return bool(sequences) and all(_reversed(s) for s in sequences)


def _reversed(var: Any) -> bool:
    """Whether ``var`` is ``x[::-1]`` (a negative step along the first axis) or an
    elementwise function of such values (constants and values broadcast along the
    first axis aside)."""
    from pytensor.graph.basic import Constant
    from pytensor.tensor.elemwise import Elemwise
    from pytensor.tensor.subtensor import Subtensor, get_idx_list

    owner = var.owner
    if owner is None:
        return False
    if isinstance(owner.op, Subtensor):
        first = get_idx_list(owner.inputs, owner.op.idx_list)[0]
        step = first.step if isinstance(first, slice) else None
        if isinstance(step, Constant):
            step = int(step.data)
        return isinstance(step, int) and step < 0
    if isinstance(owner.op, Elemwise):
        along = [i for i in owner.inputs if i.ndim == var.ndim and i.type.shape[0] != 1]
        return bool(along) and all(_reversed(i) for i in along)
    return False


def patch_sum() -> None:
    """Cast the result of PyTensor's JAX ``Sum`` to the dtype of its output."""
    from pytensor.tensor.math import Sum

    def around(fn: Callable, node: Any) -> Callable:
        dtype = node.outputs[0].dtype
        return lambda *args: fn(*args).astype(dtype)

    _wrap_dispatch(Sum, around)


def _wrap_dispatch(op_type: type, around: Callable[[Callable, Any], Callable]) -> None:
    """Make PyTensor's JAX function for a node of ``op_type`` go through
    ``around(fn, node)`` (once, however often this is called)."""
    from pytensor.link.jax.dispatch import jax_funcify

    original = jax_funcify.dispatch(op_type)
    if getattr(original, "_rnnc", False):
        return

    def funcify(op: Any, node: Any = None, **kwargs: Any) -> Callable:
        fn = original(op, node=node, **kwargs)
        return fn if node is None else around(fn, node)

    funcify._rnnc = True  # type: ignore[attr-defined]
    jax_funcify.register(op_type)(funcify)
