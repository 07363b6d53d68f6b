"""Measure the Kafka worker's throughput and end-to-end latency next to a plain Kafka loop.

Run from the repository root:

    .venv/bin/python bench/stream.py [--brokers HOST:PORT] [--bundle DIR] [--batch-sizes 16,64,256]

Without `--brokers` the script starts the local broker of ops/kafka/kafka.sh and stops it at the
end. Without `--bundle` it exports an untrained HierTCN of the default size (D = H = 128, G = 4,
TCN of 4 blocks of 128 filters of width 5) over 10,000 items with random weights, which does not
change the compute time.

For each batch size, two programs read the same kind of input (msgpack events keyed by user, on
4 partitions) and write one message per event:

- the worker: `hiertcn-stream run` with one process, `--max-batch-size` set to the batch size,
  once for each value of `--max-pending-batches`;
- the ceiling: a plain loop of `consume(batch)`, `produce` of each message unchanged, `flush` and
  a synchronous offset commit, which gives the same delivery guarantee as the worker with no
  decoding, state or model.

Each program runs twice on fresh topics. First on a backlog of 2 x `--events` events, for the
maximum throughput: outputs per second over the last `--events` outputs, when the users already
have a history as they do in the latency run. Then on events produced
at half the worker's maximum throughput for `--warmup-seconds` and then `--seconds` seconds, for
the latency: the output message's Kafka timestamp minus the input message's, in milliseconds, at
p50 and p99 over the events of the last `--seconds`. The warm-up leaves out the start of a load:
on the 2-core machine of docs/benchmarks.md the worker fell behind in the first second of each
load and caught up within two seconds. NOTE: the cause of that start was not found.

Prints a Markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import msgpack
import numpy as np

# `python bench/stream.py` puts bench/ first on sys.path, where this file would shadow the
# `stream` package.
_BENCH_DIR = Path(__file__).resolve().parent
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != _BENCH_DIR]
# `ops` (the local broker) and `bench.arguments` are not installed packages, so they are imported
# from the repository root.
sys.path.insert(0, str(_BENCH_DIR.parent))

from confluent_kafka import Consumer, Producer, TopicPartition  # noqa: E402

from bench.arguments import int_list, positive_int, seconds_at_least  # noqa: E402

REPO_ROOT = _BENCH_DIR.parent
PARTITIONS = 4
USERS = 2000
START_TS = 1_700_000_000.0
# The worker's default --max-batch-delay-ms, in seconds.
BATCH_DELAY_SECONDS = 0.010


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--brokers", help="Kafka bootstrap servers HOST:PORT (default: start a local broker)"
    )
    parser.add_argument(
        "--bundle",
        type=Path,
        help="model bundle folder written by `hiertcn export` (default: export a random one "
        "into --work-dir/bundle, or reuse the one an earlier run exported there)",
    )
    parser.add_argument(
        "--items",
        type=positive_int,
        default=10_000,
        help="items of the random bundle (default: 10000)",
    )
    parser.add_argument(
        "--batch-sizes",
        type=int_list(1),
        nargs="+",
        default=[[16, 64, 256]],
        metavar="SIZES",
        help="values of the worker's --max-batch-size, separated by commas or spaces "
        "(default: 16,64,256)",
    )
    parser.add_argument(
        "--events",
        type=positive_int,
        default=4000,
        help="timed events of each backlog run, which publishes twice as many (default: 4000)",
    )
    parser.add_argument(
        "--seconds",
        type=seconds_at_least(0.0, inclusive=False),
        default=10.0,
        help="measured seconds of each latency run (default: 10)",
    )
    parser.add_argument(
        "--warmup-seconds",
        type=seconds_at_least(0.0, inclusive=True),
        default=2.0,
        help="seconds of load before each latency run whose outputs are not counted (default: 2)",
    )
    parser.add_argument(
        "--work-dir",
        type=Path,
        help="folder for state, logs and the bundle, kept after the run (default: a temporary "
        "folder, deleted at the end)",
    )
    parser.add_argument(
        "--no-state-sync", action="store_true", help="run the worker with --no-state-sync"
    )
    parser.add_argument(
        "--max-pending-batches",
        type=int_list(0),
        nargs="+",
        default=[[4]],
        metavar="COUNTS",
        help="values of the worker's --max-pending-batches, separated by commas or spaces; each "
        "value gets its own rows, next to the same ceiling (default: 4)",
    )
    args = parser.parse_args(argv)
    # Each argument is a list, because both `16,64` and `16 64` are accepted.
    args.batch_sizes = [value for values in args.batch_sizes for value in values]
    args.max_pending_batches = [value for values in args.max_pending_batches for value in values]
    if args.bundle is not None and not args.bundle.is_dir():
        parser.error(f"--bundle {args.bundle} is not a folder: pass a folder from hiertcn export")
    if args.work_dir is not None and args.work_dir.exists() and not args.work_dir.is_dir():
        parser.error(f"--work-dir {args.work_dir} is a file: pass a folder")
    return args


# -- inputs -----------------------------------------------------------------------------------


def make_events(count: int, items: Sequence[str], seed: int) -> Iterator[tuple[bytes, bytes]]:
    """Yield (key, msgpack value) of `count` events of USERS users, one event every 0.5 s."""
    rng = random.Random(seed)
    for number in range(count):
        user = f"u{rng.randrange(USERS)}"
        event = {
            "user": user,
            "item": items[rng.randrange(len(items))],
            "ts": START_TS + number * 0.5,
            "event_id": f"e{number}",
        }
        yield user.encode(), msgpack.packb(event)


def input_producer(brokers: str) -> Producer:
    """Return the producer of the input events."""
    return Producer({"bootstrap.servers": brokers, "linger.ms": 1})


def produce(
    producer: Producer, topic: str, events: Iterator[tuple[bytes, bytes]], rate: float
) -> int:
    """Produce events as fast as possible (rate 0) or at `rate` per second; return the count."""
    started = time.perf_counter()
    count = 0
    for key, value in events:
        if rate:
            delay = started + count / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        while True:
            try:
                producer.produce(topic, key=key, value=value)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
        count += 1
    if producer.flush(60):
        raise RuntimeError(f"input events to {topic} not delivered within 60 s")
    return count


def read_messages(
    brokers: str,
    topic: str,
    count: int,
    timeout_s: float,
    alive: Callable[[], bool] = lambda: True,
) -> list[tuple[bytes | None, int]]:
    """Read `topic` from its earliest offset until `count` messages have arrived.

    Returns (key, Kafka timestamp in ms) of each message, in a new consumer group each call. The
    last `consume` call may add up to 999 messages past `count`. Stops early, with what it has,
    after `timeout_s` seconds or once `alive()` is false (the program under test exited).
    """
    consumer = Consumer(
        {
            "bootstrap.servers": brokers,
            "group.id": f"bench-reader-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    messages: list[tuple[bytes | None, int]] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(messages) < count and time.monotonic() < deadline and alive():
            for message in consumer.consume(num_messages=1000, timeout=0.5):
                if message.error() is None:
                    messages.append((message.key(), message.timestamp()[1]))
    finally:
        consumer.close()
    return messages


def read_timestamps(
    brokers: str,
    topic: str,
    count: int,
    timeout_s: float,
    alive: Callable[[], bool] = lambda: True,
) -> list[int]:
    """Return the Kafka timestamps (ms) of the first `count` messages of `topic`.

    Stops early, with what it has, once `alive()` is false (the program under test exited).
    """
    return [stamp for _key, stamp in read_messages(brokers, topic, count, timeout_s, alive)]


def read_pairs(
    brokers: str, input_topic: str, output_topic: str, count: int
) -> list[tuple[int, float]]:
    """Return (input timestamp, latency in ms) of each output, in input time order. The
    latency is the output's timestamp minus its input's timestamp.

    Inputs and outputs are matched by partition and order, because both programs keep the order
    of each key and both topics have the same partitions and keys.
    """
    inputs = _timestamps_by_key(brokers, input_topic, count)
    outputs = _timestamps_by_key(brokers, output_topic, count)
    pairs = []
    for key, stamps in outputs.items():
        for sent, produced in zip(inputs.get(key, []), stamps, strict=False):
            pairs.append((sent, float(produced - sent)))
    return sorted(pairs)


def _timestamps_by_key(brokers: str, topic: str, count: int) -> dict[bytes | None, list[int]]:
    by_key: dict[bytes | None, list[int]] = {}
    for key, stamp in read_messages(brokers, topic, count, timeout_s=120):
        by_key.setdefault(key, []).append(stamp)
    return by_key


# -- the two programs -------------------------------------------------------------------------


def ceiling_loop(brokers: str, source: str, target: str, group: str, batch: int) -> None:
    """Copy `source` to `target` batch by batch until SIGTERM (runs in its own process)."""
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    consumer = Consumer(
        {
            "bootstrap.servers": brokers,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    producer = Producer({"bootstrap.servers": brokers, "linger.ms": 1, "enable.idempotence": True})
    consumer.subscribe([source])
    while not stopping:
        # Batches are collected as the worker does: wait for one message, then take up to
        # `batch` within the worker's default batch delay.
        first = consumer.poll(0.2)
        if first is None:
            continue
        messages = [first]
        if batch > 1:
            messages += consumer.consume(batch - 1, timeout=BATCH_DELAY_SECONDS)
        messages = [m for m in messages if m.error() is None]
        for message in messages:
            producer.produce(target, key=message.key(), value=message.value())
        producer.flush(30)
        offsets = [TopicPartition(m.topic(), m.partition(), m.offset() + 1) for m in messages]
        consumer.commit(offsets=offsets, asynchronous=False)
    consumer.close()


@dataclass(frozen=True)
class Program:
    """How to start one of the two programs on a pair of topics."""

    name: str
    batch: int
    bundle: Path
    work_dir: Path
    worker_flags: tuple[str, ...] = ()

    @contextmanager
    def running(self, brokers: str, source: str, target: str) -> Iterator[Callable[[], bool]]:
        """Run the program on the topics; yield a function that returns whether it still runs."""
        group = f"bench-{self.name}-{uuid.uuid4().hex[:8]}"
        if self.name == "ceiling":
            context = multiprocessing.get_context("spawn")
            process = context.Process(
                target=ceiling_loop, args=(brokers, source, target, group, self.batch)
            )
            process.start()
            try:
                yield process.is_alive
            finally:
                process.terminate()
                process.join(30)
            return
        state_dir = Path(tempfile.mkdtemp(prefix="state-", dir=self.work_dir))
        log = (self.work_dir / f"worker-{self.batch}-{group}.log").open("wb")
        command = [
            sys.executable, "-m", "stream.cli", "run",
            "--brokers", brokers, "--bundle", str(self.bundle), "--group-id", group,
            "--input-topic", source, "--output-topic", target,
            "--dead-letter-topic", f"{source}.dlq", "--state-dir", str(state_dir),
            "--max-batch-size", str(self.batch), "--metrics-port", "0", *self.worker_flags,
        ]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            yield lambda: process.poll() is None
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(60)
            log.close()


# -- measurements -----------------------------------------------------------------------------


def fresh_topics(brokers: str) -> tuple[str, str]:
    from ops.kafka.admin import create_topics

    tag = uuid.uuid4().hex[:8]
    source, target = f"bench-in-{tag}", f"bench-out-{tag}"
    create_topics(brokers, [source, target, f"{source}.dlq"], PARTITIONS)
    return source, target


def max_throughput(brokers: str, program: Program, items: Sequence[str], events: int) -> float:
    """Outputs per second of `program` over the second half of a backlog of 2 x `events`.

    The first half gives the users a history (an open session, a last embedding), so that the
    timed half costs what events cost in the latency run, where users have one too.
    """
    source, target = fresh_topics(brokers)
    total = 2 * events
    produce(input_producer(brokers), source, make_events(total, items, seed=1), rate=0)
    with program.running(brokers, source, target) as alive:
        stamps = read_timestamps(brokers, target, total, timeout_s=600, alive=alive)
    if len(stamps) < total:
        raise RuntimeError(
            f"{program.name} produced {len(stamps)} of {total} outputs: see its log in "
            f"{program.work_dir}"
        )
    timed = sorted(stamps)[-events:]
    span = (timed[-1] - timed[0]) / 1000.0
    return (events - 1) / span if span > 0 else float("inf")


def latency(
    brokers: str,
    program: Program,
    items: Sequence[str],
    rate: float,
    seconds: float,
    warmup: float,
) -> tuple[float, float]:
    """p50 and p99 end-to-end latency (ms) of `program` with inputs at `rate` per second.

    The load runs for `warmup + seconds`; the outputs of events produced in its first `warmup`
    seconds are not counted.
    """
    source, target = fresh_topics(brokers)
    producer = input_producer(brokers)
    with program.running(brokers, source, target) as alive:
        # One event first, so that the program has joined the group and the input producer is
        # connected before the timed load. Its own latency is left out.
        produce(producer, source, make_events(1, items, seed=2), rate=0)
        if not read_timestamps(brokers, target, 1, timeout_s=120, alive=alive):
            raise RuntimeError(f"{program.name} gave no output: see its log in {program.work_dir}")
        events = make_events(int(rate * (warmup + seconds)), items, seed=3)
        count = produce(producer, source, events, rate)
        pairs = read_pairs(brokers, source, target, count + 1)[1:]
    if not pairs:
        raise RuntimeError(f"{program.name} gave no output for the load: see {program.work_dir}")
    measured_from = pairs[0][0] + warmup * 1000
    values = np.array([latency for sent, latency in pairs if sent >= measured_from])
    return float(np.percentile(values, 50)), float(np.percentile(values, 99))


def random_bundle(work_dir: Path, items: int) -> Path:
    """Export an untrained HierTCN of the default size over `items` items into work_dir/bundle.

    A bundle that an earlier run with the same --work-dir exported there is reused, so that
    runs on the same --work-dir time the same model.
    """
    out = work_dir / "bundle"
    if out.is_dir() and any(out.iterdir()):
        print(
            f"reusing the bundle in {out} from an earlier run; remove it to export a new one",
            file=sys.stderr,
        )
        return out
    import torch

    from export.onnx_export import ExportConfig, write_bundle
    from hiertcn.checkpoint import Checkpoint
    from hiertcn.models import ModelConfig, build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(), items).eval()
    checkpoint = Checkpoint(
        model_config=model.config.to_dict(),
        model_state=model.state_dict(),
        train_config={},
        item_ids=[f"item{row}" for row in range(items)],
        data_summary={"session_gap": 1800},
        metrics={},
        epoch=0,
    )
    write_bundle(model, checkpoint, out, ExportConfig(top_k=20))
    return out


def bundle_items(bundle: Path, args: argparse.Namespace) -> list[str]:
    """Return the item ids of `bundle`; exit with status 2 when it cannot be used."""
    from export.bundle import load_bundle
    from export.errors import BundleError

    try:
        items = list(load_bundle(bundle, intra_op_threads=1).item_ids)
    except BundleError as error:
        fail(f"bundle {bundle} cannot be loaded: {error}")
    if args.bundle is None and len(items) != args.items:
        fail(
            f"{bundle} from an earlier run has {len(items)} items, not --items {args.items}: "
            f"remove {bundle} or pass --items {len(items)}"
        )
    return items


def fail(message: str) -> NoReturn:
    """Print a one-line error and exit with status 2, as argparse does for a bad flag."""
    print(f"stream.py: error: {message}", file=sys.stderr)
    raise SystemExit(2)


@contextmanager
def broker(args: argparse.Namespace, work_dir: Path) -> Iterator[str]:
    if args.brokers:
        yield args.brokers
        return
    from ops.kafka.broker import BrokerConfig, LocalBroker

    with LocalBroker(BrokerConfig(state_dir=work_dir / "kafka")) as bootstrap:
        yield bootstrap


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    with ExitStack() as stack:
        if args.work_dir:
            work_dir = args.work_dir
            work_dir.mkdir(parents=True, exist_ok=True)
        else:
            work_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-")))
        bundle = args.bundle or random_bundle(work_dir, args.items)
        items = bundle_items(bundle, args)
        brokers = stack.enter_context(broker(args, work_dir))

        rows = []
        for batch in args.batch_sizes:
            ceiling = Program("ceiling", batch, bundle, work_dir)
            ceiling_max = max_throughput(brokers, ceiling, items, args.events)
            for pending in args.max_pending_batches:
                flags = ("--max-pending-batches", str(pending))
                if args.no_state_sync:
                    flags += ("--no-state-sync",)
                worker = Program("worker", batch, bundle, work_dir, flags)
                worker_max = max_throughput(brokers, worker, items, args.events)
                rate = worker_max / 2
                timing = (rate, args.seconds, args.warmup_seconds)
                worker_p50, worker_p99 = latency(brokers, worker, items, *timing)
                ceiling_p50, ceiling_p99 = latency(brokers, ceiling, items, *timing)
                rows.append(
                    (batch, pending, worker_max, ceiling_max, rate, worker_p50, worker_p99,
                     ceiling_p50, ceiling_p99)
                )  # fmt: skip
                print(f"batch {batch}, pending {pending}: worker {worker_max:.0f}/s, "
                      f"ceiling {ceiling_max:.0f}/s", file=sys.stderr, flush=True)  # fmt: skip

    print(f"{platform.node()}: {os.cpu_count()} cores, Python {platform.python_version()}")
    print()
    print(
        "| batch | pending | worker events/s | ceiling events/s | worker / ceiling "
        "| load events/s | worker p50 / p99 ms | ceiling p50 / p99 ms |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for batch, pending, w_max, c_max, rate, w50, w99, c50, c99 in rows:
        print(
            f"| {batch} | {pending} | {w_max:.0f} | {c_max:.0f} | {w_max / c_max:.0%} "
            f"| {rate:.0f} | {w50:.0f} / {w99:.0f} | {c50:.0f} / {c99:.0f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
