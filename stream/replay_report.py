"""The report of `hiertcn-stream replay` and the messages and warnings around it.

`format_report` formats the counts and metrics of a finished replay. Each warning names what in
the event file made the metrics less reliable. The message of an interrupted replay, and the
error of a replay that accepted no event, say how to go on.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path

from hiertcn.command_line import verbosity
from stream.records import EventColumns, Record, detect_format
from stream.replay import ReplayReport, StoreStates

logger = logging.getLogger(__name__)


def interrupted_message(
    args: argparse.Namespace, report: ReplayReport, store_states: StoreStates | None
) -> str:
    """Return the message of an interrupted replay: what is stored, and how to continue."""
    prefix = f"hiertcn-stream: interrupted after reading {report.records} records of {args.events}"
    if store_states is None:
        outputs = (
            f", and a rerun rewrites --output {args.output} from the start"
            if args.output is not None
            else ""
        )
        return (
            f"{prefix}: nothing was saved, because without --state-dir the user states are "
            f"kept in memory, so a rerun replays the file from its first record{outputs}"
        )
    stored = store_states.position()
    count = 0 if stored is None else stored.next_offset
    outputs = "" if args.output is None else f", and --output {args.output} their recommendations"
    return (
        f"{prefix} in this run: --state-dir {args.state_dir} stores the states after the first "
        f"{count} records{outputs}. Rerun the same command to resume after them"
    )


def no_valid_event_message(args: argparse.Namespace, report: ReplayReport) -> str:
    """Return the error of a replay that accepted no event, with the flags worth checking."""
    found = f"{report.records} records, all rejected (reasons above)"
    if not report.records:
        found = "no records"
    columns = EventColumns(
        user=args.user_col, item=args.item_col, time=args.time_col, header=args.header
    )
    log_format = detect_format(args.events, columns) if args.format == "auto" else args.format
    unit_flag = {"otto": "--otto-time-unit"}.get(log_format, "--ts-unit")
    if log_format in ("movielens", "taobao", "trivago"):
        checks = "check --format and that the bundle was trained on this log"
    else:
        checks = f"check --format, {unit_flag} and that the bundle was trained on this log"
    if verbosity(args) == 0:
        checks += ", and run with -v to list the rejected records"
    return f"no valid event in {args.events} ({found}): {checks}"


class TypeCollector:
    """Iterator over the records of an event file that collects the `type` values it passes.

    At most `limit` distinct types are kept, because a file may carry a new type per event.
    """

    def __init__(self, records: Iterable[Record], limit: int = 20) -> None:
        self._records = iter(records)
        self.limit = limit
        self.types: dict[str, None] = {}  # in file order
        self.more = False

    def __iter__(self) -> Iterator[Record]:
        return self

    def __next__(self) -> Record:
        record = next(self._records)
        event_type = None if record.fields is None else record.fields.get("type")
        if isinstance(event_type, str) and event_type not in self.types:
            if len(self.types) < self.limit:
                self.types[event_type] = None
            else:
                self.more = True
        return record


def warn_no_context_events(
    events_path: Path, context_types: frozenset[str], seen: TypeCollector
) -> None:
    """Log one warning when no accepted event had a type that --context-type names."""
    names = ", ".join(repr(name) for name in sorted(context_types))
    if seen.types:
        found = ", ".join(repr(name) for name in seen.types) + (" and more" if seen.more else "")
        present = f"the types in the file are {found}"
    else:
        present = "no record in the file has a type field"
    logger.warning(
        "no accepted event in %s has a type that --context-type names (%s), so no event is left "
        "out of the metrics: %s. Check the spelling (types are case-sensitive), or drop "
        "--context-type",
        events_path,
        names,
        present,
    )


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


def warn_behind_watermark(events_path: Path, report: ReplayReport, session_gap: float) -> None:
    """Log one warning for the events that file order replayed after the timers' cutoff."""
    logger.warning(
        "%d of %d events in %s are older than the newest event time read before them minus the "
        "session gap (%.0f s), so the timers may have closed their users' sessions before them, "
        "which splits sessions and makes the metrics depend on --batch-size (a log grouped by "
        "user does this): pass --order time to replay the events sorted by time, or "
        "--no-timers to close sessions by gaps only",
        report.behind_watermark,
        report.accepted,
        events_path,
        session_gap,
    )


