"""`hiertcn-stream replay`: run the serving pipeline over an event-log file and report metrics.

Example:

    hiertcn-stream replay --events events.jsonl --bundle bundle/ --output recs.jsonl

Prints Recall@K, MRR and MRP of each event's item under the user's previous recommendation, and
the records rejected by reason. Progress goes to stderr. Exits 2 when no record of the file is a
valid event; see `EXIT_STATUS`.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
from pathlib import Path

from stream.cli import verbosity
from stream.commands.run import argparse_type
from stream.config import check_k, parse_tolerance
from stream.errors import ConfigError
from stream.events import DEFAULT_MAX_FUTURE_SECONDS, EventConfig
from stream.pipeline import Pipeline, PipelineConfig
from stream.records import EventFileError, add_event_file_arguments, detect_format, read_records
from stream.replay import MemoryStates, Replay, ReplayConfig, ReplayReport, open_store_states

logger = logging.getLogger(__name__)

EXIT_STATUS = (
    "exit status: 0 when the replay ran, also when no event had a previous recommendation to "
    "score (the metrics then read n/a); 1 when the state store fails; 2 for invalid input: a "
    "bad flag, bundle or event file, or a file whose every record is rejected (-v lists them "
    "with their line numbers)"
)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `replay` subcommand."""
    parser = subparsers.add_parser(
        "replay",
        help="run the pipeline over an event-log file, without a broker",
        description=__doc__.split("\n\n")[0],
        epilog=EXIT_STATUS,
    )

    add_event_file_arguments(parser, "replay")

    parser.add_argument(
        "--bundle",
        type=Path,
        required=True,
        metavar="DIR",
        help="model bundle directory written by `hiertcn export`",
    )

    parser.add_argument(
        "--batch-size",
        type=int,
        default=256,
        metavar="EVENTS",
        help="events per batch, as the worker's --max-batch-size (default: 256)",
    )

    parser.add_argument(
        "--k",
        type=int,
        default=None,
        metavar="K",
        help="length of each recommendation list, and K of Recall@K (default: the bundle's)",
    )

    parser.add_argument(
        "--session-gap",
        type=float,
        default=None,
        metavar="SECONDS",
        help="idle seconds that end a session (default: the bundle's)",
    )

    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        metavar="FILE",
        help="write the recommendations to this JSONL file",
    )

    parser.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="keep user states in an LMDB state store here (default: in memory). A second "
        "replay of the same file into it resumes after the records the first one read",
    )

    parser.add_argument(
        "--ts-unit",
        choices=("s", "ms"),
        default="s",
        help="unit of the events' ts field in jsonl, msgpack and csv files: seconds or "
        "milliseconds; the readers of the data set formats give seconds (default: s)",
    )

    parser.add_argument(
        "--max-future-seconds",
        type=argparse_type(parse_tolerance),
        default=DEFAULT_MAX_FUTURE_SECONDS,
        metavar="SECONDS",
        help="seconds a record's time may lie ahead of this host's clock; later records are "
        f"rejected as ts_in_future, and off turns the check off (default: "
        f"{DEFAULT_MAX_FUTURE_SECONDS:.0f})",
    )

    parser.add_argument(
        "--no-timers",
        action="store_true",
        help="do not close idle sessions by event-time timers (gap closes still happen)",
    )

    parser.add_argument(
        "--device",
        choices=("cpu", "cuda", "auto"),
        default="cpu",
        help="ONNX Runtime device (default: cpu)",
    )

    parser.set_defaults(func=run_replay)


def run_replay(args: argparse.Namespace) -> int:
    """Run the `replay` subcommand and print its report."""
    if args.output is not None:
        check_output_path(args.output)
    bundle = open_bundle(args.bundle, args.device)
    if args.k is not None:
        check_k(args.k, bundle.num_items)
    pipeline = Pipeline(bundle, PipelineConfig(session_gap=args.session_gap, top_k=args.k))

    config = ReplayConfig(
        batch_size=args.batch_size,
        recall_k=pipeline.config.top_k,
        timers=not args.no_timers,
        event_config=EventConfig(ts_unit=args.ts_unit, max_future_seconds=args.max_future_seconds),
    )

    # Run the event file's checks (missing, empty, format) before the state store is created.
    records = read_records(
        args.events,
        args.format,
        args.order,
        args.time_col,
        args.ts_unit,
        otto_time_unit=args.otto_time_unit,
    )
    source = args.events.name
    store_states = None
    resumed_at: int | None = None
    if args.state_dir is not None:
        # The resume position is kept under the log's absolute path, so that logs of the same
        # name in other folders do not share it.
        store_states = open_store_states(
            args.state_dir,
            str(args.events.resolve()),
            bundle.version,
            state_shape=tuple(bundle.state_shape),
            embedding_dim=bundle.embedding_dim,
        )
        stored = store_states.position()
        resumed_at = stored.next_offset if stored is not None else None
    backend = store_states if store_states is not None else MemoryStates()

    with contextlib.ExitStack() as stack:
        output = None
        if store_states is not None:
            stack.callback(store_states.store.close)
        if args.output is not None:
            # A resumed replay adds the new records' recommendations to those of the last run.
            output = stack.enter_context(open_output(args.output, append=resumed_at is not None))
        report = Replay(pipeline, backend, config, source, output).run(records)
    if report.records == 0 and resumed_at is not None:
        logger.info(
            "nothing new to replay: %s has no records after the %d that this state directory "
            "already contains",
            args.events,
            resumed_at,
        )
        return 0
    if report.out_of_order and args.order == "file":
        warn_out_of_order(args.events, report)
    print(format_report(report, config.recall_k, bundle.version, list_hint=verbosity(args) == 0))
    if report.accepted == 0:
        raise EventFileError(no_valid_event_message(args, report))
    return 0


