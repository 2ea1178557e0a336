"""Benchmark rnnc against a hand-written PyTensor scan, PyTorch and jax.lax.scan.

Usage::

    python benchmarks/run.py                       # everything, results into README.md
    python benchmarks/run.py --cells lstm --sizes medium --backends c,jax --repeat 15
    rnnc bench --cells gru                         # the same, from the command line

For each cell (LSTM, GRU and a custom cell), size and mode (forward; forward plus
the gradient of a fixed linear loss with respect to the input and every parameter),
the candidates are built with the same parameter values, checked to agree
numerically, and then timed *interleaved*: each repetition calls every candidate
once, in turn, so that a slow phase of the machine hits them all alike. The tables
give medians and the ratio to PyTorch (``torch.nn.LSTM``/``GRU``, or an eager loop
for the custom cell).

Threads are pinned before any numerical library is imported: the process is bound
to one core (``os.sched_setaffinity``), and OpenMP, OpenBLAS, MKL, Numba, XLA and
PyTorch are each told to use one thread, so every candidate runs on one core.

Results accumulate in ``benchmarks/results.json`` (one entry per cell, size, mode and
candidate; a new run replaces every entry of each cell, size and mode it measures, so
that the ratios of a table row come from one run), from which the section of
``benchmarks/README.md`` between the ``rnnc-bench`` markers is rewritten.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_var] = "1"
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false")
# compile times are taken on every core (rnnc compiles C modules in parallel, as on a
# user's machine): --compile runs its children with RNNC_BENCH_PIN=0
if hasattr(os, "sched_setaffinity"):
    if os.environ.get("RNNC_BENCH_PIN", "1") == "0":
        os.sched_setaffinity(0, range(os.cpu_count() or 1))
    else:
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results.json"
COMPILE = HERE / "compile.json"
README = HERE / "README.md"
START, END = "<!-- rnnc-bench:start -->", "<!-- rnnc-bench:end -->"

# switching oneDNN off for a row (below) also sets a flag for Intel GPUs, with a warning
warnings.filterwarnings("ignore", message="TF32 acceleration on top of oneDNN")

#: (batch, time, input, hidden) per size name.
SIZES = {
    "small": (8, 50, 32, 64),
    "medium": (32, 100, 128, 256),
    "large": (32, 100, 1024, 256),
}

#: The custom cell: a minimal gated unit with an output projection. Every pass has
#: something to do here: hoist and fuse the input products, sink the projection.
CUSTOM = '''
cell mgu(x: [I]) -> (y: [H]):
    """Minimal gated unit (Zhou et al. 2016) with an output projection."""
    state h: [H] = 0
    f = sigmoid(x @ W_xf + h @ W_hf + b_f)
    n = tanh(x @ W_xn + (f * h) @ W_hn + b_n)
    h' = (1 - f) * h + f * n
    y = h' @ W_y + b_y
'''

GATES = {"lstm": ["i", "f", "g", "o"], "gru": ["r", "z", "n"]}

#: What each option of the command line may name (``--cells lstm,gru``), and the
#: defaults where they are not every choice.
CHOICES = {
    "cells": ["lstm", "gru", "mgu"],  # mgu: the custom cell
    "sizes": list(SIZES),
    "backends": ["c", "numba", "jax"],
    "candidates": ["rnnc", "nosave", "saveall", "off", "hand", "torch", "jax"],
    "modes": ["forward", "gradient"],
}
DEFAULTS = {"backends": ["c", "jax"], "candidates": ["rnnc", "off", "hand", "torch", "jax"]}

#: The candidates the ratios are taken to, one per cell.
REFERENCE = {"torch.nn.LSTM", "torch.nn.GRU", "torch eager loop"}

#: PyTorch runs its CPU LSTM (not its GRU) as one oneDNN primitive per layer and
#: direction, forward and backward (``aten::mkldnn_rnn_layer``); this extra row runs
#: the same module with oneDNN switched off, through PyTorch's generic cell.
ONEDNN_OFF = ", oneDNN off"


@dataclass
class Candidate:
    """One implementation of one benchmark: a forward and a gradient callable (each
    returns NumPy arrays: ``y`` for forward, ``dL/dx`` for gradient)."""

    name: str
    forward: Callable[[], Any]
    gradient: Callable[[], Any]
    compile_s: dict[str, float] = field(default_factory=dict)


def _now() -> float:
    return time.perf_counter()


# ---------------------------------------------------------------- rnnc and PyTensor
def rnnc_layer(cell: str, size: str, optimize: Any, backend: str):
    import rnnc

    _, _, i, h = SIZES[size]
    spec = rnnc.parse(CUSTOM)["mgu"] if cell == "mgu" else cell
    return rnnc.Recurrent(spec, I=i, H=h, backend=backend, optimize=optimize, seed=0)


def pytensor_candidate(name: str, build: Callable, backend: str, x: np.ndarray, r: np.ndarray):
    """Compile ``build(x_var) -> (y, params)`` forward and with its gradient."""
    import pytensor
    import pytensor.tensor as pt

    from rnnc.compile import function

    # JAX compiles for static shapes: give it the input's (other backends: any shape)
    xv = pt.tensor("x", dtype="float32", shape=x.shape if backend == "jax" else (None,) * 3)
    y, params = build(xv)
    rv = pytensor.shared(r, name="r", shape=r.shape)  # static: JAX needs it
    loss = (y * rv).sum()
    grads = pytensor.grad(loss, [xv, *params])
    t0 = _now()
    fwd = function([xv], y, backend)
    t1 = _now()
    grad = function([xv], grads, backend)
    t2 = _now()
    return Candidate(
        name,
        lambda: np.asarray(fwd(x)),  # JAX returns before it finishes: wait for it
        lambda: np.asarray(grad(x)[0]),
        {"forward": t1 - t0, "gradient": t2 - t1},
    )


def hand_scan(cell: str, values: dict[str, np.ndarray], size: str) -> Callable:
    """A PyTensor scan written by hand the way an expert would: fused gate weights,
    input products for all steps before the loop (Lasagne's ``precompute_input``)."""
    import pytensor
    import pytensor.tensor as pt

    _, _, _, hidden = SIZES[size]

    def shared(name: str, value: np.ndarray):
        return pytensor.shared(value.astype("float32"), name=name, shape=value.shape)

    def build(x):
        batch, steps = x.shape[0], x.shape[1]
        xs = x.dimshuffle(1, 0, 2)
        flat = xs.reshape((steps * batch, xs.shape[2]))
        if cell in GATES:
            g = GATES[cell]
            wx = shared("Wx", np.concatenate([values[f"W_i{k}"] for k in g], 1))
            wh = shared("Wh", np.concatenate([values[f"W_h{k}"] for k in g], 1))
            if cell == "lstm":
                b = shared("b", np.concatenate([values[f"b_i{k}"] + values[f"b_h{k}"] for k in g]))
                params = [wx, wh, b]
            else:
                bx = shared("bx", np.concatenate([values[f"b_i{k}"] for k in g]))
                bh = shared("bh", np.concatenate([values[f"b_h{k}"] for k in g]))
                b, params = bx, [wx, wh, bx, bh]
        else:
            wx = shared("Wx", np.concatenate([values["W_xf"], values["W_xn"]], 1))
            whf, whn = shared("W_hf", values["W_hf"]), shared("W_hn", values["W_hn"])
            b = shared("b", np.concatenate([values["b_f"], values["b_n"]]))
            wy, by = shared("W_y", values["W_y"]), shared("b_y", values["b_y"])
            params = [wx, whf, whn, b, wy, by]
        pre = (pt.dot(flat, wx) + b).reshape((steps, batch, -1))
        h0 = pt.zeros((batch, hidden), dtype="float32")
        H = hidden

        if cell == "lstm":

            def step(p, h, c, wh):
                z = p + pt.dot(h, wh)
                i, f = pt.sigmoid(z[:, :H]), pt.sigmoid(z[:, H : 2 * H])
                gg, o = pt.tanh(z[:, 2 * H : 3 * H]), pt.sigmoid(z[:, 3 * H :])
                c2 = f * c + i * gg
                return o * pt.tanh(c2), c2

            hs, _ = pytensor.scan(step, [pre], [h0, h0], [wh], strict=True, return_updates=False)
            return hs.dimshuffle(1, 0, 2), params
        if cell == "gru":

            def step(p, h, wh, bh):
                q = pt.dot(h, wh) + bh
                r = pt.sigmoid(p[:, :H] + q[:, :H])
                z = pt.sigmoid(p[:, H : 2 * H] + q[:, H : 2 * H])
                n = pt.tanh(p[:, 2 * H :] + r * q[:, 2 * H :])
                return (1 - z) * n + z * h

            hs = pytensor.scan(step, [pre], [h0], [wh, bh], strict=True, return_updates=False)
            return hs.dimshuffle(1, 0, 2), params

        def step(p, h, whf, whn):
            f = pt.sigmoid(p[:, :H] + pt.dot(h, whf))
            n = pt.tanh(p[:, H:] + pt.dot(f * h, whn))
            return (1 - f) * h + f * n

        hs = pytensor.scan(step, [pre], [h0], [whf, whn], strict=True, return_updates=False)
        y = (pt.dot(hs.reshape((steps * batch, H)), wy) + by).reshape((steps, batch, H))
        return y.dimshuffle(1, 0, 2), params

    return build


# ---------------------------------------------------------------- PyTorch
def torch_candidate(
    cell: str, values: dict, torch_state: dict | None, x, r, onednn: bool = True
) -> Candidate:
    import torch

    torch.set_num_threads(1)
    xt = torch.tensor(x, requires_grad=True)
    rt = torch.tensor(r)
    _, _, i, h = x.shape[0], x.shape[1], x.shape[2], r.shape[2]
    if cell in GATES:
        module = (torch.nn.LSTM if cell == "lstm" else torch.nn.GRU)(i, h, batch_first=True)
        module.load_state_dict({k: torch.tensor(v) for k, v in torch_state.items()})
        params = list(module.parameters())

        def run(inp):
            with torch.backends.mkldnn.flags(enabled=onednn):
                return module(inp)[0]

        name = f"torch.nn.{cell.upper()}" + ("" if onednn else ONEDNN_OFF)
    else:
        p = {k: torch.tensor(v, requires_grad=True) for k, v in values.items()}
        params = list(p.values())

        def run(inp):
            hs = inp.new_zeros((inp.shape[0], h))
            ys = []
            for t in range(inp.shape[1]):
                xt_ = inp[:, t]
                f = torch.sigmoid(xt_ @ p["W_xf"] + hs @ p["W_hf"] + p["b_f"])
                n = torch.tanh(xt_ @ p["W_xn"] + (f * hs) @ p["W_hn"] + p["b_n"])
                hs = (1 - f) * hs + f * n
                ys.append(hs @ p["W_y"] + p["b_y"])
            return torch.stack(ys, 1)

        name = "torch eager loop"

    def forward():
        with torch.no_grad():
            return run(xt).numpy()

    def gradient():
        for q in [xt, *params]:
            q.grad = None
        (run(xt) * rt).sum().backward()
        return xt.grad.numpy()

    return Candidate(name, forward, gradient)


# ---------------------------------------------------------------- JAX
def jax_candidate(cell: str, values: dict, x, r):
    import jax
    import jax.numpy as jnp

    p = {k: jnp.asarray(v) for k, v in values.items()}
    xj, rj = jnp.asarray(x), jnp.asarray(r)
    H = r.shape[2]
    if cell in GATES:
        g = GATES[cell]
        p = {
            "Wx": jnp.concatenate([p[f"W_i{k}"] for k in g], 1),
            "Wh": jnp.concatenate([p[f"W_h{k}"] for k in g], 1),
            "bx": jnp.concatenate([p[f"b_i{k}"] for k in g]),
            "bh": jnp.concatenate([p[f"b_h{k}"] for k in g]),
        }

    def run(p, x):
        batch = x.shape[0]
        xs = jnp.swapaxes(x, 0, 1)
        h0 = jnp.zeros((batch, H), x.dtype)
        if cell == "lstm":
            pre = xs @ p["Wx"] + p["bx"] + p["bh"]

            def step(carry, q):
                h, c = carry
                z = q + h @ p["Wh"]
                i, f = jax.nn.sigmoid(z[:, :H]), jax.nn.sigmoid(z[:, H : 2 * H])
                gg, o = jnp.tanh(z[:, 2 * H : 3 * H]), jax.nn.sigmoid(z[:, 3 * H :])
                c = f * c + i * gg
                h = o * jnp.tanh(c)
                return (h, c), h

            _, hs = jax.lax.scan(step, (h0, h0), pre)
        elif cell == "gru":
            pre = xs @ p["Wx"] + p["bx"]

            def step(h, q):
                s = h @ p["Wh"] + p["bh"]
                rr = jax.nn.sigmoid(q[:, :H] + s[:, :H])
                z = jax.nn.sigmoid(q[:, H : 2 * H] + s[:, H : 2 * H])
                n = jnp.tanh(q[:, 2 * H :] + rr * s[:, 2 * H :])
                h = (1 - z) * n + z * h
                return h, h

            _, hs = jax.lax.scan(step, h0, pre)
        else:
            pf = xs @ p["W_xf"] + p["b_f"]
            pn = xs @ p["W_xn"] + p["b_n"]

            def step(h, q):
                f = jax.nn.sigmoid(q[0] + h @ p["W_hf"])
                n = jnp.tanh(q[1] + (f * h) @ p["W_hn"])
                h = (1 - f) * h + f * n
                return h, h

            _, hs = jax.lax.scan(step, h0, (pf, pn))
            hs = hs @ p["W_y"] + p["b_y"]
        return jnp.swapaxes(hs, 0, 1)

    fwd = jax.jit(run)
    grad = jax.jit(jax.grad(lambda p, x: (run(p, x) * rj).sum(), argnums=(0, 1)))
    t0 = _now()
    fwd(p, xj).block_until_ready()
    t1 = _now()
    jax.block_until_ready(grad(p, xj))
    t2 = _now()
    return Candidate(
        "jax.lax.scan",
        lambda: np.asarray(fwd(p, xj).block_until_ready()),
        lambda: np.asarray(grad(p, xj)[1].block_until_ready()),
        {"forward": t1 - t0, "gradient": t2 - t1},
    )


# ---------------------------------------------------------------- the runs
def candidates(cell: str, size: str, backends: list[str], which: set[str], x, r):
    """Every candidate for one cell and size (the ones whose library is installed)."""
    out = []
    base = rnnc_layer(cell, size, True, "c")
    values = {k: v.get_value() for k, v in base.params.items()}
    torch_state = base.torch_state() if cell in GATES else None
    for backend in backends:
        variants = (
            ("rnnc", "optimised", True),
            ("nosave", "optimised, save none", {"save": "none"}),
            ("saveall", "optimised, save all", {"save": "all"}),
            ("off", "passes off", False),
        )
        for kind, label, opt in variants:
            if kind not in which:
                continue
            layer = rnnc_layer(cell, size, opt, backend)

            def build(xv, layer=layer):
                return layer(xv).outputs["y"], list(layer.params.values())

            out.append(pytensor_candidate(f"rnnc {label} [{backend}]", build, backend, x, r))
        if "hand" in which:
            build = hand_scan(cell, values, size)
            out.append(pytensor_candidate(f"hand-written scan [{backend}]", build, backend, x, r))
    if "torch" in which:
        try:
            out.append(torch_candidate(cell, values, torch_state, x, r))
            if cell == "lstm":
                out.append(torch_candidate(cell, values, torch_state, x, r, onednn=False))
        except ImportError:
            pass
    if "jax" in which:
        try:
            out.append(jax_candidate(cell, values, x, r))
        except ImportError:
            pass
    return out


def check_agreement(cands: list[Candidate]) -> list[Candidate]:
    """Every candidate gives the same forward output and input gradient as the first;
    a candidate that fails to run is reported and dropped."""
    ref_f, ref_g = cands[0].forward(), cands[0].gradient()
    kept = [cands[0]]
    for c in cands[1:]:
        try:
            f, g = c.forward(), c.gradient()
        except Exception as exc:  # report, keep benchmarking the others
            print(f"  {c.name} FAILED: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
            continue
        kept.append(c)
        for what, a, b in (("forward", f, ref_f), ("gradient", g, ref_g)):
            scale = float(np.abs(b).max()) or 1.0
            err = float(np.abs(np.asarray(a) - b).max()) / scale
            if err > 2e-3:
                raise SystemExit(f"{c.name} disagrees with {cands[0].name} ({what}): {err:.2e}")
    return kept


def time_interleaved(cands: list[Candidate], mode: str, repeat: int) -> dict[str, float]:
    """Median seconds per call, each repetition calling every candidate once, in an
    order rotated from one repetition to the next (the first call of a round can be
    slower: memory the previous round freed is mapped again)."""
    times: dict[str, list[float]] = {c.name: [] for c in cands}
    for c in cands:  # warm-up
        getattr(c, mode)()
    for r in range(repeat):
        for k in range(len(cands)):
            c = cands[(k + r) % len(cands)]
            fn = getattr(c, mode)
            t0 = _now()
            fn()
            times[c.name].append(_now() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}"


def versions(backends: list[str]) -> str:
    import pytensor

    parts = [f"Python {platform.python_version()}", f"PyTensor {pytensor.__version__}"]
    for mod in ("torch", "jax"):
        try:
            parts.append(f"{mod} {__import__(mod).__version__}")
        except ImportError:
            pass
    if "c" in backends:  # the C backend's BLAS, as rnnc links it (no other backend has one)
        from rnnc import blas

        parts.append(f"blas__ldflags={blas.configure()!r}")
    return ", ".join(parts)


def render(results: list[dict]) -> str:
    """The README section: one table per cell and mode, one column per size."""
    lines = [START, ""]
    stamp = {r["date"] for r in results}
    lines.append(f"Measured {', '.join(sorted(stamp))} on {results[-1]['machine']}; ")
    lines.append(f"{results[-1]['versions']}. One thread, pinned to one core. ")
    lines.append("Median of interleaved runs, milliseconds; in brackets the ratio to PyTorch.")
    lines.append("")
    for cell in sorted({r["cell"] for r in results}):
        for mode in ("forward", "gradient"):
            rows = [r for r in results if r["cell"] == cell and r["mode"] == mode]
            if not rows:
                continue
            sizes = [s for s in SIZES if any(r["size"] == s for r in rows)]
            title = "forward" if mode == "forward" else "forward + gradient"
            lines.append(f"**{cell}, {title}**")
            lines.append("")
            header = [f"{s} (B,T,I,H={','.join(map(str, SIZES[s]))})" for s in sizes]
            lines.append("| candidate | " + " | ".join(header) + " |")
            lines.append("| --- |" + " --- |" * len(sizes))
            names = list(dict.fromkeys(r["candidate"] for r in rows))
            for name in names:
                cells = []
                for s in sizes:
                    hit = [r for r in rows if r["size"] == s and r["candidate"] == name]
                    if not hit:
                        cells.append("")
                        continue
                    ref = [r for r in rows if r["size"] == s and r["candidate"] in REFERENCE]
                    ms = hit[0]["seconds"] * 1e3
                    ratio = f" ({hit[0]['seconds'] / ref[0]['seconds']:.2f}x)" if ref else ""
                    cells.append(f"{ms:.1f}{ratio}")
                lines.append(f"| {name} | " + " | ".join(cells) + " |")
            lines.append("")
    comp = [r for r in results if r.get("compile_s") is not None and r["mode"] == "gradient"]
    if comp:
        lines.append("**Compile time (seconds, this process; forward + gradient function)**")
        lines.append("")
        lines.append("| cell | size | candidate | forward | gradient |")
        lines.append("| --- | --- | --- | --- | --- |")
        for r in comp:
            c = r["compile_s"]
            lines.append(
                f"| {r['cell']} | {r['size']} | {r['candidate']} | {c['forward']:.1f} | "
                f"{c['gradient']:.1f} |"
            )
        lines.append("")
    if COMPILE.exists():
        lines.append("**Compile time of the medium LSTM forward+gradient, a new process each**")
        lines.append("")
        lines.append("| backend | run | import s | graph s | compile s | first call s | total s |")
        lines.append("| --- | --- | --- | --- | --- | --- | --- |")
        for r in json.loads(COMPILE.read_text()):
            if "compile" in r:
                graph = r.get("graph", 0.0)
                total = r["import"] + graph + r["compile"] + r["first_call"]
                lines.append(
                    f"| {r['backend']} | {r['run']} | {r['import']:.1f} | {graph:.1f} | "
                    f"{r['compile']:.1f} | {r['first_call']:.2f} | {total:.1f} |"
                )
        lines.append("")
    lines.append(END)
    return "\n".join(lines)


def write_readme(results: list[dict]) -> None:
    text = README.read_text() if README.exists() else "# Benchmarks\n"
    section = render(results)
    if START in text and END in text:
        head, rest = text.split(START, 1)
        text = head + section + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n## rnnc against PyTorch and JAX\n\n" + section + "\n"
    README.write_text(text)


def compile_child(backend: str, use_cache: bool) -> None:
    """In a fresh process: compile the medium LSTM's forward+gradient function and
    print the seconds it took as JSON (import time apart: PyTensor's, rnnc's and, for
    JAX, JAX's, which the layer would import otherwise)."""
    t0 = _now()
    import pytensor
    import pytensor.tensor as pt

    from rnnc import cache
    from rnnc.compile import check_backend, function

    check_backend(backend)  # imports JAX for "jax"

    t1 = _now()
    b, t, i, h = SIZES["medium"]
    layer = rnnc_layer("lstm", "medium", True, backend)

    def graph():
        xv = pt.tensor("x", dtype="float32", shape=(b, t, i) if backend == "jax" else (None,) * 3)
        y = layer(xv).outputs["y"]
        grads = pytensor.grad((y * y).sum(), [xv, *layer.params.values()])
        return xv, [y, *grads]

    def build(built=None):
        inputs, outputs = built or graph()
        cache.configure(backend)
        return function([inputs], outputs, backend)

    if use_cache:  # the graph is built only when the cache misses, as a user would
        t_graph = _now()
        parts = {"bench": "lstm-medium-fwd+grad", "backend": backend, "shape": [b, t, i, h]}
        fn = cache.cached_function(parts, build, layer.params)
    else:
        built = graph()
        t_graph = _now()
        fn = build(built)
    t2 = _now()
    [np.asarray(out) for out in fn(np.zeros((b, t, i), "float32"))]  # JAX returns early
    t3 = _now()
    times = {"import": t1 - t0, "graph": t_graph - t1, "compile": t2 - t_graph}
    print(json.dumps({**times, "first_call": t3 - t2}))


def compile_times(backends: list[str]) -> list[dict]:
    """Cold (empty caches), warm (PyTensor's/Numba's/JAX's caches filled) and cached
    (rnnc's cache too) compile times, each in a new process."""
    import subprocess
    import sys

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for backend in backends:
            env = dict(os.environ)
            env["PYTENSOR_FLAGS"] = f"base_compiledir={tmp}/{backend}-pt"
            env["RNNC_CACHE_DIR"] = f"{tmp}/{backend}-rnnc"
            env["RNNC_BENCH_PIN"] = "0"
            # A user's install keeps rnnc's compiled bytecode (__pycache__); a machine
            # that sets this variable would make every child compile rnnc's sources
            # again (0.06 s of each process's imports).
            env.pop("PYTHONDONTWRITEBYTECODE", None)
            for label, cached in (
                ("cold", False),
                ("warm", False),
                ("rnnc cache (fill)", True),
                ("rnnc cache (hit)", True),
            ):
                cmd = [sys.executable, __file__, "--compile-child", backend]
                if cached:
                    cmd.append("--cached")
                out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
                line = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else "{}"
                data = json.loads(line) if line.startswith("{") else {"error": out.stderr[-500:]}
                data.update(backend=backend, run=label)
                print(json.dumps(data), flush=True)
                rows.append(data)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for option, names in CHOICES.items():
        default = ",".join(DEFAULTS.get(option, names))
        parser.add_argument(f"--{option}", default=default, help=", ".join(names))
    parser.add_argument("--repeat", type=int, default=11, help="timed calls per candidate")
    parser.add_argument("--no-write", action="store_true", help="print only; keep README.md")
    parser.add_argument(
        "--compile", action="store_true", help="measure cold and warm compile times instead"
    )
    parser.add_argument("--compile-child", help=argparse.SUPPRESS)
    parser.add_argument("--cached", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    split = lambda s: [p for p in s.split(",") if p]  # noqa: E731
    for option, names in CHOICES.items():
        unknown = [v for v in split(getattr(args, option)) if v not in names]
        if unknown:
            parser.error(
                f"--{option}: unknown {', '.join(unknown)}; choose from {', '.join(names)}"
            )
    if args.compile_child:
        compile_child(args.compile_child, args.cached)
        return 0
    if args.compile:
        rows = compile_times(split(args.backends))
        if not args.no_write:
            COMPILE.write_text(json.dumps(rows, indent=1) + "\n")
            write_readme(json.loads(RESULTS.read_text()) if RESULTS.exists() else [])
        return 0
    which = set(split(args.candidates))
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() and not args.no_write else []
    date = datetime.date.today().isoformat()
    stamp = {"date": date, "machine": machine(), "versions": versions(split(args.backends))}
    for cell in split(args.cells):
        for size in split(args.sizes):
            b, t, i, h = SIZES[size]
            rng = np.random.default_rng(1)
            x = rng.normal(size=(b, t, i)).astype("float32")
            r = rng.normal(size=(b, t, h)).astype("float32")
            cands = candidates(cell, size, split(args.backends), which, x, r)
            cands = check_agreement(cands)
            for mode in split(args.modes):
                medians = time_interleaved(cands, mode, args.repeat)
                ref = next((v for k, v in medians.items() if k in REFERENCE), None)
                print(f"\n{cell} {size} {mode}")
                # ratios come from one interleaved run: this run replaces the group
                group = (cell, size, mode)
                results = [r_ for r_ in results if (r_["cell"], r_["size"], r_["mode"]) != group]
                for c in cands:
                    sec = medians[c.name]
                    ratio = f"{sec / ref:6.2f}x torch" if ref else ""
                    comp = f"  compile {c.compile_s.get(mode, 0):.1f}s" if c.compile_s else ""
                    print(f"  {c.name:32s} {sec * 1e3:9.2f} ms {ratio}{comp}", flush=True)
                    results.append(
                        {
                            "cell": cell,
                            "size": size,
                            "mode": mode,
                            "candidate": c.name,
                            "seconds": sec,
                            "compile_s": c.compile_s or None,
                            **stamp,
                        }
                    )
    if not args.no_write:
        RESULTS.write_text(json.dumps(results, indent=1) + "\n")
        write_readme(results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
