"""Log formats that the readers know: names, column layouts and the settings of one read.

`ReaderConfig` contains the settings of one read. The layout constants name the columns of the
MovieLens, Taobao and trivago files. `csv_flags_for_layout` writes the generic csv flags that read
the same columns as a MovieLens or Taobao reader, for messages that suggest them.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path

from hiertcn.errors import DataError

FORMATS = ("auto", "csv", "jsonl", "movielens", "otto", "taobao", "trivago")
TIME_UNITS = ("s", "ms")
# Formats whose time unit --time-unit chooses, with their default. The other formats have a fixed
# unit. OTTO's own files are in milliseconds, and `s` reads a copy converted to seconds.
FLEXIBLE_UNIT_FORMATS = {"csv": "s", "jsonl": "s", "otto": "ms"}
# Formats that take --no-header. The movielens and taobao readers know their own header rows and
# ignore it. JSON Lines, OTTO and trivago files reject it.
NO_HEADER_FORMATS = ("csv", "movielens", "taobao")


# Header names that the generic readers accept when no column is given, in order of preference.
DEFAULT_COLUMNS = {
    "user": ("user", "user_id", "userId", "userid", "session", "session_id"),
    "item": ("item", "item_id", "itemId", "itemid", "movieId", "aid"),
    "time": ("timestamp", "ts", "time", "event_time"),
}

TAOBAO_COLUMNS = ("user", "item", "category", "behavior", "timestamp")
TAOBAO_BEHAVIORS = ("pv", "cart", "fav", "buy")
MOVIELENS_COLUMNS = ("user", "item", "rating", "timestamp")
TRIVAGO_HEADER_START = ("user_id", "session_id", "timestamp", "step", "action_type", "reference")
TRIVAGO_ITEM_ACTIONS = (
    "clickout item",
    "interaction item image",
    "interaction item info",
    "interaction item deals",
    "interaction item rating",
    "search for item",
)


@dataclass(frozen=True)
class ReaderConfig:
    """How to read one log file.

    Column specs are header names or 0-based positions written in ASCII digits. `None` picks the
    format's own column. For a generic log with a header, that is the first known name such as
    `user_id`, `item_id` or `timestamp`. Without a header, it is position 0, 1 or 2.
    """

    format: str = "auto"
    user_col: str | None = None
    item_col: str | None = None
    time_col: str | None = None
    event_type_col: str | None = None
    impressions_col: str | None = None
    impressions_sep: str = "|"
    header: bool = True
    delimiter: str | None = None
    # Unit of the timestamps in the file: "s" or "ms". None means the format's own unit
    # (milliseconds for OTTO, seconds for every other format).
    time_unit: str | None = None
    # Keep only the events of these types (Taobao behavior, OTTO type, trivago action_type).
    event_types: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise DataError(f"unknown log format {self.format!r}: use one of {', '.join(FORMATS)}")
        if self.time_unit is not None and self.time_unit not in TIME_UNITS:
            raise DataError(f"unknown time unit {self.time_unit!r}: use 's' or 'ms'")
        if self.delimiter == "":
            raise DataError("the delimiter is empty: give one or more characters, e.g. ','")
        if not self.impressions_sep:
            raise DataError("the impressions separator is empty: give one, e.g. '|'")


def is_column_position(spec: str) -> bool:
    """Return whether a column flag's value is a 0-based position, written in ASCII digits.

    `str.isdigit` also accepts digits such as '²', which `int` rejects, and '٠' (Arabic-Indic
    zero), which `int` reads as 0, so both are column names here.
    """
    return spec.isascii() and spec.isdigit()


def shared_column_message(kind: str, columns: Sequence[tuple[str, Hashable, str]]) -> str | None:
    """Return the error for two event fields read from one column or key, or None.

    `columns` contains (field, identity, label) for the user, the item and the time: the fields
    share a column when their identities (a position, or a JSON key) are equal, and `label`
    names the column in the message. `kind` is "column" or "key".
    """
    for index, (field, identity, label) in enumerate(columns):
        others = [other for other, same, _ in columns[index + 1 :] if same == identity]
        if others:
            fields = " and the ".join([field, *others])
            return (
                f"the {fields} are read from one {kind}, {label}, but each event field needs "
                f"its own: pass --user-col, --item-col and --time-col with three different "
                f"{kind}s"
            )
    return None


def csv_flags_for_layout(config: ReaderConfig, path: Path) -> str | None:
    """Return the csv flags that read the columns `config` picks from a MovieLens or Taobao log.

    Column flags the user gave are kept, and a column name of a headerless layout becomes its
    position, so `--item-col category` of a Taobao log becomes `--item-col 2`.
    """
    name = path.name.lower()
    if config.format == "movielens" and name.endswith(".csv"):
        # ratings.csv has a header, so its column names work with --format csv.
        return _column_flags(config, _MOVIELENS_CSV_DEFAULTS, names=None)
    if config.format == "movielens":
        delimiter = "::" if name.endswith(".dat") else "\t"
        columns = _column_flags(config, _MOVIELENS_DEFAULTS, MOVIELENS_COLUMNS)
        return f"--no-header --delimiter {quote_delimiter(delimiter)} {columns}"
    if config.format == "taobao":
        delimiter = quote_delimiter(config.delimiter or ",")
        columns = _column_flags(config, _TAOBAO_DEFAULTS, TAOBAO_COLUMNS)
        return f"--no-header --delimiter {delimiter} {columns}"
    return None


def _column_flags(
    config: ReaderConfig, defaults: dict[str, str], names: Sequence[str] | None
) -> str:
    """Return the column flags of `config`, with `defaults` for the flags it leaves unset.

    With `names`, the columns of a headerless layout, a name becomes its 0-based position.
    """
    flags = []
    for flag, spec in (
        ("--user-col", config.user_col),
        ("--item-col", config.item_col),
        ("--time-col", config.time_col),
        ("--event-type-col", config.event_type_col),
    ):
        spec = spec if spec is not None else defaults.get(flag)
        if spec is None:
            continue
        if names is not None and spec in names:
            spec = str(list(names).index(spec))
        flags.append(f"{flag} {spec}")
    return " ".join(flags)


# The column of each flag that the MovieLens and Taobao readers use when the flag is not given.
_MOVIELENS_CSV_DEFAULTS = {
    "--user-col": "userId",
    "--item-col": "movieId",
    "--time-col": "timestamp",
}
_MOVIELENS_DEFAULTS = {"--user-col": "user", "--item-col": "item", "--time-col": "timestamp"}
_TAOBAO_DEFAULTS = {
    "--user-col": "user",
    "--item-col": "item",
    "--time-col": "timestamp",
    "--event-type-col": "behavior",
}


def quote_delimiter(delimiter: str) -> str:
    """Return `delimiter` as a shell argument of --delimiter, with a tab written as `\\t`."""
    return "'" + delimiter.replace("\t", "\\t") + "'"
