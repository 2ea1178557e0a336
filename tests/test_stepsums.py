"""rnnc.stepsums: on JAX, a product summed over the steps of sequences reads them in
time order and its left operand as a transposed matrix of rows, with the same
result."""

from __future__ import annotations

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest
from pytensor.graph.fg import FunctionGraph
from pytensor.graph.rewriting.basic import dfs_rewriter
from pytensor.graph.rewriting.utils import rewrite_graph
from pytensor.graph.traversal import io_toposort
from pytensor.tensor.elemwise import DimShuffle
from pytensor.tensor.math import Dot
from pytensor.tensor.subtensor import Subtensor, get_idx_list

from rnnc.compile import function
from rnnc.stepsums import as_rows, local_sum_over_steps

T, B, K, N = 4, 3, 5, 2


def _rewritten(outputs, inputs):
    """The graph of ``outputs`` after the rewrite alone, and whether it applied."""
    fgraph = FunctionGraph(inputs, outputs, clone=True)
    before = [node.inputs for node in fgraph.toposort() if isinstance(node.op, Dot)]
    dfs_rewriter(local_sum_over_steps, ignore_newtrees=True).rewrite(fgraph)
    after = [node.inputs for node in fgraph.toposort() if isinstance(node.op, Dot)]
    return fgraph, before != after


def _reversed_steps(var) -> int:
    """How many slices with a step of -1 the graph of ``var`` has."""
    count = 0
    for node in io_toposort([], [var]):
        if isinstance(node.op, Subtensor):
            index = get_idx_list(node.inputs, node.op.idx_list)
            count += any(getattr(getattr(s, "step", None), "data", None) == -1 for s in index)
    return count


def _evaluate(fgraph, values):
    fn = pytensor.function(fgraph.inputs, fgraph.outputs, mode="FAST_COMPILE")
    return fn(*values)[0]


@pytest.fixture
def values():
    rng = np.random.default_rng(0)
    return rng.normal(size=(T, B, K)), rng.normal(size=(T, B, K)), rng.normal(size=(T, B, N))


def test_a_sum_over_reversed_steps_reads_them_in_time_order(values):
    """``(f[::-1] * h[::-1])`` transposed to ``[K, T*B]`` times ``g[::-1]`` as rows: the
    form of a weight gradient moved out of a backward loop."""
    f, h, g = (
        pt.tensor3(n, dtype="float64", shape=v.shape) for n, v in zip("fhg", values, strict=True)
    )
    left = (f[::-1] * h[::-1]).dimshuffle(2, 0, 1).reshape((K, -1))
    right = g[::-1].reshape((T * B, N))
    fgraph, applied = _rewritten([pt.dot(left, right)], [f, h, g])
    assert applied
    # each operand reversed twice, which PyTensor merges into no reversal at all
    assert _reversed_steps(pt.dot(left, right)) == 3
    assert _reversed_steps(rewrite_graph(fgraph.outputs[0], include=("canonicalize",))) == 0
    want = np.einsum("tbk,tbn->kn", values[0] * values[1], values[2])
    np.testing.assert_allclose(_evaluate(fgraph, values), want, rtol=1e-12)


def _transposes_of_3d(var) -> int:
    return sum(
        isinstance(node.op, DimShuffle) and set(node.op.new_order) == {0, 1, 2}
        for node in io_toposort([], [var])
    )


def test_a_transposed_sequence_becomes_a_transposed_matrix_of_rows(values):
    """``reshape(transpose(f * h, (2, 0, 1)), [K, T*B])`` as ``reshape(f * h).T``,
    the transposes of ``f`` and ``h`` taken out of the product of the two."""
    f, h, _ = values
    fv, hv = pt.tensor3("f", shape=f.shape), pt.tensor3("h", shape=h.shape)
    left = (fv.dimshuffle(2, 0, 1) * hv.dimshuffle(2, 0, 1) * 2.0).reshape((K, -1))
    rows = as_rows(left)
    assert rows is not None and _transposes_of_3d(rows) == 0
    fn = pytensor.function([fv, hv], rows, mode="FAST_COMPILE")
    np.testing.assert_allclose(fn(f, h), (2 * f * h).reshape(T * B, K).T, rtol=1e-14)
    wrong = (fv.dimshuffle(1, 0, 2) * 2.0).reshape((B, -1))  # another transpose
    assert as_rows(wrong) is None


