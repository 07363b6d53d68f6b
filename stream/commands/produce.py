"""`hiertcn-stream produce`: publish an event-log file to a Kafka topic, keyed by user.

Example:

    hiertcn-stream produce --events events.jsonl --brokers 127.0.0.1:9092 --topic interactions

Prints the counts of produced, delivered and failed messages at the end. Exits 1 when the
broker is unreachable or a message was not delivered, and 2 when the file contains no readable
record or a flag or -X setting is invalid (checked before connecting). SIGINT and SIGTERM stop
it after a bounded wait for the queued messages, with the counts and where the run stopped in
the file, and exit 130 and 143.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Mapping
from pathlib import Path

from hiertcn.command_line import (
    StoreFloat,
    flag_texts,
    format_flag_number,
    format_number,
    verbosity,
)
from hiertcn.errors import Terminated
from hiertcn.signals import sigterm_as_interrupt
from stream.commands.event_file import add_event_file_arguments, read_records_from_args
from stream.errors import ConfigError
from stream.kafka_settings import add_kafka_setting_option, parse_kafka_flags, property_of
from stream.produce import (
    DEFAULT_SESSION_GAP,
    FLAG_KAFKA_SETTINGS,
    INTERRUPT_FLUSH_SECONDS,
    MAX_PRODUCE_SESSION_GAP,
    MIN_PRODUCE_SESSION_GAP,
    MIN_RATE,
    EventProducer,
    ProduceConfig,
    ProduceReport,
)
from stream.records import EventFileError

logger = logging.getLogger(__name__)

# Seconds of --flush-timeout when it is not given.
DEFAULT_FLUSH_TIMEOUT = 60.0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `produce` subcommand."""
    parser = subparsers.add_parser(
        "produce",
        help="publish an event-log file to a Kafka topic, keyed by user",
        description=__doc__.split("\n\n")[0],
    )

    add_event_file_arguments(
        parser,
        "publish",
        time_unit="published as the field ts, which the worker reads in seconds, or in "
        "milliseconds with its --ts-unit ms",
    )
    _add_broker_arguments(parser)
    _add_wait_arguments(parser)
    add_kafka_setting_option(
        parser,
        "settings",
        "librdkafka producer setting, repeatable (e.g. -X security.protocol=SSL). "
        "-X message.timeout.ms (or delivery.timeout.ms) replaces the delivery wait of "
        "--flush-timeout and may not be given with it; 0 sets no limit per message",
        FLAG_KAFKA_SETTINGS,
    )

    parser.set_defaults(func=run_produce)


def _add_broker_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the broker, the topic and the publish rate and limit."""
    parser.add_argument(
        "--brokers", required=True, help="Kafka bootstrap servers, HOST:PORT[,HOST:PORT...]"
    )

    parser.add_argument("--topic", required=True, help="topic to publish to")

    parser.add_argument(
        "--rate",
        action=StoreFloat,
        default=None,
        help=f"events per second to publish, at least {format_number(MIN_RATE)} (default: as "
        "fast as possible)",
    )

    parser.add_argument(
        "--limit", type=int, default=None, help="publish at most this many events (default: all)"
    )


def _add_wait_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the connect and delivery waits and the session gap of the order check."""
    parser.add_argument(
        "--connect-timeout",
        action=StoreFloat,
        default=10.0,
        help="seconds to wait for the broker before giving up (default: 10)",
    )

    parser.add_argument(
        "--flush-timeout",
        action=StoreFloat,
        default=None,
        help="seconds to wait for each message's delivery (librdkafka's message.timeout.ms), "
        f"and for all at the end (default: {DEFAULT_FLUSH_TIMEOUT:g})",
    )

    parser.add_argument(
        "--session-gap",
        action=StoreFloat,
        default=DEFAULT_SESSION_GAP,
        metavar="SECONDS",
        help="the worker's session gap, in the unit of the events' ts, for the check at the end "
        f"that each partition is in event-time order, from {MIN_PRODUCE_SESSION_GAP:g} to "
        f"{MAX_PRODUCE_SESSION_GAP:.0f} (default: {DEFAULT_SESSION_GAP:g}, the default of an "
        "exported bundle)",
    )


