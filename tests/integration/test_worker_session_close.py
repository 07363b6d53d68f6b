"""The worker on the real broker with --publish-on-session-close: one session-start output per
timer close, after the session has expired, and event outputs unchanged by the flag."""

from __future__ import annotations

import re
import signal
import socket
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from tests.integration.fixtures_stream import (
    SESSION_GAP,
    START_TS,
    TOP_K,
    Output,
    Topics,
    WorkerRun,
    assert_same_recommendation,
    make_events,
    make_topics,
    produce_events,
    read_states,
    read_topic,
    replay_outputs,
    start_worker,
    stream_bundle,  # noqa: F401 - pytest fixture
    worker_runs,  # noqa: F401 - pytest fixture
)

FLAG = "--publish-on-session-close"
OUTPUT_FIELDS = {"user", "event_id", "ts", "items", "scores", "model", "session"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def metric(text: str, name: str, labels: str = "") -> float:
    pattern = re.escape(name + ("{" + labels + "}" if labels else "")) + r" ([0-9.e+]+)"
    match = re.search(pattern, text)
    assert match is not None, f"{name}{{{labels}}} not in /metrics"
    return float(match.group(1))


def read_outputs(bootstrap: str, topic: str, events: int, closes: int = 0) -> list[Output]:
    """Read the output topic until it has `events` event outputs and `closes` session-close
    outputs, then one second longer, so that any extra output shows up too."""
    deadline = time.monotonic() + 90
    while True:
        outputs = read_topic(bootstrap, topic, events + closes, timeout_s=30, settle_s=1.0)
        produced = sum("trigger" not in output.value for output in outputs)
        if produced >= events and len(outputs) - produced >= closes:
            return outputs
        assert time.monotonic() < deadline, f"{len(outputs)} outputs after 90 s"


def split(outputs: list[Output]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Return the event outputs and the session-close outputs, each in offset order."""
    ordered = [output.value for output in sorted(outputs, key=lambda output: output.offset)]
    return [o for o in ordered if "trigger" not in o], [o for o in ordered if "trigger" in o]


def check_close_fields(closes: list[dict[str, Any]], model: str) -> None:
    for close in closes:
        assert set(close) == OUTPUT_FIELDS | {"trigger"}, close
        assert close["trigger"] == "session_close"
        assert close["event_id"] is None
        assert close["model"] == model
        assert len(close["items"]) == len(close["scores"]) == TOP_K
    keys = [(close["user"], close["session"]) for close in closes]
    assert len(keys) == len(set(keys)), "a session-close output appears twice"


def check_close_order(outputs: list[Output], gap: float) -> None:
    """Check each session-close output against the outputs around it in the one partition."""
    previous: dict[str, dict[str, Any]] = {}
    newest_event_ts = float("-inf")
    for output in sorted(outputs, key=lambda output: output.offset):
        value = output.value
        before = previous.get(value["user"])
        if "trigger" in value:
            # It follows the last event of the session it closes, once the partition's
            # watermark (its newest event time) has passed that event's time plus the gap.
            assert before is not None and "trigger" not in before, value
            assert value["ts"] == before["ts"] + gap
            assert value["session"] == before["session"] + 1
            assert newest_event_ts > value["ts"], value
        else:
            newest_event_ts = max(newest_event_ts, value["ts"])
            if before is not None and "trigger" in before:
                assert value["session"] == before["session"]
        previous[value["user"]] = value


def start(
    bootstrap: str, bundle: Path, topics: Topics, tmp_path: Path, name: str, *extra: str
) -> WorkerRun:
    flags = ["--max-batch-size", "16", *extra]
    return start_worker(bootstrap, bundle, topics, tmp_path / name, tmp_path / f"{name}.log", flags)


def test_worker_publishes_session_close_outputs(
    kafka_bootstrap: str,
    unique_topic: Callable[[str], str],
    stream_bundle: Path,  # noqa: F811
    worker_runs: list[WorkerRun],  # noqa: F811
    tmp_path: Path,
) -> None:
    events = make_events(users=12, count=160, seed=11)
    # One partition each, so that one watermark closes every session and the outputs of all
    # users are in the order the worker produced them.
    plain_topics = make_topics(kafka_bootstrap, unique_topic, partitions=1)
    flag_topics = make_topics(kafka_bootstrap, unique_topic, partitions=1)
    produce_events(kafka_bootstrap, plain_topics.input, events)
    produce_events(kafka_bootstrap, flag_topics.input, events)
    port = free_port()

    plain = start(kafka_bootstrap, stream_bundle, plain_topics, tmp_path, "plain")
    worker_runs.append(plain)
    flagged = start(
        kafka_bootstrap,
        stream_bundle,
        flag_topics,
        tmp_path,
        "flag",
        FLAG,
        "--metrics-port",
        str(port),
    )
    worker_runs.append(flagged)
    plain_outputs = read_outputs(kafka_bootstrap, plain_topics.output, len(events))
    flag_outputs = read_outputs(kafka_bootstrap, flag_topics.output, len(events))
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        metrics = response.read().decode()
    for run in (plain, flagged):
        run.signal(signal.SIGTERM)
        assert run.wait() == 0, run.log()

    # Without the flag: one output per event and no new field.
    plain_events, plain_closes = split(plain_outputs)
    assert len(plain_outputs) == len(events), plain.log()
    assert plain_closes == []

    # With it: the same event outputs, plus the session-close outputs.
    flag_events, closes = split(flag_outputs)
    assert len(flag_events) == len(events), flagged.log()
    for worker_output, plain_output in zip(flag_events, plain_events, strict=True):
        assert_same_recommendation(worker_output, plain_output)
    assert len(closes) >= 10
    check_close_fields(closes, plain_events[0]["model"])
    check_close_order(flag_outputs, SESSION_GAP)
    assert all(output.key == output.value["user"] for output in flag_outputs)

    # Each session start equals replay's where replay closed the same session by a timer too.
    reference = {
        (output["user"], output["session"]): output
        for output in replay_outputs(stream_bundle, events, session_close_outputs=True)
        if "trigger" in output
    }
    matched = [close for close in closes if (close["user"], close["session"]) in reference]
    assert len(matched) >= len(closes) // 2
    for close in matched:
        expected = reference[(close["user"], close["session"])]
        assert close["items"] == expected["items"]
        np.testing.assert_allclose(close["scores"], expected["scores"], rtol=0, atol=1e-5)

    assert metric(metrics, "hiertcn_outputs_produced_total", 'trigger="event"') == len(events)
    assert metric(metrics, "hiertcn_outputs_produced_total", 'trigger="session_close"') == len(
        closes
    )
    assert metric(metrics, "hiertcn_sessions_closed_total", 'trigger="timer"') == len(closes)
    # The latency histogram counts event outputs only: close outputs have no input message.
    assert metric(metrics, "hiertcn_end_to_end_latency_seconds_count") == len(events)


def test_idle_timers_publish_after_restart(
    kafka_bootstrap: str,
    unique_topic: Callable[[str], str],
    stream_bundle: Path,  # noqa: F811
    worker_runs: list[WorkerRun],  # noqa: F811
    tmp_path: Path,
) -> None:
    events = make_events(users=8, count=80, seed=12)
    topics = make_topics(kafka_bootstrap, unique_topic, partitions=1)
    produce_events(kafka_bootstrap, topics.input, events)
    first = start(kafka_bootstrap, stream_bundle, topics, tmp_path, "state", FLAG)
    worker_runs.append(first)
    outputs = read_outputs(kafka_bootstrap, topics.output, len(events))
    first.signal(signal.SIGTERM)
    assert first.wait() == 0, first.log()
    _events, closes = split(outputs)

    # A restart with a 1 s gap finds the sessions still open behind the stored watermark at its
    # assignment, and closes them in a timer pass while no event arrives.
    watermark = max(event["ts"] for event in events)
    states = read_states(tmp_path / "state", sorted({event["user"] for event in events}))
    idle = {
        user: state
        for user, state in states.items()
        if state.session_length > 0 and state.last_ts < watermark - 1.0
    }
    assert idle
    second = start(
        kafka_bootstrap, stream_bundle, topics, tmp_path, "state", FLAG, "--session-gap", "1"
    )
    worker_runs.append(second)
    outputs = read_outputs(kafka_bootstrap, topics.output, len(events), len(closes) + len(idle))
    second.signal(signal.SIGTERM)
    assert second.wait() == 0, second.log()

    _events, after_restart = split(outputs)
    assert len(after_restart) == len(closes) + len(idle), second.log()
    new = after_restart[len(closes) :]
    check_close_fields(after_restart, new[0]["model"])
    assert {close["user"] for close in new} == set(idle)
    for close in new:
        state = idle[close["user"]]
        assert close["ts"] == state.last_ts + 1.0
        assert close["session"] == state.session_count + 1
    stored = read_states(tmp_path / "state", sorted(idle))
    assert all(state.session_length == 0 for state in stored.values())


def test_quiet_partition_closes_sessions_by_clock(
    kafka_bootstrap: str,
    unique_topic: Callable[[str], str],
    stream_bundle: Path,  # noqa: F811
    worker_runs: list[WorkerRun],  # noqa: F811
    tmp_path: Path,
) -> None:
    # Three users' sessions within one gap of each other: event time alone never closes them,
    # because no later event moves the partition's watermark.
    gap = 2.0
    events = [
        {"user": f"u{n}", "item": f"item{n}", "ts": START_TS + n / 2, "event_id": f"e{n}"}
        for n in range(3)
    ]
    topics = make_topics(kafka_bootstrap, unique_topic, partitions=1)
    produce_events(kafka_bootstrap, topics.input, events)
    clock = ("--session-gap", str(gap), "--idle-partition-seconds", "0")
    run = start(kafka_bootstrap, stream_bundle, topics, tmp_path, "state", FLAG, *clock)
    worker_runs.append(run)

    outputs = read_outputs(kafka_bootstrap, topics.output, len(events), closes=len(events))
    run.signal(signal.SIGTERM)
    assert run.wait() == 0, run.log()

    event_outputs, closes = split(outputs)
    assert [output["user"] for output in event_outputs] == ["u0", "u1", "u2"]
    check_close_fields(closes, event_outputs[0]["model"])
    assert sorted(close["user"] for close in closes) == ["u0", "u1", "u2"]
    for close in closes:
        assert close["ts"] == events[int(close["user"][1:])]["ts"] + gap
    assert f"{topics.input}[0] has received no event for " in run.log()
    states = read_states(tmp_path / "state", ["u0", "u1", "u2"])
    assert all(state.session_length == 0 for state in states.values())
