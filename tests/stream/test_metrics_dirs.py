"""Tests of the Prometheus multiprocess directories of the pool, on real folders and processes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from stream.metrics import MULTIPROC_ENV, prepare_multiprocess_dir, remove_multiprocess_dir


def exited_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


@pytest.fixture
def keep_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(MULTIPROC_ENV, raising=False)


def test_directory_named_by_pid(tmp_path: Path, keep_env: None) -> None:
    path = prepare_multiprocess_dir(tmp_path)

    assert path.name.startswith(f"hiertcn-metrics-{os.getpid()}-")
    assert os.environ[MULTIPROC_ENV] == str(path)
    remove_multiprocess_dir(path)
    assert not path.exists()


def test_orphaned_directory_removed(tmp_path: Path, keep_env: None) -> None:
    orphan = tmp_path / f"hiertcn-metrics-{exited_pid()}-abc"
    orphan.mkdir()
    (orphan / "counter_1.db").write_bytes(b"x")
    live = tmp_path / f"hiertcn-metrics-{os.getpid()}-def"
    live.mkdir()
    other = tmp_path / "hiertcn-metrics-unrelated"
    other.mkdir()

    path = prepare_multiprocess_dir(tmp_path)

    assert not orphan.exists()
    assert live.exists()
    assert other.exists()
    remove_multiprocess_dir(path)
