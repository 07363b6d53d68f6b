"""The pool lock of a state directory: one consumer group per directory.

A pool of `hiertcn-stream run` holds a shared `flock` on `pool.lock` in its state directory for
its lifetime (`lock_pool`), and so does each of its worker processes (`join_pool_lock`). The
file records the consumer group and pid of the pool that took the lock first. Pools of that
group may share the directory, because the group assigns each partition, and so each user, to
one of them: a rolling restart starts the new pool beside the old one. A pool of another group
would consume every event again and apply it to the same user states, so it is rejected.

The workers hold the lock too, so that it stays taken while any process of the pool can write
to the directory, also when the pool's parent process was killed and its orphaned workers have
not stopped yet.

The kernel releases an `flock` when the last descriptor of its open file closes, also when the
process dies, so a crash leaves no stale lock. For the same reason a lock whose file exists is
never stale, and deleting the file frees nothing: a pool started after the deletion creates a
new file and runs beside the processes that still hold the old one.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import time
from pathlib import Path

from statestore.errors import ReadOnlyStoreError, StoreConfigError, StoreInUseError
from statestore.locks import raise_if_symbolic_link, raise_unless_unsupported

logger = logging.getLogger(__name__)

# The file in a state directory that running pools and their workers hold a shared flock on,
# and that records the consumer group and pid of the pool that took the lock first.
POOL_LOCK_FILE = "pool.lock"
# Seconds a starting pool waits while another starting pool writes the pool lock's record.
_POOL_LOCK_WAIT_SECONDS = 2.0
# The kernel's table of file locks, with the pid of each holder (Linux only).
PROC_LOCKS = Path("/proc/locks")


def lock_pool(state_dir: Path, group: str) -> int | None:
    """Take the pool lock of the existing `state_dir` for a pool of consumer group `group`, and
    return its descriptor, which the pool keeps open for its lifetime.

    Raises `StoreInUseError` naming the group and pid of the pool that holds the lock when that
    group is another one. Returns None, after a warning, on a file system without flock.
    """
    path = state_dir / POOL_LOCK_FILE
    descriptor = _open_pool_lock_file(path, create=True)
    try:
        # The first pool takes the lock exclusively while it writes the record, so that two
        # pools that start together cannot both find the directory free.
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        _wait_shared(descriptor, state_dir)
        return _check_pool_group(descriptor, state_dir, group)
    except OSError as error:
        os.close(descriptor)
        _raise_unless_unsupported(error, state_dir)
        return None
    record = json.dumps({"group": group, "pid": os.getpid()}) + "\n"
    os.ftruncate(descriptor, 0)
    os.pwrite(descriptor, record.encode("utf-8"), 0)
    # Linux converts the lock by releasing it first, so a pool that starts in that instant may
    # take the lock exclusively and replace the record. The check below reads the record again
    # under the shared lock, which no pool can replace while any pool holds it shared, so of
    # two pools of different groups that race here only the one that wrote last keeps it.
    fcntl.flock(descriptor, fcntl.LOCK_SH)
    return _check_pool_group(descriptor, state_dir, group)


def join_pool_lock(state_dir: Path, group: str, pool_pid: int) -> int | None:
    """Take the pool lock of `state_dir` shared for a worker of the pool `pool_pid` of consumer
    group `group`, and return its descriptor, which the worker keeps open for its lifetime.

    The pool has taken the lock before it started the worker, so the worker never writes the
    record. Raises `StoreInUseError` when the record names another group, which happens only
    after the pool has lost the lock, and `StoreConfigError` when the file is missing. Returns
    None, after a warning, on a file system without flock.
    """
    path = state_dir / POOL_LOCK_FILE
    descriptor = _open_pool_lock_file(path, create=False, pool_pid=pool_pid)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        _wait_shared(descriptor, state_dir)
    except OSError as error:
        os.close(descriptor)
        _raise_unless_unsupported(error, state_dir)
        return None
    return _check_pool_group(descriptor, state_dir, group, pool_pid=pool_pid)


def _wait_shared(descriptor: int, state_dir: Path) -> None:
    """Take the pool lock shared while a starting pool holds it exclusively to write the record,
    or raise `StoreInUseError` after `_POOL_LOCK_WAIT_SECONDS`."""
    deadline = time.monotonic() + _POOL_LOCK_WAIT_SECONDS
    while True:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(descriptor)
                raise StoreInUseError(
                    f"state directory {state_dir} is in use: another pool is starting on it "
                    f"(it holds {state_dir / POOL_LOCK_FILE} exclusively). Run one pool per "
                    "state directory, and raise --processes for more workers"
                ) from None
            time.sleep(0.05)


def _check_pool_group(
    descriptor: int, state_dir: Path, group: str, pool_pid: int | None = None
) -> int:
    """Return `descriptor`, which holds the pool lock shared, when the record names `group`;
    else close it and raise `StoreInUseError`.

    `pool_pid` is the pool of the worker that joins the lock, None for a pool.
    """
    try:
        holder = json.loads(os.pread(descriptor, 4096, 0))
        holder_group, holder_pid = str(holder["group"]), int(holder["pid"])
    except (ValueError, KeyError, TypeError, OSError):
        holder_group, holder_pid = None, None
    if holder_group == group:
        return descriptor
    # Closed before the message lists the holders, so that it does not list this process.
    os.close(descriptor)
    message = _other_pool_message(state_dir, group, holder_group, holder_pid)
    if pool_pid is not None:
        message = _worker_rejected(state_dir, group, pool_pid, message)
    raise StoreInUseError(message)


def _other_pool_message(
    state_dir: Path, group: str, holder_group: str | None, holder_pid: int | None
) -> str:
    if holder_group is None or holder_pid is None:
        return (
            f"state directory {state_dir} is in use by a worker pool, and this pool of group "
            f"{group!r} would consume every event again and apply it to the same user states. "
            f"{_ADVICE}, or stop that pool first"
        )
    if not pid_exited(holder_pid):
        return (
            f"state directory {state_dir} is in use by a worker pool of consumer group "
            f"{holder_group!r} (pid {holder_pid}), and this pool of group {group!r} would "
            f"consume every event again and apply it to the same user states. {_ADVICE}, or "
            f"stop that pool first (a pool of group {holder_group!r} may start beside it for a "
            "rolling restart)"
        )
    path = state_dir / POOL_LOCK_FILE
    holders = lock_holder_pids(path)
    listed = ""
    if holders:
        pids = ", ".join(map(str, holders))
        listed = f" ({'pid' if len(holders) == 1 else 'pids'} {pids} in {PROC_LOCKS})"
    return (
        f"state directory {state_dir} is in use by a worker pool of consumer group "
        f"{holder_group!r}, and this pool of group {group!r} would consume every event again "
        f"and apply it to the same user states. {path} names pid {holder_pid}, the pool that "
        f"took the lock first, but that process has exited. The lock is still held{listed}: "
        "by a worker of that pool that has not stopped yet, or by a pool of the same group that "
        "started beside it later (a rolling restart) or one of its workers. A live process "
        f"holds it, so it is not stale, and deleting {path} does not help: a pool started after "
        f"that would write the same user states beside that process. {_ADVICE}, or stop the "
        f"pools of group {holder_group!r} first"
    )


_ADVICE = (
    "Run one pool per state directory and raise --processes for more workers, pass another "
    "--state-dir"
)


def _worker_rejected(state_dir: Path, group: str, pool_pid: int, pool_message: str) -> str:
    return (
        f"cannot join the pool lock {state_dir / POOL_LOCK_FILE} of consumer group {group!r}, "
        f"which this worker's pool (pid {pool_pid}) took before it started the worker: the pool "
        "has exited and a pool of another group has taken the lock since, or the file was "
        "deleted and created again. The worker stops before it writes to the state directory. "
        f"{pool_message[:1].upper()}{pool_message[1:]}"
    )


def pid_exited(pid: int) -> bool:
    """Return whether no process with `pid` exists in this pid namespace.

    NOTE: a pid that the kernel has given to a new process since counts as live. The pid of a
    pool in another pid namespace (another container on a shared volume) is looked up in this
    one, so the result can be wrong either way.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # the process exists, under another user
    return False


