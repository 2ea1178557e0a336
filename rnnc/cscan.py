"""Two rewrites of PyTensor's scans for the C backend.

**Loop invariants in row-major order** (:func:`local_contiguous_invariants`). The
gradient of a step's product ``h @ W`` is ``g @ W.T``. PyTensor moves ``W.T`` out of
the backward loop (it does not depend on the step), and a transpose is a view: the
loop multiplies by a column-major matrix at every step, an operand OpenBLAS packs more
slowly. On the machine of ``benchmarks/README.md`` (one core, float32),
``[32, 1024] @ [1024, 256]`` takes 334 us when the right operand is a transposed view
and 205 us when it is row-major; the forward ``[32, 256] @ [256, 1024]`` takes 216 us
either way. The rewrite::

    Scan(..., non_sequences=[W.T])  ->  Scan(..., non_sequences=[cpu_contiguous(W.T)])

``cpu_contiguous`` is PyTensor's op that copies an array into row-major order: one
copy per call, outside the loop.

**Sums updated in place** (:func:`local_untraced_sums`). The backward loop sums the
weight gradient over the steps, ``dW_t = dW_{t+1} + h_t.T @ g_t``, as a state of the
scan of which only the last value is used. PyTensor's C scan keeps such a state in a
buffer of two slots (every step reads one, writes the other), so the product
``Gemm`` first copies the ``[H, 4H]`` sum into the other slot: 245 us per step
instead of 201 for an LSTM's ``[256, 32] @ [32, 1024]``. An *untraced* state (one
value, the step may overwrite it) lets the product add into it in place. The rewrite
turns a state of which every use is ``out[-1]`` into one; PyTensor does the same only
for backends without preallocated outputs (JAX, Numba), whose buffers have one slot.

Both run with PyTensor's C rewrites only (tag ``cxx_only``), after its scan rewrites
and before the in-place ones; XLA and Numba choose their own layouts and buffers.
"""

from __future__ import annotations

from pytensor.graph.basic import Apply, Constant
from pytensor.graph.rewriting.basic import dfs_rewriter, node_rewriter
from pytensor.scan.op import Scan
from pytensor.scan.rewriting.trace import scan_sit_sot_to_untraced
from pytensor.tensor.elemwise import DimShuffle
from pytensor.tensor.extra_ops import cpu_contiguous
from pytensor.tensor.shape import specify_shape
from pytensor.tensor.subtensor import Subtensor, get_idx_list

__all__ = ["local_contiguous_invariants", "local_untraced_sums", "register"]

_registered = False


def _transposed(var) -> bool:
    """Whether ``var`` is a view of another array with its axes in another order."""
    owner = var.owner
    if owner is None or not isinstance(owner.op, DimShuffle):
        return False
    axes = [a for a in owner.op.new_order if a != "x"]
    return len(axes) >= 2 and axes != sorted(axes)


@node_rewriter([Scan])
def local_contiguous_invariants(fgraph, node: Apply):
    """Give a scan its transposed loop invariants as row-major copies (see the module)."""
    non_seqs = node.op.outer_non_seqs(node.inputs)
    start = len(node.inputs) - len(non_seqs)
    inputs = list(node.inputs)
    changed = False
    for i, var in enumerate(non_seqs, start):
        if _transposed(var):
            inputs[i] = cpu_contiguous(var)
            changed = True
    if not changed:
        return None
    return node.op.make_node(*inputs).outputs


def _only_last_used(fgraph, var) -> bool:
    """Whether every use of ``var`` is ``var[-1]``."""
    clients = fgraph.clients[var]
    for client, _ in clients:
        if not isinstance(client.op, Subtensor):
            return False
        idx = get_idx_list(client.inputs, client.op.idx_list)
        if len(idx) != 1 or not isinstance(idx[0], Constant) or idx[0].data != -1:
            return False
    return bool(clients)


@node_rewriter([Scan])
def local_untraced_sums(fgraph, node: Apply):
    """Make the states of which only the last value is used untraced (see the module).

    The buffer of each such state is narrowed to its first slot, the initial value,
    with a static length of one: PyTensor's ``scan_sit_sot_to_untraced`` then makes it
    an untraced state and its output ``expand_dims(final, 0)``, whose ``[-1]`` is the
    value the two-slot buffer's ``[-1]`` was.
    """
    info = node.op.info
    if info.as_while or not info.n_sit_sot:
        return None
    first = 1 + info.n_seqs + info.n_mit_mot + info.n_mit_sot
    inputs = list(node.inputs)
    changed = False
    for k, out in enumerate(node.op.outer_sitsot_outs(node.outputs)):
        if _only_last_used(fgraph, out):
            buffer = inputs[first + k]
            inputs[first + k] = specify_shape(buffer[:1], (1, *buffer.type.shape[1:]))
            changed = True
    if not changed:
        return None
    narrowed = node.op.make_node(*inputs)
    replaced = scan_sit_sot_to_untraced.transform(fgraph, narrowed)
    if not replaced:  # PyTensor declined: keep the scan as it was
        return None
    return [replaced[out] for out in narrowed.outputs]


def register() -> None:
    """Add both rewrites to PyTensor's C rewrites (once)."""
    global _registered
    if _registered:
        return
    from pytensor.compile.mode import optdb

    optdb.register(
        "rnnc_scan_for_c",
        dfs_rewriter(local_contiguous_invariants, local_untraced_sums),
        "fast_run",
        "cxx_only",
        position=49.3,  # after the scan and BLAS rewrites, before in-place (49.5)
    )
    _registered = True
