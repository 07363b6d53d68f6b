"""The `hiertcn-stream state` commands: inspect and maintain an LMDB state store.

Usage (`--state-dir DIR` may also follow the action):
    hiertcn-stream state --state-dir DIR stats
    hiertcn-stream state --state-dir DIR get USER [--bundle BUNDLE]
    hiertcn-stream state --state-dir DIR export FILE|- [--format jsonl|msgpack] [--force]
    hiertcn-stream state --state-dir DIR import FILE
    hiertcn-stream state --state-dir DIR compact OUT
    hiertcn-stream state --state-dir DIR evict --inactive-days N [--now | --at TIME]
        [--allow-future] [--dry-run]

Every command except `import` may run while workers use the same store: each opens the
environment itself and works in short transactions. `import` overwrites partition positions, so
it takes the writers lock of the state directory exclusively and rejects a directory that a pool
or a replay has open (`statestore.locks`). Errors derive from `StateStoreError`, whose
`exit_code` is the exit status to return.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from hiertcn.command_line import float_type
from statestore import export, import_file, locks, maintenance
from statestore.bundle_meta import describe_catalog, read_history
from statestore.catalog import BundleCatalog, read_catalog
from statestore.errors import (
    CatalogMismatchError,
    StateStoreError,
    StoreConfigError,
    UserNotFoundError,
)
from statestore.state import PartitionPosition
from statestore.store import StateStore, StoreConfig, file_in_path, format_size

logger = logging.getLogger(__name__)

# Seconds a reference time of `evict` (the newest event time, or --at) may lie after the current
# time unless --allow-future is given. The worker rejects events more than minutes ahead of its
# clock. So a later newest event time comes from an event accepted before that check or from a
# wrong clock, and a later --at is most likely a typo.
FUTURE_REFERENCE_SECONDS = 86_400.0
# Help of --state-dir, which may come before or after the action, so argparse cannot require it.
_STATE_DIR_HELP = "the state directory (LMDB environment); required, before or after ACTION"
_GET_EXIT_STATUS = (
    "exit status: 0 when the state was printed; 1 when USER is not in the store or the store "
    "fails; 2 for invalid input: a missing --state-dir, a directory without a store, or a "
    "--bundle whose catalog differs from the store's"
)


def register(subparsers: Any) -> None:
    """Add the `state` command and its subcommands to the `hiertcn-stream` parser."""
    parser = subparsers.add_parser(
        "state",
        help="inspect and maintain the LMDB state store",
        description="Inspect and maintain the LMDB store of user states, partition positions "
        "and session timers. Every action except import may run while workers use the store; "
        "import rejects a state directory that a worker pool or a replay has open.",
    )
    parser.add_argument("--state-dir", type=Path, metavar="DIR", help=_STATE_DIR_HELP)
    actions = parser.add_subparsers(dest="state_command", metavar="ACTION", required=True)
    _register_stats_and_get(actions)
    _register_export_and_import(actions)
    _register_compact(actions)
    _register_evict(actions)
    for action in {id(child): child for child in actions.choices.values()}.values():
        # A separate attribute, so that `state_dir_of` detects a directory given on both sides.
        action.add_argument(
            "--state-dir", type=Path, metavar="DIR", dest="state_dir_after", help=_STATE_DIR_HELP
        )


def _register_stats_and_get(actions: Any) -> None:
    stats = actions.add_parser(
        "stats",
        help="print user, session, partition and map-size counts",
        description="Print the number of users and open sessions, the LMDB map size recorded "
        "in data.mdb by the store's writers and the bytes in use, the reader slots in use, the "
        "store's metadata (schema version, bundle version, state sizes and item catalog), the "
        "history of the bundles that opened the store for writing, and the next offset and "
        "watermark of every partition position.",
    )
    stats.add_argument("--json", action="store_true", help="print one JSON object")
    stats.set_defaults(func=run_stats)

    get = actions.add_parser(
        "get",
        help="print the state of one user as JSON",
        description="Print the stored state of USER as one JSON object: GRU state, open "
        "session items (as rows of the bundle's item catalog) and counters, last event time, "
        "last user embedding and partition. With --bundle, the object also lists the item ids "
        "of the open session.",
        epilog=_GET_EXIT_STATUS,
    )
    get.add_argument("user", metavar="USER", help="external user id")
    get.add_argument(
        "--bundle",
        type=Path,
        metavar="DIR",
        help="model bundle directory whose item_ids.json maps the session's item rows to item "
        "ids; it must have the catalog that the store records",
    )
    get.set_defaults(func=run_get)


def _register_export_and_import(actions: Any) -> None:
    dump = actions.add_parser(
        "export",
        help="write every state and partition position to FILE",
        description="Write every partition position and user state to FILE, as JSON lines or "
        "msgpack, for a backup or a move to another store with `import`. The file starts with "
        "the store's bundle version and state sizes and ends with the record counts, so "
        "`import` can tell a complete file from a cut one. The file appears under its name "
        "only once it is complete.",
    )
    dump.add_argument(
        "file",
        metavar="FILE",
        type=Path,
        help="output file, or - for standard output (the summary line then goes to stderr)",
    )
    dump.add_argument(
        "--format",
        choices=export.EXPORT_FORMATS,
        help="file format (default: msgpack for a .msgpack file, else JSON lines)",
    )
    dump.add_argument("--force", action="store_true", help="replace FILE if it exists")
    dump.set_defaults(func=run_export)

    load = actions.add_parser(
        "import",
        help="write the states and positions of an export file",
        description="Write the user states and partition positions of FILE, which `export` "
        "wrote, into the store, and create the store when --state-dir has none. A user or "
        "position that is already in the store is overwritten. The whole file is checked "
        "before anything is written: an incomplete file, or states whose sizes or item catalog "
        "differ from those of the users already in the store, are rejected. A new store records "
        "the bundle version, state sizes and catalog of the file. Stop the worker pools and "
        "replays that use the store first: import rejects a state directory that one of them "
        "has open, because it would rewind their partition positions.",
    )
    load.add_argument("file", metavar="FILE", type=Path, help="a file that `export` wrote")
    load.set_defaults(func=run_import)


def _register_compact(actions: Any) -> None:
    compact = actions.add_parser(
        "compact",
        help="write a compacted copy of the store to OUT",
        description="Copy the store into the new or empty directory OUT without its free "
        "pages, so the copy can be smaller. The store in --state-dir is not changed.",
    )
    compact.add_argument("out", metavar="OUT", type=Path, help="new or empty output directory")
    compact.set_defaults(func=run_compact)


def _register_evict(actions: Any) -> None:
    evict = actions.add_parser(
        "evict",
        help="delete users inactive for N days",
        description="Delete users whose last event is more than N days older than a "
        "reference time. Without --now or --at, the reference time is the newest event time "
        "(last_ts) of any user in the store, not the current time, so a store that has not "
        "seen events for a while keeps its users. A reference time more than a day after the "
        "current time is rejected unless --allow-future is given, because it would count "
        "active users as inactive: a newest event time that far ahead comes from an event "
        "with a wrong time or from a wrong clock (then pass --now or --at), and an --at time "
        "that far ahead is most likely a typo.",
    )
    evict.add_argument(
        "--inactive-days",
        type=float_type,
        required=True,
        metavar="N",
        help=f"inactivity threshold in days, from 0 to {maintenance.MAX_INACTIVE_DAYS}",
    )
    reference = evict.add_mutually_exclusive_group()
    reference.add_argument(
        "--now", action="store_true", help="measure inactivity from the current wall-clock time"
    )
    reference.add_argument(
        "--at",
        type=float_type,
        metavar="TIME",
        help="measure inactivity from TIME, in seconds since the Unix epoch (not milliseconds)",
    )
    evict.add_argument(
        "--allow-future",
        action="store_true",
        help="accept a reference time (--at, or the newest event time) more than a day after "
        "the current time, which counts users who are still active as inactive",
    )
    evict.add_argument(
        "--dry-run",
        action="store_true",
        help="print how many users would be deleted, and delete nothing",
    )
    evict.set_defaults(func=run_evict)


def state_dir_of(args: argparse.Namespace) -> Path:
    """Return the --state-dir given before or after the action; raise when it is missing."""
    before = args.state_dir
    after = getattr(args, "state_dir_after", None)
    if before is not None and after is not None and before != after:
        raise StoreConfigError(f"--state-dir is given twice, as {before} and {after}: pass it once")
    state_dir = after if after is not None else before
    if state_dir is None:
        raise StoreConfigError(
            "--state-dir is missing: pass the state directory before or after the action, "
            "for example `hiertcn-stream state --state-dir DIR stats`"
        )
    return state_dir


def open_store(
    state_dir: Path, recorded_map_size: bool = False, read_only: bool = False
) -> StateStore:
    """Open the existing store in `state_dir`, without the writers lock; raise when
    `state_dir` contains none.

    With `recorded_map_size`, the store maps the size recorded in data.mdb
    (`StoreConfig.recorded_map_size`). With `read_only`, it writes nothing
    (`StoreConfig.read_only`).
    """
    _check_not_a_file(state_dir)
    data_file = state_dir / "data.mdb"
    if not state_dir.is_dir():
        raise StoreConfigError(
            f"state directory {state_dir} does not exist, so it contains no LMDB store "
            "(data.mdb not found): check --state-dir"
        )
    if not data_file.is_file():
        raise StoreConfigError(
            f"state directory {state_dir} contains no LMDB store (data.mdb not found): "
            "check --state-dir"
        )
    if data_file.stat().st_size == 0:
        # LMDB would write a new, empty store into the file.
        raise StoreConfigError(
            f"{data_file} is empty (0 bytes), so it contains no LMDB store: check --state-dir. "
            "A store whose file was truncated has lost its data: restore it from a backup or "
            "an export, or delete the empty file"
        )
    config = StoreConfig(
        path=state_dir,
        writer_lock="none",
        recorded_map_size=recorded_map_size,
        read_only=read_only,
    )
    return StateStore(config)


def _check_not_a_file(state_dir: Path) -> None:
    blocking_file = file_in_path(state_dir)
    if blocking_file == state_dir:
        raise StoreConfigError(
            f"state directory {state_dir} is a file, not a directory: pass the directory that "
            "contains data.mdb"
        )
    if blocking_file is not None:
        raise StoreConfigError(
            f"state directory {state_dir} cannot exist, because {blocking_file} is a file, not a "
            "directory: check --state-dir"
        )


def run_stats(args: argparse.Namespace) -> int:
    """Print the counts and sizes of the store."""
    state_dir = state_dir_of(args)
    # The default map size of `StoreConfig` is larger than a map that workers started with a
    # small --state-map-size, so the store maps the size that they recorded, and both the open
    # line and the output report that.
    with open_store(state_dir, recorded_map_size=True, read_only=True) as store:
        stats = maintenance.collect_stats(store)
    positions = [
        _position_row(topic, partition, position)
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
    print(f"state directory  {state_dir}")
    print(f"users            {stats.users}")
    print(f"open sessions    {stats.open_sessions}")
    print(f"map size         {format_size(stats.map_size)}")
    print(f"map in use       {format_size(stats.used_bytes)}")
    print(f"data             {format_size(stats.data_bytes)} (map in use less free pages)")
    print(f"readers          {stats.readers}")
    for name, value in sorted(stats.meta.items()):
        if name != "bundle_history":
            print(f"{name:<16} {value}")
    for line in _history_lines(stats.meta):
        print(f"bundle history   {line}")
    for row in positions:
        print(
            f"position         {row['topic']}[{row['partition']}]@{row['next_offset']} "
            f"watermark {_format_watermark(row['watermark'])}{_format_replay(row.get('replay'))}"
        )
    return 0


def _history_lines(meta: dict[str, Any]) -> list[str]:
    """Return one line per entry of the store's bundle history, oldest first."""
    lines = []
    for entry in read_history(meta):
        since = entry.get("since") or "before the history was recorded"
        catalog = describe_catalog(entry.get("catalog"), entry.get("catalog_items"))
        lines.append(
            f"{entry.get('bundle_version')} since {since}: [G, H] = {entry.get('state_shape')}, "
            f"D = {entry.get('embedding_dim')}, {catalog}"
        )
    return lines


