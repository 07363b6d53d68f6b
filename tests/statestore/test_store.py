"""StateStore in one process: reads, commits, positions, the timer index and the fork check."""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

import lmdb
import pytest

from statestore import (
    DiskFullError,
    ForeignProcessError,
    MapSizeLimitError,
    PartitionPosition,
    ReadOnlyStoreError,
    SchemaVersionError,
    StateStore,
    StateStoreError,
    StoreConfig,
    StoreConfigError,
)
from statestore.codec import SCHEMA_VERSION
from statestore.map_size import format_size
from tests.statestore.helpers import make_read_only, make_state

TOPIC = "interactions"


def test_read_returns_committed_states(store: StateStore) -> None:
    states = {f"user{i}": make_state(seed=i) for i in range(5)}
    store.commit(states)
    found = store.read(["user1", "user3", "missing"])
    assert sorted(found) == ["user1", "user3"]
    assert found["user1"].same_as(states["user1"])
    assert found["user3"].same_as(states["user3"])


def test_read_skips_ids_that_cannot_be_keys(store: StateStore) -> None:
    assert store.read(["", "x" * 1000]) == {}


def test_commit_overwrites_previous_state(store: StateStore) -> None:
    store.commit({"u": make_state(seed=1)})
    store.commit({"u": make_state(seed=2)})
    assert store.read(["u"])["u"].same_as(make_state(seed=2))


def test_commit_rejects_empty_and_long_user_ids(store: StateStore) -> None:
    with pytest.raises(StoreConfigError, match="user id"):
        store.commit({"": make_state()})
    with pytest.raises(StoreConfigError, match="user id"):
        store.commit({"é" * 300: make_state()})


def test_commit_rejects_user_written_and_deleted(store: StateStore) -> None:
    with pytest.raises(StoreConfigError, match="both written and deleted"):
        store.commit({"u": make_state()}, deletes=["u"])


def test_positions_are_stored_per_topic(store: StateStore) -> None:
    store.commit(
        {},
        {
            (TOPIC, 0): PartitionPosition(10, 100.0),
            (TOPIC, 7): PartitionPosition(3, 50.5),
            ("interactions-b", 0): PartitionPosition(99, 1.0),
            ("interaction", 1): PartitionPosition(5, 2.0),
        },
    )
    store.commit({}, {(TOPIC, 0): PartitionPosition(12, 101.0)})
    assert store.positions(TOPIC) == {
        0: PartitionPosition(12, 101.0),
        7: PartitionPosition(3, 50.5),
    }
    assert store.positions("interaction") == {1: PartitionPosition(5, 2.0)}
    assert store.positions("other") == {}


def test_replay_partition_round_trips(store: StateStore) -> None:
    store.commit({}, {(TOPIC, -1): PartitionPosition(4, 9.0)})
    assert store.positions(TOPIC) == {-1: PartitionPosition(4, 9.0)}


def test_invalid_partition_is_rejected(store: StateStore) -> None:
    with pytest.raises(StoreConfigError, match="partition -2"):
        store.commit({}, {(TOPIC, -2): PartitionPosition(0, 0.0)})


def test_expired_returns_oldest_first_and_stops(store: StateStore) -> None:
    times = {"a": 50.0, "b": 10.0, "c": 30.0, "d": 20.0, "e": 40.0}
    store.commit({user: make_state(last_ts=ts, partition=2) for user, ts in times.items()})
    assert store.expired(2, before_ts=35.0, limit=100) == ["b", "d", "c"]
    assert store.expired(2, before_ts=35.0, limit=2) == ["b", "d"]
    assert store.expired(2, before_ts=10.0, limit=100) == []
    assert store.expired(2, before_ts=1e12, limit=100) == ["b", "d", "c", "e", "a"]
    assert store.expired(2, before_ts=1e12, limit=0) == []


def test_expired_bound_is_strict(store: StateStore) -> None:
    store.commit({"u": make_state(last_ts=100.000001, partition=0)})
    assert store.expired(0, before_ts=100.000001, limit=10) == []
    assert store.expired(0, before_ts=100.000002, limit=10) == ["u"]


