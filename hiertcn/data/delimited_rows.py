"""Rows of a delimited (CSV, TSV) log, read in chunks with their line numbers.

The readers check and add a chunk of rows in bulk, which costs much less per row than one call
per row (`RawLogBuilder.add_columns`). A one-character delimiter is read with the csv module, so
quoted fields work. A longer one, such as the `::` of MovieLens `ratings.dat`, splits each line.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator, Sequence
from itertools import accumulate, chain, compress, islice
from pathlib import Path
from typing import TextIO

from hiertcn.data.log_files import (
    ENCODING,
    encoding_error,
    is_unterminated_last_line,
    partial_line_fix,
)
from hiertcn.data.read_progress import ReadProgress
from hiertcn.errors import DataError

# Line numbers and fields of the rows of one chunk.
Chunk = tuple[Sequence[int], list[list[str]]]

# Rows per chunk, which stay Python lists of strings until the builder encodes them. On a 1M-row
# Taobao file (2-core VM), 16384 read faster than 4096 or 65536, and 65536 took 40 MB more.
_CHUNK_ROWS = 1 << 14


def iter_chunks(path: Path, delimiter: str) -> Iterator[Chunk]:
    """Yield the non-empty rows of `path` in chunks of up to `_CHUNK_ROWS`: lines and fields.

    A one-character delimiter is read with the csv module, so quoting works. Its chunks still
    contain the rows whose fields are all whitespace, for the caller to skip with `is_blank`.
    A longer delimiter splits each line, and leaves out blank lines. An error in a row comes
    after the chunk of the rows before it, so that their errors come first.
    """
    progress = ReadProgress(path)
    rows = 0
    try:
        with path.open(encoding=ENCODING, newline="") as file:
            if len(delimiter) == 1:
                chunks = _iter_csv_chunks(file, delimiter, path)
            else:
                chunks = _iter_split_chunks(file, delimiter)
            for chunk in chunks:
                yield chunk
                rows += len(chunk[1])
                progress.update(rows)
    except UnicodeDecodeError as error:
        raise encoding_error(path, error) from None


def _iter_csv_chunks(file: TextIO, delimiter: str, path: Path) -> Iterator[Chunk]:
    reader = csv.reader(file, delimiter=delimiter)
    while True:
        before = reader.line_num
        rows: list[list[str]] = []
        try:
            # `extend` keeps the rows read before an error, so that their errors come first.
            rows.extend(islice(reader, _CHUNK_ROWS))
        except (csv.Error, UnicodeDecodeError) as error:
            if rows:
                yield _without_empty_rows(_line_numbers(before, rows, None), rows)
            if isinstance(error, UnicodeDecodeError):
                raise
            raise _malformed_row_error(path, reader.line_num, error) from None
        if not rows:
            return
        yield _without_empty_rows(_line_numbers(before, rows, reader.line_num), rows)


def _line_numbers(before: int, rows: list[list[str]], last: int | None) -> Sequence[int]:
    """Return the number of the line on which each csv row ends, as `csv.reader.line_num`
    gives it after that row.

    `before` is the line before the rows and `last` the line after them, or None when a row
    after them failed. A row spans one line plus one per line break inside its quoted fields.
    """
    if last is not None and last - before == len(rows):
        return range(before + 1, last + 1)
    spans = (1 + sum(map(_line_breaks, fields)) for fields in rows)
    lines = list(accumulate(spans, initial=before))[1:]
    if last is not None and lines[-1] == last + 1:
        # A quoted field left open at the end of the file keeps the last line's line break.
        lines[-1] = last
    return lines


def row_start_line(line: int, fields: Sequence[str]) -> int:
    """Return the line on which a csv row starts, given the `line` on which it ends.

    A line break at the end of the last field is not counted, because a quoted field left open
    at the end of the file ends with the last line's line break, which starts no new line.
    NOTE: a row whose last field is a closed quote that ends with a line break, such as
    `1,2,"a<LF>"`, is then taken to start one line later than it does.
    """
    breaks = sum(map(_line_breaks, fields))
    if fields and fields[-1].endswith(("\n", "\r")):
        breaks -= 1
    return line - breaks


def _line_breaks(field: str) -> int:
    """Count the line breaks in a field: CR LF, CR and LF, where universal newlines split."""
    return field.count("\n") + field.count("\r") - field.count("\r\n")


def _without_empty_rows(lines: Sequence[int], rows: list[list[str]]) -> Chunk:
    """Drop the rows of empty lines, which the csv module reads as `[]`."""
    if all(rows):
        return lines, rows
    return list(compress(lines, rows)), list(compress(rows, rows))


def _malformed_row_error(path: Path, line: int, error: csv.Error) -> DataError:
    fix = "fix or remove this row"
    if is_unterminated_last_line(path, line):
        fix = partial_line_fix(path, line)
    return DataError(f"{path}:{line}: malformed CSV row ({error}): {fix}")


def _iter_split_chunks(file: TextIO, delimiter: str) -> Iterator[Chunk]:
    lines: list[int] = []
    rows: list[list[str]] = []
    try:
        for number, line in enumerate(file, start=1):
            line = line.rstrip("\r\n")
            if line.strip():
                rows.append(line.split(delimiter))
                lines.append(number)
            if len(rows) == _CHUNK_ROWS:
                yield lines, rows
                lines, rows = [], []
    except UnicodeDecodeError:
        if rows:
            yield lines, rows
        raise
    if rows:
        yield lines, rows


def is_blank(fields: Sequence[str]) -> bool:
    """Return whether a csv row has no field with text. The readers skip such rows."""
    return not any(field.strip() for field in fields)


def iter_rows(path: Path, delimiter: str) -> Iterator[tuple[int, list[str]]]:
    """Yield (line number, fields) of every non-blank row; quoting only for 1-char delimiters."""
    skip_blank = len(delimiter) == 1
    for lines, rows in iter_chunks(path, delimiter):
        for line, fields in zip(lines, rows, strict=True):
            if not (skip_blank and is_blank(fields)):
                yield line, fields


def split_first_row(
    chunks: Iterator[Chunk], skip_blank: bool
) -> tuple[tuple[int, list[str]] | None, Iterator[Chunk]]:
    """Return the first row that is not blank, and the chunks of the rows after it.

    `skip_blank` skips rows whose fields are all whitespace, as csv chunks contain them.
    """
    for lines, rows in chunks:
        for index, fields in enumerate(rows):
            if skip_blank and is_blank(fields):
                continue
            rest = (lines[index + 1 :], rows[index + 1 :])
            return (lines[index], fields), chain([rest], chunks)
    return None, iter(())
