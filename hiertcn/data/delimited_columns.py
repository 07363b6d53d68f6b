"""Column choice and header checks of delimited (CSV, TSV) logs.

`pick_columns` turns the column flags of a `ReaderConfig`, header names or 0-based positions,
into positions. It rejects digits that name one column and are the position of another, a name
that several columns share, and one column for two of the user, item and time. The header checks
reject a header row that is probably the first event of a file without a header. The event-file
reader of `hiertcn-stream` uses the same checks and messages.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hiertcn.data.formats import (
    DEFAULT_COLUMNS,
    ReaderConfig,
    is_column_position,
    quote_delimiter,
    shared_column_message,
)
from hiertcn.data.time_units import is_finite_number
from hiertcn.errors import DataError


def _resolve_column(spec: str, names: Sequence[str] | None, role: str, path: Path) -> int:
    """Turn a column name or 0-based position into a position.

    Digits that name one header column and are the position of another raise DataError, because
    they usually mean that the first line of a file without a header was read as its header. A
    name that the header gives to two columns raises DataError too.
    """
    flag = _flag(role)
    if names is not None and spec in names:
        index = _named_column(names, spec, f"{flag} {spec}", flag, path)
        position = int(spec) if is_column_position(spec) else None
        if position is not None and position != index and position < len(names):
            raise DataError(f"{path}: {ambiguous_column_message(spec, names, index, flag)}")
        return index
    if is_column_position(spec):
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


def _flag(role: str) -> str:
    return f"--{role.replace(' ', '-')}-col"


def _named_column(names: Sequence[str], name: str, choice: str, flag: str, path: Path) -> int:
    """Return the position of the column `name`; raise DataError when two columns have it."""
    message = duplicate_column_message(names, name, choice, flag)
    if message is not None:
        raise DataError(f"{path}: {message}")
    return list(names).index(name)


def duplicate_column_message(
    names: Sequence[str], name: str, choice: str, flag: str | None
) -> str | None:
    """Return the error for a column `name` that the header gives to several columns, or None.

    `choice` describes what picked the name, such as `--item-col item`, and `flag` is the flag that
    takes a position in its place, or None when no flag can pick the column.
    """
    positions = [position for position, cell in enumerate(names) if cell == name]
    if len(positions) < 2:
        return None
    listed = ", ".join(str(position) for position in positions[:-1])
    problem = (
        f"the header {list(names)} names columns {listed} and {positions[-1]} {name!r}, so "
        f"{choice} could mean any of them"
    )
    rename = "rename the header cells so that each name is used once"
    if flag is None:
        return f"{problem}: {rename}"
    options = " or ".join(f"{flag} {position}" for position in positions)
    return f"{problem}: pass the 0-based position ({options}), or {rename}"


def resolves_to(spec: str, names: Sequence[str], position: int) -> bool:
    """Return whether the column flag value `spec` picks column `position` without an error."""
    if spec in names:
        if list(names).count(spec) > 1:
            return False
        index = list(names).index(spec)
        if is_column_position(spec) and int(spec) < len(names) and int(spec) != index:
            return False
        return index == position
    return is_column_position(spec) and int(spec) == position


def ambiguous_column_message(spec: str, names: Sequence[str], index: int, flag: str) -> str:
    """Return the error for digits `spec` that name column `index` and are the position of
    another column, with the flag values that pick either column unambiguously."""
    position = int(spec)
    other = names[position]
    problem = (
        f"{flag} {spec} is ambiguous: it is the header name of column {index} and the 0-based "
        f"position of the column named {other!r} (the header is {list(names)})"
    )
    options = [
        f"{flag} {shlex.quote(choice)} for the column named {name!r}"
        for choice, name, column in ((str(index), spec, index), (other, other, position))
        if resolves_to(choice, names, column)
    ]
    if not options:
        return (
            f"{problem}. {flag} {index} and {flag} {shlex.quote(other)} are ambiguous too, so "
            "rename the header cells that are digits, or pass --no-header if the first line is "
            "an event, not a header"
        )
    return (
        f"{problem}: pass {', or '.join(options)}, or pass --no-header if the first line is an "
        "event, not a header"
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
            choice = f"the default {role} column {candidate!r}"
            return _named_column(names, candidate, choice, _flag(role), path)
    fix = f"pass --{role}-col with a name or position"
    hint = delimiter_hint(names, part="header") if len(names) == 1 else None
    if hint is not None:
        fix = f"{hint}, or {fix}"
    raise DataError(f"{path}: no {role} column among {list(names)}: {fix}")


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

    columns = Columns(
        user=pick(config.user_col, "user", defaults and defaults.user),
        item=pick(config.item_col, "item", defaults and defaults.item),
        time=pick(config.time_col, "time", defaults and defaults.time),
        event_type=optional(config.event_type_col, "event type", defaults and defaults.event_type),
        impressions=optional(config.impressions_col, "impressions", None),
    )
    fields = (("user", columns.user), ("item", columns.item), ("time", columns.time))
    message = shared_column_message(
        "column", [(field, column, column_label(names, column)) for field, column in fields]
    )
    if message is not None:
        raise DataError(f"{path}: {message}")
    return columns


def column_label(names: Sequence[str] | None, position: int) -> str:
    """Name column `position` for a message: `'sku' (column 1)`, or `column 1` without a header."""
    if names is None or position >= len(names):
        return f"column {position}"
    return f"{names[position]!r} (column {position})"
