"""Elementwise work as vector loops in the C backend (rnnc.simd)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest
from conftest import op_types
from pytensor.graph.fg import FunctionGraph
from pytensor.link.c.basic import CLinker
from pytensor.scalar.math import Softplus
from pytensor.tensor.elemwise import Elemwise

from rnnc import simd
from rnnc.compile import function
from rnnc.ops import BranchFreeSoftplus

pytestmark = pytest.mark.skipif(
    not simd.in_use(),
    reason="no g++ and libmvec here, or RNNC_SIMD=0",
)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_fused_elementwise_gives_numpys_values_on_every_layout(dtype):
    """Inputs as rows one step apart (a column block of a wider matrix), copied (a
    transposed matrix), contiguous; outputs several."""
    wide = pt.matrix("wide", dtype=dtype)
    t = pt.matrix("t", dtype=dtype)
    a, b = wide[:, :7], wide[:, 7:]
    c = t.T
    out1 = pt.sigmoid(a) * pt.exp(-b) + pt.log(c * c + 1)
    out2 = pt.tanh(a + c) - b
    fn = function([wide, t], [out1, out2], "c")
    assert simd.VectorElemwise in op_types(fn) and Elemwise not in op_types(fn)
    rng = np.random.default_rng(0)
    w = rng.normal(size=(5, 14)).astype(dtype)
    tv = rng.normal(size=(7, 5)).astype(dtype)
    av, bv, cv = w[:, :7], w[:, 7:], tv.T
    tol = 1e-6 if dtype == "float32" else 1e-13
    got1, got2 = fn(w, tv)
    np.testing.assert_allclose(
        got1, 1 / (1 + np.exp(-av)) * np.exp(-bv) + np.log(cv * cv + 1), rtol=tol
    )
    np.testing.assert_allclose(got2, np.tanh(av + cv) - bv, rtol=tol, atol=tol)


def test_three_dimensional_inputs_with_gaps_are_copied_first():
    x = pt.tensor3("x", dtype="float64")
    y = pt.exp(x[:, ::2, :]) * x[:, 1::2, :]
    fn = function([x], y, "c")
    assert simd.VectorElemwise in op_types(fn)
    xv = np.random.default_rng(1).normal(size=(3, 4, 5))
    np.testing.assert_allclose(fn(xv), np.exp(xv[:, ::2]) * xv[:, 1::2], rtol=1e-13)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_bias_repeated_for_every_row_is_read_in_place(dtype):
    x = pt.tensor3("x", dtype=dtype)
    bias = pt.vector("bias", dtype=dtype)
    fn = function([x, bias], pt.sigmoid(x * 2 + bias), "c")
    assert simd.VectorElemwise in op_types(fn)
    rng = np.random.default_rng(2)
    xv = rng.normal(size=(3, 4, 5)).astype(dtype)
    bv = rng.normal(size=10).astype(dtype)[::2]  # elements apart: copied first
    tol = 1e-6 if dtype == "float32" else 1e-13
    np.testing.assert_allclose(fn(xv, bv), 1 / (1 + np.exp(-(xv * 2 + bv))), rtol=tol)


@pytest.mark.parametrize("mask_dtype", ["bool", "int8", "float64"])
def test_a_mask_per_example_and_a_single_value_are_read_once_per_row(mask_dtype):
    """``switch(mask[:, None], new, old)``, as a masked step does, and a 0-d input."""
    x = pt.tensor3("x", dtype="float64")
    old = pt.tensor3("old", dtype="float64")
    mask = pt.matrix("mask", dtype=mask_dtype)
    scale = pt.scalar("scale", dtype="float64")
    y = pt.switch(mask[:, :, None], pt.exp(x) * scale, old)
    fn = function([x, old, mask, scale], y, "c")
    assert simd.VectorElemwise in op_types(fn)
    rng = np.random.default_rng(4)
    xv, ov = rng.normal(size=(2, 6, 5)), rng.normal(size=(2, 6, 5))
    mv = (rng.random(size=(2, 6)) > 0.5).astype(mask_dtype)
    got = fn(xv, ov, mv, 1.5)
    np.testing.assert_allclose(got, np.where(mv[:, :, None], np.exp(xv) * 1.5, ov), rtol=1e-13)
    with pytest.raises(ValueError):  # a mask of another batch
        fn(xv, ov, mv[:1], 1.5)


def test_other_broadcasting_and_other_outputs_stay_with_pytensor():
    x = pt.matrix("x", dtype="float32")
    cube = pt.tensor3("cube", dtype="float32")
    fn = function([cube, x], pt.exp(cube) * x[None, :, :], "c")  # repeated along axis 0 only
    assert simd.VectorElemwise not in op_types(fn)
    fn = function([x], [pt.exp(x), x > 0], "c")  # a bool output
    assert all(
        not isinstance(n.op, simd.VectorElemwise) or n.outputs[0].dtype == "float32"
        for n in fn.maker.fgraph.toposort()
    )


def test_rnnc_simd_0_switches_it_off(monkeypatch):
    monkeypatch.setenv("RNNC_SIMD", "0")
    x = pt.matrix("x", dtype="float64")
    fn = function([x], pt.exp(x) * 2, "c")
    assert simd.VectorElemwise not in op_types(fn)
    np.testing.assert_allclose(fn(np.ones((2, 2))), 2 * np.e * np.ones((2, 2)))


SWITCHED_OFF_FIRST = """
import os
import pytensor.tensor as pt
from rnnc import simd
from rnnc.compile import function

