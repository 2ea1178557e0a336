"""Layers: a recurrent layer made from any cell, and the ways to combine them.

>>> layer = rnnc.Recurrent("gru", I=8, H=16)
>>> x = pt.tensor3("x")                                   # [batch, time, I]
>>> out = layer(x)
>>> out.outputs["y"], out.state["h"]                      # [batch, time, H], [batch, H]

Every layer here is a :class:`SequenceLayer`: it is called on symbolic values
(``layer(x, ...)`` builds a PyTensor graph) or run on NumPy arrays (``layer.run(x, ...)``
compiles once per kind of call), and takes the same sequence arguments: ``mask`` or
``lengths``, ``reset``, ``initial_state``, ``reverse``, ``truncate_gradient``,
``checkpoint``. :class:`Recurrent` runs one cell (or ``num_layers`` of them);
:class:`Stack` feeds each layer's output to the next; :class:`Bidirectional` runs
one layer forward and one backward and merges their outputs.

A layer's state is a dict ``{state name: [batch, ...]}``; the state of a stack is a
list of per-layer states, bottom first; a bidirectional layer's state is one dict
whose backward states carry the suffix ``_reverse`` (``h``, ``c``, ``h_reverse``,
``c_reverse``), as PyTorch names the backward parameters.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pytensor
import pytensor.tensor as pt
from pytensor.graph.basic import Variable
from pytensor.tensor.variable import TensorVariable

from rnnc import cache, ir, passes
from rnnc.compile import check_backend, default_backend, function, load_cell
from rnnc.errors import (
    InputDtypeError,
    InputShapeError,
    InputValueError,
    MissingDimensionError,
    OptionError,
    UnknownDimensionError,
)
from rnnc.init import initialize
from rnnc.ir_format import format_ir
from rnnc.lower import scan_cell

__all__ = [
    "MERGES",
    "TORCH_LAYOUT",
    "Bidirectional",
    "Recurrent",
    "RecurrentOutput",
    "SequenceLayer",
    "Stack",
    "state_leaves",
]

#: How the built-in cells' parameters map to PyTorch's: each PyTorch tensor is the
#: listed rnnc parameters stacked in gate order (weights transposed: rnnc stores
#: ``[in, out]``, PyTorch ``[out, in]``).
TORCH_LAYOUT: dict[str, dict[str, list[str]]] = {
    "rnn": {"weight_ih": ["W_ih"], "weight_hh": ["W_hh"], "bias_ih": ["b_ih"], "bias_hh": ["b_hh"]},
    "lstm": {
        "weight_ih": ["W_ii", "W_if", "W_ig", "W_io"],
        "weight_hh": ["W_hi", "W_hf", "W_hg", "W_ho"],
        "bias_ih": ["b_ii", "b_if", "b_ig", "b_io"],
        "bias_hh": ["b_hi", "b_hf", "b_hg", "b_ho"],
    },
    "gru": {
        "weight_ih": ["W_ir", "W_iz", "W_in"],
        "weight_hh": ["W_hr", "W_hz", "W_hn"],
        "bias_ih": ["b_ir", "b_iz", "b_in"],
        "bias_hh": ["b_hr", "b_hz", "b_hn"],
    },
}
TORCH_LAYOUT["rnn_relu"] = TORCH_LAYOUT["rnn"]

#: How :class:`Bidirectional` merges the two directions' outputs.
MERGES = ("concat", "sum", "mean")

#: The suffix of the backward direction's states (and PyTorch's parameter names).
REVERSE = "_reverse"


@dataclass
class RecurrentOutput:
    """What a layer returns: ``outputs[name]`` is ``[batch, time, ...]`` and
    ``state[name]`` ``[batch, ...]`` (the state after each sequence's last real step;
    a list of such dicts for a stack). The outputs are also attributes: ``out.y``.

    ``updates`` advances the random generators of dropout (training graphs only):
    pass it to :func:`rnnc.compile.function`, or every call draws the same masks.
    """

    outputs: dict[str, Any]
    state: Any
    updates: dict[Any, Any] = field(default_factory=dict)

    def __getattr__(self, name: str) -> Any:
        outputs = self.__dict__.get("outputs", {})
        if name in outputs:
            return outputs[name]
        raise AttributeError(name)


@dataclass(frozen=True)
class Loop:
    """How a layer runs over its sequences: the checked sequence arguments of
    :meth:`SequenceLayer.__call__` (``mask`` and ``reset`` as ``[batch, time]``
    tensors), handed down unchanged to the layers a layer is made of."""

    mask: TensorVariable | None = None
    reset: TensorVariable | None = None
    reverse: bool = False
    truncate_gradient: int = -1
    training: bool = False
    checkpoint: int | None = None
    states_only: bool = False


# ---------------------------------------------------------------- nested states
Path = tuple[Any, ...]


def _where(path: Path) -> str:
    """``(1, "h")`` -> ``"[1]['h']"``: how a user indexes the value."""
    return "".join(f"[{p}]" if isinstance(p, int) else f"[{p!r}]" for p in path)


def _flatten(struct: Any, prefix: Path = ()) -> list[tuple[Path, Any]]:
    """The leaves of a state (a dict, or a list of states) as ``(path, value)``."""
    if struct is None:
        return []
    if isinstance(struct, list | tuple):
        return [pair for i, s in enumerate(struct) for pair in _flatten(s, (*prefix, i))]
    return [((*prefix, k), v) for k, v in struct.items() if v is not None]


def state_leaves(state: Any) -> list[Any]:
    """The values of a state (a dict, or a list of per-layer dicts), in a fixed order:
    layer by layer, then in the order of the layer's states."""
    return [value for _, value in _flatten(state)]


def _nest(template: Any, leaves: Mapping[Path, Any]) -> Any:
    """Rebuild a state shaped like ``template`` from ``{path: value}`` (leaves that are
    missing are left out)."""
    if isinstance(template, list):
        return [
            _nest(t, {p[1:]: v for p, v in leaves.items() if p[0] == i})
            for i, t in enumerate(template)
        ]
    return {k: leaves[(k,)] for k in template if (k,) in leaves}


def _shape_at(template: Any, path: Path) -> tuple[int, ...]:
    for p in path:
        template = template[p]
    return template


def _sub_seed(seed: int, *path: int) -> int:
    """A seed for a sub-layer, derived from the layer's seed and its position."""
    return int(np.random.SeedSequence([seed, *path]).generate_state(1)[0])


def _format(shape: Sequence[Any]) -> str:
    return "[" + ", ".join("?" if s is None else str(s) for s in shape) + "]"