def run_get(args: argparse.Namespace) -> int:
    """Print the state of one user as JSON; with --bundle, add the ids of the session items."""
    state_dir = state_dir_of(args)
    catalog = None if args.bundle is None else read_catalog(args.bundle)
    with open_store(state_dir, read_only=True) as store:
        state = store.read([args.user]).get(args.user)
        if catalog is not None:
            _check_catalog_of_store(store, catalog)
    if state is None:
        raise UserNotFoundError(
            f"user {args.user!r} not found in state store {state_dir}: check the id, "
            "which is the external user id as a string"
        )
    fields = {"user": args.user, **maintenance.state_to_json(state)}
    if catalog is not None:
        item_ids = catalog.ids_of(fields["session_items"])
        if None in item_ids:
            logger.warning(
                "user %r has session item rows outside the %d items of %s (null in "
                "session_item_ids): the state was written with another catalog",
                args.user,
                len(catalog.item_ids),
                catalog.path,
            )
        fields["session_item_ids"] = item_ids
    print(json.dumps(fields))
    return 0


def _check_catalog_of_store(store: StateStore, catalog: BundleCatalog) -> None:
    """Raise unless `store` records the catalog of `catalog`'s bundle; warn when it records
    none."""
    meta = store.meta()
    stored = meta.get("catalog")
    if stored is None:
        logger.warning(
            "state store %s records no catalog (written before hiertcn recorded catalogs), so "
            "the item ids of %s may not be the items of its rows: pass the bundle that wrote it",
            store.path,
            catalog.path,
        )
        return
    if stored == catalog.sha256:
        return
    stored_catalog = describe_catalog(stored, meta.get("catalog_items"))
    bundle_catalog = describe_catalog(catalog.sha256, len(catalog.item_ids))
    raise CatalogMismatchError(
        f"state store {store.path} contains item rows of a {stored_catalog}, but --bundle "
        f"{catalog.path} has a {bundle_catalog}, whose ids would name other items: pass the "
        "bundle that serves this store"
    )


