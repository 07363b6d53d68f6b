"""The worker's check of its bundle's files: stat stamps, the check interval, and a main loop
that stops before it scores a batch once a file has changed.

tests/integration/test_worker_bundle_change.py runs the same on a pool and a broker.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from export.manifest import sha256_file
from stream.bundle_watch import BundleChangedError, BundleWatch, FileStamp, stamp_files
from stream.interval import Interval
from tests.stream.test_worker import FakeProducer, make_worker

VERSION = "0123456789ab"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def bundle_dir(tmp_path: Path) -> Path:
    """A directory with the file names of a bundle; only their stat stamps matter here."""
    directory = tmp_path / "live"
    directory.mkdir()
    (directory / "manifest.json").write_text('{"version": "0123456789ab"}')
    np.save(directory / "items.npy", np.ones((4, 3), dtype=np.float32))
    (directory / "session_step.onnx").write_bytes(b"graph one")
    return directory


def watch_of(
    directory: Path, clock: FakeClock | None = None, with_hashes: bool = True
) -> BundleWatch:
    """Watch every file in `directory`, with the sha256 of each as its loaded content unless
    `with_hashes` is False."""
    stamps = stamp_files(directory)
    hashes = {name: sha256_file(directory / name) for name in stamps} if with_hashes else None
    return BundleWatch(
        directory, stamps, VERSION, interval=1.0, clock=clock or FakeClock(), hashes=hashes
    )


def touch(path: Path, seconds: float = 1.0) -> None:
    """Move the modification time of `path` by `seconds`, as `touch` does, keeping its content."""
    info = os.stat(path)
    os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns + int(seconds * 1e9)))


def test_unchanged_bundle_passes_check(bundle_dir: Path) -> None:
    watch = watch_of(bundle_dir)

    watch.check()


def test_rewrite_in_place_stops_worker(bundle_dir: Path) -> None:
    watch = watch_of(bundle_dir)
    inode = os.stat(bundle_dir / "items.npy").st_ino
    # What `cp v2/items.npy live/` does: truncate and rewrite the same inode.
    with (bundle_dir / "items.npy").open("r+b") as file:
        file.truncate(0)
        np.save(file, np.zeros((9, 3), dtype=np.float32))
    assert os.stat(bundle_dir / "items.npy").st_ino == inode

    with pytest.raises(BundleChangedError) as raised:
        watch.check()

    message = str(raised.value)
    assert f"bundle {bundle_dir} changed" in message
    assert "items.npy was rewritten in place" in message
    assert VERSION in message
    assert "Deploy each bundle to a new directory and restart the pool" in message
    assert raised.value.exit_code == 2


def test_same_size_rewrite_noticed_by_mtime(bundle_dir: Path) -> None:
    path = bundle_dir / "session_step.onnx"
    loaded = os.stat(path)
    watch = watch_of(bundle_dir)
    path.write_bytes(b"graph two")
    os.utime(path, ns=(loaded.st_atime_ns, loaded.st_mtime_ns + 1_000_000))

    with pytest.raises(BundleChangedError, match=r"session_step\.onnx was rewritten in place"):
        watch.check()


def test_rewrite_with_mtime_set_back_noticed(bundle_dir: Path) -> None:
    # `cat other > items.npy; touch -d OLD items.npy`: the same size, inode and modification
    # time, so only the change time, which touch cannot set, shows the rewrite.
    path = bundle_dir / "items.npy"
    loaded = os.stat(path)
    watch = watch_of(bundle_dir)
    time.sleep(0.05)  # past the kernel's coarse file time clock, which ticks every few ms
    with path.open("r+b") as file:
        file.truncate(0)
        np.save(file, np.zeros((4, 3), dtype=np.float32))
    os.utime(path, ns=(loaded.st_atime_ns, loaded.st_mtime_ns))
    after = os.stat(path)
    assert (after.st_size, after.st_ino, after.st_mtime_ns) == (
        loaded.st_size,
        loaded.st_ino,
        loaded.st_mtime_ns,
    )

    with pytest.raises(BundleChangedError) as raised:
        watch.check()

    message = str(raised.value)
    assert "items.npy was rewritten in place with the same size and inode: its sha256" in message
    assert "its change time moved by +" in message
    assert "a rewrite that set the modification time back" in message
    assert raised.value.exit_code == 2


def test_touched_file_with_same_content_passes(
    bundle_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    watch = watch_of(bundle_dir, clock)
    path = bundle_dir / "manifest.json"
    touch(path)

    with caplog.at_level(logging.INFO, logger="stream.bundle_watch"):
        watch.check()

    (line,) = [record.getMessage() for record in caplog.records]
    assert f"bundle {bundle_dir}: only the times of manifest.json moved" in line
    assert "its modification time moved by +1.000 s" in line
    assert "its sha256 still matches the loaded version" in line
    # The new stamp is taken, so the next checks neither hash the file nor log it again.
    assert watch.stamps["manifest.json"] == FileStamp.of(path)
    clock.now += 1.0
    watch.check()
    assert len(caplog.records) == 1


def test_chmod_with_same_content_passes(bundle_dir: Path) -> None:
    watch = watch_of(bundle_dir)
    time.sleep(0.05)  # past the kernel's coarse file time clock, which ticks every few ms
    os.chmod(bundle_dir / "items.npy", 0o600)
    assert FileStamp.of(bundle_dir / "items.npy") != watch.stamps["items.npy"]

    assert watch.find_change() is None


def test_touch_after_touch_then_rewrite_stops(bundle_dir: Path) -> None:
    clock = FakeClock()
    watch = watch_of(bundle_dir, clock)
    path = bundle_dir / "session_step.onnx"
    touch(path)
    watch.check()

    path.write_bytes(b"graph two")  # the same size
    touch(path, 2.0)
    clock.now += 1.0

    with pytest.raises(BundleChangedError, match=r"session_step\.onnx was rewritten in place"):
        watch.check()


def test_touch_without_hash_named_as_touch(bundle_dir: Path) -> None:
    watch = watch_of(bundle_dir, with_hashes=False)
    touch(bundle_dir / "items.npy")

    change = watch.find_change()

    assert change == (
        "items.npy kept its size and inode, but the watch has no hash of its loaded content "
        "(its modification time moved by +1.000 s)"
    )


def test_touch_of_large_file_counts_as_change(
    bundle_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("stream.bundle_watch.CONTENT_CHECK_MAX_BYTES", 16)
    watch = watch_of(bundle_dir)
    size = os.stat(bundle_dir / "items.npy").st_size
    touch(bundle_dir / "items.npy")

    with pytest.raises(BundleChangedError) as raised:
        watch.check()

    message = str(raised.value)
    assert f"items.npy kept its size and inode, but at {size} bytes it is above the 16 " in message
    assert "a same-size rewrite cannot be told from a touch" in message
    assert "rewritten" not in message


def test_find_change_ignores_interval(bundle_dir: Path) -> None:
    clock = FakeClock()
    watch = watch_of(bundle_dir, clock)
    watch.check()
    assert watch.find_change() is None

    (bundle_dir / "items.npy").unlink()

    assert watch.find_change() == "items.npy was removed"


def test_replaced_file_named(bundle_dir: Path, tmp_path: Path) -> None:
    watch = watch_of(bundle_dir)
    other = tmp_path / "manifest.json"
    shutil.copy2(bundle_dir / "manifest.json", other)
    os.replace(other, bundle_dir / "manifest.json")

    with pytest.raises(BundleChangedError, match=r"manifest\.json was replaced by another file"):
        watch.check()


def test_removed_file_named(bundle_dir: Path) -> None:
    watch = watch_of(bundle_dir)
    (bundle_dir / "items.npy").unlink()

    with pytest.raises(BundleChangedError, match=r"items\.npy was removed"):
        watch.check()


def test_change_during_load_counts(bundle_dir: Path) -> None:
    # The worker stamps the files before it loads them, so a copy that lands during the load
    # differs from the stamps at the first check.
    stamps = stamp_files(bundle_dir)
    np.save(bundle_dir / "items.npy", np.zeros((9, 3), dtype=np.float32))
    watch = BundleWatch(bundle_dir, stamps, VERSION, clock=FakeClock())

    with pytest.raises(BundleChangedError, match=r"items\.npy"):
        watch.check()


def test_file_missing_at_load_and_now_is_unchanged(bundle_dir: Path) -> None:
    clock = FakeClock()
    stamps = {**stamp_files(bundle_dir), "item_ids.json": None}
    watch = BundleWatch(bundle_dir, stamps, VERSION, interval=1.0, clock=clock)

    watch.check()

    (bundle_dir / "item_ids.json").write_text("[]")
    clock.now += 1.0
    with pytest.raises(BundleChangedError, match=r"item_ids\.json appeared"):
        watch.check()


def test_check_runs_at_most_once_per_interval(bundle_dir: Path) -> None:
    clock = FakeClock()
    watch = watch_of(bundle_dir, clock)
    watch.check()
    (bundle_dir / "items.npy").unlink()

    clock.now += 0.5
    watch.check()  # within the interval: no stat, so the change is not seen yet
    clock.now += 0.6
    with pytest.raises(BundleChangedError):
        watch.check()


def test_stamp_fields_from_stat(bundle_dir: Path) -> None:
    path = bundle_dir / "items.npy"
    info = os.stat(path)

    stamp = FileStamp(info.st_size, info.st_mtime_ns, info.st_ino, info.st_ctime_ns)
    assert FileStamp.of(path) == stamp
    assert FileStamp.of(bundle_dir / "absent.npy") is None


def test_interval_opens_once_per_period() -> None:
    clock = FakeClock()
    interval = Interval(5.0, clock)

    assert interval.due()
    assert not interval.due()
    clock.now += 4.9
    assert not interval.due()
    clock.now += 0.1
    assert interval.due()


class ChangedWatch:
    """A bundle watch whose check always finds a changed file."""

    def check(self) -> None:
        raise BundleChangedError("bundle live changed: items.npy was rewritten in place")


def test_changed_bundle_stops_before_batch() -> None:
    producer = FakeProducer()
    worker = make_worker(producer)
    worker.bundle_watch = ChangedWatch()  # type: ignore[assignment]
    worker.consumer = SimpleNamespace(  # type: ignore[assignment]
        subscribe=lambda *args, **kwargs: None,
        assignment=list,
        unsubscribe=lambda: None,
        close=lambda: None,
        list_topics=lambda topic, timeout: SimpleNamespace(topics={}),
    )
    processed: list[Any] = []
    worker._collect = lambda: ["message"]  # type: ignore[method-assign,return-value]
    worker._process = processed.append  # type: ignore[method-assign,assignment]
    worker._idle = lambda: processed.append("idle")  # type: ignore[method-assign]

    with pytest.raises(BundleChangedError, match=r"items\.npy"):
        worker.run()

    assert processed == []
    assert producer.produced == []
    assert worker.metrics.workers_running._value.get() == 0


def test_loaded_bundle_watched_file_by_file(onnx_bundle_dir: Path, tmp_path: Path) -> None:
    from stream.bundle_watch import load_watched_bundle
    from stream.config import WorkerConfig

    live = tmp_path / "live"
    shutil.copytree(onnx_bundle_dir, live)
    (live / "README.txt").write_text("not part of the bundle")
    config = WorkerConfig(brokers="127.0.0.1:1", bundle=live)

    bundle, watch = load_watched_bundle(config, threads=1)

    assert watch.version == bundle.version
    assert set(watch.stamps) == {"manifest.json", *bundle.manifest.files}
    assert all(stamp is not None for stamp in watch.stamps.values())
    (live / "README.txt").write_text("edited")
    watch.check()  # a file outside the manifest does not count

    watch._due = Interval(0.0)
    np.save(live / "items.npy", np.zeros((3, 3), dtype=np.float32))
    with pytest.raises(BundleChangedError, match=r"items\.npy was rewritten in place"):
        watch.check()


def test_symlink_swap_keeps_loaded_directory(onnx_bundle_dir: Path, tmp_path: Path) -> None:
    from stream.bundle_watch import load_watched_bundle
    from stream.config import WorkerConfig

    first, second, link = tmp_path / "v1", tmp_path / "v2", tmp_path / "live"
    shutil.copytree(onnx_bundle_dir, first)
    shutil.copytree(onnx_bundle_dir, second)
    np.save(second / "items.npy", np.zeros((3, 3), dtype=np.float32))
    link.symlink_to(first)
    _bundle, watch = load_watched_bundle(WorkerConfig(brokers="127.0.0.1:1", bundle=link), 1)
    watch._due = Interval(0.0)

    # A swapped symlink leaves the loaded directory as it was, so the worker keeps serving it.
    link.unlink()
    link.symlink_to(second)
    watch.check()

    assert watch.directory == first.resolve()
    np.save(first / "items.npy", np.zeros((3, 3), dtype=np.float32))
    with pytest.raises(BundleChangedError, match=r"items\.npy was rewritten in place"):
        watch.check()


def test_directory_watch_reads_manifest_files(onnx_bundle_dir: Path, tmp_path: Path) -> None:
    from export.bundle import load_bundle
    from stream.bundle_watch import watch_bundle_directory

    live = tmp_path / "live"
    shutil.copytree(onnx_bundle_dir, live)
    (live / "README.txt").write_text("not part of the bundle")
    bundle = load_bundle(live, intra_op_threads=1)

    watch = watch_bundle_directory(live)

    assert watch is not None
    assert watch.version == bundle.version
    assert set(watch.stamps) == {"manifest.json", *bundle.manifest.files}
    assert watch.find_change() is None
    (live / "README.txt").write_text("edited")
    assert watch.find_change() is None
    with (live / "items.npy").open("r+b") as file:
        file.truncate(0)
    assert (watch.find_change() or "").startswith("items.npy was rewritten in place (size 0 ")


def test_touched_manifest_of_loaded_bundle_passes(onnx_bundle_dir: Path, tmp_path: Path) -> None:
    from stream.bundle_watch import load_watched_bundle
    from stream.config import WorkerConfig

    live = tmp_path / "live"
    shutil.copytree(onnx_bundle_dir, live)
    _bundle, watch = load_watched_bundle(WorkerConfig(brokers="127.0.0.1:1", bundle=live), 1)
    watch._due = Interval(0.0)
    assert set(watch.hashes) == set(watch.stamps)

    touch(live / "manifest.json")
    touch(live / "items.npy")
    watch.check()

    # A same-size edit of the manifest is a change of the content.
    text = (live / "manifest.json").read_text()
    (live / "manifest.json").write_text(text.replace('"created": "2', '"created": "3', 1))
    touch(live / "manifest.json", 2.0)
    with pytest.raises(BundleChangedError, match=r"manifest\.json was rewritten in place with"):
        watch.check()


def test_manifest_changed_since_load_has_no_hash(onnx_bundle_dir: Path, tmp_path: Path) -> None:
    from export.manifest import read_manifest
    from stream.bundle_watch import hash_loaded_manifest

    live = tmp_path / "live"
    shutil.copytree(onnx_bundle_dir, live)
    loaded = read_manifest(live)
    assert hash_loaded_manifest(live, loaded) == sha256_file(live / "manifest.json")

    text = (live / "manifest.json").read_text()
    (live / "manifest.json").write_text(text.replace('"created": "2', '"created": "3', 1))

    assert hash_loaded_manifest(live, loaded) is None


def test_directory_watch_without_manifest_is_none(
    bundle_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from stream.bundle_watch import watch_bundle_directory

    (bundle_dir / "manifest.json").unlink()

    assert watch_bundle_directory(bundle_dir) is None
    assert f"cannot read the manifest of bundle {bundle_dir}" in caplog.text
