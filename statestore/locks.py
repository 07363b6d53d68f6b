"""The writers lock of a state directory: `state import` against live pools and replays.

LMDB serialises write transactions, but an import is more than one transaction, and it
overwrites partition positions. A pool that keeps committing would continue from positions that
the import rewound, or the import would overwrite states that the pool wrote after the export.
So every store opened for serving or replay (`StoreConfig.writer_lock`, on by default) holds a
shared `flock` on `writers.lock` in the state directory while it is open, and `state import`
takes it exclusively without waiting. Any number of pools and replays share the lock, so several
pools on one state directory (a rolling restart) keep working.

The file is separate from LMDB's `lock.mdb`, which LMDB manages itself. The kernel releases an
`flock` when the last descriptor of its open file closes, also when the process dies, so a crash
leaves no stale lock. A forked child shares the parent's lock until both have closed the
descriptor.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from statestore.errors import ReadOnlyStoreError, StoreConfigError, StoreInUseError

logger = logging.getLogger(__name__)

WRITERS_LOCK_FILE = "writers.lock"
# errno values of a file system that does not support flock. The store then logs a warning and
# runs without the lock, as it did before the lock existed.
_UNSUPPORTED_ERRNOS = frozenset({errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP})


def lock_shared(state_dir: Path) -> int | None:
    """Take the shared writers lock of the existing `state_dir` and return its descriptor.

    Raises `StoreInUseError` while `state import` holds the lock. Returns None, after a
    warning, on a file system without flock. Close the descriptor to release the lock.
    """
    descriptor = _open_lock_file(state_dir)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(descriptor)
        raise StoreInUseError(
            f"`hiertcn-stream state import` is writing to state directory {state_dir} (it "
            f"holds {state_dir / WRITERS_LOCK_FILE} exclusively): wait until it ends, then "
            "start again"
        ) from None
    except OSError as error:
        os.close(descriptor)
        _raise_unless_unsupported(error, state_dir)
        return None
    return descriptor


@contextmanager
def lock_exclusive(state_dir: Path) -> Iterator[None]:
    """Hold the writers lock of `state_dir` exclusively inside the block; create the directory
    when missing.

    Raises `StoreInUseError` at once while a pool or a replay has the store open.
    """
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise StoreConfigError(
            f"cannot create state directory {state_dir}: {error}; choose a writable path"
        ) from error
    descriptor = _open_lock_file(state_dir)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StoreInUseError(
                f"state directory {state_dir} is in use: a worker pool or a replay has the store "
                f"open (they hold a shared lock on {state_dir / WRITERS_LOCK_FILE}), and an "
                "import would rewind the partition positions under it. Stop the pool that uses "
                f"{state_dir} first, or wait until the replay ends, then run the import again"
            ) from None
        except OSError as error:
            _raise_unless_unsupported(error, state_dir)
        yield
    finally:
        os.close(descriptor)


def _open_lock_file(state_dir: Path) -> int:
    path = state_dir / WRITERS_LOCK_FILE
    try:
        # Read-only is enough for flock, and O_CLOEXEC keeps the lock out of exec'd programs.
        return os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as error:
        if error.errno in (errno.EACCES, errno.EROFS):
            raise ReadOnlyStoreError(
                f"cannot create the lock file {path}: {error.strerror}. The store's writers "
                "need write access to the state directory: pass a writable --state-dir"
            ) from error
        raise StoreConfigError(
            f"cannot open the lock file {path}: {error.strerror}; check --state-dir"
        ) from error


def _raise_unless_unsupported(error: OSError, state_dir: Path) -> None:
    if error.errno not in _UNSUPPORTED_ERRNOS:
        raise StoreConfigError(
            f"locking {state_dir / WRITERS_LOCK_FILE} failed: {error.strerror}; check --state-dir"
        ) from error
    logger.warning(
        "the file system of %s does not support flock (%s), so `state import` cannot tell "
        "whether a pool or a replay uses this store: stop them yourself before an import",
        state_dir,
        error.strerror,
    )
