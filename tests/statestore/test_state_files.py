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
    assert message.startswith(f"state file {store.path / 'data.mdb'} cannot be read (No such")
    assert "went to the file it opened, not to that path. Stop the pool." in message
    assert "If the directory was moved or its volume unmounted, put it back" in message
    assert raised.value.exit_code == 2


def test_replaced_data_file_named(store: StateStore, tmp_path: Path) -> None:
    other = tmp_path / "other"
    with StateStore(StoreConfig(path=other, map_size=1 << 20, sync=False)):
        pass
    (other / "data.mdb").replace(store.path / "data.mdb")

    with pytest.raises(StateFilesReplacedError, match=r"data\.mdb is now another file, so"):
        store.check_files()


def test_renamed_directory_named(store: StateStore, tmp_path: Path) -> None:
    store.path.rename(tmp_path / "moved")

    with pytest.raises(StateFilesReplacedError, match=r"cannot be read \(No such file"):
        store.check_files()


def test_directory_replaced_by_file_named(store: StateStore, tmp_path: Path) -> None:
    store.path.rename(tmp_path / "moved")
    store.path.write_text("not a directory")

    with pytest.raises(StateFilesReplacedError, match=r"cannot be read \(Not a directory\)"):
        store.check_files()


def test_repointed_link_names_opened_directory(tmp_path: Path) -> None:
    first, second, link = tmp_path / "first", tmp_path / "second", tmp_path / "link"
    first.mkdir()
    link.symlink_to(first)
    config = StoreConfig(path=link, map_size=1 << 20, sync=False)
    with StateStore(config) as store:
        with StateStore(StoreConfig(path=second, map_size=1 << 20, sync=False)):
            pass
        link.unlink()
        link.symlink_to(second)

        with pytest.raises(StateFilesReplacedError) as raised:
            store.check_files()

    message = str(raised.value)
    assert message.startswith(f"state file {link / 'data.mdb'} (opened as {first}) is now another")
