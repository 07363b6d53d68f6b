"""Export files of a state store: their format, and writing them.

An export is a stream of records, as JSON lines or as msgpack maps, in this order:
1. a header `{"type": "header", "format": "hiertcn-state-export", "version": 1,
   "bundle_version", "state_shape": [G, H], "embedding_dim": D, "catalog", "catalog_items"}` with
   the metadata of the store (each value null when the store has none). `catalog` is the sha256
   of the `item_ids.json` whose rows the states' `session_items` are, and `catalog_items` its
   item count (see `statestore.bundle_meta`). Exports of earlier versions lack both keys,
2. one `{"type": "position", "topic", "partition", "next_offset", "watermark"}` per partition,
   with `"replay": {"order", "output", "output_bytes", "session_close_outputs", "batch_size"}`
   added to a replay's position (`batch_size` is null in positions stored before it existed),
3. one user record per user: in JSON lines `{"type": "user", "user", "state": {field: value}}`
   with arrays as nested lists, in msgpack `{"type": "user", "user", "record": bytes}` with the
   `statestore.codec` record. float32 values survive the JSON round trip exactly, because JSON
   keeps the float64 of each float32,
4. a trailer `{"type": "end", "users": N, "positions": P}`.

`statestore.import_file` checks and imports these files.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO

import msgpack

from statestore import codec
from statestore.errors import StateStoreError, StoreConfigError
from statestore.maintenance import all_positions, iter_records, plural, state_to_json
from statestore.state import PartitionPosition, UserState
from statestore.store import StateStore

logger = logging.getLogger(__name__)

EXPORT_FORMATS = ("jsonl", "msgpack")
EXPORT_FORMAT_NAME = "hiertcn-state-export"
EXPORT_VERSION = 1


@dataclass(frozen=True)
class StateSizes:
    """GRU state shape [G, H] and item-embedding size D of stored states; None where unknown."""

    state_shape: tuple[int, int] | None = None
    embedding_dim: int | None = None

    @classmethod
    def of_state(cls, state: UserState) -> StateSizes:
        layers, hidden = state.gru_state.shape
        return cls((int(layers), int(hidden)), int(state.session_sum.shape[0]))

    @classmethod
    def of_meta(cls, meta: dict[str, Any]) -> StateSizes:
        """Read `state_shape` and `embedding_dim` of store metadata or of an export header."""
        shape = meta.get("state_shape")
        dim = meta.get("embedding_dim")
        return cls(None if shape is None else (int(shape[0]), int(shape[1])), dim)

    def differs_from(self, other: StateSizes) -> bool:
        """Return whether a size known on both sides differs."""
        shapes_known = None not in (self.state_shape, other.state_shape)
        dims_known = None not in (self.embedding_dim, other.embedding_dim)
        return (shapes_known and self.state_shape != other.state_shape) or (
            dims_known and self.embedding_dim != other.embedding_dim
        )

    def merged_with(self, other: StateSizes) -> StateSizes:
        """Return these sizes with the unknown ones taken from `other`."""
        return StateSizes(
            self.state_shape if self.state_shape is not None else other.state_shape,
            self.embedding_dim if self.embedding_dim is not None else other.embedding_dim,
        )

    def __str__(self) -> str:
        shape = "unknown" if self.state_shape is None else list(self.state_shape)
        dim = "unknown" if self.embedding_dim is None else self.embedding_dim
        return f"[G, H] = {shape} and D = {dim}"


# Export ------------------------------------------------------------------------------------


def format_of(path: Path, requested: str | None) -> str:
    """Return the export format: `requested`, else `msgpack` for a `.msgpack` file, else `jsonl`."""
    if requested is not None:
        if requested not in EXPORT_FORMATS:
            raise StoreConfigError(
                f"export format {requested!r} is invalid: use one of {', '.join(EXPORT_FORMATS)}"
            )
        return requested
    return "msgpack" if path.suffix in (".msgpack", ".mpk") else "jsonl"


def check_export_path(path: Path, force: bool) -> None:
    """Raise `StoreConfigError` unless `export` can write `path` (an existing file only with
    `force`)."""
    if path.is_dir():
        raise StoreConfigError(
            f"export file {path} is a directory: name a file in it, for example "
            f"{path / 'states.jsonl'}"
        )
    if not path.parent.is_dir():
        raise StoreConfigError(
            f"the directory {path.parent} of export file {path} does not exist: create it "
            "first, or choose another path"
        )
    if path.exists() and not path.is_file():
        raise StoreConfigError(
            f"export file {path} exists and is not a regular file: choose another path"
        )
    if path.exists() and not force:
        raise StoreConfigError(
            f"export file {path} already exists: pass --force to replace it, or choose another path"
        )


def export_to_path(store: StateStore, path: Path, fmt: str) -> tuple[int, int]:
    """Write the export to a temporary file next to `path`, then rename it to `path`.

    So an interrupted export never leaves a partial file under `path`, and a file that `path`
    named before stays intact until the new one is complete. Returns the user and position counts.
    """
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as error:
        raise StoreConfigError(
            f"cannot create export file {path} ({error}): choose a writable directory"
        ) from error
    try:
        with os.fdopen(descriptor, "wb") as stream:
            counts = export_store(store, stream, fmt)
        os.replace(partial, path)
    except OSError as error:
        raise StateStoreError(
            f"writing export file {path} failed ({error}), and nothing was written under that "
            "name: free disk space or choose another path"
        ) from error
    finally:
        partial.unlink(missing_ok=True)
    logger.info(
        "exported %s and %s to %s",
        plural(counts[0], "user"),
        format_position_count(counts[1]),
        path,
    )
    return counts


def export_store(store: StateStore, stream: BinaryIO, fmt: str) -> tuple[int, int]:
    """Write the header, every partition position and user state, and the trailer to `stream`;
    return the user and position counts."""
    meta = store.meta()
    sizes = StateSizes.of_meta(meta)
    header = {
        "type": "header",
        "format": EXPORT_FORMAT_NAME,
        "version": EXPORT_VERSION,
        "bundle_version": meta.get("bundle_version"),
        "state_shape": None if sizes.state_shape is None else list(sizes.state_shape),
        "embedding_dim": sizes.embedding_dim,
        "catalog": meta.get("catalog"),
        "catalog_items": meta.get("catalog_items"),
    }
    _write_record(stream, fmt, header)
    positions = all_positions(store)
    for (topic, partition), position in positions.items():
        _write_record(stream, fmt, _position_record(topic, partition, position))
    users = 0
    for user, blob in iter_records(store):
        if fmt == "jsonl":
            fields = state_to_json(codec.decode_state(blob))
            record = {"type": "user", "user": user, "state": fields}
        else:
            record = {"type": "user", "user": user, "record": blob}
        _write_record(stream, fmt, record)
        users += 1
    _write_record(stream, fmt, {"type": "end", "users": users, "positions": len(positions)})
    return users, len(positions)


def _position_record(topic: str, partition: int, position: PartitionPosition) -> dict[str, Any]:
    record: dict[str, Any] = {
        "type": "position",
        "topic": topic,
        "partition": partition,
        "next_offset": position.next_offset,
        "watermark": position.watermark,
    }
    if position.replay is not None:
        record["replay"] = asdict(position.replay)
    return record


def format_position_count(count: int) -> str:
    """Return `count` with the noun "partition position", singular or plural."""
    return plural(count, "partition position")


def _write_record(stream: BinaryIO, fmt: str, record: dict[str, Any]) -> None:
    if fmt == "jsonl":
        stream.write(json.dumps(record, separators=(",", ":")).encode("utf-8") + b"\n")
    else:
        stream.write(msgpack.packb(record, use_bin_type=True))
