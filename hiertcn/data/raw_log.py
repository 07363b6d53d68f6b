"""The raw table of events that a reader returns (`RawLog`), and the builder that fills it.

`RawLogBuilder` collects the events of one file, one row at a time or a chunk of rows at a time.
It checks each id and timestamp, applies `--event-types`, and in `build` converts milliseconds to
seconds. It logs the warnings and counts of a read: timestamps before 1970, the events that
`--event-types` dropped, unmatched event types and exact duplicates.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from itertools import chain, compress
from operator import not_
from pathlib import Path

import numpy as np

from hiertcn.data.counts import count_noun
from hiertcn.data.duplicates import find_duplicates
from hiertcn.data.excerpts import excerpt
from hiertcn.data.formats import FLEXIBLE_UNIT_FORMATS, ReaderConfig
from hiertcn.data.interning import CodeColumn
from hiertcn.data.time_units import (
    MillisecondsAsSecondsError,
    SecondsAsMillisecondsError,
    milliseconds_fix,
    negative_time_fix,
    timestamp_fix,
)
from hiertcn.errors import DataError

logger = logging.getLogger(__name__)


# The largest Unix time in seconds that is still in the year 9999. A larger value read with
# unit `s` is almost surely in milliseconds.
_MAX_SECONDS = 253_402_300_799
# Unix time of 1973-01-01 in seconds. A log whose every timestamp read with unit `ms` is earlier
# is almost surely in seconds: Unix time 1.7e9 s (the year 2023) read as ms is in January 1970.
_MIN_LATEST_SECONDS_FROM_MS = 94_694_400
# The timestamp text that the readers accept: ASCII digits after an optional sign. Python's int()
# also accepts underscores between digits and the digits of other scripts, such as full-width
# digits, which a log should not contain.
_INTEGER_TEXT = re.compile(r"[+-]?[0-9]+")
# Maximum number of distinct event types that the error for an --event-types value matching no
# event lists, because a wrong --event-type-col can name a column with a new value in every row.
_MAX_LISTED_TYPES = 20


@dataclass(frozen=True)
class RawLog:
    """One table of events in file order, before sessionizing. `E` is the number of events.

    User ids, item ids and event types are stored as int32 codes into arrays of their distinct
    values, and `users`, `items` and `event_types` decode them. The distinct values come in order
    of first appearance in the file, and after `select` some of them may have no event left.
    `impression_offsets` int64 `[E+1]` and `impressions` (str objects) are None when the log has no
    impression lists. Otherwise an event without a list has an empty range.
    """

    distinct_users: np.ndarray  # str objects [U]
    user_codes: np.ndarray  # int32 [E], the index of each event's user in distinct_users
    distinct_items: np.ndarray  # str objects [I]
    item_codes: np.ndarray  # int32 [E], the index of each event's item in distinct_items
    timestamps: np.ndarray  # int64 [E], seconds since the Unix epoch
    # int64 [E], the order among events of the same second: the position in the file, or for a
    # log read in milliseconds, the rank by millisecond time and then by position in the file.
    positions: np.ndarray
    distinct_event_types: np.ndarray | None  # str objects [T]
    event_type_codes: np.ndarray | None  # int32 [E], the index in distinct_event_types
    impression_offsets: np.ndarray | None  # int64 [E+1]
    impressions: np.ndarray | None  # str objects [*]
    source: str

    def __len__(self) -> int:
        return len(self.timestamps)

    @cached_property
    def users(self) -> np.ndarray:
        """The user id of each event, str objects `[E]` that share the distinct id objects."""
        return self.distinct_users[self.user_codes]

    @cached_property
    def items(self) -> np.ndarray:
        """The item id of each event, str objects `[E]`."""
        return self.distinct_items[self.item_codes]

    @cached_property
    def event_types(self) -> np.ndarray | None:
        """The event type of each event, str objects `[E]`, or None when the log has none."""
        if self.distinct_event_types is None or self.event_type_codes is None:
            return None
        return self.distinct_event_types[self.event_type_codes]

    def select(self, keep: np.ndarray) -> RawLog:
        """Return the events where the bool mask `keep` `[E]` is true, in their order."""
        offsets, impressions = self.impression_offsets, self.impressions
        if offsets is not None and impressions is not None:
            offsets, impressions = select_ragged(offsets, impressions, keep)
        type_codes = self.event_type_codes
        return dataclasses.replace(
            self,
            user_codes=self.user_codes[keep],
            item_codes=self.item_codes[keep],
            timestamps=self.timestamps[keep],
            positions=self.positions[keep],
            event_type_codes=None if type_codes is None else type_codes[keep],
            impression_offsets=offsets,
            impressions=impressions,
        )


def select_ragged(
    offsets: np.ndarray, values: np.ndarray, keep: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Keep the rows of a ragged array (offsets `[E+1]`, values `[*]`) selected by `keep` `[E]`."""
    lengths = np.diff(offsets)
    value_mask = np.repeat(keep, lengths)
    new_offsets = np.zeros(int(keep.sum()) + 1, dtype=np.int64)
    np.cumsum(lengths[keep], out=new_offsets[1:])
    return new_offsets, values[value_mask]


