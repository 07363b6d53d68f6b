"""The LMDB map size of a state store: growing it, and adopting the size of other processes.

`MapSizing` runs a transaction again after LMDB reports a full map (`MapFullError`) or a map that
another process grew (`MapResizedError`), as "Map growth across processes" in `statestore.store`
describes. `StateStore` inherits it, so its methods are part of the store's API.
"""

from __future__ import annotations

import logging
import os
import resource
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import lmdb

from statestore.errors import MapSizeLimitError, StateStoreError
from statestore.locks import SharedExclusiveLock

if TYPE_CHECKING:
    from statestore.store import StoreConfig

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Retries of one transaction: growing a 64 KiB map to 1 TiB takes 24 doublings, and another
# process may grow the map between them, which costs one more retry each time.
_MAX_ATTEMPTS = 48


class MapSizing:
    """The map sizing methods of `StateStore`, which provides the attributes declared here."""

    path: Path
    config: StoreConfig
    _env: lmdb.Environment
    _lock: SharedExclusiveLock
    _translate: Callable[[lmdb.Error, str], StateStoreError]

    def _retry(self, operation: Callable[[], T], name: str) -> T:
        for attempt in range(1, _MAX_ATTEMPTS + 1):
            with self._lock.shared():
                size_before = self.map_size()
                try:
                    return operation()
                except lmdb.MapResizedError:
                    resize = self._adopt_map
                except lmdb.MapFullError:
                    resize = self._grow_map
                except lmdb.Error as error:
                    raise self._translate(error, name) from error
            # The transaction has ended, so this thread holds no lock and no transaction here.
            with self._lock.exclusive():
                self._resize_map(resize, name, attempt, size_before)
        raise StateStoreError(
            f"LMDB {name} in {self.path} still failed after {_MAX_ATTEMPTS} attempts to grow "
            "the map: another process keeps growing it; retry the command"
        )

    def _resize_map(
        self, resize: Callable[[str, int, int], None], name: str, attempt: int, size_before: int
    ) -> None:
        try:
            resize(name, attempt, size_before)
        except lmdb.Error as error:
            raise self._translate(error, f"map resize for {name}") from error

    def _adopt_map(self, name: str, attempt: int, size_before: int) -> None:
        if self.map_size() != size_before:
            return  # another thread of this process adopted or grew the map meanwhile
        self._env.set_mapsize(0)
        logger.info(
            "LMDB map of %s was grown by another process: adopted %s (%s, attempt %d/%d)",
            self.path,
            format_size(self.map_size()),
            name,
            attempt,
            _MAX_ATTEMPTS,
        )

    def _grow_map(self, name: str, attempt: int, full_size: int) -> None:
        if self.map_size() > full_size:
            return  # another thread of this process grew the map meanwhile
        self._env.set_mapsize(0)
        if self.map_size() > full_size:
            logger.info(
                "LMDB map of %s is full at %s, adopted %s from another process (%s, attempt %d/%d)",
                self.path,
                format_size(full_size),
                format_size(self.map_size()),
                name,
                attempt,
                _MAX_ATTEMPTS,
            )
            return
        if full_size >= self.config.max_map_size:
            self._env.set_mapsize(full_size)
            raise MapSizeLimitError(
                f"LMDB map of {self.path} is full at max_map_size "
                f"{format_size(self.config.max_map_size)}: raise StoreConfig.max_map_size, or "
                "evict inactive users (hiertcn-stream state evict)"
            )
        new_size = min(full_size * 2, self.config.max_map_size)
        self._env.set_mapsize(new_size)
        if new_size < self.config.max_map_size:
            # Routine: the map starts small and doubles as the store fills.
            logger.info(
                "LMDB map of %s is full at %s, growing to %s (%s, attempt %d/%d)",
                self.path,
                format_size(full_size),
                format_size(new_size),
                name,
                attempt,
                _MAX_ATTEMPTS,
            )
            return
        logger.warning(
            "LMDB map of %s is full at %s, growing to %s, which is max_map_size: the next time "
            "it is full, commits fail. Raise StoreConfig.max_map_size, or evict inactive users "
            "(hiertcn-stream state evict) (%s, attempt %d/%d)",
            self.path,
            format_size(full_size),
            format_size(new_size),
            name,
            attempt,
            _MAX_ATTEMPTS,
        )

    def _out_of_disk_space(self) -> bool:
        """Return whether the file system of the state directory has less than a page free."""
        try:
            free = os.statvfs(self.path)
        except OSError:
            return False
        return free.f_bavail * free.f_frsize < resource.getpagesize()  # LMDB 0.9's page size

    def _over_file_size_limit(self) -> bool:
        """Return whether data.mdb has less than a page left below this process's file size
        limit (RLIMIT_FSIZE)."""
        limit = file_size_limit()
        if limit is None:
            return False
        try:
            file_size = (self.path / "data.mdb").stat().st_size
        except OSError:
            return False
        return file_size + resource.getpagesize() > limit

    def map_size(self) -> int:
        """Return the current LMDB map size of this process (bytes)."""
        return int(self._env.info()["map_size"])

    def adopt_recorded_map_size(self) -> int:
        """Set this process's map to the size recorded in data.mdb, and return it (bytes).

        On open, LMDB maps `StoreConfig.map_size` (at least the size of the data), not the
        recorded size, and a commit records the map of the process that made it when that map is
        larger. So after this call, `map_size()` returns the size that the store's writers
        recorded, not the one this process requested. The map still grows on demand.
        """
        self._check_process()
        with self._lock.exclusive():
            try:
                self._env.set_mapsize(0)  # 0: the size in the newest meta page
            except lmdb.Error as error:
                raise self._translate(error, "map resize") from error
        return self.map_size()


def file_size_limit() -> int | None:
    """Return the soft file size limit of this process (RLIMIT_FSIZE, `ulimit -f`) in bytes,
    or None when there is none."""
    limit, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    return None if limit == resource.RLIM_INFINITY else limit


def format_size(size: int) -> str:
    """Return a byte count in binary units, for example `64 KiB` or `1.5 GiB`."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.4g} {unit}"
        value /= 1024
    return f"{value:.4g} TiB"
