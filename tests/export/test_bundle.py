"""Tests of the torch-free loader: integrity checks, providers and input handling."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from export.bundle import ModelBundle, load_bundle
from export.errors import (
    BundleError,
    BundleIntegrityError,
    BundleVersionError,
    InvalidInputError,
    ProviderError,
)
from export.manifest import (
    FORMAT_VERSION,
    MANIFEST_FILE,
    SESSION_STEP_FILE,
    compute_version,
    read_manifest,
    sha256_file,
)
from tests.export.conftest import NUM_ITEMS, build_prefix

D, G, H = 8, 2, 6


@pytest.fixture
def bundle_copy(bundle_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny bundle that a test may damage."""
    return Path(shutil.copytree(bundle_dir, tmp_path / "copy"))


def flip_byte(path: Path, position: int) -> None:
    data = bytearray(path.read_bytes())
    data[position] ^= 0x01
    path.write_bytes(bytes(data))


def test_bundle_loads_with_contract_attributes(bundle: ModelBundle) -> None:
    assert bundle.item_table.shape == (NUM_ITEMS, D)
    assert isinstance(bundle.item_table, np.memmap)
    assert bundle.item_ids[3] == "item3"
    assert bundle.row_of["item3"] == 3
    assert bundle.start_state.shape == (G, H)
    assert bundle.providers == ["CPUExecutionProvider"]
    assert bundle.manifest.session_gap == 900
    assert bundle.version == compute_version(bundle.manifest)
    assert re.fullmatch("[0-9a-f]{12}", bundle.version)


