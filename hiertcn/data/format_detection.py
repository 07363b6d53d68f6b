"""Detection of a log file's format, and the check that rejects compressed files.

`detect_format` picks the format from the file name and the first non-blank line. A known layout
(MovieLens, OTTO, Taobao, trivago) wins over the generic csv and jsonl formats. A first line that
fits none of them raises DataError that names the flags to pass.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Sequence
from pathlib import Path

from hiertcn.data.formats import (
    DEFAULT_COLUMNS,
    FORMATS,
    TAOBAO_BEHAVIORS,
    TRIVAGO_HEADER_START,
    ReaderConfig,
)
from hiertcn.data.log_files import first_line, raise_csv_field_size_limit
from hiertcn.errors import DataError

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
    raise_csv_field_size_limit()
    name = path.name.lower()
    first = first_line(path)
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
