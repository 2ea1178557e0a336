"""Products by a matrix of a loop's inputs, and of its per-step outputs, computed in
the loop, step by step, where rnnc's packed kernel multiplies there (the C backend
without MKL).

The *hoist* pass (:mod:`rnnc.passes.hoist`) computes ``x_t @ W`` for every step as
one ``[T*B, I] @ [I, N]`` product before the loop, and the loop reads its rows; the
gradient then computes ``dX = dG @ W.T`` as one product after the backward loop.
That is the right shape for a BLAS, and on JAX or with MKL it is what runs. But
where the C backend links OpenBLAS, the loops' products by loop-invariant weights
run through :mod:`rnnc.packedgemm`'s kernel, weights packed once per call, which at
a batch's rows is faster than OpenBLAS at all rows at once; and a step that makes
its input product reads it from the cache instead of from a ``[T, B, N]`` array
written before the loop. Two rewrites, for the C backend after PyTensor's own:

:func:`local_input_products_in_loop`::

    Scan(sequences=[reshape(reshape(X, [T*B, I]) @ W, [T, B, N])], step(xw_t, ...))
    ->  Scan(sequences=[X], non_sequences=[W], step(x_t @ W, ...))

where ``X`` is ``[T, B, I]`` (or ``[B, T, I]`` transposed, the hoisted values
computed batch-major), the product is float32 and used by nothing else, and the
reshapes provably split its rows into ``(T, B)``: the rows' static width is the
sequence's, and the steps and batch are read from ``X``'s shape (or are constants,
where a training batch's shape is static). Between the product and the reshape
there may be blocks of columns (``Split``) and elementwise work with rows repeated
for every row (biases): the GRU's gates, each with its biases, cut from one
product. The step then makes the product once, cuts it and adds the
biases as before the loop; every block must feed one of the sequences.

:func:`local_output_products_in_loop`::

    reshape(G, [T*B, K]) @ W   (G a per-step output of a scan, K static)
    ->  reshape(G2, [T*B, N])  with G2 a new per-step output, G2_t = g_t @ W

where ``W`` is known before the loop. In a gradient this is the input's,
``dG @ W_x.T``, which the backward loop then makes step by step; the weights'
gradients ``X.T @ dG`` stay one product after it (a sum over all steps' rows).
Where the hoisted values were computed batch-major the input's gradient reaches that
product turned around and transposed, and it stays after the loop.

One core of an AMD EPYC of family 25, model 17 (Zen 4, OpenBLAS 0.3.21), the LSTM of
``benchmarks/`` at the medium size (B=32, T=100, I=128, H=256): the hoisted
``[3200, 128] @ [128, 1024]`` took 10.1 ms (83 GF/s) and adding its rows in the
step 13 us per step; in the loop, ``[32, 128] @ [128, 1024]`` took 75-76 us per step
(112 GF/s) and the step's addition 5.5 us. Whole functions are in
``docs/backends.md`` ("Products in the loops where rnnc's kernel multiplies").
``RNNC_LOOP_INPUTS=0`` switches both rewrites off (part of the key of rnnc's
function cache).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytensor.tensor as pt
from pytensor.graph.basic import Apply, Constant
from pytensor.graph.replace import graph_replace
from pytensor.graph.rewriting.basic import dfs_rewriter, node_rewriter
from pytensor.graph.traversal import ancestors
from pytensor.scan.op import Scan
from pytensor.scan.rewriting.io import scan_remove_unused
from pytensor.tensor.basic import MakeVector, ScalarFromTensor, Split
from pytensor.tensor.blas import Dot22
from pytensor.tensor.elemwise import DimShuffle, Elemwise
from pytensor.tensor.math import Dot
from pytensor.tensor.shape import Reshape, Shape_i, SpecifyShape, specify_shape
from pytensor.tensor.subtensor import Subtensor, get_idx_list

from rnnc.cscan import rebuilt_scan
from rnnc.env import switched_off

__all__ = [
    "in_use",
    "local_input_products_in_loop",
    "local_output_products_in_loop",
    "register",
]

_registered = False


def _dim(var: Any, axis: int) -> Any:
    """Axis ``axis`` of ``var``'s shape as a value that compares equal to the same
    size reached another way: the static size, else ``(array, axis)`` of the array
    the size was read from, through transpositions and ``specify_shape``."""
    static = var.type.shape[axis]
    if static is not None:
        return static
    owner = var.owner
    if owner is not None and isinstance(owner.op, SpecifyShape):
        return _dim(owner.inputs[0], axis)
    if owner is not None and isinstance(owner.op, DimShuffle):
        source = owner.op.new_order[axis]
        if source != "x":
            return _dim(owner.inputs[0], source)
    return (var, axis)


def _size(scalar: Any) -> Any:
    """A shape entry (a scalar of a reshape's shape) as :func:`_dim` gives it; None
    where it is not a constant or a read of one axis of an array's shape."""
    while scalar.owner is not None and isinstance(scalar.owner.op, ScalarFromTensor):
        scalar = scalar.owner.inputs[0]
    if isinstance(scalar, Constant):
        return int(scalar.data)
    if scalar.owner is not None and isinstance(scalar.owner.op, Shape_i):
        return _dim(scalar.owner.inputs[0], scalar.owner.op.i)
    return None


def _sizes(shape: Any) -> list[Any] | None:
    """The entries of a reshape's shape as :func:`_size` gives them: a vector made of
    scalars (shapes read at run time) or a constant one (static shapes); else None."""
    if isinstance(shape, Constant):
        return [int(v) for v in shape.data]
    if shape.owner is not None and isinstance(shape.owner.op, MakeVector):
        return [_size(s) for s in shape.owner.inputs]
    return None


def _only_use(fgraph: Any, var: Any) -> bool:
    return len(fgraph.clients[var]) == 1


def _transposed(var: Any) -> Any:
    """The matrix ``var`` is the transpose of, else None."""
    owner = var.owner
    if owner is not None and isinstance(owner.op, DimShuffle) and owner.op.new_order == (1, 0):
        return owner.inputs[0]
    return None


def _time_major(var: Any) -> Any:
    """``var`` without a transposition of its first two axes; None if it has none."""
    owner = var.owner
    if owner is not None and isinstance(owner.op, DimShuffle) and owner.op.new_order == (1, 0, 2):
        return owner.inputs[0]
    return None


@dataclasses.dataclass
class _Hoisted:
    """A scan's sequence that is ``X``'s rows times ``W``, reshaped into steps: the
    step's value is ``rows`` (a function of the product's rows, ``[T*B, N]``) at the
    step's rows, and ``x`` the ``[T, B, I]`` sequence to read instead."""

    x: Any
    w: Any
    product: Apply
    rows: Any
    invariants: list[Any]
    path: list[Any]  # the values from ``rows`` down to the product's blocks


def _rowwise(fgraph: Any, var: Any) -> tuple[Apply, list[Any], list[Any]] | None:
    """The product ``var`` is computed from, through blocks of columns (``Split``
    along the last axis) and elementwise work with rows repeated for every row (a
    bias), each value used once: ``(product node, the repeated rows, the values on
    the way)``; else None."""
    invariants, path = [], []
    while True:
        path.append(var)
        node = var.owner
        if node is None:
            return None
        if isinstance(node.op, Dot22 | Dot):
            return node, invariants, path
        if isinstance(node.op, Split):
            axis = node.inputs[1]
            if not isinstance(axis, Constant) or int(axis.data) not in (1, -1):
                return None
            var = node.inputs[0]
        elif isinstance(node.op, Elemwise) and len(node.outputs) == 1:
            on_rows = [i for i in node.inputs if i.ndim != 2 or i.type.shape[0] != 1]
            if len(on_rows) != 1 or on_rows[0].ndim != 2:
                return None
            var = on_rows[0]
            invariants += [i for i in node.inputs if i is not var]
        else:
            return None
        if not _only_use(fgraph, var):
            return None


def _hoisted_product(fgraph: Any, seq: Any) -> _Hoisted | None:
    """How the scan's sequence ``seq`` is the rows of ``X`` times ``W`` reshaped into
    steps (see the module), else None."""
    if seq.ndim != 3 or seq.type.shape[2] is None or not _only_use(fgraph, seq):
        return None
    width = seq.type.shape[2]
    split, transposed, sliced = seq, False, []
    while True:  # under specify_shape, the first steps, a transposition to time-major
        owner = split.owner
        if owner is not None and isinstance(owner.op, SpecifyShape):
            split = owner.inputs[0]
        elif owner is not None and isinstance(owner.op, Subtensor) and not transposed:
            index = get_idx_list(owner.inputs, owner.op.idx_list)  # only [:stop]
            if len(index) != 1 or not isinstance(index[0], slice):
                return None
            if index[0].start is not None or index[0].step is not None:
                return None
            sliced.append(owner)
            split = owner.inputs[0]
        elif not transposed and _time_major(split) is not None:
            split, transposed = _time_major(split), True
        else:
            break
        if not _only_use(fgraph, split):
            return None
    if split.owner is None or not isinstance(split.owner.op, Reshape) or split.ndim != 3:
        return None
    rows, shape = split.owner.inputs
    sizes = _sizes(shape)
    if sizes is None:
        return None
    if rows.ndim != 2 or rows.type.shape[1] != width or not _only_use(fgraph, rows):
        return None
    found = _rowwise(fgraph, rows)
    if found is None:
        return None
    product, invariants, path = found
    flat, w = product.inputs
    if flat.owner is None or not isinstance(flat.owner.op, Reshape) or flat.ndim != 2:
        return None
    x = flat.owner.inputs[0]
    if x.ndim != 3 or w.ndim != 2 or x.dtype != "float32" or w.dtype != "float32":
        return None
    # [T, B, -1] from [r, width] rows with width the sequence's: r is T*B, so the
    # product's rows are X's first two axes merged
    lead = sizes[:2]
    if None in lead or lead != [_dim(x, 0), _dim(x, 1)]:
        return None
    x = x.dimshuffle(1, 0, 2) if transposed else x
    for owner in reversed(sliced):  # the same first steps of X
        x = owner.op.make_node(x, *owner.inputs[1:]).outputs[0]
    return _Hoisted(x, w, product, rows, invariants, path)


def _whole(found: dict[int, Any], slots: list[int]) -> bool:
    """Whether the sequences ``slots`` cut from one product take all of it: every
    block of a ``Split`` on their way is on the way of one of them (else the product
    would be made before the loop for the others all the same)."""
    on_the_way = {var for k in slots for var in found[k].path}
    return all(
        out in on_the_way
        for var in on_the_way
        if var.owner is not None and isinstance(var.owner.op, Split)
        for out in var.owner.outputs
    )


def _rebuilt(outputs: list[Any], replace: dict[Any, Any], path: set[Any]) -> list[Any]:
    """``outputs`` computed again with the values ``replace`` maps, through the nodes
    of the values in ``path``, each output's type found again: a step's ``[B, N]``
    product in place of the ``[T*B, N]`` one, whose static shapes differ where the
    batch's are static (a training step's)."""
    memo = dict(replace)

    def rebuilt(var: Any) -> Any:
        if var not in memo:
            node = var.owner
            if var not in path or node is None:
                memo[var] = var
            else:
                inputs = [rebuilt(i) for i in node.inputs]
                memo[var] = node.op.make_node(*inputs).outputs[node.outputs.index(var)]
        return memo[var]

    return [rebuilt(var) for var in outputs]


@node_rewriter([Scan])
def local_input_products_in_loop(fgraph: Any, node: Apply) -> Any:
    """Compute each hoisted input product of a scan's sequences in its step (see the
    module); sequences cut from one product share its product in the step."""
    if not in_use():
        return None
    op = node.op
    if op.info.as_while:
        return None
    outer_seqs = op.outer_seqs(node.inputs)
    inner_seqs = op.inner_seqs(op.inner_inputs)
    found = {k: _hoisted_product(fgraph, s) for k, s in enumerate(outer_seqs)}
    groups: dict[Apply, list[int]] = {}
    for k, h in found.items():
        if h is not None:
            groups.setdefault(h.product, []).append(k)
    groups = {p: slots for p, slots in groups.items() if _whole(found, slots)}
    if not groups:
        return None
    outer = list(node.inputs)
    stand_ins, replaced, extra, extra_outer = {}, {}, [], []
    for product, slots in groups.items():
        first = found[slots[0]]
        x_t = pt.tensor(dtype=first.x.dtype, shape=first.x.type.shape[1:], name="x_t")
        w_in = first.w.type()
        step = {product.outputs[0]: pt.dot(x_t, w_in)}
        for k in slots:
            for inv in found[k].invariants:
                if inv not in step:
                    step[inv] = inv.type()
                    extra.append(step[inv])
                    extra_outer.append(inv)
        on_the_way = {var for k in slots for var in found[k].path}
        values = _rebuilt([found[k].rows for k in slots], step, on_the_way)
        for k, value in zip(slots, values, strict=True):
            old = inner_seqs[k]
            if value.type != old.type:
                value = specify_shape(value, old.type.shape)
            # the group's other sequences read X too, unused (scan_remove_unused drops them)
            stand_ins[old] = x_t if k == slots[0] else x_t.type()
            replaced[old] = value
            outer[1 + k] = found[k].x
        extra.append(w_in)
        extra_outer.append(first.w)
    outputs = graph_replace(list(op.inner_outputs), replaced, strict=False)
    inputs = [stand_ins.get(var, var) for var in op.inner_inputs] + extra
    info = dataclasses.replace(op.info, n_non_seqs=op.info.n_non_seqs + len(extra))
    new_op = rebuilt_scan(op, inputs, outputs, info)
    return new_op(*outer, *extra_outer, return_list=True)


def _row_products(fgraph: Any, out: Any) -> list[tuple[Apply, Any]]:
    """The products ``reshape(out, [T*B, N]) @ W`` of a scan's per-step output
    ``out`` (``[T, B, N]``, N static) by a matrix ``W`` of static height N, as
    ``(product node, W)``."""
    width = out.type.shape[2] if out.ndim == 3 else None
    if width is None or out.dtype != "float32":
        return []
    found = []
    for client, _ in fgraph.clients[out]:
        if not isinstance(client.op, Reshape) or client.outputs[0].ndim != 2:
            continue
        sizes = _sizes(client.inputs[1])
        if sizes is None or sizes[1] != width:  # so the rows are T*B
            continue
        flat = client.outputs[0]
        for user, i in fgraph.clients[flat]:
            if i != 0 or not isinstance(user.op, Dot22 | Dot):  # a sum of rows, say
                continue
            w = user.inputs[1]
            if w.ndim == 2 and w.dtype == "float32" and w.type.shape[0] == width:
                found.append((user, w))
    return found


@node_rewriter([Scan])
def local_output_products_in_loop(fgraph: Any, node: Apply) -> Any:
    """Compute each product of a per-step output of a scan by a matrix after the
    loop, ``reshape(G, [T*B, N]) @ W``, in its step instead (see the module)."""
    if not in_use():
        return None
    op = node.op
    info = op.info
    if info.as_while:
        return None
    inner_outs = op.inner_nitsot_outs(op.inner_outputs)
    outer_outs = op.outer_nitsot_outs(node.outputs)
    picked = [
        (inner, product, w)
        for inner, outer in zip(inner_outs, outer_outs, strict=True)
        for product, w in _row_products(fgraph, outer)
        if not set(node.outputs).intersection(ancestors([w]))  # W known before the loop
    ]
    if not picked:
        return None
    weights = [w.type() for _, _, w in picked]
    new_inner = [pt.dot(inner, w_in) for (inner, _, _), w_in in zip(picked, weights, strict=True)]
    taps = sum(len(s) for s in info.mit_mot_out_slices)
    at_inner = info.n_mit_sot + taps + info.n_sit_sot + info.n_nit_sot
    outputs = list(op.inner_outputs)
    outputs[at_inner:at_inner] = new_inner
    inputs = list(op.inner_inputs) + weights
    new_info = dataclasses.replace(
        info, n_nit_sot=info.n_nit_sot + len(picked), n_non_seqs=info.n_non_seqs + len(picked)
    )
    new_op = rebuilt_scan(op, inputs, outputs, new_info)
    outer = list(node.inputs)
    at_outer = 1 + info.n_seqs + info.n_mit_mot + info.n_mit_sot + info.n_sit_sot
    at_outer += info.n_untraced_sit_sot + info.n_nit_sot
    outer[at_outer:at_outer] = [node.inputs[0]] * len(picked)  # their lengths: the steps
    outer += [w for _, _, w in picked]
    new_outs = new_op(*outer, return_list=True)
    at = info.n_mit_mot + info.n_mit_sot + info.n_sit_sot + info.n_nit_sot
    made = new_outs[at : at + len(picked)]
    kept = new_outs[:at] + new_outs[at + len(picked) :]
    replaced = dict(zip(node.outputs, kept, strict=True))
    for (_, product, _), steps in zip(picked, made, strict=True):
        old = product.outputs[0]
        rows = steps.reshape((steps.shape[0] * steps.shape[1], steps.shape[2]))
        replaced[old] = specify_shape(rows, old.type.shape)
    return replaced


def in_use() -> bool:
    """Whether the rewrites are on: rnnc's packed kernel multiplies in the loops
    (:func:`rnnc.packedgemm.in_use`) and ``RNNC_LOOP_INPUTS`` does not switch it off."""
    from rnnc import packedgemm

    return not switched_off("RNNC_LOOP_INPUTS") and packedgemm.in_use()


def register() -> None:
    """Add the rewrites to PyTensor's C rewrites (once): after rnnc's other scan
    rewrites for C (49.3), before the packed products (49.35) that then take the
    products they put in the loops."""
    global _registered
    if _registered:
        return
    from pytensor.compile.mode import optdb

    optdb.register(
        "rnnc_input_products_in_loop",
        dfs_rewriter(local_input_products_in_loop, local_output_products_in_loop),
        "fast_run",
        "cxx_only",
        position=49.32,
    )
    optdb.register(
        "rnnc_input_products_in_loop_cleanup",
        dfs_rewriter(scan_remove_unused),  # the sequences a shared product left unused
        "fast_run",
        "cxx_only",
        position=49.33,
    )
    _registered = True