def lock_holder_pids(path: Path) -> list[int]:
    """Return the pids that hold an flock on the file at `path`, read from `PROC_LOCKS`.

    The list is empty where the table cannot be read (not Linux) or lists no holder.
    """
    try:
        info = os.stat(path)
        lines = PROC_LOCKS.read_text(encoding="ascii", errors="replace").splitlines()
    except OSError:
        return []
    # A line reads "1: FLOCK  ADVISORY  READ 4321 fe:00:9978178 0 EOF" (Linux 6.18), with the
    # device's major and minor number in hexadecimal and the inode number in decimal.
    device = f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}:{info.st_ino}"
    pids = set()
    for line in lines:
        fields = line.split()
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == device:
            pids.add(int(fields[4]))
    return sorted(pid for pid in pids if pid > 0)  # only positive pids name processes


def _open_pool_lock_file(path: Path, create: bool, pool_pid: int | None = None) -> int:
    # O_NOFOLLOW: the pool writes its record into the file, which must not reach a link's target.
    flags = os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW | (os.O_CREAT if create else 0)
    try:
        return os.open(path, flags, 0o644)
    except FileNotFoundError as error:
        if create:
            raise StoreConfigError(
                f"cannot open the lock file {path}: {error.strerror}; check --state-dir"
            ) from error
        raise StoreConfigError(
            f"the pool lock {path} is missing, although the pool (pid {pool_pid}) created it "
            "before it started this worker: it was deleted while the pool ran. Stop the pool "
            "and start it again, and never delete pool.lock while a pool uses the directory"
        ) from error
    except OSError as error:
        raise_if_symbolic_link(path, error)
        if error.errno in (errno.EACCES, errno.EROFS):
            raise ReadOnlyStoreError(
                f"cannot create the lock file {path}: {error.strerror}. A pool needs write "
                "access to its state directory: pass a writable --state-dir"
            ) from error
        raise StoreConfigError(
            f"cannot open the lock file {path}: {error.strerror}; check --state-dir"
        ) from error


def _raise_unless_unsupported(error: OSError, state_dir: Path) -> None:
    raise_unless_unsupported(
        error,
        state_dir / POOL_LOCK_FILE,
        "a pool cannot tell whether a pool of another consumer group uses this state "
        "directory: run one consumer group per state directory",
    )
