"""Crash safety of training: SIGKILL `rnnc train` again and again, at random moments and
in the middle of checkpoint writes, and exploding gradients.

The kill test runs the command line (``rnnc.cli.main``, what the ``rnnc`` entry point
calls) in real processes and kills them with SIGKILL. A fresh interpreter takes 4 to
10 s to import PyTensor and compile the model before its first checkpoint, so after the
first run (a fresh ``python -m rnnc.cli train``, killed too) the runs are forked from a
small server process that has imported rnnc and compiled the same model once (the
trainer keeps compiled models by their options): each forked run is `rnnc train`'s own
code from the parsing of its arguments on, and starts writing checkpoints at once. The
last run, which must resume and finish, is a fresh process again.

Subprocesses run with ``PYTENSOR_FLAGS=cxx=`` (PyTensor's Python implementations, no C
compiler): with the "python" backend that starts a process about twice as fast, and it
never waits for the lock of PyTensor's compile cache, which other tests' C compilations
hold for long.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import FAST, TINY, quiet

from rnnc.cli import main as rnnc_main
from rnnc.errors import CheckpointError, TrainingDivergedError
from rnnc.train import TrainConfig, load_checkpoint, save_checkpoint, train
from rnnc.train import checkpoint as checkpoint_module
from rnnc.train.checkpoint import Checkpoint, remove_stale_temporaries

CELLS = Path(__file__).parent / "cells"


def small_checkpoint(step: int = 1) -> Checkpoint:
    return Checkpoint(meta={"step": step}, params={"w": np.arange(6, dtype="float32")})


# ---------------------------------------------------------------- stale temporaries
def temporary(folder: Path, name: str = "lm_lstm_epoch1.00_2.0000.npz") -> Path:
    """A file named like one save_checkpoint writes to (a dead writer's)."""
    path = folder / f".{name}.k3j9_x0a.tmp"
    path.write_bytes(b"PK\x03\x04 half a zip")
    return path


def test_stale_temporaries_go_and_nothing_else(tmp_path):
    stale = [
        temporary(tmp_path),
        temporary(tmp_path, "other.npz"),
        temporary(tmp_path, "lm_log.csv"),
        temporary(tmp_path, "lm_loss.png"),
    ]
    keep = [
        "lm_lstm_epoch1.00_2.0000.npz",  # a checkpoint
        ".lm_lstm_epoch1.00_2.0000.npz",  # no random part, no .tmp
        "lm_lstm_epoch1.00_2.0000.npz.k3j9_x0a.tmp",  # no leading dot
        ".notes.txt.k3j9_x0a.tmp",  # not a checkpoint's
        ".lm_x.npz.k3j9_x0a.tmp.bak",
        "lstm_log.csv",
    ]
    for name in keep:
        (tmp_path / name).write_text("keep")
    (tmp_path / ".dir.npz.abc.tmp").mkdir()  # a folder, not a file
    # a live writer's file: the same name form, locked
    live = temporary(tmp_path, "lm_lstm_epoch2.00_1.9000.npz")
    with open(live, "rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        assert sorted(remove_stale_temporaries(tmp_path)) == sorted(stale)
        assert live.exists()
    assert remove_stale_temporaries(tmp_path) == [live]  # its writer is gone now
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*keep, ".dir.npz.abc.tmp"])
    assert remove_stale_temporaries(tmp_path / "nowhere") == []


def test_a_writer_whose_new_file_is_removed_before_it_locks_it_makes_another(tmp_path, monkeypatch):
    """The moment between creating the temporary file and locking it: a cleaner that
    runs then takes it for a dead writer's. The writer notices and starts over."""
    made = []
    real_mkstemp = checkpoint_module.tempfile.mkstemp

    def mkstemp_then_cleaner(*args, **kwargs):
        fd, name = real_mkstemp(*args, **kwargs)
        made.append(name)
        if len(made) == 1:
            assert remove_stale_temporaries(tmp_path) == [Path(name)]
        return fd, name

    monkeypatch.setattr(checkpoint_module.tempfile, "mkstemp", mkstemp_then_cleaner)
    path = save_checkpoint(tmp_path / "a.npz", small_checkpoint(3))
    assert len(made) == 2 and load_checkpoint(path).meta["step"] == 3
    assert [p.name for p in tmp_path.iterdir()] == ["a.npz"]


