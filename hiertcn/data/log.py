"""`EventLog`: the compact, memory-mappable in-memory layout of a sessionized interaction log.

Letters: `U` users, `S` sessions, `E` events, `N` items in the vocabulary.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hiertcn.data.prepared_files import PART_ARRAYS
from hiertcn.data.readers import RawLog, select_ragged
from hiertcn.data.sessions import (
    DEFAULT_SESSION_GAP,
    offsets_from_starts,
    session_starts,
    sort_events,
)
from hiertcn.data.unique import factorize
from hiertcn.data.vocab import ItemVocab
from hiertcn.errors import DataError

logger = logging.getLogger(__name__)

LOG_FORMAT_VERSION = 1


@dataclass(frozen=True, eq=False)
class EventLog:
    """A sessionized log: events ordered by user, then time (`sort_events`), sessions in users.

    `impression_offsets` int64 `[E+1]` and `impressions` int32 `[*]` (`-1` for an item outside the
    vocabulary) are both None when the log has no impression lists. An event with an empty range
    had no list.
    """

    user_ids: np.ndarray  # str objects [U]
    user_offsets: np.ndarray  # int64 [U+1]
    user_session_offsets: np.ndarray  # int64 [U+1]
    session_offsets: np.ndarray  # int64 [S+1]
    items: np.ndarray  # int32 [E]
    timestamps: np.ndarray  # int64 [E], seconds since the Unix epoch (UTC)
    targets: np.ndarray  # bool [E]
    impression_offsets: np.ndarray | None
    impressions: np.ndarray | None
    vocab: ItemVocab

    def __post_init__(self) -> None:
        num_users, num_events = len(self.user_ids), len(self.items)
        checks = (
            ("user_offsets", len(self.user_offsets), num_users + 1),
            ("user_session_offsets", len(self.user_session_offsets), num_users + 1),
            ("timestamps", len(self.timestamps), num_events),
            ("targets", len(self.targets), num_events),
        )
        for name, actual, expected in checks:
            if actual != expected:
                raise DataError(f"event log field {name} has length {actual}, expected {expected}")
        if (self.impression_offsets is None) != (self.impressions is None):
            raise DataError("event log needs both impression_offsets and impressions, or neither")
        if self.impression_offsets is not None and len(self.impression_offsets) != num_events + 1:
            raise DataError(
                f"impression_offsets has length {len(self.impression_offsets)}, "
                f"expected {num_events + 1}"
            )

    @property
    def num_users(self) -> int:
        return len(self.user_ids)

    @property
    def num_items(self) -> int:
        return len(self.vocab)

    @property
    def num_events(self) -> int:
        return len(self.items)

    @property
    def num_sessions(self) -> int:
        return len(self.session_offsets) - 1

    @property
    def num_targets(self) -> int:
        return int(np.count_nonzero(self.targets))

    def user_slice(self, user: int) -> slice:
        """Return the event range of user row `user`."""
        return slice(int(self.user_offsets[user]), int(self.user_offsets[user + 1]))

    def user_sessions(self, user: int) -> range:
        """Return the session rows of user row `user`."""
        return range(int(self.user_session_offsets[user]), int(self.user_session_offsets[user + 1]))

    def session_slice(self, session: int) -> slice:
        """Return the event range of session row `session`."""
        return slice(int(self.session_offsets[session]), int(self.session_offsets[session + 1]))

    def session_users(self) -> np.ndarray:
        """Return the user row of each session, int64 `[S]`."""
        counts = np.diff(self.user_session_offsets)
        return np.repeat(np.arange(self.num_users, dtype=np.int64), counts)

    def event_impressions(self, event: int) -> np.ndarray | None:
        """Return the impression rows of one event (int32, `-1` = unknown item), or None."""
        if self.impression_offsets is None or self.impressions is None:
            return None
        start, end = self.impression_offsets[event], self.impression_offsets[event + 1]
        return np.asarray(self.impressions[start:end])

    def subset_users(self, indices: np.ndarray | list[int]) -> EventLog:
        """Return the log of the user rows `indices` in ascending row order, sharing the vocab."""
        rows = np.unique(np.asarray(indices, dtype=np.int64))
        if len(rows) and (rows[0] < 0 or rows[-1] >= self.num_users):
            raise DataError(f"user rows must lie in 0..{self.num_users - 1}, got {rows[[0, -1]]}")
        keep_user = np.zeros(self.num_users, dtype=bool)
        keep_user[rows] = True
        keep = np.repeat(keep_user, np.diff(self.user_offsets))
        return self.select_events(keep)

    def select_events(self, keep: np.ndarray, targets: np.ndarray | None = None) -> EventLog:
        """Return the events where `keep` (bool `[E]`) is true; sessions keep their boundaries.

        A session that loses events is shortened, and users or sessions left without events are
        dropped. `targets` (bool `[E]`) replaces the target flags when given.
        """
        keep = np.asarray(keep, dtype=bool)
        targets = self.targets if targets is None else np.asarray(targets, dtype=bool)
        user_of_event = np.repeat(np.arange(self.num_users), np.diff(self.user_offsets))
        session_of_event = np.repeat(np.arange(self.num_sessions), np.diff(self.session_offsets))
        kept_users = user_of_event[keep]
        kept_sessions = session_of_event[keep]
        user_starts = _run_starts(kept_users)
        session_starts_mask = _run_starts(kept_sessions)
        session_offsets = offsets_from_starts(session_starts_mask)
        session_index = np.cumsum(session_starts_mask) - 1
        user_offsets = offsets_from_starts(user_starts)
        user_session_offsets = np.append(
            session_index[user_offsets[:-1]], len(session_offsets) - 1
        ).astype(np.int64)
        impression_offsets, impressions = self.impression_offsets, self.impressions
        if impression_offsets is not None and impressions is not None:
            impression_offsets, impressions = select_ragged(
                np.asarray(impression_offsets), np.asarray(impressions), keep
            )
        return EventLog(
            user_ids=np.asarray(self.user_ids)[np.unique(kept_users)],
            user_offsets=user_offsets,
            user_session_offsets=user_session_offsets,
            session_offsets=session_offsets,
            items=np.asarray(self.items)[keep],
            timestamps=np.asarray(self.timestamps)[keep],
            targets=targets[keep],
            impression_offsets=impression_offsets,
            impressions=impressions,
            vocab=self.vocab,
        )

    def save(self, directory: str | Path) -> None:
        """Write one .npy per array, user_ids.json, vocab.json and meta.json to `directory`."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for name in PART_ARRAYS:
            np.save(directory / f"{name}.npy", np.asarray(getattr(self, name)))
        if self.impression_offsets is not None and self.impressions is not None:
            np.save(directory / "impression_offsets.npy", np.asarray(self.impression_offsets))
            np.save(directory / "impressions.npy", np.asarray(self.impressions))
        (directory / "user_ids.json").write_text(
            json.dumps([str(user) for user in self.user_ids]), encoding="utf-8"
        )
        self.vocab.save(directory / "vocab.json")
        meta = {
            "format_version": LOG_FORMAT_VERSION,
            "users": self.num_users,
            "items": self.num_items,
            "events": self.num_events,
            "sessions": self.num_sessions,
            "impressions": self.impressions is not None,
        }
        (directory / "meta.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")

    @classmethod
    def load(
        cls, directory: str | Path, mmap: bool = True, vocab: ItemVocab | None = None
    ) -> EventLog:
        """Read a log written by `save`; with `mmap` the arrays are read-only memory maps.

        `vocab` replaces the saved vocab.json, so that logs saved with one vocabulary can share it.
        """
        directory = Path(directory)
        meta_path = directory / "meta.json"
        if not meta_path.is_file():
            raise DataError(f"{meta_path} not found: {directory} is not a saved event log")
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("format_version") != LOG_FORMAT_VERSION:
            raise DataError(
                f"{directory} has event log format {meta.get('format_version')}, "
                f"this version reads {LOG_FORMAT_VERSION}: save the log again"
            )
        mode = "r" if mmap else None
        arrays = {name: np.load(directory / f"{name}.npy", mmap_mode=mode) for name in PART_ARRAYS}
        impression_offsets = impressions = None
        if meta.get("impressions"):
            impression_offsets = np.load(directory / "impression_offsets.npy", mmap_mode=mode)
            impressions = np.load(directory / "impressions.npy", mmap_mode=mode)
        user_ids = json.loads((directory / "user_ids.json").read_text(encoding="utf-8"))
        return cls(
            user_ids=_object_array([str(user) for user in user_ids]),
            impression_offsets=impression_offsets,
            impressions=impressions,
            vocab=vocab if vocab is not None else ItemVocab.load(directory / "vocab.json"),
            **arrays,
        )


