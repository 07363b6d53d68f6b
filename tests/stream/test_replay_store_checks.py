"""Replay into a state directory: the bundle's catalog and the writers lock against pools."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest

from export.manifest import ITEM_IDS_FILE, sha256_file
from statestore import StateStore, StoreConfig, StoreInUseError
from statestore.locks import lock_exclusive
from stream.cli import main
from stream.commands import run as run_command
from stream.config import WorkerConfig
from stream.replay import open_store_states
from stream.worker import open_state_store
from tests.statestore.helpers import make_state, start_writer
from tests.stream.conftest import NUM_ITEMS, write_event_log

# Sizes of the stream tests' tiny bundle: G = 2, H = 6, D = 8.
STATE_SHAPE = (2, 6)
EMBEDDING_DIM = 8


def _replay(events: Path, bundle: Path, state_dir: Path) -> int:
    return main(
        ["replay", "--events", str(events), "--bundle", str(bundle), "--state-dir", str(state_dir)]
    )


def _store_of_other_catalog(state_dir: Path) -> None:
    """Write one user of a bundle with the tiny bundle's sizes but a catalog of 881 items."""
    config = StoreConfig(
        path=state_dir,
        bundle_version="retrained",
        state_shape=STATE_SHAPE,
        embedding_dim=EMBEDDING_DIM,
        catalog="52" * 32,
        catalog_items=881,
        sync=False,
    )
    state = make_state()
    state.gru_state = np.zeros(STATE_SHAPE, dtype=np.float32)
    state.session_sum = np.zeros(EMBEDDING_DIM, dtype=np.float32)
    state.last_embedding = np.zeros(EMBEDDING_DIM, dtype=np.float32)
    with StateStore(config) as store:
        store.commit({"u0": state})


