"""`ModelBundle.catalog`: the identity of the item catalog that state stores record, and the
checks of its item ids."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch

from export.bundle import MAX_ITEM_ID_LENGTH, ModelBundle, load_bundle
from export.errors import BundleError
from export.manifest import ITEM_IDS_FILE, sha256_file
from export.onnx_export import ExportConfig, write_bundle
from statestore.catalog import read_catalog
from stream.events import EventConfig
from tests.export.conftest import make_checkpoint, make_model
from tests.export.test_graph_signature import rehash


def test_catalog_is_sha256_of_item_ids(bundle: ModelBundle, bundle_dir: Path) -> None:
    assert bundle.catalog == sha256_file(bundle_dir / ITEM_IDS_FILE)
    assert len(bundle.catalog) == 64


def test_statestore_reader_agrees_with_bundle(bundle: ModelBundle, bundle_dir: Path) -> None:
    catalog = read_catalog(bundle_dir)

    assert catalog.sha256 == bundle.catalog
    assert catalog.item_ids == bundle.item_ids
    assert catalog.version == bundle.version


def test_reordered_items_give_other_catalog(
    tiny_model: torch.nn.Module, bundle: ModelBundle, tmp_path: Path
) -> None:
    # The same model and sizes, with the rows of the catalog in another order.
    checkpoint = make_checkpoint(tiny_model)
    reordered = dataclasses.replace(checkpoint, item_ids=checkpoint.item_ids[::-1])
    write_bundle(tiny_model, reordered, tmp_path / "reordered", ExportConfig(top_k=5))

    other = load_bundle(tmp_path / "reordered", intra_op_threads=1)

    assert other.state_shape == bundle.state_shape
    assert other.embedding_dim == bundle.embedding_dim
    assert other.catalog != bundle.catalog


def test_other_weights_keep_catalog(bundle: ModelBundle, tmp_path: Path) -> None:
    model = make_model(seed=1)
    write_bundle(model, make_checkpoint(model), tmp_path / "retrained", ExportConfig(top_k=5))

    other = load_bundle(tmp_path / "retrained", intra_op_threads=1)

    assert other.version != bundle.version
    assert other.catalog == bundle.catalog


def replace_item_id(bundle_dir: Path, copy: Path, row: int, item: str) -> Path:
    """Copy the bundle with the id of `row` replaced and a manifest that lists the new hash."""
    shutil.copytree(bundle_dir, copy)
    item_ids = json.loads((copy / ITEM_IDS_FILE).read_text())
    item_ids[row] = item
    (copy / ITEM_IDS_FILE).write_text(json.dumps(item_ids))
    rehash(copy, ITEM_IDS_FILE)
    return copy


def test_longest_event_item_id_accepted(bundle_dir: Path, tmp_path: Path) -> None:
    longest = "é" * MAX_ITEM_ID_LENGTH
    copy = replace_item_id(bundle_dir, tmp_path / "copy", 7, longest)

    assert load_bundle(copy, intra_op_threads=1).item_ids[7] == longest


@pytest.mark.parametrize("length", [MAX_ITEM_ID_LENGTH + 1, 2_000_000, 0])
def test_item_id_length_outside_events_rejected(
    bundle_dir: Path, tmp_path: Path, length: int
) -> None:
    copy = replace_item_id(bundle_dir, tmp_path / "copy", 7, "x" * length)

    with pytest.raises(BundleError) as caught:
        load_bundle(copy)

    message = str(caught.value)
    assert f"{copy / ITEM_IDS_FILE} row 7 has an item id of {length} characters" in message
    assert f"events carry item ids of 1 to {MAX_ITEM_ID_LENGTH} characters" in message
    assert "export the bundle again" in message


def test_item_id_limit_is_event_limit() -> None:
    assert EventConfig().max_id_length == MAX_ITEM_ID_LENGTH


def test_item_id_limit_equals_event_check() -> None:
    from stream.events import EventConfig

    assert EventConfig().max_id_length == MAX_ITEM_ID_LENGTH
