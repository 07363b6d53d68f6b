"""Event-log files as a stream of event maps, for `replay` and `produce`.

Formats:

- `jsonl`: one JSON object per line, the event map of the input topic (`user`, `item`, `ts`,
  and optionally `impressions`, `candidates`, `type`, `event_id`).
- `msgpack`: a stream of msgpack maps, one per event, as the input topic carries them.
- `csv`: a header with at least `user`, `item` and a time column: `ts`, or the names that
  `hiertcn train` reads (`timestamp`, `time`, `event_time`), or the one named by `time_col`. Its
  values go to the field `ts`. Optional columns are `type`, `event_id`, and `impressions` and
  `candidates` with item ids separated by `|`.
- `movielens`, `taobao`, `trivago`, `otto`: the public data sets, read with
  `hiertcn.data.readers` (which imports numpy but not torch) and turned into event maps with
  `ts` in seconds. OTTO files are read in milliseconds unless `otto_time_unit` says seconds.

A line or row that cannot be parsed (not valid UTF-8, not JSON, a wrong number of CSV fields)
becomes a `Record` with `error` set, so callers can count it. Only a missing, empty or folder
path, an unknown format, and a CSV header that lacks the required columns or is not UTF-8
raise. The data set formats differ, because the readers of `hiertcn` raise at the first invalid
row.
"""

from __future__ import annotations

import argparse
import codecs
import csv
import json
import logging
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import msgpack

from stream.errors import StreamError

if TYPE_CHECKING:
    from hiertcn.data.readers import RawLog

logger = logging.getLogger(__name__)

RECORD_FORMATS = ("auto", "jsonl", "msgpack", "csv", "movielens", "taobao", "trivago", "otto")
ORDERS = ("file", "time")

# Time columns of a CSV log, in order of preference: the event field name, then the names
# that `hiertcn train` reads.
CSV_TIME_COLUMNS = ("ts", "timestamp", "time", "event_time")
# Separator of item ids inside the `impressions` and `candidates` columns of a CSV log.
CSV_LIST_SEPARATOR = "|"
# A byte that UTF-8 decoding with errors="surrogateescape" could not decode.
_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")
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


def detect_format(path: Path) -> str:
    """Return the record format of `path` from its suffix and first line."""
    suffix = path.suffix.lower()
    if suffix in _SUFFIX_FORMATS:
        if _SUFFIX_FORMATS[suffix] == "jsonl" and _is_otto(path):
            return "otto"
        return _SUFFIX_FORMATS[suffix]
    if suffix == ".csv":
        with path.open(encoding="utf-8-sig", errors="replace", newline="") as file:
            header = next(csv.reader(file), [])  # only to pick the format; ids are read strictly
        # Without a time column this is still an event CSV: its reader then names the missing
        # column and --time-col.
        if {"user", "item"} <= {name.strip() for name in header}:
            return "csv"
    from hiertcn.data.readers import detect_format as detect_dataset_format
    from hiertcn.errors import HierTCNError

    try:
        return detect_dataset_format(path)
    except HierTCNError:
        formats = ", ".join(RECORD_FORMATS[1:])
        raise EventFileError(
            f"cannot tell the format of {path} from its name and first line: "
            f"pass --format with one of {formats}"
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
) -> Iterator[Record]:
    """Yield every record of an event-log file, in file order or sorted by event time.

    File order streams the file; time order reads it whole first. Sorting is stable, so equal
    times keep their file order, and records without a valid time go to the end. `time_col`
    names the time column of a CSV file (default: the first of `CSV_TIME_COLUMNS` present).
    `ts_unit` is the unit that the caller will read `ts` in: the data set formats give seconds,
    so "ms" is rejected for them. `otto_time_unit` is the unit of an OTTO file's own timestamps
    (default "ms", that of the published files), and it is rejected for the other formats.
    """
    path = Path(path)
    if path.is_dir():
        raise EventFileError(
            f"event file {path} is a folder: pass an event-log file to --events (a folder that "
            "`hiertcn data prepare` wrote is not one, so write its events to a JSON Lines file "
            "first)"
        )
    if not path.is_file():
        raise EventFileError(f"event file {path} not found: pass an existing file to --events")
    if path.stat().st_size == 0:
        raise EventFileError(
            f"event file {path} is empty: pass a file with at least one event to --events"
        )
    if _only_whitespace(path):
        raise EventFileError(
            f"event file {path} contains only blank lines: pass a file with at least one event "
            "to --events"
        )
    if log_format not in RECORD_FORMATS:
        raise EventFileError(
            f"unknown event format {log_format!r}: use one of {', '.join(RECORD_FORMATS)}"
        )
    if order not in ORDERS:
        raise EventFileError(f"unknown order {order!r}: use 'file' or 'time'")
    resolved = detect_format(path) if log_format == "auto" else log_format
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
        raise EventFileError(f"invalid --otto-time-unit {otto_time_unit!r}: use s or ms")
    if time_col is not None and resolved != "csv":
        raise EventFileError(
            f"--time-col {time_col} applies only to CSV files, but {path} has the format "
            f"{resolved}: drop --time-col, or pass --format csv"
        )
    logger.info("reading %s (format %s, %s order)", path, resolved, order)
    if resolved == "csv":
        records = _read_csv(path, time_col)
    elif resolved == "jsonl":
        records = _read_jsonl(path)
    elif resolved == "msgpack":
        records = _read_msgpack(path)
    else:
        records = _read_dataset(path, resolved, otto_time_unit)
    if order == "time":
        return iter(sorted(records, key=_time_key))
    return records


