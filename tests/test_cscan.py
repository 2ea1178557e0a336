"""The C backend's scans: rnnc.cscan's row-major loop invariants and sums updated in
place, and the PyTensor scan rewrites that rnnc's C mode leaves out."""

from __future__ import annotations

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest
from pytensor.compile.mode import Mode
from pytensor.scan.op import Scan
from pytensor.tensor.elemwise import Elemwise
from pytensor.tensor.extra_ops import CpuContiguous

from rnnc import cache, cscan
from rnnc.compile import function
from rnnc.simd import VectorElemwise


def _rnn_and_gradient():
    """``h_t = tanh(x_t + h_{t-1} @ W + b)``: the backward loop multiplies by ``W.T``
    and sums the gradients of ``W`` and ``b`` over the steps."""
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


def _scans(fn) -> list:
    return [node for node in fn.maker.fgraph.toposort() if isinstance(node.op, Scan)]


def _copied_invariants(fn) -> list:
    """The scans' non-sequences that are CpuContiguous outputs."""
    return [
        var
        for node in _scans(fn)
        for var in node.op.outer_non_seqs(node.inputs)
        if var.owner is not None and isinstance(var.owner.op, CpuContiguous)
    ]


@pytest.fixture(scope="module")
def compiled():
    inputs, outputs = _rnn_and_gradient()
    cache.configure("c")
    plain = Mode(linker="cvm", optimizer="fast_run").excluding(
        "scan_pushout_add", "rnnc_scan_for_c"
    )
    return (
        function(inputs, outputs, "c"),
        pytensor.function(inputs, outputs, mode=plain),
    )


def test_the_backward_loop_gets_the_transposed_weight_as_a_row_major_copy(compiled):
    rewritten, plain = compiled
    (copied,) = _copied_invariants(rewritten)
    assert cscan._transposed(copied.owner.inputs[0])
    assert _copied_invariants(plain) == []


def test_the_weight_gradient_sums_become_untraced_states(compiled):
    rewritten, plain = compiled
    (grad_scan,) = [s for s in _scans(rewritten) if s.op.info.n_mit_mot]
    assert grad_scan.op.info.n_untraced_sit_sot == 2  # dW and db
    assert grad_scan.op.info.n_sit_sot == 0
    assert {s.op.info.n_untraced_sit_sot for s in _scans(plain)} == {0}


def test_a_state_whose_every_step_is_used_keeps_its_trace(compiled):
    rewritten, _ = compiled
    (forward,) = [s for s in _scans(rewritten) if not s.op.info.n_mit_mot]
    assert forward.op.info.n_sit_sot == 1 and forward.op.info.n_untraced_sit_sot == 0


@pytest.mark.parametrize("steps", [1, 2, 7])
def test_the_rewrites_change_no_value(compiled, steps):
    rewritten, plain = compiled
    rng = np.random.default_rng(steps)
    args = rng.normal(size=(steps, 3, 4)), rng.normal(size=(4, 4)) / 2, rng.normal(size=4)
    for got, want in zip(rewritten(*args), plain(*args), strict=True):
        np.testing.assert_array_equal(got, want)


def _computed_before_the_backward_loop(fn) -> list:
    """Elementwise ops between the backward scan and its sequences (which are views
    of the forward scan's outputs or of the function's inputs)."""
    (grad_scan,) = [s for s in _scans(fn) if s.op.info.n_mit_mot]
    found = []
    for var in grad_scan.op.outer_seqs(grad_scan.inputs):
        while var.owner is not None and not isinstance(var.owner.op, Scan):
            if isinstance(var.owner.op, Elemwise | VectorElemwise):
                found.append(var.owner)
            var = var.owner.inputs[0]
    return found


def test_elementwise_work_on_sequences_stays_in_the_backward_loop(compiled):
    """PyTensor's ``scan_pushout_seqs_ops`` computes ``1 - h**2`` for all steps before
    the backward loop, a pass and an array of its own; the C mode leaves it out."""
    rewritten, plain = compiled
    assert _computed_before_the_backward_loop(plain)
    assert _computed_before_the_backward_loop(rewritten) == []


def test_only_axes_put_in_another_order_count_as_transposed():
    m = pt.matrix("m")
    v = pt.vector("v")
    assert cscan._transposed(m.T)
    assert cscan._transposed(pt.tensor3("t").dimshuffle(0, "x", 2, 1))
    assert not cscan._transposed(m)
    assert not cscan._transposed(v.dimshuffle("x", 0))
    assert not cscan._transposed(m.dimshuffle(0, "x", 1))


def test_the_jax_backend_keeps_its_own_layouts():
    pytest.importorskip("jax")
    inputs, outputs = _rnn_and_gradient()
    assert _copied_invariants(function(inputs, outputs, "jax")) == []
