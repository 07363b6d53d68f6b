"""The watch on the files of a loaded model bundle, which stops a worker whose bundle changes.

The worker memory-maps the bundle's item table and keeps its ONNX graphs in memory, so files
rewritten in place under a running worker would mix two bundles under one version. A
`BundleWatch` compares cheap stat stamps of the files with those taken before the load. When
only a file's times have moved (a `touch`, a chmod), it compares the file's sha256 with that of
the loaded content, and keeps serving when they are equal.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from stream.errors import StreamError
from stream.interval import Interval

if TYPE_CHECKING:
    from export.bundle import ModelBundle
    from export.manifest import Manifest
    from stream.config import WorkerConfig

logger = logging.getLogger(__name__)

# Seconds between two checks of the bundle's files in the main loop, each one stat per file.
BUNDLE_CHECK_SECONDS = 1.0
# The fix for a bundle that changed under a running pool.
REDEPLOY_ADVICE = "Deploy each bundle to a new directory and restart the pool with --bundle on it"
# Largest file whose content the watch hashes in the worker's main loop after its times moved.
# A larger one counts as changed. hashlib.sha256 took 0.19 s for 256 MiB in memory on one core
# of a 2-core Xeon VM, and an estimated few times longer on a CPU without SHA instructions.
# Either pause stays far below the defaults of max.poll.interval.ms and of /healthz's stall
# limit.
CONTENT_CHECK_MAX_BYTES = 256 << 20


class BundleChangedError(StreamError):
    """A file of the loaded bundle changed on disk while the worker served it.

    Exit code 2, as for an invalid bundle: every worker of the pool serves the same directory,
    so the pool stops even under --keep-going.
    """

    exit_code = 2


@dataclass(frozen=True)
class FileStamp:
    """The stat fields of a bundle file that a change shows in.

    A rewrite in place changes the size or the modification time, a replacement (a file renamed
    over it, or a symlink) the inode. The change time (`st_ctime_ns`) covers a rewrite that
    keeps the size and sets the modification time back (`touch -d`), because only the kernel
    sets it. A chmod, chown or new hard link changes it too, and counts as a change.
    """

    size: int
    mtime_ns: int
    inode: int
    ctime_ns: int

    @classmethod
    def of(cls, path: Path) -> FileStamp | None:
        """Stat `path`, following symlinks; None when it does not exist."""
        try:
            info = os.stat(path)
        except FileNotFoundError:
            return None
        return cls(info.st_size, info.st_mtime_ns, info.st_ino, info.st_ctime_ns)

    def only_times_moved(self, after: FileStamp | None) -> bool:
        """Return whether `after` is the same file with the same size, and only its modification
        or change time differs, as after a `touch`, a chmod or a same-size rewrite."""
        return after is not None and (after.inode, after.size) == (self.inode, self.size)

    def describe_change(self, after: FileStamp | None) -> str:
        """Describe how the file changed from this stamp to `after`, from the stamps alone."""
        if after is None:
            return "was removed"
        if after.inode != self.inode:
            return f"was replaced by another file (inode {after.inode}, was {self.inode})"
        if after.size == self.size:
            return f"kept its size and inode, but {self.describe_times(after)}"
        moved = (after.mtime_ns - self.mtime_ns) / 1e9
        return (
            f"was rewritten in place (size {after.size} bytes, was {self.size}; modification "
            f"time moved by {moved:+.3f} s)"
        )

    def describe_times(self, after: FileStamp) -> str:
        """Describe which of the file's times moved from this stamp to `after`."""
        if after.mtime_ns != self.mtime_ns:
            return f"its modification time moved by {(after.mtime_ns - self.mtime_ns) / 1e9:+.3f} s"
        return (
            f"its change time moved by {(after.ctime_ns - self.ctime_ns) / 1e9:+.3f} s with the "
            "same modification time (a rewrite that set the modification time back, or a chmod, "
            "chown or new hard link)"
        )


def stamp_files(directory: Path) -> dict[str, FileStamp | None]:
    """Return the stamp of every file in `directory`, or none when it cannot be listed."""
    try:
        names = [entry.name for entry in os.scandir(directory) if entry.is_file()]
    except OSError:
        return {}  # the bundle loader raises its own error for it
    return {name: FileStamp.of(directory / name) for name in names}