def _time_key(record: Record) -> float:
    ts = record.fields.get("ts") if record.fields is not None else None
    if isinstance(ts, bool) or not isinstance(ts, (int, float)) or not math.isfinite(ts):
        return math.inf
    return float(ts)


def _read_jsonl(path: Path) -> Iterator[Record]:
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
                fields = json.loads(line)
            except json.JSONDecodeError as error:
                yield Record(number, None, f"not JSON: {error.msg}", line=line_number)
            else:
                if isinstance(fields, dict):
                    yield Record(number, fields, line=line_number)
                else:
                    yield Record(number, None, "not a JSON object", line=line_number)
            number += 1


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


def _csv_value(name: str, text: str) -> Any:
    if name in ("impressions", "candidates"):
        return [entry for entry in text.split(CSV_LIST_SEPARATOR) if entry] if text else None
    if name == "ts":
        try:
            return float(text)
        except ValueError:
            return text
    return text if text else None


def _csv_time_column(path: Path, header: list[str], time_col: str | None) -> str:
    """Return the time column of a CSV header.

    Raises `EventFileError` naming the missing columns and the header found.
    """
    if time_col is not None:
        present = time_col if time_col in header else None
    else:
        present = next((name for name in CSV_TIME_COLUMNS if name in header), None)
    missing = [name for name in ("user", "item") if name not in header]
    if present is None and time_col is not None:
        missing.append(f"{time_col} (named by --time-col)")
    elif present is None:
        missing.append(f"for the time ({', '.join(CSV_TIME_COLUMNS)})")
    if missing:
        raise EventFileError(
            f"CSV event file {path} has no column {' and no column '.join(missing)} (its header "
            f"is {header}): name the columns user, item and ts (or timestamp), or pass "
            "--time-col NAME to choose the time column"
        )
    return present


def _csv_field_name(column: str, time_column: str) -> str | None:
    if column == time_column:
        return "ts"
    if column == "ts":
        return None
    return column


def _read_csv(path: Path, time_col: str | None = None) -> Iterator[Record]:
    """Check the header of a CSV event file now, and return an iterator over its rows."""
    with _open_csv(path) as file:
        header = [name.strip() for name in next(csv.reader(file), [])]
    byte = _escaped_byte(header)
    if byte is not None:
        raise EventFileError(
            f"the header (line 1) of event file {path} is not valid UTF-8 (byte {byte:#04x}): "
            "save the file as UTF-8"
        )
    source = _csv_time_column(path, header, time_col)
    # The chosen time column becomes the field `ts`. A column named `ts` that --time-col did
    # not choose is dropped, so it cannot replace the chosen time.
    return _read_csv_rows(path, [_csv_field_name(name, source) for name in header])