def test_expired_keeps_partitions_apart(store: StateStore) -> None:
    store.commit(
        {
            "p0": make_state(last_ts=5.0, partition=0),
            "p1": make_state(last_ts=1.0, partition=1),
            "p3": make_state(last_ts=2.0, partition=3),
            "replay": make_state(last_ts=3.0, partition=-1),
        }
    )
    assert store.expired(1, before_ts=1e12, limit=10) == ["p1"]
    assert store.expired(2, before_ts=1e12, limit=10) == []
    assert store.expired(0, before_ts=1e12, limit=10) == ["p0"]
    assert store.expired(-1, before_ts=1e12, limit=10) == ["replay"]


def test_expired_orders_negative_times_first(store: StateStore) -> None:
    store.commit(
        {"late": make_state(last_ts=1.0), "early": make_state(last_ts=-5.0)},
    )
    assert store.expired(0, before_ts=2.0, limit=10) == ["early", "late"]


def test_timer_follows_state_updates(store: StateStore) -> None:
    store.commit({"u": make_state(last_ts=10.0, partition=0)})
    store.commit({"u": make_state(last_ts=90.0, partition=0)})
    assert store.expired(0, before_ts=50.0, limit=10) == []
    assert store.expired(0, before_ts=100.0, limit=10) == ["u"]


def test_timer_moves_with_partition(store: StateStore) -> None:
    store.commit({"u": make_state(last_ts=10.0, partition=0)})
    store.commit({"u": make_state(last_ts=11.0, partition=4)})
    assert store.expired(0, before_ts=100.0, limit=10) == []
    assert store.expired(4, before_ts=100.0, limit=10) == ["u"]


def test_closed_session_has_no_timer(store: StateStore) -> None:
    store.commit({"u": make_state(last_ts=10.0, session_length=2)})
    store.commit({"u": make_state(last_ts=10.0, session_length=0)})
    assert store.expired(0, before_ts=100.0, limit=10) == []
    assert "u" in store.read(["u"])


def test_delete_removes_state_and_timer(store: StateStore) -> None:
    store.commit({"u": make_state(last_ts=10.0), "v": make_state(last_ts=11.0)})
    store.commit({}, deletes=["u", "never-stored"])
    assert list(store.read(["u", "v"])) == ["v"]
    assert store.expired(0, before_ts=100.0, limit=10) == ["v"]


def test_delete_accepts_a_generator(store: StateStore) -> None:
    store.commit({"u": make_state(), "v": make_state()})
    with pytest.raises(StoreConfigError, match="both written and deleted"):
        store.commit({"v": make_state()}, deletes=(user for user in ["u", "v"]))
    store.commit({}, deletes=(user for user in ["u"]))
    assert list(store.read(["u", "v"])) == ["v"]


def test_evict_checks_time_inside_transaction(store: StateStore) -> None:
    store.commit({"old": make_state(last_ts=10.0), "new": make_state(last_ts=500.0)})
    assert store.evict(["old", "new", "missing"], before_ts=100.0) == 1
    assert list(store.read(["old", "new"])) == ["new"]
    assert store.expired(0, before_ts=1e12, limit=10) == ["new"]


def test_data_bytes_fall_after_deletes(store: StateStore) -> None:
    users = [f"user-{index:05d}" for index in range(2000)]
    store.commit({user: make_state(seed=index) for index, user in enumerate(users)})
    full = store.environment_info()
    assert full["used_bytes"] >= full["data_bytes"] > 2000 * 100
    store.commit({}, deletes=users[:1800])
    emptied = store.environment_info()
    # LMDB keeps the freed pages for reuse, so the map in use does not shrink.
    assert emptied["used_bytes"] >= full["used_bytes"]
    assert emptied["data_bytes"] < full["data_bytes"] / 4


