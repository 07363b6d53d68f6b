"""Event-log files as a stream of event maps, for `replay` and `produce`.

Formats:

- `jsonl`: one JSON object per line, the event map of the input topic (`user`, `item`, `ts`,
  and optionally `impressions`, `candidates`, `type`, `event_id`). A `ts` that is a string of
  up to 18 digits, such as `"1511544070"` (a leading `-` allowed), becomes that integer, as
  `hiertcn` reads it, and a longer string of digits is out of range. The input topic itself
  requires a number, and `stream.events.decode_event` keeps rejecting a string there.
- `msgpack`: a stream of msgpack maps, one per event, as the input topic carries them.
- `csv`: a header with at least `user`, `item` and a time column: `ts`, or the names that
  `hiertcn train` reads (`timestamp`, `time`, `event_time`). Its values go to the field `ts`.
  Optional columns are `type`, `event_id`, and `impressions` and `candidates` with item ids
  separated by `|`. A `.tsv` or `.tab` file is tab-separated, any other file comma-separated.
  A file without a header (`EventColumns.header` False, the flag `--no-header`) has only the
  user, item and time, at the positions 0, 1 and 2 or those that the column flags give.
- `movielens`, `taobao`, `trivago`, `otto`: the public data sets, read with
  `hiertcn.data.readers` (which imports numpy but not torch) and turned into event maps with
  `ts` in seconds. OTTO files are read in milliseconds unless `otto_time_unit` says seconds.

`EventColumns` (the flags `--user-col`, `--item-col` and `--time-col`) names other columns or
keys for the user, the item and the time in csv and jsonl files, as `hiertcn data` reads them: a
CSV column by its header name or 0-based position, a JSON key by its name. The movielens and
taobao readers take them as `hiertcn` does, and the other formats reject them. The checks of a
CSV header and of the column choice are those of `hiertcn.data.delimited_columns`, with its
messages: a header row of numbers, ambiguous digits, a name that several columns share, and one
column or key for two fields raise. A last line without a newline logs a warning, as in
`hiertcn`, because a program may still be writing the file.

A line or row that cannot be parsed (not valid UTF-8, not JSON, a JSON integer outside 64 bits,
a JSON record without the key that a column flag names, a wrong number of CSV fields) becomes a
`Record` with `error` set, so callers can count it. Only a missing, empty or folder path, an
unknown format or flag, and a CSV header that fails the checks above, lacks the required columns
or is not UTF-8 raise. The data
set formats differ, because the readers of `hiertcn` raise at the first invalid row.

`stream.records_csv` reads the `csv` format, and `stream.commands.event_file` declares the
event-file flags of replay and produce.
"""

from __future__ import annotations

import codecs
import json
import logging
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgpack
import numpy as np

from stream.errors import StreamError

if TYPE_CHECKING:
    from hiertcn.data.readers import RawLog

logger = logging.getLogger(__name__)

RECORD_FORMATS = ("auto", "jsonl", "msgpack", "csv", "movielens", "taobao", "trivago", "otto")
ORDERS = ("file", "time")

# Formats whose readers take the column flags.
COLUMN_FLAG_FORMATS = ("csv", "jsonl", "movielens", "taobao")
# A JSON string that a JSON Lines reader turns into an integer `ts`. Up to 18 digits, so the
# integer fits the int64 of msgpack. A longer string of digits makes the record invalid.
_INTEGER_TEXT = re.compile(r"-?[0-9]{1,18}")
_DIGITS_TEXT = re.compile(r"-?[0-9]+")
# The integer range that msgpack encodes: int64 and uint64.
_MSGPACK_INTEGERS = range(-(1 << 63), 1 << 64)
# Largest msgpack record accepted from a file: the same bound as a Kafka message by default.
_MAX_MSGPACK_RECORD_BYTES = 1 << 20

_SUFFIX_FORMATS = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".msgpack": "msgpack",
    ".mpk": "msgpack",
    ".mp": "msgpack",
}


class EventFileError(StreamError):
    """An event-log file is missing, or its format is unknown."""

    exit_code = 2


