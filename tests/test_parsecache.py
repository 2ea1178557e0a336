"""rnnc.compile keeps the checked cells of a .cell file in rnnc's cache: a process that
loads a cell file it has checked before parses nothing and imports no Lark."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from rnnc import compile as rc
from rnnc.errors import UnknownNameError

CELL = "cell acc(x: [N]) -> (y: [N]):\n    state s: [N] = 0\n    s' = s + x\n    y = s'\n"


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A cache of its own, and no cells remembered by this process."""
    monkeypatch.setenv("RNNC_CACHE_DIR", str(tmp_path / "cache"))
    rc._parse_file.cache_clear()
    yield tmp_path / "cache" / "cells"
    rc._parse_file.cache_clear()


def _entries(store: Path) -> list[Path]:
    return sorted(store.glob("*.pkl")) if store.is_dir() else []


def _no_parsing(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("parsed although the cache holds the file's cells")

    monkeypatch.setattr(rc, "parse", refuse)


def test_a_cell_file_is_checked_once_then_loaded(store, tmp_path, monkeypatch):
    path = tmp_path / "acc.cell"
    path.write_text(CELL, encoding="utf-8")
    first = rc.parse_file(path)
    assert len(_entries(store)) == 1
    rc._parse_file.cache_clear()  # as a new process would
    _no_parsing(monkeypatch)
    assert rc.parse_file(path) == first


@pytest.mark.parametrize("name", sorted(rc.BUILTIN_CELLS))
def test_the_built_ins_from_the_cache_equal_their_parse(store, monkeypatch, name):
    rc.load_cell(name)
    rc._parse_file.cache_clear()
    path = rc.builtin_path(name)
    fresh = rc.parse(path.read_text(encoding="utf-8"), str(path))[name]
    _no_parsing(monkeypatch)
    assert rc.load_cell(name) == fresh


def test_a_changed_file_is_parsed_again(store, tmp_path):
    path = tmp_path / "acc.cell"
    path.write_text(CELL, encoding="utf-8")
    rc.parse_file(path)
    changed = CELL.replace("s + x", "s - x")
    path.write_text(changed, encoding="utf-8")
    os.utime(path, (1e9, 1e9))  # a new mtime whatever the clock's resolution
    rc._parse_file.cache_clear()
    cells = rc.parse_file(path)
    assert cells == rc.parse(changed, str(path)) != rc.parse(CELL, str(path))
    assert len(_entries(store)) == 2


def test_a_broken_entry_is_parsed_again_and_replaced(store, tmp_path):
    path = tmp_path / "acc.cell"
    path.write_text(CELL, encoding="utf-8")
    first = rc.parse_file(path)
    (entry,) = _entries(store)
    entry.write_bytes(b"not a pickle")
    rc._parse_file.cache_clear()
    assert rc.parse_file(path) == first
    assert entry.read_bytes() != b"not a pickle"


def test_a_cell_file_with_an_error_raises_every_time_and_is_not_kept(store, tmp_path):
    path = tmp_path / "bad.cell"
    path.write_text("cell f(x: [I]) -> (y: [I]):\n    y = tahn(x)\n", encoding="utf-8")
    for _ in range(2):
        rc._parse_file.cache_clear()
        with pytest.raises(UnknownNameError, match="tahn"):
            rc.parse_file(path)
    assert _entries(store) == []


def test_without_the_cache_nothing_is_kept(store, tmp_path, monkeypatch):
    monkeypatch.setenv("RNNC_CACHE", "0")
    path = tmp_path / "acc.cell"
    path.write_text(CELL, encoding="utf-8")
    assert list(rc.parse_file(path)) == ["acc"]
    assert _entries(store) == []


def _printed(code: str, cache: Path, **env: str) -> list[str]:
    """What ``code`` prints, run in a new process with rnnc's cache in ``cache``."""
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "RNNC_CACHE_DIR": str(cache), **env},
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.split()


def test_a_new_process_builds_a_built_in_layer_without_lark(tmp_path):
    code = (
        "import sys, rnnc\nrnnc.Recurrent('lstm', I=3, H=4, seed=0)\nprint('lark' in sys.modules)\n"
    )
    seen = [_printed(code, tmp_path)[-1] for _ in range(2)]
    assert seen == ["True", "False"]  # parsed the first time, loaded the second


def test_cells_loaded_in_another_process_equal_a_fresh_parse(tmp_path):
    """Python salts the hashes of strings per process: a node loaded from the cache
    must hash and compare as one built where it is loaded."""
    code = (
        "import rnnc\n"
        "from rnnc import compile as rc\n"
        "path = rc.builtin_path('gru')\n"
        "fresh = rc.parse(path.read_text(encoding='utf-8'), str(path))['gru']\n"
        "loaded = rnnc.load_cell('gru')\n"
        "print(loaded == fresh, hash(loaded.next_state['h']) == hash(fresh.next_state['h']))\n"
    )
    seen = [_printed(code, tmp_path, PYTHONHASHSEED=seed) for seed in ("1", "2")]
    assert seen == [["True", "True"]] * 2
