"""The writers lock: pools share a state directory, replays and `state import` hold it alone."""

from __future__ import annotations

import argparse
import errno
import logging
import os
import signal
import subprocess
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
from tests.statestore.helpers import make_state, start_writer

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
    return start_writer("batches", state_dir, "4", "nosync")


def _position(state_dir: Path) -> int:
    with StateStore(StoreConfig(path=state_dir, writer_lock="none")) as store:
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
    with StateStore(StoreConfig(path=state_dir, writer_lock="none")) as store:
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
        with pytest.raises(StoreInUseError, match="a worker pool has the store open"):
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
    assert f"state directory {state_dir} is in use" in message
    assert "a replay or `hiertcn-stream state import` is writing to it" in message
    assert "Wait until it ends, then start the pool again, or pass another --state-dir" in message
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


@pytest.mark.parametrize("mode", ["shared", "exclusive"])
def test_file_system_without_flock_warns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, mode: str
) -> None:
    def flock_unsupported(descriptor: int, operation: int) -> None:
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(locks.fcntl, "flock", flock_unsupported)

    config = StoreConfig(path=tmp_path / "state", sync=False, writer_lock=mode)  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, logger="statestore.locks"), StateStore(config) as store:
        store.commit({"u1": make_state()})

    assert "does not support flock" in caplog.text
    assert "never run a replay or an import while a pool uses it" in caplog.text


def test_lock_error_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def flock_failing(descriptor: int, operation: int) -> None:
        raise OSError(errno.EBADF, os.strerror(errno.EBADF))

    monkeypatch.setattr(locks.fcntl, "flock", flock_failing)

    with pytest.raises(StoreConfigError, match=r"writers\.lock failed: Bad file descriptor"):
        StateStore(StoreConfig(path=tmp_path / "state", sync=False))


# Replays: the writers lock held exclusively -------------------------------------------------


def _exclusive(state_dir: Path) -> StoreConfig:
    return StoreConfig(path=state_dir, sync=False, writer_lock="exclusive")


def test_exclusive_store_rejected_while_pool_writes(tmp_path: Path) -> None:
    state_dir = tmp_path / "live"
    writer = _start_pool(state_dir)
    try:
        with pytest.raises(StoreInUseError) as raised:
            StateStore(_exclusive(state_dir))
        # The pool keeps its lock and keeps committing after the rejected open.
        before = _position(state_dir)
        with StateStore(StoreConfig(path=state_dir, sync=False)) as second_pool:
            second_pool.commit({"second-pool": make_state()})
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()

    message = str(raised.value)
    assert raised.value.exit_code == 2
    assert f"state directory {state_dir} is in use by a worker pool" in message
    assert "a replay would rewrite the states of the users it serves" in message
    assert "Stop the pool first" in message
    assert f"`hiertcn-stream state --state-dir {state_dir} compact COPY`" in message
    assert "pass --state-dir COPY" in message
    assert _position(state_dir) >= before