@dataclass(frozen=True)
class EventColumns:
    """Columns of a CSV file, or keys of a JSON Lines record, that hold the event fields.

    `user`, `item` and `time` are the values of `--user-col`, `--item-col` and `--time-col`.
    None keeps the default: the column or key `user`, `item`, and for the time `ts` in JSON Lines
    or the first of `stream.records_csv.CSV_TIME_COLUMNS` in a CSV header. Without a header,
    the defaults are the positions 0, 1 and 2, as in `hiertcn data --no-header`.
    """

    user: str | None = None
    item: str | None = None
    time: str | None = None
    # False for a CSV file without a header row (`--no-header`): the columns are positions.
    header: bool = True

    def given(self) -> list[tuple[str, str, str]]:
        """Return (event field, flag, column) of each column that a flag names."""
        named = (("user", "--user-col", self.user), ("item", "--item-col", self.item))
        named += (("ts", "--time-col", self.time),)
        return [(field, flag, column) for field, flag, column in named if column is not None]


@dataclass(frozen=True)
class Record:
    """One event of a log file: its 0-based number in the file and its event map.

    When the record could not be parsed, `fields` is None and `error` gives the reason. `line`
    is the 1-based line where the record starts in a text file (jsonl, csv), or None for
    formats without lines (msgpack, and the data sets, which are read whole).
    """

    number: int
    fields: dict[str, Any] | None
    error: str | None = None
    line: int | None = None

    @property
    def location(self) -> str:
        """Where the record is in its file, for messages: `line 7`, else `record 7` (1-based)."""
        return f"line {self.line}" if self.line is not None else f"record {self.number + 1}"


def detect_format(path: Path, columns: EventColumns | None = None) -> str:
    """Return the record format of `path` from its suffix and first line.

    A CSV header with the user and item columns (`user` and `item`, or those that `columns`
    names) makes an event CSV. Otherwise `hiertcn`'s detection decides, which prefers a public
    data set layout, and picks the generic csv or jsonl format when `columns` names a column.
    """
    from stream.records_csv import CSV_DELIMITERS, csv_reader

    columns = columns or EventColumns()
    suffix = path.suffix.lower()
    if suffix in _SUFFIX_FORMATS:
        if _SUFFIX_FORMATS[suffix] == "jsonl" and _is_otto(path):
            return "otto"
        return _SUFFIX_FORMATS[suffix]
    if suffix in CSV_DELIMITERS and columns.header:
        with path.open(encoding="utf-8-sig", errors="replace", newline="") as file:
            # Only to pick the format: ids are read strictly.
            header = next(csv_reader(file, CSV_DELIMITERS[suffix]), [])
        # Without a time column this is still an event CSV: its reader then names the missing
        # column and --time-col.
        if {columns.user or "user", columns.item or "item"} <= {name.strip() for name in header}:
            return "csv"
    from hiertcn.data.readers import ReaderConfig
    from hiertcn.data.readers import detect_format as detect_dataset_format
    from hiertcn.errors import HierTCNError

    config = ReaderConfig(
        user_col=columns.user, item_col=columns.item, time_col=columns.time, header=columns.header
    )
    try:
        return detect_dataset_format(path, config)
    except HierTCNError:
        formats = ", ".join(RECORD_FORMATS[1:])
        raise EventFileError(
            f"cannot tell the format of {path} from its name and first line: "
            f"pass --format with one of {formats}. A CSV, TSV or JSON Lines file whose columns "
            "are not named user, item and ts needs --user-col, --item-col and --time-col"
        ) from None


def _only_whitespace(path: Path, chunk_bytes: int = 1 << 16) -> bool:
    """Return whether `path` contains nothing but spaces, tabs and line breaks.

    A leading UTF-8 byte order mark does not count. Reading stops at the first other byte, so a
    file of events costs one small read.
    """
    with path.open("rb") as file:
        chunk = file.read(chunk_bytes).removeprefix(b"\xef\xbb\xbf")
        while chunk:
            if chunk.strip():
                return False
            chunk = file.read(chunk_bytes)
    return True