def test_where_nothing_can_be_locked_checkpoints_are_written_and_nothing_removed(
    tmp_path, monkeypatch
):
    def cannot(fd, operation):
        raise OSError(95, "Operation not supported")

    monkeypatch.setattr(checkpoint_module.fcntl, "flock", cannot)
    path = save_checkpoint(tmp_path / "a.npz", small_checkpoint(4))
    assert load_checkpoint(path).meta["step"] == 4
    stale = temporary(tmp_path)
    assert remove_stale_temporaries(tmp_path) == [] and stale.exists()


def relu_config(tmp_path, **kw) -> TrainConfig:
    base = {
        "cell": "rnn_relu",
        "rnn_size": 4,
        "num_layers": 1,
        "batch_size": 4,
        "seq_length": 8,
        "train_frac": 0.8,
        "eval_every": 1,
        "max_steps": 1,
        "backend": FAST,
        "checkpoint_dir": str(tmp_path),
        "progress": False,
        "sample_length": 5,
    }
    return TrainConfig(**{**base, **kw})


def test_training_removes_what_a_killed_writer_left(tmp_path):
    stale = temporary(tmp_path)
    lines = []
    train(relu_config(tmp_path), text=TINY, out=lines.append)
    assert not stale.exists()
    assert f"removed 1 unfinished checkpoint file(s) that a killed run left in {tmp_path}" in lines
    assert [p.name for p in tmp_path.glob(".*")] == []


# ---------------------------------------------------------------- kills
SERVER = r'''
"""Forks `rnnc train` runs (rnnc.cli.main) from a process that compiled the model once.
Reads JSON lines {"op": "run", "argv": [...], "log": PATH} and {"op": "wait", "pid": N}."""
import contextlib, json, os, sys, traceback
from rnnc.cli import main

def reply(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()

with contextlib.redirect_stdout(sys.stderr):
    main(json.loads(sys.argv[1]))  # a one-step run: the imports, the compiled model
reply({"ready": True})
for line in sys.stdin:
    cmd = json.loads(line)
    if cmd["op"] == "run":
        pid = os.fork()
        if pid == 0:
            code = 70
            try:
                log = os.open(cmd["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.dup2(log, 1)
                os.dup2(log, 2)
                os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
                code = main(cmd["argv"])
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        reply({"pid": pid})
    elif cmd["op"] == "wait":
        _, status = os.waitpid(cmd["pid"], 0)
        reply({"signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
               "code": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None})
'''

KILLS = 24  # the first of a fresh process, the others of forked runs
WRITE_KILLS = 12  # of those, timed to land while a checkpoint is being written
SEED = 20_240_611  # RNNC_CRASH_SEED=N runs another sequence of kill moments
RANDOM_SPAN = 1.5  # seconds after a run starts writing within which a random kill lands


def subprocess_env() -> dict[str, str]:
    flags = ",".join(f for f in (os.environ.get("PYTENSOR_FLAGS", ""), "cxx=") if f)
    return {**os.environ, "PYTENSOR_FLAGS": flags, "OMP_NUM_THREADS": "1"}


class Server:
    """The fork server (SERVER above), as a subprocess."""

    def __init__(self, tmp_path: Path, warm_argv: list[str]) -> None:
        script = tmp_path / "server.py"
        script.write_text(SERVER)
        self.log = tmp_path / "server.log"
        with open(self.log, "w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, str(script), json.dumps(warm_argv)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                cwd=tmp_path,
                env=subprocess_env(),
            )

    def _ask(self, **cmd) -> dict:
        if cmd:
            self.proc.stdin.write(json.dumps(cmd) + "\n")
            self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise AssertionError(f"the fork server died:\n{self.log.read_text()[-3000:]}")
        return json.loads(line)

    def ready(self) -> None:
        assert self._ask()["ready"]

    def run(self, argv: list[str], log: Path) -> int:
        return self._ask(op="run", argv=argv, log=str(log))["pid"]

    def wait(self, pid: int) -> dict:
        return self._ask(op="wait", pid=pid)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class Fresh:
    """A run in a fresh interpreter: ``python -m rnnc.cli ...``."""

    def __init__(self, argv: list[str], log: Path, cwd: Path) -> None:
        with open(log, "w") as f:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "rnnc.cli", *argv],
                stdout=f,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                env=subprocess_env(),
            )
        self.pid = self.proc.pid

    def wait(self) -> dict:
        code = self.proc.wait(timeout=600)
        return {"signal": -code if code < 0 else None, "code": code if code >= 0 else None}


