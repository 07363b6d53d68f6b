"""`hiertcn-stream produce`: publish an event-log file to a Kafka topic, keyed by user.

Example:

    hiertcn-stream produce --events events.jsonl --brokers 127.0.0.1:9092 --topic interactions

Prints the counts of produced, delivered and failed messages at the end. Exits 1 when the
broker is unreachable or a message was not delivered, and 2 when the file contains no readable
record or a flag or -X setting is invalid (checked before connecting).
"""

from __future__ import annotations

import argparse
import logging

from stream.cli import verbosity
from stream.errors import ConfigError
from stream.produce import EventProducer, ProduceConfig
from stream.records import EventFileError, add_event_file_arguments, read_records

logger = logging.getLogger(__name__)


def parse_setting(text: str) -> tuple[str, str]:
    """Split one `-X key=value` librdkafka setting."""
    key, separator, value = text.partition("=")
    if not separator or not key.strip():
        raise ConfigError(f"invalid setting {text!r}: write -X key=value, e.g. -X acks=all")
    return key.strip(), value


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `produce` subcommand."""
    parser = subparsers.add_parser(
        "produce",
        help="publish an event-log file to a Kafka topic, keyed by user",
        description=__doc__.split("\n\n")[0],
    )

    add_event_file_arguments(parser, "publish")

    parser.add_argument(
        "--brokers", required=True, help="Kafka bootstrap servers, HOST:PORT[,HOST:PORT...]"
    )

    parser.add_argument("--topic", required=True, help="topic to publish to")

    parser.add_argument(
        "--rate",
        type=float,
        default=None,
        help="events per second to publish (default: as fast as possible)",
    )

    parser.add_argument(
        "--limit", type=int, default=None, help="publish at most this many events (default: all)"
    )

    parser.add_argument(
        "--connect-timeout",
        type=float,
        default=10.0,
        help="seconds to wait for the broker before giving up (default: 10)",
    )

    parser.add_argument(
        "--flush-timeout",
        type=float,
        default=60.0,
        help="seconds to wait for each message's delivery, and for all at the end (default: 60)",
    )

    parser.add_argument(
        "-X",
        dest="settings",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="librdkafka producer setting, repeatable (e.g. -X security.protocol=SSL)",
    )

    parser.set_defaults(func=run_produce)


def run_produce(args: argparse.Namespace) -> int:
    """Run the `produce` subcommand and print its counts."""
    config = ProduceConfig(
        brokers=args.brokers,
        topic=args.topic,
        rate=args.rate,
        limit=args.limit,
        overrides=dict(parse_setting(text) for text in args.settings),
        connect_timeout=args.connect_timeout,
        flush_timeout=args.flush_timeout,
    )
    records = read_records(
        args.events, args.format, args.order, args.time_col, otto_time_unit=args.otto_time_unit
    )
    report = EventProducer(config).run(records)
    rate = report.produced / report.seconds if report.seconds > 0 else 0.0
    quiet = verbosity(args) == 0
    skipped = f"skipped {report.skipped} unreadable records"
    if report.skipped and quiet:
        skipped += " (run with -v to list them)"
    print(
        f"produced {report.produced}, delivered {report.delivered}, failed {report.failed}, "
        f"{skipped}, {report.seconds:.1f} s ({rate:.0f} events/s) to {config.topic}"
    )
    for name, count in sorted(report.errors.items()):
        print(f"  {name}: {count}")
    if report.produced == 0 and config.limit != 0:
        hint = ", and run with -v to list the unreadable records" if quiet else ""
        raise EventFileError(
            f"no readable record in {args.events} ({report.skipped} unreadable): "
            f"check --format{hint}"
        )
    return 0 if report.failed == 0 else 1
