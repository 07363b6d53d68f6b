"""The pool's report of a worker killed by SIGBUS, with and without a change of the bundle.

A worker that reads its memory-mapped items.npy after a copy has truncated the file dies by
SIGBUS before its own bundle watch runs. The stand-in workers here do the same, for real.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import signal
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from stream.bundle_watch import BundleWatch, stamp_files
from stream.config import WorkerConfig
from stream.pool import Pool
from tests.stream.test_pool import StandInPool, _run_stand_in_pool

VERSION = "0123456789ab"


def _read_items_after_truncation(path: str) -> None:
    """A stand-in worker that maps items.npy, truncates it as `: > items.npy` does, and reads
    the map: the kernel raises SIGBUS for a page beyond the end of the file."""
    table = np.load(path, mmap_mode="r")
    os.truncate(path, 0)
    float(table.sum())
    sys.exit(3)  # not reached


def _sigbus_without_change() -> None:
    """A stand-in worker killed by SIGBUS while the bundle's files stay as they were."""
    os.kill(os.getpid(), signal.SIGBUS)
    sys.exit(3)  # not reached


@pytest.fixture
def bundle_dir(tmp_path: Path) -> Path:
    """A directory with the watched files of a bundle; only their stat stamps matter here."""
    directory = tmp_path / "bundle"
    directory.mkdir()
    (directory / "manifest.json").write_text('{"version": "0123456789ab"}')
    np.save(directory / "items.npy", np.ones((64, 16), dtype=np.float32))
    return directory


def _watch(directory: Path) -> BundleWatch:
    return BundleWatch(directory, stamp_files(directory), VERSION)


def _set_watch(watch: BundleWatch | None):
    def on_pool(pool: Pool) -> None:
        pool.bundle_watch = watch

    return on_pool


@pytest.mark.parametrize("keep_going", [False, True])
def test_sigbus_after_truncated_items_exits_2(
    keep_going: bool, bundle_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="stream.pool")
    items = bundle_dir / "items.npy"
    worker = functools.partial(_read_items_after_truncation, str(items))

    code = _run_stand_in_pool(
        tmp_path, keep_going, first_worker=worker, on_pool=_set_watch(_watch(bundle_dir))
    )

    assert code == 2
    assert items.stat().st_size == 0  # the stand-in worker did truncate it
    running = " was killed by SIGBUS while the pool was running: stopping the pool. "
    (line,) = [r.getMessage() for r in caplog.records if running in r.getMessage()]
    assert f"Bundle {bundle_dir} (version {VERSION}) changed on disk after the pool" in line
    assert "items.npy was rewritten in place (size 0 bytes, was " in line
    assert "reads its memory-mapped items.npy after a copy has truncated the file" in line
    assert line.endswith(
        "Deploy each bundle to a new directory and restart the pool with --bundle on it"
    )
    last = caplog.records[-1].getMessage()
    assert last.startswith("pool exits with 2: worker 0 (pid ")
    assert ") was killed by SIGBUS. Bundle " in last
    assert "the pool continues with" not in caplog.text


def test_sigbus_with_unchanged_bundle_names_state_store(
    bundle_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="stream.pool")

    code = _run_stand_in_pool(
        tmp_path,
        keep_going=False,
        first_worker=_sigbus_without_change,
        on_pool=_set_watch(_watch(bundle_dir)),
    )

    assert code == 1
    last = caplog.records[-1].getMessage()
    assert last.startswith("pool exits with 1: worker 0 (pid ")
    assert ") was killed by SIGBUS. The bundle's files are unchanged since the pool started" in last
    assert "a memory-mapped file of the state store was probably truncated" in last
    assert f"the LMDB files in {(tmp_path / 'relative-state').resolve()} " in last
    assert "(on a removed disk or a full file system)" in last
    assert "restart the pool, which resumes from the stored offsets" in last


def test_sigbus_without_watch_names_both_files(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="stream.pool")

    code = _run_stand_in_pool(tmp_path, keep_going=False, first_worker=_sigbus_without_change)

    assert code == 1
    last = caplog.records[-1].getMessage()
    items = (tmp_path / "bundle" / "items.npy").resolve()
    assert f"probably truncated or became unreadable under it: {items} (a copy" in last
    assert "or the LMDB files in " in last


def test_pool_stamps_real_bundle_before_workers_start(
    onnx_bundle_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="stream.pool")
    live = tmp_path / "live"
    shutil.copytree(onnx_bundle_dir, live)
    worker = functools.partial(_read_items_after_truncation, str(live / "items.npy"))
    # The pool takes the lock in its state directory, which belongs in the test's folder.
    config = WorkerConfig(
        brokers="127.0.0.1:1",
        bundle=live,
        processes=2,
        metrics_port=0,
        state_dir=tmp_path / "state",
    )
    pool = StandInPool(config)
    pool.first_worker = worker  # type: ignore[method-assign]
    stopper = threading.Timer(5.0, pool.request_stop, args=(signal.SIGTERM,))
    stopper.start()
    try:
        code = pool.run()
    finally:
        stopper.cancel()

    assert code == 2
    assert pool.bundle_watch is not None
    assert pool.bundle_watch.directory == live.resolve()
    last = caplog.records[-1].getMessage()
    assert f"Bundle {live.resolve()} (version {pool.bundle_watch.version}) changed" in last
    assert "items.npy was rewritten in place (size 0 bytes" in last
