"""`hiertcn data`: statistics of an interaction log, saving its split, and synthetic logs.

hiertcn data stats FILE|DIR [--format ...] [filter flags] [--splits] [--json]
hiertcn data prepare FILE --out DIR [data flags] [--force]
hiertcn data synthetic OUT.csv [--users N] [--items N] [--seed N] [--force]
hiertcn data events FILE|DIR --out EVENTS.jsonl [--part test] [data flags] [--force]

`hiertcn train`, `hiertcn evaluate` and `hiertcn data stats` take the folder DIR that `prepare`
writes in place of the log FILE, and then skip reading, filtering and splitting. The folder
records its data flags in prepared.json, with the format and time unit that the reader used, and
a data flag given with it must equal the recorded value. An --out that already contains a
prepared folder is replaced only with --force. Python code reads one part with
`hiertcn.data.EventLog.load(DIR / "train")`, or the whole split with
`hiertcn.data.prepared.load_prepared(DIR)`.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from hiertcn import command_line
from hiertcn.data.counts import count_noun
from hiertcn.data.log import EventLog
from hiertcn.data.options import (
    add_data_arguments,
    data_config_from_args,
    load_dataset,
    prepare_log,
)
from hiertcn.data.prepared import (
    enclosing_prepared_folder,
    is_prepared_folder,
    prepare_dataset,
    save_prepared,
)
from hiertcn.data.prepared_files import check_prepare_out, remove_prepared
from hiertcn.data.stats import (
    WARM_SPLIT_NOTE,
    compute_impression_stats,
    compute_stats,
    format_impression_line,
    format_stats_table,
)
from hiertcn.data.synthetic import MAX_USERS, SyntheticConfig, generate_synthetic_log
from hiertcn.errors import ConfigError, DataError

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `data` command and its subcommands."""
    parser = subparsers.add_parser(
        "data",
        help="describe, prepare or generate interaction logs",
        description="Describe, prepare or generate interaction logs.",
    )
    commands = parser.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)

    _register_stats(commands)
    _register_prepare(commands)
    _register_synthetic(commands)
    _register_events(commands)


def _register_stats(commands: argparse._SubParsersAction) -> None:
    stats = commands.add_parser(
        "stats",
        help="print users, items, events and sessions of a filtered log",
        description="Read, filter and sessionize a log, or load a folder written by "
        "`hiertcn data prepare`, then print users, items, events, sessions, events per session "
        "and sessions per user (mean and standard deviation). For a log with impression lists "
        "it also prints how many events carry a list, the mean and max list length, and how "
        "many entries are items outside the vocabulary.",
    )
    add_data_arguments(stats, prepared_folder=True)
    stats.add_argument(
        "--splits", action="store_true", help="also print the train, validation and test parts"
    )
    stats.add_argument("--json", action="store_true", help="print JSON instead of a table")
    stats.set_defaults(func=run_stats)


def _register_prepare(commands: argparse._SubParsersAction) -> None:
    prepare = commands.add_parser(
        "prepare",
        help="save the split of a log as memory-mappable event logs",
        description="Read, filter, sessionize and split a log, and save the whole filtered "
        "log (all/), the train/, valid/ and test/ event logs, summary.json and prepared.json "
        "under --out. prepared.json records the log's absolute path, the data flags with the "
        "format and time unit that the reader used, and the reader's warnings, which are "
        "logged again on each load. hiertcn train, evaluate and data stats take this folder in "
        "place of the log and skip reading, filtering and splitting. Python code reads one part "
        "with hiertcn.data.EventLog.load(folder).",
    )
    add_data_arguments(prepare)
    prepare.add_argument(
        "--out",
        type=Path,
        required=True,
        metavar="DIR",
        help="output folder: a new or empty folder, or a prepared folder with --force",
    )
    prepare.add_argument(
        "--force",
        action="store_true",
        help="replace the prepared folder in --out (default: a used --out is rejected). Only "
        "the files that data prepare writes are deleted, and a folder with other files is "
        "rejected",
    )
    prepare.set_defaults(func=run_prepare)