def test_a_transposed_matrix_of_rows_is_recognised(values):
    """``reshape(h[::-1], [T*B, K]).T @ reshape(g[::-1], [T*B, N])``."""
    _, h, g = values
    hv, gv = pt.tensor3("h", shape=h.shape), pt.tensor3("g", shape=g.shape)
    out = pt.dot(hv[::-1].reshape((T * B, K)).T, gv[::-1].reshape((T * B, N)))
    fgraph, applied = _rewritten([out], [hv, gv])
    assert applied
    np.testing.assert_allclose(
        _evaluate(fgraph, (h, g)), np.einsum("tbk,tbn->kn", h, g), rtol=1e-12
    )


@pytest.mark.parametrize("case", ["one operand in time order", "steps and batch differ"])
def test_products_it_must_leave_alone(case):
    h = pt.tensor3("h", dtype="float64", shape=(T, B, K))
    if case == "one operand in time order":
        g = pt.tensor3("g", dtype="float64", shape=(T, B, N))
        right = g.reshape((T * B, N))
    else:  # the same number of rows, from B steps of T: reversing them differs
        g = pt.tensor3("g", dtype="float64", shape=(B, T, N))
        right = g[::-1].reshape((T * B, N))
    out = pt.dot(h[::-1].reshape((T * B, K)).T, right)
    assert not _rewritten([out], [h, g])[1]


def test_a_step_other_than_minus_one_is_left_alone():
    h = pt.tensor3("h", dtype="float64", shape=(2 * T, B, K))
    g = pt.tensor3("g", dtype="float64", shape=(T, B, N))
    out = pt.dot(h[::-2].reshape((T * B, K)).T, g[::-1].reshape((T * B, N)))
    assert not _rewritten([out], [h, g])[1]


def test_the_gradient_of_a_cell_on_jax_is_unchanged():
    """The custom cell's weight gradients on JAX, moved out of the backward loop and
    reversed in time, with and without the rewrite."""
    pytest.importorskip("jax")
    import rnnc
    import rnnc.compile as compile_module

    spec = rnnc.parse(
        "cell mgu(x: [I]) -> (y: [H]):\n"
        "    state h: [H] = 0\n"
        "    f = sigmoid(x @ W_xf + h @ W_hf + b_f)\n"
        "    n = tanh(x @ W_xn + (f * h) @ W_hn + b_n)\n"
        "    h' = (1 - f) * h + f * n\n"
        "    y = h'\n"
    )["mgu"]
    layer = rnnc.Recurrent(spec, I=3, H=4, dtype="float64", backend="jax", seed=0)
    x = pt.tensor3("x", dtype="float64", shape=(2, 5, 3))
    params = list(layer.params.values())
    loss = (layer(x).outputs["y"] ** 2).sum()
    grads = pytensor.grad(loss, params)
    plain_mode = compile_module.mode("jax").excluding("rnnc_sums_over_steps")
    plain = pytensor.function([x], grads, mode=plain_mode)
    rewritten = function([x], grads, "jax")
    value = np.random.default_rng(2).normal(size=(2, 5, 3))
    reversed_in = [_reversed_steps(o) for o in rewritten.maker.fgraph.outputs]
    reversed_plain = [_reversed_steps(o) for o in plain.maker.fgraph.outputs]
    assert reversed_in != reversed_plain  # the rewrite applied
    for got, want in zip(rewritten(value), plain(value), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)
