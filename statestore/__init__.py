"""The LMDB store of user states, partition positions and session timers.

The stream worker reads the states of a batch's users with `StateStore.read`, and writes the new
states together with the partition positions that produced them with `StateStore.commit`, in one
transaction, so that states and offsets always agree.
"""

from statestore.errors import (
    CatalogMismatchError,
    DiskFullError,
    ExportFileError,
    ForeignProcessError,
    MapSizeLimitError,
    ReadOnlyStoreError,
    SchemaVersionError,
    StateCodecError,
    StateFilesReplacedError,
    StateStoreError,
    StoreConfigError,
    StoreInUseError,
    UserNotFoundError,
)
from statestore.state import REPLAY_PARTITION, PartitionPosition, ReplayProgress, UserState
from statestore.store import StateStore, StoreConfig

__all__ = [
    "REPLAY_PARTITION",
    "CatalogMismatchError",
    "DiskFullError",
    "ExportFileError",
    "ForeignProcessError",
    "MapSizeLimitError",
    "PartitionPosition",
    "ReadOnlyStoreError",
    "ReplayProgress",
    "SchemaVersionError",
    "StateCodecError",
    "StateFilesReplacedError",
    "StateStore",
    "StateStoreError",
    "StoreConfig",
    "StoreConfigError",
    "StoreInUseError",
    "UserNotFoundError",
    "UserState",
]