def _register_synthetic(commands: argparse._SubParsersAction) -> None:
    synthetic = commands.add_parser(
        "synthetic",
        help="write a synthetic CSV log (user,item,timestamp in seconds)",
        description="Write a synthetic log of users with stable tastes and drifting "
        "in-session interest; read it back with --format csv.",
    )
    synthetic.add_argument("out", type=Path, metavar="OUT", help="CSV file to write")
    synthetic.add_argument(
        "--users",
        type=int,
        default=1000,
        help=f"number of users, from 1 to {MAX_USERS}; each gets about 48 events, about 1 KB "
        "of CSV (default: 1000)",
    )
    synthetic.add_argument(
        "--items",
        type=int,
        default=2000,
        help=f"number of items, at least {SyntheticConfig().num_clusters}, one per taste "
        "cluster (default: 2000)",
    )
    synthetic.add_argument(
        "--seed", type=command_line.seed, default=0, help="random seed (default: 0)"
    )
    synthetic.add_argument(
        "--force",
        action="store_true",
        help="replace OUT if it already exists (default: an existing OUT is rejected)",
    )
    synthetic.set_defaults(func=run_synthetic)


def _register_events(commands: argparse._SubParsersAction) -> None:
    events = commands.add_parser(
        "events",
        help="write one part of the split as a JSON Lines event file for hiertcn-stream replay",
        description="Read, filter, sessionize and split a log with the data flags of training "
        "(or load a folder written by `hiertcn data prepare`), and write the events of one part "
        "as JSON Lines in the stream's input format: user, item, ts in seconds, event_id "
        "PART-N, and impressions when the log has them. Lines are sorted by time, so "
        "`hiertcn-stream replay --events OUT` replays the part as the stream would deliver it. "
        "With the default cold split, replay then scores the events that `hiertcn evaluate` "
        "ranks. A warm split's valid and test parts also hold each user's earlier events, "
        "which evaluate does not rank: they get type context, and `hiertcn-stream replay "
        "--context-type context` leaves them out of its metrics too.",
    )
    add_data_arguments(events, prepared_folder=True)
    events.add_argument(
        "--part",
        choices=("train", "valid", "test", "all"),
        default="test",
        help="the part of the split to write; all is the whole filtered log (default: test)",
    )
    events.add_argument(
        "--out", type=Path, required=True, metavar="FILE", help="JSON Lines file to write"
    )
    events.add_argument(
        "--force",
        action="store_true",
        help="replace --out if it already exists (default: an existing file is rejected)",
    )
    events.set_defaults(func=run_events)


def run_stats(args: argparse.Namespace) -> int:
    """Print the statistics of the filtered log, and of its split with --splits."""
    if args.splits or (args.data is not None and is_prepared_folder(Path(args.data))):
        dataset = load_dataset(args)
        parts = {"all": dataset.log}
        if args.splits:
            parts.update(train=dataset.train, valid=dataset.valid, test=dataset.test)
        report = dataset.filter_report
        source, session_gap = dataset.summary["source"], dataset.summary["session_gap"]
        split_kind = dataset.summary["split"]["kind"]
    else:
        config = data_config_from_args(args, prepared_accepted=True)
        log, report = prepare_log(config)
        parts = {"all": log}
        source, session_gap, split_kind = str(config.path), config.session_gap, config.split.kind
    # filter_log has already logged the filter report line by line.
    stats = {name: compute_stats(part) for name, part in parts.items()}
    impressions = {name: compute_impression_stats(part) for name, part in parts.items()}
    if args.json:
        output = {
            "source": source,
            "session_gap": session_gap,
            "filter_report": report.to_dict(),
            "stats": {name: value.to_dict() for name, value in stats.items()},
            # None for a log without impression lists.
            "impressions": {
                name: None if value is None else value.to_dict()
                for name, value in impressions.items()
            },
        }
        print(json.dumps(output, indent=2))
        return 0

    print(format_stats_table(stats))
    if args.splits and split_kind == "warm":
        print(WARM_SPLIT_NOTE)
    for name, value in impressions.items():
        if value is not None:
            print(format_impression_line(name, value))
    return 0