def test_meta_records_schema_and_bundle(tmp_path: Path) -> None:
    config = StoreConfig(path=tmp_path / "s", bundle_version="abc123", sync=False)
    with StateStore(config) as store:
        meta = store.meta()
    assert meta["schema_version"] == SCHEMA_VERSION
    assert meta["bundle_version"] == "abc123"
    assert "created" in meta


def test_bundle_change_is_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with StateStore(StoreConfig(path=tmp_path / "s", bundle_version="one")) as store:
        store.commit({"u1": make_state()})
    config = StoreConfig(path=tmp_path / "s", bundle_version="two")
    with caplog.at_level(logging.WARNING, logger="statestore.store"), StateStore(config) as store:
        assert store.meta()["bundle_version"] == "two"
    assert "bundle one" in caplog.text


def test_bundle_change_without_users_is_quiet(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with StateStore(StoreConfig(path=tmp_path / "s", bundle_version="one")) as store:
        store.commit({"u1": make_state()}, {(TOPIC, 0): PartitionPosition(1, 1.0)})
        store.commit({}, deletes=["u1"])
    config = StoreConfig(path=tmp_path / "s", bundle_version="two")

    with caplog.at_level(logging.WARNING, logger="statestore.store"), StateStore(config) as store:
        assert store.meta()["bundle_version"] == "two"

    assert caplog.records == []


def test_user_count(store: StateStore) -> None:
    assert store.user_count() == 0
    store.commit({"u1": make_state(), "u2": make_state()})
    assert store.user_count() == 2


def _bundle_config(path: Path, version: str, layers: int, size: int) -> StoreConfig:
    return StoreConfig(
        path=path,
        bundle_version=version,
        state_shape=(layers, size),
        embedding_dim=size,
        sync=False,
    )


def test_bundle_with_other_shapes_is_rejected(tmp_path: Path) -> None:
    with StateStore(_bundle_config(tmp_path / "s", "small", 1, 16)) as store:
        store.commit({"u1": make_state()})
    with pytest.raises(StoreConfigError) as raised:
        StateStore(_bundle_config(tmp_path / "s", "large", 2, 64))
    message = str(raised.value)
    assert str(tmp_path / "s") in message
    assert "small" in message
    assert "large" in message
    assert "[1, 16]" in message
    assert "[2, 64]" in message
    assert "--state-dir" in message


def test_rejected_bundle_leaves_meta_unchanged(tmp_path: Path) -> None:
    with StateStore(_bundle_config(tmp_path / "s", "small", 1, 16)) as store:
        store.commit({"u1": make_state()})
    for _attempt in range(2):
        with pytest.raises(StoreConfigError):
            StateStore(_bundle_config(tmp_path / "s", "large", 2, 64))
    with StateStore(StoreConfig(path=tmp_path / "s")) as store:
        meta = store.meta()
    assert meta["bundle_version"] == "small"
    assert meta["state_shape"] == [1, 16]
    assert meta["embedding_dim"] == 16


def test_bundle_with_same_shapes_is_accepted(tmp_path: Path) -> None:
    with StateStore(_bundle_config(tmp_path / "s", "one", 1, 16)) as store:
        store.commit({"u1": make_state()})
    with StateStore(_bundle_config(tmp_path / "s", "two", 1, 16)) as store:
        assert store.meta()["bundle_version"] == "two"


def test_empty_store_accepts_other_shapes(tmp_path: Path) -> None:
    StateStore(_bundle_config(tmp_path / "s", "small", 1, 16)).close()
    with StateStore(_bundle_config(tmp_path / "s", "large", 2, 64)) as store:
        meta = store.meta()
    assert meta["bundle_version"] == "large"
    assert meta["state_shape"] == [2, 64]
    assert meta["embedding_dim"] == 64


def test_newer_store_schema_is_rejected(tmp_path: Path) -> None:
    with StateStore(StoreConfig(path=tmp_path / "s")) as store:
        store._write_meta({"schema_version": SCHEMA_VERSION + 1})
    with pytest.raises(SchemaVersionError, match="upgrade hiertcn"):
        StateStore(StoreConfig(path=tmp_path / "s"))


def test_read_only_state_dir_is_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "state"
    with StateStore(StoreConfig(path=path, sync=False)) as store:
        store.commit({"u1": make_state()})
    make_read_only(path, monkeypatch)

    with pytest.raises(ReadOnlyStoreError) as caught:
        StateStore(StoreConfig(path=path))

    message = str(caught.value)
    assert message.startswith(f"LMDB open failed in state store {path}: ")
    assert "Permission denied" in message
    assert "LMDB needs write access to the state directory even to read it" in message
    assert "pass a writable --state-dir" in message
    assert "copy the directory to a writable place" in message
    assert caught.value.exit_code == 2
    assert isinstance(caught.value, StoreConfigError)


def _fail_open(monkeypatch: pytest.MonkeyPatch, code: int, reason: str) -> None:
    def open_failing(path: str, *args: object, **kwargs: object) -> lmdb.Environment:
        error = lmdb.Error(f"{path}: {reason}")
        error.code = code  # type: ignore[attr-defined]
        raise error

    monkeypatch.setattr(lmdb, "open", open_failing)


@pytest.mark.parametrize(
    ("code", "reason"),
    [(errno.EACCES, "Permission denied"), (errno.EROFS, "Read-only file system")],
)
def test_open_denied_write_is_read_only_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int, reason: str
) -> None:
    _fail_open(monkeypatch, code, reason)

    with pytest.raises(ReadOnlyStoreError, match=f"{reason}. LMDB needs write access"):
        StateStore(StoreConfig(path=tmp_path / "state"))


