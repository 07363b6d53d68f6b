"""`ModelBundle.catalog`: the identity of the item catalog that state stores record."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from export.bundle import ModelBundle, load_bundle
from export.manifest import ITEM_IDS_FILE, sha256_file
from export.onnx_export import ExportConfig, write_bundle
from statestore.catalog import read_catalog
from tests.export.conftest import make_checkpoint, make_model


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