def run_prepare(args: argparse.Namespace) -> int:
    """Save the whole filtered log, its split, the summary and the data flags under --out."""
    out: Path = args.out
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file: pass a folder")
    _check_ancestors_are_folders(out, "--out")
    check_prepare_out(out, args.force)
    config = data_config_from_args(args)
    dataset, warnings = prepare_dataset(config)
    try:
        # The old folder is deleted only once the new data is ready, so a bad log keeps it.
        remove_prepared(out)
        save_prepared(dataset, config, out, warnings)
    except OSError as error:
        raise DataError(
            f"cannot write the split under --out {out}: {error.strerror} ({error.filename}): "
            "pass a folder that can be created and written"
        ) from None
    print(f"saved all/, train/, valid/, test/, summary.json and prepared.json under {out}")
    return 0


def run_events(args: argparse.Namespace) -> int:
    """Write the events of one part of the split to --out as JSON Lines."""
    from hiertcn.data.event_export import write_event_file

    out: Path = args.out
    if out.is_dir():
        # A file inside a prepared folder is rejected below, so suggest one beside it there.
        example = out.parent if is_prepared_folder(out) else out
        raise ConfigError(
            f"--out {out} is a folder: pass a file path, e.g. {example / f'{args.part}.jsonl'}"
        )
    if out.exists() and not args.force:
        raise ConfigError(
            f"--out {out} already exists: pass --force to replace it, or another file path"
        )
    _check_ancestors_are_folders(out, "--out")
    data = None if args.data is None else Path(args.data)
    if data is not None and data.exists() and out.resolve() == data.resolve():
        raise ConfigError(f"--out {out} is the input log: pass a new file path")
    prepared = enclosing_prepared_folder(out.parent)
    if prepared is not None:
        raise ConfigError(
            f"--out {out} is inside the prepared folder {prepared}, which only "
            "`hiertcn data prepare` writes: pass a path outside it"
        )
    log = _load_part(args)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        count = write_event_file(log, args.part, out)
    except OSError as error:
        raise DataError(
            f"cannot write --out {out}: {error.strerror} ({error.filename}): "
            "pass a file path in a folder that can be created and written"
        ) from None
    events, users = count_noun(count, "event"), count_noun(log.num_users, "user")
    print(f"wrote {events} of {users} ({args.part} part) to {out}")
    context = count - log.num_targets
    if context:
        print(
            f"{context} of them are earlier events of the same users, written with type "
            "context: replay with `--context-type context` to count only the others, as "
            "`hiertcn evaluate` does"
        )
    return 0


def _load_part(args: argparse.Namespace) -> EventLog:
    """Return the part of the split that --part names.

    `all` from a log skips the split, so that a log too small to split can still be written.
    """
    if args.part == "all" and not (args.data is not None and is_prepared_folder(Path(args.data))):
        config = data_config_from_args(args, prepared_accepted=True)
        log, _report = prepare_log(config)
        return log
    dataset = load_dataset(args)
    return dataset.log if args.part == "all" else getattr(dataset, args.part)


def _check_ancestors_are_folders(path: Path, label: str) -> None:
    """Raise ConfigError when the nearest existing folder above `path` is a file."""
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(
                    f"{label} {path} is inside {parent}, which is a file: pass a path in a folder"
                )
            return


def run_synthetic(args: argparse.Namespace) -> int:
    """Write the synthetic log; an existing OUT is replaced only with --force."""
    out: Path = args.out
    if out.is_dir():
        raise ConfigError(f"OUT {out} is a folder: pass a file path, e.g. {out / 'synthetic.csv'}")
    if out.exists() and not args.force:
        raise ConfigError(
            f"OUT {out} already exists: pass --force to replace it, or another file path"
        )
    _check_ancestors_are_folders(out, "OUT")
    if not 1 <= args.users <= MAX_USERS:
        raise ConfigError(
            f"--users {args.users} is invalid: use 1 to {MAX_USERS}, because every event is "
            "held in memory until the log is written"
        )
    try:
        path = generate_synthetic_log(args.users, args.items, args.seed, out)
    except OSError as error:
        raise DataError(
            f"cannot write OUT {out}: {error.strerror} ({error.filename}): "
            "pass a file path in a folder that can be created and written"
        ) from None
    print(f"wrote {path}")
    return 0
