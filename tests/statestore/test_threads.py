"""StateStore shared by two threads of one process: reads during commits, and map growth."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from statestore import PartitionPosition, StateStore, StoreConfig, UserState, keys
from statestore.codec import decode_state
from statestore.store import StoreTxn
from tests.statestore.helpers import make_state

TOPIC = "interactions"
USERS = [f"user{i}" for i in range(50)]
# Seconds a thread waits for the other before the test fails, far above any commit here.
TIMEOUT = 10.0


def _batch_state(batch: int) -> UserState:
    """Return a state whose every array and counter contains `batch`."""
    state = make_state(seed=batch, last_ts=1000.0 + batch)
    state.session_count = batch
    state.gru_state[:] = batch
    state.session_sum[:] = batch
    return state


def _check_one_batch(states: dict[str, UserState]) -> int:
    """Assert that every state comes from the same commit, and return its batch number."""
    batches = {state.session_count for state in states.values()}
    assert len(batches) == 1, f"states of batches {sorted(batches)} in one read"
    (batch,) = batches
    for state in states.values():
        np.testing.assert_array_equal(state.gru_state, batch)
        assert state.last_ts == 1000.0 + batch
    return batch


def _read_states_and_position(t: StoreTxn) -> tuple[dict[str, UserState], PartitionPosition]:
    """Read every user's state and the position of partition 0 in one transaction."""
    states = {user: decode_state(t.txn.get(keys.user_key(user), db=t.users)) for user in USERS}
    blob = t.txn.get(keys.position_key(TOPIC, 0), db=t.positions)
    return states, keys.decode_position(blob)


def _run_in_thread(target: Callable[[], None], errors: list[BaseException]) -> threading.Thread:
    def guarded() -> None:
        try:
            target()
        except BaseException as error:  # reported by the test thread
            errors.append(error)

    thread = threading.Thread(target=guarded, daemon=True)
    thread.start()
    return thread


def test_read_does_not_wait_for_open_commit(tmp_path: Path) -> None:
    with StateStore(StoreConfig(path=tmp_path / "s", sync=True)) as store:
        store.commit({"u": make_state(seed=1)})
        in_commit = threading.Event()
        read_done = threading.Event()
        waited = []

        def slow_commit(t: StoreTxn) -> None:
            t.txn.put(b"u", b"not a state", db=t.users)
            in_commit.set()
            waited.append(read_done.wait(TIMEOUT))

        errors: list[BaseException] = []
        writer = _run_in_thread(lambda: store.run(slow_commit, write=True), errors)
        assert in_commit.wait(TIMEOUT)
        started = time.perf_counter()
        found = store.read(["u"])
        elapsed = time.perf_counter() - started
        read_done.set()
        writer.join(TIMEOUT)

    assert errors == []
    assert waited == [True], "the read waited for the open write transaction"
    assert elapsed < TIMEOUT
    assert found["u"].same_as(make_state(seed=1))  # the commit was not visible yet


def test_reads_see_whole_synced_batches(tmp_path: Path) -> None:
    batches = 25
    with StateStore(StoreConfig(path=tmp_path / "s", sync=True)) as store:
        store.commit(
            {user: _batch_state(0) for user in USERS}, {(TOPIC, 0): PartitionPosition(0, 0.0)}
        )
        done = threading.Event()

        def commit_batches() -> None:
            for batch in range(1, batches + 1):
                states = {user: _batch_state(batch) for user in USERS}
                store.commit(states, {(TOPIC, 0): PartitionPosition(batch, float(batch))})
            done.set()

        errors: list[BaseException] = []
        writer = _run_in_thread(commit_batches, errors)
        seen = set()
        while not done.is_set() and not errors:
            seen.add(_check_one_batch(store.read(USERS)))
            states, position = store.run(_read_states_and_position)
            batch = _check_one_batch(states)
            assert position.next_offset == batch
            seen.add(batch)
        writer.join(TIMEOUT)
        final = store.read(USERS)

    assert errors == []
    assert _check_one_batch(final) == batches
    assert len(seen) >= 2, f"reads saw only batches {sorted(seen)} while 25 commits ran"


def test_map_grows_while_another_thread_reads(tmp_path: Path) -> None:
    config = StoreConfig(path=tmp_path / "s", map_size=64 << 10, sync=False)
    with StateStore(config) as store:
        first = {user: _batch_state(1) for user in USERS[:10]}
        store.commit(first)
        done = threading.Event()

        def grow() -> None:
            for start in range(0, 3000, 100):
                store.commit({f"new{i}": make_state(seed=i) for i in range(start, start + 100)})
            done.set()

        errors: list[BaseException] = []
        writer = _run_in_thread(grow, errors)
        reads = 0
        while not done.is_set() and not errors:
            found = store.read(USERS[:10])
            assert sorted(found) == sorted(first)
            assert _check_one_batch(found) == 1
            reads += 1
        writer.join(TIMEOUT)

        assert errors == []
        assert reads > 0
        assert store.map_size() > 64 << 10
        assert len(store.read([f"new{i}" for i in range(3000)])) == 3000


def test_map_growth_waits_for_open_read(tmp_path: Path) -> None:
    config = StoreConfig(path=tmp_path / "s", map_size=64 << 10, sync=False)
    with StateStore(config) as store:
        store.commit({"u": make_state(seed=1)})
        in_read = threading.Event()
        ended = {}

        def slow_read(t: StoreTxn) -> UserState:
            in_read.set()
            time.sleep(0.3)  # the writer fills the map and waits to resize meanwhile
            state = decode_state(t.txn.get(b"u", db=t.users))
            ended["read"] = time.perf_counter()
            return state

        results: list[UserState] = []
        errors: list[BaseException] = []
        reader = _run_in_thread(lambda: results.append(store.run(slow_read)), errors)
        assert in_read.wait(TIMEOUT)
        store.commit({f"new{i}": make_state(seed=i) for i in range(3000)})
        ended["commit"] = time.perf_counter()
        reader.join(TIMEOUT)

        assert errors == []  # a resize during the read would invalidate its transaction
        assert results[0].same_as(make_state(seed=1))
        assert ended["read"] < ended["commit"]
        assert store.map_size() > 64 << 10
