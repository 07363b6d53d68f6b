"""The writers lock of a state directory: pools against replays and `state import`.

LMDB serialises write transactions, but a pool, a replay and an import each write many
transactions that assume no other writer rewrites their users. A replay into a live pool's store
would apply its events on top of the states that the pool serves, and an import overwrites
partition positions, which a pool would continue from. So every store opened for serving or
replay takes an `flock` on `writers.lock` in the state directory while it is open
(`StoreConfig.writer_lock`):

- a pool's store takes it shared, so several pools on one state directory (a rolling restart)
  keep working;
- a replay's store takes it exclusively, so it runs only in a directory that no pool, import or
  other replay uses;
- `state import` takes it exclusively too (`lock_exclusive`), from its checks to its last commit.

No open waits for the writers lock: a conflicting open raises `StoreInUseError` at once.

The file is separate from LMDB's `lock.mdb`, which LMDB manages itself. The kernel releases an
`flock` when the last descriptor of its open file closes, also when the process dies, so a crash
leaves no stale lock. A forked child shares the parent's lock until both have closed the
descriptor.

A pool and its workers also hold `pool.lock`, shared with pools of their own consumer group
only, because a pool of another group would apply every event a second time
(`statestore.pool_lock`).

`SharedExclusiveLock` is the other lock of a store: the one between the threads of one process,
which lets transactions run side by side and a map resize run alone.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from statestore.errors import ReadOnlyStoreError, StoreConfigError, StoreInUseError

logger = logging.getLogger(__name__)

WRITERS_LOCK_FILE = "writers.lock"
# Modes of the writers lock of a store (`StoreConfig.writer_lock`): "shared" for a pool,
# "exclusive" for a replay, "none" for the `state` actions that run beside live workers.
WriterLock = Literal["shared", "exclusive", "none"]
WRITER_LOCK_MODES: tuple[WriterLock, ...] = ("shared", "exclusive", "none")
# errno values of a file system that does not support flock. The store then logs a warning and
# runs without the lock, as it did before the lock existed.
UNSUPPORTED_LOCK_ERRNOS = frozenset({errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP})


def lock_shared(state_dir: Path) -> int | None:
    """Take the shared writers lock of the existing `state_dir`, as a pool does, and return its
    descriptor.

    Raises `StoreInUseError` while a replay or `state import` holds the lock. Returns None,
    after a warning, on a file system without flock. Close the descriptor to release the lock.
    """
    descriptor = _open_lock_file(state_dir)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(descriptor)
        raise StoreInUseError(
            f"state directory {state_dir} is in use: a replay or `hiertcn-stream state import` "
            f"is writing to it (it holds {state_dir / WRITERS_LOCK_FILE} exclusively), and a "
            "pool would serve the states that it rewrites. Wait until it ends, then start the "
            "pool again, or pass another --state-dir"
        ) from None
    except OSError as error:
        os.close(descriptor)
        _raise_unless_unsupported(error, state_dir)
        return None
    return descriptor


def lock_for_replay(state_dir: Path) -> int | None:
    """Take the writers lock of the existing `state_dir` exclusively, as a replay does, and
    return its descriptor.

    Raises `StoreInUseError` while a pool, an import or another replay uses the directory.
    Returns None, after a warning, on a file system without flock.
    """
    return _take_exclusive(state_dir, _replay_rejected)


@contextmanager
def lock_exclusive(state_dir: Path) -> Iterator[None]:
    """Hold the writers lock of `state_dir` exclusively inside the block, as `state import`
    does; create the directory when missing.

    Raises `StoreInUseError` at once while a pool or a replay has the store open.
    """
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise StoreConfigError(
            f"cannot create state directory {state_dir}: {error}; choose a writable path"
        ) from error
    descriptor = _take_exclusive(state_dir, _import_rejected)
    try:
        yield
    finally:
        if descriptor is not None:
            os.close(descriptor)


def _take_exclusive(
    state_dir: Path, rejected: Callable[[Path, bool], StoreInUseError]
) -> int | None:
    """Take the exclusive lock, or raise `rejected(state_dir, pool_holds)`."""
    descriptor = _open_lock_file(state_dir)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pool_holds = _only_shared_holders(descriptor)
        os.close(descriptor)
        raise rejected(state_dir, pool_holds) from None
    except OSError as error:
        os.close(descriptor)
        _raise_unless_unsupported(error, state_dir)
        return None
    return descriptor


def _only_shared_holders(descriptor: int) -> bool:
    """Return whether the holders of the lock that `descriptor` failed to take exclusively hold
    it shared (pools), not exclusively (a replay or an import).

    The result only chooses the message, because a holder may leave between the two calls.
    """
    try:
        fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return False
    return True  # the caller closes `descriptor`, which drops this shared lock


def _replay_rejected(state_dir: Path, pool_holds: bool) -> StoreInUseError:
    lock_file = state_dir / WRITERS_LOCK_FILE
    if pool_holds:
        return StoreInUseError(
            f"state directory {state_dir} is in use by a worker pool (it has a shared lock "
            f"on {lock_file}), and a replay would rewrite the states of the users it serves. "
            "Stop the pool first, or replay into a copy: `hiertcn-stream state --state-dir "
            f"{state_dir} compact COPY` runs beside the pool, then pass --state-dir COPY"
        )
    return StoreInUseError(
        f"state directory {state_dir} is in use: `hiertcn-stream state import` or another "
        f"replay is writing to it (it has an exclusive lock on {lock_file}). Wait until it "
        "ends, or pass another --state-dir"
    )


def _import_rejected(state_dir: Path, pool_holds: bool) -> StoreInUseError:
    lock_file = state_dir / WRITERS_LOCK_FILE
    if pool_holds:
        return StoreInUseError(
            f"state directory {state_dir} is in use: a worker pool has the store open (it has "
            f"a shared lock on {lock_file}), and an import would rewind the partition positions "
            f"under it. Stop the pool that uses {state_dir} first, then run the import again"
        )
    return StoreInUseError(
        f"state directory {state_dir} is in use: a replay or another import is writing to it "
        f"(it holds {lock_file} exclusively). Wait until it ends, then run the import again"
    )


def _open_lock_file(state_dir: Path) -> int:
    path = state_dir / WRITERS_LOCK_FILE
    try:
        # Read-only is enough for flock, and O_CLOEXEC keeps the lock out of exec'd programs.
        return os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
    except OSError as error:
        raise_if_symbolic_link(path, error)
        if error.errno in (errno.EACCES, errno.EROFS):
            raise ReadOnlyStoreError(
                f"cannot create the lock file {path}: {error.strerror}. The store's writers "
                "need write access to the state directory: pass a writable --state-dir"
            ) from error
        raise StoreConfigError(
            f"cannot open the lock file {path}: {error.strerror}; check --state-dir"
        ) from error


def raise_if_symbolic_link(path: Path, error: OSError) -> None:
    """Raise `StoreConfigError` when opening the lock file `path` with O_NOFOLLOW failed
    because `path` is a symbolic link.

    Lock files are opened with O_NOFOLLOW, because a pool writes its record into `pool.lock`
    and would overwrite the target of a link.
    """
    if error.errno == errno.ELOOP and path.is_symlink():
        raise StoreConfigError(
            f"the lock file {path} is a symbolic link (to {os.readlink(path)}), and lock files "
            f"are never opened through a link: remove the link {path}, and the next start "
            "creates a regular file there"
        ) from error


def _raise_unless_unsupported(error: OSError, state_dir: Path) -> None:
    raise_unless_unsupported(
        error,
        state_dir / WRITERS_LOCK_FILE,
        "pools, replays and `state import` cannot tell whether another of them uses this store: "
        "never run a replay or an import while a pool uses it",
    )


def raise_unless_unsupported(error: OSError, lock_file: Path, consequence: str) -> None:
    """Raise `StoreConfigError` for a failed flock of `lock_file`, unless its file system does not
    support flock: then log a warning that ends with `consequence` and return, so that the
    caller runs without the lock."""
    if error.errno not in UNSUPPORTED_LOCK_ERRNOS:
        raise StoreConfigError(
            f"locking {lock_file} failed: {error.strerror}; check --state-dir"
        ) from error
    logger.warning(
        "the file system of %s does not support flock (%s), so %s",
        lock_file.parent,
        error.strerror,
        consequence,
    )


class SharedExclusiveLock:
    """A lock that any number of holders share, or one holder takes alone.

    A waiting exclusive holder blocks new shared holders, so a map resize cannot starve. The lock
    is not reentrant: a thread that holds it must not take it again.

    What holds for LMDB 0.9 and py-lmdb 3.0, and why shared transactions are safe:

    - py-lmdb opens every environment with MDB_NOTLS (`Environment.__init__` in lmdb/cffi.py),
      so a read transaction's reader slot belongs to the transaction, not to the thread, and
      threads may hold read transactions at the same time. Each read transaction takes one of
      the `max_readers` slots.
    - A transaction must be used by one thread only, and a write transaction must not span
      threads. `StateStore.run` begins and ends each transaction in the calling thread.
    - LMDB allows one write transaction per environment at a time, across threads and
      processes. py-lmdb makes `begin(write=True)` on another thread wait until the active one
      ends, and raises on the thread that already has one.
    - Readers never block the writer, and a read transaction reads one committed snapshot for
      its whole life, so a read never returns half of a commit (LMDB's MVCC design; checked by
      tests/statestore/test_threads.py, which reads during synced commits).
    - py-lmdb releases the GIL while `mdb_txn_commit` writes and fsyncs (measured with py-lmdb
      3.0.0: another Python thread kept running during a 12 ms synced commit), so a reading
      thread runs during the fsync of a commit.
    - `mdb_env_set_mapsize` may be called only while no transaction of the process is open, and
      py-lmdb 3.0 invalidates every open transaction of the environment when it runs. This is
      why resizing and `close` take the lock exclusively.
    """

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._shared_holders = 0
        self._exclusive_held = False
        self._exclusive_waiting = 0

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._condition:
            while self._exclusive_held or self._exclusive_waiting:
                self._condition.wait()
            self._shared_holders += 1
        try:
            yield
        finally:
            with self._condition:
                self._shared_holders -= 1
                if not self._shared_holders:
                    self._condition.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._condition:
            self._exclusive_waiting += 1
            try:
                while self._exclusive_held or self._shared_holders:
                    self._condition.wait()
            finally:
                self._exclusive_waiting -= 1
                # Shared holders wait while a resize is waiting, so they must hear it end, also
                # when an exception (KeyboardInterrupt) ends the wait.
                self._condition.notify_all()
            self._exclusive_held = True
        try:
            yield
        finally:
            with self._condition:
                self._exclusive_held = False
                self._condition.notify_all()
