"""The end-to-end demo: from an interaction log to recommendations flowing through Kafka.

    make demo                                   # synthetic data, generated and labelled so
    make demo DATA=ratings.csv FORMAT=movielens  # a real log
    python -m ops.demo --help

Each step is announced on stdout. The demo prepares the data, trains a small HierTCN, exports
and verifies the bundle, starts the local Kafka broker, creates the topics and starts a pool of
worker processes. It then publishes the test users' events at a steady rate while a live line
reports throughput, latency, live recall@10 and dead letters. At the end it shows a few users'
recent items next to their recommendations, plots throughput and latency into a PNG, and stops
everything.

It assumes what `make demo` sets up: the project installed in the current Python, Java 17 and
Maven for the broker. Everything it writes goes into one run folder (`--out`).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hiertcn.command_line import float_type
from hiertcn.data.readers import FORMATS

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
INPUT_TOPIC = "interactions"
OUTPUT_TOPIC = "recommendations"
DEAD_LETTER_TOPIC = "interactions.dlq"
# Live samples needed for the throughput and latency plot: one sample draws no line.
MIN_PLOT_SAMPLES = 2
# Data flags of `hiertcn train` that the demo passes itself (`data_flags`), and why --data-args
# may not repeat them. {value} is the value given in --data-args.
DEMO_DATA_FLAGS = {
    "--format": "conflicts with the demo's own --format: pass --format {value} to the demo "
    "instead (FORMAT={value} with make)",
    "--split-seed": "conflicts with the demo's fixed --split-seed 0, which its split of the "
    "test events shares with training: remove it",
}
# The files and folders that a demo run writes into its run folder, in the order of the steps.
RUN_FOLDER_CONTENTS = (
    ("synthetic.csv", "the generated interaction log (without --data)"),
    ("model", "the training checkpoints (best.pt, last.pt) and metrics.json"),
    ("bundle", "the exported ONNX model bundle"),
    ("test_events.jsonl", "the test users' events that were published"),
    ("kafka", "the broker's settings and log"),
    ("state", "the worker pool's LMDB state store"),
    ("worker.log", "the worker pool's log"),
    ("producer.log", "the producer's log"),
    ("recommendations.jsonl", "the recommendations read back from Kafka"),
    ("throughput_latency.png", "the throughput and latency plot"),
)


@dataclass(frozen=True)
class DemoConfig:
    """Settings of one demo run; the defaults fit a 2-core machine in a few minutes."""

    out: Path
    data: Path | None
    data_format: str
    data_args: tuple[str, ...]  # more data flags of `hiertcn train` for --data
    titles: Path | None
    epochs: int
    processes: int
    rate: float
    max_events: int
    partitions: int
    metrics_port: int
    seed: int


class Step:
    """Numbered progress lines on stdout: `[3/10] export and verify the bundle`."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.number = 0

    def __call__(self, text: str) -> None:
        self.number += 1
        print(f"\n[{self.number}/{self.total}] {text}", flush=True)


def run_command(command: Sequence[str], log_path: Path | None = None) -> None:
    """Run a command to completion, its output to the console or to `log_path`; raise on failure."""
    print("  $ " + " ".join(str(part) for part in command), flush=True)
    if log_path is None:
        completed = subprocess.run(list(command), check=False)
    else:
        with log_path.open("w", encoding="utf-8") as log:
            completed = subprocess.run(list(command), stdout=log, stderr=subprocess.STDOUT)
    if completed.returncode != 0:
        where = f" (log: {log_path})" if log_path else ""
        raise SystemExit(f"demo: {command[0]} failed with exit code {completed.returncode}{where}")


def data_flags(config: DemoConfig, data_path: Path, synthetic: bool) -> list[str]:
    """Return the data flags that training and the demo's own split share, so the splits agree."""
    if synthetic:
        return [str(data_path), "--format", "csv", "--min-item-count", "5", "--split-seed", "0"]
    return [str(data_path), "--format", config.data_format, *config.data_args, "--split-seed", "0"]


class DemoInputError(SystemExit):
    """An invalid flag or input, found before the demo creates its run folder: exit status 2.

    `main` prints the message to stderr.
    """

    def __init__(self, message: str) -> None:
        super().__init__(2)
        self.message = message

    def __str__(self) -> str:
        return self.message


