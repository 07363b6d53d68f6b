"""CSV and TSV event files: the column choice, the header checks and the rows as records.

`stream.records.read_records` reads a file of the format `csv` through `read_csv`. The column
choice and the header checks are those of `hiertcn.data.delimited_columns`, with its messages.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from stream.records import EventColumns, EventFileError, Record

if TYPE_CHECKING:
    from _csv import _reader as CsvReader

# Time columns of a CSV log, in order of preference: the event field name, then the names
# that `hiertcn train` reads.
CSV_TIME_COLUMNS = ("ts", "timestamp", "time", "event_time")
# Separator of item ids inside the `impressions` and `candidates` columns of a CSV log.
CSV_LIST_SEPARATOR = "|"
# Optional columns of a CSV log, found by name only, that become event fields.
CSV_OPTIONAL_FIELDS = ("type", "event_id", "impressions", "candidates")
# Delimiter of a CSV event file by suffix, the same as `hiertcn` uses. A file with another suffix
# is read as comma-separated.
CSV_DELIMITERS = {".csv": ",", ".tsv": "\t", ".tab": "\t"}
# Field size limit of the csv module while a CSV file is read: the largest value that
# csv.field_size_limit takes on every platform (a C long).
_CSV_FIELD_SIZE_LIMIT = 2**31 - 1
# A byte that UTF-8 decoding with errors="surrogateescape" could not decode.
_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")


def _csv_value(name: str, text: str) -> Any:
    if name in ("impressions", "candidates"):
        return [entry for entry in text.split(CSV_LIST_SEPARATOR) if entry] if text else None
    if name == "ts":
        try:
            return float(text)
        except ValueError:
            return text
    return text if text else None


def _csv_column(
    path: Path, header: list[str], spec: str | None, flag: str, defaults: tuple[str, ...]
) -> int | None:
    """Return the position of a column: the header name or 0-based position `spec`, or the first
    of `defaults` in the header when `spec` is None. None when there is no such column.

    As in `hiertcn`, digits that name one column and are the position of another raise
    `EventFileError`, because either reading could be meant, and so does a name that the header
    gives to several columns.
    """
    from hiertcn.data.delimited_columns import ambiguous_column_message
    from hiertcn.data.formats import is_column_position

    if spec is None:
        name = next((name for name in defaults if name in header), None)
        if name is None:
            return None
        role = flag.removeprefix("--").removesuffix("-col")
        return _named_csv_column(path, header, name, f"the default {role} column {name!r}", flag)
    position = int(spec) if is_column_position(spec) else None
    if position is not None and position >= len(header):
        position = None
    if spec in header:
        index = _named_csv_column(path, header, spec, f"{flag} {spec}", flag)
        if position is not None and position != index:
            message = ambiguous_column_message(spec, header, index, flag)
            raise EventFileError(f"{path}: {message}")
        return index
    return position


def _named_csv_column(
    path: Path, header: list[str], name: str, choice: str, flag: str | None
) -> int:
    """Return the position of the column `name`; raise `EventFileError` when several have it."""
    from hiertcn.data.delimited_columns import duplicate_column_message

    message = duplicate_column_message(header, name, choice, flag)
    if message is not None:
        raise EventFileError(f"{path}: {message}")
    return header.index(name)


def _csv_field_names(path: Path, header: list[str], columns: EventColumns) -> list[str | None]:
    """Return the event field of each column of a CSV header, or None for a dropped column.

    The user, item and time columns become `user`, `item` and `ts`. A column named `user`,
    `item` or `ts` that is not the chosen one is dropped, so it cannot replace the chosen value.
    Raises `EventFileError` naming the missing columns and the header found.
    """
    roles = (
        ("user", "--user-col", columns.user, ("user",)),
        ("item", "--item-col", columns.item, ("item",)),
        ("ts", "--time-col", columns.time, CSV_TIME_COLUMNS),
    )
    chosen: dict[str, int] = {}
    missing = []
    for field, flag, spec, defaults in roles:
        position = _csv_column(path, header, spec, flag, defaults)
        if position is not None:
            chosen[field] = position
        elif spec is not None:
            missing.append(f"{spec!r} (named by {flag})")
        elif field == "ts":
            missing.append(f"for the time ({', '.join(CSV_TIME_COLUMNS)})")
        else:
            missing.append(field)
    if missing:
        raise EventFileError(
            f"CSV event file {path} has no column {' and no column '.join(missing)} (its header "
            f"is {header}): pass --user-col, --item-col and --time-col with the header name or "
            "0-based position of the user, item and time columns, or name the columns user, "
            "item and ts"
        )
    _check_distinct_columns(path, header, chosen)
    field_of = {position: field for field, position in chosen.items()}
    names = [
        field_of.get(position, None if name in chosen else name)
        for position, name in enumerate(header)
    ]
    for name in CSV_OPTIONAL_FIELDS:
        if name in header:
            _named_csv_column(path, header, name, f"the event field {name!r}", None)
    return names


def _check_distinct_columns(path: Path, header: list[str], chosen: dict[str, int]) -> None:
    """Raise `EventFileError` when the user, item and time come from one column."""
    from hiertcn.data.delimited_columns import column_label
    from hiertcn.data.formats import shared_column_message

    columns = [
        ("time" if field == "ts" else field, position, column_label(header, position))
        for field, position in chosen.items()
    ]
    message = shared_column_message("column", columns)
    if message is not None:
        # The same message as `hiertcn data`.
        raise EventFileError(f"{path}: {message}")


def _headerless_field_names(path: Path, columns: EventColumns) -> list[str | None]:
    """Return the event field of each column of a CSV file without a header, up to the last
    chosen one. `hiertcn`'s column choice picks the positions (0, 1 and 2 unless the column
    flags give others) and raises its errors."""
    from hiertcn.data.delimited_columns import pick_columns
    from hiertcn.data.readers import ReaderConfig
    from hiertcn.errors import DataError

    config = ReaderConfig(
        user_col=columns.user, item_col=columns.item, time_col=columns.time, header=False
    )
    try:
        chosen = pick_columns(config, None, path, None)
    except DataError as error:
        raise EventFileError(str(error)) from None
    positions = {"user": chosen.user, "item": chosen.item, "ts": chosen.time}
    names: list[str | None] = [None] * (max(positions.values()) + 1)
    for field, position in positions.items():
        names[position] = field
    return names


def _csv_delimiter(path: Path) -> str:
    return CSV_DELIMITERS.get(path.suffix.lower(), ",")


def read_csv(path: Path, columns: EventColumns) -> Iterator[Record]:
    """Check the header of a CSV event file now, and return an iterator over its rows."""
    delimiter = _csv_delimiter(path)
    if not columns.header:
        names = _headerless_field_names(path, columns)
        return _read_csv_rows(path, names, delimiter, has_header=False)
    with _open_csv(path) as file:
        reader = csv_reader(file, delimiter)
        header = [name.strip() for name in next(reader, [])]
        line = reader.line_num
    byte = _escaped_byte(header)
    if byte is not None:
        raise EventFileError(
            f"the header (line {line}) of event file {path} is not valid UTF-8 (byte "
            f"{byte:#04x}): save the file as UTF-8"
        )
    _check_header_row(path, line, header)
    names = _csv_field_names(path, header, columns)
    _check_time_header(path, line, header, names)
    return _read_csv_rows(path, names, delimiter, has_header=True)


def _check_header_row(path: Path, line: int, header: list[str]) -> None:
    """Raise `EventFileError` when every cell of the header row is a number, as `hiertcn` does,
    because the row is then probably the first event of a file without a header."""
    from hiertcn.data.delimited_columns import check_header_not_numbers
    from hiertcn.errors import DataError

    try:
        check_header_not_numbers(path, line, header)
    except DataError as error:
        raise EventFileError(str(error)) from None


def _check_time_header(path: Path, line: int, header: list[str], names: list[str | None]) -> None:
    """Raise `EventFileError` when the header cell of the time column is an integer, as
    `hiertcn` does, because the row is then probably the first event of a file without one."""
    from hiertcn.data.delimited_columns import check_time_header
    from hiertcn.errors import DataError

    try:
        check_time_header(path, line, header, names.index("ts"))
    except DataError as error:
        raise EventFileError(str(error)) from None


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


def _read_csv_rows(
    path: Path, names: list[str | None], delimiter: str, has_header: bool
) -> Iterator[Record]:
    """Yield the records of the rows after the header, if any. Blank rows are skipped, as in
    `hiertcn`."""
    with _open_csv(path) as file:
        reader = csv_reader(file, delimiter)
        if has_header:
            next(reader, None)  # checked by `read_csv`
        # A quoted field may span lines, so a row starts on the line after the previous row.
        line = reader.line_num + 1
        number = 0
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as error:
                # The reader drops the rest of the line and goes on with the next one.
                yield Record(number, None, f"malformed CSV row: {error}", line=line)
                number += 1
            else:
                if any(text.strip() for text in row):
                    yield _csv_record(number, row, names, line, has_header)
                    number += 1
            line = reader.line_num + 1


def _csv_record(
    number: int, row: list[str], names: list[str | None], line: int, has_header: bool
) -> Record:
    byte = _escaped_byte(row)
    if byte is not None:
        # Strict decoding: a replaced byte would silently change a user or item id.
        return Record(number, None, f"not valid UTF-8 (byte {byte:#04x})", line=line)
    if has_header and len(row) != len(names):
        return Record(number, None, f"row has {len(row)} fields, header has {len(names)}", line)
    if len(row) < len(names):
        # Without a header, the columns after the last chosen one are not read.
        message = (
            f"row has {len(row)} fields, but the column flags need {len(names)} (up to "
            f"column {len(names) - 1}, counted from 0)"
        )
        return Record(number, None, message, line)
    fields = {
        name: _csv_value(name, text)
        for name, text in zip(names, row[: len(names)], strict=True)
        if name is not None
    }
    present = {name: value for name, value in fields.items() if value is not None}
    return Record(number, present, line=line)


def csv_reader(file: TextIO, delimiter: str) -> CsvReader:
    """Return a csv reader of `file` that reads fields of any size, as `hiertcn` does.

    The csv module's field size limit (131072 characters by default) is global to the process.
    It is raised, never lowered, because a long text in a column that no event field uses must
    not reject its row. A line is read whole in any case, so the limit bounds no memory.
    """
    if csv.field_size_limit() < _CSV_FIELD_SIZE_LIMIT:
        csv.field_size_limit(_CSV_FIELD_SIZE_LIMIT)
    return csv.reader(file, delimiter=delimiter)
