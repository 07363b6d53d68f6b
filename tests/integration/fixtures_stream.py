"""Fixtures and helpers of the worker tests: a tiny bundle, event streams and a worker process.

Test modules import the fixtures they use from here (`from tests.integration.fixtures_stream
import stream_bundle`); the broker fixture `kafka_bootstrap` comes from conftest.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
import torch
from confluent_kafka import Consumer, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from export.onnx_export import ExportConfig, write_bundle
from hiertcn.checkpoint import Checkpoint
from hiertcn.models import ModelConfig, build_model

NUM_ITEMS = 300
TOP_K = 10
SESSION_GAP = 600.0  # seconds
# D=16, H=12, G=2; receptive field 1 + 2 * (3 - 1) * (1 + 2) = 13 events.
TINY_CONFIG = ModelConfig(
    embedding_dim=16, hidden_size=12, gru_layers=2, tcn_channels=8, kernel_size=3, dilations=(1, 2)
)
START_TS = 1_700_000_000.0  # event time of the first event (s)
REPO_ROOT = Path(__file__).resolve().parents[2]


def item_id(row: int) -> str:
    return f"item{row}"


@pytest.fixture(scope="session")
def stream_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle of a tiny HierTCN with random weights, 300 items, K=10 and a 600 s gap."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(7)
        model = build_model(TINY_CONFIG, NUM_ITEMS).eval()
        with torch.no_grad():
            model.start_state.normal_(0.0, 0.3)
        checkpoint = Checkpoint(
            model_config=model.config.to_dict(),
            model_state=model.state_dict(),
            train_config={},
            item_ids=[item_id(row) for row in range(NUM_ITEMS)],
            data_summary={"session_gap": SESSION_GAP, "num_items": NUM_ITEMS},
            metrics={},
            epoch=0,
        )
        out = tmp_path_factory.mktemp("stream-bundle") / "tiny"
        write_bundle(model, checkpoint, out, ExportConfig(top_k=TOP_K))
    finally:
        torch.set_num_threads(threads)
    return out


def make_events(users: int, count: int, seed: int = 0) -> list[dict[str, Any]]:
    """Return `count` event maps of `users` users in event-time order, with session gaps.

    Each user has sessions of a few events 5 to 120 s apart, separated by idle gaps of 15 to
    60 minutes (longer than the 600 s session gap), so both gap and timer closes happen.
    Every event has an `event_id` (`e<number>`) so that replay and worker outputs match.
    """
    rng = random.Random(seed)
    clock = {f"u{index}": START_TS + rng.uniform(0, 300) for index in range(users)}
    remaining_in_session = {user: rng.randint(1, 8) for user in clock}
    events = []
    for number in range(count):
        user = min(clock, key=clock.__getitem__)
        event: dict[str, Any] = {
            "user": user,
            "item": item_id(rng.randrange(NUM_ITEMS)),
            "ts": round(clock[user], 3),
            "event_id": f"e{number}",
        }
        if rng.random() < 0.3:
            event["impressions"] = [item_id(rng.randrange(NUM_ITEMS)) for _ in range(5)]
        if rng.random() < 0.1:
            event["candidates"] = [item_id(rng.randrange(NUM_ITEMS)) for _ in range(20)]
        events.append(event)
        remaining_in_session[user] -= 1
        if remaining_in_session[user] == 0:
            remaining_in_session[user] = rng.randint(1, 8)
            clock[user] += rng.uniform(900, 3600)
        else:
            clock[user] += rng.uniform(5, 120)
    return events


def produce_events(bootstrap: str, topic: str, events: Sequence[dict[str, Any]]) -> None:
    """Publish event maps as msgpack, keyed by user, in list order."""
    values = [(event["user"].encode(), msgpack.packb(event)) for event in events]
    produce_raw(bootstrap, topic, values)


def produce_raw(
    bootstrap: str,
    topic: str,
    messages: Sequence[tuple[bytes | None, bytes | None]],
    settings: dict[str, Any] | None = None,
    headers: list[tuple[str, bytes]] | None = None,
) -> None:
    """Publish raw (key, value) pairs, each with `headers`, and wait until the broker has them."""
    producer = Producer(
        {"bootstrap.servers": bootstrap, "enable.idempotence": True, **(settings or {})}
    )
    for key, value in messages:
        producer.produce(topic, key=key, value=value, headers=headers)
        producer.poll(0)
    remaining = producer.flush(30)
    assert remaining == 0, f"{remaining} messages not delivered within 30 s"


@dataclass
class Output:
    """One message of the output or dead-letter topic."""

    key: str | None
    value: Any
    raw_value: bytes | None
    headers: dict[str, bytes]
    partition: int
    offset: int


def read_topic(
    bootstrap: str, topic: str, count: int, timeout_s: float = 60.0, settle_s: float = 0.0
) -> list[Output]:
    """Read `topic` from the start until `count` messages arrived, then `settle_s` longer.

    Returns what arrived when `timeout_s` passes; callers assert on the count.
    """
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"reader-{topic}-{time.monotonic_ns()}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    outputs: list[Output] = []
    deadline = time.monotonic() + timeout_s
    settle_until: float | None = None
    try:
        while time.monotonic() < deadline:
            if settle_until is None and len(outputs) >= count:
                settle_until = time.monotonic() + settle_s
            if settle_until is not None and time.monotonic() >= settle_until:
                break
            for message in consumer.consume(num_messages=1000, timeout=0.2):
                assert message.error() is None, f"consumer error: {message.error()}"
                outputs.append(_output(message))
    finally:
        consumer.close()
    return outputs


def _output(message: Message) -> Output:
    raw = message.value()
    try:
        value = msgpack.unpackb(raw) if raw is not None else None
    except (msgpack.UnpackException, ValueError):
        value = None
    key = message.key()
    return Output(
        key=key.decode("utf-8", "replace") if key is not None else None,
        value=value,
        raw_value=raw,
        headers={name: data for name, data in (message.headers() or [])},
        partition=message.partition(),
        offset=message.offset(),
    )


def committed_offsets(bootstrap: str, group: str, topic: str, partitions: int) -> list[int]:
    """Return the Kafka-committed offset of each partition of `topic` for `group`."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        tps = [TopicPartition(topic, partition) for partition in range(partitions)]
        return [tp.offset for tp in consumer.committed(tps, timeout=10)]
    finally:
        consumer.close()


