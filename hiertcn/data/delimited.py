"""Readers of delimited logs: the generic csv format, MovieLens, Taobao and trivago.

A one-character delimiter is read with the csv module, so quoted fields work. A longer one, such
as the `::` of MovieLens `ratings.dat`, splits each line. A malformed row raises DataError with
the file and the line. The csv, MovieLens and Taobao readers add the partial-line fix when that
row is an incomplete last line.
"""

from __future__ import annotations

import csv
import logging
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

from hiertcn.data.counts import count_noun
from hiertcn.data.delimited_columns import (
    Columns,
    check_header_not_numbers,
    check_time_header,
    delimiter_hint,
    pick_columns,
)
from hiertcn.data.formats import (
    MOVIELENS_COLUMNS,
    TAOBAO_COLUMNS,
    TRIVAGO_ITEM_ACTIONS,
    ReaderConfig,
    quote_delimiter,
)
from hiertcn.data.log_files import (
    ENCODING,
    encoding_error,
    first_line,
    is_unterminated_last_line,
    partial_line_fix,
    with_partial_line_fix,
)
from hiertcn.data.raw_log import RawLog, RawLogBuilder
from hiertcn.data.time_units import fixed_unit
from hiertcn.errors import DataError

logger = logging.getLogger(__name__)


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
        raise encoding_error(path, error) from None


def _iter_csv_rows(file, delimiter: str, path: Path) -> Iterator[tuple[int, list[str]]]:
    reader = csv.reader(file, delimiter=delimiter)
    try:
        for fields in reader:
            if fields and any(field.strip() for field in fields):
                yield reader.line_num, fields
    except csv.Error as error:
        line = reader.line_num
        fix = "fix or remove this row"
        if is_unterminated_last_line(path, line):
            fix = partial_line_fix(path, line)
        raise DataError(f"{path}:{line}: malformed CSV row ({error}): {fix}") from None


def _short_row_error(
    path: Path, line: int, fields: Sequence[str], needed: int, delimiter: str, log_format: str
) -> DataError:
    """Build the error for a row with fewer fields than the chosen columns need."""
    row = delimiter.join(fields)
    # Only the csv and taobao readers take --delimiter, because MovieLens files have a fixed one.
    hint = None
    if is_unterminated_last_line(path, line):
        hint = partial_line_fix(path, line)
    elif len(fields) == 1 and log_format in ("csv", "taobao"):
        hint = delimiter_hint(fields)
    if hint is None and log_format == "csv":
        hint = (
            f"check that --delimiter (now {quote_delimiter(delimiter)}) separates the fields, "
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


def _read_delimited(
    path: Path,
    config: ReaderConfig,
    delimiter: str,
    header: bool,
    names: Sequence[str] | None,
    defaults: Columns | None,
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
        check_header_not_numbers(path, header_line, names)
    columns = pick_columns(config, names, path, defaults)
    if header and names is not None:
        check_time_header(path, header_line, names, columns.time)
    builder = RawLogBuilder(
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
            raise with_partial_line_fix(error, path, line) from None
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


def read_generic_delimited(path: Path, config: ReaderConfig) -> RawLog:
    return _read_delimited(
        path,
        config,
        _delimiter_for(path, config),
        header=config.header,
        names=None,
        defaults=None,
        time_unit=config.time_unit or "s",
    )


def read_movielens(path: Path, config: ReaderConfig) -> RawLog:
    unit = fixed_unit(config, "s", "movielens", path)
    name = path.name.lower()
    if name.endswith(".dat") or name.endswith(".data"):
        delimiter = "::" if name.endswith(".dat") else "\t"
        defaults = Columns(user=0, item=1, time=3, event_type=None, impressions=None)
        return _read_delimited(path, config, delimiter, False, MOVIELENS_COLUMNS, defaults, unit)
    if name.endswith(".csv"):
        names = next(csv.reader([first_line(path)]))
        missing = {"userId", "movieId", "timestamp"} - set(names)
        if missing:
            raise DataError(
                f"{path}: MovieLens ratings.csv header {names} lacks {sorted(missing)}: "
                "use --format csv with --user-col, --item-col and --time-col"
            )
        defaults = Columns(
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


def read_taobao(path: Path, config: ReaderConfig) -> RawLog:
    unit = fixed_unit(config, "s", "taobao", path)
    defaults = Columns(user=0, item=1, time=4, event_type=3, impressions=None)
    delimiter = config.delimiter or ","
    return _read_delimited(path, config, delimiter, False, TAOBAO_COLUMNS, defaults, unit)


def read_trivago(path: Path, config: ReaderConfig) -> RawLog:
    unit = fixed_unit(config, "s", "trivago", path)
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

    builder = RawLogBuilder(path, unit, config, with_impressions=True)
    hidden = 0
    # Rows of the action types outside TRIVAGO_ITEM_ACTIONS, whose reference is not an item (a
    # city, a filter or a sort order), counted by type for the log line.
    other_actions: Counter[str] = Counter()
    for line, fields in rows:
        if len(fields) != len(names):
            raise DataError(
                f"{path}:{line}: row has {count_noun(len(fields), 'field')}, the header has "
                f"{len(names)}"
            )
        action = fields[index["action_type"]].strip()
        if action not in TRIVAGO_ITEM_ACTIONS:
            other_actions[action] += 1
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

    _log_skipped_trivago_rows(path, other_actions, hidden)
    return builder.build()


def _log_skipped_trivago_rows(path: Path, other_actions: Counter[str], hidden: int) -> None:
    """Log the rows that `read_trivago` skipped: other action types, and empty references."""
    if other_actions:
        types = ", ".join(f"{action} {count}" for action, count in other_actions.most_common())
        logger.info(
            "%s: skipped %s of action types without an item reference (%s)",
            path,
            count_noun(other_actions.total(), "row"),
            types,
        )
    if hidden:
        logger.info(
            "%s: skipped %s with an empty reference, such as the clickouts whose item the "
            "challenge's test file hides",
            path,
            count_noun(hidden, "item action"),
        )