def check_data_file(config: DemoConfig) -> None:
    """Raise `DemoInputError` when --data is given but is a folder or not found."""
    if config.data is None:
        return
    if config.data.is_dir():
        raise DemoInputError(
            f"demo: DATA={config.data} is a folder: pass the log file inside it, for example "
            f"DATA={config.data / 'ratings.csv'}"
        )
    if not config.data.is_file():
        raise DemoInputError(f"demo: data file {config.data} not found: check DATA=")


def prepare_data(config: DemoConfig) -> tuple[Path, bool]:
    """Return the log to use and whether it is synthetic (generated into the run folder)."""
    if config.data is not None:
        check_data_file(config)
        print(f"  using {config.data} (format {config.data_format})")
        return config.data, False
    from hiertcn.data.synthetic import generate_synthetic_log

    path = generate_synthetic_log(400, 600, config.seed, config.out / "synthetic.csv")
    print(
        f"  NO DATA GIVEN: generated a SYNTHETIC log {path} (400 users with stable tastes and "
        "drifting in-session interests).\n  For real data: make demo DATA=path/to/ratings.csv "
        "FORMAT=movielens"
    )
    return path, True


def write_test_events(flags: list[str], path: Path, max_events: int) -> tuple[int, dict]:
    """Write the test users' events as JSON lines in time order; return the count and history."""
    from hiertcn.data.options import add_data_arguments, load_dataset

    parser = argparse.ArgumentParser()
    add_data_arguments(parser)
    dataset = load_dataset(parser.parse_args(flags))
    test = dataset.test
    order = sorted(range(test.num_events), key=lambda event: int(test.timestamps[event]))
    users = _event_users(test)
    history: dict[str, list[str]] = defaultdict(list)
    count = 0
    with path.open("w", encoding="utf-8") as out:
        for event in order[:max_events]:
            user = str(test.user_ids[users[event]])
            item = dataset.vocab.ids[int(test.items[event])]
            out.write(json.dumps({"user": user, "item": item, "ts": int(test.timestamps[event])}))
            out.write("\n")
            history[user].append(item)
            count += 1
    print(f"  {count} events of {test.num_users} test users (never seen in training) -> {path}")
    return count, history


def _event_users(log) -> list[int]:
    users = [0] * log.num_events
    for user in range(log.num_users):
        for event in range(int(log.user_offsets[user]), int(log.user_offsets[user + 1])):
            users[event] = user
    return users


class OutputReader(threading.Thread):
    """Consume the output topic in the background, keep each user's latest recommendation."""

    def __init__(self, bootstrap: str, path: Path) -> None:
        super().__init__(daemon=True)
        self.bootstrap = bootstrap
        self.path = path
        self.count = 0
        self.latest: dict[str, dict] = {}
        self.stop_event = threading.Event()

    def run(self) -> None:
        import msgpack
        from confluent_kafka import Consumer

        consumer = Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": f"hiertcn-demo-reader-{os.getpid()}",
                "auto.offset.reset": "earliest",  # read every output, also those made before
                "enable.auto.commit": False,  # the demo reader keeps no position
            }
        )
        consumer.subscribe([OUTPUT_TOPIC])
        with self.path.open("w", encoding="utf-8") as out:
            while not self.stop_event.is_set():
                message = consumer.poll(0.5)
                if message is None or message.error():
                    continue
                value = msgpack.unpackb(message.value(), raw=False)
                out.write(json.dumps(value, default=str) + "\n")
                self.latest[str(value["user"])] = value
                self.count += 1
        consumer.close()


def _fail_if_exited(process: subprocess.Popen, name: str, log_path: Path) -> None:
    """Stop the demo with the end of `log_path` when a child process has exited."""
    code = process.poll()
    if code in (None, 0):
        return
    tail = log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-15:]
    print(f"  the {name} exited with code {code}; the end of {log_path}:")
    for line in tail:
        print(f"    {line}")
    raise SystemExit(f"demo: the {name} failed (exit {code}); see {log_path}")


