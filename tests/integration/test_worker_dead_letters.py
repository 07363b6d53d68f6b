"""Bad messages go to the dead-letter topic with their reason while the worker keeps going."""

from __future__ import annotations

import math
import re
import signal
import socket
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack

from tests.integration.fixtures_stream import (
    START_TS,
    WorkerRun,
    make_events,
    make_topics,
    produce_events,
    produce_raw,
    read_topic,
    start_worker,
    stream_bundle,  # noqa: F401 - pytest fixture
    worker_runs,  # noqa: F401 - pytest fixture
)


def _event(**fields: Any) -> bytes:
    return msgpack.packb(fields)


# (case, key, value, expected reason)
BAD_MESSAGES: list[tuple[str, bytes | None, bytes, str]] = [
    ("not msgpack", b"u1", b"\xc1\xc1 this is not msgpack", "invalid_msgpack"),
    # A str32 header that claims 1 GiB of text, followed by 10 bytes.
    ("gigabyte header", b"u1", b"\xdb\x40\x00\x00\x00" + b"x" * 10, "invalid_msgpack"),
    ("user missing", b"u1", _event(item="item1", ts=START_TS), "missing_user"),
    ("item as a list", b"u1", _event(user="u1", item=[1, 2], ts=START_TS), "invalid_item"),
    ("ts NaN", b"u1", _event(user="u1", item="item1", ts=math.nan), "invalid_ts"),
    ("ts infinite", b"u1", _event(user="u1", item="item1", ts=math.inf), "invalid_ts"),
    (
        "ts in milliseconds",
        b"u1",
        _event(user="u1", item="item1", ts=START_TS * 1000),
        "ts_in_milliseconds",
    ),
    ("ts in 2096", b"u1", _event(user="u1", item="item1", ts=4e9), "ts_in_future"),
    ("unknown item", b"u1", _event(user="u1", item="no-such-item", ts=START_TS), "unknown_item"),
    (
        "million impressions",
        b"u1",
        _event(user="u1", item="item1", ts=START_TS, impressions=[1] * 1_000_000),
        "too_many_impressions",
    ),
]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _metric(text: str, name: str, labels: str = "") -> float:
    pattern = re.escape(name + ("{" + labels + "}" if labels else "")) + r" ([0-9.e+]+)"
    match = re.search(pattern, text)
    assert match is not None, f"{name}{{{labels}}} not in /metrics"
    return float(match.group(1))


def test_bad_messages_go_to_dead_letter_topic(
    kafka_bootstrap: str,
    unique_topic: Callable[[str], str],
    stream_bundle: Path,  # noqa: F811
    worker_runs: list[WorkerRun],  # noqa: F811
    tmp_path: Path,
) -> None:
    topics = make_topics(kafka_bootstrap, unique_topic, partitions=1)
    before = make_events(users=5, count=20, seed=4)
    after = make_events(users=5, count=20, seed=5)
    port = _free_port()
    run = start_worker(
        kafka_bootstrap,
        stream_bundle,
        topics,
        tmp_path / "state",
        tmp_path / "worker.log",
        ["--metrics-port", str(port)],
    )
    worker_runs.append(run)

    produce_events(kafka_bootstrap, topics.input, before)
    # One message of about 1 MB: above librdkafka's default message.max.bytes, within the
    # broker's default topic limit of 1048588 bytes.
    bad = [(key, value) for _case, key, value, _reason in BAD_MESSAGES]
    produce_raw(
        kafka_bootstrap,
        topics.input,
        bad,
        {"message.max.bytes": 1_048_000},
        headers=[("trace-id", b"t-1")],
    )
    produce_events(kafka_bootstrap, topics.input, after)

    dead = read_topic(kafka_bootstrap, topics.dead_letter, len(BAD_MESSAGES), settle_s=1.0)
    outputs = read_topic(kafka_bootstrap, topics.output, len(before) + len(after), settle_s=1.0)
    assert run.process.poll() is None, run.log()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        metrics = response.read().decode()
    run.signal(signal.SIGTERM)
    assert run.wait() == 0, run.log()

    assert len(outputs) == len(before) + len(after), run.log()
    assert len(dead) == len(BAD_MESSAGES), run.log()
    first_bad_offset = len(before)
    for index, ((case, key, value, reason), letter) in enumerate(
        zip(BAD_MESSAGES, dead, strict=True)
    ):
        assert letter.headers["hiertcn.reason"].decode() == reason, case
        assert letter.headers["hiertcn.error"], case
        source = f"{topics.input}[0]@{first_bad_offset + index}"
        assert letter.headers["hiertcn.source"].decode() == source, case
        assert letter.headers["trace-id"] == b"t-1", case
        assert letter.key == key.decode(), case
        if "hiertcn.truncated" in letter.headers:
            # Only a message too large to produce is cut, and its first bytes are kept.
            assert int(letter.headers["hiertcn.truncated"]) == len(key) + len(value), case
            assert len(value) > 900_000, case
            assert value.startswith(letter.raw_value), case
        else:
            assert letter.raw_value == value, case

    assert _metric(metrics, "hiertcn_dead_letters_total", 'reason="invalid_ts"') == 2
    assert _metric(metrics, "hiertcn_dead_letters_total", 'reason="invalid_msgpack"') == 2
    consumed = len(before) + len(after) + len(BAD_MESSAGES)
    assert _metric(metrics, "hiertcn_events_consumed_total", 'partition="0"') == consumed
    outputs = _metric(metrics, "hiertcn_outputs_produced_total", 'trigger="event"')
    assert outputs == len(before) + len(after)
    assert _metric(metrics, "hiertcn_inference_seconds_count", 'graph="session_step"') >= 1
    assert _metric(metrics, "hiertcn_end_to_end_latency_seconds_count") == consumed - len(
        BAD_MESSAGES
    )