class SequenceLayer:
    """What every layer over sequences shares: argument checks, :meth:`run`, and the
    state carried between calls by ``run(..., stateful=True)``.

    A subclass sets ``name``, ``dtype``, ``backend``, ``params`` and implements the
    shapes (:attr:`input_shapes`, :attr:`output_shapes`, :attr:`state_shapes`),
    ``_graph`` (the symbolic computation on checked arguments) and
    ``_declared_state`` (the initial state as NumPy arrays).
    """

    name: str
    dtype: str
    backend: str | None
    params: dict[str, pytensor.compile.SharedVariable]
    #: The state carried by ``run(..., stateful=True)`` (NumPy arrays), None after
    #: :meth:`reset_state`.
    state: Any = None

    # ---------------------------------------------------------------- shapes
    @property
    def input_shapes(self) -> dict[str, tuple[int, ...]]:
        """The example shape of each input (without batch and time)."""
        raise NotImplementedError

    @property
    def output_shapes(self) -> dict[str, tuple[int, ...]]:
        """The example shape of each output (without batch and time)."""
        raise NotImplementedError

    @property
    def state_shapes(self) -> Any:
        """The example shape of each state, in the layer's state structure."""
        raise NotImplementedError

    @property
    def input_names(self) -> list[str]:
        return list(self.input_shapes)

    def _graph(self, inputs: dict[str, TensorVariable], init: Any, loop: Loop) -> RecurrentOutput:
        raise NotImplementedError

    def _declared_state(self, batch: int) -> Any:
        raise NotImplementedError

    def _check_stateful(self) -> None:
        """Raise if the layer cannot carry its state from one call to the next."""

    def _cache_parts(self) -> dict[str, Any] | None:
        """Everything the functions this layer compiles depend on, besides its
        parameters (whose names and types the cache adds to the key): the key of
        :meth:`run`'s functions in rnnc's cache. None (a layer class rnnc does not know,
        a subclass): never cached."""
        return None

    # ---------------------------------------------------------------- symbolic
    def __call__(
        self,
        x: Any,
        initial_state: Any = None,
        mask: Any = None,
        reverse: bool = False,
        truncate_gradient: int = -1,
        *,
        lengths: Any = None,
        reset: Any = None,
        training: bool = False,
        checkpoint: int | None = None,
        states_only: bool = False,
    ) -> RecurrentOutput:
        """Build the graph of the layer over ``x``; returns outputs and final states.

        Parameters
        ----------
        x
            ``[batch, time, features]`` (a dict by input name when the cell has several
            inputs): symbolic, or NumPy arrays.
        initial_state
            The state before the first step, shaped like :attr:`state_shapes` with a
            leading batch axis (a dict by state name; a list of them for a stack;
            states left out start from their declared initial values).
        mask
            ``[batch, time]``, nonzero for a real step. On a padded step every state
            keeps its value and every output is 0; padded inputs are never read
            (exactly zero gradient). Any pattern of padding works.
        reverse
            Process each sequence from its last real step back to its first; outputs
            are returned in time order and the final state is the one after the
            first real step.
        truncate_gradient
            Back-propagate through at most this many steps (-1: all of them).
        lengths
            ``[batch]`` integers: the shorthand for ``mask[b, t] = t < lengths[b]``.
        reset
            ``[batch, time]``, nonzero where a new document begins in that row: the
            states go back to their declared initial values (constant or learned, not
            ``initial_state``) before that step runs (in the backward direction: after
            it, so each document still runs from its own end). Running several
            documents packed in one row equals running them separately.
        training
            Build the training graph: dropout between stacked layers is on
            (pass ``out.updates`` to the compiled function).
        checkpoint
            Gradient checkpointing: keep the states only every ``checkpoint`` steps
            and recompute the steps in between in the backward pass (default: the
            layer's ``checkpoint`` option).
        states_only
            Compute the final states only (``out.outputs`` is empty): for a loss on
            the final state, no memory goes to per-step outputs (with ``checkpoint``,
            the gradient then keeps only the states at segment borders).
        """
        inputs = self._inputs(x)
        first = next(iter(inputs.values()))
        init = self._initial(initial_state)
        m = self._mask(mask, lengths, first)
        r = self._flags("reset", reset, first, "1 where a new document begins")
        _check_loop_options(truncate_gradient, checkpoint)
        loop = Loop(
            m, r, bool(reverse), int(truncate_gradient), bool(training), checkpoint, states_only
        )
        return self._graph(inputs, init, loop)

    def state_inputs(self, prefix: str = "initial_state") -> Any:
        """Symbolic tensors for every state (batch size left open), shaped like
        :attr:`state_shapes`: the inputs of a compiled function that carries the state
        across calls (truncated back-propagation through time)::

            h = layer.state_inputs()
            out = layer(x, initial_state=h, truncate_gradient=k)
            step = rnnc.compile.function([x, *state_leaves(h)], ...)
        """
        leaves = {
            path: pt.tensor(
                f"{prefix}{_where(path)}", dtype=self.dtype, shape=(None,) * (1 + len(s))
            )
            for path, s in _flatten(self.state_shapes)
        }
        return _nest(self.state_shapes, leaves)

    def initial_state_values(self, batch: int) -> Any:
        """The declared initial state for ``batch`` sequences, as NumPy arrays (a
        learned initial state at the parameters' current values)."""
        return self._declared_state(int(batch))

    # ---------------------------------------------------------------- NumPy
    def run(
        self,
        x: Any,
        initial_state: Any = None,
        mask: Any = None,
        reverse: bool = False,
        *,
        lengths: Any = None,
        reset: Any = None,
        stateful: bool = False,
        check_finite: bool = False,
    ) -> RecurrentOutput:
        """Run on NumPy arrays (inference: no dropout); compiles once per kind of
        call and returns NumPy arrays. The arguments are those of :meth:`__call__`;
        ``check_finite=True`` rejects inputs holding NaN or inf.

        With ``stateful=True`` the layer carries its state from one call to the
        next: a call starts from the final state of the previous one (unless
        ``initial_state`` is given) and stores its own final state in
        :attr:`state`; :meth:`reset_state` forgets it. The state is an ordinary
        input of the compiled function, so the batch size is not fixed (after
        ``reset_state()``, another batch size works) and a long sequence run in
        chunks gives the same numbers as run at once.
        """
        arrays = self._input_arrays(x)
        if check_finite:
            for name, array in arrays.items():
                bad = np.argwhere(~np.isfinite(array))
                if len(bad):
                    raise InputValueError(
                        f"{self._what(name)} holds {len(bad)} NaN or infinite values, the "
                        f"first at [{', '.join(map(str, bad[0]))}]",
                        fix="clean the data, or mask the steps that hold no data (mask=...)",
                    )
        first = next(iter(arrays.values()))
        batch, time = first.shape[:2]
        shadow = pt.tensor(dtype=self.dtype, shape=first.shape)  # checks static shapes
        self._mask(mask, lengths, shadow)
        self._flags("reset", reset, shadow, "1 where a new document begins")
        if lengths is not None:
            mask = np.arange(time)[None, :] < np.asarray(lengths)[:, None]
        carried = False
        if stateful:
            self._check_stateful()
            if initial_state is None and self.state is not None:
                initial_state, carried = self.state, True
        pairs = self._state_pairs(initial_state)
        states = []
        for path, value in pairs:
            value = np.asarray(value)
            if carried and value.shape[:1] != (batch,):
                raise InputShapeError(
                    f"the state carried from the last call (stateful=True) has batch "
                    f"{value.shape[0]}, but x has batch {batch}",
                    fix="call layer.reset_state() before running another batch size",
                )
            want = _shape_at(self.state_shapes, path)
            what = f"initial_state{_where(path)}"
            self._check_shape(what, value.ndim, value.shape, want, 1, batch=batch)
            states.append(self._cast(what, value))

        args = [*arrays.values(), *states]
        args += [np.asarray(a, self.dtype) for a in (mask, reset) if a is not None]
        # JAX compiles for static shapes: one function per shape (bucket the lengths)
        shapes = tuple(a.shape for a in args) if self._backend() == "jax" else None
        key = (
            tuple(p for p, _ in pairs),
            mask is not None,
            reset is not None,
            bool(reverse),
            shapes,
        )
        if key not in self._compiled:
            self._compiled[key] = self._cached_run(key)
        fn, out_names, state_paths = self._compiled[key]
        values = [np.asarray(v) for v in fn(*args)]  # JAX gives its own arrays
        k = len(out_names)
        state = _nest(self.state_shapes, dict(zip(state_paths, values[k:], strict=True)))
        if stateful:
            self.state = state
        return RecurrentOutput(dict(zip(out_names, values[:k], strict=True)), state)

    def _backend(self) -> str:
        return self.backend or default_backend()

    def _cached_run(self, key: tuple) -> tuple[Any, list[str], list[Path]]:
        """:meth:`_compile_run` through rnnc's cache (:func:`rnnc.cache.cached_function`,
        which finds the layer's parameters by name) when the layer says what its
        functions depend on."""
        parts = self._cache_parts()
        if parts is None:
            return self._compile_run(*key)
        return cache.cached_function(
            {"layer": parts, "run": repr(key)},
            lambda: self._compile_run(*key),
            self.params,
            complete=True,
            backend=self._backend(),
        )

    def _compile_run(
        self,
        paths: tuple[Path, ...],
        has_mask: bool,
        has_reset: bool,
        reverse: bool,
        shapes: tuple[tuple[int, ...], ...] | None,
    ) -> tuple[Any, list[str], list[Path]]:
        """Compile :meth:`run`'s function; with ``shapes``, for those static shapes."""
        ranks = [2 + len(s) for s in self.input_shapes.values()]
        ranks += [1 + len(_shape_at(self.state_shapes, p)) for p in paths]
        ranks += [2] * (has_mask + has_reset)
        static = iter(shapes or [(None,) * n for n in ranks])
        xs = {n: pt.tensor(n, dtype=self.dtype, shape=next(static)) for n in self.input_shapes}
        hs = {
            p: pt.tensor(f"initial_state{_where(p)}", dtype=self.dtype, shape=next(static))
            for p in paths
        }
        m = pt.tensor("mask", dtype=self.dtype, shape=next(static)) if has_mask else None
        r = pt.tensor("reset", dtype=self.dtype, shape=next(static)) if has_reset else None
        out = self(
            xs if len(xs) > 1 else next(iter(xs.values())),
            _nest(self.state_shapes, hs) if hs else None,
            m,
            reverse,
            reset=r,
        )
        state = _flatten(out.state)
        fn = function(
            [*xs.values(), *hs.values(), *(v for v in (m, r) if v is not None)],
            [*out.outputs.values(), *(v for _, v in state)],
            self._backend(),
        )
        return fn, list(out.outputs), [p for p, _ in state]

    def reset_state(self) -> None:
        """Forget the state carried by ``run(..., stateful=True)``: the next call
        starts from the declared initial state, with any batch size."""
        self.state = None

    # ---------------------------------------------------------------- checks
    def _inputs(self, x: Any) -> dict[str, TensorVariable]:
        given = self._given(x)
        return {n: self._tensor(self._what(n), given[n], s) for n, s in self.input_shapes.items()}

    def _input_arrays(self, x: Any) -> dict[str, np.ndarray]:
        given = self._given(x)
        arrays = {}
        for n, s in self.input_shapes.items():
            value = np.asarray(given[n])
            self._check_shape(self._what(n), value.ndim, value.shape, s, 2)
            arrays[n] = self._cast(self._what(n), value)
        shapes = {a.shape[:2] for a in arrays.values()}
        if len(shapes) > 1:
            raise InputShapeError(
                f"the inputs disagree on [batch, time]: {sorted(shapes)}",
                fix="give every input the same batch and time axes",
            )
        return arrays

    def _what(self, name: str) -> str:
        return f"x['{name}']" if len(self.input_shapes) > 1 else "x"

    def _given(self, x: Any) -> dict[str, Any]:
        names = self.input_names
        if isinstance(x, Mapping):
            given = dict(x)
        elif len(names) == 1:
            given = {names[0]: x}
        else:
            raise OptionError(
                f"`{self.name}` has {len(names)} inputs ({', '.join(names)})",
                fix="pass them as a dict: layer({" + ", ".join(f"'{n}': ..." for n in names) + "})",
            )
        if set(given) != set(names):
            raise OptionError(
                f"inputs {sorted(given)} do not match the cell's inputs {names}",
                fix="pass exactly the cell's inputs, by name",
            )
        return given

    def _check_shape(
        self,
        what: str,
        ndim: int,
        shape: Sequence[int | None],
        want: tuple[int, ...],
        lead: int,
        batch: int | None = None,
    ) -> None:
        """Raise unless a value of ``ndim`` axes and (static) ``shape`` is
        ``[batch, time, *want]`` (lead=2) or ``[batch, *want]`` (lead=1)."""
        names = ["batch", "time"][:lead]
        expected = "[" + ", ".join(names + [str(d) for d in want]) + "]"
        if ndim != lead + len(want):
            raise InputShapeError(
                f"{what} must have {lead + len(want)} axes {expected}, but it has {ndim}",
                fix="add the missing batch or time axis" if ndim < lead + len(want) else None,
            )
        for axis, name in enumerate(names):
            if shape[axis] == 0:
                raise InputShapeError(
                    f"{what} has {name} size 0; expected {expected} with at least one "
                    + ("sequence" if name == "batch" else "step"),
                    fix=f"skip empty {'batches' if name == 'batch' else 'sequences'} before calling the layer",
                )
        tail = tuple(shape[lead:])
        if any(s is not None and s != w for s, w in zip(tail, want, strict=True)):
            got = "[" + ", ".join(names + ["?" if s is None else str(s) for s in tail]) + "]"
            raise InputShapeError(
                f"{what} has shape {got}; expected {expected}",
                fix="pass features of the size the layer was built with",
            )
        if batch is not None and shape[0] is not None and shape[0] != batch:
            raise InputShapeError(
                f"{what} has batch {shape[0]}, but x has batch {batch}",
                fix="give it one row per sequence of x",
            )

    def _cast(self, what: str, array: np.ndarray) -> np.ndarray:
        if array.dtype.kind != "f":
            raise InputDtypeError(
                f"{what} has dtype {array.dtype}; expected {self.dtype}",
                fix=f"convert it: {what}.astype('{self.dtype}')",
            )
        return array.astype(self.dtype, copy=False)

    def _tensor(
        self, what: str, value: Any, want: tuple[int, ...], lead: int = 2
    ) -> TensorVariable:
        """A checked tensor ``[batch, time, *want]`` (lead=2) or ``[batch, *want]``."""
        if not isinstance(value, Variable):
            array = np.asarray(value)
            self._check_shape(what, array.ndim, array.shape, want, lead)
            return pt.as_tensor_variable(self._cast(what, array))
        value = pt.as_tensor_variable(value)
        self._check_shape(what, value.ndim, value.type.shape, want, lead)
        if value.dtype != self.dtype:
            raise InputDtypeError(
                f"{what} has dtype {value.dtype}; the layer computes in {self.dtype}",
                fix=f"cast it (pt.cast({what}, '{self.dtype}')) or build the layer with dtype='{value.dtype}'",
            )
        return value

    def _state_pairs(self, given: Any) -> list[tuple[Path, Any]]:
        """Check that ``given`` has the structure of :attr:`state_shapes`."""
        return _check_structure(self.state_shapes, given, "initial_state", self.name, ())

    def _initial(self, initial_state: Any) -> Any:
        if initial_state is None:
            return None
        tensors = {
            path: self._tensor(
                f"initial_state{_where(path)}", value, _shape_at(self.state_shapes, path), 1
            )
            for path, value in self._state_pairs(initial_state)
        }
        return _nest(self.state_shapes, tensors)

    def _flags(
        self, what: str, value: Any, x: TensorVariable, meaning: str
    ) -> TensorVariable | None:
        """A checked ``[batch, time]`` tensor (a mask or a reset signal)."""
        if value is None:
            return None
        v = value if isinstance(value, Variable) else np.asarray(value)
        if np.dtype(v.dtype).kind not in "biuf":
            raise InputDtypeError(
                f"{what} has dtype {v.dtype}; expected numbers ({meaning}, else 0)",
                fix=f"pass {what} as booleans, integers or floats",
            )
        v = pt.as_tensor_variable(v)
        expected = _format(x.type.shape[:2])
        if v.ndim != 2:
            raise InputShapeError(
                f"{what} must be [batch, time] = {expected} ({meaning}), "
                f"but it has {v.ndim} axes, shape {_format(v.type.shape)}",
                fix=f"give {what} one row per sequence and one column per step of x",
            )
        if any(
            s is not None and w is not None and s != w
            for s, w in zip(v.type.shape, x.type.shape[:2], strict=True)
        ):
            raise InputShapeError(
                f"{what} has shape {_format(v.type.shape)}; expected [batch, time] = "
                f"{expected}, the batch and time of x",
                fix=f"give {what} one row per sequence and one column per step of x",
            )
        return v

    def _mask(self, mask: Any, lengths: Any, x: TensorVariable) -> TensorVariable | None:
        if lengths is None:
            return self._flags("mask", mask, x, "1 for a real step")
        if mask is not None:
            raise OptionError(
                "both mask and lengths are given", fix="give one: lengths is a shorthand for mask"
            )
        batch, time = x.type.shape[:2]
        if isinstance(lengths, Variable):
            n = pt.as_tensor_variable(lengths)
            if n.ndim != 1 or n.dtype[:3] not in ("int", "uin"):
                raise InputShapeError(
                    f"lengths must be [batch] integers, but it is {n.ndim}-d {n.dtype}",
                    fix="pass one integer per sequence",
                )
        else:
            n = np.asarray(lengths)
            if n.ndim != 1 or n.dtype.kind not in "iu":
                raise InputShapeError(
                    f"lengths must be [batch] integers, but it has shape {_format(n.shape)} "
                    f"and dtype {n.dtype}",
                    fix="pass one integer per sequence",
                )
            if batch is not None and n.shape[0] != batch:
                raise InputShapeError(
                    f"lengths has shape [{n.shape[0]}]; expected [batch] = [{batch}], the batch of x",
                    fix="give one length per sequence of x",
                )
            if n.size and n.min() < 0:
                raise InputShapeError(
                    f"lengths[{int(n.argmin())}] = {int(n.min())} is negative",
                    fix="lengths count the real steps of each sequence",
                )
            if time is not None and n.size and n.max() > time:
                raise InputShapeError(
                    f"lengths[{int(n.argmax())}] = {int(n.max())} is longer than the time "
                    f"axis of x ({time} steps)",
                    fix="pad x to the longest sequence, or correct the lengths",
                )
            n = pt.as_tensor_variable(n)
        return pt.lt(pt.arange(x.shape[1]).dimshuffle("x", 0), n.dimshuffle(0, "x"))


