"""A rewrite of PyTensor's scans: outputs of a loop that another output joins are
read from the joined one.

The backward loop of a cell with fused gates computes the gradient of each gate's
pre-activation, ``g_i, g_f, g_g, g_o`` (``[B, H]`` each), and joins them into
``g = [g_i | g_f | g_g | g_o]`` (``[B, 4H]``) for the product ``g @ W_h.T``. Where
PyTensor's ``scan_pushout_add`` moves the weight gradient ``sum_t h_t.T @ g_t`` out
of the loop (the JAX and Numba modes), the loop returns ``g`` for every step, and
also each ``g_k`` for every step, which the gradient of the input product joins
again after the loop. The rewrite::

    Scan(outputs=[g_i, g_f, g_g, g_o, join(g_i, g_f, g_g, g_o)])
    ->  Scan(outputs=[join(g_i, g_f, g_g, g_o)]),  g_k = G[:, :, k*H:(k+1)*H]

so the loop writes each value once. After the loop, :func:`local_join_of_slices`
turns the gradient's join of those slices (each reversed into time order and
reshaped to ``[T*B, H]``; PyTensor joins plain consecutive slices itself) into the
array they were cut from.

Measured on the JAX backend, one core (2026-12-05): the LSTM's gradient over 1000
steps needs 708 instead of 833 MiB (XLA's memory report); forward+gradient at the
medium size of ``benchmarks/`` 101.0 against 105.3 ms, at input size 1024 286.6
against 295.1-296.7 ms (calls alternated with an identical copy). The first rewrite
alone changed no time (XLA then joined the four slices after the loop, 2.4 ms).
"""

from __future__ import annotations

import numpy as np
import pytensor.tensor as pt
from pytensor.graph.basic import Apply, Constant, equal_computations
from pytensor.graph.rewriting.basic import dfs_rewriter, node_rewriter
from pytensor.scan.op import Scan
from pytensor.tensor.basic import Join
from pytensor.tensor.shape import Reshape, SpecifyShape
from pytensor.tensor.subtensor import Subtensor, get_idx_list

__all__ = ["local_join_of_slices", "local_outputs_of_a_joined_output", "register"]

_registered = False


def _pieces(var) -> list[tuple[object, int, int, int]] | None:
    """``(part, axis, start, stop)`` for each part of ``var = join(axis, *parts)`` with
    a constant axis and parts of static widths on it; None otherwise."""
    owner = var.owner
    if owner is None or not isinstance(owner.op, Join):
        return None
    axis, *parts = owner.inputs
    if not isinstance(axis, Constant):
        return None
    axis = int(axis.data) % var.ndim
    out, start = [], 0
    for part in parts:
        width = part.type.shape[axis]
        if width is None:
            return None
        out.append((part, axis, start, start + width))
        start += width
    return out


@node_rewriter([Scan])
def local_outputs_of_a_joined_output(fgraph, node: Apply):
    """Replace the outer values of a scan's per-step outputs that another per-step
    output joins by slices of that one (see the module); PyTensor's
    ``scan_remove_unused`` then drops them from the loop."""
    op = node.op
    if op.info.as_while:
        return None
    inner = op.inner_nitsot_outs(op.inner_outputs)
    outer = op.outer_nitsot_outs(node.outputs)
    replacements = {}
    for k, var in enumerate(inner):
        for part, axis, start, stop in _pieces(var) or ():
            # the step's graph is not merged yet: a part may be an equal copy
            j = next((j for j, o in enumerate(inner) if equal_computations([part], [o])), None)
            if j is None or j == k or outer[j] in replacements or not fgraph.clients[outer[j]]:
                continue
            whole = outer[k]  # [steps, *inner shape]
            cut = (slice(None),) * (axis + 1) + (slice(start, stop),)
            replacements[outer[j]] = whole[cut]
    return replacements or None


