"""Column choice and header checks of delimited (CSV, TSV) logs.

`pick_columns` turns the column flags of a `ReaderConfig`, header names or 0-based positions,
into positions. The header checks reject a header row that is probably the first event of a
file without a header.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hiertcn.data.formats import DEFAULT_COLUMNS, ReaderConfig, quote_delimiter
from hiertcn.data.time_units import is_finite_number
from hiertcn.errors import DataError


def _resolve_column(spec: str, names: Sequence[str] | None, role: str, path: Path) -> int:
    """Turn a column name or 0-based position into a position.

    Digits that name one header column and are the position of another raise DataError, because
    they usually mean that the first line of a file without a header was read as its header.
    """
    if names is not None and spec in names:
        index = list(names).index(spec)
        position = int(spec) if spec.isdigit() else None
        if position is not None and position != index and position < len(names):
            raise _ambiguous_column_error(spec, names, index, role, path)
        return index
    if spec.isdigit():
        return int(spec)
    if names is None:
        raise DataError(
            f"{path}: column {spec!r} for the {role} needs a header; the file has none, "
            "so give a 0-based position"
        )
    hint = delimiter_hint(names, part="header") if len(names) == 1 else None
    fix = hint or "give a header name or a 0-based position"
    raise DataError(
        f"{path}: column {spec!r} for the {role} not found in the header {list(names)}: {fix}"
    )


def _ambiguous_column_error(
    spec: str, names: Sequence[str], index: int, role: str, path: Path
) -> DataError:
    flag = f"--{role.replace(' ', '-')}-col"
    return DataError(
        f"{path}: {flag} {spec} is ambiguous: it is the header name of column {index} and the "
        f"0-based position of the column named {names[int(spec)]!r} (the header is "
        f"{list(names)}). If the first line is an event, not a header, pass --no-header, and "
        f"to pick the column named {spec!r}, pass {flag} {index}"
    )


def _is_position_header(names: Sequence[str]) -> bool:
    """Return whether the header names each column by its 0-based position, as pandas does."""
    return list(names) == [str(position) for position in range(len(names))]


def check_header_not_numbers(path: Path, line: int, names: Sequence[str]) -> None:
    """Raise DataError when every cell of the header row is a number.

    Such a row is almost always the first event of a file without a header. A header of the
    positions 0, 1, 2, ... is accepted, because pandas writes one for unnamed columns.
    """
    if _is_position_header(names) or not all(is_finite_number(name) for name in names):
        return
    raise DataError(
        f"{path}:{line}: every cell of the header row {list(names)} is a number, so the row is "
        "probably the first event of a file without a header: pass --no-header, or give the "
        "columns names in the file's header row"
    )


def check_time_header(path: Path, line: int, names: Sequence[str], time: int) -> None:
    """Raise DataError when the header cell of the time column is an integer, like a timestamp."""
    if time >= len(names) or _is_position_header(names):
        return
    cell = names[time]
    if re.fullmatch(r"[+-]?\d+", cell) is None:
        return
    raise DataError(
        f"{path}:{line}: the header row {list(names)} names the time column (column {time}) "
        f"{cell!r}, an integer, so the row is probably the first event of a file without a "
        "header: pass --no-header, or give the time column a name in the file's header row"
    )


# Delimiters that a row read with another delimiter may contain, most common first.
_DELIMITER_CANDIDATES = (",", "\t", ";", "|")


def delimiter_hint(fields: Sequence[str], part: str = "row") -> str | None:
    """Suggest --delimiter when a row that split into one field contains a common delimiter."""
    for candidate in _DELIMITER_CANDIDATES:
        if candidate in fields[0]:
            return (
                f"the {part} contains {quote_delimiter(candidate)}, so the delimiter is "
                f"probably wrong: pass --delimiter {quote_delimiter(candidate)}"
            )
    return None


def _default_column(names: Sequence[str] | None, role: str, position: int, path: Path) -> int:
    if names is None:
        return position
    for candidate in DEFAULT_COLUMNS[role]:
        if candidate in names:
            return list(names).index(candidate)
    raise DataError(
        f"{path}: no {role} column among {list(names)}: pass --{role}-col with a name or position"
    )


@dataclass(frozen=True)
class Columns:
    user: int
    item: int
    time: int
    event_type: int | None
    impressions: int | None


def pick_columns(
    config: ReaderConfig, names: Sequence[str] | None, path: Path, defaults: Columns | None
) -> Columns:
    def pick(spec: str | None, role: str, fallback: int | None) -> int:
        if spec is not None:
            return _resolve_column(spec, names, role, path)
        if fallback is not None:
            return fallback
        return _default_column(names, role, {"user": 0, "item": 1, "time": 2}[role], path)

    def optional(spec: str | None, role: str, fallback: int | None) -> int | None:
        return fallback if spec is None else _resolve_column(spec, names, role, path)

    return Columns(
        user=pick(config.user_col, "user", defaults and defaults.user),
        item=pick(config.item_col, "item", defaults and defaults.item),
        time=pick(config.time_col, "time", defaults and defaults.time),
        event_type=optional(config.event_type_col, "event type", defaults and defaults.event_type),
        impressions=optional(config.impressions_col, "impressions", None),
    )