def no_valid_event_message(args: argparse.Namespace, report: ReplayReport) -> str:
    """Return the error of a replay that accepted no event, with the flags worth checking."""
    found = f"{report.records} records, all rejected (reasons above)"
    if not report.records:
        found = "no records"
    log_format = detect_format(args.events) if args.format == "auto" else args.format
    unit_flag = {"otto": "--otto-time-unit"}.get(log_format, "--ts-unit")
    if log_format in ("movielens", "taobao", "trivago"):
        checks = "check --format and that the bundle was trained on this log"
    else:
        checks = f"check --format, {unit_flag} and that the bundle was trained on this log"
    if verbosity(args) == 0:
        checks += ", and run with -v to list the rejected records"
    return f"no valid event in {args.events} ({found}): {checks}"


def warn_out_of_order(events_path: Path, report: ReplayReport) -> None:
    """Log one warning for the events that file order replayed before newer ones of their user."""
    logger.warning(
        "%d of %d events in %s are older than an earlier event of the same user, so they were "
        "replayed out of time order, which changes the sessions and the metrics: pass "
        "--order time to replay the events sorted by time",
        report.out_of_order,
        report.accepted,
        events_path,
    )


def check_output_path(path: Path) -> None:
    """Raise `ConfigError` when the --output file cannot be created, before any work starts."""
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise ConfigError(f"--output {path} is a directory: pass a file path")
    if not parent.is_dir():
        problem = "is not a directory" if parent.exists() else "does not exist"
        raise ConfigError(
            f"cannot write --output {path} because its folder {parent} {problem}: create the "
            "folder or pass another path"
        )
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(
            f"cannot write --output {path} because its folder {parent} is not writable: pass "
            "another path"
        )


def open_output(path: Path, append: bool = False):
    """Open the --output file for writing or appending; an `OSError` becomes a `ConfigError`."""
    try:
        return path.open("a" if append else "w", encoding="utf-8")
    except OSError as error:
        raise ConfigError(
            f"cannot write --output {path} ({error.strerror or error}): pass another path"
        ) from error


def open_bundle(path: Path, device: str, device_source: str = "--device"):
    """Load the model bundle at `path`; a bundle error becomes a `ConfigError` for the CLI.

    `device_source` is the flag or the environment variable that set `device`, which the
    advice for an unusable CUDA device names in place of the Python API's device='cpu'.
    """
    from export.bundle import load_bundle
    from export.errors import CudaUnavailableError, ExportError

    try:
        return load_bundle(path, device=device)
    except CudaUnavailableError as error:
        if device_source.startswith("-"):
            fix = f"Pass {device_source} cpu or auto"
        else:
            fix = f"Set {device_source}=cpu or auto"
        raise ConfigError(
            f"cannot load the model bundle {path}: device 'cuda' requested, but {error.reason}. "
            f"{fix}, or {error.remedy}"
        ) from error
    except ExportError as error:
        raise ConfigError(f"cannot load the model bundle {path}: {error}") from error


def format_report(report: ReplayReport, k: int, model: str, list_hint: bool = True) -> str:
    """Return the replay report as aligned text lines; `list_hint` adds how to list rejections."""
    rate = report.accepted / report.seconds if report.seconds > 0 else 0.0
    lines = [
        f"model            {model}",
        f"records          {report.records}",
        f"events           {report.accepted}",
        f"rejected         {sum(report.rejected.values())}"
        + (" (run with -v to list them)" if report.rejected and list_hint else ""),
    ]
    lines += [f"  {reason:<14} {count}" for reason, count in sorted(report.rejected.items())]
    lines += [
        f"sessions closed  gap {report.closed['gap']}, timer {report.closed['timer']}",
        f"impression items not in the vocabulary  {report.dropped_impressions}",
        f"counted events   {report.counted} (first event of each user not counted)",
    ]
    if report.counted:
        lines += [
            f"Recall@{k:<9} {report.recall:.4f}",
            f"MRR              {report.mrr:.4f}",
            f"MRP              {report.mrp:.4f}",
        ]
    else:
        # Each metric is a mean over the counted events, so it has no value without one.
        lines += [
            f"Recall@{k:<9} n/a (no counted event: no user has a valid event after their first)",
            "MRR              n/a",
            "MRP              n/a",
        ]
    lines.append(f"time             {report.seconds:.1f} s ({rate:.0f} events/s)")
    return "\n".join(lines)