def test_replay_records_bundle_catalog(onnx_bundle_dir: Path, tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    write_event_log(events, 20, seed=21)

    assert _replay(events, onnx_bundle_dir, tmp_path / "state") == 0

    with StateStore(StoreConfig(path=tmp_path / "state", writer_lock="none")) as store:
        meta = store.meta()
    assert meta["catalog"] == sha256_file(onnx_bundle_dir / ITEM_IDS_FILE)
    assert meta["catalog_items"] == NUM_ITEMS


def test_replay_rejects_store_of_other_catalog(
    onnx_bundle_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    events = tmp_path / "events.jsonl"
    write_event_log(events, 20, seed=22)
    _store_of_other_catalog(tmp_path / "state")
    capsys.readouterr()

    code = _replay(events, onnx_bundle_dir, tmp_path / "state")

    err = capsys.readouterr().err
    assert code == 2
    assert "catalog of 881 items" in err
    assert f"catalog of {NUM_ITEMS} items" in err
    assert "bundle retrained" in err
    assert "item rows" in err


def test_import_rejected_while_replay_holds_store(tmp_path: Path) -> None:
    source = tmp_path / "source"
    with StateStore(StoreConfig(path=source, sync=False)) as store:
        store.commit({"u1": make_state()})
    dump = tmp_path / "dump.jsonl"
    assert main(["state", "--state-dir", str(source), "export", str(dump)]) == 0
    state_dir = tmp_path / "state"
    states = open_store_states(state_dir, "/data/log.jsonl", "v1", catalog="d6" * 32)
    try:
        code = main(["state", "--state-dir", str(state_dir), "import", str(dump)])
    finally:
        states.store.close()

    assert code == 2
    assert main(["state", "--state-dir", str(state_dir), "import", str(dump)]) == 0


def test_store_open_for_replay_rejected_during_import(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    with lock_exclusive(state_dir), pytest.raises(StoreInUseError):
        open_store_states(state_dir, "/data/log.jsonl", "v1")


def _kill(process: subprocess.Popen[str]) -> None:
    process.send_signal(signal.SIGKILL)
    process.wait()


def test_replay_rejected_while_pool_writes(
    onnx_bundle_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    events, state_dir = tmp_path / "events.jsonl", tmp_path / "live"
    write_event_log(events, 20, seed=23)
    pool = start_writer("batches", state_dir, "4", "nosync")
    try:
        capsys.readouterr()
        code = _replay(events, onnx_bundle_dir, state_dir)
        err = capsys.readouterr().err
    finally:
        _kill(pool)

    assert code == 2
    assert f"state directory {state_dir} is in use by a worker pool" in err
    assert "Stop the pool first, or replay into a copy" in err
    assert f"`hiertcn-stream state --state-dir {state_dir} compact COPY`" in err
    # The replay wrote nothing: no position of its log, and none of its users.
    with StateStore(StoreConfig(path=state_dir, writer_lock="none")) as store:
        assert store.positions(f"replay:{events.resolve()}") == {}
        assert store.read([f"user{i}" for i in range(4, 8)]) == {}


def test_replay_into_compacted_copy_beside_pool(
    onnx_bundle_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    events, state_dir, copy = tmp_path / "events.jsonl", tmp_path / "live", tmp_path / "copy"
    write_event_log(events, 20, seed=24)
    pool = start_writer("batches", state_dir, "4", "nosync")
    try:
        compact = main(["state", "--state-dir", str(state_dir), "compact", str(copy)])
        with caplog.at_level(logging.WARNING, logger="stream.replay"):
            code = _replay(events, onnx_bundle_dir, copy)
    finally:
        _kill(pool)

    assert compact == 0
    assert code == 0
    # The copy contains the pool's users, so the replay warns that it applies its events on them.
    assert f"state directory {copy} already contains states written from interactions" in (
        caplog.text
    )


def test_replay_after_stopped_pool_warns(
    onnx_bundle_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    events, state_dir = tmp_path / "events.jsonl", tmp_path / "live"
    write_event_log(events, 20, seed=25)
    _kill(start_writer("batches", state_dir, "4", "nosync"))

    with caplog.at_level(logging.WARNING, logger="stream.replay"):
        code = _replay(events, onnx_bundle_dir, state_dir)

    assert code == 0
    assert "already contains states written from interactions" in caplog.text
    assert "this replay applies its events on top of them" in caplog.text


def test_pool_store_rejected_while_replay_runs(onnx_bundle, tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    config = WorkerConfig(brokers="127.0.0.1:1", bundle=tmp_path / "bundle", state_dir=state_dir)
    states = open_store_states(state_dir, "/data/log.jsonl", onnx_bundle.version)
    try:
        with pytest.raises(StoreInUseError) as raised:
            open_state_store(config, onnx_bundle)
    finally:
        states.store.close()

    assert raised.value.exit_code == 2
    assert f"state directory {state_dir} is in use" in str(raised.value)
    assert "Wait until it ends, then start the pool again, or pass another --state-dir" in str(
        raised.value
    )
    open_state_store(config, onnx_bundle).close()


def test_run_exits_2_while_replay_runs(
    onnx_bundle_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    state_dir = tmp_path / "state"
    pools: list[WorkerConfig] = []
    monkeypatch.setattr(run_command, "check_topics", lambda config: None)
    monkeypatch.setattr(run_command, "run_pool", lambda config, level: pools.append(config) or 0)
    replay = start_writer("replay", state_dir)
    try:
        capsys.readouterr()
        run = ["run", "--brokers", "127.0.0.1:1", "--bundle", str(onnx_bundle_dir)]
        code = main([*run, "--state-dir", str(state_dir), "--metrics-port", "0"])
        err = capsys.readouterr().err
    finally:
        _kill(replay)

    assert code == 2
    assert pools == []
    assert f"state directory {state_dir} is in use: a replay or" in err
    assert "Wait until it ends, then start the pool again, or pass another --state-dir" in err


def test_replay_lock_taken_before_store_opens(
    onnx_bundle_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import subprocess
    import sys

    from stream.commands.replay import REPLAY_LOCK_FILE
    from tests.stream.test_replay_output import HOLD_LOCK

    events, state_dir = tmp_path / "events.jsonl", tmp_path / "state"
    write_event_log(events, 20, seed=21)
    _store_of_other_catalog(state_dir)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(state_dir / REPLAY_LOCK_FILE)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == "locked\n"
        code = _replay(events, onnx_bundle_dir, state_dir)
    finally:
        holder.kill()
        holder.wait()

    # The running replay's lock is named, not the catalog that only the store's open checks,
    # and the store's meta still names only the bundle that wrote it.
    assert code == 2
    assert "another replay is using --state-dir" in capsys.readouterr().err
    with StateStore(StoreConfig(path=state_dir, writer_lock="none")) as store:
        history = store.meta()["bundle_history"]
    assert [entry["bundle_version"] for entry in history] == ["retrained"]


def test_replay_over_stored_nan_state_scores_finite(onnx_bundle_dir: Path, tmp_path: Path) -> None:
    events, state_dir, output = tmp_path / "events.jsonl", tmp_path / "state", tmp_path / "o.jsonl"
    write_event_log(events, 60, seed=26)
    lines = events.read_text().splitlines(True)
    first, rest = tmp_path / "first.jsonl", tmp_path / "rest.jsonl"
    first.write_text("".join(lines[:30]))
    rest.write_text("".join(lines[30:]))
    assert _replay(first, onnx_bundle_dir, state_dir) == 0
    # A state of an earlier version, which wrote non-finite values without a check.
    with StateStore(StoreConfig(path=state_dir, writer_lock="none")) as store:
        states = store.read([f"user{i}" for i in range(8)])
        for state in states.values():
            state.gru_state[0, 0] = np.nan
        store.commit(states)

    replay = ["replay", "--events", str(rest), "--bundle", str(onnx_bundle_dir)]
    code = main([*replay, "--state-dir", str(state_dir), "--output", str(output)])

    assert code == 0
    scores = [json.loads(line)["scores"] for line in output.read_text().splitlines()]
    assert all(np.isfinite(row).all() for row in scores)
    with StateStore(StoreConfig(path=state_dir, writer_lock="none")) as store:
        assert all(not state.non_finite_values() for state in store.read(states).values())
