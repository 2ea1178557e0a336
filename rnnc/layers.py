"""Layers: a recurrent layer made from any cell.

>>> layer = rnnc.Recurrent("gru", I=8, H=16)
>>> x = pt.tensor3("x")                                   # [batch, time, I]
>>> out = layer(x)
>>> out.outputs["y"], out.state["h"]                      # [batch, time, H], [batch, H]
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytensor
import pytensor.tensor as pt
from pytensor.tensor.variable import TensorVariable

from rnnc import ir, passes
from rnnc.compile import check_backend, default_backend, function, load_cell
from rnnc.errors import (
    InputDtypeError,
    InputShapeError,
    MissingDimensionError,
    OptionError,
    UnknownDimensionError,
)
from rnnc.init import initialize
from rnnc.lower import scan_cell

__all__ = ["TORCH_LAYOUT", "Recurrent", "RecurrentOutput"]

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


@dataclass
class RecurrentOutput:
    """What a layer returns: ``outputs[name]`` is ``[batch, time, ...]`` and
    ``state[name]`` ``[batch, ...]`` (the state after each sequence's last real step).
    The outputs are also attributes: ``out.y``."""

    outputs: dict[str, Any]
    state: dict[str, Any]

    def __getattr__(self, name: str) -> Any:
        outputs = self.__dict__.get("outputs", {})
        if name in outputs:
            return outputs[name]
        raise AttributeError(name)


class Recurrent:
    """A recurrent layer running ``cell`` over sequences ``[batch, time, features]``.

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
        Seeds the initialisers.
    name
        Prefix of the parameters' PyTensor names.
    optimize
        The IR passes (:mod:`rnnc.passes`): True (all, the default), False (none), or
        a dict switching some, e.g. ``{"fuse": False, "save": "none"}``.
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
        **dims: int,
    ) -> None:
        self.cell = load_cell(cell)
        self.optimize = passes.resolve(optimize)
        if dtype not in ("float32", "float64"):
            raise OptionError(f"dtype must be 'float32' or 'float64', not {dtype!r}")
        self.dtype = dtype
        self.backend = check_backend(backend) if backend else None
        self.name = name or self.cell.name
        self.sizes = self._check_dims(dims)
        if not bias:
            self.cell = self._without_bias(self.cell)
        rng = np.random.default_rng(seed)
        self.params: dict[str, pytensor.compile.SharedVariable] = {}
        for pname, spec in self.cell.params.items():
            shape = ir.shape_size(spec.shape, self.sizes)
            value = initialize(spec.init, spec.args, shape, rng).astype(dtype)
            self.params[pname] = pytensor.shared(value, name=f"{self.name}.{pname}")
        self._compiled: dict[Any, Any] = {}

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

    # ---------------------------------------------------------------- graphs
    @property
    def input_names(self) -> list[str]:
        return list(self.cell.inputs)

    def _inputs(self, x: Any) -> dict[str, TensorVariable]:
        names = self.input_names
        if isinstance(x, Mapping):
            given = dict(x)
        elif len(names) == 1:
            given = {names[0]: x}
        else:
            raise OptionError(
                f"cell `{self.cell.name}` has {len(names)} inputs ({', '.join(names)})",
                fix="pass them as a dict: layer({" + ", ".join(f"'{n}': ..." for n in names) + "})",
            )
        if set(given) != set(names):
            raise OptionError(
                f"inputs {sorted(given)} do not match the cell's inputs {names}",
                fix="pass exactly the cell's inputs, by name",
            )
        return {
            n: self._tensor(f"x['{n}']" if len(names) > 1 else "x", given[n], self.cell.inputs[n])
            for n in names
        }

    def _tensor(
        self, what: str, value: Any, example_shape: ir.Shape, lead: int = 2
    ) -> TensorVariable:
        """A checked tensor ``[batch, time, *example_shape]`` (lead=2) or ``[batch, ...]``."""
        want = ir.shape_size(example_shape, self.sizes)
        lead_names = ["batch", "time"][:lead]
        expected = "[" + ", ".join(lead_names + [str(d) for d in want]) + "]"
        if isinstance(value, np.ndarray | list | tuple | float | int):
            array = np.asarray(value)
            if array.dtype.kind not in "fiu" or (array.dtype.kind == "f" and False):
                raise InputDtypeError(f"{what} has dtype {array.dtype}; expected {self.dtype}")
            if array.dtype.kind != "f":
                raise InputDtypeError(
                    f"{what} has dtype {array.dtype}; expected {self.dtype}",
                    fix=f"convert it: {what}.astype('{self.dtype}')",
                )
            value = pt.as_tensor_variable(array.astype(self.dtype))
        value = pt.as_tensor_variable(value)
        if value.ndim != lead + len(want):
            raise InputShapeError(
                f"{what} must have {lead + len(want)} axes {expected}, but it has {value.ndim}",
                fix="add the missing batch or time axis" if value.ndim < lead + len(want) else None,
            )
        static = value.type.shape[lead:]
        if any(s is not None and s != w for s, w in zip(static, want, strict=True)):
            got = "[" + ", ".join(lead_names + [str(s) for s in static]) + "]"
            raise InputShapeError(
                f"{what} has shape {got}; expected {expected}",
                fix="pass features of the size the layer was built with",
            )
        if value.dtype != self.dtype:
            raise InputDtypeError(
                f"{what} has dtype {value.dtype}; the layer computes in {self.dtype}",
                fix=f"cast it (pt.cast({what}, '{self.dtype}')) or build the layer with dtype='{value.dtype}'",
            )
        return value

    def __call__(
        self,
        x: Any,
        initial_state: Mapping[str, Any] | None = None,
        mask: Any = None,
        reverse: bool = False,
        truncate_gradient: int = -1,
    ) -> RecurrentOutput:
        """Run the layer over ``x`` (``[batch, time, features]``; a dict by input
        name when the cell has several inputs). ``initial_state`` maps state names to
        ``[batch, ...]`` values; ``mask`` is ``[batch, time]`` with 1 for a real step."""
        inputs = self._inputs(x)
        init = None
        if initial_state is not None:
            unknown = set(initial_state) - set(self.cell.states)
            if unknown:
                raise OptionError(
                    f"initial_state names {sorted(unknown)}, which are not states of `{self.cell.name}`",
                    fix=f"its states are: {', '.join(self.cell.states)}",
                )
            init = {
                k: self._tensor(f"initial_state['{k}']", v, self.cell.states[k].shape, lead=1)
                for k, v in initial_state.items()
            }
        m = None
        if mask is not None:
            m = pt.as_tensor_variable(
                np.asarray(mask) if not isinstance(mask, pt.Variable) else mask
            )
            if m.ndim != 2:
                raise InputShapeError(f"mask must be [batch, time], but it has {m.ndim} axes")
        result = scan_cell(
            passes.optimize(self.cell, self.optimize, self.sizes),
            inputs,
            self.params,
            self.sizes,
            self.dtype,
            initial_state=init,
            mask=m,
            reverse=reverse,
            truncate_gradient=truncate_gradient,
        )
        outputs = {k: v for k, v in result.outputs.items() if not k.startswith(passes.SAVED_PREFIX)}
        return RecurrentOutput(outputs, result.state)

    # ---------------------------------------------------------------- NumPy
    def run(
        self,
        x: Any,
        initial_state: Mapping[str, np.ndarray] | None = None,
        mask: np.ndarray | None = None,
        reverse: bool = False,
    ) -> RecurrentOutput:
        """Run on NumPy arrays; compiles once per kind of call and returns NumPy arrays."""
        given = dict(x) if isinstance(x, Mapping) else {self.input_names[0]: x}
        init = dict(initial_state or {})
        key = (tuple(sorted(init)), mask is not None, reverse)
        if key not in self._compiled:
            xs = {
                n: pt.tensor(n, dtype=self.dtype, shape=(None,) * (2 + len(s)))
                for n, s in self.cell.inputs.items()
            }
            hs = {
                n: pt.tensor(
                    f"{n}0", dtype=self.dtype, shape=(None,) * (1 + len(self.cell.states[n].shape))
                )
                for n in sorted(init)
            }
            m = pt.matrix("mask", dtype=self.dtype) if mask is not None else None
            out = self(xs if len(xs) > 1 else next(iter(xs.values())), hs or None, m, reverse)
            names = (list(out.outputs), list(out.state))
            fn = function(
                [*xs.values(), *hs.values(), *([m] if m is not None else [])],
                [*out.outputs.values(), *out.state.values()],
                self.backend or default_backend(),
            )
            self._compiled[key] = (fn, names)
        fn, (out_names, state_names) = self._compiled[key]
        args = [
            self._array(f"x['{n}']" if len(given) > 1 else "x", given.get(n), s, 2)
            for n, s in self.cell.inputs.items()
        ]
        args += [
            self._array(f"initial_state['{n}']", init[n], self.cell.states[n].shape, 1)
            for n in sorted(init)
        ]
        if mask is not None:
            args.append(np.asarray(mask, dtype=self.dtype))
        values = fn(*args)
        k = len(out_names)
        return RecurrentOutput(
            dict(zip(out_names, values[:k], strict=True)),
            dict(zip(state_names, values[k:], strict=True)),
        )

    def _array(self, what: str, value: Any, example_shape: ir.Shape, lead: int) -> np.ndarray:
        self._tensor(what, np.asarray(value), example_shape, lead)  # validates
        return np.asarray(value, dtype=self.dtype)

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
        """The parameters under PyTorch's names and layouts (``weight_ih_l0``, ...)."""
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