@pytest.mark.parametrize("name", ["session_step.onnx", "session_close.onnx", "items.npy"])
def test_changed_byte_rejected(bundle_copy: Path, name: str) -> None:
    path = bundle_copy / name
    flip_byte(path, path.stat().st_size // 2)
    with pytest.raises(BundleIntegrityError, match=f"{name} has sha256 .* changed or damaged"):
        load_bundle(bundle_copy)


@pytest.mark.parametrize("name", ["session_close.onnx", "item_ids.json", "start_state.npy"])
def test_missing_file_rejected(bundle_copy: Path, name: str) -> None:
    (bundle_copy / name).unlink()
    with pytest.raises(BundleIntegrityError, match=f"{name} not found.*incomplete"):
        load_bundle(bundle_copy)


def test_newer_format_version_rejected(bundle_copy: Path) -> None:
    data = json.loads((bundle_copy / MANIFEST_FILE).read_text())
    data["format_version"] = FORMAT_VERSION + 1
    (bundle_copy / MANIFEST_FILE).write_text(json.dumps(data))
    with pytest.raises(BundleVersionError, match="upgrade hiertcn"):
        load_bundle(bundle_copy)


def edit_manifest(bundle_dir: Path, **changes: object) -> None:
    data = json.loads((bundle_dir / MANIFEST_FILE).read_text())
    data.update(changes)
    (bundle_dir / MANIFEST_FILE).write_text(json.dumps(data))


def test_edited_version_rejected(bundle_copy: Path) -> None:
    actual = read_manifest(bundle_copy).version
    edit_manifest(bundle_copy, version="deadbeef0000")
    with pytest.raises(BundleIntegrityError) as caught:
        load_bundle(bundle_copy)
    message = str(caught.value)
    assert "has version 'deadbeef0000'" in message
    assert f"give version '{actual}'" in message
    assert "export the bundle again with `hiertcn export`" in message


@pytest.mark.parametrize(("key", "value"), [("top_k", 3), ("session_gap", 60.0)])
def test_edited_setting_without_version_rejected(
    bundle_copy: Path, key: str, value: object
) -> None:
    edit_manifest(bundle_copy, **{key: value})
    with pytest.raises(BundleIntegrityError, match="the manifest was edited or damaged"):
        load_bundle(bundle_copy)


def test_replaced_file_with_new_hash_rejected(bundle_copy: Path) -> None:
    # A file swapped together with its manifest hash passes the hash check, not the version.
    items = bundle_copy / "items.npy"
    np.save(items, np.load(items).astype(np.float16))
    files = read_manifest(bundle_copy).files | {"items.npy": sha256_file(items)}
    edit_manifest(bundle_copy, files=files)
    with pytest.raises(BundleIntegrityError, match=r"has version '[0-9a-f]{12}', but its file"):
        load_bundle(bundle_copy)


def test_bundle_of_old_version_rule_says_reexport(bundle_copy: Path) -> None:
    # Format 1 bundles used the first 12 hex digits of session_step.onnx's sha256 as version.
    files = read_manifest(bundle_copy).files
    edit_manifest(bundle_copy, format_version=1, version=files[SESSION_STEP_FILE][:12])
    with pytest.raises(
        BundleVersionError, match="export the bundle again with this hiertcn version"
    ):
        load_bundle(bundle_copy)


def test_cuda_without_gpu_rejected(bundle_dir: Path) -> None:
    if "CUDAExecutionProvider" in _working_providers(bundle_dir):
        pytest.skip("the CUDA provider works on this machine")
    with pytest.raises(ProviderError, match="device 'cuda' requested"):
        load_bundle(bundle_dir, device="cuda")


def test_auto_falls_back_to_cpu(bundle_dir: Path) -> None:
    expected = _working_providers(bundle_dir)
    assert load_bundle(bundle_dir, device="auto").providers == expected


def _working_providers(bundle_dir: Path) -> list[str]:
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        providers = providers[1:]
    options = ort.SessionOptions()
    options.log_severity_level = 3
    path = str(bundle_dir / "session_close.onnx")
    return ort.InferenceSession(path, options, providers=providers).get_providers()


def test_invalid_device_rejected(bundle_dir: Path) -> None:
    with pytest.raises(ProviderError, match="device 'gpu' is invalid"):
        load_bundle(bundle_dir, device="gpu")


def test_invalid_thread_count_rejected(bundle_dir: Path) -> None:
    with pytest.raises(ProviderError, match="intra_op_threads=0"):
        load_bundle(bundle_dir, intra_op_threads=0)


def test_empty_batch_returns_empty_arrays(bundle: ModelBundle) -> None:
    embedding = bundle.session_step(
        np.zeros((0, 4, D), np.float32), np.zeros(0, np.int64), np.zeros((0, G, H), np.float32)
    )
    new_state = bundle.session_close(np.zeros((0, G, H), np.float32), np.zeros((0, D), np.float32))
    assert embedding.shape == (0, D)
    assert embedding.dtype == np.float32
    assert new_state.shape == (0, G, H)
    assert new_state.dtype == np.float32


def test_empty_prefix_equals_zero_length_row(bundle: ModelBundle) -> None:
    state = np.repeat(bundle.start_state[None], 3, axis=0)
    lengths = np.zeros(3, np.int64)
    no_width = bundle.session_step(np.zeros((3, 0, D), np.float32), lengths, state)
    padded = bundle.session_step(np.ones((3, 5, D), np.float32), lengths, state)
    assert no_width.shape == (3, D)
    np.testing.assert_allclose(no_width, padded, atol=1e-6)


def test_left_padding_ignored(bundle: ModelBundle) -> None:
    rng = np.random.default_rng(0)
    items = bundle.gather_items(np.array([[4, 9, 17]]))  # [1, 3, D]
    state = rng.uniform(-1, 1, (1, G, H)).astype(np.float32)
    exact = bundle.session_step(items, np.array([3]), state)
    padding = rng.standard_normal((1, 6, D)).astype(np.float32)  # garbage in padded positions
    wide = np.concatenate([padding, items], axis=1)
    np.testing.assert_allclose(bundle.session_step(wide, np.array([3]), state), exact, atol=1e-5)


def test_gather_items_rejects_row_out_of_range(bundle: ModelBundle) -> None:
    for row in (-1, NUM_ITEMS):
        with pytest.raises(
            InvalidInputError, match=f"item row {row} is outside 0..{NUM_ITEMS - 1}"
        ):
            bundle.gather_items(np.array([0, row]))


def test_gather_items_rejects_float_rows(bundle: ModelBundle) -> None:
    with pytest.raises(InvalidInputError, match="dtype float64"):
        bundle.gather_items(np.array([1.0]))


def test_gather_items_returns_float32_rows(bundle: ModelBundle) -> None:
    rows = bundle.gather_items(np.array([[2, 3]]))
    assert rows.shape == (1, 2, D)
    assert rows.dtype == np.float32
    np.testing.assert_array_equal(rows[0, 1], bundle.item_table[3])


def test_build_prefix_left_pads(bundle: ModelBundle) -> None:
    prefix, lengths = build_prefix(bundle, [np.array([1, 2, 3]), np.array([], np.int64)])
    assert prefix.shape == (2, 3, D)
    np.testing.assert_array_equal(lengths, [3, 0])
    np.testing.assert_array_equal(prefix[1], 0.0)
    np.testing.assert_array_equal(prefix[0, 0], bundle.item_table[1])


@pytest.mark.parametrize(
    ("prefix", "lengths", "state", "message"),
    [
        ((2, 3, D), (2,), (2, G, H), None),
        (
            (2, 3, D, 1),
            (2,),
            (2, G, H),
            r"prefix has shape \[2, 3, 8, 1\], expected float32 \[\*, \*, 8\]",
        ),
        ((2, 3, D + 1), (2,), (2, G, H), r"prefix has shape \[2, 3, 9\]"),
        ((2, 3, D), (3,), (2, G, H), r"lengths has shape \[3\], expected int64 \[2\]"),
        ((2, 3, D), (2,), (2, H, G), r"state has shape \[2, 6, 2\], expected float32 \[2, 2, 6\]"),
    ],
)
def test_session_step_checks_shapes(
    bundle: ModelBundle, prefix: tuple, lengths: tuple, state: tuple, message: str | None
) -> None:
    arrays = (
        np.zeros(prefix, np.float32),
        np.zeros(lengths, np.int64),
        np.zeros(state, np.float32),
    )
    if message is None:
        assert bundle.session_step(*arrays).shape == (2, D)
        return
    with pytest.raises(InvalidInputError, match=message):
        bundle.session_step(*arrays)


def test_session_step_rejects_float64_prefix(bundle: ModelBundle) -> None:
    with pytest.raises(InvalidInputError, match="prefix has dtype float64, expected float32"):
        bundle.session_step(
            np.zeros((1, 2, D)), np.zeros(1, np.int64), np.zeros((1, G, H), np.float32)
        )


def test_session_step_rejects_int32_lengths(bundle: ModelBundle) -> None:
    with pytest.raises(InvalidInputError, match="lengths has dtype int32, expected int64"):
        bundle.session_step(
            np.zeros((1, 2, D), np.float32), np.zeros(1, np.int32), np.zeros((1, G, H), np.float32)
        )


@pytest.mark.parametrize("bad_length", [-1, 3])
def test_session_step_rejects_lengths_outside_width(bundle: ModelBundle, bad_length: int) -> None:
    with pytest.raises(InvalidInputError, match=r"expected values in 0\.\.2"):
        bundle.session_step(
            np.zeros((1, 2, D), np.float32),
            np.array([bad_length], np.int64),
            np.zeros((1, G, H), np.float32),
        )


def test_session_close_checks_shapes(bundle: ModelBundle) -> None:
    with pytest.raises(
        InvalidInputError, match=r"session_mean has shape \[3, 8\], expected float32 \[2, 8\]"
    ):
        bundle.session_close(np.zeros((2, G, H), np.float32), np.zeros((3, D), np.float32))


def test_session_close_rejects_list_input(bundle: ModelBundle) -> None:
    with pytest.raises(InvalidInputError, match="state is a list"):
        bundle.session_close([[0.0]], np.zeros((1, D), np.float32))  # type: ignore[arg-type]


def test_manifest_records_receptive_field(bundle_dir: Path) -> None:
    assert read_manifest(bundle_dir).max_session_items == 13


def test_huge_max_session_items_rejected(bundle_copy: Path) -> None:
    data = json.loads((bundle_copy / MANIFEST_FILE).read_text())
    data["max_session_items"] = 100_000_000
    (bundle_copy / MANIFEST_FILE).write_text(json.dumps(data))
    with pytest.raises(BundleError, match="max_session_items=100000000, above the maximum"):
        load_bundle(bundle_copy)


def save_with_matching_manifest(bundle_dir: Path, name: str, array: np.ndarray) -> None:
    """Replace a bundle array and update its hash and the version, as an export would."""
    np.save(bundle_dir / name, array)
    manifest = read_manifest(bundle_dir)
    files = manifest.files | {name: sha256_file(bundle_dir / name)}
    version = compute_version(dataclasses.replace(manifest, files=files))
    edit_manifest(bundle_dir, files=files, version=version)


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_item_table_rejected(bundle_copy: Path, value: float) -> None:
    table = np.load(bundle_copy / "items.npy")
    table[3, 1] = value
    save_with_matching_manifest(bundle_copy, "items.npy", table)
    with pytest.raises(BundleError) as caught:
        load_bundle(bundle_copy)
    message = str(caught.value)
    assert f"{bundle_copy / 'items.npy'} contains a NaN or infinite value in row 3" in message
    assert "export the bundle again from a checkpoint with finite weights" in message


def test_non_finite_row_found_past_first_block(
    bundle_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Blocks of 16 values are 2 rows of D=8, so row 41 lies in the 21st block.
    monkeypatch.setattr("export.bundle._FINITE_CHECK_VALUES", 16)
    table = np.load(bundle_copy / "items.npy").astype(np.float16)
    table[41, 7] = -np.inf
    save_with_matching_manifest(bundle_copy, "items.npy", table)
    with pytest.raises(BundleError, match="NaN or infinite value in row 41,"):
        load_bundle(bundle_copy)


def test_non_finite_start_state_rejected(bundle_copy: Path) -> None:
    state = np.load(bundle_copy / "start_state.npy")
    state[0, 0] = np.nan
    save_with_matching_manifest(bundle_copy, "start_state.npy", state)
    with pytest.raises(BundleError, match=r"start_state\.npy contains a NaN or infinite value"):
        load_bundle(bundle_copy)