class BundleWatch:
    """Stop serving a bundle whose files change on disk after it was loaded.

    The worker memory-maps the item table, so a file rewritten in place (`cp new/* live/`)
    changes the embeddings it reads, while its ONNX sessions keep the graphs loaded at start.
    The outputs would then mix two bundles under the old version. The manifest's hashes are
    checked only at load, so `check` compares cheap stat stamps instead, at most once per
    `interval` seconds.

    A file whose size and inode are unchanged but whose times moved is hashed and compared with
    `hashes`, the sha256 of the content that the worker loaded. An equal hash means a `touch`
    or a chmod: the watch logs it, takes the new stamps and keeps serving. A file without such
    a hash, or larger than `CONTENT_CHECK_MAX_BYTES`, counts as changed.

    NOTE: a read of the memory map after a copy has truncated items.npy kills the worker with
    SIGBUS before any check runs. The pool keeps a watch of its own for that case
    (`stream.pool`). A same-size rewrite that lands within one tick of the kernel's file time
    clock (a few milliseconds) of the file's previous change leaves every stamp field as it was,
    and goes unnoticed.
    """

    def __init__(
        self,
        directory: Path,
        stamps: Mapping[str, FileStamp | None],
        version: str,
        interval: float = BUNDLE_CHECK_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        hashes: Mapping[str, str] | None = None,
    ) -> None:
        self.directory = Path(directory)
        # Stamps taken before the load, so that a change during the load counts as well.
        self.stamps = dict(stamps)
        self.version = version
        # sha256 (hex) of the loaded content of each file whose content the watch can check.
        self.hashes = dict(hashes or {})
        self._due = Interval(interval, clock)

    def check(self) -> None:
        """Raise `BundleChangedError` naming the first file that changed, when a check is due."""
        if not self._due.due():
            return
        change = self.find_change()
        if change is not None:
            raise BundleChangedError(
                f"bundle {self.directory} changed while this worker served its version "
                f"{self.version}: {change}. The worker stops, because its ONNX graphs and its "
                "memory-mapped item table could now come from different bundles. "
                f"{REDEPLOY_ADVICE}"
            )

    def find_change(self) -> str | None:
        """Stat every watched file now, and describe the first one that changed, or return None.

        Unlike `check`, this ignores the interval. A file whose times alone moved and whose
        content is unchanged gets its new stamp here and does not count.
        """
        for name, before in self.stamps.items():
            after = FileStamp.of(self.directory / name)
            if after == before:
                continue
            if before is None:
                return f"{name} appeared"
            if after is None or not before.only_times_moved(after):
                return f"{name} {before.describe_change(after)}"
            content_change = self._compare_content(name, after)
            if content_change is not None:
                return f"{name} {content_change} ({before.describe_times(after)})"
            logger.info(
                "bundle %s: only the times of %s moved (%s), and its sha256 still matches the "
                "loaded version %s, so it does not count as a change",
                self.directory,
                name,
                before.describe_times(after),
                self.version,
            )
            self.stamps[name] = after
        return None

    def _compare_content(self, name: str, after: FileStamp) -> str | None:
        """Hash the file `name`, whose stamp is now `after`, and describe how its content differs
        from the loaded one; None when it is the same."""
        expected = self.hashes.get(name)
        if expected is None:
            return "kept its size and inode, but the watch has no hash of its loaded content"
        if after.size > CONTENT_CHECK_MAX_BYTES:
            return (
                f"kept its size and inode, but at {after.size} bytes it is above the "
                f"{CONTENT_CHECK_MAX_BYTES} bytes that the worker hashes in its main loop, so a "
                "same-size rewrite cannot be told from a touch"
            )
        from export.manifest import sha256_file

        try:
            actual = sha256_file(self.directory / name)
        except OSError as error:
            return f"kept its size and inode, but reading it to hash its content failed: {error}"
        if actual == expected:
            return None
        return (
            "was rewritten in place with the same size and inode: its sha256 differs from that "
            "of the content the worker loaded"
        )


def watch_manifest_files(
    directory: Path, stamps: Mapping[str, FileStamp | None], manifest: Manifest
) -> BundleWatch:
    """Return the watch of the manifest and every file it lists, from `stamps` taken before the
    manifest was read."""
    from export.manifest import MANIFEST_FILE

    watched = [MANIFEST_FILE, *sorted(manifest.files)]
    loaded = {name: stamps.get(name) for name in watched}
    # The loader checked every listed file against these hashes.
    hashes = dict(manifest.files)
    manifest_hash = hash_loaded_manifest(directory, manifest)
    if manifest_hash is not None:
        hashes[MANIFEST_FILE] = manifest_hash
    return BundleWatch(directory, loaded, manifest.version, hashes=hashes)


def hash_loaded_manifest(directory: Path, manifest: Manifest) -> str | None:
    """Return the sha256 of `manifest.json` in `directory` when it still contains `manifest`,
    the one the worker loaded; None when it changed since the load or cannot be read.

    The file is read once for both, so the hash belongs to the content that was compared.
    """
    from export.errors import ExportError
    from export.manifest import MANIFEST_FILE, Manifest, sha256_bytes

    try:
        data = (directory / MANIFEST_FILE).read_bytes()
        parsed = json.loads(data)
        if not isinstance(parsed, dict):
            return None
        current = Manifest.from_dict(parsed)
    except (OSError, ValueError, TypeError, ExportError):
        return None  # the first check finds the change in its stamps
    return sha256_bytes(data) if current == manifest else None


def load_watched_bundle(
    config: WorkerConfig, threads: int | None
) -> tuple[ModelBundle, BundleWatch]:
    """Load the bundle of `config` and return it with the watch of its files.

    The directory is resolved once, so that a symlink swapped to another bundle directory
    leaves the running worker on the one it loaded (a restart loads the new one). The files are
    stamped before the load, so that a file changed during the load counts as a change at the
    first check.
    """
    from export.bundle import load_bundle

    directory = Path(config.bundle).resolve()
    stamps = stamp_files(directory)
    bundle = load_bundle(directory, device=config.device, intra_op_threads=threads)
    return bundle, watch_manifest_files(directory, stamps, bundle.manifest)


def watch_bundle_directory(bundle: Path) -> BundleWatch | None:
    """Stamp the files of the bundle in `bundle` now, without loading it, and return their
    watch; None when its manifest cannot be read.

    The pool keeps such a watch to tell whether a worker killed by SIGBUS met a changed bundle.
    """
    from export.errors import ExportError
    from export.manifest import read_manifest

    directory = Path(bundle).resolve()
    stamps = stamp_files(directory)
    try:
        manifest = read_manifest(directory)
    except (ExportError, OSError) as error:
        logger.warning("cannot read the manifest of bundle %s to watch it: %s", directory, error)
        return None
    return watch_manifest_files(directory, stamps, manifest)
