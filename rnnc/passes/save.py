"""Save for backward: in-loop values the backward loop would recompute become outputs.

The gradient of a scan is a second scan that runs backwards. Without help it
recomputes, at every step, the forward values its derivatives need: ``sigmoid(z)``
for ``s * (1 - s)``, ``tanh(z)`` for ``1 - t**2``, and with them every product that
leads there. PyTensor's scan gradient reuses a forward value instead when the
forward scan returns it as an output. This pass adds those outputs (named
``_save0``, ``_save1``, ...; layers hide names that start with ``_``). A function
that takes no gradient never reads them, and PyTensor drops them from its scan.

Before (an LSTM step)::

    outputs: y

After (``save="auto"``)::

    outputs: y, _save0 = tanh(c'), _save1 = tanh(...g...),
             _save2, _save3, _save4 = the three sigmoid gates

The price is memory: each saved value is kept for every step (``time * batch *
size`` numbers). ``"auto"`` saves the results of the nonlinear elementwise functions
(and the arguments of the piecewise ones: ``relu``, ``abs``, ``maximum``, ...),
which is what the derivatives read, and the factors of a product ``a * b`` whose
recomputation would take a matrix product (the derivative by ``b`` reads ``a``: in a
GRU, ``r * (h @ W_hn + b_hn)`` made the backward loop compute ``h @ W_hn`` again, or
with ``fuse`` all of ``h @ concat(W_h*)``, at every step); ``"all"`` saves every
intermediate value in the loop; ``"none"`` nothing.
"""

from __future__ import annotations

from rnnc import ir
from rnnc.passes.common import in_loop_roots

__all__ = ["MODES", "PREFIX", "save"]

#: The choices for what to save.
MODES = ("auto", "all", "none")
#: Names of the outputs this pass adds.
PREFIX = "_save"

_RESULT_NEEDED = ("sigmoid", "tanh", "exp", "softplus", "sqrt", "log")
_ARGS_NEEDED = ("relu", "abs", "maximum", "minimum", "layer_norm", "div", "pow")


def _needs_a_product(node: ir.Node) -> bool:
    """Whether computing ``node`` again in the loop would take a matrix product of a
    state (the results of ``_RESULT_NEEDED`` functions are saved: no need to look
    behind them)."""
    todo, seen = [node], set()
    while todo:
        n = todo.pop()
        if n in seen or not n.stateful:
            continue
        seen.add(n)
        if n.op == "matmul":
            return True
        if n.op not in _RESULT_NEEDED:
            todo.extend(n.args)
    return False


def save(cell: ir.CellIR, mode: str = "auto") -> ir.CellIR:
    """Add the in-loop values the backward pass needs as outputs (see module doc)."""
    if mode == "none":
        return cell
    if mode not in MODES:
        raise ValueError(f"save mode must be one of {MODES}, not {mode!r}")
    roots = set(in_loop_roots(cell))
    chosen: list[ir.Node] = []
    for node in ir.walk(in_loop_roots(cell)):
        if mode == "all":
            candidates = [node]
        elif node.op in _RESULT_NEEDED:
            candidates = [node]
        elif node.op in _ARGS_NEEDED:
            candidates = list(node.args)
        elif node.op == "mul":
            candidates = [a for a in node.args if _needs_a_product(a)]
        else:
            candidates = []
        for c in candidates:
            if c.stateful and c.op not in ir.LEAVES and c not in roots and c not in chosen:
                chosen.append(c)
    if not chosen:
        return cell
    outputs = dict(cell.outputs)
    n = sum(1 for name in outputs if name.startswith(PREFIX))
    # users before what they use: PyTensor's scan gradient swaps the forward's values
    # in one output at a time, matching by structure, and once `f` is swapped in, a
    # saved `tanh(... (f * h) @ W ...)` no longer matches and is computed again,
    # product and all (the custom cell of benchmarks/run.py did that every step)
    for node in reversed(chosen):
        outputs[f"{PREFIX}{n}"] = node
        n += 1
    return cell.replace(outputs=outputs)
