"""EventLog: layout invariants, subsets, impressions and the save/load round trip."""

from __future__ import annotations

import numpy as np
import pytest

from hiertcn.data.log import EventLog, build_event_log
from hiertcn.data.readers import ReaderConfig, read_log
from hiertcn.data.vocab import ItemVocab
from hiertcn.errors import DataError


@pytest.fixture
def impression_log(tmp_path) -> EventLog:
    path = tmp_path / "log.csv"
    path.write_text(
        "user,item,timestamp,shown\nv,b,50,\nu,a,10,a|b|zz\nu,b,20,\nu,c,9000,c|a\nw,a,5,\n",
        encoding="utf-8",
    )
    raw = read_log(path, ReaderConfig(format="csv", impressions_col="shown"))
    return build_event_log(raw, gap=1800)


def test_vocab_follows_first_appearance_after_sorting(impression_log):
    assert impression_log.vocab.ids == ("a", "b", "c")
    assert list(impression_log.items) == [0, 1, 2, 1, 0]
    assert impression_log.items.dtype == np.int32


def test_impressions_follow_event_order(impression_log):
    log = impression_log
    assert log.impression_offsets is not None
    assert list(log.impression_offsets) == [0, 3, 3, 5, 5, 5]
    assert list(log.event_impressions(0)) == [0, 1, -1]
    assert list(log.event_impressions(2)) == [2, 0]
    assert list(log.event_impressions(3)) == []


def test_subset_users_keeps_sessions_and_impressions(impression_log):
    subset = impression_log.subset_users([2, 0])
    assert list(subset.user_ids) == ["u", "w"]
    assert list(subset.user_offsets) == [0, 3, 4]
    assert list(subset.user_session_offsets) == [0, 2, 3]
    assert list(subset.session_offsets) == [0, 2, 3, 4]
    assert list(subset.impression_offsets) == [0, 3, 3, 5, 5]
    assert subset.vocab is impression_log.vocab


def test_subset_users_rejects_unknown_row(impression_log):
    with pytest.raises(DataError, match=r"user rows must lie in 0\.\.2"):
        impression_log.subset_users([3])


def test_select_events_shortens_sessions(impression_log):
    keep = np.array([True, False, True, True, False])
    targets = np.array([False, False, True, True, True])
    selected = impression_log.select_events(keep, targets)
    assert list(selected.user_ids) == ["u", "v"]
    assert list(selected.session_offsets) == [0, 1, 2, 3]
    assert list(selected.targets) == [False, True, True]


def test_save_load_round_trip_with_mmap(impression_log, tmp_path):
    impression_log.save(tmp_path / "saved")
    loaded = EventLog.load(tmp_path / "saved", mmap=True)
    assert isinstance(loaded.items, np.memmap)
    assert isinstance(loaded.timestamps, np.memmap)
    for name in (
        "user_offsets",
        "user_session_offsets",
        "session_offsets",
        "items",
        "timestamps",
        "targets",
        "impression_offsets",
        "impressions",
    ):
        original, restored = getattr(impression_log, name), getattr(loaded, name)
        assert restored.dtype == original.dtype, name
        np.testing.assert_array_equal(restored, original, err_msg=name)
    assert list(loaded.user_ids) == list(impression_log.user_ids)
    assert loaded.vocab == impression_log.vocab


def test_loaded_log_is_read_only(impression_log, tmp_path):
    impression_log.save(tmp_path / "saved")
    loaded = EventLog.load(tmp_path / "saved")
    with pytest.raises(ValueError):
        loaded.items[0] = 1


def test_load_without_mmap_and_subset(impression_log, tmp_path):
    impression_log.save(tmp_path / "saved")
    loaded = EventLog.load(tmp_path / "saved", mmap=False)
    assert not isinstance(loaded.items, np.memmap)
    assert loaded.subset_users([1]).num_events == 1


def test_load_missing_directory_is_rejected(tmp_path):
    with pytest.raises(DataError, match="is not a saved event log"):
        EventLog.load(tmp_path / "absent")


def test_build_with_given_vocab_rejects_unknown_item(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("user,item,timestamp\nu,a,1\nu,q,2\n", encoding="utf-8")
    raw = read_log(path, ReaderConfig(format="csv"))
    with pytest.raises(DataError, match="item 'q' is not in the vocabulary of 1 items") as error:
        build_event_log(raw, vocab=ItemVocab(("a",)))
    assert "drop the events of items outside the vocabulary first" in str(error.value)
    assert "`ItemVocab.from_ids` over every item" in str(error.value)


def test_vocab_save_load_and_string_ids(tmp_path):
    vocab = ItemVocab.from_ids([42, "7", "42"])
    assert vocab.ids == ("42", "7")
    assert vocab.row(42) == 0
    assert "7" in vocab
    vocab.save(tmp_path / "vocab.json")
    assert (tmp_path / "vocab.json").read_text(encoding="utf-8") == '["42", "7"]'
    assert ItemVocab.load(tmp_path / "vocab.json") == vocab
    assert list(vocab.rows(["7", "x"], missing=-1)) == [1, -1]


def test_vocab_load_missing_file_names_writer(tmp_path):
    with pytest.raises(DataError, match=r"item vocabulary .*vocab\.json not found") as error:
        ItemVocab.load(tmp_path / "vocab.json")
    assert "`EventLog.save` writes one into the folder of each saved event log" in str(error.value)


def test_vocab_rejects_duplicates():
    with pytest.raises(DataError, match=r"duplicate ids \['a'\]"):
        ItemVocab(("a", "b", "a"))
