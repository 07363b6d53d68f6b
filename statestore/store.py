"""The LMDB environment that keeps user states, partition positions and session timers.

One environment (a directory with `data.mdb` and `lock.mdb`) contains four named databases:
`users` (user id -> encoded `UserState`), `positions` (topic-partition -> next offset,
watermark and, for a replay, its record order and output length), `timers` (partition, last
event time, user id -> empty: the users with an open session, in time order per partition) and
`meta` (schema version, creation info, and the bundle's version, state sizes and catalog, with
a history of the bundles that opened the store: see `statestore.bundle_meta`).
`statestore.keys` describes the key layouts and `statestore.codec` the state records.

Locks. A store keeps an `flock` on `writers.lock` in the state directory until it closes, in
the mode of `StoreConfig.writer_lock`: shared for a pool (the default), exclusive for a replay.
So pools share a directory, while a replay or `state import` never writes beside a pool or
another of them (`statestore.locks`).

Processes. Several worker processes may share one environment, and LMDB serialises their write
transactions with a lock in `lock.mdb`. Each process must open its own `StateStore` after it
starts: an LMDB environment must not be used across `fork()`, so every method raises
`ForeignProcessError` when called from a process other than the one that opened the store. On
open, `reader_check()` frees the reader slots that processes which died left in `lock.mdb`.

Threads. Threads of one process may share a store: one thread may read (`read`, `expired`,
`positions`) while another runs `commit`. Transactions take a shared lock and run concurrently.
Only map resizing takes it exclusively, because LMDB requires that no transaction of the
process is open during `set_mapsize`. `statestore.locks.SharedExclusiveLock` lists the LMDB and
py-lmdb rules that this relies on.

Map growth across processes. The map starts at `StoreConfig.map_size` and grows as follows:

1. A write transaction that runs out of map space raises `lmdb.MapFullError`, and LMDB aborts
   it. The store then (with no transaction open in this process, as `set_mapsize` requires)
   first calls `set_mapsize(0)`, which adopts the size that the last committed transaction of
   any process recorded. If that is not larger than the map it just filled, the store doubles
   the map (up to `StoreConfig.max_map_size`) and retries the whole transaction.
2. The next commit records the new size in the meta page, where `set_mapsize(0)` in other
   processes reads it.
3. A process whose map is smaller than the data that another process committed gets
   `lmdb.MapResizedError` when it begins a transaction. The store calls `set_mapsize(0)` to adopt
   the recorded size and retries.

Each retry logs an INFO line with `attempt n/max`, and a growth that reaches
`StoreConfig.max_map_size` a warning. The work of a transaction is a function that the
store may call more than once, so it must only read and write through the transaction.

Full disk. LMDB writes the pages of a commit before it writes the meta page that makes the
commit visible. A write that fails for lack of space (ENOSPC, EDQUOT, or EFBIG from a file-size
limit) aborts the transaction and leaves the previous commit intact, and the store raises
`DiskFullError` naming the state directory, and for EFBIG the file size limit (RLIMIT_FSIZE)
instead of the disk. LMDB 0.9 reports a write that stopped short as EIO (`mdb_page_flush`), so
an EIO also raises `DiskFullError` when the file system or the file-size limit has less room
left than one page.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, TypeVar

import lmdb
import msgpack

from statestore import codec, keys, locks
from statestore.bundle_meta import bundle_meta_updates
from statestore.errors import (
    DiskFullError,
    ForeignProcessError,
    ReadOnlyStoreError,
    SchemaVersionError,
    StateFilesReplacedError,
    StateStoreError,
    StoreConfigError,
)
from statestore.map_size import MapSizing, file_size_limit, format_size
from statestore.state import PartitionPosition, UserState

logger = logging.getLogger(__name__)

T = TypeVar("T")

GIB = 1 << 30
# The file of LMDB's data pages inside the state directory (subdir=True).
_DATA_FILE = "data.mdb"
# Default of `StoreConfig.max_map_size`: the map never grows beyond it (bytes).
MAX_MAP_SIZE = 1 << 40
_DATABASE_NAMES = (b"users", b"positions", b"timers", b"meta")
# Errors of `write()` that mean "no room on the disk or in the file".
_DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
# errno values of an LMDB call denied write access: a read-only directory, file or file system.
_READ_ONLY_ERRNOS = frozenset({errno.EACCES, errno.EROFS})


@dataclass(frozen=True)
class StoreConfig:
    """Settings of one state store.

    `sync=True` (the default) makes every commit durable: LMDB calls fsync before `commit`
    returns. With `sync=False`, commits return once the pages are in the OS page cache. A crash of
    the process then still loses nothing, but an OS crash or power loss can lose the last commits.
    The database then stays consistent only on filesystems that preserve write order, and can
    otherwise be corrupted (py-lmdb 3.0 documents this for `lmdb.open(sync=False)`). Call
    `StateStore.sync()` to flush at chosen times. `metasync=False` skips the separate flush of the
    meta page, so an OS crash can undo the last commit but keeps the database consistent (py-lmdb
    3.0, `lmdb.open(metasync=False)`).
    """

    path: str | Path  # the state directory; created when missing
    map_size: int = GIB  # initial LMDB map size (bytes); grows on demand
    max_map_size: int = MAX_MAP_SIZE  # the map never grows beyond this (bytes)
    sync: bool = True  # fsync on every commit (MDB_NOSYNC when False)
    metasync: bool = True  # fsync the meta page separately (MDB_NOMETASYNC when False)
    max_readers: int = 126  # reader slots in lock.mdb: one per concurrent read transaction
    bundle_version: str | None = None  # version of the model bundle, recorded in `meta`
    # (G, H) of the bundle's GRU state and its item-embedding size D, recorded in `meta` and
    # checked against the recorded ones on open. None skips the check.
    state_shape: tuple[int, int] | None = None
    embedding_dim: int | None = None
    # sha256 (hex) of the bundle's item_ids.json, which maps the item rows that states store to
    # item ids. Recorded in `meta` and checked like the sizes; None skips the check.
    catalog: str | None = None
    catalog_items: int | None = None  # items N in that catalog, for messages
    # How the store holds the writers lock while open (`statestore.locks`): "shared" for a pool,
    # "exclusive" for a replay, which must not rewrite the states that a pool serves. The `state`
    # actions that may run beside live workers pass "none", and so does `state import`, which
    # holds the lock exclusively itself.
    writer_lock: locks.WriterLock = "shared"
    # Map the size that the store's writers recorded in data.mdb instead of `map_size`, as
    # `state stats` does to report that size.
    recorded_map_size: bool = False
    # Open the existing store read-only, as the `state` actions that only read do (`StateStore`
    # lists what it still writes). Requires writer_lock "none".
    read_only: bool = False

    def __post_init__(self) -> None:
        if self.map_size <= 0:
            raise StoreConfigError(f"map_size {self.map_size} is invalid: use a positive size")
        if self.max_map_size < self.map_size:
            raise StoreConfigError(
                f"max_map_size {self.max_map_size} is below map_size {self.map_size}: "
                "raise max_map_size"
            )
        if self.max_readers <= 0:
            raise StoreConfigError(f"max_readers {self.max_readers} is invalid: use at least 1")
        if self.writer_lock not in locks.WRITER_LOCK_MODES:
            raise StoreConfigError(
                f"writer_lock {self.writer_lock!r} is invalid: use one of "
                f"{', '.join(map(repr, locks.WRITER_LOCK_MODES))}"
            )
        if self.read_only and self.writer_lock != "none":
            raise StoreConfigError(
                f"writer_lock {self.writer_lock!r} is invalid with read_only=True, which never "
                "writes: use writer_lock 'none'"
            )


class StoreTxn(NamedTuple):
    """An open LMDB transaction with the handles of the store's databases."""

    txn: lmdb.Transaction
    users: lmdb._Database
    positions: lmdb._Database
    timers: lmdb._Database
    meta: lmdb._Database


