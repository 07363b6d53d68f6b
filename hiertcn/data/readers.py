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
- `trivago`: the trivago RecSys Challenge 2019 CSV. The rows of the item action types
  (`TRIVAGO_ITEM_ACTIONS`) become events of their `reference` item, with the impression list of
  `clickout item` rows. One info line counts the other rows by action type, and one the item
  actions with an empty reference.

Timestamps are int64 seconds since the Unix epoch. The unit of a generic log comes from
`ReaderConfig.time_unit` (default seconds), never from the values. Milliseconds are floored to
seconds, and before that they order the events within a second (`RawLog.positions`).
Timestamps before 1970 are kept, and each read logs one warning that counts them and names the
first, because they usually mean a wrong column, unit or start.
A malformed row raises DataError with the file, the line number and the value; no row is skipped
silently. A header row that looks like an event (every cell a number, or an integer as the name
of the time column) is rejected as the first event of a file without a header. A column choice
that is ambiguous, or that reads two of the user, item and time from one column, raises DataError
too. Exact duplicate events are kept, and one info line counts them.
Files are read as UTF-8: a leading byte order mark is skipped, and an invalid byte raises
DataError with the file, the line number and the byte. A last line without a newline that still
reads as an event logs a warning, because a program may still be writing the file.

The readers live in modules by concept, and this module is their public entry point:
`formats` (format names, column layouts, `ReaderConfig`), `time_units`, `raw_log` (`RawLog` and
its builder) with `interning` (integer codes of ids) and `duplicates`, `log_files` (UTF-8 text
and incomplete last lines), `format_detection`, `delimited` with `delimited_columns` and
`delimited_rows` (rows read in chunks), and `json_lines`. `excerpts` cuts the row text that
messages quote, and `read_progress` logs the progress of a long read.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hiertcn.data.counts import count_noun
from hiertcn.data.delimited import (
    read_generic_delimited,
    read_movielens,
    read_taobao,
    read_trivago,
)
from hiertcn.data.format_detection import check_not_compressed, detect_format
from hiertcn.data.formats import (
    DEFAULT_COLUMNS,
    FORMATS,
    MOVIELENS_COLUMNS,
    NO_HEADER_FORMATS,
    TAOBAO_BEHAVIORS,
    TAOBAO_COLUMNS,
    TIME_UNITS,
    TRIVAGO_HEADER_START,
    TRIVAGO_ITEM_ACTIONS,
    ReaderConfig,
)
from hiertcn.data.json_lines import read_generic_jsonl, read_otto
from hiertcn.data.log_files import (
    ENCODING,
    raise_csv_field_size_limit,
    unterminated_last_line,
    unterminated_last_line_message,
)
from hiertcn.data.raw_log import RawLog, select_ragged
from hiertcn.data.time_units import (
    MillisecondsAsSecondsError,
    SecondsAsMillisecondsError,
    effective_time_unit,
)
from hiertcn.errors import DataError

__all__ = [
    "DEFAULT_COLUMNS",
    "ENCODING",
    "FORMATS",
    "MOVIELENS_COLUMNS",
    "NO_HEADER_FORMATS",
    "TAOBAO_BEHAVIORS",
    "TAOBAO_COLUMNS",
    "TIME_UNITS",
    "TRIVAGO_HEADER_START",
    "TRIVAGO_ITEM_ACTIONS",
    "MillisecondsAsSecondsError",
    "RawLog",
    "ReaderConfig",
    "SecondsAsMillisecondsError",
    "check_log_file",
    "check_no_header_format",
    "check_not_compressed",
    "detect_format",
    "effective_time_unit",
    "read_log",
    "resolve_reader_config",
    "select_ragged",
]

logger = logging.getLogger(__name__)


def check_log_file(path: Path) -> None:
    """Raise DataError when `path` is not a regular file that this process can open and read.

    Every command reads its log through `read_log` or `resolve_reader_config`, which call this
    first, so an unreadable log gives one line with the cause in place of a traceback.
    """
    if path.is_dir():
        raise DataError(
            f"log file {path} is a folder: pass the log file inside it (for MovieLens, "
            "ratings.csv, ratings.dat or u.data)"
        )
    if not path.exists():
        raise DataError(f"log file {path} not found")
    if not path.is_file():
        # A FIFO or a device would block or never end, and a log is read more than once.
        raise DataError(
            f"log file {path} is not a regular file: pass a regular file, or copy the "
            "stream into one first"
        )
    try:
        with path.open("rb") as file:
            file.read(1)
    except OSError as error:
        raise DataError(
            f"log file {path} cannot be read ({error.strerror or error}): pass a file you "
            "can read, or fix its permissions"
        ) from None


