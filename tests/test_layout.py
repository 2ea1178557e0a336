"""Loop-invariant matrices of a C scan copied into row-major order (rnnc.layout)."""

from __future__ import annotations

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest
from pytensor.compile.mode import Mode
from pytensor.scan.op import Scan
from pytensor.tensor.extra_ops import CpuContiguous

from rnnc import cache, layout
from rnnc.compile import function


def _rnn_and_gradient():
    """``h_t = tanh(x_t + h_{t-1} @ W + b)``: the backward loop multiplies by ``W.T``."""
    x = pt.tensor3("x", dtype="float64")
    w = pt.matrix("w", dtype="float64")
    b = pt.vector("b", dtype="float64")
    h0 = pt.zeros((x.shape[1], w.shape[0]), dtype="float64")
    hs = pytensor.scan(
        lambda xt, h, w, b: pt.tanh(xt + h @ w + b[None, :]),
        sequences=[x],
        outputs_info=[h0],
        non_sequences=[w, b],
        return_updates=False,
    )
    cost = (hs**2).sum()
    return [x, w, b], [hs, *pytensor.grad(cost, [x, w, b])]


def _copied_invariants(fn) -> list:
    """The scans' non-sequences that are CpuContiguous outputs."""
    return [
        var
        for node in fn.maker.fgraph.toposort()
        if isinstance(node.op, Scan)
        for var in node.op.outer_non_seqs(node.inputs)
        if var.owner is not None and isinstance(var.owner.op, CpuContiguous)
    ]


@pytest.fixture(scope="module")
def compiled():
    inputs, outputs = _rnn_and_gradient()
    cache.configure("c")
    plain = Mode(linker="cvm", optimizer="fast_run").excluding(
        "scan_pushout_add", "rnnc_contiguous_invariants"
    )
    return (
        function(inputs, outputs, "c"),
        pytensor.function(inputs, outputs, mode=plain),
    )


def test_the_backward_loop_gets_the_transposed_weight_as_a_row_major_copy(compiled):
    rewritten, plain = compiled
    (copied,) = _copied_invariants(rewritten)
    assert layout._transposed(copied.owner.inputs[0])
    assert _copied_invariants(plain) == []


def test_the_copy_changes_no_value(compiled):
    rewritten, plain = compiled
    rng = np.random.default_rng(0)
    args = rng.normal(size=(6, 3, 4)), rng.normal(size=(4, 4)) / 2, rng.normal(size=4)
    for got, want in zip(rewritten(*args), plain(*args), strict=True):
        np.testing.assert_array_equal(got, want)


def test_only_axes_put_in_another_order_count_as_transposed():
    m = pt.matrix("m")
    v = pt.vector("v")
    assert layout._transposed(m.T)
    assert layout._transposed(pt.tensor3("t").dimshuffle(0, "x", 2, 1))
    assert not layout._transposed(m)
    assert not layout._transposed(v.dimshuffle("x", 0))
    assert not layout._transposed(m.dimshuffle(0, "x", 1))


def test_the_jax_backend_keeps_its_own_layouts():
    pytest.importorskip("jax")
    inputs, outputs = _rnn_and_gradient()
    assert _copied_invariants(function(inputs, outputs, "jax")) == []
