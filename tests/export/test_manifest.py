"""Tests of the manifest format, its version check and file hashing (no torch needed)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from export.errors import BundleError, BundleIntegrityError, BundleVersionError
from export.manifest import (
    BUNDLE_FILES,
    FORMAT_VERSION,
    MANIFEST_FILE,
    Manifest,
    compute_version,
    read_manifest,
    sha256_file,
    write_manifest,
)


def sample_manifest(**changes: object) -> Manifest:
    values: dict[str, object] = {
        "format_version": FORMAT_VERSION,
        "model": {"name": "hiertcn", "embedding_dim": 8},
        "session_gap": 1800.0,
        "top_k": 20,
        "num_items": 50,
        "embedding_dim": 8,
        "gru_layers": 2,
        "hidden_size": 6,
        "max_session_items": 13,
        "files": {name: "0" * 64 for name in BUNDLE_FILES},
        "training": {"metrics": {"mrr": 0.2}},
        "version": "000000000000",
        "created": "2026-12-04T20:00:00+00:00",
    }
    values.update(changes)
    return Manifest(**values)  # type: ignore[arg-type]


def test_manifest_round_trip(tmp_path: Path) -> None:
    manifest = sample_manifest()
    write_manifest(tmp_path, manifest)
    assert read_manifest(tmp_path) == manifest


def test_manifest_writes_numpy_scalars(tmp_path: Path) -> None:
    training = {"metrics": {"mrr": np.float32(0.5)}, "counts": np.arange(3)}
    write_manifest(tmp_path, sample_manifest(training=training))
    assert read_manifest(tmp_path).training == {"metrics": {"mrr": 0.5}, "counts": [0, 1, 2]}


def test_manifest_keys_match_contract(tmp_path: Path) -> None:
    write_manifest(tmp_path, sample_manifest())
    keys = set(json.loads((tmp_path / MANIFEST_FILE).read_text()))
    expected = {
        "format_version", "model", "session_gap", "top_k", "num_items", "embedding_dim",
        "gru_layers", "hidden_size", "max_session_items", "files", "training", "version",
        "created",
    }  # fmt: skip
    assert keys == expected


def write_raw(directory: Path, **changes: object) -> None:
    data = sample_manifest().to_dict()
    data.update(changes)
    (directory / MANIFEST_FILE).write_text(json.dumps(data))


def test_newer_format_version_says_upgrade(tmp_path: Path) -> None:
    write_raw(tmp_path, format_version=FORMAT_VERSION + 1)
    with pytest.raises(BundleVersionError, match="upgrade hiertcn"):
        read_manifest(tmp_path)


def test_older_format_version_says_reexport(tmp_path: Path) -> None:
    write_raw(tmp_path, format_version=FORMAT_VERSION - 1)
    with pytest.raises(BundleVersionError, match="export the bundle again"):
        read_manifest(tmp_path)


@pytest.mark.parametrize("value", ["1", 1.0, None, True])
def test_non_integer_format_version_rejected(tmp_path: Path, value: object) -> None:
    write_raw(tmp_path, format_version=value)
    with pytest.raises(BundleVersionError, match="format_version"):
        read_manifest(tmp_path)


def test_newer_version_checked_before_keys(tmp_path: Path) -> None:
    (tmp_path / MANIFEST_FILE).write_text(json.dumps({"format_version": FORMAT_VERSION + 1}))
    with pytest.raises(BundleVersionError):
        read_manifest(tmp_path)


def test_missing_key_rejected(tmp_path: Path) -> None:
    data = sample_manifest().to_dict()
    del data["hidden_size"]
    (tmp_path / MANIFEST_FILE).write_text(json.dumps(data))
    with pytest.raises(BundleError, match="hidden_size"):
        read_manifest(tmp_path)


def test_file_without_hash_rejected(tmp_path: Path) -> None:
    files = {name: "0" * 64 for name in BUNDLE_FILES if name != "items.npy"}
    write_raw(tmp_path, files=files)
    with pytest.raises(BundleIntegrityError, match=r"items\.npy"):
        read_manifest(tmp_path)


def test_invalid_size_rejected(tmp_path: Path) -> None:
    write_raw(tmp_path, num_items=0)
    with pytest.raises(BundleError, match="num_items=0"):
        read_manifest(tmp_path)


def test_missing_manifest_rejected(tmp_path: Path) -> None:
    with pytest.raises(BundleIntegrityError, match="not a model bundle"):
        read_manifest(tmp_path)


def test_invalid_json_rejected(tmp_path: Path) -> None:
    (tmp_path / MANIFEST_FILE).write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        read_manifest(tmp_path)


def test_sha256_file_matches_hashlib(tmp_path: Path) -> None:
    data = bytes(range(256)) * 5000  # over one 1 MiB read chunk
    (tmp_path / "blob").write_bytes(data)
    assert sha256_file(tmp_path / "blob") == hashlib.sha256(data).hexdigest()


def test_manifest_top_k_above_items_rejected(tmp_path: Path) -> None:
    write_raw(tmp_path, top_k=1000, num_items=20)
    with pytest.raises(BundleError, match=r"top_k=1000, above num_items=20.*--top-k 20"):
        read_manifest(tmp_path)


@pytest.mark.parametrize("gap", [0, -5.0, "1800", True, None, 1e-7, 4e7])
def test_manifest_invalid_session_gap_rejected(tmp_path: Path, gap: object) -> None:
    write_raw(tmp_path, session_gap=gap)
    expected = r"session_gap=.*expected a number of seconds from 0.001 to 31536000"
    with pytest.raises(BundleError, match=expected):
        read_manifest(tmp_path)


def test_manifest_non_finite_session_gap_rejected(tmp_path: Path) -> None:
    # json.dumps writes NaN and Infinity, and json.loads reads them back.
    for gap in (float("nan"), float("inf")):
        write_raw(tmp_path, session_gap=gap)
        with pytest.raises(BundleError, match="session_gap="):
            read_manifest(tmp_path)


def test_version_is_twelve_hex_digits() -> None:
    version = compute_version(sample_manifest())
    assert len(version) == 12
    assert int(version, 16) >= 0


@pytest.mark.parametrize("name", BUNDLE_FILES)
def test_version_covers_every_file_hash(name: str) -> None:
    files = {file: "0" * 64 for file in BUNDLE_FILES} | {name: "1" * 64}
    assert compute_version(sample_manifest(files=files)) != compute_version(sample_manifest())


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("format_version", FORMAT_VERSION + 1),
        ("session_gap", 1800.5),
        ("top_k", 19),
        ("num_items", 51),
        ("embedding_dim", 9),
        ("gru_layers", 3),
        ("hidden_size", 7),
        ("max_session_items", 14),
    ],
)
def test_version_covers_serving_settings(key: str, value: object) -> None:
    changed = sample_manifest(**{key: value})
    assert compute_version(changed) != compute_version(sample_manifest())


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("version", "ffffffffffff"),
        ("created", "2027-01-01T00:00:00+00:00"),
        ("model", {"name": "hiertcn", "embedding_dim": 16}),
        ("training", {"metrics": {"mrr": 0.9}}),
        ("session_gap", 1800),
    ],
)
def test_version_ignores_descriptive_keys(key: str, value: object) -> None:
    changed = sample_manifest(**{key: value})
    assert compute_version(changed) == compute_version(sample_manifest())


def test_version_independent_of_files_order() -> None:
    files = {name: f"{index:064x}" for index, name in enumerate(BUNDLE_FILES)}
    reversed_files = dict(reversed(list(files.items())))
    first = compute_version(sample_manifest(files=files))
    assert first == compute_version(sample_manifest(files=reversed_files))
