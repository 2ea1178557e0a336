"""Optimisers as PyTensor updates, gradient clipping, weight decay, step decay.

An optimiser turns parameters and a loss into the list of updates a compiled
training function applies, and holds its own state (moments, step count, learning
rate) in shared variables, so that a checkpoint can save and restore it exactly::

    opt = RMSprop(lr=2e-3, decay=0.95, clip_value=5.0)
    updates, grad_norm = opt.updates(params, loss)
    step = rnnc.compile.function([x, y], [loss, grad_norm], updates=updates)

One step does, in order: the gradients ``g`` of the loss; clipping by value
(``clip(g, -c, c)``, as char-rnn's ``-grad_clip``); clipping by global norm (all
gradients scaled by ``min(1, c / ||g||)``); weight decay (``g + wd * p``, as PyTorch's
``weight_decay=``); the rule of the optimiser. The reported ``grad_norm`` is the
global norm before clipping.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pytensor
import pytensor.tensor as pt
from pytensor.compile import SharedVariable

from rnnc.errors import CheckpointError, OptionError

__all__ = ["SGD", "Adagrad", "Adam", "Optimizer", "RMSprop", "make_optimizer", "step_decay"]


def _global_norm(grads: list[Any]) -> Any:
    """The L2 norm of all gradients together, squares summed in float64. (One sum over
    the joined gradients, not a sum of sums: PyTensor rewrites the latter into one
    elementwise Add, which fails in its Python mode with more than 32 inputs.) The
    gradients are joined in their own dtype and cast inside the sum, which PyTensor
    fuses: no float64 copy of each gradient first. The same value; ``rnnc train``'s
    step on C (two layers of 128, ``clip_value``: two norms) took 0.974-0.981 of the
    time of casting before the join (one process, calls alternated, both build orders,
    2026-12-06)."""
    flat = pt.concatenate([g.flatten() for g in grads])
    return pt.sqrt(pt.sum(pt.sqr(pt.cast(flat, "float64"))))


class Optimizer:
    """The common part of every optimiser: clipping, weight decay and state.

    Parameters
    ----------
    lr
        Learning rate; ``opt.lr`` is a shared variable a schedule may change.
    clip_value
        Clip each gradient element to ``[-clip_value, clip_value]`` (None: off).
    clip_norm
        Scale the gradients so that their global L2 norm is at most ``clip_norm``.
    weight_decay
        L2 penalty added to each gradient: ``g + weight_decay * p``.
    """

    #: Names of the per-parameter slots the rule keeps (``"m"``, ``"v"``, ...).
    slots: tuple[str, ...] = ()
    name = "optimizer"

    def __init__(
        self,
        lr: float,
        *,
        clip_value: float | None = None,
        clip_norm: float | None = None,
        weight_decay: float = 0.0,
    ) -> None:
        if not lr > 0:
            raise OptionError(f"the learning rate must be positive, not {lr}")
        for what, value in (("clip_value", clip_value), ("clip_norm", clip_norm)):
            if value is not None and not value > 0:
                raise OptionError(f"{what} must be positive (or None for no clipping), not {value}")
        if weight_decay < 0:
            raise OptionError(f"weight_decay must be >= 0, not {weight_decay}")
        self.lr = pytensor.shared(np.float64(lr), name="lr")
        self.clip_value = clip_value
        self.clip_norm = clip_norm
        self.weight_decay = weight_decay
        self.t = pytensor.shared(np.int64(0), name="t")
        self.state: dict[str, SharedVariable] = {}

    def options(self) -> dict[str, Any]:
        """The hyper-parameters (for checkpoints and logs)."""
        return {
            "name": self.name,
            "lr": float(self.lr.get_value()),
            "clip_value": self.clip_value,
            "clip_norm": self.clip_norm,
            "weight_decay": self.weight_decay,
        }

    # ---------------------------------------------------------------- graph
    def updates(
        self, params: Mapping[str, SharedVariable], loss: Any = None, grads: Any = None
    ) -> tuple[list[tuple[Any, Any]], Any]:
        """The updates of one step and the global gradient norm (before clipping).

        ``params`` maps names to shared variables; pass the scalar ``loss`` (its
        gradients are taken) or ``grads`` (a list in the order of ``params``).

        A step whose gradients are not all finite (after ``clip_value``, which turns
        an infinite element into ``±clip_value``) leaves the parameters, the slots and
        the step count as they were; the returned norm is then inf or NaN, so the caller
        sees it. (Without this, clipping by norm would scale an infinite gradient by 0
        and write NaN into every parameter.)
        """
        names = list(params)
        if grads is None:
            if loss is None:
                raise OptionError("pass the loss or the gradients")
            grads = pytensor.grad(loss, [params[n] for n in names])
        grads = list(grads)
        norm = used = _global_norm(grads)
        if self.clip_value is not None:
            c = self.clip_value
            grads = [pt.clip(g, -np.asarray(c, g.dtype), np.asarray(c, g.dtype)) for g in grads]
            used = _global_norm(grads)
        if self.clip_norm is not None:
            scale = pt.minimum(1.0, self.clip_norm / pt.maximum(used, 1e-12))
            grads = [g * pt.cast(scale, g.dtype) for g in grads]
        t = self.t + 1
        updates: list[tuple[Any, Any]] = [(self.t, t)]
        self.make_slots(params)
        for n, g in zip(names, grads, strict=True):
            p = params[n]
            if self.weight_decay:
                g = g + np.asarray(self.weight_decay, p.dtype) * p
            slots = {s: self.state[f"{n}/{s}"] for s in self.slots}
            lr = pt.cast(self.lr, p.dtype)
            new_p, new_slots = self.rule(p, g, lr, slots, t)
            updates.append((p, pt.cast(new_p, p.dtype)))
            updates += [(slots[s], pt.cast(v, p.dtype)) for s, v in new_slots.items()]
        # A step whose gradients are not finite (after clip_value) changes nothing.
        finite = pt.isfinite(used)
        return [(var, pt.switch(finite, new, var)) for var, new in updates], norm

    def make_slots(self, params: Mapping[str, SharedVariable]) -> dict[str, SharedVariable]:
        """The shared variables this optimiser keeps for ``params`` (zeros where new),
        by name: the slots (``"<param>/<slot>"``), ``"t"`` and ``"lr"``.
        :meth:`updates` makes them too; a caller that loads a compiled step instead of
        building it makes them with this."""
        for n, p in params.items():
            for s in self.slots:
                if f"{n}/{s}" not in self.state:
                    zero = np.zeros_like(p.get_value(borrow=True))
                    self.state[f"{n}/{s}"] = pytensor.shared(
                        zero, name=f"{self.name}.{n}/{s}", shape=p.type.shape
                    )
        return {**self.state, "t": self.t, "lr": self.lr}

    def rule(
        self, p: Any, g: Any, lr: Any, slots: dict[str, Any], t: Any
    ) -> tuple[Any, dict[str, Any]]:
        """The new parameter and new slots of one step (overridden by each optimiser)."""
        raise NotImplementedError

    # ---------------------------------------------------------------- state
    def reset(self, lr: float | None = None) -> None:
        """Back to the state before the first step (zero slots, step 0); a new ``lr``."""
        for v in self.state.values():
            v.set_value(np.zeros_like(v.get_value(borrow=True)))
        self.t.set_value(np.int64(0))
        if lr is not None:
            self.lr.set_value(np.float64(lr))

    def state_dict(self) -> dict[str, np.ndarray]:
        """Every slot, the step count and the learning rate, as NumPy arrays."""
        out = {k: v.get_value() for k, v in self.state.items()}
        out["__t"] = np.asarray(self.t.get_value())
        out["__lr"] = np.asarray(self.lr.get_value())
        return out

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        """Restore what :meth:`state_dict` returned (after :meth:`updates` built the slots)."""
        missing = sorted(set(self.state) - set(state))
        if missing:
            raise CheckpointError(
                f"the optimiser state lacks {', '.join(missing[:4])}",
                fix="resume with the same optimiser and model the checkpoint was made with",
            )
        for k, v in self.state.items():
            old = v.get_value(borrow=True)
            if state[k].shape != old.shape:
                raise CheckpointError(
                    f"optimiser slot {k} has shape {state[k].shape}, the model {old.shape}"
                )
            v.set_value(np.asarray(state[k], old.dtype))
        self.t.set_value(np.int64(state["__t"]))
        self.lr.set_value(np.float64(state["__lr"]))


class SGD(Optimizer):
    """Stochastic gradient descent with momentum (PyTorch's form):
    ``v = momentum * v + g;  p = p - lr * v`` (``nesterov``: ``p - lr * (g + momentum * v)``)."""

    name = "sgd"

    def __init__(
        self, lr: float = 0.01, momentum: float = 0.0, nesterov: bool = False, **kw: Any
    ) -> None:
        super().__init__(lr, **kw)
        if not 0 <= momentum < 1:
            raise OptionError(f"momentum must be in [0, 1), not {momentum}")
        self.momentum = momentum
        self.nesterov = nesterov
        self.slots = ("v",) if momentum else ()

    def options(self) -> dict[str, Any]:
        return {**super().options(), "momentum": self.momentum, "nesterov": self.nesterov}

    def rule(self, p, g, lr, slots, t):
        if not self.momentum:
            return p - lr * g, {}
        mu = np.asarray(self.momentum, p.dtype)
        v = mu * slots["v"] + g
        step = g + mu * v if self.nesterov else v
        return p - lr * step, {"v": v}


class Adam(Optimizer):
    """Adam (Kingma & Ba 2015) with bias correction, as PyTorch:
    ``m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2;
    p = p - lr * (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps)``."""

    name = "adam"
    slots = ("m", "v")

    def __init__(
        self,
        lr: float = 1e-3,
        beta1: float = 0.9,
        beta2: float = 0.999,
        eps: float = 1e-8,
        **kw: Any,
    ) -> None:
        super().__init__(lr, **kw)
        self.beta1, self.beta2, self.eps = beta1, beta2, eps

    def options(self) -> dict[str, Any]:
        return {**super().options(), "beta1": self.beta1, "beta2": self.beta2, "eps": self.eps}

    def rule(self, p, g, lr, slots, t):
        b1, b2 = np.asarray(self.beta1, p.dtype), np.asarray(self.beta2, p.dtype)
        m = b1 * slots["m"] + (1 - b1) * g
        v = b2 * slots["v"] + (1 - b2) * pt.sqr(g)
        tf = pt.cast(t, "float64")
        c1 = pt.cast(1.0 - self.beta1**tf, p.dtype)
        c2 = pt.cast(1.0 - self.beta2**tf, p.dtype)
        new = p - lr * (m / c1) / (pt.sqrt(v / c2) + np.asarray(self.eps, p.dtype))
        return new, {"m": m, "v": v}


class RMSprop(Optimizer):
    """RMSprop as char-rnn uses it (torch7 ``optim.rmsprop``, ``alpha`` = char-rnn's
    ``decay_rate``): ``m = decay m + (1-decay) g^2;  p = p - lr g / (sqrt(m) + eps)``,
    with ``m`` starting at 0."""

    name = "rmsprop"
    slots = ("m",)

    def __init__(self, lr: float = 2e-3, decay: float = 0.95, eps: float = 1e-8, **kw: Any):
        super().__init__(lr, **kw)
        if not 0 < decay < 1:
            raise OptionError(f"the RMSprop decay must be in (0, 1), not {decay}")
        self.decay, self.eps = decay, eps

    def options(self) -> dict[str, Any]:
        return {**super().options(), "decay": self.decay, "eps": self.eps}

    def rule(self, p, g, lr, slots, t):
        a = np.asarray(self.decay, p.dtype)
        m = a * slots["m"] + (1 - a) * pt.sqr(g)
        return p - lr * g / (pt.sqrt(m) + np.asarray(self.eps, p.dtype)), {"m": m}


class Adagrad(Optimizer):
    """Adagrad (Duchi et al. 2011), as PyTorch:
    ``s = s + g^2;  p = p - lr g / (sqrt(s) + eps)``."""

    name = "adagrad"
    slots = ("s",)

    def __init__(self, lr: float = 0.01, eps: float = 1e-10, **kw: Any) -> None:
        super().__init__(lr, **kw)
        self.eps = eps

    def options(self) -> dict[str, Any]:
        return {**super().options(), "eps": self.eps}

    def rule(self, p, g, lr, slots, t):
        s = slots["s"] + pt.sqr(g)
        return p - lr * g / (pt.sqrt(s) + np.asarray(self.eps, p.dtype)), {"s": s}


OPTIMIZERS: dict[str, type[Optimizer]] = {
    "sgd": SGD,
    "adam": Adam,
    "rmsprop": RMSprop,
    "adagrad": Adagrad,
}


def make_optimizer(name: str, **options: Any) -> Optimizer:
    """An optimiser by name (``sgd``, ``adam``, ``rmsprop``, ``adagrad``)."""
    if name not in OPTIMIZERS:
        raise OptionError(f"unknown optimiser {name!r}", fix=f"use one of: {', '.join(OPTIMIZERS)}")
    return OPTIMIZERS[name](**options)


def step_decay(lr: float, epoch: int, rate: float = 0.97, after: int = 10) -> float:
    """char-rnn's schedule: the learning rate once ``epoch`` (completed epochs) reaches
    ``after``, multiplied by ``rate`` at each epoch boundary from then on.

    >>> step_decay(2e-3, 9), round(step_decay(2e-3, 10), 8), round(step_decay(2e-3, 12), 8)
    (0.002, 0.00194, 0.00182476)
    """
    if rate >= 1 or epoch < after:
        return lr
    return lr * rate ** (epoch - after + 1)
