"""Readers of JSON Lines logs: the generic jsonl format and OTTO.

Each non-blank line must be one JSON object. An invalid line raises DataError with the file and
the line. Invalid JSON, and an invalid value of a generic log, add the partial-line fix when the
line is an incomplete last line.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from hiertcn.data.formats import (
    DEFAULT_COLUMNS,
    FLEXIBLE_UNIT_FORMATS,
    ReaderConfig,
    shared_column_message,
)
from hiertcn.data.log_files import (
    ENCODING,
    encoding_error,
    is_unterminated_last_line,
    partial_line_fix,
    with_partial_line_fix,
)
from hiertcn.data.raw_log import RawLog, RawLogBuilder
from hiertcn.data.read_progress import ReadProgress
from hiertcn.errors import DataError

# Lines between two checks of the clock for a progress line.
_PROGRESS_CHECK_LINES = 4096


def _iter_json(path: Path) -> Iterator[tuple[int, dict]]:
    progress = ReadProgress(path, noun="line")
    try:
        with path.open(encoding=ENCODING) as file:
            for number, line in enumerate(file, start=1):
                if line.strip():
                    yield number, _parse_json_line(line, path, number)
                if number % _PROGRESS_CHECK_LINES == 0:
                    progress.update(number)
    except UnicodeDecodeError as error:
        raise encoding_error(path, error) from None


def _parse_json_line(line: str, path: Path, number: int) -> dict:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        fix = "each line must be one complete JSON object, so fix or remove this line"
        if is_unterminated_last_line(path, number):
            fix = partial_line_fix(path, number)
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


def read_otto(path: Path, config: ReaderConfig) -> RawLog:
    unit = config.time_unit or FLEXIBLE_UNIT_FORMATS["otto"]
    builder = RawLogBuilder(path, unit, config, with_impressions=False)
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


def _check_distinct_keys(keys: tuple[str, str, str], path: Path) -> None:
    """Raise DataError when the user, item and time keys are not three different keys."""
    fields = zip(("user", "item", "time"), keys, strict=True)
    message = shared_column_message("key", [(field, key, repr(key)) for field, key in fields])
    if message is not None:
        raise DataError(f"{path}: {message}")


def read_generic_jsonl(path: Path, config: ReaderConfig) -> RawLog:
    builder = RawLogBuilder(
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
            _check_distinct_keys(keys, path)
            if keys[1] not in DEFAULT_COLUMNS["item"]:
                builder.other_item_column = repr(keys[1])
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
            raise with_partial_line_fix(error, path, line) from None
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
