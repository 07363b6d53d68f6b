"""Stopping the worker mid-stream and starting it again loses no event.

Every run reads the same input topic with its own consumer group, output topic and state
directory. The states after an interrupted run must equal those after an uninterrupted one.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.integration.fixtures_stream import (
    Output,
    Topics,
    WorkerRun,
    assert_same_recommendation,
    make_events,
    make_topics,
    output_watcher,
    outputs_by_user,
    produce_events,
    read_states,
    read_topic,
    start_worker,
    stream_bundle,  # noqa: F401 - pytest fixture
    wait_for_messages,
)

EVENTS = 1500
USERS = 50
PARTITIONS = 4
BATCH = 10
# The interrupted runs are stopped once this many outputs are out.
STOP_AFTER = EVENTS // 4
# The broker's minimum session timeout (group.min.session.timeout.ms, 6 s by default), so that
# the group drops a killed worker in 6 s instead of 45 s.
# Batches that may wait for their LMDB commit; a SIGKILL repeats at most these and one more.
PENDING = 2
WORKER_FLAGS = [
    "--max-batch-size",
    str(BATCH),
    "--max-pending-batches",
    str(PENDING),
    "-X",
    "session.timeout.ms=6000",
]


@dataclass
class Reference:
    """The input topic and what an uninterrupted run made of it."""

    topics: Topics
    users: list[str]
    outputs: dict[str, list[dict[str, Any]]]  # per user, in order
    states: dict[str, Any]


@pytest.fixture(scope="module")
def reference(
    kafka_bootstrap: str,
    stream_bundle: Path,  # noqa: F811
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Reference]:
    events = make_events(users=USERS, count=EVENTS, seed=3)
    topics = make_topics(kafka_bootstrap, lambda base: f"{base}-restart-{id(events):x}", PARTITIONS)
    produce_events(kafka_bootstrap, topics.input, events)
    directory = tmp_path_factory.mktemp("uninterrupted")
    run = start_worker(
        kafka_bootstrap,
        stream_bundle,
        topics,
        directory / "state",
        directory / "worker.log",
        WORKER_FLAGS,
    )
    try:
        outputs = read_topic(kafka_bootstrap, topics.output, EVENTS, timeout_s=120)
        run.signal(signal.SIGTERM)
        assert run.wait() == 0, run.log()
    finally:
        if run.process.poll() is None:
            run.kill_group()
    assert len(outputs) == EVENTS, run.log()
    users = sorted({event["user"] for event in events})
    by_user = {user: [o.value for o in items] for user, items in outputs_by_user(outputs).items()}
    yield Reference(topics, users, by_user, read_states(directory / "state", users))


def _restart_topics(reference: Reference, unique_topic: Callable[[str], str]) -> Topics:
    """Topics of a second run over the reference's input: its own group and output topic."""
    return Topics(
        input=reference.topics.input,
        output=unique_topic("recommendations"),
        dead_letter=unique_topic("dlq"),
        group=unique_topic("group"),
        partitions=PARTITIONS,
    )


def _interrupt_and_resume(
    bootstrap: str,
    bundle: Path,
    topics: Topics,
    tmp_path: Path,
    stop: Callable[[WorkerRun], None],
) -> tuple[list[Output], int, str]:
    """Run the worker until STOP_AFTER outputs, stop it with `stop`, then run it to the end.

    Returns every output, the count present right after the stop, and both logs.
    """
    from ops.kafka.admin import create_topics

    create_topics(bootstrap, [topics.output, topics.dead_letter], PARTITIONS)
    state_dir = tmp_path / "state"
    extra = WORKER_FLAGS
    # The watcher reads the output topic before the worker starts, because a reader that joins
    # a group only then can see its first message after the worker has finished every event.
    with output_watcher(bootstrap, topics.output, PARTITIONS) as watcher:
        first = start_worker(bootstrap, bundle, topics, state_dir, tmp_path / "first.log", extra)
        try:
            wait_for_messages(watcher, STOP_AFTER, timeout_s=120)
            stop(first)
        finally:
            if first.process.poll() is None:
                first.kill_group()
    after_stop = len(read_topic(bootstrap, topics.output, EVENTS, timeout_s=3))

    second = start_worker(bootstrap, bundle, topics, state_dir, tmp_path / "second.log", extra)
    try:
        outputs = read_topic(bootstrap, topics.output, EVENTS, timeout_s=120, settle_s=2.0)
        second.signal(signal.SIGTERM)
        assert second.wait() == 0, second.log()
    finally:
        if second.process.poll() is None:
            second.kill_group()
    return outputs, after_stop, first.log() + second.log()