def _check_structure(
    template: Any, given: Any, what: str, owner: str, prefix: Path
) -> list[tuple[Path, Any]]:
    """The ``(path, value)`` leaves of ``given``, checked against ``template``."""
    if given is None:
        return []
    if isinstance(template, list):
        if not isinstance(given, list | tuple) or len(given) != len(template):
            got = (
                f"a list of {len(given)}"
                if isinstance(given, list | tuple)
                else type(given).__name__
            )
            raise OptionError(
                f"{what}{_where(prefix)} must be a list of {len(template)} per-layer states "
                f"(bottom first), not {got}",
                fix="pass one dict (or None) per layer",
            )
        return [
            pair
            for i, (t, g) in enumerate(zip(template, given, strict=True))
            for pair in _check_structure(t, g, what, owner, (*prefix, i))
        ]
    if not isinstance(given, Mapping):
        raise OptionError(
            f"{what}{_where(prefix)} must be a dict of states by name, not {type(given).__name__}",
            fix=f"e.g. {{{', '.join(repr(k) + ': ...' for k in template)}}}",
        )
    unknown = set(given) - set(template)
    if unknown:
        raise OptionError(
            f"{what}{_where(prefix)} names {sorted(unknown)}, which are not states of `{owner}`",
            fix=f"its states are: {', '.join(template)}",
        )
    return [((*prefix, k), v) for k, v in given.items() if v is not None]