x = pt.matrix("x", dtype="float64")
os.environ["RNNC_SIMD"] = "0"
off = function([x], pt.exp(x) * 2, "c")
del os.environ["RNNC_SIMD"]
on = function([x], pt.exp(x) * 3, "c")
print(*(any(isinstance(n.op, simd.VectorElemwise) for n in f.maker.fgraph.apply_nodes)
        for f in (off, on)))
"""


def test_switched_off_at_the_first_set_up_is_on_again_without_the_switch():
    """The rewrite is registered once per process: ``RNNC_SIMD=0`` when the C backend
    is first set up must not keep the loops off for the rest of the process."""
    out = subprocess.run(
        [sys.executable, "-c", SWITCHED_OFF_FIRST], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["False", "True"]


def test_unequal_shapes_are_an_error_not_a_crash():
    x = pt.matrix("x", dtype="float64")
    y = pt.matrix("y", dtype="float64")
    fn = function([x, y], pt.exp(x) + y, "c")
    assert simd.VectorElemwise in op_types(fn)
    with pytest.raises(ValueError):
        fn(np.ones((2, 3)), np.ones((3, 2)))


def test_the_loop_calls_the_vector_exp():
    """g++ takes a loop in PyTensor's generated function for a cold path and does not
    vectorise it; the loop is a function of its own so that it does: the module must
    call one of libmvec's vector ``expf`` (``_ZGV...v_expf``)."""
    x = pt.matrix("x", dtype="float32")
    node = simd.VectorElemwise(pt.exp(x).owner.op.scalar_op).make_node(x)
    module = CLinker().accept(FunctionGraph([x], node.outputs)).compile_cmodule()
    with open(module.__file__, "rb") as f:
        assert b"v_expf" in f.read()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_every_function_of_the_cell_language_vectorises_right(dtype):
    """``softplus`` (``exp``, ``log1p``, branches), ``pow``, ``sqrt``, ``abs``,
    PyTensor's ``tanh``: NumPy's values, and vector calls where this glibc has them."""
    x = pt.matrix("x", dtype=dtype)
    y = pt.matrix("y", dtype=dtype)
    out = pt.softplus(x) + pt.abs(x) ** y + pt.tanh(x) + pt.log1p(x * x) + pt.sqrt(pt.abs(y))
    fn = function([x, y], out, "c")
    assert simd.VectorElemwise in op_types(fn)
    rng = np.random.default_rng(3)
    xv, yv = (rng.normal(size=(4, 33)).astype(dtype) for _ in range(2))
    expected = (
        np.log1p(np.exp(xv))
        + np.abs(xv) ** yv
        + np.tanh(xv)
        + np.log1p(xv * xv)
        + np.sqrt(np.abs(yv))
    )
    np.testing.assert_allclose(fn(xv, yv), expected, rtol=1e-5 if dtype == "float32" else 1e-13)
    if "log1p" in simd.declarations():
        [node] = [n for n in fn.maker.fgraph.toposort() if isinstance(n.op, simd.VectorElemwise)]
        fgraph = FunctionGraph(node.inputs, node.outputs, clone=True)
        with open(CLinker().accept(fgraph).compile_cmodule().__file__, "rb") as f:
            code = f.read()
        suffix = "f" if dtype == "float32" else ""
        assert f"vv_pow{suffix}".encode() in code and f"v_log1p{suffix}".encode() in code


