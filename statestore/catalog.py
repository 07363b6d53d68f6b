"""The item catalog of a model bundle, read for `state get --bundle` to show item ids.

A bundle directory contains `item_ids.json`, the external item id of each row, and
`manifest.json`, whose `files` map lists the sha256 of that file. This module reads both with
the standard library, because `export.manifest` imports onnxruntime (through the `export`
package) and this package depends on lmdb and msgpack only. The file names are the ones that
`export.manifest` defines.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from statestore.errors import StoreConfigError

MANIFEST_FILE = "manifest.json"
ITEM_IDS_FILE = "item_ids.json"
_EXPORT_FIX = "pass the bundle directory that `hiertcn export` wrote"


@dataclass(frozen=True)
class BundleCatalog:
    """The item ids of a bundle, by row, and the sha256 (hex) of its `item_ids.json`."""

    path: Path  # the bundle directory
    version: str | None  # the manifest's bundle version
    sha256: str
    item_ids: list[str]

    def ids_of(self, rows: list[int]) -> list[str | None]:
        """Return the item id of each row; None for a row outside the catalog."""
        return [self.item_ids[row] if 0 <= row < len(self.item_ids) else None for row in rows]


def read_catalog(bundle_dir: Path) -> BundleCatalog:
    """Read the item ids of the bundle in `bundle_dir` and check them against its manifest.

    Raises `StoreConfigError` when the directory is not a bundle, or when `item_ids.json` differs
    from the sha256 that the manifest lists.
    """
    manifest_path = bundle_dir / MANIFEST_FILE
    if not manifest_path.is_file():
        raise StoreConfigError(f"--bundle {bundle_dir} contains no {MANIFEST_FILE}: {_EXPORT_FIX}")
    try:
        manifest = json.loads(manifest_path.read_text())
        expected = manifest["files"][ITEM_IDS_FILE]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise StoreConfigError(
            f"{manifest_path} cannot be read or lists no sha256 of {ITEM_IDS_FILE} ({error}): "
            f"{_EXPORT_FIX}"
        ) from error
    ids_path = bundle_dir / ITEM_IDS_FILE
    try:
        data = ids_path.read_bytes()
    except OSError as error:
        raise StoreConfigError(f"cannot read {ids_path} ({error}): {_EXPORT_FIX}") from error
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise StoreConfigError(
            f"{ids_path} has sha256 {actual[:12]}…, but {manifest_path} lists "
            f"{str(expected)[:12]}…: the file was changed after export; copy the bundle again"
        )
    try:
        item_ids = json.loads(data)
    except ValueError:
        item_ids = None
    if not isinstance(item_ids, list) or not all(isinstance(item, str) for item in item_ids):
        raise StoreConfigError(f"{ids_path} is not a JSON list of item ids: {_EXPORT_FIX}")
    version = manifest.get("version")
    return BundleCatalog(
        bundle_dir, version if isinstance(version, str) else None, actual, item_ids
    )
