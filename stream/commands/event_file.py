"""The event-file flags that `replay` and `produce` share, and the read of the file they name."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

from stream.records import ORDERS, RECORD_FORMATS, Record, read_records


def add_event_file_arguments(
    parser: argparse.ArgumentParser, verb: str, time_unit: str = "in seconds"
) -> None:
    """Add the event-file flags that replay and produce share (`--events`, `--format`, ...).

    `verb` names what the command does with the file ("replay", "publish") in the help text,
    and `time_unit` states the unit of a CSV time column.
    """
    parser.add_argument(
        "--events", type=Path, required=True, metavar="FILE", help=f"event-log file to {verb}"
    )
    parser.add_argument(
        "--format",
        choices=RECORD_FORMATS,
        default="auto",
        help="format of --events (default: from the file name and first line)",
    )
    _add_column_arguments(parser, time_unit)
    parser.add_argument(
        "--otto-time-unit",
        choices=("s", "ms"),
        default=None,
        help="unit of the timestamps of an OTTO file: ms as in OTTO's published files, or s for "
        "a converted copy (default: ms). The pipeline reads them in seconds either way",
    )
    parser.add_argument(
        "--order",
        choices=ORDERS,
        default="file",
        help=f"{verb} the records in file order, or sorted by event time (stable, and by "
        "millisecond time within a second of an OTTO file, as in `hiertcn data`). File order "
        "is right only for a file sorted by time: session timers follow the newest event time "
        "read so far, so in a log grouped by user they close sessions early (default: file)",
    )


def _add_column_arguments(parser: argparse.ArgumentParser, time_unit: str) -> None:
    """Add `--user-col`, `--item-col`, `--time-col` and `--no-header`."""
    parser.add_argument(
        "--user-col",
        default=None,
        metavar="NAME",
        help="user column of a CSV or TSV file (header name or 0-based position), or user key "
        "of a JSON Lines file (default: user)",
    )
    parser.add_argument(
        "--item-col",
        default=None,
        metavar="NAME",
        help="item column of a CSV or TSV file (header name or 0-based position), or item key "
        "of a JSON Lines file (default: item)",
    )
    parser.add_argument(
        "--time-col",
        default=None,
        metavar="NAME",
        help=f"time column of a CSV or TSV file (header name or 0-based position), or time key "
        f"of a JSON Lines file, {time_unit} (default: ts in JSON Lines, the first of ts, "
        "timestamp, time, event_time in a CSV header). The three column flags also apply to "
        "--format movielens and taobao, as in `hiertcn data`",
    )
    parser.add_argument(
        "--no-header",
        dest="header",
        action="store_false",
        help="the CSV or TSV file has no header row, so --user-col, --item-col and --time-col "
        "are 0-based positions (default: 0, 1 and 2), as in `hiertcn data --no-header`. "
        "Without this flag, a header row whose cells are all numbers is rejected, because it "
        "is usually an event",
    )


def read_records_from_args(args: argparse.Namespace, ts_unit: str = "s") -> Iterator[Record]:
    """Read the --events file with the flags that `add_event_file_arguments` declares.

    `read_records` checks the file and the flags now and yields the records lazily. `ts_unit`
    is the unit in which the caller reads `ts`.
    """
    return read_records(
        args.events,
        args.format,
        args.order,
        args.time_col,
        ts_unit,
        otto_time_unit=args.otto_time_unit,
        user_col=args.user_col,
        item_col=args.item_col,
        header=args.header,
    )
