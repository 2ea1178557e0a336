"""The C backend's scans: rnnc.cscan's rewrites (row-major and padded loop invariants,
sums updated in place and kept transposed, elementwise work on transposes), and the
scan rewrites the C and Numba modes leave out."""

from __future__ import annotations

import numpy as np
import pytensor
import pytensor.scalar as ps
import pytensor.tensor as pt
import pytest
from pytensor.compile.aliasing import add_supervisor_to_fgraph
from pytensor.compile.io import In
from pytensor.compile.mode import Mode
from pytensor.compile.ops import DeepCopyOp
from pytensor.graph.fg import FunctionGraph
from pytensor.scan.op import Scan
from pytensor.tensor.blas import Gemm
from pytensor.tensor.elemwise import Elemwise
from pytensor.tensor.extra_ops import CpuContiguous
from pytensor.tensor.math import Dot
from pytensor.tensor.shape import Reshape, SpecifyShape
from pytensor.tensor.subtensor import IncSubtensor

import rnnc
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
    """The scans of a compiled function, or of a rewritten FunctionGraph."""
    fgraph = fn if isinstance(fn, FunctionGraph) else fn.maker.fgraph
    return [node for node in fgraph.toposort() if isinstance(node.op, Scan)]


def _copied_invariants(fn) -> list:
    """The scans' non-sequences that are row-major copies."""
    return [
        var
        for node in _scans(fn)
        for var in node.op.outer_non_seqs(node.inputs)
        if var.owner is not None and isinstance(var.owner.op, cscan.RowMajorCopy)
    ]


