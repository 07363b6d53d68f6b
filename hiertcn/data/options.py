"""The data flags shared by every command that reads a log, and the one function that loads it.

`add_data_arguments(parser)` adds the flags; `load_dataset(args)` reads, filters, sessionizes and
splits the log they name and returns a `Dataset`, or loads it from a folder that
`hiertcn data prepare` wrote (see `hiertcn.data.prepared`).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path

from hiertcn import command_line
from hiertcn.data.filters import FilterConfig, FilterReport, filter_log
from hiertcn.data.log import EventLog, build_event_log
from hiertcn.data.readers import (
    DEFAULT_COLUMNS,
    FORMATS,
    TIME_UNITS,
    ReaderConfig,
    read_log,
    resolve_reader_config,
)
from hiertcn.data.sessions import DEFAULT_SESSION_GAP
from hiertcn.data.splits import SPLIT_KINDS, SplitConfig, split_log
from hiertcn.data.stats import compute_stats
from hiertcn.data.vocab import ItemVocab
from hiertcn.errors import ConfigError, DataError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DataConfig:
    """Everything that decides which events a run trains and evaluates on."""

    path: Path
    reader: ReaderConfig = field(default_factory=ReaderConfig)
    session_gap: int = DEFAULT_SESSION_GAP
    filters: FilterConfig = field(default_factory=FilterConfig)
    split: SplitConfig = field(default_factory=SplitConfig)


@dataclass(frozen=True, eq=False)
class Dataset:
    """A filtered, sessionized log and its split; every log shares `vocab`.

    `log` is the whole filtered log before the split. `summary` is JSON-able: the source, the
    settings, the filter report and the statistics of each part.
    """

    log: EventLog
    train: EventLog
    valid: EventLog
    test: EventLog
    vocab: ItemVocab
    filter_report: FilterReport
    summary: dict[str, object]


# Namespace attribute with the data flags that the command line gave, which a prepared folder
# compares with the values it records.
GIVEN_FLAGS = "data_flags_given"


class _RecordGiven(command_line.RecordGiven):
    """Store a data flag's value and add the flag to `GIVEN_FLAGS`."""

    given_attribute = GIVEN_FLAGS


def add_data_arguments(
    parser: argparse.ArgumentParser, path_required: bool = True, prepared_folder: bool = False
) -> None:
    """Add the log path and every data flag to `parser`.

    With `prepared_folder`, the help text adds that the path may be a folder written by
    `hiertcn data prepare`. Pass it only for commands that load the data with `load_dataset`.
    """
    help_text = "interaction log file (CSV, TSV, JSON Lines, MovieLens, OTTO, Taobao or trivago)"
    if prepared_folder:
        help_text += (
            ", or a folder written by `hiertcn data prepare`, which fixes the data flags and "
            "skips reading, filtering and splitting"
        )
    parser.add_argument(
        "data", metavar="FILE", nargs=None if path_required else "?", type=Path, help=help_text
    )
    parser.set_defaults(**{GIVEN_FLAGS: ()})
    group = parser.add_argument_group("data")
    _add_reader_arguments(group)
    _add_filter_arguments(group)
    _add_split_arguments(group)


def _add_reader_arguments(group: argparse._ArgumentGroup) -> None:
    _add_column_arguments(group)
    _add_type_and_impression_arguments(group)
    _add_layout_and_time_arguments(group)


def _add_column_arguments(group: argparse._ArgumentGroup) -> None:
    """Add the format and the user, item and time columns."""
    group.add_argument(
        "--format",
        action=_RecordGiven,
        choices=FORMATS,
        default="auto",
        help="log format (default: auto, which picks it from the file name and first line, "
        "reads a .csv or .tsv file whose columns --user-col, --item-col or --time-col name as "
        "csv, and fails when the format is ambiguous)",
    )
    group.add_argument(
        "--user-col",
        action=_RecordGiven,
        help="user column: header name or 0-based position "
        f"(default: {_column_default('user', 0)})",
    )
    group.add_argument(
        "--item-col",
        action=_RecordGiven,
        help="item column: header name or 0-based position; any column can be the item, "
        f"for example `category` with --format taobao (default: {_column_default('item', 1)})",
    )
    group.add_argument(
        "--time-col",
        action=_RecordGiven,
        help="timestamp column: header name or 0-based position "
        f"(default: {_column_default('time', 2)})",
    )