def run_produce(args: argparse.Namespace) -> int:
    """Run the `produce` subcommand and print its counts."""
    overrides = parse_kafka_flags(args.settings)
    check_flush_timeout_once(overrides, args.flush_timeout, flag_texts(args))
    config = ProduceConfig(
        brokers=args.brokers,
        topic=args.topic,
        rate=args.rate,
        limit=args.limit,
        overrides=overrides,
        connect_timeout=args.connect_timeout,
        flush_timeout=DEFAULT_FLUSH_TIMEOUT if args.flush_timeout is None else args.flush_timeout,
        session_gap=args.session_gap,
        flag_texts=flag_texts(args),
    )
    producer: EventProducer | None = None
    with sigterm_as_interrupt():
        try:
            # Reading the file comes first: `--order time` reads all of it before the first
            # event, and a bad file is reported before any Kafka client starts.
            records = read_records_from_args(args)
            producer = EventProducer(config)
            report = producer.run(records)
        except KeyboardInterrupt as interrupt:
            stopped = producer.report if producer is not None else ProduceReport()
            print_counts(args, stopped, config.topic)
            print(interrupted_message(args.events, stopped), file=sys.stderr)
            return 143 if isinstance(interrupt, Terminated) else 130
    print_counts(args, report, config.topic)
    quiet = verbosity(args) == 0
    if report.late and args.order == "file":
        warn_late_events(args.events, report, config.session_gap)
    if report.produced == 0 and config.limit != 0:
        hint = ", and run with -v to list the unreadable records" if quiet else ""
        raise EventFileError(
            f"no readable record in {args.events} ({report.skipped} unreadable): "
            f"check --format{hint}"
        )
    return 0 if report.failed == 0 else 1


def print_counts(args: argparse.Namespace, report: ProduceReport, topic: str) -> None:
    """Print the counts of produced, delivered, failed and skipped records, and the errors."""
    rate = report.produced / report.seconds if report.seconds > 0 else 0.0
    noun = "record" if report.skipped == 1 else "records"
    skipped = f"skipped {report.skipped} unreadable {noun}"
    if report.skipped and verbosity(args) == 0:
        skipped += " (run with -v to list them)"
    print(
        f"produced {report.produced}, delivered {report.delivered}, failed {report.failed}, "
        f"{skipped}, {report.seconds:.1f} s ({rate:.0f} events/s) to {topic}"
    )
    for name, count in sorted(report.errors.items()):
        print(f"  {name}: {count}")


def interrupted_message(events: Path, report: ProduceReport) -> str:
    """Return the message of an interrupted run: what reached the topic, and how to continue."""
    if report.last_location is None:
        return f"hiertcn-stream: interrupted before the first event of {events} was produced"
    lost = report.failed + report.queued
    message = (
        f"hiertcn-stream: interrupted after producing the events of {events} up to its "
        f"{report.last_location}: {report.delivered} delivered"
    )
    if lost:
        message += (
            f", {report.failed} failed and {report.queued} still queued when the wait for "
            f"them ended (at most {INTERRUPT_FLUSH_SECONDS:g} s), so the topic lacks {lost} of "
            "them"
        )
    return (
        f"{message}. produce has no option to start later in a file, so to continue, publish a "
        f"file of the events after {report.last_location}"
    )


def check_flush_timeout_once(
    overrides: dict[str, str], flush_timeout: float | None, texts: Mapping[str, str] | None = None
) -> None:
    """Raise `ConfigError` when -X sets message.timeout.ms and --flush-timeout is given too.

    librdkafka would use the -X value for every message, so the flag's value would only set the
    wait at the end. `texts` are the flag texts as typed (`StoreFloat`), which the message quotes.
    """
    if flush_timeout is None:
        return
    timeout_text = format_flag_number(flush_timeout, "--flush-timeout", texts or {})
    for key in overrides:
        if property_of(key) == "message.timeout.ms":
            raise ConfigError(
                f"-X {key} would replace the delivery wait of --flush-timeout {timeout_text}: "
                "pass only one of them"
            )


def warn_late_events(events_path: Path, report: ProduceReport, session_gap: float) -> None:
    """Log one warning for the events published behind their partition's watermark."""
    logger.warning(
        "%d of %d delivered events in %s are older than the newest event time published before "
        "them on their partition minus the session gap (%g s), so the worker's timers may close "
        "their users' sessions before them, and its outputs depend on where batches start (a "
        "log grouped by user does this): pass --order time to publish the events sorted by time",
        report.late,
        report.delivered,
        events_path,
        session_gap,
    )
