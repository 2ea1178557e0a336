"""The IR's nodes: structural equality and hashing stay fast on shared DAGs."""

from __future__ import annotations

from rnnc.ir import Node, dim_size, walk


def _chain(depth: int) -> Node:
    """A value read twice at every level: 2**depth paths, depth*2 nodes."""
    v = Node("input", (), ("H",), "x")
    for _ in range(depth):
        v = Node("mul", (Node("tanh", (v,), ("H",)), v), ("H",))
    return v


def test_equality_of_dags_built_apart_is_linear():
    a, b = _chain(200), _chain(200)
    assert a is not b
    assert a == b and hash(a) == hash(b)
    assert Node("neg", (a,), ("H",)) != a
    assert len(walk([a])) == 401


def test_nodes_know_batch_and_state_dependence():
    x = Node("input", (), ("I",), "x")
    w = Node("param", (), ("I", "H"), "W")
    h = Node("state", (), ("H",), "h")
    xw = Node("matmul", (x, w), ("H",))
    assert xw.batched and not xw.stateful
    assert Node("add", (xw, h), ("H",)).stateful
    assert not Node("neg", (w,), ("I", "H")).batched


def test_dim_size_of_sums():
    assert dim_size("2*H + I + 1", {"H": 3, "I": 4}) == 11
    assert dim_size(5, {}) == 5


def test_every_initialiser_takes_every_rank():
    import numpy as np

    from rnnc.init import INITIALIZERS, initialize

    args = {"constant": (0.5,)}
    for name in INITIALIZERS:
        for shape in [(), (3,), (3, 4), (4, 3)]:
            value = initialize(name, args.get(name, ()), shape, np.random.default_rng(0))
            assert value.shape == shape and np.isfinite(value).all()
    q = initialize("orthogonal", (), (4, 3), np.random.default_rng(0))
    np.testing.assert_allclose(q.T @ q, np.eye(3), atol=1e-12)
