"""A replay and a live pool never write one state directory at the same time."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from stream.cli import main
from stream.replay import open_store_states
from tests.integration.fixtures_stream import (
    WorkerRun,
    make_events,
    make_topics,
    produce_events,
    read_states,
    read_topic,
    start_worker,
    stream_bundle,  # noqa: F401 - pytest fixture
    worker_runs,  # noqa: F401 - pytest fixture
)

EVENTS = 30
USERS = 5


def test_replay_and_pool_exclude_each_other(
    kafka_bootstrap: str,
    unique_topic: Callable[[str], str],
    stream_bundle: Path,  # noqa: F811
    worker_runs: list[WorkerRun],  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    topics = make_topics(kafka_bootstrap, unique_topic, partitions=2)
    events = make_events(users=USERS, count=EVENTS, seed=11)
    log = tmp_path / "events.jsonl"
    log.write_text("".join(json.dumps(event) + "\n" for event in events))
    state_dir = tmp_path / "state"
    users = [f"u{index}" for index in range(USERS)]

    # A pool that has served every event and keeps running.
    pool = start_worker(kafka_bootstrap, stream_bundle, topics, state_dir, tmp_path / "pool.log")
    worker_runs.append(pool)
    produce_events(kafka_bootstrap, topics.input, events)
    assert len(read_topic(kafka_bootstrap, topics.output, EVENTS, settle_s=1.0)) == EVENTS
    before = read_states(state_dir, users)

    capsys.readouterr()
    replay = ["replay", "--events", str(log), "--bundle", str(stream_bundle)]
    code = main([*replay, "--state-dir", str(state_dir)])
    err = capsys.readouterr().err

    assert code == 2
    assert f"state directory {state_dir} is in use by a worker pool" in err
    assert f"`hiertcn-stream state --state-dir {state_dir} compact COPY`" in err
    after = read_states(state_dir, users)
    assert sorted(after) == sorted(before)
    for user, state in after.items():
        assert state.same_as(before[user]), user
    assert pool.process.poll() is None, pool.log()
    pool.signal(signal.SIGTERM)
    assert pool.wait() == 0, pool.log()

    # A pool started while a replay has the directory open stops before it consumes anything.
    states = open_store_states(state_dir, str(log.resolve()), "replaying")
    try:
        second = start_worker(
            kafka_bootstrap, stream_bundle, topics, state_dir, tmp_path / "second.log"
        )
        worker_runs.append(second)
        assert second.wait(90) == 2, second.log()
    finally:
        states.store.close()
    assert f"state directory {state_dir} is in use: a replay or" in second.log()
    assert "Wait until it ends, then start the pool again, or pass another --state-dir" in (
        second.log()
    )
