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
import fcntl
import logging
import math
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from hiertcn.command_line import verbosity
from hiertcn.errors import Terminated
from hiertcn.signals import sigterm_as_interrupt
from statestore.locks import raise_if_symbolic_link
from stream.commands.common import SESSION_CLOSE_HELP, argparse_type, open_bundle
from stream.commands.event_file import add_event_file_arguments, read_records_from_args
from stream.config import (
    MAX_SESSION_GAP,
    MIN_SESSION_GAP,
    check_k,
    format_number,
    max_output_bytes,
    parse_float,
    parse_tolerance,
)
from stream.dead_letters import DEFAULT_MESSAGE_MAX_BYTES
from stream.errors import ConfigError
from stream.events import DEFAULT_MAX_FUTURE_SECONDS, EventConfig
from stream.pipeline import Pipeline, PipelineConfig
from stream.records import EventFileError
from stream.replay import (
    CONTEXT_TYPE,
    MemoryStates,
    OutputFile,
    Replay,
    ReplayConfig,
    ReplayReport,
    StoreStates,
    check_resume,
    open_store_states,
)
from stream.replay_report import (
    TypeCollector,
    format_report,
    interrupted_message,
    no_valid_event_message,
    warn_behind_watermark,
    warn_no_context_events,
    warn_out_of_order,
)

if TYPE_CHECKING:
    from export.bundle import ModelBundle

logger = logging.getLogger(__name__)

EXIT_STATUS = (
    "exit status: 0 when the replay ran, also when no event had a previous recommendation to "
    "score (the metrics then read n/a); 1 when the state store fails; 2 for invalid input: a "
    "bad flag, bundle or event file, or a file whose every record is rejected (-v lists them "
    "with their line numbers); 130 or 143 when SIGINT or SIGTERM stopped it"
)


SUMMARY = __doc__.split("\n\n")[0]
METRICS = (
    "Recall@K, MRR and MRP score each event's item against the user's previous recommendation, "
    "the list published after the user's previous event: within the event's impressions when "
    "it has them, else within the whole catalog, with ties counted against the model (MRP is "
    "rank divided by pool size, lower is better). A user's first event has no previous "
    "recommendation and is not counted."
)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `replay` subcommand."""
    parser = subparsers.add_parser(
        "replay",
        help="run the pipeline over an event-log file, without a broker",
        description=f"{SUMMARY} {METRICS}",
        epilog=EXIT_STATUS,
    )

    add_event_file_arguments(parser, "replay", time_unit="in the unit that --ts-unit sets")
    _add_model_arguments(parser)
    _add_output_arguments(parser)
    _add_event_check_arguments(parser)
    _add_session_arguments(parser)
    parser.add_argument(
        "--device",
        choices=("cpu", "cuda", "auto"),
        default="cpu",
        help="ONNX Runtime device (default: cpu)",
    )

    parser.set_defaults(func=run_replay)


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the bundle and the flags that override its batch, K and session gap."""
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
        help="events per batch, as the worker's --max-batch-size; a resume needs the size of "
        "the run it continues (default: 256)",
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
        type=argparse_type(parse_float),
        default=None,
        metavar="SECONDS",
        help=f"idle seconds that end a session, from {MIN_SESSION_GAP:g} to {MAX_SESSION_GAP} "
        "(default: the bundle's)",
    )


def _add_output_arguments(parser: argparse.ArgumentParser) -> None:
    """Add --output and --state-dir, which decide what a replay writes and resumes."""
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        metavar="FILE",
        help="write the recommendations to this JSON Lines file, one line per accepted event, "
        "and one per timer close with --publish-on-session-close (default: none are written). "
        "An existing file is rejected unless --force is given or this replay resumes from "
        "--state-dir the stored run that wrote it, which continues the file after its "
        "recommendations",
    )

    parser.add_argument(
        "--force",
        action="store_true",
        help="replace an existing --output file: an existing file or link at --output is "
        "replaced by a new file, and the file a link points to is left as it is. A directory, "
        "or a link to one, is rejected (default: an existing file is rejected, except by a "
        "resume)",
    )

    parser.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="keep user states in an LMDB state store here (default: in memory). A second "
        "replay of the same file into it resumes after the records that the first one stored, "
        "and needs the same --order, --output and --publish-on-session-close. One replay at a "
        "time may use a state directory, and never one that a worker pool has open: replay into "
        "a copy from `hiertcn-stream state --state-dir DIR compact COPY`",
    )


