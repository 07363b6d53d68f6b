"""`state export` and `state import`: the file format, its completeness check and state sizes."""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
from pathlib import Path

import msgpack
import numpy as np
import pytest

from statestore import (
    CatalogMismatchError,
    ExportFileError,
    PartitionPosition,
    StateCodecError,
    StateStore,
    StateStoreError,
    StoreConfig,
    StoreConfigError,
    UserState,
    command,
    export,
)
from stream.cli import main
from tests.statestore.helpers import EMBEDDING_DIM, GRU_LAYERS, HIDDEN_SIZE, make_state

USERS = ["u0", "u1", "u2", "u3", "u4"]
# Catalog (sha256 of item_ids.json) and item count of the bundle `small`.
SMALL_CATALOG = "5a" * 32
SMALL_ITEMS = 1000


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hiertcn-stream")
    command.register(parser.add_subparsers(dest="command", required=True))
    return parser


def _run(*argv: str) -> int:
    args = _parser().parse_args(["state", *argv])
    return args.func(args)


def _sized_state(seed: int, layers: int, hidden: int, dim: int) -> UserState:
    state = make_state(seed=seed)
    state.gru_state = np.full((layers, hidden), seed, dtype=np.float32)
    state.session_sum = np.zeros(dim, dtype=np.float32)
    state.last_embedding = np.ones(dim, dtype=np.float32)
    return state


def _make_store(
    path: Path,
    layers: int,
    hidden: int,
    dim: int,
    version: str | None,
    catalog: tuple[str, int] | None = None,
) -> Path:
    """Create a store of five users whose states have the given sizes, recorded in its meta
    unless `version` is None, with the catalog (sha256, item count) `catalog`."""
    config = StoreConfig(path=path, sync=False)
    if version is not None:
        config = StoreConfig(
            path=path,
            bundle_version=version,
            state_shape=(layers, hidden),
            embedding_dim=dim,
            catalog=None if catalog is None else catalog[0],
            catalog_items=None if catalog is None else catalog[1],
            sync=False,
        )
    with StateStore(config) as store:
        store.commit(
            {user: _sized_state(i, layers, hidden, dim) for i, user in enumerate(USERS)},
            {("interactions", 0): PartitionPosition(5, 1.7e9)},
        )
    return path


@pytest.fixture
def source(tmp_path: Path) -> Path:
    """A store written with the bundle `small` ([G, H] = [2, 8], D = 6, `SMALL_CATALOG`)."""
    return _make_store(
        tmp_path / "source",
        GRU_LAYERS,
        HIDDEN_SIZE,
        EMBEDDING_DIM,
        "small",
        (SMALL_CATALOG, SMALL_ITEMS),
    )


def _export(source: Path, path: Path, *flags: str) -> Path:
    assert _run("--state-dir", str(source), "export", str(path), *flags) == 0
    return path


def _meta(path: Path) -> dict:
    with StateStore(StoreConfig(path=path)) as store:
        return store.meta()


def _users(path: Path) -> list[str]:
    with StateStore(StoreConfig(path=path)) as store:
        return sorted(store.read(USERS))


def _records(path: Path) -> list[dict]:
    data = path.read_bytes()
    if data.startswith(b"{"):
        return [json.loads(line) for line in data.splitlines()]
    return list(msgpack.Unpacker(io.BytesIO(data), raw=False))


# Format ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["dump.jsonl", "dump.msgpack"])
def test_export_header_and_end_record(source: Path, tmp_path: Path, name: str) -> None:
    records = _records(_export(source, tmp_path / name))

    assert records[0] == {
        "type": "header",
        "format": "hiertcn-state-export",
        "version": 1,
        "bundle_version": "small",
        "state_shape": [GRU_LAYERS, HIDDEN_SIZE],
        "embedding_dim": EMBEDDING_DIM,
        "catalog": SMALL_CATALOG,
        "catalog_items": SMALL_ITEMS,
    }
    assert records[-1] == {"type": "end", "users": 5, "positions": 1}
    assert [record["type"] for record in records[1:-1]] == ["position"] + ["user"] * 5


