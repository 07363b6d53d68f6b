"""Exceptions of the `statestore` package. Each message names the bad value and the fix.

Every class derives from `StateStoreError`, whose `exit_code` is the exit status that the
`hiertcn-stream` command returns when it reports the error without a traceback.
"""

from __future__ import annotations


class StateStoreError(Exception):
    """Base class for errors of the state store that a command reports without a traceback."""

    exit_code = 1


class StoreConfigError(StateStoreError):
    """A `StoreConfig` value or a maintenance-command argument is invalid."""

    exit_code = 2


class ReadOnlyStoreError(StoreConfigError):
    """LMDB was denied write access to the state directory or its files (EACCES or EROFS).

    LMDB opens `lock.mdb` and `data.mdb` for writing even to read, so a read-only directory is
    an invalid --state-dir (exit status 2), not a failure at run time. A read-only store
    (`StoreConfig.read_only`) opens data.mdb read-only, but still opens an existing lock.mdb for
    writing.
    """


class StoreInUseError(StoreConfigError):
    """Another process has the writers lock of the state directory in a conflicting mode: a
    pool, a replay or `state import` while another of them writes the store (pools share it)."""


class CatalogMismatchError(StoreConfigError):
    """The stored states hold item rows of another catalog than the bundle's or the file's."""


class StateCodecError(StateStoreError):
    """A user state cannot be encoded, or a stored record cannot be decoded."""


class ExportFileError(StoreConfigError, StateCodecError):
    """An import file is missing, unreadable, incomplete or not an export that `state export`
    wrote: an invalid command argument (exit status 2) whose records cannot be decoded."""


class SchemaVersionError(StateStoreError):
    """The store or a record was written by a newer schema version than this code reads."""


class StateFilesReplacedError(StateStoreError):
    """The state directory's data.mdb was deleted or replaced while a store had it open.

    The exit status is 2, so that the pool stops also under --keep-going, and a supervisor does
    not restart it on an empty store.
    """

    exit_code = 2


class MapSizeLimitError(StateStoreError):
    """The LMDB map is full and has already grown to `StoreConfig.max_map_size`."""


class DiskFullError(StateStoreError):
    """The disk (or the file-size limit) of the state directory has no room for a commit."""


class ForeignProcessError(StateStoreError):
    """A `StateStore` was used in a process other than the one that opened it (after fork)."""


class UserNotFoundError(StateStoreError):
    """A maintenance command named a user that the store does not contain."""