class StateStore(MapSizing):
    """User states, partition positions and session timers in one LMDB environment.

    With `StoreConfig.read_only`, the store opens an existing environment with MDB_RDONLY and
    writes nothing to data.mdb: it creates no directory, databases or metadata. It uses the
    lock.mdb of the writers when one exists, taking a reader slot there, so that it reads beside
    running writers safely, and opens without locking (creating no lock.mdb) otherwise.
    """

    def __init__(self, config: StoreConfig) -> None:
        self.config = config
        self.path = Path(config.path)
        self._pid = os.getpid()
        self._lock = locks.SharedExclusiveLock()
        blocking_file = file_in_path(self.path)
        if blocking_file == self.path:
            raise StoreConfigError(
                f"state directory {self.path} is a file, not a directory: pass the directory "
                "that contains data.mdb, or a new one"
            )
        if blocking_file is not None:
            raise StoreConfigError(
                f"cannot create state directory {self.path}: {blocking_file} is a file, not a "
                "directory; choose another path"
            )
        if config.read_only and not self.path.is_dir():
            raise StoreConfigError(f"state directory {self.path} does not exist: check --state-dir")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise StoreConfigError(
                f"cannot create state directory {self.path}: {error}; choose a writable path"
            ) from error
        # Taken before LMDB opens, so a store that another writer has locked is not even read.
        self._writer_lock = _take_writer_lock(self.path, config.writer_lock)
        try:
            self._env = self._open_environment()
        except BaseException:
            self._release_writer_lock()
            raise
        try:
            cleared = self._env.reader_check()
            if cleared:
                logger.info("cleared %d stale LMDB reader slots in %s", cleared, self.path)
            self._max_user_key = self._env.max_key_size() - keys.TIMER_PREFIX_SIZE
            if config.recorded_map_size:
                self.adopt_recorded_map_size()
            self._databases = self._retry(self._open_databases, "open databases")
            self._check_meta()
            self._data_file = _file_identity(self.path / _DATA_FILE)
            # The directory that the path led to at open, links resolved, for check_files.
            self._opened_dir = Path(os.path.realpath(self.path))
        except BaseException:
            # py-lmdb refuses a second open of the same files in one process, so a failed open
            # must not leave the environment open.
            self._env.close()
            self._release_writer_lock()
            raise
        logger.info(
            "opened state store %s%s (%s, sync=%s, metasync=%s)",
            self.path,
            " read-only" if config.read_only else "",
            self._describe_map(),
            config.sync,
            config.metasync,
        )

    def _describe_map(self) -> str:
        """Describe the map size of this process and where it comes from, for the open line.

        The size that data.mdb records can differ, because LMDB maps the requested size, or
        the size of the data when that is larger, until `adopt_recorded_map_size`.
        """
        size = self.map_size()
        if self.config.recorded_map_size:
            return f"map {format_size(size)}, as recorded in data.mdb"
        if size == self.config.map_size:
            return f"map {format_size(size)}, as requested by this process"
        return (
            f"map {format_size(size)}: this process requested "
            f"{format_size(self.config.map_size)}, and LMDB raised it to the size of the data"
        )

    def _open_environment(self) -> lmdb.Environment:
        try:
            return lmdb.open(
                str(self.path),
                map_size=self.config.map_size,  # grows on MapFullError, see the module docstring
                subdir=True,  # data.mdb and lock.mdb inside the state directory
                max_dbs=len(_DATABASE_NAMES),  # users, positions, timers, meta
                sync=self.config.sync,  # durability of each commit, see StoreConfig
                metasync=self.config.metasync,  # separate fsync of the meta page, see StoreConfig
                readahead=False,  # random reads of user states: read-ahead wastes page cache
                writemap=False,  # stray writes through the map cannot corrupt the file
                max_readers=self.config.max_readers,  # read slots shared by all processes
                max_spare_txns=1,  # reuse one read transaction instead of allocating each time
                readonly=self.config.read_only,
                lock=self._lock_environment(),
            )
        except lmdb.InvalidError as error:
            raise StoreConfigError(
                f"{self.path / 'data.mdb'} is not an LMDB file ({error}): check --state-dir"
            ) from error
        except lmdb.Error as error:
            # EACCES means a read-only path only here. In a transaction, LMDB returns it for a
            # write in a read-only transaction, which is a bug and not a setting.
            if getattr(error, "code", None) in _READ_ONLY_ERRNOS:
                raise ReadOnlyStoreError(
                    f"LMDB open failed in state store {self.path}: {error}. LMDB needs write "
                    "access to the state directory even to read it (for its lock file): pass a "
                    "writable --state-dir, or copy the directory to a writable place to read it"
                ) from error
            raise self._translate(error, "open") from error

    def _lock_environment(self) -> bool:
        """Return whether LMDB locks the environment with lock.mdb, which LMDB creates when
        missing.

        Several worker processes write to one environment, so writers always lock. A read-only
        store locks only when lock.mdb exists. NOTE: a writer that starts after that check
        creates lock.mdb, but this store does not see its reader slots, so the writer may reuse
        pages that a long read of this store still uses.
        """
        return not self.config.read_only or (self.path / "lock.mdb").exists()

    def _open_databases(self) -> tuple[lmdb._Database, ...]:
        if self.config.read_only:
            return tuple(self._open_existing_database(name) for name in _DATABASE_NAMES)
        with self._env.begin(write=True) as txn:
            return tuple(self._env.open_db(name, txn=txn) for name in _DATABASE_NAMES)

    def _open_existing_database(self, name: bytes) -> lmdb._Database:
        # Without `txn`, py-lmdb opens the handle in a transaction of its own, and the handle
        # stays valid. A handle opened in a read transaction that the caller passes is invalid
        # once that transaction ends (py-lmdb 3.0.0: `stat` then raises EINVAL).
        try:
            return self._env.open_db(name, create=False)
        except lmdb.NotFoundError as error:
            raise StoreConfigError(
                f"state store {self.path} has no {name.decode()!r} database, so it was not "
                "written by hiertcn-stream: check --state-dir"
            ) from error

    # Transactions ---------------------------------------------------------------------------

    def run(self, work: Callable[[StoreTxn], T], write: bool = False, buffers: bool = False) -> T:
        """Run `work` in one transaction, committed on return, and return its result.

        On map growth the store calls `work` again in a fresh transaction, so `work` must only
        read and write through the transaction it gets. `work` must not call methods of this
        store, because the store's lock is not reentrant. With `buffers=True`, reads return
        memoryviews of the map that are valid only until the transaction ends or writes, so
        `work` must copy or decode them before it returns or writes.
        """
        self._check_process()

        def once() -> T:
            with self._env.begin(write=write, buffers=buffers) as txn:
                return work(StoreTxn(txn, *self._databases))

        return self._retry(once, "write" if write else "read")

    def _translate(self, error: lmdb.Error, name: str) -> StateStoreError:
        code = getattr(error, "code", None)
        # EFBIG comes from the file size limit or from the file system's largest file. LMDB
        # 0.9 reports a write that the limit cut short as EIO instead.
        if code == errno.EFBIG or (code == errno.EIO and self._over_file_size_limit()):
            return DiskFullError(self._file_too_large_message(error, name))
        disk_full = isinstance(error, lmdb.DiskError) or code in _DISK_FULL_ERRNOS
        if disk_full or (code == errno.EIO and self._out_of_disk_space()):
            return DiskFullError(
                f"LMDB {name} in state store {self.path} failed for lack of disk space "
                f"({error}); the last commit is intact: free disk space or move the state "
                "directory to a larger disk"
            )
        return StateStoreError(f"LMDB {name} failed in state store {self.path}: {error}")

    def _file_too_large_message(self, error: lmdb.Error, name: str) -> str:
        data_file = self.path / "data.mdb"
        limit = file_size_limit()
        if limit is None:
            return (
                f"LMDB {name} in state store {self.path} failed because {data_file} reached "
                f"the largest file that its file system allows ({error}); the last commit is "
                "intact: move the state directory to a file system that allows larger files"
            )
        return (
            f"LMDB {name} in state store {self.path} failed because {data_file} reached this "
            f"process's file size limit of {format_size(limit)} (RLIMIT_FSIZE, `ulimit -f`), "
            f"not for lack of disk space ({error}); the last commit is intact: raise the limit "
            "(`ulimit -f unlimited` in the shell, LimitFSIZE= in a systemd unit) and start again"
        )

    def _check_process(self) -> None:
        if os.getpid() != self._pid:
            raise ForeignProcessError(
                f"state store {self.path} was opened in process {self._pid} and used in process "
                f"{os.getpid()}: open a new StateStore in each process after it starts"
            )

    # The worker's API -----------------------------------------------------------------------

    def read(self, users: Iterable[str]) -> dict[str, UserState]:
        """Read the states of `users` in one read transaction; unknown users are absent."""
        requested = [(user, keys.user_key(user)) for user in users]

        def work(t: StoreTxn) -> dict[str, UserState]:
            states = {}
            get = t.txn.get
            for user, key in requested:
                if not key or len(key) > self._max_user_key:
                    continue  # commit rejects such ids, so they are never stored
                blob = get(key, db=t.users)
                if blob is not None:
                    # `blob` is a view of the map, so it is decoded before the transaction ends.
                    states[user] = codec.decode_state(blob)
            return states

        return self.run(work, buffers=True)

    def commit(
        self,
        states: Mapping[str, UserState],
        positions: Mapping[tuple[str, int], PartitionPosition] | None = None,
        deletes: Iterable[str] = (),
    ) -> None:
        """Write `states`, `positions` and the removal of `deletes` in one write transaction.

        The timer index follows every state: the previous entry of each written or deleted user
        is removed, and a user with `session_length > 0` gets the entry
        `(partition, last_ts, user)`.
        """
        deleted_users = list(deletes)
        if not states and not positions and not deleted_users:
            return  # nothing to write, so no transaction and no fsync
        records = [self._encode_record(user, state) for user, state in states.items()]
        removed = [keys.user_key(user) for user in deleted_users]
        clash = set(states).intersection(deleted_users)
        if clash:
            raise StoreConfigError(
                f"users {sorted(clash)[:5]} are both written and deleted in one commit: "
                "pass each user in states or in deletes, not both"
            )
        position_records = [
            (keys.position_key(topic, partition), keys.encode_position(position))
            for (topic, partition), position in (positions or {}).items()
        ]

        new_timers = [(timer, b"") for _, _, timer in records if timer is not None]

        def work(t: StoreTxn) -> None:
            old_timers = []
            users = t.txn.cursor(db=t.users)
            for key, blob, _ in records:
                previous = users.replace(key, blob)
                if previous is not None:
                    old_timers.append(_timer_of_record(key, previous))
            for key in removed:
                previous = users.pop(key)
                if previous is not None:
                    old_timers.append(_timer_of_record(key, previous))
            # Old entries go first, because a user's new entry may equal its old one.
            for timer in old_timers:
                if timer is not None:
                    t.txn.delete(timer, db=t.timers)
            t.txn.cursor(db=t.timers).putmulti(new_timers)
            t.txn.cursor(db=t.positions).putmulti(position_records)

        started = time.perf_counter()
        self.run(work, write=True)
        logger.debug(
            "committed %d states, %d deletes, %d positions in %.2f ms",
            len(records),
            len(removed),
            len(position_records),
            (time.perf_counter() - started) * 1000,
        )

    def _encode_record(self, user: str, state: UserState) -> tuple[bytes, bytes, bytes | None]:
        key = keys.user_key(user)
        if not key or len(key) > self._max_user_key:
            raise StoreConfigError(
                f"user id {user[:40]!r} is {len(key)} bytes in UTF-8: LMDB keys of this store "
                f"take user ids of 1 to {self._max_user_key} bytes"
            )
        timer = None
        if state.session_length > 0:
            timer = keys.timer_key(state.partition, state.last_ts, user)
        return key, codec.encode_state(state), timer

    def positions(self, topic: str) -> dict[int, PartitionPosition]:
        """Return the stored position of every partition of `topic`."""
        prefix = keys.position_prefix(topic)

        def work(t: StoreTxn) -> dict[int, PartitionPosition]:
            found = {}
            cursor = t.txn.cursor(db=t.positions)
            if not cursor.set_range(prefix):
                return found
            for key, blob in cursor:
                if not key.startswith(prefix):
                    break
                _, partition = keys.topic_partition_of_key(key)
                found[partition] = keys.decode_position(blob)
            return found

        return self.run(work)

    def expired(self, partition: int, before_ts: float, limit: int) -> list[str]:
        """Return up to `limit` users of `partition` with an open session and
        `last_ts < before_ts`, oldest first (times compared at 1 µs resolution)."""
        prefix = keys.partition_bytes(partition)
        end = prefix + keys.micros_bytes(before_ts)

        def work(t: StoreTxn) -> list[str]:
            users: list[str] = []
            cursor = t.txn.cursor(db=t.timers)
            if limit <= 0 or not cursor.set_range(prefix):
                return users
            for key in cursor.iternext(keys=True, values=False):
                if key[: len(end)] >= end:
                    break  # past before_ts, or past the partition
                users.append(keys.user_of_timer_key(key))
                if len(users) >= limit:
                    break
            return users

        return self.run(work)

    def evict(self, users: Iterable[str], before_ts: float) -> int:
        """Delete those of `users` whose stored `last_ts` is below `before_ts`, in one write
        transaction, and return how many were deleted.

        The time is checked again inside the transaction, so a user whose state a worker
        updated after the caller chose it survives.
        """
        requested = [keys.user_key(user) for user in users]

        def work(t: StoreTxn) -> int:
            deleted = 0
            for key in requested:
                blob = t.txn.get(key, db=t.users)
                if blob is None or codec.decode_timer_fields(blob).last_ts >= before_ts:
                    continue
                timer = _timer_of_record(key, blob)
                if timer is not None:
                    t.txn.delete(timer, db=t.timers)
                t.txn.delete(key, db=t.users)
                deleted += 1
            return deleted

        return self.run(work, write=True)

    def copy_compacted(self, target: Path) -> None:
        """Write a compacted copy of the environment (free pages dropped) into `target`."""
        self._check_process()
        blocking_file = file_in_path(target)
        if blocking_file == target:
            raise StoreConfigError(
                f"{target} is a file, but a compacted copy is a directory: choose an empty or "
                "new directory"
            )
        if blocking_file is not None:
            raise StoreConfigError(
                f"cannot create the directory {target} for the compacted copy: {blocking_file} "
                "is a file, not a directory; choose another path"
            )
        if (target / "data.mdb").exists():
            raise StoreConfigError(
                f"{target} already contains an LMDB store: choose an empty or new directory"
            )
        try:
            target.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise StoreConfigError(
                f"cannot create the directory {target} for the compacted copy ({error}): "
                "choose a writable path"
            ) from error
        with self._lock.shared():
            try:
                self._env.copy(str(target), compact=True)
            except lmdb.Error as error:
                raise self._translate(error, f"copy to {target}") from error

    def environment_info(self) -> dict[str, int]:
        """Return the map size, the bytes in use, the bytes that hold data, the page size and
        the reader slots in use.

        `used_bytes` runs to the highest page ever written, free pages included: the map is
        full when it reaches `map_size`. `data_bytes` counts only the pages of the databases,
        so it falls when an evict frees pages, while `used_bytes` stays until a compacted copy.
        """
        self._check_process()
        with self._lock.shared():
            info = self._env.info()
            page_size = int(self._env.stat()["psize"])
            with self._env.begin() as txn:
                pages = sum(_pages_of(txn.stat(db)) for db in self._databases)
            pages += _pages_of(self._env.stat())  # the main database, which names the others
        return {
            "map_size": int(info["map_size"]),
            "used_bytes": (int(info["last_pgno"]) + 1) * page_size,
            "data_bytes": pages * page_size,
            "page_size": page_size,
            "readers": int(info["num_readers"]),
            "max_readers": int(info["max_readers"]),
        }

    def check_files(self) -> None:
        """Raise StateFilesReplacedError when the directory's data.mdb is no longer the file
        that this store opened: it was deleted or replaced, its directory was renamed, a link
        in the path now points elsewhere, or its volume was unmounted.

        LMDB keeps writing to the open file, so the commits that follow such a change do not
        reach the path that the next start opens.
        """
        data_path = self.path / _DATA_FILE
        try:
            current = _file_identity(data_path)
        except OSError as error:
            # Not found, not a directory (the directory replaced by a file), a stale NFS handle
            # or a denied permission: the path no longer leads to the file that was opened.
            current = None
            change = f"cannot be read ({error.strerror or error})"
        else:
            change = "is now another file"
        if current == self._data_file:
            return
        same = self._opened_dir == Path(os.path.abspath(self.path))
        opened = "" if same else f" (opened as {self._opened_dir})"
        raise StateFilesReplacedError(
            f"state file {data_path}{opened} {change}, so the commits that this process made "
            "since it changed went to the file it opened, not to that path. Stop the pool. If "
            "the directory was moved or its volume unmounted, put it back, and the commits are "
            "there; otherwise restore the directory from a backup (or let --changelog-topic "
            "restore it). Then start again"
        )

    def sync(self) -> None:
        """Flush committed pages to disk; useful with `StoreConfig.sync=False`."""
        self._check_process()
        with self._lock.shared():
            self._env.sync(True)

    def close(self) -> None:
        """Close the environment; in a forked child, only drop the reference."""
        if os.getpid() != self._pid:
            logger.debug("state store %s not closed in foreign process %d", self.path, os.getpid())
            return
        with self._lock.exclusive():
            self._env.close()
        self._release_writer_lock()

    def _release_writer_lock(self) -> None:
        # Closing the descriptor releases the flock, unless a forked child still has a copy.
        if self._writer_lock is not None:
            os.close(self._writer_lock)
            self._writer_lock = None

    def __enter__(self) -> StateStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # Metadata -------------------------------------------------------------------------------

    def meta(self) -> dict[str, object]:
        """Return the `meta` database: schema version, creation info, bundle metadata."""

        def work(t: StoreTxn) -> dict[str, object]:
            cursor = t.txn.cursor(db=t.meta)
            return {bytes(k).decode(): msgpack.unpackb(v) for k, v in cursor}

        return self.run(work)

    def _check_meta(self) -> None:
        meta = self.meta()
        stored = meta.get("schema_version")
        if isinstance(stored, int) and stored > codec.SCHEMA_VERSION:
            raise SchemaVersionError(
                f"state store {self.path} has schema version {stored}, but this code reads up "
                f"to {codec.SCHEMA_VERSION}: upgrade hiertcn before opening it"
            )
        if self.config.read_only:
            return
        updates: dict[str, object] = {}
        if stored is None:
            updates = {
                "schema_version": codec.SCHEMA_VERSION,
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "created_by": f"{socket.gethostname()} pid {os.getpid()}",
                "lmdb_version": ".".join(map(str, lmdb.version())),
            }
        elif stored < codec.SCHEMA_VERSION:
            logger.info(
                "state store %s has records of schema version %s; they are read as such and "
                "rewritten in version %d when their user changes",
                self.path,
                stored,
                codec.SCHEMA_VERSION,
            )
            updates["schema_version"] = codec.SCHEMA_VERSION
        updates.update(bundle_meta_updates(self.config, meta, self.user_count(), self.path))
        if updates:
            self._write_meta(updates)

    def user_count(self) -> int:
        """Return the number of users with a stored state."""
        return int(self.run(lambda t: t.txn.stat(t.users)["entries"]))

    def _write_meta(self, updates: Mapping[str, object]) -> None:
        def work(t: StoreTxn) -> None:
            for name, value in updates.items():
                t.txn.put(name.encode(), msgpack.packb(value), db=t.meta)

        self.run(work, write=True)


