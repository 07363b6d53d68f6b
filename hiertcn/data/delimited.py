"""Readers of delimited logs: the generic csv format, MovieLens, Taobao and trivago.

`delimited_rows` reads the rows in chunks. The csv, MovieLens and Taobao readers add a chunk to
the builder in bulk, and add it row by row when a row needs a per-row check, so that a malformed
row raises the DataError of that check, with the file and the line. They add the partial-line
fix when that row is an incomplete last line.
"""

from __future__ import annotations

import csv
import logging
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from hiertcn.data.counts import count_noun
from hiertcn.data.delimited_columns import (
    Columns,
    check_header_not_numbers,
    check_time_header,
    column_label,
    delimiter_hint,
    pick_columns,
)
from hiertcn.data.delimited_rows import (
    is_blank,
    iter_chunks,
    iter_rows,
    row_start_line,
    split_first_row,
)
from hiertcn.data.excerpts import excerpt
from hiertcn.data.formats import (
    DEFAULT_COLUMNS,
    MOVIELENS_COLUMNS,
    TAOBAO_COLUMNS,
    TRIVAGO_ITEM_ACTIONS,
    ReaderConfig,
    quote_delimiter,
)
from hiertcn.data.log_files import (
    first_line,
    is_unterminated_last_line,
    partial_line_fix,
    with_partial_line_fix,
)
from hiertcn.data.raw_log import RawLog, RawLogBuilder
from hiertcn.data.time_units import fixed_unit
from hiertcn.errors import DataError

logger = logging.getLogger(__name__)


def _short_row_error(
    path: Path,
    line: int,
    fields: Sequence[str],
    needed: int,
    delimiter: str,
    log_format: str,
    format_chosen: bool,
) -> DataError:
    """Build the error for a row with fewer fields than the chosen columns need.

    `format_chosen` is true when the user passed --format, so that the hint names it as a
    possible cause.
    """
    row = excerpt(delimiter.join(fields))
    start = row_start_line(line, fields)
    if start != line:
        return DataError(
            f"{path}:{start}: row has {count_noun(len(fields), 'field')} but {needed} are needed "
            f"(up to column {needed - 1}, counted from 0): {row}. {_open_quote_fix(start, line)}"
        )
    # Only the csv and taobao readers take --delimiter, because MovieLens files have a fixed one.
    hint = None
    other_format = f"or pass another --format if the file is not a {log_format} log"
    if is_unterminated_last_line(path, line):
        hint = partial_line_fix(path, line)
    elif len(fields) == 1 and log_format in ("csv", "taobao"):
        hint = delimiter_hint(fields)
        if hint is not None and format_chosen:
            hint = f"{hint}, {other_format}"
    if hint is None and log_format == "csv":
        hint = (
            f"check that --delimiter (now {quote_delimiter(delimiter)}) separates the fields, "
            "and that --user-col, --item-col and --time-col name existing columns"
        )
        if format_chosen:
            hint = f"{hint}, {other_format}"
    elif hint is None:
        hint = (
            f"this row does not have the {log_format} layout, so fix or remove it, or check "
            "--format if no row has that layout"
        )
    return DataError(
        f"{path}:{line}: row has {count_noun(len(fields), 'field')} but {needed} are needed "
        f"(up to column {needed - 1}, counted from 0): {row}: {hint}"
    )


def _open_quote_fix(start: int, end: int) -> str:
    """Return the fix for a bad row from line `start` to `end`, where a quoted field spans lines."""
    return (
        f"A quote on line {start} opens a field that spans lines to line {end}, so close the "
        "quote or remove it unless the field is meant to contain line breaks"
    )


def _spanning_row_error(error: DataError, path: Path, start: int, end: int) -> DataError:
    """Move an error about the row that ends on line `end` to line `start`, where it starts.

    The error of such a row usually comes from an unclosed quote, which makes one field of the
    row out of all the lines up to the next quote character.
    """
    problem = str(error).removeprefix(f"{path}:{end}: ")
    return DataError(f"{path}:{start}: {problem}. {_open_quote_fix(start, end)}")


def _read_delimited(
    path: Path,
    config: ReaderConfig,
    delimiter: str,
    header: bool,
    names: Sequence[str] | None,
    defaults: Columns | None,
    time_unit: str,
    format_chosen: bool = False,
) -> RawLog:
    """Read a delimited file. `names` gives column names to a file without a header.

    `format_chosen` is true when the user passed --format, rather than `auto` detecting it.
    """
    chunks = iter_chunks(path, delimiter)
    skip_blank = len(delimiter) == 1
    header_line = 0
    if header:
        first, chunks = split_first_row(chunks, skip_blank)
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
    if config.item_col is not None and columns.item != _default_item(names, defaults):
        builder.other_item_column = column_label(names, columns.item)
    rows = _DelimitedRows(path, config, delimiter, columns, builder, format_chosen)
    for lines, chunk in chunks:
        if rows.add_in_bulk(lines, chunk):
            continue
        for line, fields in zip(lines, chunk, strict=True):
            if not (skip_blank and is_blank(fields)):
                rows.add_row(line, fields)
    return builder.build()


