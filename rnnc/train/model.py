"""A character (token) language model: input code, stacked recurrent layers,
dropout between them, a dense softmax head; and the functions compiled from it.

The model is char-rnn's: one-hot inputs (or an embedding), ``num_layers`` recurrent
layers of any cell, dropout on the input of every layer but the first and before
the head, and a linear layer to the vocabulary. Each layer is its own
:class:`rnnc.Recurrent` fed the output of the one below, with its own initial state.

>>> model = LanguageModel("lstm", vocab_size=65, rnn_size=128, num_layers=2)
>>> fns = model.compile(RMSprop(2e-3), backend="c")
>>> loss, grad_norm, states = fns.train(x, y, model.zero_state(50))
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytensor.tensor as pt
from pytensor.compile import SharedVariable

from rnnc import cache, ir
from rnnc.compile import default_backend, function, load_cell, parse
from rnnc.errors import (
    CheckpointError,
    InputDtypeError,
    InputShapeError,
    InputValueError,
    OptionError,
)
from rnnc.layers import Recurrent
from rnnc.nn import Dense, Embedding, one_hot, sequence_cross_entropy
from rnnc.train.optim import Optimizer

__all__ = ["CompiledModel", "DropoutMasks", "LanguageModel", "State", "training_backend"]

#: The carried state of a model: per layer, state name -> ``[batch, ...]`` array.
State = list[dict[str, np.ndarray]]


def _dims(cell: ir.CellIR, in_size: int, hidden: int) -> tuple[dict[str, int], str]:
    """The sizes of a cell's dimensions in a stack, and the name of its output.

    The input's dimension gets ``in_size``; every other dimension gets ``hidden``.
    """
    if len(cell.inputs) != 1:
        raise OptionError(
            f"cell `{cell.name}` has {len(cell.inputs)} inputs; a language model needs one",
            fix="write the cell with one input x: [I]",
        )
    (shape,) = cell.inputs.values()
    if len(shape) != 1 or not isinstance(shape[0], str) or not shape[0].isidentifier():
        raise OptionError(
            f"the input of cell `{cell.name}` must be a vector [I] with a named dimension",
            fix="declare the input as x: [I]",
        )
    sizes = {d: hidden for d in cell.dims()}
    sizes[shape[0]] = in_size
    out = "y" if "y" in cell.outputs else next(iter(cell.outputs))
    if len(cell.outputs[out].shape) != 1:
        raise OptionError(f"the output `{out}` of cell `{cell.name}` must be a vector")
    return sizes, out


def training_backend() -> str:
    """The backend a run uses when none is given: ``$RNNC_BACKEND`` if set, else JAX
    when it is installed, else C.

    Measured on 2 cores for char-rnn's model (2 x 128 LSTM, batches of 50 x 50, the
    default corpus, one minute): JAX trains at about 39,000 characters/s, C at about
    20,000 (with one BLAS thread; more threads made it far slower), Numba at 2/3 of
    C after a 90 s first call, PyTensor's Python mode at 1/25 of C. On an AMD EPYC of
    family 25, model 17 (2026-12-06, 30 s runs, alternated): JAX 60,500-64,800, C
    56,700-56,800 (with its one-hot inputs gathered, :mod:`rnnc.onehot`).
    """
    if os.environ.get("RNNC_BACKEND"):
        return default_backend()
    try:
        import jax  # noqa: F401
    except ImportError:
        return "c"
    return "jax"


class LanguageModel:
    """Stacked recurrent layers over tokens, predicting the next token.

    Parameters
    ----------
    cell
        A built-in name, a ``.cell`` path, cell text or a cell object (anything
        :func:`rnnc.load_cell` takes; text is parsed when it starts with ``cell``).
    vocab_size
        Number of distinct tokens.
    rnn_size
        Size of every dimension of the cell except its input's.
    num_layers
        Number of stacked layers.
    dropout
        Dropout probability between layers and before the head (char-rnn's).
    embedding
        0 feeds one-hot codes (char-rnn); n > 0 an embedding of size n.
    dtype, seed
        Parameter dtype; the seed of the initialisers and of dropout.
    """

    def __init__(
        self,
        cell: Any,
        vocab_size: int,
        rnn_size: int = 128,
        num_layers: int = 2,
        dropout: float = 0.0,
        embedding: int = 0,
        dtype: str = "float32",
        seed: int = 123,
    ) -> None:
        if isinstance(cell, str) and cell.lstrip().startswith(("cell ", "#", '"""')):
            cells = parse(cell, "<checkpoint>")
            cell = next(iter(cells.values()))
        #: the cell's text, stored in checkpoints (a Python-DSL cell gives its equivalent)
        self.cell_text = getattr(cell, "text", None) or load_cell(cell).source
        self.cell = load_cell(cell)
        if num_layers < 1:
            raise OptionError(f"num_layers must be at least 1, not {num_layers}")
        self.vocab_size = int(vocab_size)
        self.rnn_size = int(rnn_size)
        self.num_layers = int(num_layers)
        self.embedding_size = int(embedding)
        self.dtype = dtype
        self.seed = int(seed)
        self.embedding = (
            Embedding(vocab_size, embedding, dtype=dtype, seed=seed, name="embedding")
            if embedding
            else None
        )
        in_size = embedding or vocab_size
        self.layers: list[Recurrent] = []
        self.output_name = "y"
        for k in range(num_layers):
            sizes, self.output_name = _dims(self.cell, in_size, rnn_size)
            layer = Recurrent(self.cell, dtype=dtype, seed=seed + 1 + k, name=f"layer{k}", **sizes)
            self.layers.append(layer)
            in_size = ir.shape_size(self.cell.outputs[self.output_name].shape, layer.sizes)[0]
        self.head = Dense(in_size, vocab_size, dtype=dtype, seed=seed + 100, name="head")
        self.dropout = DropoutMasks(dropout, dtype, seed=seed + 200)
        #: the size of each dropped tensor: the inputs of layers 1.. and the top output
        self.dropout_sizes = [
            ir.shape_size(self.cell.outputs[self.output_name].shape, layer.sizes)[0]
            for layer in self.layers
        ]

    # ---------------------------------------------------------------- description
    def options(self) -> dict[str, Any]:
        """What rebuilds the same model (checkpoints store it)."""
        return {
            "cell_name": self.cell.name,
            "cell_source": self.cell_text,
            "vocab_size": self.vocab_size,
            "rnn_size": self.rnn_size,
            "num_layers": self.num_layers,
            "dropout": self.dropout.p,
            "embedding": self.embedding_size,
            "dtype": self.dtype,
            "seed": self.seed,
        }

    def _cache_parts(self) -> dict[str, Any] | None:
        """What the model's functions depend on besides its parameters, whose names and
        types the cache adds (the key in rnnc's cache; None: not cached)."""
        layers = [layer._cache_parts() for layer in self.layers]
        if None in layers:
            return None
        return {
            "class": "LanguageModel",
            "layers": layers,
            "vocab_size": self.vocab_size,
            "embedding": self.embedding_size,
            "output": self.output_name,
            "dtype": self.dtype,
        }

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> LanguageModel:
        """The model :meth:`options` describes (with freshly initialised parameters)."""
        source = options.get("cell_source") or options["cell_name"]
        if source.lstrip().startswith(("cell ", "#", '"""')):
            cells = parse(source, "<checkpoint>")
            if options["cell_name"] not in cells:
                raise CheckpointError(f"the checkpoint's cell text lacks `{options['cell_name']}`")
            source = cells[options["cell_name"]]
        return cls(
            source,
            options["vocab_size"],
            rnn_size=options["rnn_size"],
            num_layers=options["num_layers"],
            dropout=options["dropout"],
            embedding=options["embedding"],
            dtype=options["dtype"],
            seed=options["seed"],
        )

    @property
    def params(self) -> dict[str, SharedVariable]:
        """Every parameter, by a unique name (``layer0.W_ii``, ``head.W``, ...)."""
        out: dict[str, SharedVariable] = {}
        if self.embedding is not None:
            out |= {f"embedding.{k}": v for k, v in self.embedding.params.items()}
        for k, layer in enumerate(self.layers):
            out |= {f"layer{k}.{n}": v for n, v in layer.params.items()}
        out |= {f"head.{k}": v for k, v in self.head.params.items()}
        return out

    def get_params(self) -> dict[str, np.ndarray]:
        """Copies of every parameter's value."""
        return {k: v.get_value() for k, v in self.params.items()}

    def set_params(self, values: dict[str, np.ndarray]) -> None:
        """Set every parameter (names and shapes must match)."""
        params = self.params
        if set(values) != set(params):
            missing = sorted(set(params) - set(values))
            extra = sorted(set(values) - set(params))
            raise CheckpointError(
                f"parameters do not match the model (missing {missing[:3]}, extra {extra[:3]})"
            )
        for k, v in params.items():
            old = v.get_value(borrow=True)
            if values[k].shape != old.shape:
                raise CheckpointError(
                    f"parameter {k} has shape {values[k].shape}, model {old.shape}"
                )
            v.set_value(np.asarray(values[k], dtype=old.dtype))

    def num_params(self) -> int:
        return int(sum(v.get_value(borrow=True).size for v in self.params.values()))

    def zero_state(self, batch: int) -> State:
        """The initial (all-zero) carried state for ``batch`` sequences."""
        out = []
        for layer in self.layers:
            out.append(
                {
                    n: np.zeros((batch, *ir.shape_size(s.shape, layer.sizes)), self.dtype)
                    for n, s in self.cell.states.items()
                }
            )
        return out

    # ---------------------------------------------------------------- graphs
    def forward(
        self, ids: Any, state: Sequence[dict[str, Any]], masks: Sequence[Any] | None = None
    ) -> tuple[Any, list[dict[str, Any]]]:
        """Logits ``[batch, time, vocab]`` for ``ids`` ``[batch, time]`` and the final
        states, starting from ``state`` (one dict per layer). ``masks`` (training with
        dropout) multiply the input of every layer but the first and the top output."""
        x = self.embedding(ids) if self.embedding else one_hot(ids, self.vocab_size, self.dtype)
        finals = []
        for k, layer in enumerate(self.layers):
            if k > 0 and masks:
                x = x * masks[k - 1]
            out = layer(x, initial_state=state[k])
            x = out.outputs[self.output_name]
            finals.append(out.state)
        if masks:
            x = x * masks[-1]
        return self.head(x), finals

    def _state_vars(self, batch: int | None) -> list[dict[str, Any]]:
        """Symbolic initial states, ``[batch, ...]`` (a static batch when given)."""
        out = []
        for k, layer in enumerate(self.layers):
            out.append(
                {
                    n: pt.tensor(
                        f"{n}{k}",
                        dtype=self.dtype,
                        shape=(batch, *ir.shape_size(s.shape, layer.sizes)),
                    )
                    for n, s in self.cell.states.items()
                }
            )
        return out

    def compile(
        self,
        optimizer: Optimizer | None,
        backend: str | None = None,  # default: training_backend()
        parts: Sequence[str] = ("train", "eval", "step"),
        batch_shape: tuple[int, int] | None = None,
    ) -> CompiledModel:
        """Compile the training step (``"train"``, needs ``optimizer``), the evaluation
        (``"eval"``) and the one-step sampling (``"step"``, one sequence) functions.

        ``batch_shape`` (batch, time) fixes the shapes of training and evaluation
        batches, as the JAX backend needs; without it any shape goes (other backends).

        The functions are kept in rnnc's cache (not on the ``"python"`` backend), keyed
        by the model's layers, the optimiser's kind and options (not the learning rate,
        a shared variable), the batch shape and the backend: a second ``rnnc train`` or
        ``rnnc sample`` of the same model does not compile. A loaded training step
        updates this model's parameters and ``optimizer``'s slots, found by name.
        """
        backend = backend or training_backend()
        key = self._cache_parts()

        def cached(part: str, build: Any, shared: dict[str, Any], **more: Any) -> Any:
            if key is None:
                return build()
            parts = {"model": key, "part": part, "batch": batch_shape, **more}
            return cache.cached_function(parts, build, shared, complete=True, backend=backend)

        names = list(self.cell.states)
        flat = lambda st: [s[n] for s in st for n in names]  # noqa: E731
        batch, time = batch_shape or (None, None)
        x = pt.tensor("x", dtype="int32", shape=(batch, time))
        y = pt.tensor("y", dtype="int32", shape=(batch, time))
        train = evaluate = step = None
        if "train" in parts:
            if optimizer is None:
                raise OptionError("compiling the training step needs an optimizer")

            def build_train() -> Any:
                s0 = self._state_vars(batch)
                masks = [
                    pt.tensor(f"keep{k}", dtype=self.dtype, shape=(batch, time, n))
                    for k, n in enumerate(self.dropout_sizes)
                ]
                logits, finals = self.forward(x, s0, masks if self.dropout.p else None)
                loss = sequence_cross_entropy(logits, y)
                updates, norm = optimizer.updates(self.params, loss)
                inputs = [x, y, *flat(s0), *(masks if self.dropout.p else [])]
                # called thousands of times: its bookkeeping compiled too (rnnc.interpreted)
                outputs = [loss, norm, *flat(finals)]
                return function(inputs, outputs, backend, updates=updates, interpreted_ops=False)

            if type(optimizer).__module__ != Optimizer.__module__:
                train = build_train()  # the user's class: options() may not name all
            else:  # the learning rate is a shared variable, not part of the key
                rule = {k: v for k, v in optimizer.options().items() if k != "lr"}
                train = cached(
                    "train",
                    build_train,
                    {**self.params, **optimizer.make_slots(self.params)},
                    optimizer=[type(optimizer).__name__, rule],
                    dropout=bool(self.dropout.p),
                )
        if "eval" in parts:

            def build_eval() -> Any:
                s0 = self._state_vars(batch)
                logits, finals = self.forward(x, s0)
                loss = sequence_cross_entropy(logits, y)
                return function([x, y, *flat(s0)], [loss, *flat(finals)], backend)

            evaluate = cached("eval", build_eval, self.params)
        if "step" in parts:

            def build_step() -> Any:
                s0 = self._state_vars(1)
                token = pt.tensor("token", dtype="int32", shape=(1,))
                logits, finals = self.forward(token[:, None], s0)
                return function([token, *flat(s0)], [logits[:, 0, :], *flat(finals)], backend)

            step = cached("step", build_step, self.params)
        return CompiledModel(self, names, train, evaluate, step)


class DropoutMasks:
    """Inverted-dropout masks drawn with NumPy and fed to the training step.

    Drawn outside the graph so that every backend (JAX copies PyTensor's random
    generators into its own) sees the same masks, and so that the generator's state
    is a NumPy one a checkpoint can save and restore exactly.
    """

    def __init__(self, p: float, dtype: str, seed: int) -> None:
        if not 0.0 <= p < 1.0:
            raise OptionError(f"dropout must be in [0, 1), not {p}")
        self.p = float(p)
        self.dtype = dtype
        self.rng = np.random.default_rng(seed)

    def draw(self, shape: tuple[int, int], sizes: Sequence[int]) -> list[np.ndarray]:
        """One mask ``[batch, time, size]`` per size: 0 with probability ``p``, else
        ``1 / (1 - p)``."""
        scale = np.asarray(1.0 / (1.0 - self.p), self.dtype)
        return [(self.rng.random((*shape, n)) >= self.p).astype(self.dtype) * scale for n in sizes]

    def get_state(self) -> dict[str, Any]:
        """The generator's state (JSON-serialisable)."""
        return self.rng.bit_generator.state

    def set_state(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state


@dataclass
class CompiledModel:
    """The compiled functions of a :class:`LanguageModel`, on NumPy arrays."""

    model: LanguageModel
    state_names: list[str]
    train_fn: Any
    eval_fn: Any
    step_fn: Any

    def _flat(self, state: State) -> list[np.ndarray]:
        return [s[n] for s in state for n in self.state_names]

    def _unflat(self, values: Sequence[np.ndarray]) -> State:
        k = len(self.state_names)
        return [
            dict(zip(self.state_names, values[i : i + k], strict=True))
            for i in range(0, len(values), k)
        ]

    def _tokens(self, what: str, values: Any, axes: str) -> np.ndarray:
        """``values`` as the int32 token ids the functions take, checked first: integers
        in ``[0, vocab)`` with the axes ``axes`` (``"[batch, time]"`` or ``"[batch]"``)."""
        array = np.asarray(values)
        if array.dtype.kind not in "iu":
            raise InputDtypeError(
                f"{what} has dtype {array.dtype}; expected integer token ids",
                fix=f"pass the ids of the vocabulary's characters, e.g. {what}.astype('int32')",
            )
        if array.ndim != axes.count(",") + 1:
            raise InputShapeError(
                f"{what} must have the axes {axes}, but it has shape {list(array.shape)}",
            )
        vocab = self.model.vocab_size
        low, high = (int(array.min()), int(array.max())) if array.size else (0, 0)
        if low < 0 or high >= vocab:
            bad = low if low < 0 else high
            raise InputValueError(
                f"{what} holds the token id {bad}, outside the vocabulary's 0..{vocab - 1}",
                fix="encode the text with the vocabulary this model was built for",
            )
        return array.astype(np.int32, copy=False)

    def _batch(self, x: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
        x, y = self._tokens("x", x, "[batch, time]"), self._tokens("y", y, "[batch, time]")
        if x.shape != y.shape:
            raise InputShapeError(
                f"x has shape {list(x.shape)} and y {list(y.shape)}; they must be the same",
                fix="y is x shifted by one step: the next token at every position",
            )
        return x, y

    def train(self, x: np.ndarray, y: np.ndarray, state: State) -> tuple[float, float, State]:
        """One optimiser step on a batch; returns loss, gradient norm, final state."""
        x, y = self._batch(x, y)
        drop = self.model.dropout
        masks = drop.draw(x.shape, self.model.dropout_sizes) if drop.p else []
        loss, norm, *rest = self.train_fn(x, y, *self._flat(state), *masks)
        return float(loss), float(norm), self._unflat(rest)

    def evaluate(self, x: np.ndarray, y: np.ndarray, state: State) -> tuple[float, State]:
        """The mean loss on a batch (no dropout, no update) and the final state."""
        loss, *rest = self.eval_fn(*self._batch(x, y), *self._flat(state))
        return float(loss), self._unflat(rest)

    def step(self, tokens: np.ndarray, state: State) -> tuple[np.ndarray, State]:
        """Logits ``[batch, vocab]`` of the next token after ``tokens`` ``[batch]``."""
        tokens = self._tokens("tokens", tokens, "[batch]")
        logits, *rest = self.step_fn(tokens, *self._flat(state))
        return logits, self._unflat(rest)
