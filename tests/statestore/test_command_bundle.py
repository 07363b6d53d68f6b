"""`state stats` with the bundle history, and `state get --bundle` with item ids."""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from statestore import (
    CatalogMismatchError,
    StateStore,
    StoreConfig,
    StoreConfigError,
    command,
)
from tests.conftest import REPO_ROOT
from tests.statestore.helpers import EMBEDDING_DIM, GRU_LAYERS, HIDDEN_SIZE, make_state

ITEM_IDS = [f"movie-{number}" for number in range(30)]


def _run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="hiertcn-stream")
    command.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["state", *argv])
    return args.func(args)


def _write_bundle(path: Path, item_ids: list[str]) -> str:
    """Write the catalog files of a bundle (manifest.json and item_ids.json); return the
    catalog, the sha256 of item_ids.json."""
    path.mkdir(parents=True)
    data = json.dumps(item_ids).encode()
    (path / "item_ids.json").write_bytes(data)
    catalog = hashlib.sha256(data).hexdigest()
    manifest = {"version": "abcdef123456", "files": {"item_ids.json": catalog}}
    (path / "manifest.json").write_text(json.dumps(manifest))
    return catalog


def _store(path: Path, catalog: str | None, rows: list[int]) -> Path:
    config = StoreConfig(
        path=path,
        bundle_version="v1",
        state_shape=(GRU_LAYERS, HIDDEN_SIZE),
        embedding_dim=EMBEDDING_DIM,
        catalog=catalog,
        catalog_items=None if catalog is None else len(ITEM_IDS),
        sync=False,
    )
    state = make_state(session_length=len(rows))
    state.session_items = np.array(rows, dtype=np.int32)
    with StateStore(config) as store:
        store.commit({"alice": state})
    return path


def test_stats_lists_bundle_history(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state_dir = _store(tmp_path / "state", "d6" * 32, [1])
    StateStore(StoreConfig(path=state_dir, bundle_version="v2a", catalog="d6" * 32)).close()
    capsys.readouterr()

    assert _run("--state-dir", str(state_dir), "stats") == 0
    lines = capsys.readouterr().out.splitlines()
    history = [line for line in lines if line.startswith("bundle history")]

    assert len(history) == 2
    assert history[0].startswith("bundle history   v1 since ")
    assert f"[G, H] = [{GRU_LAYERS}, {HIDDEN_SIZE}], D = {EMBEDDING_DIM}" in history[0]
    assert f"catalog of {len(ITEM_IDS)} items (item_ids.json sha256 d6d6d6d6d6d6…)" in history[0]
    assert history[1].startswith("bundle history   v2a since ")
    assert not any(line.startswith("bundle_history") for line in lines)


def test_stats_json_contains_bundle_history(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state_dir = _store(tmp_path / "state", "d6" * 32, [1])
    capsys.readouterr()

    assert _run("--state-dir", str(state_dir), "stats", "--json") == 0
    meta = json.loads(capsys.readouterr().out)["meta"]

    assert [entry["bundle_version"] for entry in meta["bundle_history"]] == ["v1"]
    assert meta["catalog"] == "d6" * 32


def test_get_with_bundle_lists_item_ids(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    catalog = _write_bundle(tmp_path / "bundle", ITEM_IDS)
    state_dir = _store(tmp_path / "state", catalog, [4, 0, 29])
    capsys.readouterr()

    assert (
        _run("--state-dir", str(state_dir), "get", "alice", "--bundle", str(tmp_path / "bundle"))
        == 0
    )
    output = json.loads(capsys.readouterr().out)

    assert output["session_items"] == [4, 0, 29]
    assert output["session_item_ids"] == ["movie-4", "movie-0", "movie-29"]


def test_get_without_bundle_lists_rows_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state_dir = _store(tmp_path / "state", None, [4])
    capsys.readouterr()

    assert _run("--state-dir", str(state_dir), "get", "alice") == 0

    assert "session_item_ids" not in json.loads(capsys.readouterr().out)


def test_get_with_bundle_of_other_catalog_rejected(tmp_path: Path) -> None:
    _write_bundle(tmp_path / "bundle", list(reversed(ITEM_IDS)))
    state_dir = _store(tmp_path / "state", "d6" * 32, [4])

    with pytest.raises(CatalogMismatchError) as raised:
        _run("--state-dir", str(state_dir), "get", "alice", "--bundle", str(tmp_path / "bundle"))

    message = str(raised.value)
    assert raised.value.exit_code == 2
    assert "sha256 d6d6d6d6d6d6…" in message
    assert f"--bundle {tmp_path / 'bundle'}" in message
    assert "pass the bundle that serves this store" in message


def test_get_with_bundle_on_store_without_catalog_warns(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    _write_bundle(tmp_path / "bundle", ITEM_IDS[:3])
    state_dir = _store(tmp_path / "state", None, [1, 7])
    capsys.readouterr()

    with caplog.at_level(logging.WARNING, logger="statestore.command"):
        assert (
            _run(
                "--state-dir", str(state_dir), "get", "alice", "--bundle", str(tmp_path / "bundle")
            )
            == 0
        )

    assert json.loads(capsys.readouterr().out)["session_item_ids"] == ["movie-1", None]
    assert "records no catalog" in caplog.text
    assert "session item rows outside the 3 items" in caplog.text


def test_get_with_changed_item_ids_rejected(tmp_path: Path) -> None:
    catalog = _write_bundle(tmp_path / "bundle", ITEM_IDS)
    (tmp_path / "bundle" / "item_ids.json").write_text(json.dumps(ITEM_IDS[::-1]))
    state_dir = _store(tmp_path / "state", catalog, [4])

    with pytest.raises(StoreConfigError, match="the file was changed after export"):
        _run("--state-dir", str(state_dir), "get", "alice", "--bundle", str(tmp_path / "bundle"))


def test_get_with_folder_without_manifest_rejected(tmp_path: Path) -> None:
    state_dir = _store(tmp_path / "state", None, [4])
    (tmp_path / "empty").mkdir()

    with pytest.raises(StoreConfigError, match=r"contains no manifest\.json"):
        _run("--state-dir", str(state_dir), "get", "alice", "--bundle", str(tmp_path / "empty"))


def test_get_with_bundle_imports_no_runtime(tmp_path: Path) -> None:
    catalog = _write_bundle(tmp_path / "bundle", ITEM_IDS)
    state_dir = _store(tmp_path / "state", catalog, [2])
    script = (
        "import sys\n"
        "from stream.cli import main\n"
        f"code = main(['state', '--state-dir', {str(state_dir)!r}, 'get', 'alice', "
        f"'--bundle', {str(tmp_path / 'bundle')!r}])\n"
        "heavy = sorted({'torch', 'onnxruntime'} & set(sys.modules))\n"
        "print('heavy', heavy, file=sys.stderr)\n"
        "sys.exit(code)\n"
    )

    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    assert "heavy []" in result.stderr
    assert json.loads(result.stdout)["session_item_ids"] == ["movie-2"]