def _add_type_and_impression_arguments(group: argparse._ArgumentGroup) -> None:
    """Add the event type and impression columns and the event types to keep."""
    group.add_argument(
        "--event-type-col",
        action=_RecordGiven,
        help="event type column (csv, jsonl): header name or 0-based position (default: none "
        "for csv and jsonl, so pass it to use --event-types there; taobao reads `behavior`)",
    )
    group.add_argument(
        "--event-types",
        action=_RecordGiven,
        help="comma-separated event types to keep, for example `pv` for Taobao page views "
        "(default: all)",
    )
    group.add_argument(
        "--impressions-col",
        action=_RecordGiven,
        help="column with the items shown at each event (csv, jsonl), separated by "
        "--impressions-sep (default: none, so events are ranked among the whole catalog; "
        "trivago reads its `impressions` column)",
    )
    group.add_argument(
        "--impressions-sep",
        action=_RecordGiven,
        default="|",
        help="separator inside the impressions column (default: |)",
    )


def _add_layout_and_time_arguments(group: argparse._ArgumentGroup) -> None:
    """Add the header, delimiter, time unit and session gap flags."""
    group.add_argument(
        "--no-header",
        action=_RecordGiven,
        dest="header",
        nargs=0,
        const=False,
        default=True,
        help="the csv file has no header row, so columns are 0-based positions (without "
        "this flag, a header row of numbers is rejected, because it is usually an event). "
        "The movielens and taobao readers ignore it, and jsonl, otto and trivago logs reject it",
    )
    group.add_argument(
        "--delimiter",
        action=_RecordGiven,
        help="field delimiter of a csv log; `\\t` means tab (default: from the suffix, "
        ".csv is a comma, .tsv and .tab a tab)",
    )
    group.add_argument(
        "--time-unit",
        action=_RecordGiven,
        choices=TIME_UNITS,
        help="unit of the timestamps in the file, seconds or milliseconds; never guessed. "
        "Milliseconds are stored as whole seconds and order the events within a second "
        "(default: s, except ms for --format otto)",
    )
    group.add_argument(
        "--session-gap",
        action=_RecordGiven,
        type=int,
        default=DEFAULT_SESSION_GAP,
        help=f"idle gap in seconds, 1 or more, above which a new session starts; a gap of "
        f"exactly this value stays in the session (default: {DEFAULT_SESSION_GAP})",
    )


def _column_default(role: str, position: int) -> str:
    """Describe the column that a reader picks for `role` when its flag is not given."""
    names = ", ".join(DEFAULT_COLUMNS[role])
    return (
        f"the first of {names} in a csv header or a jsonl record, or position {position} of a "
        "csv file with --no-header; movielens, taobao, otto and trivago use their own column"
    )


def _add_filter_arguments(group: argparse._ArgumentGroup) -> None:
    defaults = FilterConfig()
    group.add_argument(
        "--min-item-count",
        action=_RecordGiven,
        type=int,
        default=defaults.min_item_count,
        help=f"drop items with fewer interactions, in events; 0 keeps all "
        f"(default: {defaults.min_item_count})",
    )
    group.add_argument(
        "--min-user-events",
        action=_RecordGiven,
        type=int,
        default=defaults.min_user_events,
        help=f"drop users with fewer events; 0 keeps all (default: {defaults.min_user_events})",
    )
    group.add_argument(
        "--max-user-events",
        action=_RecordGiven,
        type=int,
        default=defaults.max_user_events,
        help=f"drop users with more events; 0 means no maximum "
        f"(default: {defaults.max_user_events})",
    )