def _is_otto(path: Path) -> bool:
    """Return whether the first non-blank line of a JSON Lines file is an OTTO session."""
    with path.open(encoding="utf-8-sig", errors="replace") as file:
        line = next((text for text in file if text.strip()), "")
    try:
        record = json.loads(line)
    except ValueError:
        return False
    return isinstance(record, dict) and "session" in record and "events" in record


def read_records(
    path: str | Path,
    log_format: str = "auto",
    order: str = "file",
    time_col: str | None = None,
    ts_unit: str = "s",
    otto_time_unit: str | None = None,
    user_col: str | None = None,
    item_col: str | None = None,
    header: bool = True,
) -> Iterator[Record]:
    """Yield every record of an event-log file, in file order or sorted by event time.

    File order streams the file; time order reads it whole first. Sorting is stable, so equal
    times keep their file order, except in an OTTO file read in milliseconds, whose events of one
    second keep their millisecond order as in `hiertcn data`. Records without a valid time go to
    the end. `user_col`, `item_col` and `time_col` name the columns (CSV) or keys (JSON Lines)
    of the user, the item and the time, see `EventColumns`. `ts_unit` is the unit that the
    caller will read `ts` in: the data set formats give seconds, so "ms" is rejected for them.
    `otto_time_unit` is the unit of an OTTO file's own timestamps (default "ms", that of the
    published files), and it is rejected for the other formats. `header` False reads a CSV file
    without a header row (`--no-header`).
    """
    path = Path(path)
    _check_event_file(path)
    if log_format not in RECORD_FORMATS:
        raise EventFileError(
            f"unknown event format {log_format!r}: use one of {', '.join(RECORD_FORMATS)}"
        )
    if order not in ORDERS:
        raise EventFileError(f"unknown order {order!r}: use 'file' or 'time'")
    columns = EventColumns(user=user_col, item=item_col, time=time_col, header=header)
    resolved = detect_format(path, columns) if log_format == "auto" else log_format
    _check_format_options(path, resolved, ts_unit, otto_time_unit, columns)
    logger.info("reading %s (format %s, %s order)", path, resolved, order)
    if resolved in ("csv", "jsonl"):
        # The readers of the data set formats warn in `hiertcn.data.readers.read_log`.
        _warn_unterminated_last_line(path)
    if resolved == "jsonl":
        _check_distinct_keys(path, columns)
        _check_flag_keys_present(path, columns)
    if resolved == "csv":
        from stream.records_csv import read_csv

        records = read_csv(path, columns)
    elif resolved == "jsonl":
        records = _read_jsonl(path, columns)
    elif resolved == "msgpack":
        records = _read_msgpack(path)
    else:
        records = _read_dataset(path, resolved, otto_time_unit, columns, order)
    if order == "time":
        return iter(sorted(records, key=_time_key))
    return records


def _check_event_file(path: Path) -> None:
    """Raise `EventFileError` when `path` is a folder, missing, not a regular file, unreadable,
    empty or only blank lines."""
    if path.is_dir():
        raise EventFileError(
            f"event file {path} is a folder: pass an event-log file to --events (a folder that "
            "`hiertcn data prepare` wrote is not one, so write its events to a JSON Lines file "
            "first)"
        )
    if not path.exists():
        raise EventFileError(f"event file {path} not found: pass an existing file to --events")
    if not path.is_file():
        # A FIFO or device is read more than once below (format, blank check, records).
        raise EventFileError(
            f"event file {path} is not a regular file (a FIFO, socket or device): write the "
            "events to a file and pass that file to --events"
        )
    try:
        empty = path.stat().st_size == 0
        blank = not empty and _only_whitespace(path)
    except OSError as error:
        raise EventFileError(
            f"event file {path} cannot be read ({error.strerror or error}): pass a file you can "
            "read to --events"
        ) from None
    if empty:
        raise EventFileError(
            f"event file {path} is empty: pass a file with at least one event to --events"
        )
    if blank:
        raise EventFileError(
            f"event file {path} contains only blank lines: pass a file with at least one event "
            "to --events"
        )


