"""The long fuzz run of the cell language: 100,000 cases through the parser and checker.

    python tests/fuzz/run.py                      # 100,000 cases on 2 processes
    python tests/fuzz/run.py --cases 5000 --seed 7 --workers 1
    python tests/fuzz/run.py --show 12345         # print the text of case 12345
    python tests/fuzz/run.py --compile 4 --backends c,jax   # random cells, compiled

Each case is made from the seed and its number alone (``--show`` makes it again):

- ``random``: random characters, or tokens of the language in random order;
- ``corpus``: a cell of the corpus (``grammar/examples``, ``rnnc/cells``, the ``cell``
  blocks of ``grammar/README.md``) after one to three mutations: tokens deleted, swapped,
  duplicated or replaced, a dimension changed, a name misspelt or swapped for another,
  an operator or a number changed, a prime added or removed, lines moved or re-indented,
  odd characters or a piece of Python put in (see ``tests/cellgen.py``);
- ``mutant``: a random valid cell after the same mutations;
- ``valid``: a random valid cell (with unsafe numerics half of the time), which must check
  and give exactly the IR it was made from.

Every case must check or raise an :class:`rnnc.RnncError` whose place (and the places of
its notes and warnings) lies inside the text. Anything else is counted and kept under
``--failures`` (by default a folder in the system's temporary directory): another
exception, a valid cell that does not check or checks to other IR, a case that runs past
its time box (``--timeout``, by ``SIGALRM``), a worker that dies (a crash; the worker is
restarted after that case) or stops answering (a hang; it is killed after 20 time
boxes), and Python code run by a cell (an audit hook in each worker reports ``exec``,
``compile``, ``import``, ``open``, ``os.system``, ``subprocess``... events during a case).

``--compile N`` instead compiles N random valid cells on each backend of ``--backends``,
optimised and not, and compares forward values and gradients with the reference
interpreter and finite differences (``tests/test_random_cells.py``).
"""

from __future__ import annotations

import argparse
import collections
import itertools
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import warnings
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS))

import cellgen  # noqa: E402
from cellgen import RandomChooser  # noqa: E402

#: Which kind of case each number makes: its remainder modulo 10.
KINDS = ["random"] + ["corpus"] * 4 + ["mutant"] * 3 + ["valid"] * 2
#: Audit events a cell must never cause (Python run, files, processes, the network).
FORBIDDEN = (
    "exec",
    "compile",
    "import",
    "open",
    "os.system",
    "os.exec",
    "os.posix_spawn",
    "os.spawn",
    "os.fork",
    "os.remove",
    "subprocess.Popen",
    "socket.",
    "ctypes.",
    "shutil.",
)


def make_case(seed: int, i: int, corpus: list[str]) -> tuple[str, str, object]:
    """``(kind, text, expected IR or None)`` of case ``i``."""
    ch = RandomChooser(f"{seed}:{i}")
    kind = KINDS[i % len(KINDS)]
    if kind == "random":
        return kind, cellgen.random_text(ch), None
    if kind == "corpus":
        return kind, cellgen.mutated(ch, ch.choice(corpus)), None
    generated = cellgen.valid_cell(ch, safe=ch.coin())
    if kind == "mutant":
        return kind, cellgen.mutated(ch, generated.text), None
    return kind, generated.text, generated.ir


class Audit:
    """Records forbidden audit events while ``armed``."""

    def __init__(self) -> None:
        self.armed = False
        self.events: list[str] = []
        sys.addaudithook(self)

    def __call__(self, event: str, args: tuple) -> None:
        if self.armed and event.startswith(FORBIDDEN):
            self.armed = False  # what follows (formatting the report) may import
            self.events.append(f"{event} {args!r:.200}")


def run_case(seed: int, i: int, corpus: list[str], timeout: float, audit: Audit) -> dict:
    record = {"i": i, "kind": KINDS[i % len(KINDS)]}
    try:
        with cellgen.time_box(timeout):
            _, text, expected = make_case(seed, i, corpus)
    except cellgen.CaseTimeout:
        return {**record, "result": "timeout making the case", "text": ""}
    audit.events.clear()
    try:
        with cellgen.time_box(timeout):
            audit.armed = True
            try:
                result = cellgen.outcome(text)
            finally:
                audit.armed = False
        if expected is not None:
            if result != "ok":
                result = f"valid cell raised {result}"
            else:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # checked by outcome
                    cells = cellgen.check_module(cellgen.parse_module(text))
                result = "ok" if next(iter(cells.values())) == expected else "other IR"
    except cellgen.CaseTimeout:
        result = "timeout"
    except Exception as exc:  # a bug: counted, kept
        result = f"exception {type(exc).__name__}"
        record["trace"] = traceback.format_exc(limit=12)
    if audit.events:
        result = "ran code"
        record["trace"] = "\n".join(audit.events)
    record["result"] = result
    if "trace" in record or not _expected_result(result):
        record["text"] = text
    return record


def _expected_result(result: str) -> bool:
    return result == "ok" or (result.endswith("Error") and " " not in result)


def worker(args: argparse.Namespace) -> None:
    corpus = cellgen.corpus()
    cellgen.outcome("cell warm(x: [I]) -> (y: [I]):\n    y = tanh(x @ W)\n")  # imports
    audit = Audit()
    for i in range(args.start, args.stop):
        print(json.dumps(run_case(args.seed, i, corpus, args.timeout, audit)), flush=True)


