"""`state import` rejects states with NaN or infinite values, before it writes anything."""

from __future__ import annotations

import io
import json
from pathlib import Path

import msgpack
import numpy as np
import pytest

from statestore import PartitionPosition, StateStore, StoreConfig, codec
from stream.cli import main
from tests.statestore.helpers import make_state

USERS = ["u0", "u1", "u2"]
TOPIC = "interactions"


@pytest.fixture
def source(tmp_path: Path) -> Path:
    """A store of three users with finite states and one partition position."""
    path = tmp_path / "source"
    with StateStore(StoreConfig(path=path, sync=False)) as store:
        store.commit(
            {user: make_state(seed=i) for i, user in enumerate(USERS)},
            {(TOPIC, 0): PartitionPosition(3, 1.7e9)},
        )
    return path


def _export(source: Path, path: Path) -> Path:
    assert main(["state", "--state-dir", str(source), "export", str(path)]) == 0
    return path


def _edit_jsonl(path: Path, user: str, field: str, index: tuple[int, ...], token: str) -> int:
    """Set the value at `index` of `field` of `user` (the field itself for an empty `index`) in
    a JSON-lines export to the bare JSON token `token`, for example `NaN`, which Python's json
    module reads. Return the record's line number."""
    lines = path.read_text().splitlines()
    for number, line in enumerate(lines, start=1):
        record = json.loads(line)
        if record.get("user") != user:
            continue
        if index:
            target = record["state"][field]
            for position in index[:-1]:
                target = target[position]
            target[index[-1]] = "MARK"
        else:
            record["state"][field] = "MARK"
        lines[number - 1] = json.dumps(record).replace('"MARK"', token)
        path.write_text("\n".join(lines) + "\n")
        return number
    raise AssertionError(f"no record of {user} in {path}")


def _import(state_dir: Path, path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["state", "--state-dir", str(state_dir), "import", str(path)])
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    ("field", "index", "token", "expected"),
    [
        ("gru_state", (1, 3), "NaN", "gru_state[1, 3] = nan"),
        ("session_sum", (2,), "Infinity", "session_sum[2] = inf"),
        ("last_embedding", (0,), "-Infinity", "last_embedding[0] = -inf"),
        ("gru_state", (0, 0), "1e39", "gru_state[0, 0] = inf"),  # beyond the float32 range
        ("last_ts", (), "NaN", "last_ts = nan"),
    ],
    ids=["gru-nan", "sum-inf", "embedding-minus-inf", "float32-overflow", "last-ts-nan"],
)
def test_import_rejects_non_finite_value(
    source: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    field: str,
    index: tuple[int, ...],
    token: str,
    expected: str,
) -> None:
    dump = _export(source, tmp_path / "dump.jsonl")
    line = _edit_jsonl(dump, "u1", field, index, token)
    target = tmp_path / "target"

    code, err = _import(target, dump, capsys)

    assert code == 2
    assert f"{dump} has a NaN or infinite value in a user state" in err
    assert f"user 'u1' (record {line}, line {line}) has {expected}" in err
    assert "nothing was imported" in err
    assert "Traceback" not in err
    assert not target.exists()


def test_import_names_line_after_blank_lines(
    source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dump = _export(source, tmp_path / "dump.jsonl")
    record_number = _edit_jsonl(dump, "u2", "gru_state", (0, 1), "NaN")
    header, rest = dump.read_text().split("\n", 1)
    dump.write_text(f"{header}\n\n\n{rest}")

    code, err = _import(tmp_path / "target", dump, capsys)

    assert code == 2
    assert f"user 'u2' (record {record_number}, line {record_number + 2}) has" in err


def test_import_counts_further_non_finite_fields(
    source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dump = _export(source, tmp_path / "dump.jsonl")
    _edit_jsonl(dump, "u0", "session_sum", (1,), "NaN")
    _edit_jsonl(dump, "u2", "gru_state", (0, 0), "Infinity")
    _edit_jsonl(dump, "u2", "last_embedding", (5,), "NaN")

    code, err = _import(tmp_path / "target", dump, capsys)

    assert code == 2
    assert "user 'u0' (record 3, line 3) has session_sum[1] = nan (and 2 more such fields)" in err


def test_import_rejects_non_finite_msgpack_record(
    source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dump = _export(source, tmp_path / "dump.msgpack")
    records = list(msgpack.Unpacker(io.BytesIO(dump.read_bytes()), raw=False))
    number = next(i for i, r in enumerate(records, start=1) if r.get("user") == "u1")
    state = codec.decode_state(records[number - 1]["record"])
    state.gru_state[0, 2] = np.nan
    records[number - 1]["record"] = codec.encode_state(state)
    dump.write_bytes(b"".join(msgpack.packb(r, use_bin_type=True) for r in records))

    code, err = _import(tmp_path / "target", dump, capsys)

    assert code == 2
    assert f"user 'u1' (record {number}) has gru_state[0, 2] = nan" in err
    assert not (tmp_path / "target").exists()


def test_rejected_import_leaves_store_unchanged(
    source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "target"
    with StateStore(StoreConfig(path=target, sync=False)) as store:
        store.commit({"kept": make_state(seed=9)}, {(TOPIC, 0): PartitionPosition(1, 1.0)})
    dump = _export(source, tmp_path / "dump.jsonl")
    # The last user is the bad one, so a check while committing would leave the others stored.
    _edit_jsonl(dump, USERS[-1], "gru_state", (1, 1), "NaN")

    code, _err = _import(target, dump, capsys)

    assert code == 2
    with StateStore(StoreConfig(path=target, writer_lock="none")) as store:
        assert sorted(store.read(["kept", *USERS])) == ["kept"]
        assert store.positions(TOPIC)[0].next_offset == 1


def test_import_accepts_finite_export(
    source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dump = _export(source, tmp_path / "dump.jsonl")

    code, _err = _import(tmp_path / "target", dump, capsys)

    assert code == 0
    with StateStore(StoreConfig(path=tmp_path / "target", writer_lock="none")) as store:
        assert sorted(store.read(USERS)) == USERS


def test_non_finite_values_of_state() -> None:
    state = make_state(with_embedding=False)
    assert state.non_finite_values() == []

    state.gru_state[1, 4] = np.inf
    state.gru_state[0, 7] = np.nan
    state.session_start = float("-inf")

    assert state.non_finite_values() == [
        ("gru_state", (0, 7), pytest.approx(np.nan, nan_ok=True)),
        ("session_start", (), float("-inf")),
    ]
