"""Reading a log file as text: UTF-8, the csv field size limit and incomplete last lines.

The readers decode every file with `ENCODING`. An invalid byte raises DataError with the line
and the byte (`encoding_error`). A bad last line without a newline gets the fix for a file that
a program may still be writing (`partial_line_fix`).
"""

from __future__ import annotations

import csv
import os
import shlex
from pathlib import Path

from hiertcn.data.time_units import MillisecondsAsSecondsError
from hiertcn.errors import DataError

# UTF-8 that drops a leading byte order mark, which Excel writes, so it never reaches a column name.
ENCODING = "utf-8-sig"
# Maximum size of one CSV field in characters, far above the csv module's default of 131072, so
# that a long text in a column the reader does not use is read. It is the largest value that
# csv.field_size_limit takes on every platform, because it takes a C long. A field must still
# fit in memory.
_CSV_FIELD_SIZE_LIMIT = 2**31 - 1


def raise_csv_field_size_limit() -> None:
    """Raise the csv module's field size limit to `_CSV_FIELD_SIZE_LIMIT`, never lower it.

    The limit is global to the process, so this also applies to other users of the csv module.
    """
    if csv.field_size_limit() < _CSV_FIELD_SIZE_LIMIT:
        csv.field_size_limit(_CSV_FIELD_SIZE_LIMIT)


def first_line(path: Path) -> str:
    """Return the first non-blank line of `path` without its line ending."""
    try:
        with path.open(encoding=ENCODING) as file:
            for line in file:
                if line.strip():
                    return line.rstrip("\r\n")
    except UnicodeDecodeError as error:
        raise encoding_error(path, error) from None
    raise DataError(f"log file {path} contains only blank lines")


def encoding_error(path: Path, error: UnicodeDecodeError) -> DataError:
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


def is_unterminated_last_line(path: Path, line: int) -> bool:
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


def unterminated_last_line(path: Path, block_bytes: int = 1 << 16) -> int | None:
    """Return the 1-based number of the last line of `path` when it has text but no newline.

    Returns None for a file that ends with a newline, or whose last line is blank, which the
    readers skip. Only the end of the file is read, and the lines are counted only when the last
    one lacks its newline.
    """
    with path.open("rb") as file:
        end = file.seek(0, os.SEEK_END)
        file.seek(max(0, end - block_bytes))
        tail = file.read()
    # NOTE: a last line longer than `block_bytes` whose end is only whitespace counts as blank.
    if tail.endswith(b"\n") or not tail.rsplit(b"\n", 1)[-1].strip():
        return None
    with path.open("rb") as file:
        newlines = sum(block.count(b"\n") for block in iter(lambda: file.read(1 << 20), b""))
    return newlines + 1


def unterminated_last_line_message(path: Path, line: int) -> str:
    """Return the warning for a last line without a newline that was read as an event."""
    return (
        f"{path}:{line}: the last line does not end with a newline, so if a program is still "
        "writing the file, its last event may be incomplete (a cut-off time or id still reads "
        "as a value): read the file once it is complete, and end it with a newline to silence "
        "this warning"
    )


def partial_line_fix(path: Path, line: int) -> str:
    """Return the fix for a bad last line without a newline, which a writer may not have ended."""
    copy = path.with_name(f"{path.stem}.complete{path.suffix}")
    return (
        f"line {line} is the last line of the file and does not end with a newline, so it is "
        "probably incomplete because a program is still writing the file. Wait until the "
        "file is complete, or read a copy without that line, made with "
        f"`head -n {line - 1} {shlex.quote(str(path))} > {shlex.quote(str(copy))}`"
    )


def with_partial_line_fix(error: DataError, path: Path, line: int) -> DataError:
    """Add the partial-line fix to `error` of row `line` when that row is a partial last line."""
    # A cut can only shorten a timestamp, and callers catch this error by its class.
    if isinstance(error, MillisecondsAsSecondsError) or not is_unterminated_last_line(path, line):
        return error
    return DataError(f"{error}. However, {partial_line_fix(path, line)}")