def _same(a, b) -> bool:
    """Whether two index entries (None, a slice, a variable) are the same."""
    if isinstance(a, slice) and isinstance(b, slice):
        return all(_same(x, y) for x, y in ((a.start, b.start), (a.stop, b.stop), (a.step, b.step)))
    if isinstance(a, Constant) and isinstance(b, Constant):
        return a.type == b.type and np.array_equal(a.data, b.data)
    return a is b


def _same_leading_shape(a, b) -> bool:
    """Whether two reshapes' target shapes agree but for their last entry."""
    if isinstance(a, Constant) and isinstance(b, Constant):
        return np.array_equal(a.data[:-1], b.data[:-1])
    return equal_computations([a], [b])


def _last_axis_piece(var):
    """``(whole, leading index, start, stop, reshape)`` when ``var`` is
    ``reshape(whole[..., start:stop])`` (a reshape that keeps the last axis, or none;
    ``specify_shape`` in between is allowed), else None."""
    reshape = None
    if var.owner is not None and isinstance(var.owner.op, Reshape):
        inner = var.owner.inputs[0]
        width = var.type.shape[-1]
        if width is None or inner.type.shape[-1] != width:
            return None
        reshape, var = var.owner.inputs[1], inner
    while var.owner is not None and isinstance(var.owner.op, SpecifyShape):
        var = var.owner.inputs[0]
    if var.owner is None or not isinstance(var.owner.op, Subtensor):
        return None
    whole = var.owner.inputs[0]
    index = get_idx_list(var.owner.inputs, var.owner.op.idx_list)
    last = index[-1] if len(index) == whole.ndim else None
    if not isinstance(last, slice) or last.step is not None:
        return None
    full = whole.type.shape[-1]
    bounds = [0 if last.start is None else last.start, full if last.stop is None else last.stop]
    if not all(isinstance(b, int) or isinstance(b, Constant) for b in bounds):
        return None
    start, stop = (int(b.data) if isinstance(b, Constant) else b for b in bounds)
    return whole, tuple(index[:-1]), start, stop, reshape


@node_rewriter([Join])
def local_join_of_slices(fgraph, node: Apply):
    """``join(-1, x[..., 0:a], x[..., a:b], ..., x[..., c:n])`` as ``x[...]`` (the same
    leading index for every piece, and the same reshape of the leading axes)."""
    axis, *parts = node.inputs
    out = node.outputs[0]
    if not isinstance(axis, Constant) or int(axis.data) % out.ndim != out.ndim - 1:
        return None
    pieces = [_last_axis_piece(part) for part in parts]
    if len(pieces) < 2 or any(p is None for p in pieces):
        return None
    whole, index, _, _, reshape = pieces[0]
    end = 0
    for other, other_index, start, stop, other_reshape in pieces:
        same_index = len(other_index) == len(index) and all(map(_same, other_index, index))
        if other is not whole or not same_index or start != end:
            return None
        if (reshape is None) != (other_reshape is None):
            return None
        if reshape is not None and not _same_leading_shape(reshape, other_reshape):
            return None
        end = stop
    if end != whole.type.shape[-1]:
        return None
    value = whole[(*index, slice(None))]
    if isinstance(reshape, Constant):  # JAX reshapes only to shapes it knows
        value = value.reshape([*reshape.data[:-1], end])
    elif reshape is not None:
        value = value.reshape(pt.concatenate([reshape[:-1], [end]]), ndim=out.ndim)
    return [pt.specify_shape(value, out.type.shape)]


def register() -> None:
    """Add the rewrites to PyTensor's (once): the first after its scan rewrites and
    before it removes a scan's unused outputs."""
    global _registered
    if _registered:
        return
    from pytensor.compile.mode import optdb

    optdb.register(
        "rnnc_joined_scan_outputs",
        dfs_rewriter(local_outputs_of_a_joined_output, ignore_newtrees=True),
        "fast_run",
        position=1.601,  # scan_eqopt2 is 1.6, scan_remove_unused_top 1.605
    )
    optdb.register(
        "rnnc_join_of_slices",
        dfs_rewriter(local_join_of_slices),
        "fast_run",
        position=2.5,  # after PyTensor's specialize (2), before elementwise fusion (49)
    )
    _registered = True