def _check_format_options(
    path: Path,
    resolved: str,
    ts_unit: str,
    otto_time_unit: str | None,
    columns: EventColumns,
) -> None:
    """Raise `EventFileError` for an invalid unit, or a unit or column flag that does not apply
    to the format `resolved`."""
    if ts_unit == "ms" and resolved not in ("jsonl", "msgpack", "csv"):
        raise EventFileError(
            f"--ts-unit ms applies only to jsonl, msgpack and csv events, but {path} has the "
            f"format {resolved}, whose reader converts its timestamps to seconds: drop --ts-unit"
            + (" (--otto-time-unit sets the unit of an OTTO file)" if resolved == "otto" else "")
        )
    if otto_time_unit is not None and resolved != "otto":
        raise EventFileError(
            f"--otto-time-unit applies only to OTTO files, but {path} has the format "
            f"{resolved}: drop --otto-time-unit"
        )
    if otto_time_unit not in (None, "s", "ms"):
        raise EventFileError(f"--otto-time-unit {otto_time_unit!r} is invalid: use s or ms")
    # The readers of `hiertcn data` decide which formats take --no-header (numpy, no torch).
    from hiertcn.data.formats import NO_HEADER_FORMATS

    if not columns.header and resolved not in NO_HEADER_FORMATS:
        raise EventFileError(
            f"--no-header applies only to CSV files (the formats {', '.join(NO_HEADER_FORMATS)}), "
            f"but {path} has the format {resolved}: drop --no-header, or pass --format csv"
        )
    flags = " and ".join(flag for _field, flag, _column in columns.given())
    if flags and resolved not in COLUMN_FLAG_FORMATS:
        verb = "apply" if " and " in flags else "applies"
        reason = (
            "whose maps carry the input topic's fields user, item and ts"
            if resolved == "msgpack"
            else "whose reader has fixed columns"
        )
        raise EventFileError(
            f"{flags} {verb} only to {', '.join(COLUMN_FLAG_FORMATS)} files, but {path} has "
            f"the format {resolved}, {reason}: drop {flags}, or pass --format csv or jsonl"
        )


def _warn_unterminated_last_line(path: Path) -> None:
    """Log one warning when the last line of a text file contains an event but no newline."""
    from hiertcn.data.log_files import unterminated_last_line, unterminated_last_line_message

    line = unterminated_last_line(path)
    if line is not None:
        logger.warning("%s", unterminated_last_line_message(path, line))


def _check_distinct_keys(path: Path, columns: EventColumns) -> None:
    """Raise `EventFileError` when the user, item and time of JSON Lines share a key."""
    from hiertcn.data.formats import shared_column_message

    keys = (("user", columns.user or "user"), ("item", columns.item or "item"))
    keys += (("time", columns.time or "ts"),)
    message = shared_column_message("key", [(field, key, repr(key)) for field, key in keys])
    if message is not None:
        raise EventFileError(f"{path}: {message}")


# JSON objects read from the start of a file to tell a misspelled column flag.
FLAG_KEY_SAMPLE = 100
_FIELD_WORDS = {"user": "user id", "item": "item id", "ts": "event time"}


def _check_flag_keys_present(path: Path, columns: EventColumns) -> None:
    """Raise `EventFileError` when a key that a column flag names is missing from every one of
    the first `FLAG_KEY_SAMPLE` JSON objects of `path`, as a misspelled flag makes it.

    Records that are not JSON objects do not count. A key that only some records lack is left
    to the readers, which reject those records one by one.
    """
    given = columns.given()
    if not given:
        return
    samples: list[dict[str, Any]] = []
    with path.open("rb") as file:
        for raw_line in file:
            try:
                fields = json.loads(raw_line.removeprefix(codecs.BOM_UTF8))
            except (ValueError, RecursionError):
                continue
            if isinstance(fields, dict):
                samples.append(fields)
                if len(samples) == FLAG_KEY_SAMPLE:
                    break
    if not samples:
        return
    found = list(dict.fromkeys(key for fields in samples for key in fields))
    for field, flag, key in given:
        if all(key not in fields for fields in samples):
            shown = ", ".join(repr(name) for name in found[:20])
            if len(found) > 20:
                shown += f" and {len(found) - 20} more"
            raise EventFileError(
                f"{path}: key {key!r}, which {flag} names, is missing from each of the first "
                f"{len(samples)} JSON records, whose keys are {shown or 'none'}: pass the key "
                f"that holds the {_FIELD_WORDS[field]} to {flag}"
            )


