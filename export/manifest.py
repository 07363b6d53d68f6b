"""The model bundle's file names, its `manifest.json`, and sha256 hashing.

A bundle is a directory that `export.onnx_export` writes and `export.bundle` reads:

- `manifest.json`: this module's `Manifest`.
- `session_step.onnx`: inputs `prefix` float32 [B, L, D], `lengths` int64 [B] and `state`
  float32 [B, G, H]; output `user_embedding` float32 [B, D].
- `session_close.onnx`: inputs `state` float32 [B, G, H] and `session_mean` float32 [B, D];
  output `new_state` float32 [B, G, H].
- `items.npy`: the item table, float32 or float16 [N, D].
- `item_ids.json`: JSON list of the external item id (str) of each row.
- `start_state.npy`: float32 [G, H], the state of a user never seen before.

The manifest's `version` is a digest of every file hash and every manifest value that the serving
side reads (`compute_version`), so bundles that differ in any of them get different versions.

This module imports neither torch nor `hiertcn`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from export.errors import BundleError, BundleIntegrityError, BundleVersionError

logger = logging.getLogger(__name__)

# Limits of a session gap in seconds (one millisecond to 365 days): of a bundle, and of the
# --session-gap of `hiertcn export`, `hiertcn-stream run` and `replay`.
MIN_SESSION_GAP = 1e-3
MAX_SESSION_GAP = 365 * 86_400
SESSION_GAP_RANGE = f"a number of seconds from {MIN_SESSION_GAP:g} to {MAX_SESSION_GAP}"

# Version of the bundle layout. Raise it whenever a file, an input or output name, a shape or a
# manifest key changes meaning, so that an older loader rejects the new bundle. Version 2 made
# `version` a digest of every file and serving setting (version 1 hashed session_step.onnx only).
FORMAT_VERSION = 2

MANIFEST_FILE = "manifest.json"
SESSION_STEP_FILE = "session_step.onnx"
SESSION_CLOSE_FILE = "session_close.onnx"
ITEMS_FILE = "items.npy"
ITEM_IDS_FILE = "item_ids.json"
START_STATE_FILE = "start_state.npy"

# Every file that the manifest must list with its sha256 (the manifest itself is not listed), in
# the order in which `compute_version` hashes them.
BUNDLE_FILES = (SESSION_STEP_FILE, SESSION_CLOSE_FILE, ITEMS_FILE, ITEM_IDS_FILE, START_STATE_FILE)

# Manifest keys that the loader or the worker reads, besides `files`, and so the keys that
# `compute_version` covers. `model`, `training` and `created` only describe the bundle.
VERSIONED_KEYS = (
    "format_version",
    "session_gap",
    "top_k",
    "num_items",
    "embedding_dim",
    "gru_layers",
    "hidden_size",
    "max_session_items",
)
VERSION_HEX_DIGITS = 12

# Input and output names of the two graphs.
STEP_INPUTS = ("prefix", "lengths", "state")
STEP_OUTPUT = "user_embedding"
CLOSE_INPUTS = ("state", "session_mean")
CLOSE_OUTPUT = "new_state"

_HASH_CHUNK_BYTES = 1 << 20


@dataclasses.dataclass(frozen=True)
class Manifest:
    """Content of `manifest.json`: what a worker needs to know about a bundle."""

    format_version: int
    model: dict[str, Any]  # the model configuration dict, enough to rebuild the model
    session_gap: float  # seconds of idle time that close a session
    top_k: int  # default length of a recommendation list
    num_items: int  # N
    embedding_dim: int  # D
    gru_layers: int  # G
    hidden_size: int  # H
    max_session_items: int  # the TCN receptive field: events the session step can see
    files: dict[str, str]  # file name -> sha256 (hex)
    training: dict[str, Any]  # data summary and offline metrics of the checkpoint
    version: str  # `compute_version` of this manifest: 12 hex digits
    created: str  # UTC time of the export, ISO 8601

    def to_dict(self) -> dict[str, Any]:
        """Return the manifest as a JSON-ready dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = MANIFEST_FILE) -> Manifest:
        """Build a manifest from parsed JSON, checking the format version first."""
        check_format_version(data.get("format_version"), source)
        names = [field.name for field in dataclasses.fields(cls)]
        missing = [name for name in names if name not in data]
        if missing:
            raise BundleError(
                f"{source} lacks the keys {missing}: the bundle is incomplete, export it again "
                "with `hiertcn export`"
            )
        manifest = cls(**{name: data[name] for name in names})
        _check_manifest_types(manifest, source)
        return manifest