def replay_outputs(
    bundle: Path, events: Sequence[dict[str, Any]], session_close_outputs: bool = False
) -> list[dict[str, Any]]:
    """Run `stream.replay` over `events` in memory and return its outputs in order.

    With `session_close_outputs`, the outputs of timer closes are among them.
    """
    from export.bundle import load_bundle
    from stream.pipeline import Pipeline, PipelineConfig
    from stream.records import Record
    from stream.replay import MemoryStates, OutputFile, Replay, ReplayConfig

    pipeline = Pipeline(
        load_bundle(bundle, intra_op_threads=1),
        PipelineConfig(session_close_outputs=session_close_outputs),
    )
    with tempfile.TemporaryDirectory(prefix="replay-outputs-") as folder:
        output = OutputFile(Path(folder) / "outputs.jsonl")
        replay = Replay(pipeline, MemoryStates(), ReplayConfig(batch_size=64), "events", output)
        replay.run(Record(number, dict(event)) for number, event in enumerate(events))
        output.close()
        lines = output.path.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


@dataclass
class WorkerRun:
    """A `hiertcn-stream run` process group started for one test."""

    process: subprocess.Popen[bytes]
    log_path: Path
    args: list[str] = field(default_factory=list)

    def signal(self, signum: int) -> None:
        """Send `signum` to the pool's parent process."""
        self.process.send_signal(signum)

    def kill_group(self) -> None:
        """SIGKILL the parent and every worker process, like a machine that loses power."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(30)

    def wait(self, timeout_s: float = 60.0) -> int:
        return self.process.wait(timeout_s)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@dataclass(frozen=True)
class Topics:
    """The topics and consumer group of one worker test."""

    input: str
    output: str
    dead_letter: str
    group: str
    partitions: int


def make_topics(bootstrap: str, unique_topic: Any, partitions: int = 4) -> Topics:
    from ops.kafka.admin import create_topics

    topics = Topics(
        input=unique_topic("interactions"),
        output=unique_topic("recommendations"),
        dead_letter=unique_topic("dlq"),
        group=unique_topic("group"),
        partitions=partitions,
    )
    create_topics(bootstrap, [topics.input, topics.output, topics.dead_letter], partitions)
    return topics


def start_worker(
    bootstrap: str,
    bundle: Path,
    topics: Topics,
    state_dir: Path,
    log_path: Path,
    extra: Sequence[str] = (),
) -> WorkerRun:
    """Start `hiertcn-stream run` in its own process group with its log in `log_path`."""
    args = [
        sys.executable,
        "-m",
        "stream.cli",
        "run",
        "--brokers",
        bootstrap,
        "--bundle",
        str(bundle),
        "--group-id",
        topics.group,
        "--input-topic",
        topics.input,
        "--output-topic",
        topics.output,
        "--dead-letter-topic",
        topics.dead_letter,
        "--state-dir",
        str(state_dir),
        "--metrics-port",
        "0",
        "--max-batch-delay-ms",
        "5",
        *extra,
    ]
    env = {key: value for key, value in os.environ.items() if not key.startswith("HIERTCN_")}
    env["PYTHONPATH"] = str(REPO_ROOT)
    # The pool's metrics folder goes to the test's folder: a SIGKILL leaves it behind, and pytest
    # cleans its own folders, not /tmp.
    env["TMPDIR"] = str(log_path.parent)
    log = log_path.open("ab")
    process = subprocess.Popen(
        args, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT, start_new_session=True
    )
    log.close()
    return WorkerRun(process, log_path, args)


@pytest.fixture
def worker_runs() -> Iterator[list[WorkerRun]]:
    """A list that tests append their worker runs to; every process group is killed at the end."""
    runs: list[WorkerRun] = []
    yield runs
    for run in runs:
        if run.process.poll() is None:
            run.kill_group()


def read_states(state_dir: Path, users: Sequence[str]) -> dict[str, Any]:
    """Read the stored states of `users` from a state directory no worker uses any more."""
    from statestore import StateStore, StoreConfig

    store = StateStore(StoreConfig(path=state_dir))
    try:
        return store.read(list(users))
    finally:
        store.close()


def outputs_by_user(outputs: Sequence[Output]) -> dict[str, list[Output]]:
    """Group outputs by user in the order of their offsets (one user is in one partition)."""
    grouped: dict[str, list[Output]] = {}
    for output in sorted(outputs, key=lambda o: (o.partition, o.offset)):
        grouped.setdefault(output.value["user"], []).append(output)
    return grouped


def assert_same_recommendation(worker: dict[str, Any], reference: dict[str, Any]) -> None:
    """Check one worker output against replay's: same fields and items, scores within 1e-5."""
    for name in ("user", "event_id", "ts", "model", "session"):
        assert worker[name] == reference[name], f"{name} differs for {reference['event_id']}"
    assert worker["items"] == reference["items"], f"items differ for {reference['event_id']}"
    np.testing.assert_allclose(worker["scores"], reference["scores"], rtol=0, atol=1e-5)