def _check_outputs(reference: Reference, outputs: list[Output]) -> int:
    """Check per-user order and content against the reference; return the duplicate count."""
    duplicates = 0
    for user, produced in outputs_by_user(outputs).items():
        expected = reference.outputs[user]
        seen: dict[str, dict[str, Any]] = {}
        ordered = []
        for output in produced:
            event_id = output.value["event_id"]
            if event_id in seen:
                duplicates += 1
                # A duplicate repeats the first output; it may only follow it.
                assert_same_recommendation(output.value, seen[event_id])
                continue
            seen[event_id] = output.value
            ordered.append(output.value)
        assert [o["event_id"] for o in ordered] == [o["event_id"] for o in expected], user
        for got, want in zip(ordered, expected, strict=True):
            assert_same_recommendation(got, want)
    assert sum(len(outputs) for outputs in reference.outputs.values()) == EVENTS
    return duplicates


def _check_states(reference: Reference, state_dir: Path) -> None:
    states = read_states(state_dir, reference.users)
    assert states.keys() == reference.states.keys()
    for user, expected in reference.states.items():
        state = states[user]
        for name in ("session_length", "session_count", "session_start", "last_ts", "partition"):
            assert getattr(state, name) == getattr(expected, name), f"{user}.{name}"
        np.testing.assert_array_equal(state.session_items, expected.session_items, err_msg=user)
        for name in ("gru_state", "session_sum", "last_embedding"):
            np.testing.assert_allclose(
                getattr(state, name), getattr(expected, name), atol=1e-5, err_msg=f"{user}.{name}"
            )


def test_sigterm_restart_loses_and_repeats_nothing(
    kafka_bootstrap: str,
    stream_bundle: Path,  # noqa: F811
    reference: Reference,
    unique_topic: Callable[[str], str],
    tmp_path: Path,
) -> None:
    topics = _restart_topics(reference, unique_topic)

    def stop(run: WorkerRun) -> None:
        run.signal(signal.SIGTERM)
        assert run.wait() == 0, run.log()

    outputs, after_stop, log = _interrupt_and_resume(
        kafka_bootstrap, stream_bundle, topics, tmp_path, stop
    )

    assert STOP_AFTER <= after_stop < EVENTS, "the first run was not stopped mid-stream"
    assert len(outputs) == EVENTS, log
    assert _check_outputs(reference, outputs) == 0
    _check_states(reference, tmp_path / "state")


def test_sigkill_restart_loses_nothing(
    kafka_bootstrap: str,
    stream_bundle: Path,  # noqa: F811
    reference: Reference,
    unique_topic: Callable[[str], str],
    tmp_path: Path,
    record_property: Callable[[str, object], None],
) -> None:
    topics = _restart_topics(reference, unique_topic)

    outputs, after_stop, log = _interrupt_and_resume(
        kafka_bootstrap, stream_bundle, topics, tmp_path, WorkerRun.kill_group
    )

    assert STOP_AFTER <= after_stop < EVENTS, "the first run was not killed mid-stream"
    duplicates = _check_outputs(reference, outputs)
    record_property("sigkill_duplicates", duplicates)
    print(f"SIGKILL after {after_stop} outputs: {duplicates} duplicate outputs")
    # Outputs are delivered before the LMDB commit of their batch, so only the batches waiting
    # for their commit and the one in progress at the kill can repeat.
    assert duplicates <= BATCH * (PENDING + 1)
    assert len(outputs) == EVENTS + duplicates, log
    _check_states(reference, tmp_path / "state")