def _open_csv(path: Path) -> TextIO:
    # Bytes that are not UTF-8 become lone surrogates (U+DC80..U+DCFF) instead of an error, so
    # that a bad row is rejected alone. Valid UTF-8 never decodes to a surrogate.
    return path.open(encoding="utf-8-sig", errors="surrogateescape", newline="")


def _escaped_byte(fields: list[str]) -> int | None:
    """Return the first byte that `_open_csv` could not decode in `fields`, or None."""
    for text in fields:
        if not text.isascii():
            match = _ESCAPED_BYTE.search(text)
            if match is not None:
                return ord(match.group()) - 0xDC00
    return None


def _read_csv_rows(path: Path, names: list[str | None]) -> Iterator[Record]:
    with _open_csv(path) as file:
        reader = csv.reader(file)
        next(reader, None)  # the header, checked by `_read_csv`
        # A quoted field may span lines, so a row starts on the line after the previous row.
        line = reader.line_num + 1
        for number, row in enumerate(reader):
            byte = _escaped_byte(row)
            if byte is not None:
                # Strict decoding: a replaced byte would silently change a user or item id.
                error = f"not valid UTF-8 (byte {byte:#04x})"
                yield Record(number, None, error, line=line)
            elif len(row) != len(names):
                error = f"row has {len(row)} fields, header has {len(names)}"
                yield Record(number, None, error, line=line)
            else:
                fields = {
                    name: _csv_value(name, text)
                    for name, text in zip(names, row, strict=True)
                    if name is not None
                }
                present = {name: value for name, value in fields.items() if value is not None}
                yield Record(number, present, line=line)
            line = reader.line_num + 1


def _read_dataset(path: Path, log_format: str, otto_time_unit: str | None) -> Iterator[Record]:
    """Read a data set file whole, so that its errors come before any broker or store is opened."""
    from hiertcn.data.readers import (
        MillisecondsAsSecondsError,
        ReaderConfig,
        SecondsAsMillisecondsError,
        read_log,
    )
    from hiertcn.errors import HierTCNError

    prefix = f"cannot read {path} as {log_format}"
    try:
        raw = read_log(path, ReaderConfig(format=log_format, time_unit=otto_time_unit))
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
    return _dataset_records(raw)


def _dataset_records(raw: RawLog) -> Iterator[Record]:
    """Yield the event maps of a log that `hiertcn.data.readers.read_log` returned."""
    offsets = raw.impression_offsets
    for index in range(len(raw)):
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


def add_event_file_arguments(
    parser: argparse.ArgumentParser, verb: str, time_unit: str = "in seconds"
) -> None:
    """Add the event-file flags that replay and produce share (`--events`, `--format`, ...).

    `verb` names what the command does with the file ("replay", "publish") in the help text,
    and `time_unit` states the unit of a CSV time column.
    """
    parser.add_argument(
        "--events", type=Path, required=True, metavar="FILE", help=f"event-log file to {verb}"
    )
    parser.add_argument(
        "--format",
        choices=RECORD_FORMATS,
        default="auto",
        help="format of --events (default: from the file name and first line)",
    )
    parser.add_argument(
        "--time-col",
        default=None,
        metavar="NAME",
        help=f"time column of a CSV file, {time_unit} (default: the first of ts, timestamp, "
        "time, event_time)",
    )
    parser.add_argument(
        "--otto-time-unit",
        choices=("s", "ms"),
        default=None,
        help="unit of the timestamps of an OTTO file: ms as in OTTO's published files, or s for "
        "a converted copy (default: ms). The pipeline reads them in seconds either way",
    )
    parser.add_argument(
        "--order",
        choices=ORDERS,
        default="file",
        help=f"{verb} the records in file order, or sorted by event time (stable). File order "
        "is right only for a file sorted by time: session timers follow the newest event time "
        "read so far, so in a log grouped by user they close sessions early (default: file)",
    )
