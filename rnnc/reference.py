"""The meaning of a cell: a NumPy interpreter of the IR, written as a plain loop.

This is the oracle every compiled form is tested against. It runs one example and one
step at a time, in the order the definition reads, with no batching tricks::

    for b in range(batch):
        state = initial_state[b]
        for t in range(time):                      # reversed when reverse=True
            if mask[b, t]:
                state, out = step(state, x[b, t])  # the cell, on vectors
                outputs[b, t] = out
            # a padded step keeps the state and outputs zeros
        final_state[b] = state

It also runs the ``precompute`` / ``postcompute`` parts the passes make, so a pass can
be checked by running the cell before and after it.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from rnnc import ir

__all__ = ["evaluate", "run"]


def _matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return a @ b


def _layer_norm(x: np.ndarray) -> np.ndarray:
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + LAYER_NORM_EPS)


LAYER_NORM_EPS = 1e-5

_OPS = {
    "neg": np.negative,
    "sigmoid": lambda x: 1.0 / (1.0 + np.exp(-x)),
    "tanh": np.tanh,
    "relu": lambda x: np.maximum(x, 0.0),
    "exp": np.exp,
    "log": np.log,
    "sqrt": np.sqrt,
    "abs": np.abs,
    "softplus": lambda x: np.logaddexp(0.0, x),
    "add": np.add,
    "sub": np.subtract,
    "mul": np.multiply,
    "div": np.divide,
    "pow": np.power,
    "maximum": np.maximum,
    "minimum": np.minimum,
    "lt": lambda a, b: (a < b).astype(np.result_type(a, b)),
    "gt": lambda a, b: (a > b).astype(np.result_type(a, b)),
    "le": lambda a, b: (a <= b).astype(np.result_type(a, b)),
    "ge": lambda a, b: (a >= b).astype(np.result_type(a, b)),
    "matmul": _matmul,
    "where": lambda c, a, b: np.where(c != 0, a, b),
    "concat": lambda *xs: np.concatenate(xs, axis=-1),
    "layer_norm": _layer_norm,
}


def evaluate(roots: list[ir.Node], leaves: Mapping[tuple[str, str], np.ndarray], dtype) -> list:
    """Values of ``roots`` given the leaves as ``{(op, name): array}`` (one example)."""
    values: dict[ir.Node, np.ndarray] = {}
    for node in ir.walk(roots):
        if node in values:
            continue
        if node.op == "const":
            value = np.asarray(node.value, dtype)
        elif node.op in ir.LEAVES:
            value = leaves[(node.op, node.value)]
        elif node.op == "slice":
            value = values[node.args[0]][..., node.value[0] : node.value[1]]
        else:
            value = _OPS[node.op](*(values[a] for a in node.args))
        values[node] = np.asarray(value, dtype)
    return [values[r] for r in roots]


def run(
    cell: ir.CellIR,
    params: Mapping[str, np.ndarray],
    inputs: Mapping[str, np.ndarray],
    initial_state: Mapping[str, np.ndarray] | None = None,
    mask: np.ndarray | None = None,
    reverse: bool = False,
    sizes: Mapping[str, int] | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Run ``cell`` over batch-major ``inputs`` (``[batch, time, ...]`` each).

    Returns ``(outputs, final_state)``: outputs ``[batch, time, ...]``, states
    ``[batch, ...]``. ``initial_state`` defaults to the cell's declared initial values;
    ``mask`` is ``[batch, time]`` with 1 for a real step. With ``reverse`` each sequence
    runs from its last step to its first; outputs keep the original order. ``sizes``
    gives dimensions that no parameter or input shows (one used by states alone).
    """
    first = next(iter(inputs.values()))
    batch, time = first.shape[:2]
    dtype = first.dtype
    if mask is None:
        mask = np.ones((batch, time))
    leaves_p = {("param", k): np.asarray(v, dtype) for k, v in params.items()}
    state_names = list(cell.states)
    out_nodes = cell.outputs
    post = cell.postcompute
    sizes = {**infer_sizes(cell, params, inputs), **(sizes or {})}
    outputs = {
        name: np.zeros((batch, time, *ir.shape_size(node.shape, sizes)), dtype)
        for name, node in {**out_nodes, **post}.items()
    }
    finals: dict[str, np.ndarray] = {}
    for b in range(batch):
        state = {}
        for name, spec in cell.states.items():
            if initial_state is not None and name in initial_state:
                state[name] = np.asarray(initial_state[name][b], dtype)
            elif spec.init == "learned":
                state[name] = np.asarray(params[f"{name}0"], dtype)
            else:
                shape = ir.shape_size(spec.shape, sizes)
                state[name] = np.full(shape, spec.value, dtype)
        steps = range(time - 1, -1, -1) if reverse else range(time)
        for t in steps:
            if not mask[b, t]:
                continue
            leaves = dict(leaves_p)
            leaves.update({("input", k): v[b, t] for k, v in inputs.items()})
            pre_names = list(cell.precompute)
            pre = evaluate(list(cell.precompute.values()), leaves, dtype)
            leaves.update({("seq", k): v for k, v in zip(pre_names, pre, strict=True)})
            leaves.update({("state", k): v for k, v in state.items()})
            roots = [cell.next_state[n] for n in state_names] + list(out_nodes.values())
            values = evaluate(roots, leaves, dtype)
            new = dict(zip(state_names, values[: len(state_names)], strict=True))
            for name, value in zip(out_nodes, values[len(state_names) :], strict=True):
                outputs[name][b, t] = value
            leaves.update({("new", k): v for k, v in new.items()})
            for name, value in zip(post, evaluate(list(post.values()), leaves, dtype), strict=True):
                outputs[name][b, t] = value
            state = new
        for name, value in state.items():
            finals.setdefault(name, np.zeros((batch, *value.shape), dtype))[b] = value
    return outputs, finals


def infer_sizes(
    cell: ir.CellIR, params: Mapping[str, np.ndarray], inputs: Mapping[str, np.ndarray]
) -> dict[str, int]:
    """The size of each plain dimension name, read from the arrays' actual shapes."""
    sizes: dict[str, int] = {}
    shapes = [(spec.shape, np.shape(params[n])) for n, spec in cell.params.items() if n in params]
    shapes += [(cell.inputs[n], np.shape(v)[2:]) for n, v in inputs.items()]
    for symbolic, actual in shapes:
        for dim, size in zip(symbolic, actual, strict=False):
            if isinstance(dim, str) and dim.isidentifier():
                sizes[dim] = size
    return sizes