def _check_loop_options(truncate_gradient: int, checkpoint: int | None) -> None:
    if not isinstance(truncate_gradient, int | np.integer) or not (
        truncate_gradient == -1 or truncate_gradient > 0
    ):
        raise OptionError(
            f"truncate_gradient must be a positive number of steps or -1, not {truncate_gradient!r}"
        )
    _check_checkpoint(checkpoint)
    if checkpoint is not None and truncate_gradient != -1:
        raise OptionError(
            "checkpoint and truncate_gradient cannot be combined",
            fix="truncate the gradient by running shorter chunks (stateful) instead",
        )


def _check_checkpoint(checkpoint: int | None) -> int | None:
    if checkpoint is not None and (
        isinstance(checkpoint, bool)
        or not isinstance(checkpoint, int | np.integer)
        or checkpoint < 1
    ):
        raise OptionError(
            f"checkpoint must be a positive number of steps or None, not {checkpoint!r}",
            fix="e.g. checkpoint=50 keeps the states every 50 steps",
        )
    return None if checkpoint is None else int(checkpoint)


class Recurrent(SequenceLayer):
    """A recurrent layer running ``cell`` over sequences ``[batch, time, features]``.

    For each sequence, with ``s_0`` the initial state (the cell's declared value, or
    ``initial_state``) and ``m`` the mask::

        s_t = step(s_{t-1}, x_t)   if m_t   else s_{t-1}
        y_t = out(s_{t-1}, x_t)    if m_t   else 0

    for ``t = 1 .. T`` (``T .. 1`` with ``reverse``); ``reset_t`` replaces
    ``s_{t-1}`` by the declared initial value first. The result holds ``y`` for every
    step and the final state ``s_T``, i.e. the state after the last real step.

    Parameters
    ----------
    cell
        A built-in name (``"rnn"``, ``"rnn_relu"``, ``"lstm"``, ``"gru"``), a path to a
        ``.cell`` file, or a cell made with :func:`rnnc.cell`.
    **dims
        The size of every dimension the cell uses, e.g. ``I=64, H=256``.
    dtype
        ``"float32"`` (default) or ``"float64"``: parameters, inputs and states.
    backend
        ``"c"``, ``"numba"``, ``"jax"`` or ``"python"`` for :meth:`run` (default: see
        :func:`rnnc.compile.default_backend`).
    bias
        False drops the biases of a built-in cell (as PyTorch's ``bias=False``).
    seed
        Seeds the initialisers (and the dropout of ``num_layers > 1``).
    name
        Prefix of the parameters' PyTensor names.
    optimize
        The IR passes (:mod:`rnnc.passes`): True (the default: all, less those a
        backend is faster without, :data:`rnnc.passes.BACKEND_DEFAULTS`), False (none),
        or a dict switching some, e.g. ``{"fuse": False, "save": "none"}``.
    num_layers
        Stack this many layers of the cell (as PyTorch's ``num_layers``): the first
        output of each is the input of the next, whose input dimension is set to fit.
        With ``num_layers > 1``, ``initial_state`` and ``out.state`` are lists of
        per-layer dicts (bottom first) and ``params`` are named ``l0.W_ih``, ...
    bidirectional
        Run every layer in both directions and concatenate the outputs (as PyTorch's
        ``bidirectional``); the backward states are named ``h_reverse``, ... and the
        parameters ``forward.*`` and ``backward.*`` (``l0.forward.*`` when stacked).
    dropout
        With ``num_layers > 1``: the probability of dropping each output of a layer
        before the next, in training graphs (``layer(x, training=True)``) only.
    checkpoint
        Gradient checkpointing: keep the states only every ``checkpoint`` steps and
        recompute the steps in between during the backward pass (memory for long
        sequences; see ``benchmarks/README.md``). It switches off the passes that
        keep values for every step (``hoist`` and ``save``).

    Carrying the state: truncated back-propagation through time
    -----------------------------------------------------------
    A long sequence can run in chunks, the state flowing from each chunk to the next
    and the gradient stopping at chunk borders. On NumPy arrays, as Keras'
    ``stateful=True``::

        from rnnc.bucketing import chunks
        for chunk in chunks(x, 100):                  # [batch, 100, features] each
            out = layer.run(chunk, stateful=True)     # starts where the last call ended
        layer.reset_state()                           # next sequence: start afresh

    In a graph, as PyTorch's ``out, h = lstm(x, h)`` with ``h.detach()``: the state is
    an input of the compiled function, so no gradient flows across its border, and
    the batch size is not frozen::

        h = layer.state_inputs()                      # symbolic, batch size open
        out = layer(x, initial_state=h, truncate_gradient=k)
        # compile [x, *h] -> [loss, *out.state.values()], feed the state back,
        # starting from layer.initial_state_values(batch)

    Chunked and unchunked forward passes give the same numbers.

    References
    ----------
    Williams & Peng (1990), truncated BPTT; Chen et al. (2016), "Training Deep Nets
    with Sublinear Memory Cost" (checkpointing).
    """

    def __init__(
        self,
        cell: Any,
        *,
        dtype: str = "float32",
        backend: str | None = None,
        bias: bool = True,
        seed: int = 0,
        name: str | None = None,
        optimize: bool | Mapping[str, Any] = True,
        num_layers: int = 1,
        bidirectional: bool = False,
        dropout: float = 0.0,
        checkpoint: int | None = None,
        **dims: int,
    ) -> None:
        self.cell = load_cell(cell)
        self.backend = check_backend(backend) if backend else None
        self.optimize = passes.resolve(optimize, self._backend())
        if dtype not in ("float32", "float64"):
            raise OptionError(f"dtype must be 'float32' or 'float64', not {dtype!r}")
        self.dtype = dtype
        self.name = name or self.cell.name
        self.sizes = self._check_dims(dims)
        if not bias:
            self.cell = self._without_bias(self.cell)
        self.checkpoint = _check_checkpoint(checkpoint)
        self.seed = seed
        if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 1:
            raise OptionError(f"num_layers must be a positive integer, not {num_layers!r}")
        if dropout and num_layers == 1:
            raise OptionError(
                f"dropout={dropout} acts between stacked layers, and num_layers is 1",
                fix="use num_layers >= 2, or apply dropout to the layer's output yourself",
            )
        self.num_layers = num_layers
        self.bidirectional = bool(bidirectional)
        self._compiled: dict[Any, Any] = {}
        #: The layers this one is made of when ``num_layers > 1`` or bidirectional.
        self.inner: Stack | Bidirectional | None = None
        if num_layers > 1 or bidirectional:
            self.inner = self._build_inner(seed, dropout)
            self.params = self.inner.params
            return
        rng = np.random.default_rng(seed)
        self.params: dict[str, pytensor.compile.SharedVariable] = {}
        for pname, spec in self.cell.params.items():
            shape = ir.shape_size(spec.shape, self.sizes)
            value = initialize(spec.init, spec.args, shape, rng).astype(dtype)
            # static shapes (JAX needs them), sizes of 1 included
            self.params[pname] = pytensor.shared(
                value, name=f"{self.name}.{pname}", shape=value.shape
            )

    # ---------------------------------------------------------------- set-up
    def _check_dims(self, dims: Mapping[str, int]) -> dict[str, int]:
        needed = self.cell.dims()
        unknown = sorted(set(dims) - needed)
        if unknown:
            raise UnknownDimensionError(
                f"cell `{self.cell.name}` has no dimension {', '.join(map(repr, unknown))}",
                fix=f"its dimensions are: {', '.join(sorted(needed)) or 'none'}",
            )
        missing = sorted(needed - set(dims))
        if missing:
            raise MissingDimensionError(
                f"cell `{self.cell.name}` needs the size of {', '.join(missing)}",
                fix="pass it, e.g. Recurrent(cell, "
                + ", ".join(f"{d}=64" for d in sorted(needed))
                + ")",
            )
        for d, size in dims.items():
            if not isinstance(size, int | np.integer) or size < 1:
                raise OptionError(f"dimension {d} must be a positive integer, not {size!r}")
        return {d: int(s) for d, s in dims.items()}

    def _without_bias(self, cell: ir.CellIR) -> ir.CellIR:
        layout = TORCH_LAYOUT.get(cell.name)
        if layout is None:
            raise OptionError(
                "bias=False is only for the built-in cells",
                fix="write the cell without biases instead",
            )
        biases = set(layout["bias_ih"] + layout["bias_hh"])
        zero = ir.Node("const", (), (), 0.0)
        memo: dict = {}

        def drop(node: ir.Node, args: tuple[ir.Node, ...]) -> ir.Node:
            if node.op == "param" and node.value in biases:
                return zero
            return ir.Node(node.op, args, node.shape, node.value) if args else node

        cell = cell.transform(lambda root: ir.rebuild(root, drop, memo))
        return cell.replace(params={k: v for k, v in cell.params.items() if k not in biases})

    def _cache_parts(self) -> dict[str, Any] | None:
        if type(self) is not Recurrent:
            return None
        inner = self.inner._cache_parts() if self.inner is not None else None
        if self.inner is not None and inner is None:
            return None
        cell = self.cell
        return {
            "class": "Recurrent",
            "cell": format_ir(cell),
            "ports": repr((cell.name, cell.inputs, cell.states, cell.params)),
            "sizes": self.sizes,
            "dtype": self.dtype,
            "optimize": repr(self.optimize),
            "checkpoint": self.checkpoint,
            "inner": inner,
        }

    def _single(self, sizes: Mapping[str, int], seed: int, name: str) -> Recurrent:
        """A one-layer, one-direction layer of the same cell and options."""
        return Recurrent(
            self.cell,
            dtype=self.dtype,
            backend=self.backend,
            seed=seed,
            name=name,
            optimize=self.optimize,
            checkpoint=self.checkpoint,
            **sizes,
        )

    def _build_inner(self, seed: int, dropout: float) -> Stack | Bidirectional:
        layers: list[SequenceLayer] = []
        sizes = dict(self.sizes)
        for i in range(self.num_layers):
            if i:
                below = next(iter(layers[-1].output_shapes.values()))
                sizes = _fit_input(self.cell, sizes, below, f"layer {i}")
            name = f"{self.name}.l{i}" if self.num_layers > 1 else self.name
            if self.bidirectional:
                fwd = self._single(sizes, _sub_seed(seed, i, 0), f"{name}.forward")
                bwd = self._single(sizes, _sub_seed(seed, i, 1), f"{name}.backward")
                layers.append(Bidirectional(fwd, bwd, name=name))
            else:
                layers.append(self._single(sizes, _sub_seed(seed, i, 0), name))
        if self.num_layers == 1:
            return layers[0]
        return Stack(layers, dropout=dropout, seed=seed, name=self.name)

    # ---------------------------------------------------------------- shapes
    @property
    def input_shapes(self) -> dict[str, tuple[int, ...]]:
        return {n: ir.shape_size(s, self.sizes) for n, s in self.cell.inputs.items()}

    @property
    def output_shapes(self) -> dict[str, tuple[int, ...]]:
        if self.inner is not None:
            return self.inner.output_shapes
        return {n: ir.shape_size(s, self.sizes) for n, s in self.cell.output_shapes().items()}

    @property
    def state_shapes(self) -> Any:
        if self.inner is not None:
            return self.inner.state_shapes
        return {n: ir.shape_size(s.shape, self.sizes) for n, s in self.cell.states.items()}

    def _declared_state(self, batch: int) -> Any:
        if self.inner is not None:
            return self.inner._declared_state(batch)
        out = {}
        for name, spec in self.cell.states.items():
            shape = (batch, *ir.shape_size(spec.shape, self.sizes))
            if spec.init == "learned":
                out[name] = np.broadcast_to(self.params[f"{name}0"].get_value(), shape).copy()
            else:
                out[name] = np.full(shape, spec.value, self.dtype)
        return out

    def _check_stateful(self) -> None:
        if self.inner is not None:
            self.inner._check_stateful()

    # ---------------------------------------------------------------- graphs
    def _graph(self, inputs: dict[str, TensorVariable], init: Any, loop: Loop) -> RecurrentOutput:
        if self.inner is not None:
            return self.inner._graph(inputs, init, loop)
        checkpoint = loop.checkpoint if loop.checkpoint is not None else self.checkpoint
        _check_loop_options(loop.truncate_gradient, checkpoint)
        options = self.optimize
        if checkpoint is not None:  # values kept for every step would undo the savings
            options = {**options, "save": "none", "hoist": False}
        result = scan_cell(
            passes.optimize(self.cell, options, self.sizes),
            inputs,
            self.params,
            self.sizes,
            self.dtype,
            initial_state=init or None,
            mask=loop.mask,
            reverse=loop.reverse,
            truncate_gradient=loop.truncate_gradient,
            reset=loop.reset,
            checkpoint=checkpoint,
            outputs=not loop.states_only,
            fast_compile=self.backend == "python",
        )
        # in the cell's order (the passes move some after the loop), without the
        # values the passes save for the backward pass
        outputs = {k: result.outputs[k] for k in self.output_shapes if k in result.outputs}
        return RecurrentOutput(outputs, result.state)

    # ---------------------------------------------------------------- PyTorch
    def _layout(self) -> dict[str, list[str]]:
        layout = TORCH_LAYOUT.get(self.cell.name)
        if layout is None:
            raise OptionError(
                f"cell `{self.cell.name}` has no PyTorch counterpart",
                fix="load_torch/torch_state work for the built-in cells rnn, rnn_relu, lstm, gru",
            )
        return {k: v for k, v in layout.items() if all(p in self.params for p in v)}

    def torch_state(self, suffix: str = "_l0") -> dict[str, np.ndarray]:
        """The parameters under PyTorch's names and layouts (``weight_ih_l0``, ...;
        ``weight_ih_l1``, ``weight_ih_l0_reverse``, ... for ``num_layers`` and
        ``bidirectional``)."""
        if self.inner is not None:
            return self.inner.torch_state(self._inner_suffix(suffix))
        out = {}
        for torch_name, names in self._layout().items():
            parts = [self.params[n].get_value() for n in names]
            if torch_name.startswith("weight"):
                parts = [p.T for p in parts]
            out[torch_name + suffix] = np.concatenate(parts, axis=0)
        return out

    def load_torch(self, state_dict: Mapping[str, Any], suffix: str = "_l0") -> None:
        """Set the parameters from PyTorch's names and layouts (NumPy arrays, or
        anything ``np.asarray`` takes)."""
        if self.inner is not None:
            self.inner.load_torch(state_dict, self._inner_suffix(suffix))
            return
        for torch_name, names in self._layout().items():
            key = torch_name + suffix
            if key not in state_dict:
                raise OptionError(
                    f"state_dict has no {key!r}", fix="pass the RNN module's state_dict"
                )
            value = np.asarray(state_dict[key])
            parts = np.split(value, len(names), axis=0)
            for pname, part in zip(names, parts, strict=True):
                if torch_name.startswith("weight"):
                    part = part.T
                want = self.params[pname].get_value().shape
                if part.shape != want:
                    raise InputShapeError(
                        f"{key} gives {pname} the shape {part.shape}, but the layer has {want}",
                        fix="build the layer with the same sizes as the PyTorch module",
                    )
                self.params[pname].set_value(part.astype(self.dtype))

    def _inner_suffix(self, suffix: str) -> str:
        if isinstance(self.inner, Stack) and suffix != "_l0":
            raise OptionError(
                f"suffix={suffix!r} with num_layers={self.num_layers}",
                fix="a stack names its layers _l0, _l1, ... itself; leave suffix out",
            )
        return suffix