def monitor(config: DemoConfig, reader: OutputReader, expected: int, pool, producer) -> list:
    """Print a live line every two seconds until every event has its output; return samples.

    Stops the demo when the worker pool or the producer exits with an error.
    """
    from ops.demo.monitor import Scrape, format_sample, sample_between, scrape

    url = f"http://127.0.0.1:{config.metrics_port}/metrics"
    samples = []
    # The pool is new, so its counters are 0 when publishing starts. Starting from zeros, the
    # first live line also counts the outputs made before the pool's endpoint first responded,
    # which in a short run can be every output.
    previous = Scrape(at=time.monotonic())
    deadline = time.monotonic() + expected / config.rate + 180
    while time.monotonic() < deadline:
        time.sleep(2.0)
        current = scrape(url)
        if current is not None and previous is not None:
            sample = sample_between(previous, current)
            samples.append(sample)
            print("  " + format_sample(sample), flush=True)
            if sample.outputs_total + sample.dead_letters_total >= expected and reader.count >= (
                expected - sample.dead_letters_total
            ):
                break
        previous = current or previous
        _fail_if_exited(pool, "worker pool", config.out / "worker.log")
        if pool.poll() == 0:
            raise SystemExit(
                "demo: the worker pool stopped before every event had its output; "
                f"its last lines in {config.out / 'worker.log'} say why"
            )
        _fail_if_exited(producer, "producer", config.out / "producer.log")
    else:
        raise SystemExit(
            f"demo: only {reader.count} of {expected} outputs arrived within "
            f"{expected / config.rate + 180:.0f} s; see {config.out / 'worker.log'}, and on a "
            "slow or busy machine pass a lower --rate"
        )
    return samples


def plot_samples(samples: list, path: Path, title: str) -> str:
    """Plot the live samples into `path`; return its name, or why there is no plot."""
    from ops.demo.plot import plot_run

    if len(samples) < MIN_PLOT_SAMPLES:
        return (
            f"no plot: the run gave {len(samples)} live sample(s), one every 2 s, and a plot "
            f"needs {MIN_PLOT_SAMPLES}. Publish more events (--max-events) or at a lower --rate"
        )
    return str(plot_run(samples, path, title))


def stop_process(process: subprocess.Popen, name: str, timeout: float = 60.0) -> None:
    """SIGTERM a child, wait for its clean shutdown, SIGKILL it after `timeout` seconds."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        print(f"  {name} did not stop within {timeout:.0f} s: killing it")
        process.kill()
        process.wait()


def load_titles(path: Path | None) -> dict[str, str]:
    """Read `item,title` pairs from a MovieLens movies.csv-like file (header row first)."""
    if path is None:
        return {}
    import csv

    with path.open(encoding="utf-8", newline="") as source:
        rows = csv.reader(source)
        next(rows, None)
        return {row[0]: row[1] for row in rows if len(row) >= 2}


def show_users(reader: OutputReader, history: dict[str, list[str]], titles: dict[str, str]) -> None:
    """Print the recent items and the latest recommendation of the three busiest users."""
    busiest = sorted(history, key=lambda user: -len(history[user]))[:3]
    if not titles:
        print("  (no item titles: pass --titles movies.csv from MovieLens to see names)")
    for user in busiest:
        output = reader.latest.get(user)
        if output is None:
            continue
        print(f"\n  user {user}, session {output['session']}, {len(history[user])} events")
        print("    recent items:    " + ", ".join(_named(i, titles) for i in history[user][-5:]))
        recommended = [_named(str(i), titles) for i in output["items"][:5]]
        print("    recommendations: " + ", ".join(recommended))


def _named(item: str, titles: dict[str, str]) -> str:
    return f"{titles[item]} ({item})" if item in titles else item


def parse_args(argv: Sequence[str] | None) -> DemoConfig:
    """Read the demo's flags."""
    parser = argparse.ArgumentParser(
        prog="python -m ops.demo",
        description="Train, export and serve HierTCN over a local Kafka broker, end to end.",
    )
    parser.add_argument("--data", type=Path, help="interaction log (default: synthetic data)")
    parser.add_argument(
        "--format",
        default="auto",
        choices=FORMATS,  # those of `hiertcn train`, checked before any work
        help="format of --data, as `hiertcn train` reads it (default: auto)",
    )
    parser.add_argument(
        "--data-args",
        default="",
        metavar="FLAGS",
        help="more data flags of `hiertcn train` for --data, as one quoted string, for a log "
        'with its own column names, e.g. "--user-col customer_id --item-col sku --time-unit ms" '
        "(default: none). Write --data-args=FLAGS for a single flag such as --no-header, "
        "which argparse would otherwise read as an option of its own",
    )
    parser.add_argument("--titles", type=Path, help="CSV of item id,title (MovieLens movies.csv)")
    parser.add_argument("--out", type=Path, help="run folder (default: runs/demo-YYYYmmdd-HHMMSS)")
    parser.add_argument("--epochs", type=int, default=3, help="training epochs (default: 3)")
    parser.add_argument("--processes", type=int, default=2, help="worker processes (default: 2)")
    parser.add_argument(
        "--rate", type=float_type, default=200.0, help="events per second to publish (default: 200)"
    )
    parser.add_argument(
        "--max-events", type=int, default=10_000, help="test events to publish (default: 10000)"
    )
    parser.add_argument(
        "--partitions", type=int, default=4, help="partitions of each topic (default: 4)"
    )
    parser.add_argument(
        "--metrics-port", type=int, default=9100, help="worker pool /metrics port (default: 9100)"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of data and training (default: 0)"
    )
    args = parser.parse_args(argv)
    check_ranges(parser, args)
    data_args = check_data_args(parser, args)
    out = args.out or REPO_ROOT / "runs" / time.strftime("demo-%Y%m%d-%H%M%S")
    return DemoConfig(
        out=out.resolve(),
        data=args.data.resolve() if args.data else None,
        data_format=args.format,
        data_args=data_args,
        titles=args.titles,
        epochs=args.epochs,
        processes=args.processes,
        rate=args.rate,
        max_events=args.max_events,
        partitions=args.partitions,
        metrics_port=args.metrics_port,
        seed=args.seed,
    )