def test_python_code_for_the_op_too():
    x = pt.matrix("x", dtype="float64")
    y = simd.VectorElemwise(pt.exp(x).owner.op.scalar_op)(x)
    fn = pytensor.function([x], y, mode="FAST_COMPILE")
    np.testing.assert_allclose(fn(np.ones((2, 3))), np.full((2, 3), np.e))


def _joined(fn) -> list:
    return [
        node.op.joined
        for node in fn.maker.fgraph.toposort()
        if isinstance(node.op, simd.VectorElemwise) and node.op.joined
    ]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_outputs_joined_by_columns_are_written_into_the_joined_array(dtype):
    """``join(1, o3, o1)`` of a fused elementwise's outputs, ``o2`` used on its own:
    one loop writes ``o3`` and ``o1`` into the joined array's column blocks."""
    a = pt.matrix("a", dtype=dtype)
    b = pt.vector("b", dtype=dtype)
    o1, o2, o3 = pt.exp(a) * b, a - b, pt.sigmoid(a + b)
    fn = function([a, b], [pt.join(1, o3, o1), o2], "c")
    assert [len(j) for j in _joined(fn)] == [2]  # in the order fusion gave the outputs
    assert not any(type(n.op).__name__ == "Join" for n in fn.maker.fgraph.toposort())
    rng = np.random.default_rng(5)
    av, bv = rng.normal(size=(4, 3)).astype(dtype), rng.normal(size=3).astype(dtype)
    tol = 1e-6 if dtype == "float32" else 1e-13
    joined, second = fn(av, bv)
    want = np.concatenate([1 / (1 + np.exp(-(av + bv))), np.exp(av) * bv], axis=1)
    np.testing.assert_allclose(joined, want, rtol=tol)
    np.testing.assert_allclose(second, av - bv, rtol=tol)


def test_an_output_used_beside_the_join_is_not_joined():
    a = pt.matrix("a", dtype="float64")
    o1, o2 = pt.exp(a), pt.tanh(a) * a
    fn = function([a], [pt.join(1, o1, o2), o1.sum()], "c")
    assert _joined(fn) == []
    av = np.random.default_rng(6).normal(size=(3, 2))
    np.testing.assert_allclose(fn(av)[0], np.concatenate([np.exp(av), np.tanh(av) * av], 1))


def test_python_code_for_the_joined_op_too():
    from pytensor import scalar

    s = scalar.float64("s")
    both = scalar.Composite([s], [scalar.exp(s), s + 1])
    x = pt.matrix("x", dtype="float64")
    joined = simd.VectorElemwise(both, (1, 0))(x)
    fn = pytensor.function([x], joined, mode="FAST_COMPILE")
    xv = np.arange(6.0).reshape(2, 3)
    np.testing.assert_allclose(fn(xv), np.concatenate([xv + 1, np.exp(xv)], axis=1))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_softplus_in_a_vector_loop_has_no_branches_and_numpys_values(dtype):
    """PyTensor's ``softplus`` picks a formula by branches, which keep g++ from
    vectorising the loop without AVX-512; the loops compute it without."""
    x = pt.matrix("x", dtype=dtype)
    fn = function([x], pt.softplus(x) * 2, "c")
    [node] = [n for n in fn.maker.fgraph.toposort() if isinstance(n.op, simd.VectorElemwise)]
    inner = node.op.scalar_op.fgraph.toposort()
    assert any(isinstance(n.op, BranchFreeSoftplus) for n in inner)
    assert not any(type(n.op) is Softplus for n in inner)
    xv = np.array([[-800.0, -40.0, -5.0, -1e-3, 0.0, 1e-3, 5.0, 20.0, 35.0, 800.0]], dtype)
    expected = np.logaddexp(0.0, xv.astype("float64")) * 2
    np.testing.assert_allclose(fn(xv), expected, rtol=3e-7 if dtype == "float32" else 1e-15)