def test_pool_rejected_while_exclusive_store_open(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    with StateStore(_exclusive(state_dir)) as replay:
        with pytest.raises(StoreInUseError) as raised:
            StateStore(StoreConfig(path=state_dir, sync=False))
        replay.commit({"u1": make_state()})

    assert raised.value.exit_code == 2
    assert f"state directory {state_dir} is in use" in str(raised.value)
    assert "a replay or `hiertcn-stream state import` is writing to it" in str(raised.value)
    # The lock ends with the replay's store.
    with StateStore(StoreConfig(path=state_dir, sync=False)) as pool:
        assert "u1" in pool.read(["u1"])


def test_exclusive_stores_exclude_each_other(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    with StateStore(_exclusive(state_dir)), pytest.raises(StoreInUseError) as raised:
        StateStore(_exclusive(state_dir))

    assert "`hiertcn-stream state import` or another replay is writing to it" in str(raised.value)
    assert "Wait until it ends, or pass another --state-dir" in str(raised.value)
    StateStore(_exclusive(state_dir)).close()


def test_exclusive_store_rejected_during_import(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    with locks.lock_exclusive(state_dir), pytest.raises(StoreInUseError) as raised:
        StateStore(_exclusive(state_dir))

    assert "`hiertcn-stream state import` or another replay is writing to it" in str(raised.value)
    assert not (state_dir / "data.mdb").exists()


def test_import_rejected_while_exclusive_store_open(tmp_path: Path) -> None:
    dump = _export_file(tmp_path)
    state_dir = tmp_path / "state"
    with StateStore(_exclusive(state_dir)), pytest.raises(StoreInUseError) as raised:
        _run("--state-dir", str(state_dir), "import", str(dump))

    message = str(raised.value)
    assert "a replay or another import is writing to it" in message
    assert "Wait until it ends, then run the import again" in message
    assert main(["state", "--state-dir", str(state_dir), "import", str(dump)]) == 0


def test_reading_commands_run_beside_replay_process(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    replay = start_writer("replay", state_dir)
    try:
        stats = main(["state", "--state-dir", str(state_dir), "stats"])
        compact = main(["state", "--state-dir", str(state_dir), "compact", str(tmp_path / "c")])
        with pytest.raises(StoreInUseError, match="a replay or `hiertcn-stream state import`"):
            StateStore(StoreConfig(path=state_dir, sync=False))
    finally:
        replay.send_signal(signal.SIGKILL)
        replay.wait()

    assert stats == 0
    assert compact == 0
    with StateStore(StoreConfig(path=tmp_path / "c", sync=False)) as copy:
        assert "replayed" in copy.read(["replayed"])


@pytest.mark.parametrize("mode", [True, False, "EXCLUSIVE", ""])
def test_invalid_writer_lock_mode_rejected(tmp_path: Path, mode: object) -> None:
    with pytest.raises(StoreConfigError, match="'shared', 'exclusive', 'none'"):
        StoreConfig(path=tmp_path / "state", writer_lock=mode)  # type: ignore[arg-type]


def test_pool_of_other_group_rejected(tmp_path: Path) -> None:
    from statestore.pool_lock import lock_pool

    first = lock_pool(tmp_path, "hiertcn")
    try:
        with pytest.raises(StoreInUseError) as error:
            lock_pool(tmp_path, "g2")
        message = str(error.value)
        assert f"state directory {tmp_path} is in use" in message
        assert f"consumer group 'hiertcn' (pid {os.getpid()})" in message
        assert "Run one pool per state directory and raise --processes" in message
        assert error.value.exit_code == 2

        same_group = lock_pool(tmp_path, "hiertcn")
        assert same_group is not None
        os.close(same_group)
    finally:
        assert first is not None
        os.close(first)

    after = lock_pool(tmp_path, "g2")
    assert after is not None
    os.close(after)


def test_pool_racing_lock_conversion_rejected(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import fcntl

    from statestore.pool_lock import lock_pool

    real_flock = fcntl.flock
    racer: dict[str, int | None] = {}

    def flock_with_race(descriptor: int, operation: int) -> None:
        # The first blocking LOCK_SH is the first pool's conversion: release the lock as Linux
        # does, and start a pool of another group in that instant.
        if operation == fcntl.LOCK_SH and "g2" not in racer:
            real_flock(descriptor, fcntl.LOCK_UN)
            racer["g2"] = None  # set first, because the racing pool converts its lock too
            racer["g2"] = lock_pool(tmp_path, "g2")
        real_flock(descriptor, operation)

    monkeypatch.setattr(fcntl, "flock", flock_with_race)
    with pytest.raises(StoreInUseError) as error:
        lock_pool(tmp_path, "g1")
    monkeypatch.undo()

    assert f"consumer group 'g2' (pid {os.getpid()})" in str(error.value)
    assert "this pool of group 'g1'" in str(error.value)
    winner = racer["g2"]
    assert winner is not None
    same_group = lock_pool(tmp_path, "g2")
    assert same_group is not None
    os.close(same_group)
    os.close(winner)


def test_writers_lock_link_rejected(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("".join(f"{n}\n" for n in range(1000)), encoding="utf-8")
    before = victim.stat()
    link = state_dir / locks.WRITERS_LOCK_FILE
    link.symlink_to(victim)

    for mode in ("shared", "exclusive"):
        with pytest.raises(StoreConfigError) as rejected:
            StateStore(StoreConfig(path=state_dir, writer_lock=mode, sync=False))
        assert f"the lock file {link} is a symbolic link (to {victim})" in str(rejected.value)
        assert f"remove the link {link}" in str(rejected.value)
    with pytest.raises(StoreConfigError, match="is a symbolic link"):
        locks.lock_exclusive(state_dir).__enter__()

    after = victim.stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    assert not (state_dir / "data.mdb").exists()


def test_dangling_writers_lock_link_rejected(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    target = tmp_path / "created-through-link"
    (state_dir / locks.WRITERS_LOCK_FILE).symlink_to(target)

    with pytest.raises(StoreConfigError, match="is a symbolic link"):
        locks.lock_shared(state_dir)

    assert not target.exists()