def resolve_reader_config(path: Path, config: ReaderConfig) -> ReaderConfig:
    """Return `config` with the format that `auto` picks for `path` and the effective time unit."""
    check_log_file(path)
    log_format = detect_format(path, config) if config.format == "auto" else config.format
    return dataclasses.replace(
        config, format=log_format, time_unit=effective_time_unit(log_format, config.time_unit)
    )


def check_no_header_format(path: Path, log_format: str, config: ReaderConfig) -> None:
    """Raise DataError when --no-header is given for a format that has no header row to skip.

    The MovieLens and Taobao readers know their own header rows and ignore the flag, as
    `hiertcn-stream replay` does.
    """
    if config.header or log_format in NO_HEADER_FORMATS:
        return
    formats = f"{', '.join(NO_HEADER_FORMATS[:-1])} and {NO_HEADER_FORMATS[-1]}"
    raise DataError(
        f"--no-header applies only to CSV and TSV files (the formats {formats}), but {path} "
        f"has the format {log_format}: drop --no-header, or pass --format csv"
    )


def _other_detected_format(path: Path, config: ReaderConfig) -> str | None:
    """Return the known layout that `auto` detects for `path` when --format named another one."""
    if config.format == "auto":
        return None
    try:
        detected = detect_format(path, dataclasses.replace(config, format="auto"))
    except DataError:
        return None
    return detected if detected not in (config.format, "csv", "jsonl") else None


@contextmanager
def _cyclic_gc_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector for the block, then restore its state.

    A read creates a list of fields for every row, or a dict for every JSON line, and the
    collector scans these short-lived objects again and again, although they form no cycles.
    A 1M-row Taobao file took 2.5 s to read with the collector and 1.5 s without it (fastest of
    3 runs on a 2-core VM). Reference counting still frees every object as usual, and cycles
    that other threads make meanwhile wait for the next collection.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def read_log(path: str | Path, config: ReaderConfig | None = None) -> RawLog:
    """Read one interaction log file into a `RawLog`; raises DataError on any malformed row."""
    config = config or ReaderConfig()
    path = Path(path)
    check_log_file(path)
    if path.stat().st_size == 0:
        raise DataError(f"log file {path} is empty")
    check_not_compressed(path)
    raise_csv_field_size_limit()
    # A caller that resolves `auto` itself, as stream/records.py does, passes the detected format,
    # so its short-row hint names --format too, which `replay` and `produce` also take.
    format_chosen = config.format != "auto"
    log_format = config.format if format_chosen else detect_format(path, config)
    check_no_header_format(path, log_format, config)
    logger.info("reading %s (%s bytes, format %s)", path, f"{path.stat().st_size:,}", log_format)
    # The readers word their messages by the format, so they get the detected one.
    config = dataclasses.replace(config, format=log_format)
    readers = {
        "jsonl": read_generic_jsonl,
        "movielens": read_movielens,
        "otto": read_otto,
        "trivago": read_trivago,
    }
    # These readers name --format in their hint for a short row when the user passed it.
    readers_with_format_hint = {"csv": read_generic_delimited, "taobao": read_taobao}
    try:
        with _cyclic_gc_paused():
            if log_format in readers_with_format_hint:
                raw = readers_with_format_hint[log_format](path, config, format_chosen)
            else:
                raw = readers[log_format](path, config)
    except DataError as error:
        other = _other_detected_format(path, config)
        if other is None:
            raise
        raise DataError(
            f"{error}. However, {path} looks like a {other} file, not {log_format}: pass "
            f"--format {other} or --format auto"
        ) from None
    line = unterminated_last_line(path)
    if line is not None:
        logger.warning("%s", unterminated_last_line_message(path, line))
    logger.info("read %s from %s (format %s)", count_noun(len(raw), "event"), path, log_format)
    return raw