@contextlib.contextmanager
def output_watcher(bootstrap: str, topic: str, partitions: int) -> Iterator[Consumer]:
    """Yield a consumer assigned to every partition of `topic` from its start, without a group."""
    from confluent_kafka import OFFSET_BEGINNING

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"watcher-{topic}",  # required by the client, unused by assign()
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 10,
        }
    )
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
    try:
        yield consumer
    finally:
        consumer.close()


def wait_for_messages(consumer: Consumer, count: int, timeout_s: float) -> None:
    """Consume until `count` messages have arrived; fail after `timeout_s` seconds."""
    seen = 0
    deadline = time.monotonic() + timeout_s
    while seen < count:
        assert time.monotonic() < deadline, f"only {seen} of {count} outputs in {timeout_s} s"
        for message in consumer.consume(num_messages=1000, timeout=0.05):
            assert message.error() is None, f"consumer error: {message.error()}"
            seen += 1


def wait_for_log(
    run: WorkerRun, condition: str | Callable[[str], bool], timeout_s: float = 120.0
) -> None:
    """Wait until the log of `run` contains `condition` (a text), or satisfies it (a function of
    the log). Fail when the pool exits first or after `timeout_s` seconds."""
    met = (lambda log: condition in log) if isinstance(condition, str) else condition
    deadline = time.monotonic() + timeout_s
    while not met(log := run.log()):
        assert run.process.poll() is None, log
        assert time.monotonic() < deadline, f"{condition!r} not met within {timeout_s} s:\n{log}"
        time.sleep(0.02)


def group_members(admin: AdminClient, group: str) -> int:
    """Return how many members consumer group `group` has, as the broker describes it."""
    return len(admin.describe_consumer_groups([group])[group].result(timeout=10).members)


def wait_for_members(
    admin: AdminClient,
    group: str,
    count: int,
    timeout_s: float,
    between: Callable[[], object] = lambda: time.sleep(0.2),
) -> int:
    """Wait until consumer group `group` has `count` members, calling `between` after each look.

    Return the last count: `count`, or another one once `timeout_s` seconds have passed. A
    member that does not leave on close stays until session.timeout.ms (45 s by default).
    """
    deadline = time.monotonic() + timeout_s
    while (members := group_members(admin, group)) != count and time.monotonic() < deadline:
        between()
    return members
