"""Checks of the saved parts of a prepared folder, without unpickling, and of its file list."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hiertcn.data.log import EventLog
from hiertcn.data.prepared_files import (
    PART_FILES,
    DamagedPartError,
    check_part_arrays,
    prepared_files,
    read_part_meta,
)
from hiertcn.data.vocab import ItemVocab


def save_part(folder: Path, impressions: bool = False) -> Path:
    log = EventLog(
        user_ids=np.array(["u", "v"], dtype=object),
        user_offsets=np.array([0, 2, 3], dtype=np.int64),
        user_session_offsets=np.array([0, 1, 2], dtype=np.int64),
        session_offsets=np.array([0, 2, 3], dtype=np.int64),
        items=np.array([0, 1, 0], dtype=np.int32),
        timestamps=np.array([10, 20, 30], dtype=np.int64),
        targets=np.ones(3, dtype=bool),
        impression_offsets=np.array([0, 1, 1, 2], dtype=np.int64) if impressions else None,
        impressions=np.array([1, 0], dtype=np.int32) if impressions else None,
        vocab=ItemVocab(("a", "b")),
    )
    log.save(folder)
    return folder


def test_part_files_cover_saved_log(tmp_path):
    part = save_part(tmp_path / "all", impressions=True)
    assert {path.name for path in part.iterdir()} == set(PART_FILES)


def test_saved_part_passes_checks(tmp_path):
    part = save_part(tmp_path / "all", impressions=True)
    check_part_arrays(part, read_part_meta(part))


def test_object_array_rejected_without_unpickling(tmp_path, monkeypatch):
    part = save_part(tmp_path / "all")
    np.save(part / "items.npy", np.array([object(), 1, 2], dtype=object), allow_pickle=True)

    def fail(*args, **kwargs):
        raise AssertionError("the check unpickled the file")

    monkeypatch.setattr("pickle.load", fail)
    with pytest.raises(DamagedPartError, match=r"items\.npy contains an array of type object"):
        check_part_arrays(part, read_part_meta(part))


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.zeros((3, 1), dtype=np.int32), r"and shape \(3, 1\), not a list of integers"),
        (np.zeros(3, dtype=np.float64), "contains an array of type float64"),
        (np.zeros(4, dtype=np.int32), "has 4 values, but meta.json gives 3"),
    ],
)
def test_wrong_array_rejected(tmp_path, array, message):
    part = save_part(tmp_path / "all")
    np.save(part / "items.npy", array)
    with pytest.raises(DamagedPartError, match=message):
        check_part_arrays(part, read_part_meta(part))


def test_appended_bytes_rejected(tmp_path):
    part = save_part(tmp_path / "all")
    with (part / "targets.npy").open("ab") as file:
        file.write(b"\0")
    with pytest.raises(DamagedPartError, match=r"targets\.npy is \d+ bytes, but its header needs"):
        check_part_arrays(part, read_part_meta(part))


@pytest.mark.parametrize("text", ["[]", '{"users": 2, "events": -1, "sessions": 2}', "{"])
def test_bad_meta_rejected(tmp_path, text):
    part = save_part(tmp_path / "all")
    (part / "meta.json").write_text(text, encoding="utf-8")
    with pytest.raises(DamagedPartError, match=r"meta\.json"):
        read_part_meta(part)


def test_prepared_files_splits_own_from_other(tmp_path):
    save_part(tmp_path / "train")
    (tmp_path / "prepared.json").write_text("{}", encoding="utf-8")
    (tmp_path / "train" / "notes.txt").write_text("x", encoding="utf-8")
    (tmp_path / "extra").mkdir()
    own, other = prepared_files(tmp_path)
    assert other == ["extra", "train/notes.txt"]
    assert tmp_path / "prepared.json" in own
    assert own.index(tmp_path / "train" / "items.npy") < own.index(tmp_path / "train")