def run_export(args: argparse.Namespace) -> int:
    """Write the store to a file, or to standard output for `-`."""
    state_dir = state_dir_of(args)
    fmt = export.format_of(args.file, args.format)
    to_stdout = str(args.file) == "-"
    if to_stdout:
        _check_stdout_takes(fmt)
    else:
        export.check_export_path(args.file, args.force)
    with open_store(state_dir, read_only=True) as store:
        if to_stdout:
            users, positions = _export_to_stdout(store, fmt)
        else:
            users, positions = export.export_to_path(store, args.file, fmt)
    summary = (
        f"exported {maintenance.plural(users, 'user')} and "
        f"{maintenance.plural(positions, 'partition position')} to "
        f"{'standard output' if to_stdout else args.file} ({fmt})"
    )
    print(summary, file=sys.stderr if to_stdout else sys.stdout)
    return 0


def _check_stdout_takes(fmt: str) -> None:
    if fmt == "msgpack" and sys.stdout.isatty():
        raise StoreConfigError(
            "--format msgpack writes binary data, and standard output is a terminal: redirect "
            "it to a file or a pipe, or use --format jsonl"
        )


def _export_to_stdout(store: StateStore, fmt: str) -> tuple[int, int]:
    sys.stdout.flush()
    try:
        counts = export.export_store(store, sys.stdout.buffer, fmt)
        sys.stdout.buffer.flush()
    except BrokenPipeError as error:
        # The reader stopped early (for example `| head`). Python would report the pipe again
        # when it flushes stdout at exit, so stdout is pointed at /dev/null first.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise StateStoreError(
            "standard output was closed before the export ended, so the output has no end "
            "record and `import` rejects it: write to a file, or read the whole output"
        ) from error
    return counts