class RawLogBuilder:
    """Collects events and checks the ids and timestamps.

    `add` takes one row, and `add_columns` a chunk of rows in bulk. Ids and event types are kept
    as int32 codes of an `Interner`, and timestamps in a C array of int64, so a read keeps about
    20 bytes per event besides the distinct strings.

    NOTE: each row of a delimited file still becomes a Python list of strings in the csv module,
    so a read takes about twice as long as a bare `csv.reader` pass: 1.4 to 2 µs per Taobao row
    on a 2-core VM (`bench/read_speed.py`). The JSON Lines and trivago readers call `add` once
    per event, about 2 µs per OTTO event on top of the JSON parsing.
    """

    def __init__(self, path: Path, time_unit: str, config: ReaderConfig, with_impressions: bool):
        self.path = path
        self.time_unit = time_unit
        self.config = config
        # Checked in `build`: the largest timestamp and its line, when ms is the format's
        # default or was chosen for a format that reads seconds too.
        self.check_seconds_as_ms = time_unit == "ms" and config.format in FLEXIBLE_UNIT_FORMATS
        self.latest_ms: tuple[int, int] | None = None
        # Timestamps before 1970 and the line and file value of the first, for one warning.
        self.negative_times = 0
        self.first_negative_time: tuple[int, int] | None = None
        self.event_type_filter = None if config.event_types is None else set(config.event_types)
        self.users = CodeColumn()
        self.items = CodeColumn()
        # Timestamps in the file's unit. `build` floors milliseconds to seconds, after using
        # them to order the events within a second.
        self.times = array("q")
        self.event_types = CodeColumn()
        self.impression_lengths: array[int] | None = array("q") if with_impressions else None
        self.impressions = CodeColumn()
        self.skipped_types = 0
        # The first distinct event types that --event-types dropped, in file order, for the
        # message when it keeps nothing. A dict keeps the order.
        self.dropped_types: dict[str, None] = {}
        # The name of the item column when --item-col picks a column other than the format's
        # default, such as a category, for the duplicate note. Readers set it after `pick_columns`.
        self.other_item_column: str | None = None

    def parse_time(self, value: object, line: int) -> int:
        """Convert one timestamp to an integer in the file's unit; raises DataError naming it."""
        number = None
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        elif isinstance(value, str) and _INTEGER_TEXT.fullmatch(value.strip()):
            number = int(value)
        if number is None:
            raise DataError(
                f"{self.path}:{line}: timestamp {excerpt(value)} is not an integer: "
                f"{timestamp_fix(value, self.time_unit, self.config.format)}"
            )
        if number < 0:
            self.count_negative_time(number, line)
        if self.time_unit == "ms":
            if self.latest_ms is None or number > self.latest_ms[0]:
                self.latest_ms = (number, line)
            if abs(number) > _MAX_SECONDS * 1000:
                raise DataError(
                    f"{self.path}:{line}: timestamp {number} is after the year 9999 in "
                    "milliseconds: if the log is in microseconds, divide the timestamps by 1000"
                )
            return number
        if abs(number) > _MAX_SECONDS:
            raise MillisecondsAsSecondsError(
                f"{self.path}:{line}: timestamp {number} is after the year 9999 in seconds: "
                f"if the log is in milliseconds, {milliseconds_fix(self.config, self.path)}",
                line,
                number,
            )
        return number

    def count_negative_time(self, number: int, line: int) -> None:
        self.negative_times += 1
        if self.first_negative_time is None:
            self.first_negative_time = (line, number)

    def warn_negative_times(self) -> None:
        """Log one warning when timestamps are before 1970. The events are kept.

        Real logs almost never reach back before 1970, so such values usually come from a wrong
        column, unit or start. A log of historic events is valid, which is why this only warns.
        """
        if self.first_negative_time is None:
            return
        line, number = self.first_negative_time
        logger.warning(
            "%s:%d: %s before 1970 (a negative Unix time), the first is %d: %s. "
            "The events are kept as they are",
            self.path,
            line,
            count_noun(self.negative_times, "timestamp"),
            number,
            negative_time_fix(self.config, self.time_unit),
        )

    def check_seconds_read_as_ms(self) -> None:
        """Raise DataError when reading in milliseconds puts every timestamp before 1973.

        NOTE: a log whose times count milliseconds from a start other than 1970 is rejected too,
        and no flag accepts it. The message gives the conversion.
        """
        if not self.check_seconds_as_ms or self.latest_ms is None:
            return
        latest, line = self.latest_ms
        if latest // 1000 < _MIN_LATEST_SECONDS_FROM_MS:
            raise SecondsAsMillisecondsError(
                f"{self.path}:{line}: the latest timestamp, {latest}, is before 1973 in "
                "milliseconds, and so is every other: if the log is in seconds, pass "
                "--time-unit s, and if its times count milliseconds from a start other than "
                "1970, add that start's Unix time in milliseconds to every timestamp"
            )

    def parse_id(self, value: object, role: str, line: int) -> str:
        """Convert one user or item id to its external id string (`42` and `"42"` are equal)."""
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise DataError(
                f"{self.path}:{line}: {role} id {excerpt(value)} is invalid: "
                "ids must be strings or integers"
            )
        text = value.strip() if isinstance(value, str) else str(value)
        if text == "":
            raise DataError(f"{self.path}:{line}: the {role} id is empty")
        return text

    def add(
        self,
        line: int,
        user: object,
        item: object,
        timestamp: object,
        event_type: str | None = None,
        impressions: Sequence[str] = (),
    ) -> None:
        """Check one event and add it, or count it as dropped by --event-types."""
        if self.event_type_filter is not None and event_type is None:
            raise DataError(
                f"{self.path}:{line}: --event-types needs an event type per row, but this log "
                "has none: pass --event-type-col or drop --event-types"
            )
        if self.event_type_filter is not None and event_type not in self.event_type_filter:
            self.skipped_types += 1
            if len(self.dropped_types) < _MAX_LISTED_TYPES:
                self.dropped_types[event_type] = None
            return
        time = self.parse_time(timestamp, line)
        user_id = self.parse_id(user, "user", line)
        item_id = self.parse_id(item, "item", line)
        self.users.append(user_id)
        self.items.append(item_id)
        self.times.append(time)
        if event_type is not None:
            self.event_types.append(event_type)
        if self.impression_lengths is not None:
            self.impression_lengths.append(len(impressions))
            self.impressions.extend(impressions)

    def add_columns(
        self,
        lines: Sequence[int],
        users: list[str],
        items: list[str],
        timestamps: list[str],
        event_types: list[str] | None,
        impressions: list[list[str]] | None,
    ) -> bool:
        """Check a chunk of rows in bulk and add its events, as `add` would one row at a time.

        The arguments are the columns of the rows, with `lines` their line numbers. Returns False
        and adds nothing when a row of the chunk needs the per-row checks: an empty id, which a
        blank row also has, a timestamp that is not an integer in range, or --event-types
        without event types. The caller then adds the chunk with `add`, which raises the error
        of the first bad row.
        """
        if self.event_type_filter is not None and event_types is None:
            return False
        users = list(map(str.strip, users))
        items = list(map(str.strip, items))
        if "" in users or "" in items:
            return False
        if self.event_type_filter is not None and event_types is not None:
            keep = list(map(self.event_type_filter.__contains__, event_types))
            dropped_types = list(compress(event_types, map(not_, keep)))
            if dropped_types:
                lines, users, items, timestamps, event_types = (
                    list(compress(column, keep))
                    for column in (lines, users, items, timestamps, event_types)
                )
                if impressions is not None:
                    impressions = list(compress(impressions, keep))
        else:
            dropped_types = []
        times = self._parse_times(timestamps)
        if times is None:
            return False

        self._count_dropped_types(dropped_types)
        self._note_times(times, lines)
        self.users.extend(users)
        self.items.extend(items)
        self.times.frombytes(times.view(np.uint8))
        if event_types is not None:
            self.event_types.extend(event_types)
        if self.impression_lengths is not None and impressions is not None:
            self.impression_lengths.extend(map(len, impressions))
            self.impressions.extend(list(chain.from_iterable(impressions)))
        return True

    def _parse_times(self, timestamps: list[str]) -> np.ndarray | None:
        """Return the timestamps as int64 `[n]`, or None when one is invalid or out of range.

        `int` reads each value as `parse_time` does once the chunk has only ASCII characters and
        no underscore, so both accept the same strings.
        """
        text = "".join(timestamps)
        if not text.isascii() or "_" in text:
            return None
        try:
            times = np.fromiter(map(int, timestamps), dtype=np.int64, count=len(timestamps))
        except (ValueError, OverflowError):
            return None
        limit = _MAX_SECONDS * 1000 if self.time_unit == "ms" else _MAX_SECONDS
        if np.any((times > limit) | (times < -limit)):
            return None
        return times

    def _count_dropped_types(self, dropped_types: list[str]) -> None:
        """Count the events of a chunk that --event-types dropped, as `add` counts one."""
        self.skipped_types += len(dropped_types)
        for event_type in dict.fromkeys(dropped_types):
            if len(self.dropped_types) >= _MAX_LISTED_TYPES:
                break
            self.dropped_types[event_type] = None

    def _note_times(self, times: np.ndarray, lines: Sequence[int]) -> None:
        """Record the negative and the latest timestamps of a chunk, as `parse_time` does."""
        negative = np.flatnonzero(times < 0)
        if len(negative) and self.first_negative_time is None:
            self.first_negative_time = (lines[negative[0]], int(times[negative[0]]))
        self.negative_times += len(negative)
        if self.time_unit == "ms" and len(times):
            latest = int(np.argmax(times))
            if self.latest_ms is None or times[latest] > self.latest_ms[0]:
                self.latest_ms = (int(times[latest]), lines[latest])

    def no_event_types_error(self) -> DataError:
        """Build the error for an --event-types value that matches no event of the file."""
        requested = ",".join(self.config.event_types or ())
        present = ", ".join(self.dropped_types)
        if len(self.dropped_types) >= _MAX_LISTED_TYPES:
            present += " and more"
        return DataError(
            f"{self.path}: --event-types {requested} matches no event: the event types in the "
            f"file are {present}, so pass some of them to --event-types, or drop the flag"
        )

    def build(self) -> RawLog:
        """Check the events read and return them as a RawLog, times in whole seconds."""
        # 1. Report the event-type filter and reject a file left without events.
        num_events = len(self.times)
        if self.skipped_types:
            logger.info(
                "%s: kept %s of types %s, dropped %d of other types",
                self.path,
                count_noun(num_events, "event"),
                sorted(self.event_type_filter or ()),
                self.skipped_types,
            )
        if not num_events and self.skipped_types:
            raise self.no_event_types_error()
        if not num_events:
            raise DataError(f"{self.path}: no events in the file: check the file and --format")

        # 2. Checks and warnings on the times and the types.
        self.check_seconds_read_as_ms()
        self.warn_negative_times()
        self.warn_unmatched_event_types()

        # 3. Ragged and optional columns as arrays.
        offsets = impressions = None
        if self.impression_lengths is not None:
            offsets = np.zeros(num_events + 1, dtype=np.int64)
            np.cumsum(np.frombuffer(self.impression_lengths, dtype=np.int64), out=offsets[1:])
            impressions = self.impressions.distinct()[self.impressions.codes()]
        distinct_types = type_codes = None
        if len(self.event_types) == num_events:
            distinct_types, type_codes = self.event_types.distinct(), self.event_types.codes()

        # 4. Users, items and times, with the count of exact duplicates.
        times = np.frombuffer(self.times, dtype=np.int64)
        self.log_duplicates(times)
        return RawLog(
            distinct_users=self.users.distinct(),
            user_codes=self.users.codes(),
            distinct_items=self.items.distinct(),
            item_codes=self.items.codes(),
            # Floor division, so -1 ms is in the second before 1970, as it is in Python.
            timestamps=times // 1000 if self.time_unit == "ms" else times,
            positions=_tie_break_positions(times, self.time_unit),
            distinct_event_types=distinct_types,
            event_type_codes=type_codes,
            impression_offsets=offsets,
            impressions=impressions,
            source=str(self.path),
        )

    def log_duplicates(self, times: np.ndarray) -> None:
        """Log one info line counting the events that repeat an earlier event exactly.

        `times` `[E]` are in the file's unit. Duplicates are kept as repeated interactions.
        """
        duplicates = find_duplicates(self.users, self.items, times)
        if duplicates is None:
            return
        if self.other_item_column is not None:
            # Rows that share a category, say, are different events, so they are not copies.
            logger.info(
                "%s: events with the user, item and timestamp of an earlier event, where the item "
                "is the value of the --item-col column %s: %d, for example user %s, item %s at "
                "%d %s. They are kept as repeated interactions",
                self.path,
                self.other_item_column,
                duplicates.count,
                duplicates.user,
                duplicates.item,
                duplicates.time,
                self.time_unit,
            )
            return
        logger.info(
            "%s: events with the user, item and timestamp of an earlier event: %d, for example "
            "user %s, item %s at %d %s. They are kept as repeated interactions, so remove them "
            "from the file if they are copies",
            self.path,
            duplicates.count,
            duplicates.user,
            duplicates.item,
            duplicates.time,
            self.time_unit,
        )

    def warn_unmatched_event_types(self) -> None:
        """Log one warning naming the --event-types values that matched no event."""
        if self.event_type_filter is None:
            return
        matched = set(self.event_types.interner)
        unmatched = sorted(self.event_type_filter - matched)
        if not unmatched:
            return
        present = ", ".join([*sorted(matched), *self.dropped_types])
        if len(self.dropped_types) >= _MAX_LISTED_TYPES:
            present += " and more"
        logger.warning(
            "%s: --event-types %s matched no event, so only the events of %s are kept: the "
            "event types in the file are %s, so check the spelling of those values",
            self.path,
            ",".join(unmatched),
            ", ".join(sorted(matched)),
            present,
        )


def _tie_break_positions(times: np.ndarray, unit: str) -> np.ndarray:
    """Return the `RawLog.positions` of events with `times` `[E]` in `unit`, int64 `[E]`.

    In seconds that is the position in the file. In milliseconds it is the rank by millisecond
    time, then by position in the file, so that sorting by whole seconds and then by this rank
    keeps the millisecond order inside a second.
    """
    if unit != "ms":
        return np.arange(len(times), dtype=np.int64)
    order = np.argsort(times, kind="stable")
    positions = np.empty(len(times), dtype=np.int64)
    positions[order] = np.arange(len(times), dtype=np.int64)
    return positions
