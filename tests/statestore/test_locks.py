"""The writers lock: `state import` against stores that pools and replays have open."""

from __future__ import annotations

import argparse
import errno
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from statestore import (
    PartitionPosition,
    StateStore,
    StoreConfig,
    StoreConfigError,
    StoreInUseError,
    command,
    locks,
)
from stream.cli import main
from tests.conftest import REPO_ROOT
from tests.statestore.helpers import make_state

TOPIC = "interactions"


def _run(*argv: str) -> int:
    """Run `hiertcn-stream state ARGV` and let its errors propagate."""
    parser = argparse.ArgumentParser(prog="hiertcn-stream")
    command.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["state", *argv])
    return args.func(args)


def _export_file(tmp_path: Path) -> Path:
    """Write an export of one user at offset 1 of `interactions[0]`, from another store."""
    source = tmp_path / "source"
    with StateStore(StoreConfig(path=source, sync=False)) as store:
        store.commit({"imported": make_state()}, {(TOPIC, 0): PartitionPosition(1, 1.0)})
    dump = tmp_path / "dump.jsonl"
    assert main(["state", "--state-dir", str(source), "export", str(dump)]) == 0
    return dump


def _start_pool(state_dir: Path) -> subprocess.Popen[str]:
    """Start a process that commits batch after batch to `state_dir`, as a pool does."""
    module = "tests.statestore.writer_process"
    writer = subprocess.Popen(
        [sys.executable, "-m", module, "batches", str(state_dir), "4", "nosync"],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert writer.stdout is not None
    assert writer.stdout.readline() == "ready\n"
    return writer


def _position(state_dir: Path) -> int:
    with StateStore(StoreConfig(path=state_dir, writer_lock=False)) as store:
        return store.positions(TOPIC)[0].next_offset


def test_import_rejected_while_pool_writes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dump = _export_file(tmp_path)
    state_dir = tmp_path / "live"
    writer = _start_pool(state_dir)
    try:
        capsys.readouterr()
        code = main(["state", "--state-dir", str(state_dir), "import", str(dump)])
        err = capsys.readouterr().err
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()

    assert code == 2
    assert f"Stop the pool that uses {state_dir} first" in err
    assert "writers.lock" in err
    # The import wrote nothing: the file's user is not in the store.
    with StateStore(StoreConfig(path=state_dir, writer_lock=False)) as store:
        assert store.read(["imported"]) == {}


def test_import_accepted_after_pool_dies(tmp_path: Path) -> None:
    dump = _export_file(tmp_path)
    state_dir = tmp_path / "live"
    writer = _start_pool(state_dir)
    writer.send_signal(signal.SIGKILL)  # the kernel drops the lock of a killed process
    writer.wait()

    assert main(["state", "--state-dir", str(state_dir), "import", str(dump)]) == 0
    assert _position(state_dir) == 1


def test_import_rejected_while_store_open(tmp_path: Path) -> None:
    dump = _export_file(tmp_path)
    state_dir = tmp_path / "state"
    store = StateStore(StoreConfig(path=state_dir, sync=False))
    try:
        with pytest.raises(StoreInUseError, match="a worker pool or a replay has the store open"):
            _run("--state-dir", str(state_dir), "import", str(dump))
    finally:
        store.close()

    assert main(["state", "--state-dir", str(state_dir), "import", str(dump)]) == 0


def test_pools_share_one_state_dir(tmp_path: Path) -> None:
    state_dir = tmp_path / "live"
    writer = _start_pool(state_dir)
    try:
        with StateStore(StoreConfig(path=state_dir, sync=False)) as store:
            store.commit({"second-pool": make_state()})
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()


def test_store_rejected_while_import_holds_lock(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    StateStore(StoreConfig(path=state_dir, sync=False)).close()

    with locks.lock_exclusive(state_dir), pytest.raises(StoreInUseError) as raised:
        StateStore(StoreConfig(path=state_dir, sync=False))

    message = str(raised.value)
    assert "state import` is writing to state directory" in message
    assert "wait until it ends" in message
    assert raised.value.exit_code == 2
    StateStore(StoreConfig(path=state_dir, sync=False)).close()


def test_reading_commands_run_beside_pool(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state_dir = tmp_path / "live"
    writer = _start_pool(state_dir)
    try:
        stats = main(["state", "--state-dir", str(state_dir), "stats"])
        dump = main(["state", "--state-dir", str(state_dir), "export", str(tmp_path / "d.jsonl")])
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()

    assert stats == 0
    assert dump == 0


def test_failed_open_releases_lock(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    small = StoreConfig(path=state_dir, state_shape=(2, 8), embedding_dim=6, sync=False)
    with StateStore(small) as store:
        store.commit({"u1": make_state()})
    large = StoreConfig(path=state_dir, state_shape=(9, 9), embedding_dim=9, sync=False)
    with pytest.raises(StoreConfigError, match=r"\[G, H\] = \[9, 9\]"):
        StateStore(large)

    with locks.lock_exclusive(state_dir):
        pass


def test_state_help_says_import_needs_stopped_pool(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["state", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())

    assert "Safe to run while workers use the store" not in help_text
    assert "import rejects a state directory that a worker pool or a replay has open" in help_text


def test_file_system_without_flock_warns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def flock_unsupported(descriptor: int, operation: int) -> None:
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(locks.fcntl, "flock", flock_unsupported)

    config = StoreConfig(path=tmp_path / "state", sync=False)
    with caplog.at_level(logging.WARNING, logger="statestore.locks"), StateStore(config) as store:
        store.commit({"u1": make_state()})

    assert "does not support flock" in caplog.text
    assert "stop them yourself before an import" in caplog.text


def test_lock_error_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def flock_failing(descriptor: int, operation: int) -> None:
        raise OSError(errno.EBADF, os.strerror(errno.EBADF))

    monkeypatch.setattr(locks.fcntl, "flock", flock_failing)

    with pytest.raises(StoreConfigError, match=r"writers\.lock failed: Bad file descriptor"):
        StateStore(StoreConfig(path=tmp_path / "state", sync=False))