def names(folder: Path) -> tuple[set[str], set[str]]:
    """The checkpoints and the temporary checkpoint files in ``folder``."""
    found = os.listdir(folder)
    return (
        {n for n in found if n.startswith("lm_") and n.endswith(".npz")},
        {n for n in found if n.startswith(".lm_") and n.endswith(".tmp")},
    )


@pytest.mark.slow
def test_sigkill_again_and_again_leaves_whole_checkpoints_that_resume(tmp_path):
    """24 runs killed in a row, the first of a fresh process: half of the kills at
    uniformly random moments once a run has started writing, half the moment a
    checkpoint's temporary file appears. After every kill each checkpoint loads
    (checksum verified), their steps are 1..newest with none missing, the newest never
    goes back, and the next run resumes from it; stale temporary files are gone once
    the next run has started. Then a fresh process resumes and finishes."""
    seed = int(os.environ.get("RNNC_CRASH_SEED", SEED))
    rng = np.random.default_rng(seed)
    t_start = time.perf_counter()
    data = tmp_path / "input.txt"
    data.write_text(TINY, encoding="utf-8")
    cv, logs = tmp_path / "cv", tmp_path / "logs"
    cv.mkdir()
    logs.mkdir()
    common = ["--data", str(data), "--backend", FAST, "--checkpoint-dir", str(cv)]
    common += ["--no-progress", "--max-steps", "100000"]
    model = ["--rnn-size", "32", "--num-layers", "1", "--batch-size", "4", "--seq-length", "8"]
    model += ["--train-frac", "0.8", "--eval-every", "1", "--sample-length", "5"]
    warm = ["train", *model, *common, "--checkpoint-dir", str(tmp_path / "warm")]
    warm[warm.index("--max-steps") + 1] = "1"
    server = Server(tmp_path, warm)
    kinds = ["random", *list(rng.permutation(["write"] * WRITE_KILLS + ["random"] * 11))]
    assert len(kinds) == KILLS
    record = []  # (kind, steps written, temporary file left)
    newest: Path | None = None
    newest_step = 0
    verified: dict[str, tuple] = {}  # checkpoint name -> the stat it was verified with
    stale: set[str] = set()
    timings: dict[str, float] = {}

    def context(i: int, log: Path) -> str:
        text = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        return f"kill {i} of seed {seed} (RNNC_CRASH_SEED={seed} repeats it); log:\n{text}"

    try:
        for i, kind in enumerate(kinds):
            log = logs / f"run{i:02d}.log"
            argv = ["train", *common] + (["--resume", str(newest)] if newest else model)
            before, _ = names(cv)
            started = time.perf_counter()
            if i == 0:
                run = Fresh(argv, log, tmp_path)
                pid = run.pid
            else:
                if i == 1:
                    server.ready()
                    timings["server ready"] = time.perf_counter() - t_start
                pid = server.run(argv, log)
            # wait for the run to start writing: a new temporary file or checkpoint
            deadline = time.perf_counter() + (120 if i == 0 else 30)
            writes_seen: set[str] = set()
            target = int(rng.integers(1, 4))  # kill at this write of the run
            delay = rng.uniform(0, RANDOM_SPAN) if kind == "random" else rng.uniform(0, 0.002)
            while True:
                ckpts, tmps = names(cv)
                writes_seen |= tmps - stale
                if kind == "random" and (writes_seen or ckpts - before):
                    break
                if kind == "write" and len(writes_seen) >= target:
                    break
                assert time.perf_counter() < deadline, "the run never wrote: " + context(i, log)
                time.sleep(0.0002 if kind == "write" else 0.005)  # leave the run a core
            if i == 0:
                timings["fresh process to its first write"] = time.perf_counter() - started
            if delay > 0.01:
                time.sleep(delay)
            else:  # busy: a sleep overshoots by a fraction of a millisecond
                until = time.perf_counter() + delay
                while time.perf_counter() < until:
                    pass
            os.kill(pid, signal.SIGKILL)
            status = run.wait() if i == 0 else server.wait(pid)
            assert status["signal"] == signal.SIGKILL, f"{status}: " + context(i, log)

            ckpts, tmps = names(cv)
            assert not (stale & tmps), "a stale temporary file survived: " + context(i, log)
            stale = tmps
            written = []  # the steps of the checkpoints this run wrote
            for name in sorted(ckpts):
                st = os.stat(cv / name)
                key = (st.st_ino, st.st_size, st.st_mtime_ns)
                if verified.get(name, (None,))[:3] == key:
                    continue
                try:
                    step = load_checkpoint(cv / name).meta["step"]
                except CheckpointError as exc:
                    raise AssertionError(f"{exc}\n" + context(i, log)) from None
                verified[name] = (*key, step)
                written.append(step)
            # it resumed from the newest: it wrote nothing at or before that step
            assert all(s > newest_step for s in written), f"wrote {written}: " + context(i, log)
            steps = sorted(v[3] for n, v in verified.items() if n in ckpts)
            assert steps == list(range(1, len(steps) + 1)), f"steps {steps}: " + context(i, log)
            assert not steps or steps[-1] >= newest_step, "went back: " + context(i, log)
            record.append((kind, (steps[-1] if steps else 0) - newest_step, bool(tmps)))
            if steps:
                newest_step = steps[-1]
                (newest,) = [
                    cv / n for n, v in verified.items() if n in ckpts and v[3] == steps[-1]
                ]
        timings["kills"] = time.perf_counter() - t_start

        # a fresh process resumes from the newest and finishes; nothing is left over
        log = logs / "final.log"
        final = newest_step + 2
        argv = ["train", *common, "--resume", str(newest)]
        argv[argv.index("--max-steps") + 1] = str(final)
        started = time.perf_counter()
        done = Fresh(argv, log, tmp_path).wait()
        timings["final fresh run"] = time.perf_counter() - started
        out = log.read_text()
        assert done["code"] == 0, context(KILLS, log)
        assert f"done: {final} steps" in out, context(KILLS, log)
        if stale:
            assert f"removed {len(stale)} unfinished checkpoint file(s)" in out
    finally:
        server.close()
    ckpts, tmps = names(cv)
    assert not tmps
    assert sorted(load_checkpoint(cv / n).meta["step"] for n in ckpts) == list(range(1, final + 1))
    with open(cv / "lstm_log.csv", newline="") as f:  # what killed runs logged past a
        logged = [int(r["step"]) for r in csv.DictReader(f) if r["loss"]]  # checkpoint: gone
    assert logged == list(range(1, final + 1))

    timings["total"] = time.perf_counter() - t_start
    landed = [tmp for _, _, tmp in record]
    summary = (
        f"seed {seed}: {len(record)} kills ({kinds.count('random')} random, "
        f"{kinds.count('write')} timed to writes); during a write: {sum(landed)} "
        f"({sum(t for k, _, t in record if k == 'write')} of the timed, "
        f"{sum(t for k, _, t in record if k == 'random')} of the random); "
        f"{final} steps in all; " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items())
    )
    print(summary)
    assert len(record) >= 20
    assert sum(landed) >= 4, "too few kills landed during a checkpoint write: " + summary