def _add_split_arguments(group: argparse._ArgumentGroup) -> None:
    split = SplitConfig()
    group.add_argument(
        "--split",
        action=_RecordGiven,
        choices=SPLIT_KINDS,
        default=split.kind,
        help="cold: disjoint train, validation and test users; warm: the same users split by "
        f"time (default: {split.kind})",
    )
    group.add_argument(
        "--split-seed",
        action=_RecordGiven,
        type=command_line.seed,
        default=split.seed,
        help=f"seed of the user shuffle of the cold-start split (default: {split.seed})",
    )
    group.add_argument(
        "--train-fraction",
        action=_RecordGiven,
        type=command_line.float_type,
        default=split.train_fraction,
        help="fraction of users (cold) or of the event-time quantile (warm) for training "
        f"(default: {split.train_fraction})",
    )
    group.add_argument(
        "--valid-fraction",
        action=_RecordGiven,
        type=command_line.float_type,
        default=split.valid_fraction,
        help="fraction for validation; the test part gets the rest "
        f"(default: {split.valid_fraction})",
    )


def _delimiter(value: str | None) -> str | None:
    if value is None:
        return None
    return value.replace("\\t", "\t")


def _event_types(value: str | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    types = tuple(part.strip() for part in value.split(",") if part.strip())
    if not types:
        raise DataError(f"--event-types {value!r} names no event type: give e.g. `pv` or `clicks`")
    return types


def data_config_from_args(args: argparse.Namespace, prepared_accepted: bool = False) -> DataConfig:
    """Build the `DataConfig` from the flags that `add_data_arguments` added.

    A part or a JSON file of a prepared folder in place of the log raises ConfigError, and so
    does a prepared folder unless `prepared_accepted`. Pass `prepared_accepted` for a command
    that loads prepared folders with `load_dataset`, so that the messages name the folder.
    """
    if args.data is None:
        raise DataError("no interaction log given: pass the log FILE")
    path = Path(args.data)
    check_not_prepared_path(path, prepared_accepted)
    return data_config_from_flags(args, path)


def check_not_prepared_path(path: Path, prepared_accepted: bool) -> None:
    """Raise ConfigError or DataError when `path` is a prepared folder or a path inside one.

    With `prepared_accepted`, a prepared folder passes, and a folder without prepared.json
    raises DataError that names the folders it accepts.
    """
    # The prepared module imports this one, so it is imported here.
    from hiertcn.data.prepared import MANIFEST, SUMMARY, is_prepared_folder, recorded_log

    log_only = "and this command reads only log files"
    if is_prepared_folder(path):
        if prepared_accepted:
            return
        raise ConfigError(
            f"{path} is a folder written by `hiertcn data prepare`, {log_only}: pass the log "
            f"file that the folder was made from{_recorded_log_text(recorded_log(path))}"
        )
    parent = path.parent
    if is_prepared_folder(parent) and (path.is_dir() or path.name in (MANIFEST, SUMMARY)):
        kind = "part" if path.is_dir() else "file"
        if prepared_accepted:
            raise ConfigError(
                f"{path} is a {kind} of the prepared folder {parent}: pass the folder {parent}"
            )
        raise ConfigError(
            f"{path} is a {kind} of the prepared folder {parent}, {log_only}: pass the log file "
            f"that the folder was made from{_recorded_log_text(recorded_log(parent))}"
        )
    if prepared_accepted and path.is_dir():
        raise DataError(
            f"{path} is a folder without {MANIFEST}: pass a log file (for MovieLens, the "
            "ratings.csv, ratings.dat or u.data inside it), or a folder written by "
            f"`hiertcn data prepare`, which contains {MANIFEST}"
        )


def _recorded_log_text(log: str | None) -> str:
    return "" if log is None else f", {log}"


def data_config_from_flags(args: argparse.Namespace, path: Path) -> DataConfig:
    """Build the `DataConfig` of the log `path` from the data flags in `args`."""
    if args.session_gap < 1:
        gap = command_line.format_number(args.session_gap)
        raise ConfigError(
            f"--session-gap {gap} is invalid: give a positive number of seconds "
            f"(default: {DEFAULT_SESSION_GAP})"
        )
    reader = ReaderConfig(
        format=args.format,
        user_col=args.user_col,
        item_col=args.item_col,
        time_col=args.time_col,
        event_type_col=args.event_type_col,
        impressions_col=args.impressions_col,
        impressions_sep=args.impressions_sep,
        header=args.header,
        delimiter=_delimiter(args.delimiter),
        time_unit=args.time_unit,
        event_types=_event_types(args.event_types),
    )
    filters = FilterConfig(
        min_item_count=args.min_item_count,
        min_user_events=args.min_user_events,
        max_user_events=args.max_user_events or None,
    )
    split = SplitConfig(
        kind=args.split,
        seed=args.split_seed,
        train_fraction=args.train_fraction,
        valid_fraction=args.valid_fraction,
    )
    return DataConfig(
        path=path,
        reader=reader,
        session_gap=args.session_gap,
        filters=filters,
        split=split,
    )


def prepare_log(config: DataConfig) -> tuple[EventLog, FilterReport]:
    """Read, filter and sessionize the log of `config`, without splitting it."""
    # The raw log is released once filtered, so that its memory is free for the event log.
    filtered, report = filter_log(read_log(config.path, config.reader), config.filters)
    log = build_event_log(filtered, gap=config.session_gap)
    return log, report


def load_dataset_from_config(config: DataConfig) -> Dataset:
    """Read, filter, sessionize and split the log of `config`."""
    log, report = prepare_log(config)
    split = split_log(log, config.split)
    parts = {"all": log, "train": split.train, "valid": split.valid, "test": split.test}
    # The summary records the format that `auto` picked and the unit the reader used, as
    # prepared.json does, so that both name the settings that read the log.
    reader = resolve_reader_config(config.path, config.reader)
    summary: dict[str, object] = {
        "source": str(config.path),
        "format": reader.format,
        "reader": _reader_summary(reader),
        "session_gap": config.session_gap,
        "filters": {
            "min_item_count": config.filters.min_item_count,
            "min_user_events": config.filters.min_user_events,
            "max_user_events": config.filters.max_user_events,
        },
        "filter_report": report.to_dict(),
        "split": {
            "kind": config.split.kind,
            "seed": config.split.seed,
            "train_fraction": config.split.train_fraction,
            "valid_fraction": config.split.valid_fraction,
        },
        "num_items": log.num_items,
        "stats": {name: compute_stats(part).to_dict() for name, part in parts.items()},
        "targets": {name: part.num_targets for name, part in parts.items()},
    }
    return Dataset(
        log=log,
        train=split.train,
        valid=split.valid,
        test=split.test,
        vocab=log.vocab,
        filter_report=report,
        summary=summary,
    )


def _reader_summary(reader: ReaderConfig) -> dict[str, object]:
    """Return the reader settings besides the format (a summary entry of its own), JSON-able."""
    values = dataclasses.asdict(reader)
    del values["format"]
    if values["event_types"] is not None:
        values["event_types"] = list(values["event_types"])
    return values


def load_dataset(args: argparse.Namespace) -> Dataset:
    """Load the dataset that the flags of `add_data_arguments` describe.

    When the path is a folder written by `hiertcn data prepare`, the dataset is loaded from it,
    and a data flag that differs from the value the folder records raises ConfigError.
    """
    # The prepared module imports this one, so it is imported here.
    from hiertcn.data.prepared import is_prepared_folder, load_prepared_from_args

    if args.data is not None and is_prepared_folder(Path(args.data)):
        return load_prepared_from_args(args)
    return load_dataset_from_config(data_config_from_args(args, prepared_accepted=True))