def _rewritten_and_plain(inputs, outputs):
    """The function compiled by rnnc's C mode (its bookkeeping compiled too, so that
    the graph shows PyTensor's operations: ``RNNC_INTERPRETED=0``), and by PyTensor's
    without rnnc's scan rewrites."""
    cache.configure("c")
    plain = Mode(linker="cvm", optimizer="fast_run").excluding(
        "scan_pushout_add", "rnnc_scan_for_c", "rnnc_sums_after_loop", "rnnc_own_state_buffers"
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RNNC_INTERPRETED", "0")
        rewritten = function(inputs, outputs, "c")
    return rewritten, pytensor.function(inputs, outputs, mode=plain)


@pytest.fixture(scope="module")
def compiled():
    return _rewritten_and_plain(*_rnn_and_gradient())


def test_the_backward_loop_gets_the_transposed_weight_as_a_row_major_copy(compiled):
    rewritten, plain = compiled
    (copied,) = _copied_invariants(rewritten)
    assert cscan._transposed(copied.owner.inputs[0])
    assert _copied_invariants(plain) == []


def test_the_weight_gradient_sums_become_untraced_states(compiled):
    rewritten, plain = compiled
    (grad_scan,) = [s for s in _scans(rewritten) if s.op.info.n_mit_mot]
    assert grad_scan.op.info.n_untraced_sit_sot == 1  # dW; db is summed after the loop
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
    # Bitwise equal in a process of its own; after tests/test_mklpacked.py has linked
    # MKL in the same process (one pytest worker), the last bit may differ.
    for got, want in zip(rewritten(*args), plain(*args), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-14, atol=1e-15)


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


def test_the_numba_mode_keeps_elementwise_work_on_sequences_in_the_loop_too():
    inputs, outputs = _rnn_and_gradient()
    fgraph = FunctionGraph(inputs, outputs, clone=True)
    add_supervisor_to_fgraph(fgraph, [In(var) for var in fgraph.inputs])
    rnnc.compile.mode("numba").optimizer.rewrite(fgraph)  # rewritten, not compiled
    assert _computed_before_the_backward_loop(fgraph) == []


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


def _wide_rnn_and_gradient():
    """``h_t = tanh(x_t + (h_{t-1} @ W) @ V)`` with static shapes: ``W`` is [4, 256]
    (float64 rows of 2 KB) and its gradient a sum wider than tall."""
    x = pt.tensor3("x", dtype="float64")
    w = pt.tensor("w", dtype="float64", shape=(4, 256))
    v = pt.tensor("v", dtype="float64", shape=(256, 4))
    h0 = pt.zeros((x.shape[1], 4), dtype="float64")
    hs = pytensor.scan(
        lambda xt, h, w, v: pt.tanh(xt + (h @ w) @ v),
        sequences=[x],
        outputs_info=[h0],
        non_sequences=[w, v],
        return_updates=False,
    )
    return [x, w, v], [hs, *pytensor.grad((hs**2).sum(), [x, w, v])]


@pytest.fixture(scope="module")
def wide():
    return _rewritten_and_plain(*_wide_rnn_and_gradient())


def test_invariants_with_rows_of_a_multiple_of_2kb_get_padded_rows(wide):
    rewritten, plain = wide
    forward, backward = sorted(_scans(rewritten), key=lambda s: s.op.info.n_mit_mot)
    for scan, count in [(forward, 1), (backward, 2)]:  # W; W and the copy of V.T
        padded = [
            var
            for var in scan.op.outer_non_seqs(scan.inputs)
            if var.owner is not None and isinstance(var.owner.op, cscan.PadRows)
        ]
        assert [var.type.shape for var in padded] == [(4, 256)] * count
    assert not any(isinstance(n.op, cscan.PadRows) for n in plain.maker.fgraph.apply_nodes)


def test_a_wide_weight_gradient_sum_is_kept_transposed(wide):
    rewritten, _ = wide
    (grad_scan,) = [s for s in _scans(rewritten) if s.op.info.n_mit_mot]
    sums = grad_scan.op.inner_untraced_sit_sot(grad_scan.op.inner_inputs)
    assert sorted(var.type.shape for var in sums) == [(256, 4), (256, 4)]  # dW.T, dV
    # the transposed sum starts from zeros of its own shape, not a transposed copy
    starts = grad_scan.op.outer_untraced_sit_sot(grad_scan.inputs)
    copies = (CpuContiguous, cscan.RowMajorCopy)
    assert not any(isinstance(v.owner.op, copies) for v in starts if v.owner)


@pytest.mark.parametrize("steps", [1, 5])
def test_padding_and_transposing_change_no_value(wide, steps):
    rewritten, plain = wide
    rng = np.random.default_rng(steps)
    args = (
        rng.normal(size=(steps, 3, 4)),
        rng.normal(size=(4, 256)) / 8,
        rng.normal(size=(256, 4)) / 8,
    )
    for got, want in zip(rewritten(*args), plain(*args), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)


def test_only_matrices_of_several_rows_get_padded_rows():
    """A bias added in the loop is one ``[1, 1024]`` row: no other row to alias."""
    shapes = {(1, 1024): False, (2, 1024): True, (None, 1024): True, (2, 1000): False}
    for shape, padded in shapes.items():
        assert cscan._aliased_rows(pt.tensor(dtype="float32", shape=shape)) is padded


def test_pad_rows_copies_into_rows_a_cache_line_longer():
    x = np.arange(12.0, dtype="float32").reshape(3, 4)
    node = cscan.PadRows().make_node(pt.as_tensor(x))
    out = [[None]]
    node.op.perform(node, [x], out)
    got = out[0][0]
    np.testing.assert_array_equal(got, x)
    assert got.strides == ((4 + cscan.ROW_PAD_BYTES // 4) * 4, 4)


def test_a_masked_lstm_with_padded_weights_equals_pytensors_own_graph(monkeypatch):
    """H=64 in float64: ``W_h`` is ``[64, 256]``, rows of 2 KB, so the forward loop gets
    it padded (where no packed product lays it out) and the backward loop keeps
    ``dW_h`` transposed; with a mask of lengths (padded steps keep the state) the C
    function equals the Python backend's, which runs none of rnnc's scan rewrites."""
    monkeypatch.setenv("RNNC_MKL_PACKED", "0")
    monkeypatch.setenv("RNNC_PANEL_GEMM", "0")
    results = []
    for backend in ["python", "c"]:  # C last: the backend the other tests set up
        cache.configure(backend)
        layer = rnnc.Recurrent("lstm", I=5, H=64, dtype="float64", backend=backend, seed=3)
        x = pt.tensor3("x", dtype="float64")
        lengths = pt.vector("lengths", dtype="int64")
        y = layer(x, lengths=lengths).outputs["y"]
        grads = pytensor.grad((y**2).sum(), [x, *layer.params.values()])
        fn = function([x, lengths], [y, *grads], backend)
        if backend == "c":
            nodes = fn.maker.fgraph.apply_nodes
            assert any(isinstance(node.op, cscan.PadRows) for node in nodes)
        rng = np.random.default_rng(0)
        results.append(fn(rng.normal(size=(4, 9, 5)), np.array([9, 3, 7, 1])))
    for got, want in zip(*results, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def _elementwise_on_transposes(fn) -> list:
    return [
        node
        for node in fn.maker.fgraph.toposort()
        if isinstance(node.op, Elemwise | VectorElemwise)
        and any(cscan._matrix_transpose(v) for v in node.inputs)
    ]


def test_elementwise_work_on_transposed_matrices_runs_on_the_matrices():
    """``(f * h).T @ g``: PyTensor moves the transpose into the product's factors; the
    rewrite multiplies the untransposed matrices and hands the product their result's
    transposed view."""
    f, h, g = pt.matrices("f", "h", "g")
    rewritten, plain = _rewritten_and_plain([f, h, g], [(pt.sigmoid(f) * h).T @ g * 2])
    assert _elementwise_on_transposes(plain)
    assert not _elementwise_on_transposes(rewritten)
    values = [np.random.default_rng(k).normal(size=(4, 3)) for k in range(3)]
    np.testing.assert_allclose(rewritten(*values), plain(*values), rtol=1e-14)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize(
    "view",
    ["transposed", "row-major", "strided", "one column", "empty", "transposed 4 KB rows"],
)
def test_row_major_copy_copies_any_matrix_view(dtype, view):
    x = pt.matrix("x", dtype=dtype)
    fn = function([x], cscan.RowMajorCopy()(x), "c")
    assert any(isinstance(n.op, cscan.RowMajorCopy) for n in fn.maker.fgraph.apply_nodes)
    rng = np.random.default_rng(0)
    base = rng.standard_normal((19, 30)).astype(dtype)
    value = {
        "transposed": base.T,
        "row-major": base,
        "strided": base[::2, 1::3],
        "one column": base[:, 4:5],
        "empty": base[:0],
        "transposed 4 KB rows": rng.standard_normal((33, 1024)).astype(dtype).T,
    }[view]
    for _ in range(2):  # the second call writes into the first call's output
        got = fn(value)
        assert got.flags.c_contiguous
        np.testing.assert_array_equal(got, value)


@pytest.fixture(scope="module")
def lstm_gradient():
    """An LSTM's outputs and gradients, float64, compiled by rnnc's C mode and by
    PyTensor's."""
    layer = rnnc.Recurrent("lstm", I=3, H=4, dtype="float64", backend="c", seed=0)
    x = pt.tensor3("x", dtype="float64")
    y = layer(x).outputs["y"]
    grads = pytensor.grad((y**2).sum(), [x, *layer.params.values()])
    return _rewritten_and_plain([x], [y, *grads])


def _reversed_scan_outputs_copied(fn) -> list:
    """The increments of zeros by a scan's output reversed in time."""
    return [
        node
        for node in fn.maker.fgraph.apply_nodes
        if isinstance(node.op, IncSubtensor) and cscan._reversed_steps(node.inputs[1]) is not None
    ]


def test_the_gate_gradients_are_multiplied_as_the_backward_loop_wrote_them(lstm_gradient):
    rewritten, plain = lstm_gradient
    assert _reversed_scan_outputs_copied(rewritten) == []
    assert _reversed_scan_outputs_copied(plain) != []
    rng = np.random.default_rng(1)
    for shape in [(2, 5, 3), (3, 1, 3)]:  # a batch, and a sequence of one step
        x = rng.standard_normal(shape)
        for got, want in zip(rewritten(x), plain(x), strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def _reversed_scan_outputs_reshaped(fn) -> list:
    """Reshapes into rows of a scan's output reversed in time (a copy)."""
    found = []
    for node in fn.maker.fgraph.apply_nodes:
        if isinstance(node.op, Reshape):
            source = node.inputs[0]
            if source.owner is not None and isinstance(source.owner.op, SpecifyShape):
                source = source.owner.inputs[0]
            if cscan._reversed_steps(source) is not None:
                found.append(node)
    return found


def test_gate_gradients_of_a_sequence_of_static_length_are_not_copied_either():
    """With the number of steps known (a training batch's static shape) PyTensor
    reverses the loop's gradients without the copy into zeros; the products take them
    as the loop wrote them all the same."""
    layer = rnnc.Recurrent("lstm", I=3, H=4, dtype="float64", backend="c", seed=0)
    x = pt.tensor("x", dtype="float64", shape=(2, 5, 3))
    y = layer(x).outputs["y"]
    grads = pytensor.grad((y**2).sum(), [x, *layer.params.values()])
    rewritten, plain = _rewritten_and_plain([x], [y, *grads])
    assert _reversed_scan_outputs_reshaped(rewritten) == []
    assert _reversed_scan_outputs_reshaped(plain) != []
    value = np.random.default_rng(4).standard_normal((2, 5, 3))
    for got, want in zip(rewritten(value), plain(value), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def _copied_buffers(fn) -> int:
    """Copies of a freshly allocated buffer that the function makes."""
    return sum(
        isinstance(n.op, DeepCopyOp)
        and n.inputs[0].owner is not None
        and isinstance(n.inputs[0].owner.op, IncSubtensor)
        for n in fn.maker.fgraph.apply_nodes
    )


def test_each_state_starts_in_a_buffer_of_its_own(lstm_gradient):
    """``h`` and ``c`` start from the same zeros written into one new buffer: PyTensor
    copies it so that the loop can write each state into its own; rnnc allocates two
    (the values: the test above)."""
    rewritten, plain = lstm_gradient
    assert (_copied_buffers(rewritten), _copied_buffers(plain)) == (0, 1)


#: A minimal gated unit: its weight gradients ``h.T @ g_f`` and ``(f * h).T @ g_n``
#: stay sums in the backward loop (``f * h`` is made in the step), two untraced
#: states of one shape that start from the same zeros.
MGU = """
cell mgu(x: [I]) -> (y: [H]):
    state h: [H] = 0
    f = sigmoid(x @ W_xf + h @ W_hf)
    n = tanh(x @ W_xn + (f * h) @ W_hn)
    h' = (1 - f) * h + f * n
    y = h'
"""


def test_sums_in_the_loop_start_in_buffers_of_their_own(monkeypatch):
    """PyTensor gives a scan's untraced states that start from views of one buffer
    none to update in place (it would be written twice), so each step's product
    copied its sum first; rnnc allocates one buffer each and the products add in
    place."""
    layer = rnnc.Recurrent(rnnc.parse(MGU)["mgu"], I=3, H=4, dtype="float64", backend="c", seed=0)
    x = pt.tensor3("x", dtype="float64")
    y = layer(x).outputs["y"]
    grads = pytensor.grad((y**2).sum(), [x, *layer.params.values()])

    def in_place(fn):  # the backward step's products into its sums: in place or not
        return [
            bool(inner.op.destroy_map)
            for node in _scans(fn)
            for inner in node.op.fn.maker.fgraph.apply_nodes
            if isinstance(inner.op, Gemm)
            and inner.inputs[0] in node.op.inner_untraced_sit_sot(node.op.fn.maker.fgraph.inputs)
        ]

    own = function([x], [y, *grads], "c")
    monkeypatch.setattr(cscan.local_own_state_buffers, "fn", lambda fgraph, node: None)
    shared = function([x], [y, *grads], "c")
    assert (in_place(own), in_place(shared)) == ([True, True], [False, False])
    value = np.random.default_rng(5).standard_normal((2, 5, 3))
    for got, want in zip(own(value), shared(value), strict=True):
        np.testing.assert_array_equal(got, want)


def test_a_sum_of_another_shape_stays_in_the_loop():
    """``S_t = S_{t-1} + expand_dims(sum(x_t, 0), 0)``: the term is no sum over rows of
    the state's shape (its ``ExpandDims`` hides none), so the sum stays in the loop,
    and the rewrite neither fails nor loops."""
    x = pt.tensor3("x", dtype="float64")
    s0 = pt.zeros((1, x.shape[2]), dtype="float64")
    states = pytensor.scan(
        lambda xt, s: s + pt.expand_dims(xt.sum(axis=0), 0),
        sequences=[x],
        outputs_info=[s0],
        return_updates=False,
    )
    with pytensor.config.change_flags(on_opt_error="raise"):
        fn = function([x], states[-1], "c")
    xv = np.random.default_rng(0).standard_normal((4, 3, 5))
    np.testing.assert_allclose(fn(xv), xv.sum(axis=(0, 1))[None, :], rtol=1e-12)
    expanded = pt.expand_dims(x, 0)
    assert cscan._without_broadcast_axes(expanded) is expanded


def _summed_states(fn) -> int:
    """The states of the function's backward loop (a weight gradient's sum)."""
    (grad_scan,) = [s for s in _scans(fn) if s.op.info.n_mit_mot]
    return grad_scan.op.info.n_sit_sot + grad_scan.op.info.n_untraced_sit_sot


def test_a_weight_gradient_of_per_step_factors_is_one_product_after_the_loop(lstm_gradient):
    """``dW_h = sum_t h_{t-1}.T @ g_t``: ``h`` is a sequence of the backward loop and
    ``g`` (the gates' gradients) one of its per-step outputs, so the sum is one
    product after the loop (the values: the test above), through the BLAS; the
    biases, added in the loop, have their gradient ``sum_t sum(g_t, axis=0)`` summed
    after it too."""
    rewritten, plain = lstm_gradient
    assert (_summed_states(rewritten), _summed_states(plain)) == (0, 2)
    # the sums start from zeros: the products are the gradients, nothing added to them
    assert not any(
        isinstance(getattr(n.op, "scalar_op", None), ps.Add) and any(map(cscan._zeros, n.inputs))
        for n in rewritten.maker.fgraph.apply_nodes
    )
    # every product outside the loops is BLAS's Dot22: none left to NumPy's Dot
    outside = [n.op for n in rewritten.maker.fgraph.apply_nodes]
    assert not any(type(op) is Dot for op in outside)