# ---------------------------------------------------------------- exploding gradients
def explode_config(tmp_path, **kw) -> TrainConfig:
    """The `explode` cell with plain SGD, no clipping, the state reset every batch."""
    base = {
        "cell": f"{CELLS / 'explode.cell'}:explode",
        "rnn_size": 8,
        "num_layers": 1,
        "batch_size": 4,
        "seq_length": 8,
        "train_frac": 0.8,
        "stateful": False,
        "optimizer": "sgd",
        "momentum": 0.0,
        "lr": 0.01,
        "grad_clip": None,
        "eval_every": 1,
        "max_steps": 20,
        "backend": FAST,
        "checkpoint_dir": str(tmp_path),
        "progress": False,
        "sample_length": 5,
    }
    return TrainConfig(**{**base, **kw})


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_an_exploding_gradient_stops_training_at_the_last_good_checkpoint(
    tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # else the command sets it for the process
    data = tmp_path / "input.txt"
    data.write_text(TINY, encoding="utf-8")
    cv = tmp_path / "cv"
    argv = ["train", "--cell", f"{CELLS / 'explode.cell'}:explode", "--data", str(data)]
    argv += ["--rnn-size", "8", "--num-layers", "1", "--batch-size", "4", "--seq-length", "8"]
    argv += ["--train-frac", "0.8", "--no-stateful", "--optimizer", "sgd", "--momentum", "0"]
    argv += ["--lr", "0.01", "--grad-clip", "0", "--eval-every", "1", "--max-steps", "20"]
    argv += ["--backend", FAST, "--checkpoint-dir", str(cv), "--no-progress"]
    argv += ["--sample-length", "5"]
    assert rnnc_main(argv) == 1
    err = capsys.readouterr().err
    assert "training stopped" in err, err
    assert "fix: lower --lr, or clip the gradients (--grad-clip, --clip-norm)" in err
    files = sorted(cv.glob("lm_explode_*.npz"))
    steps = {load_checkpoint(f).meta["step"]: f for f in files}
    good = steps[max(steps)]
    assert f"The last good checkpoint: {good}" in err  # the newest, named
    assert f"at step {max(steps) + 1}" in err and max(steps) + 1 < 20
    ckpt = load_checkpoint(good)  # whole and finite
    for name, value in (ckpt.params | ckpt.optimizer).items():
        assert np.isfinite(value).all(), name
    with open(cv / "explode_log.csv", newline="") as f:
        norms = [float(r["grad_norm"]) for r in csv.DictReader(f) if r["grad_norm"]]
    assert max(norms) > 1e6  # the gradient exploded on the way


@pytest.mark.parametrize(
    "clip", [{"clip_norm": 1.0}, {"grad_clip": 1.0}], ids=["clip-norm", "grad-clip"]
)
def test_clipping_keeps_an_exploding_gradient_finite(tmp_path, clip):
    """The same run, clipped: 20 steps, every parameter finite after every step, while
    the gradient norm (taken before clipping) stays in the thousands."""
    seen = []

    def check(step, loss, model):
        finite = all(np.isfinite(v).all() for v in model.get_params().values())
        seen.append((step, np.isfinite(loss) and finite))

    result = train(explode_config(tmp_path, **clip), text=TINY, out=quiet, on_step=check)
    assert result.steps == 20 and result.stopped == "max_steps"
    assert seen == [(s, True) for s in range(1, 21)]
    with open(result.log, newline="") as f:
        norms = [float(r["grad_norm"]) for r in csv.DictReader(f) if r["grad_norm"]]
    assert len(norms) == 20 and min(norms) > 100  # far above the clip all along
    ckpt = load_checkpoint(result.last_checkpoint)
    assert all(np.isfinite(v).all() for v in ckpt.params.values())


def test_no_checkpoint_of_parameters_that_are_not_finite(tmp_path):
    """A bias of -inf under a ReLU: the loss stays finite (relu(-inf) = 0) and the
    gradient too (0), but the parameters are not; no checkpoint is written of them."""

    def poison(step, loss, model):
        if step == 1:
            model.params["layer0.b_ih"].set_value(np.full(4, -np.inf, "float32"))

    config = relu_config(tmp_path, max_steps=5)
    with pytest.raises(TrainingDivergedError) as e:
        train(config, text=TINY, out=quiet, on_step=poison)
    (good,) = tmp_path.glob("lm_rnn_relu_*.npz")
    assert str(e.value).startswith(
        "error: layer0.b_ih became infinite or NaN by step 2; training stopped. "
        f"The last good checkpoint: {good}"
    )
    assert load_checkpoint(good).meta["step"] == 1


def test_a_nan_gradient_under_a_finite_loss_stops_training(tmp_path):
    """The `kink` cell: loss log(vocabulary) at the first step, its gradient NaN."""
    config = explode_config(tmp_path, cell=f"{CELLS / 'explode.cell'}:kink")
    with pytest.raises(
        TrainingDivergedError, match=r"loss became 3\.\d+ \(gradient norm nan\) at step 1"
    ):
        train(config, text=TINY, out=quiet)
    assert not list(tmp_path.glob("lm_*.npz"))