def run_import(args: argparse.Namespace) -> int:
    """Check a whole export file, then commit its records into the store, creating it when
    missing."""
    state_dir = state_dir_of(args)
    import_file.check_import_path(args.file)
    _check_not_a_file(state_dir)
    # The file is read in full before the store is opened, so a rejected file creates no store.
    summary = import_file.scan_export(args.file)
    # Held from the checks to the last commit, so no pool or replay starts in between.
    with locks.lock_exclusive(state_dir):
        if (state_dir / "data.mdb").is_file():
            with open_store(state_dir) as store:
                import_file.check_import_sizes(store, summary, args.file)
                import_file.check_import_catalog(store, summary, args.file)
        else:
            import_file.check_import_catalog(None, summary, args.file)
        # Opening with the file's sizes and catalog records them in a new store, as a replay
        # records its bundle.
        config = StoreConfig(
            path=state_dir,
            bundle_version=summary.bundle_version,
            state_shape=summary.sizes.state_shape,
            embedding_dim=summary.sizes.embedding_dim,
            catalog=summary.catalog,
            catalog_items=summary.catalog_items,
            writer_lock="none",
        )
        with StateStore(config) as store:
            users, positions = import_file.import_export(store, args.file)
    print(
        f"imported {maintenance.plural(users, 'user')} and "
        f"{maintenance.plural(positions, 'partition position')} from {args.file}"
    )
    return 0


