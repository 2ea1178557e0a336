"""Sink: outputs that need only the new state and the inputs leave the loop.

Such an output is computed after the loop for every step at once (one
``[time*batch, H] x [H, K]`` product instead of ``time`` small ones), from the
sequence of states the loop returns anyway.

Before (an LSTM)::

    loop:  h' = o * tanh(c')          c' = f * c + i * g
           y  = o * tanh(c')          # the same value as h'

After::

    loop:  h' = o * tanh(c')          c' = f * c + i * g
    after: y  = new:h                 # read from the states the loop returns

and a projection ``y = h' @ W_y + b_y`` becomes ``y = new:h @ W_y + b_y`` after the
loop. An output that reads a previous state (``y = h``) or an in-loop value that is
not a next state (a gate) stays in the loop.
"""

from __future__ import annotations

from rnnc import ir
from rnnc.passes.common import make

__all__ = ["sink"]


def sink(cell: ir.CellIR) -> ir.CellIR:
    """Move every output that can be computed from ``new`` states and inputs after the loop."""
    news = {node: name for name, node in cell.next_state.items()}
    memo: dict[ir.Node, ir.Node] = {}

    def after(node: ir.Node) -> ir.Node:
        """``node`` with every next-state value read as a ``new`` leaf (top-down)."""
        if node in memo:
            return memo[node]
        if node in news:
            out = ir.Node("new", (), node.shape, news[node])
        elif not node.stateful:
            out = node
        else:
            out = make(node, tuple(after(a) for a in node.args))
        memo[node] = out
        return out

    outputs: dict[str, ir.Node] = {}
    post = dict(cell.postcompute)
    for name, node in cell.outputs.items():
        moved = after(node)
        if any(n.op == "state" for n in ir.walk([moved])):
            outputs[name] = node
        else:
            post[name] = moved
    if len(post) == len(cell.postcompute):
        return cell
    # keep the user's order of outputs: in-loop ones first only where they stay
    return cell.replace(outputs=outputs, postcompute=post)
