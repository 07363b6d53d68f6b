"""Replay into a state directory: the bundle's catalog and the writers lock."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from export.manifest import ITEM_IDS_FILE, sha256_file
from statestore import StateStore, StoreConfig, StoreInUseError
from statestore.locks import lock_exclusive
from stream.cli import main
from stream.replay import open_store_states
from tests.statestore.helpers import make_state
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

    with StateStore(StoreConfig(path=tmp_path / "state", writer_lock=False)) as store:
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
    with StateStore(StoreConfig(path=state_dir, writer_lock=False)) as store:
        history = store.meta()["bundle_history"]
    assert [entry["bundle_version"] for entry in history] == ["retrained"]
