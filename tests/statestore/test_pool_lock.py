"""The pool lock as workers join it, and the message when the pool named in it has exited.

tests/statestore/test_locks.py has the pools' own checks (another group rejected, the same
group joins, the conversion race); tests/stream/test_pool_orphans.py kills a real pool.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from statestore import StoreConfigError, StoreInUseError
from statestore.pool_lock import (
    POOL_LOCK_FILE,
    join_pool_lock,
    lock_holder_pids,
    lock_pool,
    pid_exited,
)


def _exited_pid() -> int:
    """Return the pid of a process that has exited and been reaped."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def _rewrite_record(descriptor: int, group: str, pid: int) -> None:
    record = json.dumps({"group": group, "pid": pid}) + "\n"
    os.ftruncate(descriptor, 0)
    os.pwrite(descriptor, record.encode("utf-8"), 0)


def test_worker_joins_pool_of_its_group(tmp_path: Path) -> None:
    pool = lock_pool(tmp_path, "g1")
    assert pool is not None

    worker = join_pool_lock(tmp_path, "g1", os.getpid())

    assert worker is not None
    os.close(pool)
    # The worker alone still keeps out a pool of another group.
    with pytest.raises(StoreInUseError):
        lock_pool(tmp_path, "g2")
    os.close(worker)
    after = lock_pool(tmp_path, "g2")
    assert after is not None
    os.close(after)


def test_rolling_restart_workers_join(tmp_path: Path) -> None:
    old_pool = lock_pool(tmp_path, "g1")
    old_worker = join_pool_lock(tmp_path, "g1", os.getpid())
    new_pool = lock_pool(tmp_path, "g1")
    new_worker = join_pool_lock(tmp_path, "g1", os.getpid())

    descriptors = [old_pool, old_worker, new_pool, new_worker]
    assert None not in descriptors
    for descriptor in descriptors:
        assert descriptor is not None
        os.close(descriptor)


def test_worker_rejected_after_other_group_took_lock(tmp_path: Path) -> None:
    other = lock_pool(tmp_path, "g2")
    assert other is not None
    try:
        with pytest.raises(StoreInUseError) as rejected:
            join_pool_lock(tmp_path, "g1", 4321)
    finally:
        os.close(other)

    message = str(rejected.value)
    lock_file = tmp_path / POOL_LOCK_FILE
    assert message.startswith(f"cannot join the pool lock {lock_file} of consumer group 'g1', ")
    assert "which this worker's pool (pid 4321) took before it started the worker" in message
    assert "The worker stops before it writes to the state directory. State directory " in message
    assert f"consumer group 'g2' (pid {os.getpid()})" in message
    assert rejected.value.exit_code == 2


def test_worker_rejects_missing_lock_file(tmp_path: Path) -> None:
    with pytest.raises(StoreConfigError) as rejected:
        join_pool_lock(tmp_path, "g1", 4321)

    message = str(rejected.value)
    assert f"the pool lock {tmp_path / POOL_LOCK_FILE} is missing" in message
    assert "Stop the pool and start it again" in message
    assert not (tmp_path / POOL_LOCK_FILE).exists()


def test_exited_first_pool_named_as_exited(tmp_path: Path) -> None:
    # After a rolling restart the record still names the first pool, which has exited, while
    # the pool that joined later holds the lock.
    exited = _exited_pid()
    later_pool = lock_pool(tmp_path, "g1")
    assert later_pool is not None
    _rewrite_record(later_pool, "g1", exited)
    try:
        with pytest.raises(StoreInUseError) as rejected:
            lock_pool(tmp_path, "g2")
    finally:
        os.close(later_pool)

    message = str(rejected.value)
    lock_file = tmp_path / POOL_LOCK_FILE
    assert (
        f"state directory {tmp_path} is in use by a worker pool of consumer group 'g1'," in message
    )
    assert f"{lock_file} names pid {exited}, the pool that took the lock first" in message
    assert "but that process has exited" in message
    assert f"The lock is still held (pid {os.getpid()} in /proc/locks): " in message
    assert "by a worker of that pool that has not stopped yet" in message
    assert "or by a pool of the same group that started beside it later" in message
    assert "A live process holds it, so it is not stale" in message
    assert f"deleting {lock_file} does not help" in message
    assert f"(pid {exited})" not in message


def test_live_first_pool_named_with_pid(tmp_path: Path) -> None:
    pool = lock_pool(tmp_path, "g1")
    assert pool is not None
    try:
        with pytest.raises(StoreInUseError) as rejected:
            lock_pool(tmp_path, "g2")
    finally:
        os.close(pool)

    assert f"consumer group 'g1' (pid {os.getpid()})" in str(rejected.value)
    assert "has exited" not in str(rejected.value)


def test_lock_holders_listed(tmp_path: Path) -> None:
    path = tmp_path / POOL_LOCK_FILE
    pool = lock_pool(tmp_path, "g1")
    assert pool is not None
    try:
        assert lock_holder_pids(path) == [os.getpid()]
    finally:
        os.close(pool)

    assert lock_holder_pids(path) == []
    assert lock_holder_pids(tmp_path / "missing.lock") == []


def test_pid_exited() -> None:
    assert not pid_exited(os.getpid())
    assert pid_exited(_exited_pid())


def _victim_behind_link(state_dir: Path, lock_file: str) -> Path:
    """Create a file of 1000 lines and a symbolic link to it at `state_dir / lock_file`."""
    victim = state_dir.parent / f"victim-{lock_file}.txt"
    victim.write_text("".join(f"{n}\n" for n in range(1000)), encoding="utf-8")
    state_dir.mkdir()
    (state_dir / lock_file).symlink_to(victim)
    return victim


@pytest.mark.parametrize("join", [False, True], ids=["pool", "worker"])
def test_pool_lock_link_rejected(tmp_path: Path, join: bool) -> None:
    state_dir = tmp_path / "state"
    victim = _victim_behind_link(state_dir, POOL_LOCK_FILE)
    before = victim.read_bytes()

    with pytest.raises(StoreConfigError) as rejected:
        if join:
            join_pool_lock(state_dir, "g1", 4321)
        else:
            lock_pool(state_dir, "g1")

    assert victim.read_bytes() == before
    message = str(rejected.value)
    link = state_dir / POOL_LOCK_FILE
    assert f"the lock file {link} is a symbolic link (to {victim})" in message
    assert f"remove the link {link}" in message
    assert rejected.value.exit_code == 2
