"""Event-log files as a stream of event maps, for `replay` and `produce`.

Formats:

- `jsonl`: one JSON object per line, the event map of the input topic (`user`, `item`, `ts`,
  and optionally `impressions`, `candidates`, `type`, `event_id`).
- `msgpack`: a stream of msgpack maps, one per event, as the input topic carries them.
- `csv`: a header with at least `user`, `item` and `ts`. Optional columns are `type`,
  `event_id`, and `impressions` and `candidates` with item ids separated by `|`.
- `movielens`, `taobao`, `trivago`, `otto`: the public data sets, read with
  `hiertcn.data.readers` (which imports numpy but not torch) and turned into event maps.

A line or row that cannot be parsed becomes a `Record` with `error` set, so callers can count
it. Only a missing file, an unknown format or a CSV header without the required columns raises.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack

from stream.errors import StreamError

logger = logging.getLogger(__name__)

RECORD_FORMATS = ("auto", "jsonl", "msgpack", "csv", "movielens", "taobao", "trivago", "otto")
ORDERS = ("file", "time")

# Separator of item ids inside the `impressions` and `candidates` columns of a CSV log.
CSV_LIST_SEPARATOR = "|"
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

    When the record could not be parsed, `fields` is None and `error` gives the reason.
    """

    number: int
    fields: dict[str, Any] | None
    error: str | None = None


def detect_format(path: Path) -> str:
    """Return the record format of `path` from its suffix and first line."""
    suffix = path.suffix.lower()
    if suffix in _SUFFIX_FORMATS:
        return _SUFFIX_FORMATS[suffix]
    if suffix == ".csv":
        with path.open(encoding="utf-8", errors="replace", newline="") as file:
            header = next(csv.reader(file), [])
        if {"user", "item", "ts"} <= {name.strip() for name in header}:
            return "csv"
    from hiertcn.data.readers import detect_format as detect_dataset_format
    from hiertcn.errors import HierTCNError

    try:
        return detect_dataset_format(path)
    except HierTCNError as error:
        raise EventFileError(
            f"{error}; for an event log use --format jsonl, msgpack or csv"
        ) from None


def read_records(
    path: str | Path, log_format: str = "auto", order: str = "file"
) -> Iterator[Record]:
    """Yield every record of an event-log file, in file order or sorted by event time.

    File order streams the file; time order reads it whole first. Sorting is stable, so equal
    times keep their file order, and records without a valid time go to the end.
    """
    path = Path(path)
    if not path.is_file():
        raise EventFileError(f"event file {path} not found: pass an existing file to --events")
    if log_format not in RECORD_FORMATS:
        raise EventFileError(
            f"unknown event format {log_format!r}: use one of {', '.join(RECORD_FORMATS)}"
        )
    if order not in ORDERS:
        raise EventFileError(f"unknown order {order!r}: use 'file' or 'time'")
    resolved = detect_format(path) if log_format == "auto" else log_format
    readers = {"jsonl": _read_jsonl, "msgpack": _read_msgpack, "csv": _read_csv}
    reader = readers.get(resolved, _read_dataset)
    logger.info("reading %s (format %s, %s order)", path, resolved, order)
    records = reader(path) if resolved in readers else reader(path, resolved)
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
    with path.open(encoding="utf-8", errors="replace") as file:
        for line_number, line in enumerate(file, start=1):
            if not line.strip():
                continue
            try:
                fields = json.loads(line)
            except json.JSONDecodeError as error:
                yield Record(number, None, f"line {line_number} is not JSON: {error.msg}")
            else:
                if isinstance(fields, dict):
                    yield Record(number, fields)
                else:
                    yield Record(number, None, f"line {line_number} is not a JSON object")
            number += 1


def _read_msgpack(path: Path) -> Iterator[Record]:
    with path.open("rb") as file:
        unpacker = msgpack.Unpacker(
            file, raw=False, strict_map_key=True, max_buffer_size=_MAX_MSGPACK_RECORD_BYTES
        )
        number = 0
        while True:
            try:
                fields = unpacker.unpack()
            except msgpack.OutOfData:
                return
            except (msgpack.UnpackException, ValueError) as error:
                # The stream cannot be resynchronised after a broken object.
                yield Record(number, None, f"invalid msgpack, rest of file skipped: {error}")
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


def _read_csv(path: Path) -> Iterator[Record]:
    with path.open(encoding="utf-8", errors="replace", newline="") as file:
        reader = csv.reader(file)
        header = [name.strip() for name in next(reader, [])]
        missing = {"user", "item", "ts"} - set(header)
        if missing:
            raise EventFileError(
                f"CSV event file {path} lacks the columns {sorted(missing)}: give a header "
                "with user, item and ts"
            )
        for number, row in enumerate(reader):
            if len(row) != len(header):
                yield Record(number, None, f"row has {len(row)} fields, header has {len(header)}")
                continue
            fields = {name: _csv_value(name, text) for name, text in zip(header, row, strict=True)}
            yield Record(
                number, {name: value for name, value in fields.items() if value is not None}
            )


def _read_dataset(path: Path, log_format: str) -> Iterator[Record]:
    from hiertcn.data.readers import ReaderConfig, read_log
    from hiertcn.errors import HierTCNError

    try:
        raw = read_log(path, ReaderConfig(format=log_format))
    except HierTCNError as error:
        raise EventFileError(f"cannot read {path} as {log_format}: {error}") from None
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
