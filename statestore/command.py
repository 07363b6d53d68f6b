"""The `hiertcn-stream state` commands: inspect and maintain an LMDB state store.

Usage:
    hiertcn-stream state --state-dir DIR stats
    hiertcn-stream state --state-dir DIR get USER
    hiertcn-stream state --state-dir DIR export FILE [--format jsonl|msgpack]
    hiertcn-stream state --state-dir DIR import FILE
    hiertcn-stream state --state-dir DIR compact OUT
    hiertcn-stream state --state-dir DIR evict --inactive-days N [--now | --at TIME] [--dry-run]

Every command may run while workers use the same store: each opens the environment itself and
works in short transactions. Errors derive from `StateStoreError`, whose `exit_code` is the exit
status to return.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

from statestore import maintenance
from statestore.errors import StoreConfigError, UserNotFoundError
from statestore.store import StateStore, StoreConfig, format_size

logger = logging.getLogger(__name__)

# Seconds the newest event time may lie after the current time before `evict` rejects it as its
# default reference time. The worker rejects events more than minutes ahead of its clock, so a
# later time comes from an event accepted before that check or from a clock that is wrong.
FUTURE_REFERENCE_SECONDS = 86_400.0


def register(subparsers: Any) -> None:
    """Add the `state` command and its subcommands to the `hiertcn-stream` parser."""
    parser = subparsers.add_parser(
        "state",
        help="inspect and maintain the LMDB state store",
        description="Inspect and maintain the LMDB store of user states, partition positions "
        "and session timers. Safe to run while workers use the store.",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        required=True,
        metavar="DIR",
        help="the state directory (LMDB environment)",
    )
    actions = parser.add_subparsers(dest="state_command", metavar="ACTION", required=True)

    stats = actions.add_parser(
        "stats",
        help="print user, session, partition and map-size counts",
        description="Print the number of users and open sessions, the LMDB map size and the "
        "bytes in use, the reader slots in use, the store's metadata (schema and bundle "
        "version), and the next offset and watermark of every partition position.",
    )
    stats.add_argument("--json", action="store_true", help="print one JSON object")
    stats.set_defaults(func=run_stats)

    get = actions.add_parser(
        "get",
        help="print the state of one user as JSON",
        description="Print the stored state of USER as one JSON object: GRU state, open "
        "session items and counters, last event time, last user embedding and partition.",
    )
    get.add_argument("user", metavar="USER", help="external user id")
    get.set_defaults(func=run_get)

    export = actions.add_parser(
        "export",
        help="write every state and partition position to FILE",
        description="Write every partition position and user state to FILE, as JSON lines or "
        "msgpack, for a backup or a move to another store with `import`.",
    )
    export.add_argument("file", metavar="FILE", type=Path, help="output file, overwritten")
    export.add_argument(
        "--format",
        choices=maintenance.EXPORT_FORMATS,
        help="file format (default: msgpack for a .msgpack file, else JSON lines)",
    )
    export.set_defaults(func=run_export)

    load = actions.add_parser(
        "import",
        help="write the states and positions of an export file",
        description="Write the user states and partition positions of FILE, which `export` "
        "wrote, into the store, and create the store when --state-dir has none. A user or "
        "position that is already in the store is overwritten.",
    )
    load.add_argument("file", metavar="FILE", type=Path, help="a file that `export` wrote")
    load.set_defaults(func=run_import)

    compact = actions.add_parser(
        "compact",
        help="write a compacted copy of the store to OUT",
        description="Copy the store into the new or empty directory OUT without its free "
        "pages, so the copy can be smaller. The store in --state-dir is not changed.",
    )
    compact.add_argument("out", metavar="OUT", type=Path, help="new or empty output directory")
    compact.set_defaults(func=run_compact)

    evict = actions.add_parser(
        "evict",
        help="delete users inactive for N days",
        description="Delete users whose last event is more than N days older than a "
        "reference time. Without --now or --at, the reference time is the newest event time "
        "(last_ts) of any user in the store, not the current time, so a store that has not "
        "seen events for a while keeps its users. A newest event time more than a day after "
        "the current time is rejected, because it comes from an event with a wrong time or "
        "from a wrong clock; then pass --now or --at.",
    )
    evict.add_argument(
        "--inactive-days",
        type=float,
        required=True,
        metavar="N",
        help="inactivity threshold in days, a finite number >= 0",
    )
    reference = evict.add_mutually_exclusive_group()
    reference.add_argument(
        "--now", action="store_true", help="measure inactivity from the current wall-clock time"
    )
    reference.add_argument(
        "--at",
        type=float,
        metavar="TIME",
        help="measure inactivity from TIME, in seconds since the Unix epoch (not milliseconds)",
    )
    evict.add_argument(
        "--dry-run",
        action="store_true",
        help="print how many users would be deleted, and delete nothing",
    )
    evict.set_defaults(func=run_evict)


def open_store(state_dir: Path, create: bool = False) -> StateStore:
    """Open the store in `state_dir`; unless `create`, raise when it contains no store."""
    if not create and not (state_dir / "data.mdb").is_file():
        raise StoreConfigError(
            f"state directory {state_dir} contains no LMDB store (data.mdb not found): "
            "check --state-dir"
        )
    return StateStore(StoreConfig(path=state_dir))


def run_stats(args: argparse.Namespace) -> int:
    """Print the counts and sizes of the store."""
    with open_store(args.state_dir) as store:
        stats = maintenance.collect_stats(store)
    positions = [
        {"topic": topic, "partition": partition, **vars(position)}
        for (topic, partition), position in sorted(stats.positions.items())
    ]
    for row in positions:
        # A partition whose records were all dead letters has no event time yet (-inf), which
        # JSON cannot hold, so it is written as null.
        if not math.isfinite(row["watermark"]):
            row["watermark"] = None
    if args.json:
        summary = {**vars(stats), "positions": positions}
        print(json.dumps(summary, indent=2, default=str))
        return 0
    print(f"state directory  {args.state_dir}")
    print(f"users            {stats.users}")
    print(f"open sessions    {stats.open_sessions}")
    print(f"map size         {format_size(stats.map_size)}")
    print(f"map in use       {format_size(stats.used_bytes)}")
    print(f"readers          {stats.readers}")
    for name, value in sorted(stats.meta.items()):
        print(f"{name:<16} {value}")
    for row in positions:
        print(
            f"position         {row['topic']}[{row['partition']}]@{row['next_offset']} "
            f"watermark {_format_watermark(row['watermark'])}"
        )
    return 0


def run_get(args: argparse.Namespace) -> int:
    """Print the state of one user as JSON."""
    with open_store(args.state_dir) as store:
        state = store.read([args.user]).get(args.user)
    if state is None:
        raise UserNotFoundError(
            f"user {args.user!r} not found in state store {args.state_dir}: check the id, "
            "which is the external user id as a string"
        )
    print(json.dumps({"user": args.user, **maintenance.state_to_json(state)}))
    return 0


def run_export(args: argparse.Namespace) -> int:
    """Write the store to a file."""
    fmt = maintenance.format_of(args.file, args.format)
    with open_store(args.state_dir) as store:
        users, positions = maintenance.export_store(store, args.file, fmt)
    print(f"exported {users} users and {positions} partition positions to {args.file} ({fmt})")
    return 0


def run_import(args: argparse.Namespace) -> int:
    """Commit the records of an export file into the store, creating it when missing."""
    if not args.file.is_file():
        raise StoreConfigError(f"import file {args.file} not found: check the path")
    with open_store(args.state_dir, create=True) as store:
        users, positions = maintenance.import_store(store, args.file)
    print(f"imported {users} users and {positions} partition positions from {args.file}")
    return 0


def run_compact(args: argparse.Namespace) -> int:
    """Write a compacted copy of the store."""
    with open_store(args.state_dir) as store:
        store.copy_compacted(args.out)
    size = (args.out / "data.mdb").stat().st_size
    print(f"wrote a compacted copy of {args.state_dir} to {args.out} ({format_size(size)})")
    return 0


def run_evict(args: argparse.Namespace) -> int:
    """Delete inactive users (or only count them with --dry-run) and print how many."""
    now = time.time() if args.now else args.at
    # Checked before the store is opened, so a bad value never reaches the deletion.
    maintenance.check_eviction_args(args.inactive_days, now)
    with open_store(args.state_dir) as store:
        if now is None:
            now = _newest_event_time(store)
        evicted, cutoff = maintenance.evict_inactive(
            store, args.inactive_days, now, dry_run=args.dry_run
        )
    verb = "would evict" if args.dry_run else "evicted"
    if cutoff is None:
        print(f"{verb} 0 users: the store contains no users")
        return 0
    print(f"{verb} {evicted} users whose last event is before {_format_time(cutoff)}")
    return 0


def _newest_event_time(store: StateStore) -> float | None:
    """Return the default reference time of `evict`; raise when it lies in the future."""
    newest = maintenance.newest_event_time(store)
    wall_clock = time.time()
    if newest is not None and newest - wall_clock > FUTURE_REFERENCE_SECONDS:
        raise StoreConfigError(
            f"the newest event time in state store {store.path} is {_format_time(newest)}, "
            f"{(newest - wall_clock) / 86_400:.0f} days after the current time, so inactivity "
            "would be measured from the future: pass --now to measure from the current time, "
            "or --at TIME"
        )
    return newest


def _format_watermark(watermark: float | None) -> str:
    return "none (no event time yet)" if watermark is None else _format_time(watermark)


def _format_time(ts: float) -> str:
    try:
        text = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
    except (OverflowError, OSError, ValueError):
        # Outside the platform's time_t range, for example a cutoff far before year 1.
        return f"{ts:.3f}"
    return f"{text} ({ts:.3f})"