def _time_key(record: Record) -> float:
    ts = record.fields.get("ts") if record.fields is not None else None
    if isinstance(ts, bool) or not isinstance(ts, (int, float)) or not math.isfinite(ts):
        return math.inf
    return float(ts)


def _read_jsonl(path: Path, columns: EventColumns) -> Iterator[Record]:
    number = 0
    with path.open("rb") as file:
        for line_number, raw_line in enumerate(file, start=1):
            if line_number == 1:
                raw_line = raw_line.removeprefix(codecs.BOM_UTF8)
            try:
                # Strict decoding: a replaced byte would silently change a user or item id.
                line = raw_line.decode("utf-8")
            except UnicodeDecodeError as error:
                message = f"not valid UTF-8 ({error.reason})"
                yield Record(number, None, message, line=line_number)
                number += 1
                continue
            if not line.strip():
                continue
            try:
                fields = json.loads(line, parse_int=_parse_json_integer)
            except json.JSONDecodeError as error:
                yield Record(number, None, f"not JSON: {error.msg}", line=line_number)
            except _IntegerRangeError as error:
                yield Record(number, None, str(error), line=line_number)
            else:
                if isinstance(fields, dict):
                    event, error = _json_event_fields(fields, columns)
                    yield Record(number, event, error, line=line_number)
                else:
                    yield Record(number, None, "not a JSON object", line=line_number)
            number += 1


class _IntegerRangeError(ValueError):
    """A JSON integer outside the range that msgpack encodes."""


def _parse_json_integer(text: str) -> int:
    """Parse a JSON integer literal; raise `_IntegerRangeError` outside int64 and uint64.

    msgpack cannot encode a larger integer, and Python rejects the text of one with more than
    4300 digits, so such a number would otherwise stop the whole read.
    """
    if len(text) <= 20:
        value = int(text)
        if value in _MSGPACK_INTEGERS:
            return value
    excerpt = text if len(text) <= 24 else f"{text[:20]}... ({len(text)} digits)"
    raise _IntegerRangeError(
        f"integer {excerpt} is outside the 64-bit range that events can carry: write a smaller "
        "number, or a string for an id"
    )


def _json_event_fields(
    fields: dict[str, Any], columns: EventColumns
) -> tuple[dict[str, Any] | None, str | None]:
    """Return the event map of a JSON record, or None and the error of a missing key.

    The keys that `columns` names become the fields `user`, `item` and `ts`, and a key of that
    name that no flag chose is dropped, so it cannot replace the chosen value. A `ts` that is a
    string of up to 18 digits becomes an integer, and a longer one is an error.
    """
    given = columns.given()
    for _field, flag, key in given:
        if key not in fields:
            return None, f"key {key!r}, which {flag} names, is missing"
    replaced = {field for field, _flag, _key in given} | {key for _field, _flag, key in given}
    event = {name: value for name, value in fields.items() if name not in replaced}
    event.update({field: fields[key] for field, _flag, key in given})
    ts = event.get("ts")
    if isinstance(ts, str) and _INTEGER_TEXT.fullmatch(ts):
        event["ts"] = int(ts)
    elif isinstance(ts, str) and _DIGITS_TEXT.fullmatch(ts):
        excerpt = ts if len(ts) <= 24 else f"{ts[:20]}..."
        return None, (
            f"ts {excerpt!r} is a string of {len(ts.lstrip('-'))} digits, out of range: a "
            "string ts is read as an integer of at most 18 digits, so write the event time "
            "as a number of seconds or milliseconds since the Unix epoch"
        )
    return event, None