# ---------------------------------------------------------------- the parent
class Tally:
    def __init__(self, failures: Path) -> None:
        self.lock = threading.Lock()
        self.results: collections.Counter[str] = collections.Counter()
        self.by_kind: dict[str, collections.Counter[str]] = collections.defaultdict(
            collections.Counter
        )
        self.failures = failures
        self.done = 0

    def add(self, record: dict) -> None:
        with self.lock:
            self.done += 1
            self.results[record["result"]] += 1
            self.by_kind[record["kind"]][record["result"]] += 1
            if not _expected_result(record["result"]):
                self.failures.mkdir(parents=True, exist_ok=True)
                stem = self.failures / f"case-{record['i']}"
                stem.with_suffix(".cell").write_text(record.get("text", ""), encoding="utf-8")
                stem.with_suffix(".txt").write_text(
                    f"{record['result']}\n{record.get('trace', '')}", encoding="utf-8"
                )


def supervise(args: argparse.Namespace, start: int, stop: int, tally: Tally) -> None:
    """Run cases ``start .. stop`` in worker processes, restarting after a crash or hang."""
    while start < stop:
        cmd = [sys.executable, __file__, "--worker", "--seed", str(args.seed)]
        cmd += ["--start", str(start), "--stop", str(stop), "--timeout", str(args.timeout)]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        last = [time.monotonic()]
        hung = threading.Event()

        def watch(proc=proc, last=last, hung=hung) -> None:
            while proc.poll() is None:
                if time.monotonic() - last[0] > 20 * args.timeout + 30:
                    hung.set()
                    proc.kill()
                time.sleep(1)

        threading.Thread(target=watch, daemon=True).start()
        assert proc.stdout is not None
        for line in proc.stdout:
            record = json.loads(line)
            last[0] = time.monotonic()
            tally.add(record)
            start = record["i"] + 1
        proc.wait()
        if start < stop:  # the worker died on case `start`
            result = "hang" if hung.is_set() else f"crash (exit status {proc.returncode})"
            kind = KINDS[start % len(KINDS)]
            tally.add({"i": start, "kind": kind, "result": result, "trace": ""})
            start += 1


def report(tally: Tally, seconds: float, args: argparse.Namespace) -> str:
    kinds = sorted(tally.by_kind)
    results = sorted(tally.results, key=lambda r: (not _expected_result(r), -tally.results[r]))
    lines = [
        f"{tally.done} cases, seed {args.seed}, {seconds:.0f} s on {args.workers} processes",
        "",
        "| result | " + " | ".join(kinds) + " | all |",
        "| --- | " + " | ".join("---:" for _ in kinds) + " | ---: |",
    ]
    for r in results:
        row = [str(tally.by_kind[k][r]) for k in kinds]
        lines.append(f"| {r} | " + " | ".join(row) + f" | {tally.results[r]} |")
    bad = sum(n for r, n in tally.results.items() if not _expected_result(r))
    lines += ["", f"other exceptions, timeouts, hangs, crashes, code run: {bad}"]
    return "\n".join(lines)


def compile_cells(args: argparse.Namespace) -> int:
    import test_random_cells

    failures = 0
    for n in range(args.compile):
        ch = RandomChooser(f"compile:{args.seed}:{n}")
        generated = cellgen.valid_cell(ch, **cellgen.SMALL)
        before = failures
        for backend in args.backends.split(","):
            for optimize in (False, True):
                t = time.monotonic()
                try:
                    test_random_cells.compare(generated.ir, backend, optimize, seed=n)
                    result = "ok"
                except Exception as exc:
                    failures += 1
                    result = f"FAILED {type(exc).__name__}: {str(exc)[:400]}"
                took = time.monotonic() - t
                print(f"cell {n} {backend:6} optimize={optimize!s:5} {took:5.1f} s  {result}")
                sys.stdout.flush()
        if failures > before:
            print(generated.text)
    return 1 if failures else 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cases", type=int, default=100_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--timeout", type=float, default=5.0, help="seconds per case")
    p.add_argument(
        "--failures",
        type=Path,
        default=Path(tempfile.gettempdir()) / "rnnc-fuzz-failures",
        help="where to keep the text and traceback of each failing case",
    )
    p.add_argument("--show", type=int, metavar="CASE", help="print one case's text")
    p.add_argument("--compile", type=int, default=0, metavar="N")
    p.add_argument("--backends", default="python,c,jax")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--start", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--stop", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return 0
    if args.show is not None:
        kind, text, _ = make_case(args.seed, args.show, cellgen.corpus())
        print(f"# case {args.show} ({kind})\n{text}", end="")
        return 0
    if args.compile:
        return compile_cells(args)
    tally = Tally(args.failures)
    bounds = [args.cases * k // args.workers for k in range(args.workers + 1)]
    started = time.monotonic()
    threads = [
        threading.Thread(target=supervise, args=(args, a, b, tally))
        for a, b in itertools.pairwise(bounds)
    ]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        time.sleep(10)
        print(f"{tally.done}/{args.cases} cases, {dict(tally.results)}", file=sys.stderr)
    print(report(tally, time.monotonic() - started, args))
    return 0 if all(_expected_result(r) for r in tally.results) else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
