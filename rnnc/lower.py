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

from rnnc import ir
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
    "tanh": pt.tanh,
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
        elif node.op == "slice":
            start, stop = node.value
            out = args[0][..., start:stop]
        else:
            raise NotImplementedError(f"lowering of `{node.op}`")
        if out.dtype != dtype:
            raise TypeError(f"rnnc lowering produced {out.dtype} for {node!r}; expected {dtype}")
        values[node] = out
    return [values[r] for r in roots]


def _time_major(x: TensorVariable) -> TensorVariable:
    return x.dimshuffle(1, 0, *range(2, x.ndim))


def _batch_major(x: TensorVariable) -> TensorVariable:
    return x.dimshuffle(1, 0, *range(2, x.ndim))


def _over_all_steps(
    nodes: Mapping[str, ir.Node],
    leaves: Mapping[tuple[str, str], TensorVariable],
    dtype: str,
) -> dict[str, TensorVariable]:
    """Compute example-level nodes for every step at once.

    ``leaves`` are time-major ``[T, B, ...]`` (batched) or parameters; time and batch
    are flattened into one leading axis, so ``x_t @ W`` for all t is one product.
    """
    if not nodes:
        return {}
    first = next(v for (op, _), v in leaves.items() if op != "param")
    time, batch = first.shape[0], first.shape[1]
    flat = {
        k: (
            v
            if k[0] == "param"
            else v.reshape((time * batch, *[v.shape[i] for i in range(2, v.ndim)]))
        )
        for k, v in leaves.items()
    }
    values = lower_nodes(list(nodes.values()), flat, dtype)
    out = {}
    for (name, node), value in zip(nodes.items(), values, strict=True):
        if not node.batched:  # constant over time and batch: broadcast it
            value = pt.broadcast_to(value, (time * batch, *value.shape))
        out[name] = value.reshape((time, batch, *[value.shape[i] for i in range(1, value.ndim)]))
    return out


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
) -> ScanResult:
    """Run ``cell`` over ``inputs`` (``[batch, time, ...]`` each) with one scan.

    ``mask`` is ``[batch, time]`` (1 = real step). With ``reverse`` each sequence is
    processed from its last step back to its first (padding-aware: padded steps keep
    the state wherever they are) and outputs are returned in the original order.
    """
    inputs_tm = {name: _time_major(x) for name, x in inputs.items()}
    batch = next(iter(inputs.values())).shape[0]
    param_leaves = {("param", k): v for k, v in params.items()}

    # values that do not depend on a state, computed before the loop for every step
    seq_values = _over_all_steps(
        cell.precompute,
        {**param_leaves, **{("input", k): v for k, v in inputs_tm.items()}},
        dtype,
    )

    step_roots = [*cell.next_state.values(), *cell.outputs.values()]
    used = {(n.op, n.value) for n in ir.walk(step_roots) if n.op in ir.LEAVES}
    seq_names = [("input", k) for k in inputs_tm if ("input", k) in used]
    seq_names += [("seq", k) for k in seq_values if ("seq", k) in used]
    sequences = [inputs_tm[k] if op == "input" else seq_values[k] for op, k in seq_names]
    if mask is not None:
        sequences.append(pt.cast(_time_major(mask), dtype))
    non_seq_names = [k for k in params if ("param", k) in used]
    non_sequences = [params[k] for k in non_seq_names]

    state_names = list(cell.states)
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
        m = args.pop(0) if mask is not None else None
        old = {name: args.pop(0) for name in state_names}
        leaves.update({("state", k): v for k, v in old.items()})
        leaves.update({("param", k): args.pop(0) for k in non_seq_names})
        values = lower_nodes(step_roots, leaves, dtype)
        new = values[: len(state_names)]
        outs = values[len(state_names) :]
        if m is not None:
            new = [
                pt.switch(m.dimshuffle(0, *["x"] * (n.ndim - 1)), n, old[name])
                for name, n in zip(state_names, new, strict=True)
            ]
            outs = [o * m.dimshuffle(0, *["x"] * (o.ndim - 1)) for o in outs]
        new = [
            pt.specify_shape(n, o.type.shape) if n.type.shape != o.type.shape else n
            for n, o in zip(new, init, strict=True)
        ]
        return [*new, *outs]

    results = pytensor.scan(
        step,
        sequences=sequences,
        outputs_info=[*init, *([None] * len(out_names))],
        non_sequences=non_sequences,
        go_backwards=reverse,
        truncate_gradient=truncate_gradient,
        strict=True,
        return_updates=False,
        return_list=True,
    )
    state_seqs = dict(zip(state_names, results[: len(state_names)], strict=True))
    out_seqs = dict(zip(out_names, results[len(state_names) :], strict=True))
    if reverse:  # scan returns steps in processing order; give them back in time order
        state_seqs = {k: v[::-1] for k, v in state_seqs.items()}
        out_seqs = {k: v[::-1] for k, v in out_seqs.items()}

    finals = {k: (v[0] if reverse else v[-1]) for k, v in state_seqs.items()}

    # outputs that need only the new state and the inputs, computed after the loop
    post_leaves = {**param_leaves, **{("input", k): v for k, v in inputs_tm.items()}}
    post_leaves |= {("seq", k): v for k, v in seq_values.items()}
    post_leaves |= {("new", k): v for k, v in state_seqs.items()}
    post = _over_all_steps(cell.postcompute, post_leaves, dtype)
    if mask is not None and post:
        m = pt.cast(_time_major(mask), dtype)
        post = {k: v * m.dimshuffle(0, 1, *["x"] * (v.ndim - 2)) for k, v in post.items()}
    out_seqs.update(post)
    return ScanResult(
        outputs={k: _batch_major(v) for k, v in out_seqs.items()},
        state=finals,
    )
