"""Readers that turn an interaction log file into one raw table of events (`RawLog`).

Supported formats:

- `csv`: a generic delimited event log (CSV, TSV or any delimiter). Columns are chosen by header
  name or by 0-based position, so any column can serve as the item (a category, for example).
- `jsonl`: a generic JSON Lines event log, one object per event, columns chosen by key.
- `movielens`: `u.data` (tab, no header), `ratings.dat` (`::`, no header) and `ratings.csv`
  (header `userId,movieId,rating,timestamp`, with or without an extra unnamed index column).
- `otto`: OTTO JSON Lines, `{"session": id, "events": [{"aid", "ts" (ms), "type"}]}`; the OTTO
  session id is the user.
- `taobao`: Taobao UserBehavior, no header, `user,item,category,behavior,timestamp`.
- `trivago`: the trivago RecSys Challenge 2019 CSV; the rows whose `reference` is an item,
  with the impression list of `clickout item` rows.

Timestamps are int64 seconds since the Unix epoch. The unit of a generic log comes from
`ReaderConfig.time_unit` (default seconds), never from the values. Milliseconds are floored to
seconds, and before that they order the events within a second (`RawLog.positions`).
Timestamps before 1970 are kept, and each read logs one warning that counts them and names the
first, because they usually mean a wrong column, unit or start.
A malformed row raises DataError with the file, the line number and the value; no row is skipped
silently. A header row that looks like an event (every cell a number, or an integer as the name
of the time column) is rejected as the first event of a file without a header. Exact duplicate
events are kept, and one info line counts them.
Files are read as UTF-8: a leading byte order mark is skipped, and an invalid byte raises
DataError with the file, the line number and the byte.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import os
import re
import shlex
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hiertcn.data.counts import count_noun
from hiertcn.errors import DataError

logger = logging.getLogger(__name__)

FORMATS = ("auto", "csv", "jsonl", "movielens", "otto", "taobao", "trivago")
TIME_UNITS = ("s", "ms")
# UTF-8 that drops a leading byte order mark, which Excel writes, so it never reaches a column name.
ENCODING = "utf-8-sig"

# The largest Unix time in seconds that is still in the year 9999. A larger value read with
# unit `s` is almost surely in milliseconds.
_MAX_SECONDS = 253_402_300_799
# Unix time of 1973-01-01 in seconds. A log whose every timestamp read with unit `ms` is earlier
# is almost surely in seconds: Unix time 1.7e9 s (the year 2023) read as ms is in January 1970.
_MIN_LATEST_SECONDS_FROM_MS = 94_694_400
# Maximum number of distinct event types that the error for an --event-types value matching no
# event lists, because a wrong --event-type-col can name a column with a new value in every row.
_MAX_LISTED_TYPES = 20
# Maximum size of one CSV field in characters, far above the csv module's default of 131072, so
# that a long text in a column the reader does not use is read. It is the largest value that
# csv.field_size_limit takes on every platform, because it takes a C long. A field must still
# fit in memory.
_CSV_FIELD_SIZE_LIMIT = 2**31 - 1
# Formats whose time unit --time-unit chooses, with their default. The other formats have a fixed
# unit. OTTO's own files are in milliseconds, and `s` reads a copy converted to seconds.
_FLEXIBLE_UNIT_FORMATS = {"csv": "s", "jsonl": "s", "otto": "ms"}


class SecondsAsMillisecondsError(DataError):
    """Every timestamp of a log read in milliseconds is before 1973, so the log is in seconds."""


class MillisecondsAsSecondsError(DataError):
    """A timestamp of a log read in seconds is after the year 9999, so the log is in milliseconds.

    `line` and `timestamp` name the first such value, for callers that give their own advice.
    """

    def __init__(self, message: str, line: int, timestamp: int) -> None:
        super().__init__(message)
        self.line = line
        self.timestamp = timestamp


# Header names that the generic readers accept when no column is given, in order of preference.
DEFAULT_COLUMNS = {
    "user": ("user", "user_id", "userId", "userid", "session", "session_id"),
    "item": ("item", "item_id", "itemId", "itemid", "movieId", "aid"),
    "time": ("timestamp", "ts", "time", "event_time"),
}

TAOBAO_COLUMNS = ("user", "item", "category", "behavior", "timestamp")
TAOBAO_BEHAVIORS = ("pv", "cart", "fav", "buy")
MOVIELENS_COLUMNS = ("user", "item", "rating", "timestamp")
TRIVAGO_HEADER_START = ("user_id", "session_id", "timestamp", "step", "action_type", "reference")
TRIVAGO_ITEM_ACTIONS = (
    "clickout item",
    "interaction item image",
    "interaction item info",
    "interaction item deals",
    "interaction item rating",
    "search for item",
)


@dataclass(frozen=True)
class ReaderConfig:
    """How to read one log file.

    Column specs are header names or 0-based positions written as digits. `None` picks the
    format's own column. For a generic log with a header, that is the first known name such as
    `user_id`, `item_id` or `timestamp`. Without a header, it is position 0, 1 or 2.
    """

    format: str = "auto"
    user_col: str | None = None
    item_col: str | None = None
    time_col: str | None = None
    event_type_col: str | None = None
    impressions_col: str | None = None
    impressions_sep: str = "|"
    header: bool = True
    delimiter: str | None = None
    # Unit of the timestamps in the file: "s" or "ms". None means the format's own unit
    # (milliseconds for OTTO, seconds for every other format).
    time_unit: str | None = None
    # Keep only the events of these types (Taobao behavior, OTTO type, trivago action_type).
    event_types: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise DataError(f"unknown log format {self.format!r}: use one of {', '.join(FORMATS)}")
        if self.time_unit is not None and self.time_unit not in TIME_UNITS:
            raise DataError(f"unknown time unit {self.time_unit!r}: use 's' or 'ms'")
        if self.delimiter == "":
            raise DataError("the delimiter is empty: give one or more characters, e.g. ','")
        if not self.impressions_sep:
            raise DataError("the impressions separator is empty: give one, e.g. '|'")


@dataclass(frozen=True)
class RawLog:
    """One table of events in file order, before sessionizing. `E` is the number of events.

    `impression_offsets` int64 `[E+1]` and `impressions` (str objects) are None when the log has no
    impression lists. Otherwise an event without a list has an empty range.
    """

    users: np.ndarray  # str objects [E]
    items: np.ndarray  # str objects [E]
    timestamps: np.ndarray  # int64 [E], seconds since the Unix epoch
    # int64 [E], the order among events of the same second: the position in the file, or for a
    # log read in milliseconds, the rank by millisecond time and then by position in the file.
    positions: np.ndarray
    event_types: np.ndarray | None  # str objects [E]
    impression_offsets: np.ndarray | None  # int64 [E+1]
    impressions: np.ndarray | None  # str objects [*]
    source: str

    def __len__(self) -> int:
        return len(self.timestamps)

    def select(self, keep: np.ndarray) -> RawLog:
        """Return the events where the bool mask `keep` `[E]` is true, in their order."""
        offsets, impressions = self.impression_offsets, self.impressions
        if offsets is not None and impressions is not None:
            offsets, impressions = select_ragged(offsets, impressions, keep)
        return RawLog(
            users=self.users[keep],
            items=self.items[keep],
            timestamps=self.timestamps[keep],
            positions=self.positions[keep],
            event_types=None if self.event_types is None else self.event_types[keep],
            impression_offsets=offsets,
            impressions=impressions,
            source=self.source,
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


class _RawLogBuilder:
    """Collects events row by row and checks the ids and timestamps.

    NOTE: rows are parsed in Python and kept as Python strings until `build`. By an estimate from
    the 84k-row Taobao file, the full 100M-row Taobao log would take minutes and tens of GB.
    """

    def __init__(self, path: Path, time_unit: str, config: ReaderConfig, with_impressions: bool):
        self.path = path
        self.time_unit = time_unit
        self.config = config
        # Checked in `build`: the largest timestamp and its line, when ms is the format's
        # default or was chosen for a format that reads seconds too.
        self.check_seconds_as_ms = time_unit == "ms" and config.format in _FLEXIBLE_UNIT_FORMATS
        self.latest_ms: tuple[int, int] | None = None
        # Timestamps before 1970 and the line and file value of the first, for one warning.
        self.negative_times = 0
        self.first_negative_time: tuple[int, int] | None = None
        self.event_type_filter = None if config.event_types is None else set(config.event_types)
        self.users: list[str] = []
        self.items: list[str] = []
        # Timestamps in the file's unit. `build` floors milliseconds to seconds, after using
        # them to order the events within a second.
        self.times: list[int] = []
        self.event_types: list[str] = []
        self.impression_lengths: list[int] | None = [] if with_impressions else None
        self.impressions: list[str] = []
        self.skipped_types = 0
        # The first distinct event types that --event-types dropped, in file order, for the
        # message when it keeps nothing. A dict keeps the order.
        self.dropped_types: dict[str, None] = {}

    def parse_time(self, value: object, line: int) -> int:
        """Convert one timestamp to an integer in the file's unit; raises DataError naming it."""
        number = None
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        elif isinstance(value, str):
            try:
                number = int(value)
            except ValueError:
                number = None
        if number is None:
            raise DataError(
                f"{self.path}:{line}: timestamp {value!r} is not an integer: "
                f"{_timestamp_fix(value, self.time_unit, self.config.format)}"
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
                f"if the log is in milliseconds, {_milliseconds_fix(self.config, self.path)}",
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
            _negative_time_fix(self.config, self.time_unit),
        )

    def check_seconds_read_as_ms(self) -> None:
        """Raise DataError when reading in milliseconds puts every timestamp before 1973.

        NOTE: a log whose times count milliseconds from a start other than 1970 is rejected too,
        and no flag accepts it: the message says how to convert it.
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
                f"{self.path}:{line}: {role} id {value!r} is invalid: "
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
        if self.skipped_types:
            logger.info(
                "%s: kept %s of types %s, dropped %d of other types",
                self.path,
                count_noun(len(self.times), "event"),
                sorted(self.event_type_filter or ()),
                self.skipped_types,
            )
        if not self.times and self.skipped_types:
            raise self.no_event_types_error()
        if not self.times:
            raise DataError(f"{self.path}: no events in the file: check the file and --format")
        self.check_seconds_read_as_ms()
        self.warn_negative_times()
        self.warn_unmatched_event_types()
        num_events = len(self.times)
        offsets = impressions = None
        if self.impression_lengths is not None:
            offsets = np.zeros(num_events + 1, dtype=np.int64)
            np.cumsum(np.asarray(self.impression_lengths, dtype=np.int64), out=offsets[1:])
            impressions = _object_array(self.impressions)
        event_types = None
        if len(self.event_types) == num_events:
            event_types = _object_array(self.event_types)
        users, items = _object_array(self.users), _object_array(self.items)
        times = np.asarray(self.times, dtype=np.int64)
        _log_duplicates(self.path, users, items, times, self.time_unit)
        return RawLog(
            users=users,
            items=items,
            # Floor division, so -1 ms is in the second before 1970, as it is in Python.
            timestamps=times // 1000 if self.time_unit == "ms" else times,
            positions=_tie_break_positions(times, self.time_unit),
            event_types=event_types,
            impression_offsets=offsets,
            impressions=impressions,
            source=str(self.path),
        )

    def warn_unmatched_event_types(self) -> None:
        """Log one warning naming the --event-types values that matched no event."""
        if self.event_type_filter is None:
            return
        matched = set(self.event_types)
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


def _log_duplicates(
    path: Path, users: np.ndarray, items: np.ndarray, times: np.ndarray, unit: str
) -> None:
    """Log one info line counting the events that repeat an earlier event exactly.

    An exact duplicate has the user, item and timestamp (in the file's unit) of an earlier
    event. Duplicates are kept, because a user can click an item twice within one timestamp.
    """
    if len(times) < 2:
        return
    _, user_codes = np.unique(users, return_inverse=True)
    _, item_codes = np.unique(items, return_inverse=True)
    user_codes, item_codes = user_codes.reshape(-1), item_codes.reshape(-1)
    order = np.lexsort((times, item_codes, user_codes))
    repeats = (
        (np.diff(user_codes[order]) == 0)
        & (np.diff(item_codes[order]) == 0)
        & (np.diff(times[order]) == 0)
    )
    count = int(np.count_nonzero(repeats))
    if count == 0:
        return
    first = int(order[1:][repeats][0])
    logger.info(
        "%s: events with the user, item and timestamp of an earlier event: %d, for example "
        "user %s, item %s at %d %s. They are kept as repeated interactions, so remove them from "
        "the file if they are copies",
        path,
        count,
        users[first],
        items[first],
        times[first],
        unit,
    )


def _timestamp_fix(value: object, unit: str, log_format: str) -> str:
    """Return what to do about a timestamp `value` that is not an integer."""
    name = {"s": "seconds", "ms": "milliseconds"}[unit]
    if _is_finite_number(value):
        if unit == "s" and log_format in _FLEXIBLE_UNIT_FORMATS:
            return (
                "timestamps must be whole Unix seconds, so round them down in the file. To keep "
                "the order of events within a second, multiply them by 1000, round them and "
                "pass --time-unit ms: the events are then stored in whole seconds, in "
                "millisecond order"
            )
        return f"timestamps must be whole Unix {name}, so round them down in the file"
    fix = f"timestamps must be Unix times in whole {name}, so convert them in the file"
    if log_format in ("csv", "jsonl"):
        fix += ", and check that --time-col names the timestamp column"
    return fix


def _negative_time_fix(config: ReaderConfig, unit: str) -> str:
    """Return what to check when a log read with `config` has timestamps before 1970."""
    unit_name = {"s": "seconds", "ms": "milliseconds"}[unit]
    start = (
        "if the times count from a start other than 1970, add that start's Unix time in "
        f"{unit_name} to every timestamp"
    )
    if config.format in ("csv", "jsonl"):
        return (
            f"check that --time-col names the timestamp column and that --time-unit (now {unit}) "
            f"is the unit of the file, and {start}"
        )
    if config.format == "otto":
        return f"check that --time-unit (now {unit}) is the unit of the file, and {start}"
    if config.time_col is not None:
        return (
            f"check that --time-col {config.time_col} names the timestamp column of the "
            f"{config.format} layout, and {start}"
        )
    return f"check that the file has the {config.format} layout, and {start}"


def _is_finite_number(value: object) -> bool:
    """Return whether `value` is a finite float or a string that parses as one."""
    if isinstance(value, bool) or not isinstance(value, (float, str)):
        return False
    try:
        return math.isfinite(float(value))
    except ValueError:
        return False


def _object_array(values: list[str]) -> np.ndarray:
    array = np.empty(len(values), dtype=object)
    array[:] = values
    return array


def effective_time_unit(log_format: str, time_unit: str | None) -> str:
    """Return the unit in which the reader of `log_format` reads timestamps.

    An unset unit is the format's own, as `ReaderConfig.time_unit` documents: milliseconds for
    OTTO, seconds for every other format.
    """
    if time_unit is not None:
        return time_unit
    return "ms" if log_format == "otto" else "s"


def resolve_reader_config(path: Path, config: ReaderConfig) -> ReaderConfig:
    """Return `config` with the format that `auto` picks for `path` and the effective time unit."""
    log_format = detect_format(path, config) if config.format == "auto" else config.format
    return dataclasses.replace(
        config, format=log_format, time_unit=effective_time_unit(log_format, config.time_unit)
    )


def read_log(path: str | Path, config: ReaderConfig | None = None) -> RawLog:
    """Read one interaction log file into a `RawLog`; raises DataError on any malformed row."""
    config = config or ReaderConfig()
    path = Path(path)
    if path.is_dir():
        raise DataError(
            f"log file {path} is a folder: pass the log file inside it (for MovieLens, "
            "ratings.csv, ratings.dat or u.data)"
        )
    if not path.is_file():
        raise DataError(f"log file {path} not found")
    if path.stat().st_size == 0:
        raise DataError(f"log file {path} is empty")
    check_not_compressed(path)
    _raise_csv_field_size_limit()
    log_format = detect_format(path, config) if config.format == "auto" else config.format
    # The readers word their messages by the format, so they get the detected one.
    config = dataclasses.replace(config, format=log_format)
    readers = {
        "csv": _read_generic_delimited,
        "jsonl": _read_generic_jsonl,
        "movielens": _read_movielens,
        "otto": _read_otto,
        "taobao": _read_taobao,
        "trivago": _read_trivago,
    }
    raw = readers[log_format](path, config)
    logger.info("read %s from %s (format %s)", count_noun(len(raw), "event"), path, log_format)
    return raw


# ---------------------------------------------------------------------------------------------
# Format detection


# Magic bytes at the start of compressed and archive files, with the format's name and a
# command that unpacks such a file.
_COMPRESSED_MAGIC = (
    (re.compile(rb"\x1f\x8b"), "gzip", "gunzip -k {path}"),
    (re.compile(rb"BZh[1-9]"), "bzip2", "bunzip2 -k {path}"),
    (re.compile(rb"\xfd7zXZ\x00"), "xz", "unxz -k {path}"),
    (re.compile(rb"\x28\xb5\x2f\xfd"), "Zstandard", "unzstd {path}"),
    (re.compile(rb"\x04\x22\x4d\x18"), "LZ4", "unlz4 {path}"),
    (re.compile(rb"PK\x03\x04"), "ZIP", "unzip {path}"),
    (re.compile(rb"7z\xbc\xaf\x27\x1c"), "7z", "7z x {path}"),
)


def check_not_compressed(path: Path) -> None:
    """Raise DataError when `path` starts with the magic bytes of a compressed file."""
    with path.open("rb") as file:
        head = file.read(8)
    for magic, name, command in _COMPRESSED_MAGIC:
        if magic.match(head):
            raise DataError(
                f"log file {path} is {name}-compressed, and compressed files are not read: "
                f"decompress it first, for example with `{command.format(path=path)}`, and "
                "pass the decompressed file"
            )


def _first_line(path: Path) -> str:
    try:
        with path.open(encoding=ENCODING) as file:
            for line in file:
                if line.strip():
                    return line.rstrip("\r\n")
    except UnicodeDecodeError as error:
        raise _encoding_error(path, error) from None
    raise DataError(f"log file {path} contains only blank lines")


def _encoding_error(path: Path, error: UnicodeDecodeError) -> DataError:
    """Build the DataError for a file that is not UTF-8, naming the line and the first bad byte."""
    with path.open("rb") as file:
        # A newline byte never occurs inside a multi-byte UTF-8 character, so each line decodes
        # on its own.
        for number, line in enumerate(file, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as line_error:
                byte = line[line_error.start]
                return DataError(
                    f"{path}:{number}: byte 0x{byte:02x} at byte offset {line_error.start} "
                    "of the line is not valid UTF-8: save the file as UTF-8"
                )
    return DataError(f"{path} is not valid UTF-8 ({error.reason}): save the file as UTF-8")


def _has_default_columns(names: Sequence[str], roles: int = len(DEFAULT_COLUMNS)) -> bool:
    """Return whether `names` has a known column name for at least `roles` of the roles."""
    found = sum(any(name in names for name in options) for options in DEFAULT_COLUMNS.values())
    return found >= roles


def _names_columns(config: ReaderConfig | None) -> bool:
    """Return whether `config` names a user, item, time or event type column."""
    if config is None:
        return False
    column_flags = (config.user_col, config.item_col, config.time_col, config.event_type_col)
    return any(spec is not None for spec in column_flags)


def detect_format(path: Path, config: ReaderConfig | None = None) -> str:
    """Pick the format from the file name and first line; raise DataError when it is ambiguous.

    A known layout (MovieLens, OTTO, Taobao, trivago) wins. Otherwise a `.csv`, `.tsv` or `.tab`
    file is the generic csv format when its header has a known column name such as `user_id`,
    or when `config` names columns or sets no header. A first line with a JSON object
    is the generic jsonl format when it has a known user, item and time key, or when `config`
    names columns.
    """
    _raise_csv_field_size_limit()
    name = path.name.lower()
    first = _first_line(path)
    if name in ("u.data", "ratings.dat"):
        return "movielens"
    if first.lstrip().startswith("{"):
        try:
            record = json.loads(first)
        except json.JSONDecodeError:
            record = None
        if isinstance(record, dict) and "session" in record and "events" in record:
            return "otto"
        generic = isinstance(record, dict) and (
            _has_default_columns(list(record)) or _names_columns(config)
        )
        if generic:
            return "jsonl"
        if isinstance(record, dict):
            raise _unknown_keys_error(path, list(record))
    else:
        delimiter = "\t" if name.endswith((".tsv", ".tab")) else ","
        fields = [field.strip() for field in next(csv.reader([first], delimiter=delimiter))]
        if tuple(fields[: len(TRIVAGO_HEADER_START)]) == TRIVAGO_HEADER_START:
            return "trivago"
        if {"userId", "movieId", "timestamp"} <= set(fields):
            return "movielens"
        if name.startswith("userbehavior") and len(fields) == 5 and fields[3] in TAOBAO_BEHAVIORS:
            return "taobao"
        # A header with one known name is a generic log, and the csv reader's error names
        # the flag of each column it cannot find.
        delimited = name.endswith((".csv", ".tsv", ".tab"))
        no_header = config is not None and not config.header
        generic = _has_default_columns(fields, roles=1) or _names_columns(config) or no_header
        if delimited and generic:
            return "csv"
        if delimited:
            raise _unknown_header_error(path, fields)
    raise DataError(
        f"cannot tell the format of {path} from its name and first line: pass --format with "
        f"one of {_KNOWN_FORMATS}. A .csv or .tsv file, or a file of JSON objects, is read as the "
        "generic csv or jsonl format when --user-col, --item-col or --time-col names its columns"
    )


# The formats that --format names, for messages.
_KNOWN_FORMATS = ", ".join(FORMATS[1:])


def _unknown_header_error(path: Path, fields: Sequence[str]) -> DataError:
    """Build the error for a .csv or .tsv file whose first line has no known column name."""
    kind = "CSV" if path.name.lower().endswith(".csv") else "TSV"
    return DataError(
        f"cannot tell the format of {path} from its name and first line: it is a {kind} file, "
        f"but its first line {list(fields)} has no known user, item or time column name such "
        "as user_id, item_id or timestamp. Pass --user-col, --item-col and --time-col with the "
        "names or 0-based positions of those columns, and --no-header if the first line is an "
        f"event and not a header, or pass --format with one of {_KNOWN_FORMATS}"
    )


def _unknown_keys_error(path: Path, keys: Sequence[str]) -> DataError:
    """Build the error for JSON Lines whose first object lacks a known user, item or time key."""
    missing = [role for role, names in DEFAULT_COLUMNS.items() if not set(names) & set(keys)]
    flags = _join_words([f"--{role}-col" for role in missing], "and")
    example = {"user": "user_id", "item": "item_id", "time": "timestamp"}
    examples = _join_words([example[role] for role in missing], "or")
    return DataError(
        f"cannot tell the format of {path} from its name and first line: it is a JSON Lines "
        f"file whose first object has the keys {list(keys)}, but no known "
        f"{_join_words(missing, 'or')} key such as {examples}. Pass {flags} with the keys that "
        f"hold them, or pass --format with one of {_KNOWN_FORMATS}"
    )


def _join_words(words: Sequence[str], conjunction: str) -> str:
    """Join `words` as a list in a sentence: `a`, `a and b`, `a, b and c`."""
    if len(words) <= 1:
        return "".join(words)
    return f"{', '.join(words[:-1])} {conjunction} {words[-1]}"


# ---------------------------------------------------------------------------------------------
# Delimited files


def _iter_rows(path: Path, delimiter: str) -> Iterator[tuple[int, list[str]]]:
    """Yield (line number, fields) of every non-blank row; quoting only for 1-char delimiters."""
    try:
        with path.open(encoding=ENCODING, newline="") as file:
            if len(delimiter) == 1:
                yield from _iter_csv_rows(file, delimiter, path)
                return
            for number, line in enumerate(file, start=1):
                line = line.rstrip("\r\n")
                if line.strip():
                    yield number, line.split(delimiter)
    except UnicodeDecodeError as error:
        raise _encoding_error(path, error) from None


def _raise_csv_field_size_limit() -> None:
    """Raise the csv module's field size limit to `_CSV_FIELD_SIZE_LIMIT`, never lower it.

    The limit is global to the process, so this also applies to other users of the csv module.
    """
    if csv.field_size_limit() < _CSV_FIELD_SIZE_LIMIT:
        csv.field_size_limit(_CSV_FIELD_SIZE_LIMIT)


def _iter_csv_rows(file, delimiter: str, path: Path) -> Iterator[tuple[int, list[str]]]:
    reader = csv.reader(file, delimiter=delimiter)
    try:
        for fields in reader:
            if fields and any(field.strip() for field in fields):
                yield reader.line_num, fields
    except csv.Error as error:
        line = reader.line_num
        fix = "fix or remove this row"
        if _is_unterminated_last_line(path, line):
            fix = _partial_line_fix(path, line)
        raise DataError(f"{path}:{line}: malformed CSV row ({error}): {fix}") from None


def _is_unterminated_last_line(path: Path, line: int) -> bool:
    """Return whether line `line` (1-based) is the last line of `path` and lacks a newline."""
    with path.open("rb") as file:
        size = file.seek(0, os.SEEK_END)
        if size == 0:
            return False
        file.seek(-1, os.SEEK_END)
        if file.read(1) == b"\n":
            return False
        file.seek(0)
        newlines = sum(block.count(b"\n") for block in iter(lambda: file.read(1 << 20), b""))
    return line == newlines + 1


def _partial_line_fix(path: Path, line: int) -> str:
    """Return the fix for a bad last line without a newline, which a writer may not have ended."""
    copy = path.with_name(f"{path.stem}.complete{path.suffix}")
    return (
        f"line {line} is the last line of the file and does not end with a newline, so it is "
        "probably incomplete because a program is still writing the file. Wait until the "
        "file is complete, or read a copy without that line, made with "
        f"`head -n {line - 1} {shlex.quote(str(path))} > {shlex.quote(str(copy))}`"
    )


def _with_partial_line_fix(error: DataError, path: Path, line: int) -> DataError:
    """Add the partial-line fix to `error` of row `line` when that row is a partial last line."""
    # A cut can only shorten a timestamp, and callers catch this error by its class.
    if isinstance(error, MillisecondsAsSecondsError) or not _is_unterminated_last_line(path, line):
        return error
    return DataError(f"{error}. However, {_partial_line_fix(path, line)}")


def _resolve_column(spec: str, names: Sequence[str] | None, role: str, path: Path) -> int:
    """Turn a column name or 0-based position into a position.

    Digits that name one header column and are the position of another raise DataError, because
    they usually mean that the first line of a file without a header was read as its header.
    """
    if names is not None and spec in names:
        index = list(names).index(spec)
        position = int(spec) if spec.isdigit() else None
        if position is not None and position != index and position < len(names):
            raise _ambiguous_column_error(spec, names, index, role, path)
        return index
    if spec.isdigit():
        return int(spec)
    if names is None:
        raise DataError(
            f"{path}: column {spec!r} for the {role} needs a header; the file has none, "
            "so give a 0-based position"
        )
    hint = _delimiter_hint(names, part="header") if len(names) == 1 else None
    fix = hint or "give a header name or a 0-based position"
    raise DataError(
        f"{path}: column {spec!r} for the {role} not found in the header {list(names)}: {fix}"
    )


def _ambiguous_column_error(
    spec: str, names: Sequence[str], index: int, role: str, path: Path
) -> DataError:
    flag = f"--{role.replace(' ', '-')}-col"
    return DataError(
        f"{path}: {flag} {spec} is ambiguous: it is the header name of column {index} and the "
        f"0-based position of the column named {names[int(spec)]!r} (the header is "
        f"{list(names)}). If the first line is an event, not a header, pass --no-header, and "
        f"to pick the column named {spec!r}, pass {flag} {index}"
    )


def _is_position_header(names: Sequence[str]) -> bool:
    """Return whether the header names each column by its 0-based position, as pandas does."""
    return list(names) == [str(position) for position in range(len(names))]


def _check_header_not_numbers(path: Path, line: int, names: Sequence[str]) -> None:
    """Raise DataError when every cell of the header row is a number.

    Such a row is almost always the first event of a file without a header. A header of the
    positions 0, 1, 2, ... is accepted, because pandas writes one for unnamed columns.
    """
    if _is_position_header(names) or not all(_is_finite_number(name) for name in names):
        return
    raise DataError(
        f"{path}:{line}: every cell of the header row {list(names)} is a number, so the row is "
        "probably the first event of a file without a header: pass --no-header, or give the "
        "columns names in the file's header row"
    )


def _check_time_header(path: Path, line: int, names: Sequence[str], time: int) -> None:
    """Raise DataError when the header cell of the time column is an integer, like a timestamp."""
    if time >= len(names) or _is_position_header(names):
        return
    cell = names[time]
    if re.fullmatch(r"[+-]?\d+", cell) is None:
        return
    raise DataError(
        f"{path}:{line}: the header row {list(names)} names the time column (column {time}) "
        f"{cell!r}, an integer, so the row is probably the first event of a file without a "
        "header: pass --no-header, or give the time column a name in the file's header row"
    )


# Delimiters that a row read with another delimiter may contain, most common first.
_DELIMITER_CANDIDATES = (",", "\t", ";", "|")


def _quote_delimiter(delimiter: str) -> str:
    """Return `delimiter` as a shell argument of --delimiter, with a tab written as `\\t`."""
    return "'" + delimiter.replace("\t", "\\t") + "'"


def _delimiter_hint(fields: Sequence[str], part: str = "row") -> str | None:
    """Suggest --delimiter when a row that split into one field contains a common delimiter."""
    for candidate in _DELIMITER_CANDIDATES:
        if candidate in fields[0]:
            return (
                f"the {part} contains {_quote_delimiter(candidate)}, so the delimiter is "
                f"probably wrong: pass --delimiter {_quote_delimiter(candidate)}"
            )
    return None


def _short_row_error(
    path: Path, line: int, fields: Sequence[str], needed: int, delimiter: str, log_format: str
) -> DataError:
    """Build the error for a row with fewer fields than the chosen columns need."""
    row = delimiter.join(fields)
    # Only the csv and taobao readers take --delimiter, because MovieLens files have a fixed one.
    hint = None
    if _is_unterminated_last_line(path, line):
        hint = _partial_line_fix(path, line)
    elif len(fields) == 1 and log_format in ("csv", "taobao"):
        hint = _delimiter_hint(fields)
    if hint is None and log_format == "csv":
        hint = (
            f"check that --delimiter (now {_quote_delimiter(delimiter)}) separates the fields, "
            "and that --user-col, --item-col and --time-col name existing columns"
        )
    elif hint is None:
        hint = (
            f"this row does not have the {log_format} layout, so fix or remove it, or check "
            "--format if no row has that layout"
        )
    return DataError(
        f"{path}:{line}: row has {count_noun(len(fields), 'field')} but {needed} are needed "
        f"(up to column {needed - 1}, counted from 0): {row!r}: {hint}"
    )


def _default_column(names: Sequence[str] | None, role: str, position: int, path: Path) -> int:
    if names is None:
        return position
    for candidate in DEFAULT_COLUMNS[role]:
        if candidate in names:
            return list(names).index(candidate)
    raise DataError(
        f"{path}: no {role} column among {list(names)}: pass --{role}-col with a name or position"
    )


@dataclass(frozen=True)
class _Columns:
    user: int
    item: int
    time: int
    event_type: int | None
    impressions: int | None


def _pick_columns(
    config: ReaderConfig, names: Sequence[str] | None, path: Path, defaults: _Columns | None
) -> _Columns:
    def pick(spec: str | None, role: str, fallback: int | None) -> int:
        if spec is not None:
            return _resolve_column(spec, names, role, path)
        if fallback is not None:
            return fallback
        return _default_column(names, role, {"user": 0, "item": 1, "time": 2}[role], path)

    def optional(spec: str | None, role: str, fallback: int | None) -> int | None:
        return fallback if spec is None else _resolve_column(spec, names, role, path)

    return _Columns(
        user=pick(config.user_col, "user", defaults and defaults.user),
        item=pick(config.item_col, "item", defaults and defaults.item),
        time=pick(config.time_col, "time", defaults and defaults.time),
        event_type=optional(config.event_type_col, "event type", defaults and defaults.event_type),
        impressions=optional(config.impressions_col, "impressions", None),
    )


def _read_delimited(
    path: Path,
    config: ReaderConfig,
    delimiter: str,
    header: bool,
    names: Sequence[str] | None,
    defaults: _Columns | None,
    time_unit: str,
) -> RawLog:
    """Read a delimited file; `names` gives column names to a file without a header."""
    rows = _iter_rows(path, delimiter)
    header_line = 0
    if header:
        first = next(rows, None)
        if first is None:
            raise DataError(f"log file {path} contains no header")
        header_line, names = first[0], [field.strip() for field in first[1]]
        _check_header_not_numbers(path, header_line, names)
    columns = _pick_columns(config, names, path, defaults)
    if header and names is not None:
        _check_time_header(path, header_line, names, columns.time)
    builder = _RawLogBuilder(
        path, time_unit, config, with_impressions=columns.impressions is not None
    )
    needed = max(c for c in vars(columns).values() if c is not None) + 1
    for line, fields in rows:
        if len(fields) < needed:
            raise _short_row_error(path, line, fields, needed, delimiter, config.format)
        impressions: list[str] = []
        if columns.impressions is not None:
            text = fields[columns.impressions].strip()
            impressions = (
                [item.strip() for item in text.split(config.impressions_sep)] if text else []
            )
        event_type = None if columns.event_type is None else fields[columns.event_type].strip()
        try:
            builder.add(
                line,
                fields[columns.user],
                fields[columns.item],
                fields[columns.time].strip(),
                event_type,
                impressions,
            )
        except DataError as error:
            raise _with_partial_line_fix(error, path, line) from None
    return builder.build()


def _delimiter_for(path: Path, config: ReaderConfig) -> str:
    if config.delimiter is not None:
        return config.delimiter
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return ","
    if suffix in (".tsv", ".tab"):
        return "\t"
    raise DataError(
        f"{path}: cannot tell the delimiter from the suffix {suffix!r}: pass --delimiter"
    )


def _read_generic_delimited(path: Path, config: ReaderConfig) -> RawLog:
    return _read_delimited(
        path,
        config,
        _delimiter_for(path, config),
        header=config.header,
        names=None,
        defaults=None,
        time_unit=config.time_unit or "s",
    )


def _fixed_unit(config: ReaderConfig, unit: str, log_format: str, path: Path) -> str:
    if config.time_unit is None or config.time_unit == unit:
        return unit
    mismatch = f"the {log_format} format stores timestamps in {unit}, but --time-unit "
    if unit == "s":
        raise DataError(
            f"{mismatch}ms was given: for a log in milliseconds, "
            f"{_milliseconds_fix(config, path)}. For seconds, drop --time-unit"
        )
    raise DataError(f"{mismatch}{config.time_unit} was given: drop --time-unit")


def _milliseconds_fix(config: ReaderConfig, path: Path) -> str:
    """Return how to read a log with millisecond timestamps in place of `config.format`."""
    log_format = config.format
    if log_format in _FLEXIBLE_UNIT_FORMATS:
        return "pass --time-unit ms"
    flags = _csv_flags_for_layout(config, path)
    if flags is None:
        return f"convert the timestamps to seconds, because the {log_format} format reads seconds"
    return (
        f"read it with --format csv {flags} --time-unit ms, because the {log_format} "
        "format reads seconds"
    )


def _csv_flags_for_layout(config: ReaderConfig, path: Path) -> str | None:
    """Return the csv flags that read the columns `config` picks from a MovieLens or Taobao log.

    Column flags the user gave are kept, and a column name of a headerless layout becomes its
    position, so `--item-col category` of a Taobao log becomes `--item-col 2`.
    """
    name = path.name.lower()
    if config.format == "movielens" and name.endswith(".csv"):
        # ratings.csv has a header, so its column names work with --format csv.
        return _column_flags(config, _MOVIELENS_CSV_DEFAULTS, names=None)
    if config.format == "movielens":
        delimiter = "::" if name.endswith(".dat") else "\t"
        columns = _column_flags(config, _MOVIELENS_DEFAULTS, MOVIELENS_COLUMNS)
        return f"--no-header --delimiter {_quote_delimiter(delimiter)} {columns}"
    if config.format == "taobao":
        delimiter = _quote_delimiter(config.delimiter or ",")
        columns = _column_flags(config, _TAOBAO_DEFAULTS, TAOBAO_COLUMNS)
        return f"--no-header --delimiter {delimiter} {columns}"
    return None


def _column_flags(
    config: ReaderConfig, defaults: dict[str, str], names: Sequence[str] | None
) -> str:
    """Return the column flags of `config`, with `defaults` for the flags it leaves unset.

    With `names`, the columns of a headerless layout, a name becomes its 0-based position.
    """
    flags = []
    for flag, spec in (
        ("--user-col", config.user_col),
        ("--item-col", config.item_col),
        ("--time-col", config.time_col),
        ("--event-type-col", config.event_type_col),
    ):
        spec = spec if spec is not None else defaults.get(flag)
        if spec is None:
            continue
        if names is not None and spec in names:
            spec = str(list(names).index(spec))
        flags.append(f"{flag} {spec}")
    return " ".join(flags)


# The column of each flag that the MovieLens and Taobao readers use when the flag is not given.
_MOVIELENS_CSV_DEFAULTS = {
    "--user-col": "userId",
    "--item-col": "movieId",
    "--time-col": "timestamp",
}
_MOVIELENS_DEFAULTS = {"--user-col": "user", "--item-col": "item", "--time-col": "timestamp"}
_TAOBAO_DEFAULTS = {
    "--user-col": "user",
    "--item-col": "item",
    "--time-col": "timestamp",
    "--event-type-col": "behavior",
}


def _read_movielens(path: Path, config: ReaderConfig) -> RawLog:
    unit = _fixed_unit(config, "s", "movielens", path)
    name = path.name.lower()
    if name.endswith(".dat") or name.endswith(".data"):
        delimiter = "::" if name.endswith(".dat") else "\t"
        defaults = _Columns(user=0, item=1, time=3, event_type=None, impressions=None)
        return _read_delimited(path, config, delimiter, False, MOVIELENS_COLUMNS, defaults, unit)
    if name.endswith(".csv"):
        names = next(csv.reader([_first_line(path)]))
        missing = {"userId", "movieId", "timestamp"} - set(names)
        if missing:
            raise DataError(
                f"{path}: MovieLens ratings.csv header {names} lacks {sorted(missing)}: "
                "use --format csv with --user-col, --item-col and --time-col"
            )
        defaults = _Columns(
            user=names.index("userId"),
            item=names.index("movieId"),
            time=names.index("timestamp"),
            event_type=None,
            impressions=None,
        )
        return _read_delimited(path, config, ",", True, None, defaults, unit)
    raise DataError(
        f"{path}: a MovieLens file must be u.data (or *.data), ratings.dat (or *.dat) "
        "or ratings.csv (or *.csv)"
    )


def _read_taobao(path: Path, config: ReaderConfig) -> RawLog:
    unit = _fixed_unit(config, "s", "taobao", path)
    defaults = _Columns(user=0, item=1, time=4, event_type=3, impressions=None)
    delimiter = config.delimiter or ","
    return _read_delimited(path, config, delimiter, False, TAOBAO_COLUMNS, defaults, unit)


def _read_trivago(path: Path, config: ReaderConfig) -> RawLog:
    unit = _fixed_unit(config, "s", "trivago", path)
    rows = _iter_rows(path, ",")
    first = next(rows, None)
    if first is None:
        raise DataError(f"log file {path} contains no header")
    names = [field.strip() for field in first[1]]
    required = ("user_id", "timestamp", "action_type", "reference", "impressions")
    missing = [name for name in required if name not in names]
    if missing:
        raise DataError(f"{path}: trivago header {names} lacks the columns {missing}")
    index = {name: names.index(name) for name in required}

    builder = _RawLogBuilder(path, unit, config, with_impressions=True)
    hidden = 0
    for line, fields in rows:
        if len(fields) != len(names):
            raise DataError(
                f"{path}:{line}: row has {count_noun(len(fields), 'field')}, the header has "
                f"{len(names)}"
            )
        action = fields[index["action_type"]].strip()
        if action not in TRIVAGO_ITEM_ACTIONS:
            continue
        reference = fields[index["reference"]].strip()
        if reference == "":
            # The challenge's test file hides the clicked item of the clickouts to predict.
            hidden += 1
            continue

        if not reference.isdigit():
            raise DataError(
                f"{path}:{line}: reference {reference!r} of action {action!r} is not an item id"
            )

        text = fields[index["impressions"]].strip()
        impressions = [item.strip() for item in text.split("|")] if text else []
        builder.add(
            line,
            fields[index["user_id"]],
            reference,
            fields[index["timestamp"]].strip(),
            action,
            impressions,
        )

    if hidden:
        logger.info(
            "%s: skipped %s with an empty reference (hidden target)",
            path,
            count_noun(hidden, "item action"),
        )
    return builder.build()


# ---------------------------------------------------------------------------------------------
# JSON Lines


def _iter_json(path: Path) -> Iterator[tuple[int, dict]]:
    try:
        with path.open(encoding=ENCODING) as file:
            for number, line in enumerate(file, start=1):
                if line.strip():
                    yield number, _parse_json_line(line, path, number)
    except UnicodeDecodeError as error:
        raise _encoding_error(path, error) from None


def _parse_json_line(line: str, path: Path, number: int) -> dict:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        fix = "each line must be one complete JSON object, so fix or remove this line"
        if _is_unterminated_last_line(path, number):
            fix = _partial_line_fix(path, number)
        raise DataError(
            f"{path}:{number}: invalid JSON ({error.msg} at character {error.pos + 1}) in "
            f"{line.strip()[:80]!r}: {fix}"
        ) from None
    if not isinstance(record, dict):
        raise DataError(f"{path}:{number}: expected a JSON object, got {line.strip()[:80]!r}")
    return record


def _field(record: dict, key: str, path: Path, line: int, flag: str | None = None) -> object:
    """Return `record[key]`; a missing key raises DataError, naming `flag` when one sets it."""
    try:
        return record[key]
    except KeyError:
        message = f"{path}:{line}: key {key!r} missing in {json.dumps(record)[:120]}"
        if flag is None:
            raise DataError(message) from None
        raise DataError(
            f"{message}: every line needs it, so add it to the line, or pass {flag} with the "
            "key that this log uses"
        ) from None


def _read_otto(path: Path, config: ReaderConfig) -> RawLog:
    unit = config.time_unit or _FLEXIBLE_UNIT_FORMATS["otto"]
    builder = _RawLogBuilder(path, unit, config, with_impressions=False)
    for line, record in _iter_json(path):
        session = _field(record, "session", path, line)
        events = _field(record, "events", path, line)
        if not isinstance(events, list):
            raise DataError(f"{path}:{line}: 'events' must be a list, got {events!r:.80}")
        for event in events:
            if not isinstance(event, dict):
                raise DataError(f"{path}:{line}: event {event!r:.80} is not a JSON object")
            event_type = _field(event, "type", path, line)
            builder.add(
                line,
                session,
                _field(event, "aid", path, line),
                _field(event, "ts", path, line),
                str(event_type),
            )
    return builder.build()


def _json_key(spec: str | None, record: dict, role: str, path: Path, line: int) -> str:
    if spec is not None:
        return spec
    for candidate in DEFAULT_COLUMNS[role]:
        if candidate in record:
            return candidate
    raise DataError(
        f"{path}:{line}: no {role} key among {sorted(record)}: pass --{role}-col with the key"
    )


def _read_generic_jsonl(path: Path, config: ReaderConfig) -> RawLog:
    builder = _RawLogBuilder(
        path, config.time_unit or "s", config, with_impressions=config.impressions_col is not None
    )
    keys: tuple[str, str, str] | None = None
    for line, record in _iter_json(path):
        if keys is None:
            keys = (
                _json_key(config.user_col, record, "user", path, line),
                _json_key(config.item_col, record, "item", path, line),
                _json_key(config.time_col, record, "time", path, line),
            )
        user, item, timestamp = (
            _field(record, key, path, line, flag)
            for key, flag in zip(keys, ("--user-col", "--item-col", "--time-col"), strict=True)
        )
        event_type = None
        if config.event_type_col is not None:
            event_type = str(_field(record, config.event_type_col, path, line, "--event-type-col"))
        impressions: list[str] = []
        if config.impressions_col is not None:
            impressions = _json_impressions(record.get(config.impressions_col), config, path, line)
        try:
            builder.add(line, user, item, timestamp, event_type, impressions)
        except DataError as error:
            raise _with_partial_line_fix(error, path, line) from None
    return builder.build()


def _json_impressions(value: object, config: ReaderConfig, path: Path, line: int) -> list[str]:
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [item.strip() for item in value.split(config.impressions_sep)]
    if isinstance(value, list) and all(
        isinstance(item, (int, str)) and not isinstance(item, bool) for item in value
    ):
        return [str(item).strip() for item in value]
    raise DataError(
        f"{path}:{line}: impressions {value!r:.80} must be a list of ids or a separated string"
    )
