"""StateStore.check_files: a data.mdb deleted or replaced under an open store is reported."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from statestore import StateFilesReplacedError, StateStore, StoreConfig
from tests.statestore.helpers import make_state


def test_untouched_files_pass(store: StateStore) -> None:
    store.commit({"u1": make_state()}, {})

    store.check_files()


def test_deleted_directory_named(store: StateStore) -> None:
    shutil.rmtree(store.path)

    with pytest.raises(StateFilesReplacedError) as raised:
        store.check_files()

    message = str(raised.value)
    assert message.startswith(f"state file {store.path / 'data.mdb'} was deleted while this")
    assert "stop the pool, restore the directory" in message
    assert raised.value.exit_code == 2


def test_replaced_data_file_named(store: StateStore, tmp_path: Path) -> None:
    other = tmp_path / "other"
    with StateStore(StoreConfig(path=other, map_size=1 << 20, sync=False)):
        pass
    (other / "data.mdb").replace(store.path / "data.mdb")

    with pytest.raises(StateFilesReplacedError, match="was replaced by another file"):
        store.check_files()


def test_renamed_directory_named(store: StateStore, tmp_path: Path) -> None:
    store.path.rename(tmp_path / "moved")

    with pytest.raises(StateFilesReplacedError, match="was deleted while this process"):
        store.check_files()
