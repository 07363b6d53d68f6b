"""Tests of the Prometheus multiprocess directories of the pool, on real folders and processes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from stream.config import WorkerConfig
from stream.errors import ConfigError
from stream.metrics import (
    MULTIPROC_ENV,
    check_temporary_directory,
    prepare_multiprocess_dir,
    remove_multiprocess_dir,
)
from stream.pool import Pool


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


def test_unwritable_tmpdir_rejected(tmp_path: Path, keep_env: None) -> None:
    regular_file = tmp_path / "file"
    regular_file.write_text("")
    # A path under a regular file cannot be created, even by root.
    tmpdir = str(regular_file / "tmp")

    with pytest.raises(ConfigError) as raised:
        check_temporary_directory({"TMPDIR": tmpdir})

    assert raised.value.exit_code == 2
    message = str(raised.value)
    assert message.startswith("no writable temporary directory for the worker metrics (")
    assert f"TMPDIR={tmpdir!r}: Not a directory" in message
    assert message.endswith("): mount a writable /tmp or set TMPDIR")
    assert "\n" not in message


def test_writable_tmpdir_left_clean(tmp_path: Path, keep_env: None) -> None:
    root = check_temporary_directory({"TMPDIR": str(tmp_path)})

    assert root == tmp_path
    assert list(tmp_path.iterdir()) == []


def test_pool_without_tmpdir_exits_2(
    tmp_path: Path, keep_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    regular_file = tmp_path / "file"
    regular_file.write_text("")
    monkeypatch.setenv("TMPDIR", str(regular_file / "tmp"))
    config = WorkerConfig(brokers="127.0.0.1:1", bundle=tmp_path / "bundle", metrics_port=0)

    with pytest.raises(ConfigError, match="no writable temporary directory") as raised:
        Pool(config).run()

    assert raised.value.exit_code == 2
    assert MULTIPROC_ENV not in os.environ