def _run_starts(values: np.ndarray) -> np.ndarray:
    starts = np.ones(len(values), dtype=bool)
    starts[1:] = values[1:] != values[:-1]
    return starts


def _object_array(values: list[str]) -> np.ndarray:
    array = np.empty(len(values), dtype=object)
    array[:] = values
    return array


def _map_to_rows(ids: np.ndarray, vocab: ItemVocab, missing: int | None) -> np.ndarray:
    """Map external ids (str objects `[n]`) to rows, looking each distinct id up once."""
    if len(ids) == 0:
        return np.zeros(0, dtype=np.int32)
    distinct, codes = factorize(ids)
    return vocab.rows(distinct, missing=missing)[codes]


def _sorted_ids(distinct: np.ndarray, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return what `np.unique(distinct[codes], return_inverse=True)` returns, without hashing
    or comparing the `[E]` strings: the sorted ids that have an event, and the index of each
    event's id among them (int32 `[E]`)."""
    present = np.flatnonzero(np.bincount(codes, minlength=len(distinct)))
    order = present[np.argsort(distinct[present], kind="stable")]
    # int32 like the codes, because this array and its sorted copy have one entry per event.
    rank = np.zeros(len(distinct), dtype=np.int32)
    rank[order] = np.arange(len(order), dtype=np.int32)
    return distinct[order], rank[codes]


def _first_appearance_order(codes: np.ndarray) -> np.ndarray:
    """Return the distinct values of `codes` `[E]` in order of first appearance."""
    values, first = np.unique(codes, return_index=True)
    return values[np.argsort(first)]


def build_event_log(
    raw: RawLog, gap: int = DEFAULT_SESSION_GAP, vocab: ItemVocab | None = None
) -> EventLog:
    """Sort, sessionize and encode a raw log; every event is a target.

    Without `vocab` the vocabulary lists the items in order of first appearance after sorting. With
    one, an item outside it raises DataError, while impression ids outside it get row `-1`.
    """
    if len(raw) == 0:
        raise DataError(f"{raw.source}: no events to build an event log from")
    user_ids, user_codes = _sorted_ids(raw.distinct_users, raw.user_codes)
    order = sort_events(user_codes, raw.timestamps, raw.positions)
    codes = user_codes[order]
    timestamps = raw.timestamps[order].astype(np.int64, copy=False)
    item_codes = raw.item_codes[order]

    starts = session_starts(codes, timestamps, gap)
    session_offsets = offsets_from_starts(starts)
    user_offsets = offsets_from_starts(_run_starts(codes))
    session_index = np.cumsum(starts) - 1
    user_session_offsets = np.append(
        session_index[user_offsets[:-1]], len(session_offsets) - 1
    ).astype(np.int64)

    # Each distinct item is looked up once, in order of first appearance after sorting.
    seen = _first_appearance_order(item_codes)
    seen_ids = raw.distinct_items[seen]
    if vocab is None:
        vocab = ItemVocab(tuple(seen_ids))
    row_of_code = np.zeros(len(raw.distinct_items), dtype=np.int32)
    row_of_code[seen] = vocab.rows(seen_ids, missing=None)
    items = row_of_code[item_codes]

    impression_offsets = impressions = None
    if raw.impression_offsets is not None and raw.impressions is not None:
        impression_offsets, impression_ids = _take_ragged(
            raw.impression_offsets, raw.impressions, order
        )
        impressions = _map_to_rows(impression_ids, vocab, missing=-1)
    return EventLog(
        user_ids=user_ids.astype(object),
        user_offsets=user_offsets,
        user_session_offsets=user_session_offsets,
        session_offsets=session_offsets,
        items=items,
        timestamps=timestamps,
        targets=np.ones(len(items), dtype=bool),
        impression_offsets=impression_offsets,
        impressions=impressions,
        vocab=vocab,
    )


def _take_ragged(
    offsets: np.ndarray, values: np.ndarray, order: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Reorder the rows of a ragged array (offsets `[E+1]`, values `[*]`) by `order` `[E]`."""
    lengths = np.diff(offsets)[order]
    new_offsets = np.zeros(len(order) + 1, dtype=np.int64)
    np.cumsum(lengths, out=new_offsets[1:])
    starts = offsets[:-1][order]
    # Index of every value in the new order: each row's old start plus 0..length-1.
    within = np.arange(int(new_offsets[-1]), dtype=np.int64) - np.repeat(new_offsets[:-1], lengths)
    return new_offsets, values[np.repeat(starts, lengths) + within]
