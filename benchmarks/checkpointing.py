"""Gradient checkpointing: memory against time for the gradient of a long sequence.

For each configuration this compiles ``loss -> (loss, d loss /
d params)`` for one recurrent layer over ``[batch, steps, features]`` inputs and
measures:

* ``peak``: the largest amount of NumPy memory alive during one call (tracemalloc
  sees every NumPy buffer the compiled function allocates, scan's included), minus
  what was alive before the call (the inputs and parameters);
* ``time``: the median wall time of a call (the configurations' calls interleaved, in
  an order rotated each round, and untraced), and the time to compile.

Configurations: the plain scan with the default passes (``optimize=True``: ``hoist``
computes the input products of every step before the loop, ``save`` keeps values for
the backward pass), the plain scan without those two passes (the same step as a
checkpointed scan, so the pair shows what the segments themselves change), and
``checkpoint=k`` for each ``k`` of ``--every`` (which switches both passes off).
The loss reads the final state only (``--loss final``, the case checkpointing is for;
the layer runs with ``states_only=True``) or every output (``--loss all``).

    python benchmarks/checkpointing.py                        # a quick run
    python benchmarks/checkpointing.py --batch 64 --hidden 1024 --steps 2000 --every 50

Writes a Markdown table to stdout (and ``--json PATH`` for the raw figures).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
import tracemalloc

import numpy as np
import pytensor
import pytensor.tensor as pt

import rnnc


def build(cfg: dict):
    """The compiled ``x -> (loss, gradients)`` of one configuration, and its compile time."""
    layer = rnnc.Recurrent(
        cfg["cell"],
        I=cfg["features"],
        H=cfg["hidden"],
        backend=cfg["backend"],
        optimize=cfg["optimize"],
        checkpoint=cfg["every"] or None,
    )
    x = pt.tensor3("x", dtype="float32")
    final = cfg["loss"] == "final"
    out = layer(x, states_only=final)
    loss = out.state["h"].sum() if final else (out.y**2).sum()
    grads = pytensor.grad(loss, list(layer.params.values()))
    start = time.perf_counter()
    fn = rnnc.compile.function([x], [loss, *grads], cfg["backend"])
    return fn, time.perf_counter() - start


def peak_mib(fn, xs: np.ndarray) -> float:
    """Peak MiB of NumPy memory allocated by one call (traced: not timed, as tracing
    every allocation slowed the calls unevenly, up to 1.7x)."""
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    result = fn(xs)
    peak = tracemalloc.get_traced_memory()[1] - before
    tracemalloc.stop()
    del result
    return peak / 2**20


def seconds(fn, xs: np.ndarray) -> float:
    start = time.perf_counter()
    fn(xs)
    return time.perf_counter() - start


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (
        f"{time.strftime('%Y-%m-%d')}, {cpu}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}, PyTensor {pytensor.__version__}"
    )


def configurations(args: argparse.Namespace) -> list[dict]:
    base = {
        "cell": args.cell,
        "batch": args.batch,
        "hidden": args.hidden,
        "features": args.features,
        "steps": args.steps,
        "backend": args.backend,
        "loss": args.loss,
    }
    out = [
        {**base, "name": "plain scan", "every": 0, "optimize": True},
        {
            **base,
            "name": "plain scan, no hoist, no save",
            "every": 0,
            "optimize": {"hoist": False, "save": "none"},
        },
    ]
    for k in args.every:
        out.append({**base, "name": f"checkpoint={k}", "every": k, "optimize": True})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cell", default="lstm", help="built-in cell (default lstm)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--features", type=int, default=64)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument(
        "--every", type=int, nargs="+", default=[10, 50], help="checkpoint segment lengths"
    )
    parser.add_argument("--backend", default="c")
    parser.add_argument("--loss", choices=["final", "all"], default="final")
    parser.add_argument(
        "--repeat", type=int, default=5, help="timed calls per configuration (at least 3)"
    )
    parser.add_argument("--json", help="also write the raw figures here")
    args = parser.parse_args()

    cfgs = configurations(args)
    built = [build(cfg) for cfg in cfgs]
    rng = np.random.default_rng(0)
    xs = rng.normal(size=(args.batch, args.steps, args.features)).astype("float32")
    peaks = [peak_mib(fn, xs) for fn, _ in built]  # also the warm-up
    times: list[list[float]] = [[] for _ in cfgs]
    # Interleaved, so that a busy machine slows all alike, and in a rotated order: the
    # first call of each round measured up to 1.9x slower than the same function later
    # in the round (the memory the previous round freed is mapped again).
    for r in range(args.repeat):
        for k in range(len(built)):
            i = (k + r) % len(built)
            times[i].append(seconds(built[i][0], xs))
    rows = [
        {
            **cfg,
            "compile_s": compile_s,
            "time_s": statistics.median(t),
            "peak_mib": p,
        }
        for cfg, (_, compile_s), t, p in zip(cfgs, built, times, peaks, strict=True)
    ]
    base = rows[0]
    print(
        f"{args.cell}, B={args.batch} H={args.hidden} I={args.features} T={args.steps}, "
        f"float32, backend {args.backend}, loss on the "
        f"{'final state' if args.loss == 'final' else 'outputs at every step'}; "
        f"median of {args.repeat} interleaved calls; {machine()}\n"
    )
    print(
        "| configuration | peak memory (MiB) | vs plain | time per call (s) | vs plain "
        "| compile (s) |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['name']} | {r['peak_mib']:.1f} | {r['peak_mib'] / base['peak_mib']:.2f}x "
            f"| {r['time_s']:.3f} | {r['time_s'] / base['time_s']:.2f}x | {r['compile_s']:.1f} |"
        )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
