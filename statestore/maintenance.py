"""Offline work on a state store: statistics, eviction of inactive users, states as JSON.

Each function works in short transactions of at most `chunk_size` users, so it can run next to
live workers. A long read transaction would keep LMDB from reusing the pages that writers free,
so the file would grow. `statestore.export` writes export files, and `statestore.import_file`
imports them.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from statestore import codec, keys
from statestore.errors import StoreConfigError
from statestore.state import PartitionPosition, UserState
from statestore.store import StateStore, StoreTxn

logger = logging.getLogger(__name__)

DEFAULT_CHUNK_SIZE = 1000
SECONDS_PER_DAY = 86_400
# Reference times above this many seconds (about the year 5138) only make sense as milliseconds.
# The same bound as `MAX_TS_SECONDS` of the event decoder in `stream.events`, which this package
# must not import.
MAX_TIME_SECONDS = 1e11
# Days of inactivity an eviction may ask for: about 2,700 years, beyond any event time.
MAX_INACTIVE_DAYS = 1_000_000


@dataclass(frozen=True)
class StoreStats:
    """Counts and sizes of one state store."""

    users: int
    open_sessions: int  # entries of the timer index
    positions: dict[tuple[str, int], PartitionPosition]
    map_size: int  # bytes
    used_bytes: int  # bytes of the map in use, free pages included
    data_bytes: int  # bytes of the pages that hold data, free pages excluded
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
        data_bytes=info["data_bytes"],
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


def check_eviction_args(
    inactive_days: float,
    now: float | None,
    days_name: str = "inactive days",
    time_name: str = "reference time",
) -> None:
    """Raise `StoreConfigError` unless `inactive_days` is finite and >= 0 and `now` is a time
    in seconds between 0 and `MAX_TIME_SECONDS` (or None).

    The messages call the values `days_name` and `time_name`, so a command can name its flags.
    """
    if not math.isfinite(inactive_days) or not 0 <= inactive_days <= MAX_INACTIVE_DAYS:
        raise StoreConfigError(
            f"{days_name} {inactive_days:g} is invalid: use a number of days from 0 to "
            f"{MAX_INACTIVE_DAYS}"
        )
    if now is None:
        return
    if not math.isfinite(now) or now < 0:
        raise StoreConfigError(
            f"{time_name} {now} is invalid: use seconds since the Unix epoch, 0 or more"
        )
    if now > MAX_TIME_SECONDS * 1000:
        raise StoreConfigError(
            f"{time_name} {now:g} is too large: pass seconds since the Unix epoch up to "
            f"{MAX_TIME_SECONDS:.0f}"
        )
    if now > MAX_TIME_SECONDS:
        raise StoreConfigError(
            f"{time_name} {now:.0f} is too large for seconds and looks like milliseconds: "
            f"divide it by 1000, or pass seconds since the Unix epoch up to {MAX_TIME_SECONDS:.0f}"
        )


def plural(count: int, noun: str, plural_noun: str | None = None) -> str:
    """Return `count` and `noun`, in the plural unless `count` is 1: `1 user`, `3 users`.

    The plural is `noun` with an `s` unless `plural_noun` gives it: `plural(3, "batch",
    "batches")`.
    """
    if count == 1:
        return f"{count} {noun}"
    return f"{count} {plural_noun or noun + 's'}"


# JSON form of a state -----------------------------------------------------------------------


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
    """Invert `state_to_json`.

    A number beyond the float32 range becomes an infinity without a numpy warning, because
    `UserState.non_finite_values` reports it where it matters (`state import`).
    """
    last = fields.get("last_embedding")
    with np.errstate(over="ignore"):
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