def _read_msgpack(path: Path) -> Iterator[Record]:
    with path.open("rb") as file:
        unpacker = msgpack.Unpacker(
            file, raw=False, strict_map_key=True, max_buffer_size=_MAX_MSGPACK_RECORD_BYTES
        )
        number = 0
        while True:
            start = unpacker.tell()
            try:
                fields = unpacker.unpack()
            except msgpack.OutOfData:
                return
            except (msgpack.UnpackException, ValueError) as error:
                # The stream cannot be resynchronised after a broken object.
                skipped = path.stat().st_size - start
                logger.warning(
                    "%s has invalid msgpack at byte %d (%s: %s): the rest of the file, %d bytes, "
                    "was skipped",
                    path,
                    start,
                    type(error).__name__,
                    error,
                    skipped,
                )
                yield Record(
                    number,
                    None,
                    f"invalid msgpack at byte {start}, rest of file ({skipped} bytes) skipped: "
                    f"{error}",
                )
                return
            if isinstance(fields, dict):
                yield Record(number, fields)
            else:
                yield Record(
                    number, None, f"record is a msgpack {type(fields).__name__}, not a map"
                )
            number += 1


def _read_dataset(
    path: Path, log_format: str, otto_time_unit: str | None, columns: EventColumns, order: str
) -> Iterator[Record]:
    """Read a data set file whole, so that its errors come before any broker or store is opened.

    The records come in `order`, "file" or "time" (see `_dataset_records`).
    """
    from hiertcn.data.readers import (
        MillisecondsAsSecondsError,
        ReaderConfig,
        SecondsAsMillisecondsError,
        read_log,
    )
    from hiertcn.errors import HierTCNError

    prefix = f"cannot read {path} as {log_format}"
    try:
        config = ReaderConfig(
            format=log_format,
            time_unit=otto_time_unit,
            user_col=columns.user,
            item_col=columns.item,
            time_col=columns.time,
        )
        raw = read_log(path, config)
    except SecondsAsMillisecondsError:
        # Only OTTO files are read in milliseconds by default.
        raise EventFileError(
            f"{prefix}: every timestamp is before 1973 in milliseconds, the unit of OTTO's "
            "published files. If the file is in seconds, pass --otto-time-unit s, and if its "
            "times count milliseconds from a start other than 1970, add that start's Unix time "
            "in milliseconds to every timestamp"
        ) from None
    except MillisecondsAsSecondsError as error:
        fix = (
            "drop --otto-time-unit s, because OTTO's published files are in milliseconds"
            if log_format == "otto"
            else f"convert its timestamps to seconds, the unit of the {log_format} format"
        )
        raise EventFileError(
            f"{prefix}: line {error.line}: timestamp {error.timestamp} is after the year 9999 "
            f"in seconds, so the file is likely in milliseconds: {fix}"
        ) from None
    except HierTCNError as error:
        raise EventFileError(f"{prefix}: {error}") from None
    return _dataset_records(raw, order)


def _dataset_records(raw: RawLog, order: str = "file") -> Iterator[Record]:
    """Yield the event maps of a log that `hiertcn.data.readers.read_log` returned.

    `ts` is in whole seconds. In "time" order the records come sorted by `RawLog.positions`, so
    the stable sort by `ts` in `read_records` keeps events of one second in the order that
    `hiertcn data` gives them: by millisecond time for a log read in milliseconds (OTTO), else
    by position in the file. `Record.number` stays the position in the file.
    """
    offsets = raw.impression_offsets
    indices = np.argsort(raw.positions, kind="stable") if order == "time" else range(len(raw))
    for index in (int(index) for index in indices):
        fields: dict[str, Any] = {
            "user": str(raw.users[index]),
            "item": str(raw.items[index]),
            "ts": int(raw.timestamps[index]),
        }
        if raw.event_types is not None:
            fields["type"] = str(raw.event_types[index])
        if offsets is not None and raw.impressions is not None:
            shown = raw.impressions[offsets[index] : offsets[index + 1]]
            if len(shown):
                fields["impressions"] = [str(item) for item in shown]
        yield Record(index, fields)


def encode_fields(fields: dict[str, Any]) -> bytes:
    """Return the msgpack value of an event map, as the input topic carries it."""
    return msgpack.packb(fields, use_bin_type=True)