def _fit_input(
    cell: ir.CellIR, sizes: Mapping[str, int], below: tuple[int, ...], where: str
) -> dict[str, int]:
    """The sizes that make ``cell``'s only input take ``below``-shaped examples."""
    if len(cell.inputs) != 1:
        raise OptionError(
            f"cell `{cell.name}` has {len(cell.inputs)} inputs; {where} needs a cell with one",
            fix="stack cells with a single input",
        )
    (name, shape), new = next(iter(cell.inputs.items())), dict(sizes)
    if len(shape) == len(below):
        for dim, size in zip(shape, below, strict=True):
            if isinstance(dim, str) and dim.isidentifier():
                new[dim] = size
    if len(shape) != len(below) or ir.shape_size(shape, new) != below:
        raise OptionError(
            f"{where}: the input `{name}: {ir.format_shape(shape)}` of `{cell.name}` cannot "
            f"take the {_format(below)} outputs of the layer below",
            fix="use a cell whose input is [D] for a plain dimension name D",
        )
    return new


class Bidirectional(SequenceLayer):
    """Two layers over the same sequence, one forward and one backward.

    The backward layer processes each sequence from its last real step back to its
    first (padding-aware), and its outputs come back in time order, so at step ``t``
    the merged output sees the whole sequence:

    .. math::

        y_t = \\mathrm{merge}(\\overrightarrow{y}_t, \\overleftarrow{y}_t), \\qquad
        \\mathrm{merge} \\in \\{\\mathrm{concat}, +, \\mathrm{mean}\\}

    ``concat`` joins the last axes (forward first, as PyTorch); ``sum`` and ``mean``
    need outputs of one shape. The state is one dict: the forward states under their
    names, the backward ones with the suffix ``_reverse`` (``h``, ``h_reverse``).
    It cannot carry its state between calls (``run(..., stateful=True)``): the
    backward direction needs the end of the sequence.

    Parameters
    ----------
    forward, backward
        One-layer :class:`Recurrent` layers with the same inputs. Without
        ``backward``, a copy of ``forward`` with its own parameters is made.
    merge
        ``"concat"`` (default), ``"sum"`` or ``"mean"``.
    name
        Names the layer in messages.

    >>> bi = rnnc.Bidirectional(rnnc.Recurrent("lstm", I=4, H=3))
    >>> bi.output_shapes
    {'y': (6,)}
    """

    def __init__(
        self,
        forward: Recurrent,
        backward: Recurrent | None = None,
        merge: str = "concat",
        *,
        name: str | None = None,
    ) -> None:
        for role, layer in (("forward", forward), ("backward", backward)):
            if layer is None:
                continue
            if not isinstance(layer, Recurrent) or layer.inner is not None:
                raise OptionError(
                    f"the {role} layer of Bidirectional must be a one-layer Recurrent, "
                    f"not {type(layer).__name__}",
                    fix="for several layers, stack bidirectional ones: "
                    "Stack([Bidirectional(...), Bidirectional(...)]) or "
                    "Recurrent(..., num_layers=L, bidirectional=True)",
                )
        if backward is None:
            backward = forward._single(
                forward.sizes, _sub_seed(forward.seed, 1), f"{forward.name}{REVERSE}"
            )
        if merge not in MERGES:
            raise OptionError(
                f"merge={merge!r} is not a way to merge",
                fix=f"use one of: {', '.join(map(repr, MERGES))}",
            )
        if forward.dtype != backward.dtype:
            raise OptionError(
                f"the directions compute in {forward.dtype} and {backward.dtype}",
                fix="build both layers with the same dtype",
            )
        if forward.input_shapes != backward.input_shapes:
            raise OptionError(
                f"the directions take different inputs: {forward.input_shapes} and "
                f"{backward.input_shapes}",
                fix="build both layers with the same input sizes",
            )
        f_out, b_out = forward.output_shapes, backward.output_shapes
        if list(f_out) != list(b_out) or any(
            (f_out[k][:-1] != b_out[k][:-1] or not f_out[k])
            if merge == "concat"
            else f_out[k] != b_out[k]
            for k in f_out
        ):
            raise OptionError(
                f"merge={merge!r} cannot merge the outputs {f_out} and {b_out}",
                fix="give both directions outputs of the same names and shapes",
            )
        self.forward, self.backward, self.merge = forward, backward, merge
        self.name = name or f"bidirectional({forward.name})"
        self.dtype = forward.dtype
        self.backend = forward.backend
        self.params = {f"forward.{k}": v for k, v in forward.params.items()}
        self.params |= {f"backward.{k}": v for k, v in backward.params.items()}
        self._compiled: dict[Any, Any] = {}

    def _cache_parts(self) -> dict[str, Any] | None:
        f, b = self.forward._cache_parts(), self.backward._cache_parts()
        if type(self) is not Bidirectional or f is None or b is None:
            return None
        return {"class": "Bidirectional", "forward": f, "backward": b, "merge": self.merge}

    @property
    def input_shapes(self) -> dict[str, tuple[int, ...]]:
        return self.forward.input_shapes

    @property
    def output_shapes(self) -> dict[str, tuple[int, ...]]:
        f_out, b_out = self.forward.output_shapes, self.backward.output_shapes
        if self.merge != "concat":
            return dict(f_out)
        return {k: (*s[:-1], s[-1] + b_out[k][-1]) for k, s in f_out.items()}

    @property
    def state_shapes(self) -> dict[str, tuple[int, ...]]:
        return self._join(self.forward.state_shapes, self.backward.state_shapes)

    @staticmethod
    def _join(fwd: Mapping[str, Any], bwd: Mapping[str, Any]) -> dict[str, Any]:
        return {**fwd, **{k + REVERSE: v for k, v in bwd.items()}}

    def _split(self, state: Mapping[str, Any] | None) -> tuple[dict | None, dict | None]:
        if not state:
            return None, None
        fwd = {k: v for k, v in state.items() if k in self.forward.state_shapes}
        bwd = {k[: -len(REVERSE)]: v for k, v in state.items() if k not in fwd}
        return fwd, bwd

    def _declared_state(self, batch: int) -> dict[str, np.ndarray]:
        return self._join(self.forward._declared_state(batch), self.backward._declared_state(batch))

    def _check_stateful(self) -> None:
        raise OptionError(
            f"`{self.name}` is bidirectional and cannot carry its state between calls",
            fix="its backward direction needs the end of the sequence: run whole sequences",
        )

    def _graph(self, inputs: dict[str, TensorVariable], init: Any, loop: Loop) -> RecurrentOutput:
        if loop.reverse:
            raise OptionError(
                "reverse=True has no meaning for a Bidirectional layer",
                fix="it runs both directions already; swap forward and backward if needed",
            )
        f_init, b_init = self._split(init)
        fwd = self.forward._graph(inputs, f_init, loop)
        bwd = self.backward._graph(inputs, b_init, replace(loop, reverse=True))
        outputs = {}
        for k, a in fwd.outputs.items():
            b = bwd.outputs[k]
            if self.merge == "concat":
                outputs[k] = pt.concatenate([a, b], axis=-1)
            elif self.merge == "sum":
                outputs[k] = a + b
            else:
                outputs[k] = (a + b) * np.asarray(0.5, self.dtype)
        return RecurrentOutput(
            outputs, self._join(fwd.state, bwd.state), {**fwd.updates, **bwd.updates}
        )

    def torch_state(self, suffix: str = "_l0") -> dict[str, np.ndarray]:
        """PyTorch's names: ``weight_ih_l0`` forward, ``weight_ih_l0_reverse`` backward."""
        return {**self.forward.torch_state(suffix), **self.backward.torch_state(suffix + REVERSE)}

    def load_torch(self, state_dict: Mapping[str, Any], suffix: str = "_l0") -> None:
        """Set both directions from a PyTorch ``bidirectional=True`` module's state."""
        self.forward.load_torch(state_dict, suffix)
        self.backward.load_torch(state_dict, suffix + REVERSE)


