"""Lower a cell's IR to PyTensor: a step function and one ``pytensor.scan``.

Batch-major at the boundary (``[batch, time, ...]``), time-major inside the scan.
Inside a step every batched value has one leading batch axis; parameters and
constants have none and broadcast from the right, as NumPy does. Matrix products are
emitted as ``pt.dot`` (PyTensor moves the weight-gradient sums out of the backward
loop only for ``Dot``). Initial states are ``pt.zeros((batch, ...), dtype)``: never a
static batch of 1, which would make scan's types disagree.

Masks, direction and truncated gradients are handled here, once, for every cell:
on a padded step (mask 0) every state keeps its value and every output is 0.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pytensor
import pytensor.tensor as pt
from pytensor.tensor.variable import TensorVariable

from rnnc import ir, ops
from rnnc.passes.common import in_loop_roots, rebuild_roots, swapping, with_loop_roots
from rnnc.reference import LAYER_NORM_EPS

__all__ = ["ScanResult", "lower_nodes", "scan_cell"]


@dataclass
class ScanResult:
    """What :func:`scan_cell` returns: batch-major outputs and final states."""

    outputs: dict[str, TensorVariable]
    state: dict[str, TensorVariable]


def _expand(x: TensorVariable, node: ir.Node, rank: int) -> TensorVariable:
    """Give a batched value of example rank < ``rank`` the axes it needs to broadcast."""
    if not node.batched or len(node.shape) == rank:
        return x
    missing = rank - len(node.shape)
    pattern = [0, *(["x"] * missing), *range(1, len(node.shape) + 1)]
    return x.dimshuffle(*pattern)


def _matmul(a: TensorVariable, b: TensorVariable, na: ir.Node, nb: ir.Node) -> TensorVariable:
    ra, rb = len(na.shape), len(nb.shape)
    if not na.batched and not nb.batched:
        return pt.dot(a, b)
    if na.batched and not nb.batched:
        if ra == 1:
            return pt.dot(a, b)  # [B, K] . [K, N] -> [B, N]
        return pt.tensordot(a, b, axes=[[2], [0]])
    if nb.batched and not na.batched:
        if rb == 1:
            return pt.dot(b, a.T)  # (W @ x) per example == x . W^T batched
        return pt.tensordot(a, b, axes=[[ra - 1], [1]]).dimshuffle(
            ra - 1, *range(ra - 1), *range(ra, ra + rb - 1)
        )
    # both batched: batched vector/matrix products
    if ra == 1 and rb == 1:
        return (a * b).sum(axis=-1)
    if ra == 2 and rb == 1:
        return (a * b.dimshuffle(0, "x", 1)).sum(axis=-1)
    if ra == 1 and rb == 2:
        return (a.dimshuffle(0, 1, "x") * b).sum(axis=1)
    return pt.matmul(a, b)


def _layer_norm(x: TensorVariable, dtype: str) -> TensorVariable:
    mean = x.mean(axis=-1, keepdims=True)
    centred = x - mean
    var = (centred**2).mean(axis=-1, keepdims=True)
    return centred / pt.sqrt(var + np.asarray(LAYER_NORM_EPS, dtype))


_UNARY = {
    "neg": lambda x: -x,
    "sigmoid": pt.sigmoid,
    "tanh": ops.fast_tanh,  # tanh, 4x faster in PyTensor's C code
    "exp": pt.exp,
    "log": pt.log,
    "sqrt": pt.sqrt,
    "abs": pt.abs,
    "softplus": pt.softplus,
}
_BINARY = {
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b,
    "div": lambda a, b: a / b,
    "pow": lambda a, b: a**b,
    "maximum": pt.maximum,
    "minimum": pt.minimum,
    "lt": pt.lt,
    "gt": pt.gt,
    "le": pt.le,
    "ge": pt.ge,
}


def lower_nodes(
    roots: list[ir.Node], leaves: Mapping[tuple[str, str], TensorVariable], dtype: str
) -> list[TensorVariable]:
    """PyTensor variables for ``roots``; ``leaves`` maps ``(op, name)`` to variables.

    Batched leaves carry one leading batch axis (which may be batch*time when a value
    is computed for every step at once).
    """
    values: dict[ir.Node, TensorVariable] = {}
    batch = None
    partitions = _partitions(roots)
    for node in ir.walk(roots):
        if node in values:
            continue
        args = [values[a] for a in node.args]
        rank = len(node.shape)
        if node.op == "const":
            out = pt.constant(np.asarray(node.value, dtype))
        elif node.op in ir.LEAVES:
            out = leaves[(node.op, node.value)]
            if node.batched and batch is None:
                batch = out.shape[0]
        elif node.op in _UNARY:
            out = _UNARY[node.op](args[0])
        elif node.op == "relu":
            out = pt.maximum(args[0], np.asarray(0, dtype))
        elif node.op in _BINARY:
            a, b = (_expand(x, n, rank) for x, n in zip(args, node.args, strict=True))
            out = _BINARY[node.op](a, b)
            if node.op in ("lt", "gt", "le", "ge"):
                out = pt.cast(out, dtype)
        elif node.op == "matmul":
            out = _matmul(args[0], args[1], *node.args)
        elif node.op == "where":
            c, a, b = (_expand(x, n, rank) for x, n in zip(args, node.args, strict=True))
            out = pt.switch(pt.neq(c, 0), a, b)
        elif node.op == "concat":
            if node.batched:
                lead = next(v for v, n in zip(args, node.args, strict=True) if n.batched).shape[0]
                args = [
                    v if n.batched else pt.broadcast_to(v, (lead, *v.shape))
                    for v, n in zip(args, node.args, strict=True)
                ]
            if node.value:  # widths known (the fuse pass): the gradient's split is static
                args = [
                    pt.specify_shape(v, (None,) * (v.ndim - 1) + (w,))
                    for v, w in zip(args, node.value, strict=True)
                ]
            out = pt.concatenate(args, axis=-1)
        elif node.op == "layer_norm":
            out = _layer_norm(args[0], dtype)
        elif node.op == "slice" and _splits(args[0], partitions.get(node.args[0])):
            # the slices that cut one value into pieces: one Split (its gradient one
            # Join), not a Subtensor per piece and an IncSubtensor per piece's gradient
            pieces = partitions[node.args[0]]
            sizes = [n.value[1] - n.value[0] for n in pieces]
            parts = pt.split(args[0], sizes, n_splits=len(sizes), axis=args[0].ndim - 1)
            values.update(zip(pieces, parts, strict=True))
            out = values[node]
        elif node.op == "slice":
            start, stop = node.value
            out = args[0][..., start:stop]
        else:
            raise NotImplementedError(f"lowering of `{node.op}`")
        if out.dtype != dtype:
            raise TypeError(f"rnnc lowering produced {out.dtype} for {node!r}; expected {dtype}")
        values[node] = out
    return [values[r] for r in roots]


def _partitions(roots: list[ir.Node]) -> dict[ir.Node, list[ir.Node]]:
    """The values whose slices (two or more) are consecutive pieces from 0, with those
    slices in order: what the fuse pass leaves of a fused product."""
    slices: dict[ir.Node, set[ir.Node]] = {}
    for node in ir.walk(roots):
        if node.op == "slice":
            slices.setdefault(node.args[0], set()).add(node)
    out = {}
    for whole, nodes in slices.items():
        pieces = ir.consecutive_slices(nodes)
        if pieces is not None:
            out[whole] = pieces
    return out


def _splits(whole: TensorVariable, pieces: list[ir.Node] | None) -> bool:
    """Whether ``pieces`` (slices of ``whole``) cover all of it: its last axis has a
    static length, which the last piece ends at."""
    return bool(pieces) and whole.type.shape[-1] == pieces[-1].value[1]


def _loop_invariants(cell: ir.CellIR) -> tuple[ir.CellIR, dict[str, ir.Node]]:
    """Take the values of parameters alone out of the step.

    A value the step needs that depends on parameters only (``concat(W_hi, W_hf, ...)``
    made by the fuse pass, ``-W``, ``2 * b``) is computed once before the loop and
    passed in as one non-sequence: the step reads a leaf ``param:~inv<i>`` instead.
    Inside the loop, the concatenation would be done at every step, and its gradient
    split at every step of the backward loop into one accumulator per weight; passed
    in whole, the backward loop accumulates a single ``h.T @ dP`` per step (one
    ``Gemm`` on the C backend).

    Returns the cell with the rewritten in-loop roots and the invariants by leaf name.
    """
    roots = in_loop_roots(cell)
    frontier: dict[ir.Node, str] = {}

    def mark(node: ir.Node) -> None:
        if not node.batched and node.op not in ir.LEAVES and node not in frontier:
            frontier[node] = f"~inv{len(frontier)}"  # `~` never starts a user's name

    for node in ir.walk(roots):
        if node.batched:
            for arg in node.args:
                mark(arg)
    for root in roots:
        mark(root)
    if not frontier:
        return cell, {}
    leaves = {node: ir.Node("param", (), node.shape, name) for node, name in frontier.items()}
    cell = with_loop_roots(cell, rebuild_roots(roots, swapping(leaves)))
    return cell, {name: node for node, name in frontier.items()}


def _time_major(x: TensorVariable) -> TensorVariable:
    return x.dimshuffle(1, 0, *range(2, x.ndim))


def _batch_major(x: TensorVariable) -> TensorVariable:
    return x.dimshuffle(1, 0, *range(2, x.ndim))


def _width(shape: ir.Shape, sizes: Mapping[str, int]) -> int:
    return int(np.prod(ir.shape_size(shape, sizes), dtype=np.int64))


def _static(shape: ir.Shape, sizes: Mapping[str, int]) -> tuple[int | None, ...]:
    return tuple(None if d == 1 else d for d in ir.shape_size(shape, sizes))


def _precompute_batch_major(cell: ir.CellIR, sizes: Mapping[str, int]) -> bool:
    """Whether the values computed before the loop are better computed batch-major.

    The loop reads its sequences time-major. Computed from time-major inputs, the
    inputs are transposed (and, in the gradient, their gradients transposed back);
    computed from the batch-major inputs, the values are transposed instead, which
    JAX's XLA fuses into the additions that make them. The narrower side is the one
    to transpose: an input of 1024 features whose products feed the loop 512 values
    per step (the custom cell of ``benchmarks/``) gave a JAX forward+gradient 4%
    faster batch-major (C: 1.5%), while the LSTM with 128 inputs and 1024 values was
    1-2% slower on both (2026-12-05). With equal widths (the LSTM with 1024 inputs)
    JAX gained 1.2% and C lost 0.5%: ties stay time-major.
    """
    read = {n for n in ir.walk(list(cell.precompute.values())) if n.op == "input"}
    made = [n for n in cell.precompute.values() if n.batched]
    return sum(_width(n.shape, sizes) for n in read) > sum(_width(n.shape, sizes) for n in made)


def _over_all_steps(
    nodes: Mapping[str, ir.Node],
    leaves: Mapping[tuple[str, str], TensorVariable],
    dtype: str,
) -> dict[str, TensorVariable]:
    """Compute example-level nodes for every step at once.

    Reshapes leave the last axis as ``-1``: its size may come from a parameter's
    (dynamic) shape, which JAX cannot trace into a static shape.

    ``leaves`` are ``[T, B, ...]`` or ``[B, T, ...]`` (batched; the values come in the
    same order) or parameters; the two leading axes are flattened into one, so
    ``x_t @ W`` for all t is one product.
    """
    if not nodes:
        return {}
    first = next(v for (op, _), v in leaves.items() if op != "param")
    lead = first.shape[0], first.shape[1]
    rows = lead[0] * lead[1]
    flat = {
        k: (
            v
            if k[0] == "param"
            else v.reshape((rows, *[v.shape[i] for i in range(2, v.ndim - 1)], -1)[: v.ndim - 1])
        )
        for k, v in leaves.items()
    }
    values = lower_nodes(list(nodes.values()), flat, dtype)
    out = {}
    for (name, node), value in zip(nodes.items(), values, strict=True):
        if not node.batched:  # constant over time and batch: broadcast it
            value = pt.broadcast_to(value, (rows, *value.shape))
        out[name] = value.reshape(
            (*lead, *[value.shape[i] for i in range(1, value.ndim - 1)], -1)[: value.ndim + 1]
        )
    return out


def _per_example(flag: TensorVariable, like: TensorVariable) -> TensorVariable:
    """A ``[batch]`` flag with axes added to broadcast against ``like`` ``[batch, ...]``."""
    return flag.dimshuffle(0, *["x"] * (like.ndim - 1))


def _effective_resets(
    reset: TensorVariable, mask: TensorVariable | None, reverse: bool
) -> TensorVariable:
    """Where states are reset before a step, in time order (``[T, B]`` bool, time-major).

    ``reset[t]`` marks that a new document begins at step ``t``. Going forward, the
    states are reset before step ``t`` runs. Going backward the boundary is crossed
    after step ``t`` has run, i.e. before step ``t - 1``. Either way a reset counts only
    if a real (unmasked) step follows it in processing order, so a mark on trailing
    padding never changes a final state.
    """
    if reverse:
        reset = pt.concatenate([reset[1:], pt.zeros_like(reset[:1])], axis=0)
    if mask is None:
        return reset
    ahead = mask[::-1] if not reverse else mask
    real_ahead = pt.gt(pt.cumsum(pt.cast(ahead, "int32"), axis=0), 0)
    return pt.and_(reset, real_ahead[::-1] if not reverse else real_ahead)


def _segmented_scan(
    step,
    sequences: list[TensorVariable],
    init: list[TensorVariable],
    n_outputs: int,
    non_sequences: list[TensorVariable],
    every: int,
    reverse: bool,
    keep: list[int],
    mode: str | None = None,
) -> tuple[list[TensorVariable], list[TensorVariable], list[TensorVariable]]:
    """``scan(step)`` split into segments of ``every`` steps (gradient checkpointing).

    An outer scan runs over segments and an inner scan over the steps of one segment.
    The forward pass keeps only the states at segment borders (plus the per-step
    outputs, which are results); the backward pass re-runs each segment's inner scan
    from its border to get the values it needs. Memory for the states drops from
    ``T`` steps to ``T / every + every``, at the price of a second forward pass.

    ``sequences`` are time-major, their last one the mask (the caller adds one), so
    the zero padding that makes ``T`` a multiple of ``every`` is a run of masked
    steps. Returns ``(finals, outputs, state_sequences)`` in processing order
    (``state_sequences`` only for the states numbered in ``keep``).
    """
    time = sequences[0].shape[0]
    if reverse:
        sequences = [s[::-1] for s in sequences]
    pad = (every - time % every) % every
    segments = []
    for s in sequences:
        s = pt.concatenate([s, pt.zeros((pad, *s.shape[1:]), dtype=s.dtype)], axis=0)
        segments.append(s.reshape((-1, every, *[s.shape[i] for i in range(1, s.ndim)])))
    n_seq, n_states = len(sequences), len(init)

    def outer(*args):
        seg, states, rest = args[:n_seq], args[n_seq : n_seq + n_states], args[n_seq + n_states :]
        res = pytensor.scan(
            step,
            sequences=list(seg),
            outputs_info=[*states, *([None] * n_outputs)],
            non_sequences=list(rest),
            strict=True,
            return_updates=False,
            return_list=True,
            mode=mode,
        )
        last = [
            pt.specify_shape(r[-1], s.type.shape) if r[-1].type.shape != s.type.shape else r[-1]
            for r, s in zip(res[:n_states], states, strict=True)
        ]
        return [*last, *res[n_states:], *(res[i] for i in keep)]

    results = pytensor.scan(
        outer,
        sequences=segments,
        outputs_info=[*init, *([None] * (n_outputs + len(keep)))],
        non_sequences=non_sequences,
        strict=True,
        return_updates=False,
        return_list=True,
        mode=mode,
    )

    def steps(x: TensorVariable) -> TensorVariable:  # [n_seg, every, ...] -> [time, ...]
        flat = x.reshape((x.shape[0] * x.shape[1], *[x.shape[i] for i in range(2, x.ndim)]))
        return flat[:time]

    finals = [r[-1] for r in results[:n_states]]
    outputs = [steps(r) for r in results[n_states : n_states + n_outputs]]
    state_seqs = [steps(r) for r in results[n_states + n_outputs :]]
    return finals, outputs, state_seqs


def scan_cell(
    cell: ir.CellIR,
    inputs: Mapping[str, TensorVariable],
    params: Mapping[str, TensorVariable],
    sizes: Mapping[str, int],
    dtype: str,
    initial_state: Mapping[str, TensorVariable] | None = None,
    mask: TensorVariable | None = None,
    reverse: bool = False,
    truncate_gradient: int = -1,
    reset: TensorVariable | None = None,
    checkpoint: int | None = None,
    outputs: bool = True,
    fast_compile: bool = False,
) -> ScanResult:
    """Run ``cell`` over ``inputs`` (``[batch, time, ...]`` each) with one scan.

    For every example ``b``, in processing order (``t = T-1 .. 0`` with ``reverse``)::

        if reset[b, t]:  state = initial value          # declared: constant or learned
        if mask[b, t]:   state, out[t] = step(state, x[b, t])
        else:            out[t] = 0                      # the state is kept

    ``mask`` is ``[batch, time]`` (nonzero = real step); the inputs of padded steps
    are replaced by zeros, so they get exactly zero gradient. ``reset`` is
    ``[batch, time]`` (nonzero = a new document begins at this step); see
    :func:`_effective_resets` for the reverse direction. With ``reverse`` each
    sequence is processed from its last step back to its first (padding-aware: padded
    steps keep the state wherever they are) and outputs are returned in time order;
    the final state is the state after the last step processed.
    ``truncate_gradient=k`` back-propagates through at most ``k`` steps;
    ``checkpoint=k`` recomputes the forward pass in segments of ``k`` steps during
    the backward pass instead of storing every step (see :func:`_segmented_scan`).
    ``outputs=False`` computes the final states only: no per-step output is made, so
    none takes memory (nor, in the backward pass, its zero gradient).
    ``fast_compile`` (the "python" backend) has PyTensor's C and Python linkers build
    the loop's step (and its gradient's) in FAST_COMPILE mode, as the function around
    it: a scan's step is otherwise compiled with C code and every rewrite, whatever
    mode compiles the function (JAX and Numba translate the whole scan either way).
    """
    mode = "FAST_COMPILE" if fast_compile else None
    if not outputs:
        cell = cell.replace(outputs={}, postcompute={})
    first = next(iter(inputs.values()))
    batch, time = first.shape[0], first.shape[1]
    param_leaves = {("param", k): v for k, v in params.items()}

    mask_tm = None
    if mask is not None:  # padded inputs are never read: exactly zero gradient
        zero = np.asarray(0, dtype)
        real = pt.neq(mask, 0)
        inputs = {
            k: pt.switch(real.dimshuffle(0, 1, *["x"] * (v.ndim - 2)), v, zero)
            for k, v in inputs.items()
        }
        mask_tm = _time_major(real)
    inputs_tm = {name: _time_major(x) for name, x in inputs.items()}
    reset_tm = None
    if reset is not None:
        reset_tm = _effective_resets(pt.neq(_time_major(reset), 0), mask_tm, reverse)
    if checkpoint is not None and mask_tm is None:  # segments pad with masked steps
        mask_tm = pt.ones((time, batch), dtype="bool")

    # values that do not depend on a state, computed before the loop for every step
    batch_major = _precompute_batch_major(cell, sizes)
    source = inputs if batch_major else inputs_tm
    seq_values = _over_all_steps(
        cell.precompute, {**param_leaves, **{("input", k): v for k, v in source.items()}}, dtype
    )
    if batch_major:
        seq_values = {k: _time_major(v) for k, v in seq_values.items()}
    # their example shapes are known: a step that cuts one into pieces then splits it
    # (the gradient joins the pieces) instead of taking slices of an unknown width
    # (the gradient adds each into zeros). A size of 1 stays unknown: it would make
    # the axis broadcastable, unlike the step's other values.
    seq_values = {
        k: pt.specify_shape(v, (None, None, *_static(cell.precompute[k].shape, sizes)))
        for k, v in seq_values.items()
    }

    cell, invariants = _loop_invariants(cell)
    if invariants:  # computed once, before the loop, and passed in
        values = lower_nodes(list(invariants.values()), param_leaves, dtype)
        params = {**params, **dict(zip(invariants, values, strict=True))}
    step_roots = in_loop_roots(cell)
    used = {(n.op, n.value) for n in ir.walk(step_roots) if n.op in ir.LEAVES}
    seq_names = [("input", k) for k in inputs_tm if ("input", k) in used]
    seq_names += [("seq", k) for k in seq_values if ("seq", k) in used]
    sequences = [inputs_tm[k] if op == "input" else seq_values[k] for op, k in seq_names]
    if reset_tm is not None:
        sequences.append(reset_tm)
    if mask_tm is not None:
        sequences.append(mask_tm)
    state_names = list(cell.states)
    learned = [f"{n}0" for n in state_names if cell.states[n].init == "learned"]
    needed = {k for op, k in used if op == "param"} | (set(learned) if reset is not None else set())
    non_seq_names = [k for k in params if k in needed]
    non_sequences = [params[k] for k in non_seq_names]

    init = []
    for name in state_names:
        if initial_state is not None and name in initial_state:
            init.append(initial_state[name])
            continue
        spec = cell.states[name]
        shape = (batch, *ir.shape_size(spec.shape, sizes))
        zeros = pt.zeros(shape, dtype=dtype)
        if spec.init == "learned":
            init.append(zeros + params[f"{name}0"])
        else:
            init.append(zeros + np.asarray(spec.value, dtype) if spec.value else zeros)
    out_names = list(cell.outputs)

    def step(*args):
        args = list(args)
        leaves = {k: args.pop(0) for k in seq_names}
        r = args.pop(0) if reset_tm is not None else None
        m = args.pop(0) if mask_tm is not None else None
        old = {name: args.pop(0) for name in state_names}
        leaves.update({("param", k): args.pop(0) for k in non_seq_names})
        if r is not None:  # back to the initial value before a new document
            for name, value in old.items():
                spec = cell.states[name]
                fresh = (
                    leaves[("param", f"{name}0")]
                    if spec.init == "learned"
                    else np.asarray(spec.value, dtype)
                )
                old[name] = pt.switch(_per_example(r, value), fresh, value)
        leaves.update({("state", k): v for k, v in old.items()})
        values = lower_nodes(step_roots, leaves, dtype)
        if not all(n.batched for n in step_roots):  # a value of parameters alone
            batch_of = [*old.values(), *(leaves[k] for k in seq_names)]
            rows = batch_of[0].shape[0]
            values = [
                v if n.batched else pt.broadcast_to(v, (rows, *v.shape))
                for v, n in zip(values, step_roots, strict=True)
            ]
        new = values[: len(state_names)]
        outs = values[len(state_names) :]
        if m is not None:
            zero = np.asarray(0, dtype)
            new = [
                pt.switch(_per_example(m, n), n, old[name])
                for name, n in zip(state_names, new, strict=True)
            ]
            # internal outputs (``_name``: values saved for the backward pass) stay as
            # they are, so that the gradient can reuse them
            outs = [
                o if name.startswith("_") else pt.switch(_per_example(m, o), o, zero)
                for name, o in zip(out_names, outs, strict=True)
            ]
        new = [
            pt.specify_shape(n, o.type.shape) if n.type.shape != o.type.shape else n
            for n, o in zip(new, init, strict=True)
        ]
        return [*new, *outs]

    post_reads = {(n.op, n.value) for n in ir.walk(list(cell.postcompute.values()))}
    if not state_names and not out_names:  # the passes moved the whole step out
        finals_list, out_list, state_list = [], [], []
    elif checkpoint is not None:
        finals_list, out_list, state_list = _segmented_scan(
            step,
            sequences,
            init,
            len(out_names),
            non_sequences,
            checkpoint,
            reverse,
            keep=[i for i, name in enumerate(state_names) if ("new", name) in post_reads],
            mode=mode,
        )
    else:
        results = pytensor.scan(
            step,
            sequences=sequences,
            outputs_info=[*init, *([None] * len(out_names))],
            non_sequences=non_sequences,
            n_steps=None if sequences else time,
            go_backwards=reverse,
            truncate_gradient=truncate_gradient,
            strict=True,
            return_updates=False,
            return_list=True,
            mode=mode,
        )
        state_list = results[: len(state_names)]
        out_list = results[len(state_names) :]
        finals_list = [v[-1] for v in state_list]
    finals = dict(zip(state_names, finals_list, strict=True))
    kept = (
        [n for n in state_names if ("new", n) in post_reads]
        if checkpoint is not None
        else state_names
    )
    state_seqs = dict(zip(kept, state_list, strict=True))
    out_seqs = dict(zip(out_names, out_list, strict=True))
    if reverse:  # scan returns steps in processing order; give them back in time order
        state_seqs = {k: v[::-1] for k, v in state_seqs.items()}
        out_seqs = {k: v[::-1] for k, v in out_seqs.items()}

    # outputs that need only the new state and the inputs, computed after the loop
    post_leaves = {**param_leaves, **{("input", k): v for k, v in inputs_tm.items()}}
    post_leaves |= {("seq", k): v for k, v in seq_values.items()}
    post_leaves |= {("new", k): v for k, v in state_seqs.items()}
    post = _over_all_steps(cell.postcompute, post_leaves, dtype)
    if mask is not None and post:
        m = mask_tm
        zero = np.asarray(0, dtype)
        post = {
            k: pt.switch(m.dimshuffle(0, 1, *["x"] * (v.ndim - 2)), v, zero)
            for k, v in post.items()
        }
    out_seqs.update(post)
    return ScanResult(
        outputs={k: _batch_major(v) for k, v in out_seqs.items()},
        state=finals,
    )