def run_compact(args: argparse.Namespace) -> int:
    """Write a compacted copy of the store."""
    state_dir = state_dir_of(args)
    with open_store(state_dir, read_only=True) as store:
        store.copy_compacted(args.out)
    size = (args.out / "data.mdb").stat().st_size
    print(f"wrote a compacted copy of {state_dir} to {args.out} ({format_size(size)})")
    return 0


def run_evict(args: argparse.Namespace) -> int:
    """Delete inactive users (or only count them with --dry-run) and print how many."""
    state_dir = state_dir_of(args)
    now = time.time() if args.now else args.at
    # Checked before the store is opened, so a bad value never reaches the deletion.
    maintenance.check_eviction_args(
        args.inactive_days, now, days_name="--inactive-days", time_name="--at"
    )
    if args.at is not None and not args.allow_future:
        _check_not_future(args.at, f"--at {_format_time(args.at)}")
    with open_store(state_dir, read_only=args.dry_run) as store:
        if now is None:
            now = maintenance.newest_event_time(store)
            if now is not None and not args.allow_future:
                subject = f"the newest event time in state store {store.path}, {_format_time(now)},"
                _check_not_future(now, subject)
        evicted, cutoff = maintenance.evict_inactive(
            store, args.inactive_days, now, dry_run=args.dry_run
        )
    verb = "would evict" if args.dry_run else "evicted"
    if cutoff is None:
        print(f"{verb} 0 users: the store contains no users")
        return 0
    users = maintenance.plural(evicted, "user")
    print(f"{verb} {users} whose last event is before {_format_time(cutoff)}")
    return 0


def _check_not_future(reference: float, subject: str) -> None:
    """Raise when a reference time of `evict` lies more than a day after the current time;
    `subject` names and shows the time in the message."""
    ahead = reference - time.time()
    if ahead <= FUTURE_REFERENCE_SECONDS:
        return
    raise StoreConfigError(
        f"{subject} is {ahead / 86_400:.0f} days after the current time, so users who are "
        "still active would count as inactive: pass --now to measure from the current time, "
        "--at with an earlier time, or --allow-future if that time is intended"
    )


def _position_row(topic: str, partition: int, position: PartitionPosition) -> dict[str, Any]:
    """Return a position as a JSON-ready dict; the key `replay` is present for replays only."""
    row = {"topic": topic, "partition": partition, **asdict(position)}
    if row["replay"] is None:
        del row["replay"]
    return row


def _format_replay(replay: dict[str, Any] | None) -> str:
    if replay is None:
        return ""
    output = f"--output {replay['output']} at byte {replay['output_bytes']}"
    batch = f", --batch-size {replay['batch_size']}" if replay.get("batch_size") else ""
    return f", {replay['order']} order, " + (output if replay["output"] else "no --output") + batch


def _format_watermark(watermark: float | None) -> str:
    return "none (no event time yet)" if watermark is None else _format_time(watermark)


def _format_time(ts: float) -> str:
    try:
        text = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
    except (OverflowError, OSError, ValueError):
        # Outside the platform's time_t range, for example a cutoff far before year 1.
        return f"{ts:.3f}"
    return f"{text} ({ts:.3f})"