# The likely cause of a replay whose records are mostly rejected, by its most common reason.
_REJECTION_CAUSES = {
    "unknown_item": "the bundle's catalog lacks most items of the log, so the bundle was likely "
    "trained on another data set: pass the bundle that `hiertcn export` wrote for this log",
    "ts_in_milliseconds": "the times are in milliseconds: pass --ts-unit ms",
    "ts_in_seconds": "the times are in seconds: drop --ts-unit ms",
    "ts_in_future": "the times lie ahead of this host's clock: check --ts-unit, or pass "
    "--max-future-seconds off for a log with future times",
}
_DEFAULT_CAUSE = (
    "the file likely does not match the flags: check --format and the column flags "
    "(--user-col, --item-col, --time-col)"
)


def mostly_rejected_warning(report: ReplayReport, top: int = 3) -> str | None:
    """Return a warning when more than half of the records were rejected, else None.

    The warning names the `top` most common reasons and the likely cause of the first.
    """
    rejected = sum(report.rejected.values())
    if report.records == 0 or rejected * 2 <= report.records:
        return None
    reasons = sorted(report.rejected.items(), key=lambda item: (-item[1], item[0]))[:top]
    named = ", ".join(f"{reason} {count}" for reason, count in reasons)
    cause = _REJECTION_CAUSES.get(reasons[0][0], _DEFAULT_CAUSE)
    return (
        f"WARNING: {rejected} of {report.records} records ({rejected / report.records:.0%}) "
        f"were rejected (most often: {named}), so the metrics cover few events: {cause}"
    )


def format_report(
    report: ReplayReport,
    k: int,
    model: str,
    list_hint: bool = True,
    resumed_at: int | None = None,
    session_close_outputs: bool = False,
    context_types: frozenset[str] = frozenset(),
) -> str:
    """Return the replay report as aligned text lines.

    `list_hint` adds how to list rejections. `resumed_at` is the number of records that an
    earlier run stored, which the counts and metrics of a resumed run leave out.
    `session_close_outputs` adds the count of the outputs of timer closes and of the session
    starts ranked against them. `context_types` adds the count of the events left out.
    """
    rate = report.accepted / report.seconds if report.seconds > 0 else 0.0
    lines = [f"model            {model}"]
    if resumed_at is not None:
        lines.append(
            f"resumed          after the first {resumed_at} records, which an earlier run "
            "stored in --state-dir: every count and metric below covers this run's records only"
        )
    lines += [
        f"records          {report.records}",
        f"events           {report.accepted}",
        f"rejected         {sum(report.rejected.values())}"
        + (" (run with -v to list them)" if report.rejected and list_hint else ""),
    ]
    lines += [f"  {reason:<14} {count}" for reason, count in sorted(report.rejected.items())]
    lines += [
        f"sessions closed  gap {report.closed['gap']}, timer {report.closed['timer']}",
    ]
    if session_close_outputs:
        lines.append(f"session-close outputs  {report.session_close_outputs}")
    lines.append(f"impression items not in the vocabulary  {report.dropped_impressions}")
    if context_types:
        names = ", ".join(sorted(context_types))
        lines.append(f"context events   {report.context} (type {names}: not counted)")
    lines.append(f"counted events   {report.counted} (first event of each user not counted)")
    starts = f"session starts   {report.session_starts} of the counted events"
    if session_close_outputs:
        starts += f", {report.starts_after_close} ranked against a session-close output"
    lines.append(starts)
    if report.counted:
        lines += [
            f"Recall@{k:<9} {report.recall:.4f}",
            f"MRR              {report.mrr:.4f}",
            f"MRP              {report.mrp:.4f}",
        ]
    else:
        # Each metric is a mean over the counted events, so it has no value without one.
        reason = "no user has a valid event after their first"
        if report.context:
            reason = "no user has a valid event after their first that is not a context event"
        lines += [
            f"Recall@{k:<9} n/a (no counted event: {reason})",
            "MRR              n/a",
            "MRP              n/a",
        ]
    lines.append(f"time             {report.seconds:.1f} s ({rate:.0f} events/s)")
    warning = mostly_rejected_warning(report)
    if warning is not None:
        lines.append(warning)
    return "\n".join(lines)