def check_format_version(value: object, source: str) -> None:
    """Raise `BundleVersionError` unless `value` is the format version this code reads."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise BundleVersionError(
            f"{source} has format_version {value!r}, expected the integer {FORMAT_VERSION}: "
            "export the bundle again with this hiertcn version"
        )
    if value > FORMAT_VERSION:
        raise BundleVersionError(
            f"{source} has format_version {value}, but this hiertcn reads only version "
            f"{FORMAT_VERSION}: upgrade hiertcn on the serving side, or export the bundle again "
            "with this hiertcn version"
        )
    if value < FORMAT_VERSION:
        raise BundleVersionError(
            f"{source} has format_version {value}, but this hiertcn reads only version "
            f"{FORMAT_VERSION}: export the bundle again with this hiertcn version"
        )


def _check_manifest_types(manifest: Manifest, source: str) -> None:
    sizes = {
        "top_k": manifest.top_k,
        "num_items": manifest.num_items,
        "embedding_dim": manifest.embedding_dim,
        "gru_layers": manifest.gru_layers,
        "hidden_size": manifest.hidden_size,
        "max_session_items": manifest.max_session_items,
    }
    for key, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise BundleError(
                f"{source} has {key}={value!r}, expected a positive integer: export the bundle "
                "again with `hiertcn export`"
            )
    if manifest.top_k > manifest.num_items:
        raise BundleError(
            f"{source} has top_k={manifest.top_k}, above num_items={manifest.num_items}: export "
            f"the bundle again with `hiertcn export --top-k {manifest.num_items}` or less"
        )
    gap = manifest.session_gap
    if isinstance(gap, bool) or not isinstance(gap, (int, float)) or not valid_session_gap(gap):
        raise BundleError(
            f"{source} has session_gap={gap!r}, expected {SESSION_GAP_RANGE}: export "
            "the bundle again with `hiertcn export --session-gap SECONDS`"
        )
    if not isinstance(manifest.files, dict):
        raise BundleError(f"{source} has files={manifest.files!r}, expected a name -> sha256 map")
    missing = [name for name in BUNDLE_FILES if name not in manifest.files]
    if missing:
        raise BundleIntegrityError(
            f"{source} lists no sha256 for {missing}: export the bundle again with `hiertcn export`"
        )


def valid_session_gap(seconds: float) -> bool:
    """Return whether `seconds` is a session gap the worker accepts: from `MIN_SESSION_GAP` to
    `MAX_SESSION_GAP`."""
    return math.isfinite(seconds) and MIN_SESSION_GAP <= seconds <= MAX_SESSION_GAP


def compute_version(manifest: Manifest) -> str:
    """Return the bundle version: the first 12 hex digits of a sha256 over what serving reads.

    The digest covers the sha256 of every file in `BUNDLE_FILES` order and the `VERSIONED_KEYS`
    values, written as canonical JSON. Exports of one checkpoint with other files (float16 items)
    or other settings (top_k, session_gap) get other versions, and a re-export with the same
    ones gets the same version. The manifest's own `version` is not an input.
    """
    content = {key: getattr(manifest, key) for key in VERSIONED_KEYS}
    # 900 and 900.0 are the same gap, so they give the same version.
    content["session_gap"] = float(content["session_gap"])
    content["files"] = [[name, manifest.files.get(name)] for name in BUNDLE_FILES]
    text = json.dumps(content, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return sha256_bytes(text.encode())[:VERSION_HEX_DIGITS]


def sha256_bytes(data: bytes) -> str:
    """Return the sha256 of `data` as 64 hex digits."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    """Return the sha256 of the file at `path` as 64 hex digits, reading it in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(_HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(directory: Path, manifest: Manifest) -> Path:
    """Write `manifest.json` into `directory` and return its path."""
    path = Path(directory) / MANIFEST_FILE
    text = json.dumps(manifest.to_dict(), indent=2, sort_keys=True, default=_json_value)
    path.write_text(text + "\n")
    return path


def _json_value(value: Any) -> Any:
    """Convert numpy scalars and arrays in training summaries to plain JSON values."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} {value!r} cannot be written to {MANIFEST_FILE}")


def read_manifest(directory: Path) -> Manifest:
    """Read and check `manifest.json` of the bundle in `directory` (hashes are not checked here)."""
    path = Path(directory) / MANIFEST_FILE
    if not path.is_file():
        raise BundleIntegrityError(
            f"{path} not found: {directory} is not a model bundle, or an incomplete copy of one; "
            "export it with `hiertcn export --checkpoint CKPT --out DIR`"
        )
    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BundleError(
            f"{path} is not valid JSON ({error}): export the bundle again with `hiertcn export`"
        ) from error
    if not isinstance(data, dict):
        raise BundleError(f"{path} contains a {type(data).__name__}, expected a JSON object")
    return Manifest.from_dict(data, source=str(path))