def _add_event_check_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the unit and the future-time limit of the events' ts field."""
    parser.add_argument(
        "--ts-unit",
        choices=("s", "ms"),
        default="s",
        help="unit of the events' ts field in jsonl, msgpack and csv files: seconds or "
        "milliseconds; the readers of the data set formats give seconds, and the outputs' ts "
        "is in seconds with either unit (default: s)",
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


def _add_session_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the flags of session timers, session-close outputs and context events."""
    parser.add_argument(
        "--no-timers",
        action="store_true",
        help="do not close idle sessions by event-time timers (gap closes still happen)",
    )

    parser.add_argument(
        "--publish-on-session-close",
        action="store_true",
        help=f"{SESSION_CLOSE_HELP} Such an output goes to --output after the event outputs "
        "of its batch, the report counts it, and the first event of the next session is "
        "scored against it, as `hiertcn evaluate` scores session starts (default: off)",
    )

    parser.add_argument(
        "--context-type",
        action="append",
        default=[],
        metavar="TYPE",
        help="events whose `type` field is TYPE update their user's state and get outputs, but "
        "the metrics do not count them; repeat the flag for several types. `hiertcn data events` "
        f"marks the history events of a warm split's test part as {CONTEXT_TYPE!r}, which "
        "`hiertcn evaluate` does not rank either (default: every event is counted)",
    )


def run_replay(args: argparse.Namespace) -> int:
    """Run the `replay` subcommand and print its report. SIGTERM stops it as SIGINT does."""
    with sigterm_as_interrupt():
        return _replay(args)


def _replay(args: argparse.Namespace) -> int:
    # 1. Check the flags, open the bundle and read the event file, all before any file is written.
    _check_flags(args)
    bundle = open_bundle(args.bundle, args.device)
    if args.k is not None:
        check_k(args.k, bundle.num_items)
    _warn_output_size(bundle, args.k)
    pipeline, config = _build_pipeline(args, bundle)
    records = read_records_from_args(args, args.ts_unit)
    seen_types = TypeCollector(records)

    # 2. Open the state store and the output file, and run the records through the pipeline.
    with contextlib.ExitStack() as stack:
        store_states, resumed_at, output_start = _open_state_dir(args, bundle, stack)
        output = _open_output(args, output_start, store_states is not None, stack)
        backend = store_states if store_states is not None else MemoryStates()
        replay = Replay(pipeline, backend, config, args.events.name, output)
        try:
            report = replay.run(seen_types)
        except KeyboardInterrupt as interrupt:
            print(interrupted_message(args, replay.report, store_states), file=sys.stderr)
            return 143 if isinstance(interrupt, Terminated) else 130

    # 3. Report.
    if report.records == 0 and resumed_at is not None:
        logger.info(
            "nothing new to replay: %s has no records after the %d that this state directory "
            "already contains",
            args.events,
            resumed_at,
        )
        return 0
    _warn_after_run(args, report, config, seen_types, pipeline.config.session_gap)
    print(
        format_report(
            report,
            config.recall_k,
            bundle.version,
            verbosity(args) == 0,
            resumed_at,
            session_close_outputs=args.publish_on_session_close,
            context_types=config.context_types,
        )
    )
    if report.accepted == 0:
        raise EventFileError(no_valid_event_message(args, report))
    return 0


def _build_pipeline(args: argparse.Namespace, bundle: ModelBundle) -> tuple[Pipeline, ReplayConfig]:
    """Return the serving pipeline and the replay's configuration that the flags ask for."""
    pipeline = Pipeline(
        bundle,
        PipelineConfig(
            session_gap=args.session_gap,
            top_k=args.k,
            session_close_outputs=args.publish_on_session_close,
        ),
    )
    config = ReplayConfig(
        batch_size=args.batch_size,
        recall_k=pipeline.config.top_k,
        timers=not args.no_timers,
        event_config=EventConfig(ts_unit=args.ts_unit, max_future_seconds=args.max_future_seconds),
        order=args.order,
        context_types=frozenset(args.context_type),
    )
    return pipeline, config


def _warn_output_size(bundle: ModelBundle, k: int | None) -> None:
    """Log a warning when a pool with this K could not produce the largest output.

    A replay writes its outputs to a file without a size limit, but `run` rejects the same K
    under the producer's default message.max.bytes.
    """
    top_k = bundle.manifest.top_k if k is None else k
    bound = max_output_bytes(bundle.item_ids, top_k, bundle.manifest.version)
    if bound > DEFAULT_MESSAGE_MAX_BYTES:
        logger.warning(
            "with K=%d an output can reach %d bytes, above Kafka's default message.max.bytes of "
            "%d: `hiertcn-stream run` with this K needs -X message.max.bytes=%d or more",
            top_k,
            bound,
            DEFAULT_MESSAGE_MAX_BYTES,
            bound,
        )


def _check_flags(args: argparse.Namespace) -> None:
    """Raise `ConfigError` for flags that contradict each other or name an unusable --output."""
    check_counts(args)
    if args.session_gap is not None:
        check_session_gap(args.session_gap)
    if args.publish_on_session_close and args.no_timers:
        raise ConfigError(
            "--publish-on-session-close publishes an output when a timer closes a session, "
            "and --no-timers turns the timers off: drop one of the two flags"
        )
    if args.output is not None:
        check_output_path(args.output)
        check_output_not_input(args.output, args.events, args.bundle, args.state_dir)
        if args.state_dir is None:
            check_output_new(args.output, args.force)


def _open_output(
    args: argparse.Namespace,
    output_start: int | None,
    durable: bool,
    stack: contextlib.ExitStack,
) -> OutputFile | None:
    """Open --output, if given, once every input is checked. The stack closes it.

    A resumed replay continues the file at the length stored with its position (`output_start`).
    Only such a resume may write to an existing file without --force.
    """
    if args.output is None:
        return None
    if output_start is None:
        check_output_new(args.output, args.force)
    output = OutputFile(args.output, start=output_start, durable=durable)
    stack.callback(output.close)
    return output


def _warn_after_run(
    args: argparse.Namespace,
    report: ReplayReport,
    config: ReplayConfig,
    seen_types: TypeCollector,
    session_gap: float,
) -> None:
    """Log the warnings that the finished report calls for: no context events, events out of
    time order, or events behind the watermark."""
    if config.context_types and report.context == 0 and report.accepted:
        warn_no_context_events(args.events, config.context_types, seen_types)
    if report.out_of_order and args.order == "file":
        warn_out_of_order(args.events, report)
    if report.behind_watermark and args.order == "file":
        warn_behind_watermark(args.events, report, session_gap)


def _open_state_dir(
    args: argparse.Namespace, bundle: ModelBundle, stack: contextlib.ExitStack
) -> tuple[StoreStates | None, int | None, int | None]:
    """Open --state-dir, if given, and check that this run can continue its stored replay.

    Returns the store (closed by `stack`), the records that an earlier run stored (None for a
    replay from the start), and the byte length at which --output continues (None: from 0).
    """
    if args.state_dir is None:
        return None, None, None
    # The lock comes before the store's open, which records this bundle in the store's meta.
    # Its file lives in the directory, which only the open would create otherwise.
    with contextlib.suppress(OSError):
        args.state_dir.mkdir(parents=True, exist_ok=True)
    if args.state_dir.is_dir():
        lock_state_dir(args.state_dir, stack)
    # The resume position is kept under the log's absolute path, so that logs of the same name
    # in other folders do not share it.
    store_states = open_store_states(
        args.state_dir,
        str(args.events.resolve()),
        bundle.version,
        state_shape=tuple(bundle.state_shape),
        embedding_dim=bundle.embedding_dim,
        catalog=bundle.catalog,
        catalog_items=bundle.num_items,
    )
    stack.callback(store_states.store.close)
    stored = store_states.position()
    output_start = check_resume(
        stored,
        args.order,
        args.output,
        args.events,
        args.publish_on_session_close,
        args.batch_size,
    )
    return store_states, None if stored is None else stored.next_offset, output_start


# The file in --state-dir that a running replay holds an exclusive lock on.
REPLAY_LOCK_FILE = "replay.lock"


def lock_state_dir(state_dir: Path, stack: contextlib.ExitStack) -> None:
    """Take the replay lock of `state_dir` until `stack` closes, or raise `ConfigError`.

    Two replays into one state directory would interleave their positions and their --output
    lines, so a second one is rejected while the first runs. The lock ends with the process.
    """
    path = state_dir / REPLAY_LOCK_FILE
    try:
        # O_NOFOLLOW, so that a symbolic link at the lock file is rejected, not opened.
        descriptor = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as error:
        raise_if_symbolic_link(path, error)
        raise ConfigError(
            f"cannot open the replay lock {path}: {error.strerror}; check --state-dir"
        ) from error
    stack.callback(os.close, descriptor)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise ConfigError(
            f"another replay is using --state-dir {state_dir}: wait for it to finish, or pass "
            "another --state-dir"
        ) from None


def check_counts(args: argparse.Namespace) -> None:
    """Raise `ConfigError` naming --batch-size or --k when its value is below 1."""
    for flag, value in (("--batch-size", args.batch_size), ("--k", args.k)):
        if value is not None and value < 1:
            raise ConfigError(f"{flag} {value} is invalid: use an integer >= 1")


def check_session_gap(seconds: float) -> None:
    """Raise `ConfigError` unless --session-gap lies in the range that `run` accepts."""
    if not math.isfinite(seconds):
        raise ConfigError(f"--session-gap {seconds} is invalid: use a finite number")
    if not MIN_SESSION_GAP <= seconds <= MAX_SESSION_GAP:
        raise ConfigError(
            f"--session-gap {format_number(seconds)} is invalid: use a value from "
            f"{MIN_SESSION_GAP} to {MAX_SESSION_GAP}"
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


def check_output_new(output: Path, force: bool) -> None:
    """Raise `ConfigError` when --output exists, also as a symbolic link, and `force` is off."""
    if os.path.lexists(output) and not force:
        raise ConfigError(
            f"--output {output} already exists: pass --force to replace it, or another file path"
        )


def check_output_not_input(
    output: Path, events: Path, bundle: Path, state_dir: Path | None
) -> None:
    """Raise `ConfigError` when --output is the --events file or lies inside --bundle or
    --state-dir, whose files replay would overwrite.

    The path checked is the one that replay writes: a symbolic link at --output is replaced by a
    new file (`OutputFile`), so the link's own location counts, not its target. A hard link
    to the --events file is rejected too.
    """
    written = output.parent.resolve() / output.name
    # An --events path that is a symbolic link counts by its own location too, because replay
    # would replace that link.
    if written in (events.resolve(), events.parent.resolve() / events.name):
        raise ConfigError(
            f"--output {output} is the --events file {events}, which replay would overwrite: "
            "pass a new file path to --output"
        )
    if _is_hard_link_to(output, events):
        raise ConfigError(
            f"--output {output} is a hard link to the --events file {events}: pass a new file "
            "path to --output"
        )
    for flag, folder in (("--bundle", bundle), ("--state-dir", state_dir)):
        if folder is not None and written.is_relative_to(folder.resolve()):
            raise ConfigError(
                f"--output {output} lies inside the {flag} folder {folder}, whose files replay "
                f"reads and must not overwrite: pass a file path outside {folder} to --output"
            )


def _is_hard_link_to(path: Path, target: Path) -> bool:
    """Return whether the name `path` itself (not a link's target) is the file `target`."""
    try:
        return os.path.samestat(os.lstat(path), os.stat(target))
    except OSError:
        return False
