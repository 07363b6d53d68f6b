"""The gauges of the state directory's disk: `hiertcn_state_disk_free_bytes` and
`hiertcn_state_disk_size_bytes`, read with a real LMDB state store next to the store gauges."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from statestore import StateStore, StoreConfig, UserState
from stream.metric_updates import state_disk_usage
from tests.stream.test_worker import FakeProducer, make_worker

# Other processes write to the same file system while the test runs, so the free space that the
# gauge read and the one the test reads afterwards may differ by this much.
FREE_BYTES_TOLERANCE = 256 * 1024 * 1024


def _gauge(worker: object, name: str) -> float:
    return getattr(worker.metrics, name)._value.get()  # type: ignore[attr-defined]


def _commit_users(store: StateStore, count: int) -> None:
    state = UserState.new(np.zeros((1, 4), dtype=np.float32), 4)
    store.commit({f"u{index}": state for index in range(count)})


def test_disk_gauges_from_real_store(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    worker = make_worker(FakeProducer(), state_dir=state_dir)
    with StateStore(StoreConfig(path=state_dir, sync=False)) as store:
        _commit_users(store, 3)
        worker.store = store

        worker._refresh_gauges()

        usage = os.statvfs(state_dir)
    size = usage.f_blocks * usage.f_frsize
    free = usage.f_bavail * usage.f_frsize
    assert _gauge(worker, "state_users") == 3
    assert _gauge(worker, "state_disk_size") == size
    assert 0 < _gauge(worker, "state_disk_free") <= size
    assert abs(_gauge(worker, "state_disk_free") - free) < FREE_BYTES_TOLERANCE


def test_disk_usage_excludes_root_reserve(tmp_path: Path) -> None:
    usage = os.statvfs(tmp_path)

    free, size = state_disk_usage(tmp_path)

    assert size == usage.f_blocks * usage.f_frsize
    # f_bfree counts the blocks reserved for root as well, which the worker cannot write.
    assert abs(free - usage.f_bavail * usage.f_frsize) < FREE_BYTES_TOLERANCE
    assert free <= usage.f_bfree * usage.f_frsize


def test_missing_state_dir_logged_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state_dir = tmp_path / "state"
    worker = make_worker(FakeProducer(), state_dir=state_dir)
    with StateStore(StoreConfig(path=state_dir, sync=False)) as store:
        _commit_users(store, 2)
        worker.store = store
        worker.state_dir = tmp_path / "gone"

        with caplog.at_level("WARNING", logger="stream.metric_updates"):
            worker._refresh_gauges()

    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 1
    assert messages[0].startswith(
        f"reading the free space of state directory {tmp_path / 'gone'} for the metrics failed:"
    )
    assert "No such file or directory" in messages[0]
    # The store gauges do not depend on the disk reading.
    assert _gauge(worker, "state_users") == 2
    assert _gauge(worker, "state_disk_size") == 0


_CHILD = textwrap.dedent(
    """
    import sys
    from stream.metrics import create_metrics
    metrics = create_metrics(None)
    metrics.state_disk_free.set(int(sys.argv[1]))
    metrics.state_disk_size.set(1000)
    """
)


def test_pool_aggregate_reports_disk_gauges_once(tmp_path: Path) -> None:
    from prometheus_client import multiprocess

    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    # Two workers of one pool read the same file system a moment apart.
    for free in ("400", "390"):
        subprocess.run([sys.executable, "-c", _CHILD, free], env=env, check=True)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(tmp_path))

    text = generate_latest(registry).decode()

    assert "hiertcn_state_disk_free_bytes 400.0" in text
    assert "hiertcn_state_disk_size_bytes 1000.0" in text