def check_ranges(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Exit 2 with a usage error for a value out of range, before the demo does any work."""
    minimums = {
        "--epochs": (args.epochs, 1),
        "--processes": (args.processes, 1),
        "--max-events": (args.max_events, 1),
        "--partitions": (args.partitions, 1),
    }
    for flag, (value, minimum) in minimums.items():
        if value < minimum:
            parser.error(f"invalid {flag} {value}: use an integer >= {minimum}")
    if not math.isfinite(args.rate) or args.rate <= 0:
        parser.error(f"invalid --rate {args.rate}: use a positive number of events per second")
    if not 1 <= args.metrics_port <= 65_535:
        parser.error(f"invalid --metrics-port {args.metrics_port}: use a port from 1 to 65535")


def check_data_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[str, ...]:
    """Return --data-args split into flags; exit 2 when they are not data flags of training."""
    from hiertcn.data.options import GIVEN_FLAGS, add_data_arguments

    try:
        flags = tuple(shlex.split(args.data_args))
    except ValueError as error:
        parser.error(f"invalid --data-args {args.data_args!r}: {error}")
    if not flags:
        return ()
    if args.data is None:
        parser.error("--data-args needs --data: the synthetic log has fixed columns")
    data_parser = argparse.ArgumentParser(prog="--data-args", add_help=False)
    add_data_arguments(data_parser)
    known, unknown = data_parser.parse_known_args([str(args.data), *flags])
    if unknown:
        parser.error(f"invalid --data-args: {describe_unknown_data_args(unknown)}")
    # The demo passes these flags itself, and a second one would silently replace its value.
    for flag in getattr(known, GIVEN_FLAGS):
        if flag in DEMO_DATA_FLAGS:
            value = getattr(known, flag.removeprefix("--").replace("-", "_"))
            reason = DEMO_DATA_FLAGS[flag].format(value=value)
            parser.error(f"invalid --data-args: {flag} {value} {reason}")
    return flags


def describe_unknown_data_args(unknown: Sequence[str]) -> str:
    """Return why `unknown`, what the data flags' parser left over, are not data flags.

    Each unknown flag is named once, without its value. Values that follow no flag, such as
    the value of an unknown flag, are named only when no flag is unknown.
    """
    flags = list(dict.fromkeys(arg.split("=", 1)[0] for arg in unknown if arg.startswith("-")))
    if not flags:
        return (
            f"unexpected argument {' '.join(unknown)}: pass only data flags of `hiertcn train` "
            "with their values (hiertcn train --help lists them)"
        )
    if len(flags) == 1:
        return f"{flags[0]} is not a data flag of `hiertcn train` (hiertcn train --help lists them)"
    names = f"{', '.join(flags[:-1])} and {flags[-1]}"
    return f"{names} are not data flags of `hiertcn train` (hiertcn train --help lists them)"


def main(argv: Sequence[str] | None = None) -> int:
    """Run every step of the demo, and stop whatever it started even when a step fails."""
    config = parse_args(argv)
    # Input checks come before the run folder exists, so a rejected run leaves none behind.
    try:
        check_port_free(config.metrics_port)
        check_data_file(config)
    except DemoInputError as error:
        print(error, file=sys.stderr)
        return 2
    config.out.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    step = Step(total=10)
    started: list[tuple[str, subprocess.Popen]] = []
    brokers: list = []
    try:
        _run_steps(config, step, started, brokers)
    finally:
        for name, process in reversed(started):
            stop_process(process, name)
        for broker in brokers:
            broker.stop()
            print("  broker stopped")
    print(f"\nDone. Everything is in {config.out}:")
    print(describe_run_folder(config.out))
    return 0


def describe_run_folder(out: Path) -> str:
    """Return one line per file or folder of `RUN_FOLDER_CONTENTS` that the run wrote."""
    present = [(name, what) for name, what in RUN_FOLDER_CONTENTS if (out / name).exists()]
    width = max((len(str(out / name)) for name, _what in present), default=0)
    return "\n".join(f"  {out / name!s:<{width}}  {what}" for name, what in present)


def check_port_free(port: int) -> None:
    """Stop before any work when the metrics port is taken, because the live line reads it.

    The probe allows address reuse, as the metrics server does, so connections of an earlier run
    that linger in TIME_WAIT do not count as taken. A listening socket still does.
    """
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            raise DemoInputError(
                f"demo: port 127.0.0.1:{port} is already in use: pass --metrics-port N "
                "(make demo DEMO_ARGS='--metrics-port N')"
            ) from None


def _run_steps(config: DemoConfig, step: Step, started: list, brokers: list) -> None:
    from ops.kafka.admin import create_topics
    from ops.kafka.broker import BrokerConfig, LocalBroker

    python = sys.executable
    step("prepare the interaction log")
    data_path, synthetic = prepare_data(config)
    flags = data_flags(config, data_path, synthetic)

    step("train a small HierTCN (2-layer GRU of 64, TCN of 4 blocks of 64 filters)")
    model_dir = config.out / "model"
    sizes = ["--embedding-dim", "64", "--hidden-size", "64", "--gru-layers", "2"]
    run_command(
        [python, "-m", "hiertcn.cli", "train", *flags, "--model", "hiertcn", *sizes,
         "--tcn-channels", "64", "--epochs", str(config.epochs), "--seed", str(config.seed),
         "--device", "cpu", "--out", str(model_dir)]
    )  # fmt: skip

    step("export the model bundle and verify ONNX Runtime against torch")
    bundle = config.out / "bundle"
    run_command(
        [python, "-m", "hiertcn.cli", "export", "--checkpoint", str(model_dir / "best.pt"),
         "--out", str(bundle), "--verify"]
    )  # fmt: skip

    step("write the test users' events (users the model never saw) in time order")
    events_path = config.out / "test_events.jsonl"
    expected, history = write_test_events(flags, events_path, config.max_events)

    step("start the local Kafka broker (Apache Kafka from Maven Central, KRaft mode)")
    broker = LocalBroker(BrokerConfig(state_dir=config.out / "kafka"))
    broker.fetch()
    brokers.append(broker)  # stopped by main(), also when a later step fails
    bootstrap = broker.start()
    print(f"  broker at {bootstrap}, log {broker.log_path}")

    step(f"create the topics ({config.partitions} partitions each)")
    create_topics(bootstrap, [INPUT_TOPIC, OUTPUT_TOPIC, DEAD_LETTER_TOPIC], config.partitions)

    step(f"start a pool of {config.processes} worker processes")
    worker_log = (config.out / "worker.log").open("w", encoding="utf-8")
    pool = subprocess.Popen(
        [python, "-m", "stream.cli", "run", "--brokers", bootstrap, "--bundle", str(bundle),
         "--processes", str(config.processes), "--state-dir", str(config.out / "state"),
         "--metrics-port", str(config.metrics_port)],
        stdout=worker_log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    started.append(("worker pool", pool))
    reader = OutputReader(bootstrap, config.out / "recommendations.jsonl")
    reader.start()

    step(f"publish {expected} events at {config.rate:g} events/s; live line every 2 s")
    producer = subprocess.Popen(
        [python, "-m", "stream.cli", "produce", "--events", str(events_path), "--brokers",
         bootstrap, "--topic", INPUT_TOPIC, "--rate", str(config.rate)],
        stdout=(config.out / "producer.log").open("w", encoding="utf-8"),
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    started.append(("producer", producer))
    samples = monitor(config, reader, expected, pool, producer)
    print(f"  {reader.count} recommendations read for {expected} events published")

    step("show a few users' recent items and their latest recommendation")
    show_users(reader, history, load_titles(config.titles))
    reader.stop_event.set()
    reader.join(timeout=10)

    step("plot throughput and latency over the run")
    title = f"hiertcn demo, {config.processes} workers, {config.rate:g} events/s offered"
    print("  " + plot_samples(samples, config.out / "throughput_latency.png", title))