class Stack(SequenceLayer):
    """Layers applied one after the other: the first output of each layer is the
    input of the next.

    .. math::

        h^{(0)} = x, \\qquad
        h^{(l)} = \\mathrm{layer}_l\\big(\\mathrm{dropout}(h^{(l-1)})\\big)
        \\quad (l = 1 .. L)

    where dropout acts only between layers (``l > 1``) and only in training graphs
    (``layer(x, training=True)``): each value is zeroed with probability ``dropout``
    and the rest scaled by ``1 / (1 - dropout)`` (inverted dropout, so inference
    needs no scaling). Masks, resets, ``reverse``, ``truncate_gradient`` and
    ``checkpoint`` apply to every layer. ``initial_state`` and ``out.state`` are lists
    of per-layer states, bottom first; ``params`` are named ``l0.W_ih``, ``l1.W_ih``, ...

    Parameters
    ----------
    layers
        The layers, bottom first (:class:`Recurrent` or :class:`Bidirectional`).
    dropout
        The probability of dropping a value between layers when training.
    seed
        Seeds the dropout: the same seed draws the same masks.
    name
        Names the layer in messages.

    >>> stack = rnnc.Stack([rnnc.Recurrent("gru", I=4, H=8), rnnc.Recurrent("gru", I=8, H=8)])
    >>> out = stack(x, initial_state=[{"h": h0}, None])
    >>> out.state[1]["h"]                                 # the top layer's final state
    """

    def __init__(
        self,
        layers: Sequence[SequenceLayer],
        *,
        dropout: float = 0.0,
        seed: int = 0,
        name: str = "stack",
    ) -> None:
        layers = list(layers)
        if not layers or not all(isinstance(layer, SequenceLayer) for layer in layers):
            raise OptionError(
                "Stack takes a non-empty list of layers",
                fix="e.g. Stack([Recurrent('gru', I=4, H=8), Recurrent('gru', I=8, H=8)])",
            )
        if not 0.0 <= float(dropout) < 1.0:
            raise OptionError(f"dropout must be in [0, 1), not {dropout!r}")
        dtypes = {layer.dtype for layer in layers}
        if len(dtypes) > 1:
            raise OptionError(
                f"the layers compute in {sorted(dtypes)}", fix="build them with one dtype"
            )
        for i, (below, above) in enumerate(itertools.pairwise(layers)):
            out_name, out_shape = next(iter(below.output_shapes.items()))
            if len(above.input_shapes) != 1 or next(iter(above.input_shapes.values())) != out_shape:
                raise OptionError(
                    f"layer {i + 1} (`{above.name}`) takes {above.input_shapes}, but layer {i} "
                    f"(`{below.name}`) gives `{out_name}` of shape {_format(out_shape)}",
                    fix=f"build layer {i + 1} with an input of size {_format(out_shape)}",
                )
        self.layers = layers
        self.dropout = float(dropout)
        self.seed = seed
        self.name = name
        self.dtype = layers[0].dtype
        self.backend = layers[0].backend
        self.params = {
            f"l{i}.{k}": v for i, layer in enumerate(layers) for k, v in layer.params.items()
        }
        self._compiled: dict[Any, Any] = {}
        self._graphs = 0  # training graphs built: each draws from its own generator

    def _cache_parts(self) -> dict[str, Any] | None:
        layers = [layer._cache_parts() for layer in self.layers]
        if type(self) is not Stack or None in layers:
            return None
        return {"class": "Stack", "layers": layers, "dropout": self.dropout}

    @property
    def input_shapes(self) -> dict[str, tuple[int, ...]]:
        return self.layers[0].input_shapes

    @property
    def output_shapes(self) -> dict[str, tuple[int, ...]]:
        return self.layers[-1].output_shapes

    @property
    def state_shapes(self) -> list[Any]:
        return [layer.state_shapes for layer in self.layers]

    def _declared_state(self, batch: int) -> list[Any]:
        return [layer._declared_state(batch) for layer in self.layers]

    def _check_stateful(self) -> None:
        for layer in self.layers:
            layer._check_stateful()

    def _graph(self, inputs: dict[str, TensorVariable], init: Any, loop: Loop) -> RecurrentOutput:
        states, updates = [], {}
        rng = next_rng = None
        out = None
        for i, layer in enumerate(self.layers):
            if out is not None:
                y = out.outputs[next(iter(self.layers[i - 1].output_shapes))]
                if loop.training and self.dropout > 0:
                    if rng is None:
                        rng = next_rng = pt.random.shared_rng(
                            np.random.default_rng([self.seed, self._graphs]),
                            name=f"{self.name}.dropout_rng",
                        )
                        self._graphs += 1
                    next_rng, y = self._drop(y, next_rng)
                inputs = {next(iter(layer.input_shapes)): y}
            own = loop if i == len(self.layers) - 1 else replace(loop, states_only=False)
            out = layer._graph(inputs, init[i] if init else None, own)
            states.append(out.state)
            updates.update(out.updates)
        if rng is not None:
            updates[rng] = next_rng
        return RecurrentOutput(out.outputs, states, updates)

    def _drop(self, y: TensorVariable, rng: Any) -> tuple[Any, TensorVariable]:
        next_rng, u = rng.uniform(0.0, 1.0, size=y.shape)
        kept = y * np.asarray(1.0 / (1.0 - self.dropout), self.dtype)
        return next_rng, pt.switch(pt.ge(u, self.dropout), kept, np.asarray(0, self.dtype))

    def torch_state(self, suffix: str = "_l0") -> dict[str, np.ndarray]:
        """PyTorch's names: layer ``l`` under ``_l{l}`` (and ``_l{l}_reverse``)."""
        self._check_torch(suffix)
        out: dict[str, np.ndarray] = {}
        for i, layer in enumerate(self.layers):
            out |= layer.torch_state(f"_l{i}")
        return out

    def load_torch(self, state_dict: Mapping[str, Any], suffix: str = "_l0") -> None:
        """Set every layer from a multi-layer PyTorch module's state (``_l0``, ``_l1``, ...)."""
        self._check_torch(suffix)
        for i, layer in enumerate(self.layers):
            layer.load_torch(state_dict, f"_l{i}")

    def _check_torch(self, suffix: str) -> None:
        if suffix != "_l0":
            raise OptionError(
                f"suffix={suffix!r} for a Stack",
                fix="a stack names its layers _l0, _l1, ... itself; leave suffix out",
            )
        for layer in self.layers:
            if not hasattr(layer, "load_torch") or isinstance(layer, Stack):
                raise OptionError(
                    f"layer `{layer.name}` has no PyTorch counterpart",
                    fix="load_torch/torch_state work for stacks of one-layer built-in cells",
                )
            if isinstance(layer, Recurrent) and isinstance(layer.inner, Stack):
                raise OptionError(
                    f"layer `{layer.name}` has num_layers={layer.num_layers} inside a Stack",
                    fix="PyTorch numbers the layers of one module; flatten the stack",
                )