def _default_item(names: Sequence[str] | None, defaults: Columns | None) -> int | None:
    """Return the position of the item column that the format picks without --item-col."""
    if defaults is not None:
        return defaults.item
    if names is None:
        return 1
    candidates = [name for name in DEFAULT_COLUMNS["item"] if name in names]
    return list(names).index(candidates[0]) if candidates else None


class _DelimitedRows:
    """The row checks of one delimited file, which add its rows to a `RawLogBuilder` a chunk at
    a time when they can."""

    def __init__(
        self,
        path: Path,
        config: ReaderConfig,
        delimiter: str,
        columns: Columns,
        builder: RawLogBuilder,
        format_chosen: bool,
    ):
        self.path = path
        self.config = config
        self.delimiter = delimiter
        self.columns = columns
        self.builder = builder
        self.format_chosen = format_chosen
        self.needed = max(c for c in vars(columns).values() if c is not None) + 1

    def add_in_bulk(self, lines: Sequence[int], rows: list[list[str]]) -> bool:
        """Add a chunk of rows with `RawLogBuilder.add_columns`.

        Returns False, having added nothing, when a row is short or the builder needs the
        per-row checks, so that `add_row` adds each row and raises the error of the first bad one.
        """
        if min(map(len, rows), default=self.needed) < self.needed:
            return False
        columns = self.columns
        event_types = impressions = None
        if columns.event_type is not None:
            event_types = [fields[columns.event_type].strip() for fields in rows]
        if columns.impressions is not None:
            impressions = [self.impressions(fields[columns.impressions]) for fields in rows]
        return self.builder.add_columns(
            lines,
            [fields[columns.user] for fields in rows],
            [fields[columns.item] for fields in rows],
            [fields[columns.time] for fields in rows],
            event_types,
            impressions,
        )

    def add_row(self, line: int, fields: list[str]) -> None:
        """Check one row and add it with `RawLogBuilder.add`. A bad row raises DataError."""
        columns = self.columns
        if len(fields) < self.needed:
            raise _short_row_error(
                self.path,
                line,
                fields,
                self.needed,
                self.delimiter,
                self.config.format,
                self.format_chosen,
            )
        impressions: list[str] = []
        if columns.impressions is not None:
            impressions = self.impressions(fields[columns.impressions])
        event_type = None if columns.event_type is None else fields[columns.event_type].strip()
        try:
            self.builder.add(
                line,
                fields[columns.user],
                fields[columns.item],
                fields[columns.time].strip(),
                event_type,
                impressions,
            )
        except DataError as error:
            start = row_start_line(line, fields)
            if start != line:
                raise _spanning_row_error(error, self.path, start, line) from None
            raise with_partial_line_fix(error, self.path, line) from None

    def impressions(self, text: str) -> list[str]:
        """Split the impressions field of one row into item ids."""
        text = text.strip()
        return [item.strip() for item in text.split(self.config.impressions_sep)] if text else []


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


def read_generic_delimited(path: Path, config: ReaderConfig, format_chosen: bool = False) -> RawLog:
    """Read a generic delimited log. `format_chosen` is true when the user passed --format."""
    return _read_delimited(
        path,
        config,
        _delimiter_for(path, config),
        header=config.header,
        names=None,
        defaults=None,
        time_unit=config.time_unit or "s",
        format_chosen=format_chosen,
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


def read_taobao(path: Path, config: ReaderConfig, format_chosen: bool = False) -> RawLog:
    """Read a Taobao UserBehavior log. `format_chosen` is true when the user passed --format."""
    unit = fixed_unit(config, "s", "taobao", path)
    defaults = Columns(user=0, item=1, time=4, event_type=3, impressions=None)
    delimiter = config.delimiter or ","
    return _read_delimited(
        path, config, delimiter, False, TAOBAO_COLUMNS, defaults, unit, format_chosen
    )


def read_trivago(path: Path, config: ReaderConfig) -> RawLog:
    unit = fixed_unit(config, "s", "trivago", path)
    rows = iter_rows(path, ",")
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
                f"{path}:{line}: reference {excerpt(reference)} of action {excerpt(action)} is not "
                "an item id"
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
