"""The bundle metadata of a store: catalog identity, bundle history and the checks on open."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from statestore import (
    CatalogMismatchError,
    PartitionPosition,
    StateStore,
    StoreConfig,
    StoreConfigError,
)
from statestore.bundle_meta import HISTORY_LENGTH
from statestore.store import StoreTxn
from tests.statestore.helpers import EMBEDDING_DIM, GRU_LAYERS, HIDDEN_SIZE, make_state

# Catalogs (sha256 of item_ids.json) of two bundles with the same sizes: the second one was
# trained with other filters, so it has more items and its rows name other items.
CATALOG_V1 = "d6" * 32
CATALOG_V2 = "52" * 32


def _config(
    path: Path,
    version: str,
    catalog: str | None = None,
    items: int | None = None,
    layers: int = GRU_LAYERS,
) -> StoreConfig:
    return StoreConfig(
        path=path,
        bundle_version=version,
        state_shape=(layers, HIDDEN_SIZE),
        embedding_dim=EMBEDDING_DIM,
        catalog=catalog,
        catalog_items=items,
        sync=False,
    )


def _write_users(config: StoreConfig) -> None:
    with StateStore(config) as store:
        store.commit({"u1": make_state(seed=1), "u2": make_state(seed=2)})


def _meta(path: Path) -> dict:
    with StateStore(StoreConfig(path=path, writer_lock="none")) as store:
        return store.meta()


def _delete_meta(path: Path, *names: str) -> None:
    """Make `path` look like a store of an earlier version, which lacks the keys `names`."""

    def work(t: StoreTxn) -> None:
        for name in names:
            t.txn.delete(name.encode(), db=t.meta)

    with StateStore(StoreConfig(path=path)) as store:
        store.run(work, write=True)


def _versions(meta: dict) -> list[str]:
    return [entry["bundle_version"] for entry in meta["bundle_history"]]


# Catalog ------------------------------------------------------------------------------------


def test_other_catalog_with_users_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "s"
    _write_users(_config(path, "v1", CATALOG_V1, 442))

    with pytest.raises(CatalogMismatchError) as raised:
        StateStore(_config(path, "v2c", CATALOG_V2, 881))

    message = str(raised.value)
    assert isinstance(raised.value, StoreConfigError)
    assert raised.value.exit_code == 2
    assert str(path) in message
    assert "bundle v1" in message
    assert "bundle v2c" in message
    assert "catalog of 442 items" in message
    assert "catalog of 881 items" in message
    assert CATALOG_V1[:12] in message
    assert CATALOG_V2[:12] in message
    assert "item rows" in message
    assert "new --state-dir" in message
    assert "--rebuild-state" in message
    assert f"state --state-dir {path} evict --inactive-days 0 --now" in message
    assert "export FILE" in message


def test_rejected_catalog_leaves_meta_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "s"
    _write_users(_config(path, "v1", CATALOG_V1, 442))
    for _attempt in range(2):
        with pytest.raises(CatalogMismatchError):
            StateStore(_config(path, "v2c", CATALOG_V2, 881))

    meta = _meta(path)

    assert meta["catalog"] == CATALOG_V1
    assert meta["catalog_items"] == 442
    assert meta["bundle_version"] == "v1"
    assert _versions(meta) == ["v1"]


def test_catalog_mismatch_of_unknown_size_says_unknown(tmp_path: Path) -> None:
    path = tmp_path / "s"
    _write_users(_config(path, "v1", CATALOG_V1))

    with pytest.raises(CatalogMismatchError) as raised:
        StateStore(_config(path, "v2c", CATALOG_V2, 881))

    assert "catalog of an unknown number of items" in str(raised.value)


def test_same_catalog_other_version_is_accepted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "s"
    _write_users(_config(path, "v1", CATALOG_V1, 442))

    with caplog.at_level(logging.WARNING), StateStore(_config(path, "v2a", CATALOG_V1, 442)):
        pass

    assert "written with bundle v1 and is now used with bundle v2a" in caplog.text
    assert _meta(path)["bundle_version"] == "v2a"


def test_empty_store_takes_other_catalog(tmp_path: Path) -> None:
    path = tmp_path / "s"
    with StateStore(_config(path, "v1", CATALOG_V1, 442)) as store:
        store.commit({"u1": make_state()}, {("interactions", 0): PartitionPosition(1, 1.0)})
        store.commit({}, deletes=["u1"])

    StateStore(_config(path, "v2c", CATALOG_V2, 881)).close()

    meta = _meta(path)
    assert meta["catalog"] == CATALOG_V2
    assert meta["catalog_items"] == 881


def test_store_without_catalog_warns_then_records(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "s"
    _write_users(_config(path, "old"))

    with caplog.at_level(logging.WARNING), StateStore(_config(path, "v1", CATALOG_V1, 442)):
        pass

    assert "written with bundle old and is now used with bundle v1" in caplog.text
    meta = _meta(path)
    assert meta["catalog"] == CATALOG_V1
    assert meta["catalog_items"] == 442
    with pytest.raises(CatalogMismatchError):
        StateStore(_config(path, "v2c", CATALOG_V2, 881))


def test_config_without_catalog_skips_check(tmp_path: Path) -> None:
    path = tmp_path / "s"
    _write_users(_config(path, "v1", CATALOG_V1, 442))

    StateStore(_config(path, "v2c")).close()

    assert _meta(path)["catalog"] == CATALOG_V1


# Bundle history -----------------------------------------------------------------------------


def test_history_keeps_rollout_and_rollback(tmp_path: Path) -> None:
    path = tmp_path / "s"
    _write_users(_config(path, "v1", CATALOG_V1, 442))
    StateStore(_config(path, "v2a", CATALOG_V1, 442)).close()
    StateStore(_config(path, "v1", CATALOG_V1, 442)).close()

    meta = _meta(path)

    assert _versions(meta) == ["v1", "v2a", "v1"]
    assert meta["bundle_version"] == "v1"
    first = meta["bundle_history"][0]
    assert first["state_shape"] == [GRU_LAYERS, HIDDEN_SIZE]
    assert first["embedding_dim"] == EMBEDDING_DIM
    assert first["catalog"] == CATALOG_V1
    assert first["catalog_items"] == 442
    assert first["since"].endswith("Z")


def test_reopen_with_same_bundle_keeps_entry(tmp_path: Path) -> None:
    path = tmp_path / "s"
    _write_users(_config(path, "v1"))
    before = _meta(path)["bundle_history"]

    StateStore(_config(path, "v1", CATALOG_V1, 442)).close()

    after = _meta(path)["bundle_history"]
    assert len(after) == 1
    assert after[0]["since"] == before[0]["since"]
    assert after[0]["catalog"] == CATALOG_V1


def test_history_keeps_newest_entries(tmp_path: Path) -> None:
    path = tmp_path / "s"
    versions = [f"v{number}" for number in range(HISTORY_LENGTH + 3)]
    for version in versions:
        StateStore(_config(path, version)).close()

    assert _versions(_meta(path)) == versions[-HISTORY_LENGTH:]


def test_store_before_history_keeps_old_version(tmp_path: Path) -> None:
    path = tmp_path / "s"
    _write_users(_config(path, "old"))
    _delete_meta(path, "bundle_history")

    StateStore(_config(path, "new")).close()

    history = _meta(path)["bundle_history"]
    assert [entry["bundle_version"] for entry in history] == ["old", "new"]
    assert history[0]["since"] is None
    assert history[0]["state_shape"] == [GRU_LAYERS, HIDDEN_SIZE]


def test_store_before_history_reopened_by_same_bundle(tmp_path: Path) -> None:
    path = tmp_path / "s"
    _write_users(_config(path, "old"))
    _delete_meta(path, "bundle_history")

    StateStore(_config(path, "old", CATALOG_V1, 442)).close()

    history = _meta(path)["bundle_history"]
    assert len(history) == 1
    assert history[0]["since"] is None
    assert history[0]["catalog"] == CATALOG_V1


def test_open_without_bundle_writes_no_history(tmp_path: Path) -> None:
    path = tmp_path / "s"
    _write_users(_config(path, "old"))
    _delete_meta(path, "bundle_history")

    assert "bundle_history" not in _meta(path)


def test_size_mismatch_names_bundles_of_stored_states(tmp_path: Path) -> None:
    path = tmp_path / "s"
    _write_users(_config(path, "v1"))
    # A rollout that opened the store but wrote no state before it was rolled back.
    StateStore(_config(path, "v2a")).close()

    with pytest.raises(StoreConfigError) as raised:
        StateStore(_config(path, "v2b", layers=GRU_LAYERS + 1))

    message = str(raised.value)
    assert "bundles v1, v2a" in message
    assert "but bundle v2b has" in message


def test_size_mismatch_skips_bundles_of_other_sizes(tmp_path: Path) -> None:
    path = tmp_path / "s"
    # A bundle of other sizes that opened the store while it had no users.
    StateStore(_config(path, "v0", layers=GRU_LAYERS + 2)).close()
    _write_users(_config(path, "v1"))

    with pytest.raises(StoreConfigError) as raised:
        StateStore(_config(path, "v2b", layers=GRU_LAYERS + 1))

    message = str(raised.value)
    assert "of bundle v1," in message
    assert "v0" not in message


def test_catalog_mismatch_names_bundles_of_stored_catalog(tmp_path: Path) -> None:
    path = tmp_path / "s"
    _write_users(_config(path, "v1", CATALOG_V1, 442))
    StateStore(_config(path, "v2a", CATALOG_V1, 442)).close()

    with pytest.raises(CatalogMismatchError) as raised:
        StateStore(_config(path, "v2c", CATALOG_V2, 881))

    assert "bundles v1, v2a" in str(raised.value)