def test_open_io_error_stays_run_time_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fail_open(monkeypatch, errno.EIO, "Input/output error")

    with pytest.raises(StateStoreError) as caught:
        StateStore(StoreConfig(path=tmp_path / "state"))

    assert not isinstance(caught.value, StoreConfigError)
    assert caught.value.exit_code == 1
    assert "LMDB needs write access" not in str(caught.value)


def test_map_grows_from_tiny_size(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = StoreConfig(path=tmp_path / "s", map_size=64 << 10, sync=False)
    logs = caplog.at_level(logging.INFO, logger="statestore.map_size")
    with logs, StateStore(config) as store:
        store.commit({f"user{i}": make_state(seed=i) for i in range(3000)})
        assert store.map_size() > 64 << 10
        assert len(store.read([f"user{i}" for i in range(3000)])) == 3000
    growth = [r for r in caplog.records if r.name == "statestore.map_size"]
    assert "is full at 64 KiB, growing to 128 KiB" in growth[0].getMessage()
    assert "attempt 1/" in growth[0].getMessage()
    # Growth below max_map_size is routine, so it logs no warning.
    assert {record.levelno for record in growth} == {logging.INFO}


def _open_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "opened state store" in r.getMessage()]


def test_open_line_names_map_size_source(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "s"
    with caplog.at_level(logging.INFO, logger="statestore.store"):
        with StateStore(StoreConfig(path=path, map_size=1 << 20, sync=False)) as store:
            store.commit({f"user{i}": make_state(seed=i) for i in range(3000)})
            grown = store.map_size()
        with StateStore(StoreConfig(path=path, map_size=64 << 10, sync=False)):
            pass
        with StateStore(StoreConfig(path=path, sync=False, recorded_map_size=True)) as store:
            assert store.map_size() == grown

    requested, raised, recorded = _open_lines(caplog)
    assert "(map 1 MiB, as requested by this process," in requested
    assert "this process requested 64 KiB, and LMDB raised it to the size of the data" in raised
    assert f"(map {format_size(grown)}, as recorded in data.mdb," in recorded


def test_map_growth_stops_at_maximum(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = StoreConfig(path=tmp_path / "s", map_size=64 << 10, max_map_size=256 << 10)
    with caplog.at_level(logging.INFO, logger="statestore.map_size"), StateStore(config) as store:
        store.commit({"first": make_state()})
        with pytest.raises(MapSizeLimitError, match="max_map_size 256 KiB"):
            store.commit({f"user{i}": make_state(seed=i) for i in range(5000)})
        assert list(store.read(["first", "user0"])) == ["first"]

    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    (warning,) = warnings
    assert "is full at 128 KiB, growing to 256 KiB, which is max_map_size" in warning
    assert "Raise StoreConfig.max_map_size, or evict inactive users" in warning


def test_config_rejects_invalid_sizes(tmp_path: Path) -> None:
    with pytest.raises(StoreConfigError, match="map_size 0"):
        StoreConfig(path=tmp_path, map_size=0)
    with pytest.raises(StoreConfigError, match="below map_size"):
        StoreConfig(path=tmp_path, map_size=1 << 20, max_map_size=1 << 10)
    with pytest.raises(StoreConfigError, match="max_readers"):
        StoreConfig(path=tmp_path, max_readers=0)


def test_store_used_after_fork_raises(store: StateStore) -> None:
    store.commit({"u": make_state()})
    pid = os.fork()
    if pid == 0:
        code = 3
        try:
            store.read(["u"])
        except ForeignProcessError:
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert "u" in store.read(["u"])


def _lmdb_error(code: int) -> lmdb.Error:
    """Return the error that py-lmdb raises for a commit that failed with errno `code`."""
    error = lmdb.Error(f"mdb_txn_commit: {os.strerror(code)}")
    error.code = code
    return error


def _limit_file_size(monkeypatch: pytest.MonkeyPatch, limit: int) -> None:
    """Make `statestore.map_size` read `limit` as this process's RLIMIT_FSIZE."""
    import resource

    monkeypatch.setattr(
        "statestore.map_size.resource.getrlimit",
        lambda which: (limit, resource.RLIM_INFINITY),
    )


@pytest.mark.parametrize("code", [errno.EFBIG, errno.EIO])
def test_file_size_limit_named_not_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    with StateStore(StoreConfig(path=tmp_path, sync=False)) as store:
        # data.mdb has less than a page left below the limit, as after a cut-short write.
        _limit_file_size(monkeypatch, (tmp_path / "data.mdb").stat().st_size)
        translated = store._translate(_lmdb_error(code), "write")

    message = str(translated)
    assert isinstance(translated, DiskFullError)
    assert message.startswith(
        f"LMDB write in state store {tmp_path} failed because {tmp_path / 'data.mdb'} reached "
        "this process's file size limit of "
    )
    assert "(RLIMIT_FSIZE, `ulimit -f`), not for lack of disk space" in message
    assert f"(mdb_txn_commit: {os.strerror(code)})" in message
    assert "raise the limit (`ulimit -f unlimited` in the shell" in message
    assert "free disk space" not in message


def test_file_too_large_without_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import resource

    _limit_file_size(monkeypatch, resource.RLIM_INFINITY)
    with StateStore(StoreConfig(path=tmp_path, sync=False)) as store:
        translated = store._translate(_lmdb_error(errno.EFBIG), "write")

    message = str(translated)
    assert isinstance(translated, DiskFullError)
    assert "reached the largest file that its file system allows" in message
    assert "RLIMIT_FSIZE" not in message


def test_no_space_named_as_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with StateStore(StoreConfig(path=tmp_path, sync=False)) as store:
        _limit_file_size(monkeypatch, 1 << 40)
        no_space = store._translate(_lmdb_error(errno.ENOSPC), "write")
        # An EIO with room on the disk and below the limit is no full disk.
        io_error = store._translate(_lmdb_error(errno.EIO), "write")

    assert isinstance(no_space, DiskFullError)
    assert "failed for lack of disk space (mdb_txn_commit: No space left on device)" in str(
        no_space
    )
    assert "free disk space" in str(no_space)
    assert not isinstance(io_error, DiskFullError)
    assert str(io_error) == (
        f"LMDB write failed in state store {tmp_path}: mdb_txn_commit: Input/output error"
    )
