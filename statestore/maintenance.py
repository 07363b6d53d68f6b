"""Offline work on a state store: statistics, export and import, eviction of inactive users.

Each function works in short transactions of at most `chunk_size` users, so it can run next to
live workers. A long read transaction would keep LMDB from reusing the pages that writers free,
so the file would grow.

Export formats, one record per user or partition position:
- JSON lines: `{"type": "position", "topic", "partition", "next_offset", "watermark"}` and
  `{"type": "user", "user", "state": {field: value}}` with arrays as nested lists. float32
  values survive the round trip exactly, because JSON keeps the float64 of each float32.
- msgpack stream: the same position maps, and `{"type": "user", "user", "record": bytes}` with
  the `statestore.codec` record, so old schema versions are exported and imported unchanged.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import msgpack
import numpy as np

from statestore import codec, keys
from statestore.errors import StateCodecError, StoreConfigError
from statestore.state import PartitionPosition, UserState
from statestore.store import StateStore, StoreTxn

logger = logging.getLogger(__name__)

DEFAULT_CHUNK_SIZE = 1000
SECONDS_PER_DAY = 86_400
EXPORT_FORMATS = ("jsonl", "msgpack")
# Reference times above this many seconds (about the year 5138) only make sense as milliseconds.
# The same bound as `MAX_TS_SECONDS` of the event decoder in `stream.events`, which this package
# must not import.
MAX_TIME_SECONDS = 1e11


@dataclass(frozen=True)
class StoreStats:
    """Counts and sizes of one state store."""

    users: int
    open_sessions: int  # entries of the timer index
    positions: dict[tuple[str, int], PartitionPosition]
    map_size: int  # bytes
    used_bytes: int  # bytes of the map in use, free pages included
    readers: int  # reader slots in use
    meta: dict[str, Any]


def collect_stats(store: StateStore) -> StoreStats:
    """Count users and open sessions and list every partition position."""

    def work(t: StoreTxn) -> tuple[int, int]:
        return t.txn.stat(t.users)["entries"], t.txn.stat(t.timers)["entries"]

    users, open_sessions = store.run(work)
    info = store.environment_info()
    return StoreStats(
        users=users,
        open_sessions=open_sessions,
        positions=all_positions(store),
        map_size=info["map_size"],
        used_bytes=info["used_bytes"],
        readers=info["readers"],
        meta=store.meta(),
    )


def all_positions(store: StateStore) -> dict[tuple[str, int], PartitionPosition]:
    """Return the position of every topic-partition in the store."""

    def work(t: StoreTxn) -> dict[tuple[str, int], PartitionPosition]:
        cursor = t.txn.cursor(db=t.positions)
        return {keys.topic_partition_of_key(k): keys.decode_position(v) for k, v in cursor}

    return store.run(work)


def iter_records(
    store: StateStore, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> Iterator[tuple[str, bytes]]:
    """Yield `(user, encoded state)` for every user in key order, `chunk_size` per transaction."""
    start = b""
    while True:

        def work(t: StoreTxn, start: bytes = start) -> list[tuple[bytes, bytes]]:
            cursor = t.txn.cursor(db=t.users)
            if not cursor.set_range(start):
                return []
            chunk = []
            for key, blob in cursor:
                chunk.append((bytes(key), bytes(blob)))
                if len(chunk) >= chunk_size:
                    break
            return chunk

        chunk = store.run(work)
        for key, blob in chunk:
            yield keys.user_of_key(key), blob
        if len(chunk) < chunk_size:
            return
        start = chunk[-1][0] + b"\x00"  # the smallest key after the last one


def evict_inactive(
    store: StateStore, inactive_days: float, now: float | None = None, dry_run: bool = False
) -> tuple[int, float | None]:
    """Delete users whose last event is more than `inactive_days` before `now`.

    Without `now`, the reference time is the newest `last_ts` in the store. With `dry_run`,
    nothing is deleted and the count is that of the users that would be deleted. Returns the
    number of users and the cutoff time (None for an empty store). Both arguments are checked
    before anything is deleted.
    """
    check_eviction_args(inactive_days, now)
    if now is None:
        now = newest_event_time(store)
        if now is None:
            return 0, None
    cutoff = now - inactive_days * SECONDS_PER_DAY
    evicted = 0
    candidates: list[str] = []
    for user, blob in iter_records(store):
        if codec.decode_timer_fields(blob).last_ts < cutoff:
            candidates.append(user)
        if len(candidates) >= DEFAULT_CHUNK_SIZE:
            evicted += len(candidates) if dry_run else store.evict(candidates, cutoff)
            candidates = []
    evicted += len(candidates) if dry_run else store.evict(candidates, cutoff)
    if dry_run:
        logger.info("%d users inactive since before %.0f in %s", evicted, cutoff, store.path)
    else:
        logger.info(
            "evicted %d users inactive since before %.0f from %s", evicted, cutoff, store.path
        )
    return evicted, cutoff


def newest_event_time(store: StateStore) -> float | None:
    """Return the newest `last_ts` of any user in the store, or None for an empty store."""
    times = [codec.decode_timer_fields(blob).last_ts for _, blob in iter_records(store)]
    return max(times) if times else None


def check_eviction_args(inactive_days: float, now: float | None) -> None:
    """Raise `StoreConfigError` unless `inactive_days` is finite and >= 0 and `now` is a time
    in seconds between 0 and `MAX_TIME_SECONDS` (or None)."""
    if not math.isfinite(inactive_days) or inactive_days < 0:
        raise StoreConfigError(
            f"inactive days {inactive_days} is invalid: use a finite number of days, 0 or more"
        )
    if now is None:
        return
    if not math.isfinite(now) or now < 0:
        raise StoreConfigError(
            f"reference time {now} is invalid: use seconds since the Unix epoch, 0 or more"
        )
    if now > MAX_TIME_SECONDS:
        raise StoreConfigError(
            f"reference time {now:.0f} is too large for seconds and looks like milliseconds: "
            f"divide it by 1000, or pass seconds since the Unix epoch up to {MAX_TIME_SECONDS:.0f}"
        )


# Export and import ------------------------------------------------------------------------


def format_of(path: Path, requested: str | None) -> str:
    """Return the export format: `requested`, else `msgpack` for a `.msgpack` file, else `jsonl`."""
    if requested is not None:
        if requested not in EXPORT_FORMATS:
            raise StoreConfigError(
                f"export format {requested!r} is invalid: use one of {', '.join(EXPORT_FORMATS)}"
            )
        return requested
    return "msgpack" if path.suffix in (".msgpack", ".mpk") else "jsonl"


def export_store(store: StateStore, path: Path, fmt: str) -> tuple[int, int]:
    """Write every partition position and user state to `path`; return both counts."""
    positions = all_positions(store)
    users = 0
    with path.open("wb") as stream:
        for (topic, partition), position in positions.items():
            _write_record(stream, fmt, _position_record(topic, partition, position))
        for user, blob in iter_records(store):
            if fmt == "jsonl":
                fields = state_to_json(codec.decode_state(blob))
                record = {"type": "user", "user": user, "state": fields}
            else:
                record = {"type": "user", "user": user, "record": blob}
            _write_record(stream, fmt, record)
            users += 1
    logger.info("exported %d users and %d positions to %s", users, len(positions), path)
    return users, len(positions)


def import_store(
    store: StateStore, path: Path, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> tuple[int, int]:
    """Commit the records of an export file, `chunk_size` users per transaction; return counts.

    The format is detected from the first byte: `{` starts JSON lines, anything else is msgpack.
    """
    users = 0
    positions_count = 0
    states: dict[str, UserState] = {}
    positions: dict[tuple[str, int], PartitionPosition] = {}
    for number, record in enumerate(_read_records(path), start=1):
        kind = record.get("type") if isinstance(record, dict) else None
        if kind == "user":
            states[str(record["user"])] = _state_of_record(record, path, number)
        elif kind == "position":
            key = (str(record["topic"]), int(record["partition"]))
            positions[key] = PartitionPosition(
                int(record["next_offset"]), float(record["watermark"])
            )
        else:
            raise StateCodecError(
                f"record {number} of {path} has type {kind!r}, expected 'user' or 'position': "
                "import only files that `hiertcn-stream state export` wrote"
            )
        if len(states) >= chunk_size:
            store.commit(states)
            users += len(states)
            states = {}
    store.commit(states, positions)
    users += len(states)
    positions_count += len(positions)
    logger.info("imported %d users and %d positions from %s", users, positions_count, path)
    return users, positions_count


def state_to_json(state: UserState) -> dict[str, Any]:
    """Return the fields of `state` as JSON values (arrays as nested lists)."""
    last = state.last_embedding
    return {
        "gru_state": state.gru_state.tolist(),
        "session_items": state.session_items.tolist(),
        "session_sum": state.session_sum.tolist(),
        "session_length": state.session_length,
        "session_start": state.session_start,
        "last_ts": state.last_ts,
        "session_count": state.session_count,
        "last_embedding": None if last is None else last.tolist(),
        "partition": state.partition,
    }


def state_from_json(fields: dict[str, Any]) -> UserState:
    """Invert `state_to_json`."""
    last = fields.get("last_embedding")
    return UserState(
        gru_state=np.array(fields["gru_state"], dtype=np.float32),
        session_items=np.array(fields["session_items"], dtype=np.int32).reshape(-1),
        session_sum=np.array(fields["session_sum"], dtype=np.float32),
        session_length=int(fields["session_length"]),
        session_start=float(fields["session_start"]),
        last_ts=float(fields["last_ts"]),
        session_count=int(fields["session_count"]),
        last_embedding=None if last is None else np.array(last, dtype=np.float32),
        partition=int(fields.get("partition", -1)),
    )


def _state_of_record(record: dict[str, Any], path: Path, number: int) -> UserState:
    try:
        if "record" in record:
            return codec.decode_state(record["record"])
        return state_from_json(record["state"])
    except (KeyError, TypeError, ValueError) as error:
        raise StateCodecError(
            f"user record {number} of {path} is invalid ({error!r}): import only files that "
            "`hiertcn-stream state export` wrote"
        ) from error


def _position_record(topic: str, partition: int, position: PartitionPosition) -> dict[str, Any]:
    return {
        "type": "position",
        "topic": topic,
        "partition": partition,
        "next_offset": position.next_offset,
        "watermark": position.watermark,
    }


def _write_record(stream: BinaryIO, fmt: str, record: dict[str, Any]) -> None:
    if fmt == "jsonl":
        stream.write(json.dumps(record, separators=(",", ":")).encode("utf-8") + b"\n")
    else:
        stream.write(msgpack.packb(record, use_bin_type=True))


def _read_records(path: Path) -> Iterator[Any]:
    with path.open("rb") as stream:
        first = stream.read(1)
        stream.seek(0)
        if first == b"{":
            for number, line in enumerate(stream, start=1):
                if not line.strip():
                    continue
                try:
                    yield json.loads(line)
                except ValueError as error:
                    raise StateCodecError(
                        f"line {number} of {path} is not valid JSON ({error}): import only files "
                        "that `hiertcn-stream state export` wrote"
                    ) from error
            return
        try:
            yield from msgpack.Unpacker(stream, raw=False)
        except (ValueError, msgpack.UnpackException) as error:
            raise StateCodecError(
                f"{path} is neither JSON lines nor a valid msgpack stream ({error}): import only "
                "files that `hiertcn-stream state export` wrote"
            ) from error