def _take_writer_lock(state_dir: Path, mode: locks.WriterLock) -> int | None:
    """Take the writers lock of `state_dir` in `mode` and return its descriptor, or None
    without a lock."""
    if mode == "shared":
        return locks.lock_shared(state_dir)
    if mode == "exclusive":
        return locks.lock_for_replay(state_dir)
    return None


def _file_identity(path: Path) -> tuple[int, int]:
    """Return the device and inode numbers of `path`, which name one file while it exists."""
    status = os.stat(path)
    return status.st_dev, status.st_ino


def file_in_path(path: Path) -> Path | None:
    """Return the first existing part of `path`, from the root down, that is not a directory.

    Such a part, `path` itself or one of its parents, keeps `path` from being a directory.
    """
    for part in [*reversed(path.parents), path]:
        if part.exists() and not part.is_dir():
            return part
    return None


def _pages_of(stat: Mapping[str, int]) -> int:
    """Return the pages of one LMDB database from its `stat()`."""
    return int(stat["branch_pages"]) + int(stat["leaf_pages"]) + int(stat["overflow_pages"])


def _timer_of_record(key: bytes, blob: bytes) -> bytes | None:
    """Return the `timers` key of the state `blob` stored under the `users` key `key`, or None
    when its session is closed."""
    partition, last_ts, session_length = codec.decode_timer_fields(blob)
    if session_length <= 0:
        return None
    # `keys.timer_key` with the user's key in place of the decoded and re-encoded user id.
    return keys.partition_bytes(partition) + keys.micros_bytes(last_ts) + bytes(key)