def test_export_summary_counts_in_singular(
    source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _export(source, tmp_path / "dump.jsonl")
    assert "exported 5 users and 1 partition position to" in capsys.readouterr().out

    assert _run("--state-dir", str(tmp_path / "copy"), "import", str(tmp_path / "dump.jsonl")) == 0
    assert "imported 5 users and 1 partition position from" in capsys.readouterr().out


# Completeness ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["dump.jsonl", "dump.msgpack"])
@pytest.mark.parametrize("keep", [0.3, 0.6, 0.95])
def test_import_rejects_cut_file(source: Path, tmp_path: Path, name: str, keep: float) -> None:
    data = _export(source, tmp_path / name).read_bytes()
    if name.endswith(".jsonl"):
        lines = data.splitlines(keepends=True)
        cut = b"".join(lines[: max(1, int(len(lines) * keep))])  # cut at a line end
    else:
        cut = data[: int(len(data) * keep)]
    (tmp_path / "cut").write_bytes(cut)
    target = tmp_path / "target"

    with pytest.raises(ExportFileError, match="incomplete") as raised:
        _run("--state-dir", str(target), "import", str(tmp_path / "cut"))

    assert raised.value.exit_code == 2
    assert not target.exists()


def test_import_rejects_wrong_end_counts(source: Path, tmp_path: Path) -> None:
    lines = _export(source, tmp_path / "dump.jsonl").read_text().splitlines()
    del lines[3]  # a user record
    (tmp_path / "short.jsonl").write_text("\n".join(lines) + "\n")

    with pytest.raises(ExportFileError, match=r"contains 4 users .* counts 5 users"):
        _run("--state-dir", str(tmp_path / "target"), "import", str(tmp_path / "short.jsonl"))
    assert not (tmp_path / "target").exists()


def test_import_rejects_records_after_end(source: Path, tmp_path: Path) -> None:
    lines = _export(source, tmp_path / "dump.jsonl").read_text().splitlines()
    (tmp_path / "extra.jsonl").write_text("\n".join([*lines, lines[2]]) + "\n")

    with pytest.raises(ExportFileError, match="follows the end record"):
        _run("--state-dir", str(tmp_path / "target"), "import", str(tmp_path / "extra.jsonl"))


def test_import_rejects_empty_file(tmp_path: Path) -> None:
    (tmp_path / "empty.jsonl").write_bytes(b"")

    with pytest.raises(ExportFileError, match="is empty"):
        _run("--state-dir", str(tmp_path / "target"), "import", str(tmp_path / "empty.jsonl"))
    assert not (tmp_path / "target").exists()


def test_import_rejects_newer_export_version(source: Path, tmp_path: Path) -> None:
    lines = _export(source, tmp_path / "dump.jsonl").read_text().splitlines()
    header = json.loads(lines[0])
    header["version"] = 2
    (tmp_path / "new.jsonl").write_text("\n".join([json.dumps(header), *lines[1:]]) + "\n")

    with pytest.raises(ExportFileError, match="upgrade hiertcn"):
        _run("--state-dir", str(tmp_path / "target"), "import", str(tmp_path / "new.jsonl"))


def test_import_reads_export_without_header(
    source: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Earlier versions wrote the position and user records alone.
    lines = _export(source, tmp_path / "dump.jsonl").read_text().splitlines()
    (tmp_path / "old.jsonl").write_text("\n".join(lines[1:-1]) + "\n")

    with caplog.at_level(logging.WARNING, logger="statestore.import_file"):
        assert (
            _run("--state-dir", str(tmp_path / "copy"), "import", str(tmp_path / "old.jsonl")) == 0
        )

    assert "cannot check that the file is complete" in caplog.text
    assert _users(tmp_path / "copy") == USERS


def test_import_rejects_end_without_header(source: Path, tmp_path: Path) -> None:
    lines = _export(source, tmp_path / "dump.jsonl").read_text().splitlines()
    (tmp_path / "odd.jsonl").write_text("\n".join(lines[1:]) + "\n")

    with pytest.raises(ExportFileError, match="end record but no header"):
        _run("--state-dir", str(tmp_path / "target"), "import", str(tmp_path / "odd.jsonl"))


# State sizes -------------------------------------------------------------------------------


def test_import_records_sizes_in_new_store(source: Path, tmp_path: Path) -> None:
    dump = _export(source, tmp_path / "dump.msgpack")

    assert _run("--state-dir", str(tmp_path / "copy"), "import", str(dump)) == 0

    meta = _meta(tmp_path / "copy")
    assert meta["bundle_version"] == "small"
    assert meta["state_shape"] == [GRU_LAYERS, HIDDEN_SIZE]
    assert meta["embedding_dim"] == EMBEDDING_DIM


def test_imported_store_rejects_bundle_of_other_sizes(source: Path, tmp_path: Path) -> None:
    dump = _export(source, tmp_path / "dump.jsonl")
    assert _run("--state-dir", str(tmp_path / "copy"), "import", str(dump)) == 0

    other = StoreConfig(
        path=tmp_path / "copy", bundle_version="large", state_shape=(1, 16), embedding_dim=16
    )
    with pytest.raises(StoreConfigError, match=r"\[2, 8\].*\[1, 16\]"):
        StateStore(other)


def test_import_without_sizes_records_state_sizes(tmp_path: Path) -> None:
    # A store without sizes in its metadata, as `import` of earlier versions left behind.
    source = _make_store(tmp_path / "source", 1, 16, 16, version=None)
    dump = _export(source, tmp_path / "dump.jsonl")
    assert _records(dump)[0]["state_shape"] is None

    assert _run("--state-dir", str(tmp_path / "copy"), "import", str(dump)) == 0

    meta = _meta(tmp_path / "copy")
    assert meta["state_shape"] == [1, 16]
    assert meta["embedding_dim"] == 16
    assert "bundle_version" not in meta


def test_import_rejects_states_of_other_sizes(source: Path, tmp_path: Path) -> None:
    dump = _export(source, tmp_path / "dump.jsonl")
    target = _make_store(tmp_path / "target", 1, 16, 16, "large")
    before = target.joinpath("data.mdb").read_bytes()

    with pytest.raises(StoreConfigError) as raised:
        _run("--state-dir", str(target), "import", str(dump))

    message = str(raised.value)
    assert raised.value.exit_code == 2
    assert "[G, H] = [2, 8] and D = 6" in message
    assert "[G, H] = [1, 16] and D = 16" in message
    assert "new --state-dir" in message
    assert "evict --inactive-days 0 --now" in message
    assert target.joinpath("data.mdb").read_bytes() == before
    assert _meta(target)["state_shape"] == [1, 16]


def test_import_checks_sizes_of_store_without_meta(source: Path, tmp_path: Path) -> None:
    dump = _export(source, tmp_path / "dump.msgpack")
    target = _make_store(tmp_path / "target", 1, 16, 16, version=None)

    with pytest.raises(StoreConfigError, match=r"\[1, 16\] and D = 16"):
        _run("--state-dir", str(target), "import", str(dump))


def test_import_into_emptied_store_takes_other_sizes(source: Path, tmp_path: Path) -> None:
    dump = _export(source, tmp_path / "dump.jsonl")
    target = _make_store(tmp_path / "target", 1, 16, 16, "large")
    with StateStore(StoreConfig(path=target)) as store:
        store.commit({}, deletes=USERS)

    assert _run("--state-dir", str(target), "import", str(dump)) == 0

    assert _meta(target)["state_shape"] == [GRU_LAYERS, HIDDEN_SIZE]
    assert _users(target) == USERS


# Item catalog ------------------------------------------------------------------------------


def test_import_rejects_other_catalog(source: Path, tmp_path: Path) -> None:
    dump = _export(source, tmp_path / "dump.jsonl")
    other_catalog = "0b" * 32
    target = _make_store(
        tmp_path / "target", GRU_LAYERS, HIDDEN_SIZE, EMBEDDING_DIM, "other", (other_catalog, 881)
    )
    before = target.joinpath("data.mdb").read_bytes()

    with pytest.raises(CatalogMismatchError) as raised:
        _run("--state-dir", str(target), "import", str(dump))

    message = str(raised.value)
    assert raised.value.exit_code == 2
    assert f"catalog of {SMALL_ITEMS} items (item_ids.json sha256 {SMALL_CATALOG[:12]}" in message
    assert f"catalog of 881 items (item_ids.json sha256 {other_catalog[:12]}" in message
    assert "bundle small" in message
    assert "new --state-dir" in message
    assert "evict --inactive-days 0 --now" in message
    assert target.joinpath("data.mdb").read_bytes() == before
    assert _meta(target)["catalog"] == other_catalog


def test_import_records_catalog_in_new_store(source: Path, tmp_path: Path) -> None:
    dump = _export(source, tmp_path / "dump.msgpack")

    assert _run("--state-dir", str(tmp_path / "copy"), "import", str(dump)) == 0

    meta = _meta(tmp_path / "copy")
    assert meta["catalog"] == SMALL_CATALOG
    assert meta["catalog_items"] == SMALL_ITEMS
    other = StoreConfig(path=tmp_path / "copy", bundle_version="v2c", catalog="0b" * 32)
    with pytest.raises(CatalogMismatchError):
        StateStore(other)


def test_import_into_emptied_store_takes_other_catalog(source: Path, tmp_path: Path) -> None:
    dump = _export(source, tmp_path / "dump.jsonl")
    target = _make_store(
        tmp_path / "target", GRU_LAYERS, HIDDEN_SIZE, EMBEDDING_DIM, "other", ("0b" * 32, 881)
    )
    with StateStore(StoreConfig(path=target)) as store:
        store.commit({}, deletes=USERS)

    assert _run("--state-dir", str(target), "import", str(dump)) == 0

    assert _meta(target)["catalog"] == SMALL_CATALOG
    assert _users(target) == USERS


def test_import_export_without_catalog_warns(
    source: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Exports of earlier versions have a header without the catalog keys.
    lines = _export(source, tmp_path / "dump.jsonl").read_text().splitlines()
    header = json.loads(lines[0])
    del header["catalog"], header["catalog_items"]
    (tmp_path / "old.jsonl").write_text("\n".join([json.dumps(header), *lines[1:]]) + "\n")
    target = _make_store(
        tmp_path / "target", GRU_LAYERS, HIDDEN_SIZE, EMBEDDING_DIM, "other", ("0b" * 32, 881)
    )

    with caplog.at_level(logging.WARNING, logger="statestore.import_file"):
        assert _run("--state-dir", str(target), "import", str(tmp_path / "old.jsonl")) == 0

    assert f"{tmp_path / 'old.jsonl'} records no catalog" in caplog.text
    assert "cannot check that its session items are rows of the catalog" in caplog.text
    assert _users(target) == USERS


@pytest.mark.parametrize(("key", "value"), [("catalog", 5), ("catalog_items", -1)])
def test_import_rejects_invalid_catalog_header(
    source: Path, tmp_path: Path, key: str, value: object
) -> None:
    lines = _export(source, tmp_path / "dump.jsonl").read_text().splitlines()
    header = json.loads(lines[0])
    header[key] = value
    (tmp_path / "bad.jsonl").write_text("\n".join([json.dumps(header), *lines[1:]]) + "\n")

    with pytest.raises(ExportFileError, match=f"{key} {value!r}"):
        _run("--state-dir", str(tmp_path / "target"), "import", str(tmp_path / "bad.jsonl"))


def test_import_rejects_file_mixing_sizes(source: Path, tmp_path: Path) -> None:
    lines = _export(source, tmp_path / "dump.jsonl").read_text().splitlines()
    other = json.loads(lines[3])
    other["state"]["gru_state"] = [[0.0] * 16]
    lines[3] = json.dumps(other)
    (tmp_path / "mixed.jsonl").write_text("\n".join(lines) + "\n")

    with pytest.raises(ExportFileError, match=r"\[1, 16\].*the file's header gives.*\[2, 8\]"):
        _run("--state-dir", str(tmp_path / "target"), "import", str(tmp_path / "mixed.jsonl"))
    assert not (tmp_path / "target").exists()


@pytest.mark.parametrize(
    "gru_state", [["a", "b"], [1.0, 2.0], [[1.0], [1.0, 2.0]], "text"], ids=str
)
def test_import_rejects_invalid_gru_state(source: Path, tmp_path: Path, gru_state: object) -> None:
    lines = _export(source, tmp_path / "dump.jsonl").read_text().splitlines()
    record = json.loads(lines[2])
    record["state"]["gru_state"] = gru_state
    lines[2] = json.dumps(record)
    (tmp_path / "bad.jsonl").write_text("\n".join(lines) + "\n")

    with pytest.raises(ExportFileError, match="user record 3") as raised:
        _run("--state-dir", str(tmp_path / "target"), "import", str(tmp_path / "bad.jsonl"))
    assert raised.value.exit_code == 2
    assert not (tmp_path / "target").exists()


# Paths and exit codes ----------------------------------------------------------------------


def test_export_refuses_existing_file_without_force(source: Path, tmp_path: Path) -> None:
    data_file = tmp_path / "ratings.csv"
    data_file.write_text("userId,movieId,rating,timestamp\n")

    with pytest.raises(StoreConfigError, match="already exists: pass --force"):
        _run("--state-dir", str(source), "export", str(data_file))

    assert data_file.read_text() == "userId,movieId,rating,timestamp\n"
    _export(source, data_file, "--force")
    assert _records(data_file)[-1]["type"] == "end"


def test_export_failure_keeps_old_file(
    source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dump = tmp_path / "dump.jsonl"
    dump.write_text("the previous backup\n")

    def fail(*_args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(export, "export_store", fail)
    with pytest.raises(StateStoreError, match=r"No space left on device.*nothing was written"):
        _run("--state-dir", str(source), "export", str(dump), "--force")

    assert dump.read_text() == "the previous backup\n"
    assert sorted(os.listdir(tmp_path)) == ["dump.jsonl", "source"]


@pytest.mark.parametrize(
    ("target", "message"),
    [
        (".", "is a directory: name a file in it"),
        ("missing/dump.jsonl", "missing of export file .* does not exist: create it first"),
    ],
)
def test_export_rejects_bad_path(source: Path, tmp_path: Path, target: str, message: str) -> None:
    with pytest.raises(StoreConfigError, match=message) as raised:
        _run("--state-dir", str(source), "export", str(tmp_path / target))
    assert raised.value.exit_code == 2


def test_export_to_standard_output(
    source: Path, tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    assert _run("--state-dir", str(source), "export", "-") == 0
    captured = capsysbinary.readouterr()
    assert b"exported 5 users" in captured.err
    assert not (Path.cwd() / "-").exists()
    (tmp_path / "piped.jsonl").write_bytes(captured.out)

    assert _run("--state-dir", str(tmp_path / "copy"), "import", str(tmp_path / "piped.jsonl")) == 0
    assert _users(tmp_path / "copy") == USERS


def test_import_path_errors(tmp_path: Path) -> None:
    target = str(tmp_path / "target")
    with pytest.raises(ExportFileError, match="is a directory: pass the file"):
        _run("--state-dir", target, "import", str(tmp_path))
    with pytest.raises(ExportFileError, match="not found: check the path"):
        _run("--state-dir", target, "import", str(tmp_path / "none.jsonl"))
    with pytest.raises(ExportFileError, match="not standard input"):
        _run("--state-dir", target, "import", "-")
    assert not (tmp_path / "target").exists()


@pytest.mark.parametrize(
    "content",
    [
        b"{not json\n",
        b'{"type": "other"}\n',
        b"userId,movieId,rating,timestamp\n1,1,4.0,964982703\n",
        b'{"type": "position", "topic": "t"}\n',
    ],
    ids=["bad-json", "unknown-type", "csv", "position-fields"],
)
def test_corrupt_import_exits_2_and_creates_nothing(
    tmp_path: Path, content: bytes, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad"
    bad.write_bytes(content)
    target = tmp_path / "target"

    assert main(["state", "--state-dir", str(target), "import", str(bad)]) == 2

    assert "Traceback" not in capsys.readouterr().err
    assert not target.exists()


def test_import_error_is_a_codec_error(tmp_path: Path) -> None:
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    with pytest.raises(StateCodecError, match="line 1"):
        _run("--state-dir", str(tmp_path / "s"), "import", str(tmp_path / "bad.jsonl"))


def test_import_into_file_state_dir(source: Path, tmp_path: Path) -> None:
    dump = _export(source, tmp_path / "dump.jsonl")
    with pytest.raises(StoreConfigError, match="is a file, not a directory"):
        _run("--state-dir", str(dump), "import", str(dump))
