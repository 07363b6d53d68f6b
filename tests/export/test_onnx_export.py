"""Tests of the exporter: graph signatures, dynamic axes, parity with torch, bundle files."""

from __future__ import annotations

import dataclasses
import json
import math
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from export.bundle import ModelBundle, load_bundle
from export.errors import ExportFailedError
from export.manifest import ITEMS_FILE, MANIFEST_FILE
from export.onnx_export import DEFAULT_TOP_K, ExportConfig, write_bundle
from export.verify import VerifyConfig, verify_bundle
from hiertcn.models import build_model
from tests.export.conftest import NUM_ITEMS, TINY_CONFIG, make_checkpoint, make_model

D, G, H = 8, 2, 6
FLOAT, INT64 = onnx.TensorProto.FLOAT, onnx.TensorProto.INT64


def signature(values: list[onnx.ValueInfoProto]) -> dict[str, tuple[int, list[object]]]:
    """Return name -> (element type, dims with symbolic names as str) of graph values."""
    result = {}
    for value in values:
        tensor = value.type.tensor_type
        dims = [dim.dim_param or dim.dim_value for dim in tensor.shape.dim]
        result[value.name] = (tensor.elem_type, dims)
    return result


def test_session_step_signature(bundle_dir: Path) -> None:
    graph = onnx.load(bundle_dir / "session_step.onnx").graph
    inputs = signature(list(graph.input))
    assert inputs == {
        "prefix": (FLOAT, ["B", "L", D]),
        "lengths": (INT64, ["B"]),
        "state": (FLOAT, ["B", G, H]),
    }
    assert signature(list(graph.output)) == {"user_embedding": (FLOAT, ["B", D])}


def test_session_close_signature(bundle_dir: Path) -> None:
    graph = onnx.load(bundle_dir / "session_close.onnx").graph
    assert signature(list(graph.input)) == {
        "state": (FLOAT, ["B", G, H]),
        "session_mean": (FLOAT, ["B", D]),
    }
    assert signature(list(graph.output)) == {"new_state": (FLOAT, ["B", G, H])}


def test_graphs_pass_onnx_checker(bundle_dir: Path) -> None:
    for name in ("session_step.onnx", "session_close.onnx"):
        onnx.checker.check_model(onnx.load(bundle_dir / name), full_check=True)


@pytest.mark.parametrize(("batch", "width"), [(1, 0), (1, 1), (2, 4), (7, 13), (3, 30)])
def test_session_step_matches_torch(
    tiny_model: torch.nn.Module, bundle: ModelBundle, batch: int, width: int
) -> None:
    rng = np.random.default_rng(batch * 100 + width)
    lengths = rng.integers(0, width + 1, size=batch)
    lengths[0] = width
    prefix = rng.standard_normal((batch, width, D)).astype(np.float32)
    for row, length in enumerate(lengths):
        prefix[row, : width - length] = 0.0
    state = rng.uniform(-1, 1, (batch, G, H)).astype(np.float32)
    with torch.no_grad():
        expected = tiny_model.session_user_embedding(
            torch.from_numpy(prefix), torch.from_numpy(lengths), torch.from_numpy(state)
        ).numpy()
    actual = bundle.session_step(prefix, lengths.astype(np.int64), state)
    np.testing.assert_allclose(actual, expected, atol=1e-5)


@pytest.mark.parametrize("batch", [1, 7, 64])
def test_session_close_matches_torch_gru(
    tiny_model: torch.nn.Module, bundle: ModelBundle, batch: int
) -> None:
    # torch.nn.GRU itself is the reference: its reset gate multiplies (W_hn h + b_hn), which
    # ONNX GRU calls linear_before_reset=1; the graph must follow that convention.
    rng = np.random.default_rng(batch)
    state = rng.uniform(-1, 1, (batch, G, H)).astype(np.float32)
    mean = rng.standard_normal((batch, D)).astype(np.float32)
    with torch.no_grad():
        _, hidden = tiny_model.session_gru(
            torch.from_numpy(mean)[:, None], torch.from_numpy(state).transpose(0, 1).contiguous()
        )
    expected = hidden.transpose(0, 1).numpy()
    np.testing.assert_allclose(bundle.session_close(state, mean), expected, atol=1e-5)


def test_bundle_files_hold_model_tensors(tiny_model: torch.nn.Module, bundle: ModelBundle) -> None:
    with torch.no_grad():
        table = tiny_model.item_embeddings().numpy()
        start = tiny_model.start_state.numpy()
    np.testing.assert_array_equal(bundle.item_table, table)
    np.testing.assert_array_equal(bundle.start_state, start)


def test_manifest_content(bundle_dir: Path, tiny_model: torch.nn.Module) -> None:
    manifest = json.loads((bundle_dir / MANIFEST_FILE).read_text())
    assert manifest["model"] == tiny_model.config.to_dict()
    assert manifest["num_items"] == NUM_ITEMS
    assert manifest["top_k"] == 5
    assert manifest["session_gap"] == 900
    assert manifest["training"]["metrics"] == {"mrr": 0.25}
    assert manifest["training"]["epoch"] == 3


def test_float16_item_table(tmp_path: Path) -> None:
    model = make_model(seed=1)
    write_bundle(model, make_checkpoint(model), tmp_path / "b", ExportConfig(float16_items=True))
    loaded = load_bundle(tmp_path / "b")
    assert loaded.item_table.dtype == np.float16
    assert loaded.gather_items(np.array([0])).dtype == np.float32
    with torch.no_grad():
        table = model.item_embeddings().numpy()
    np.testing.assert_allclose(np.load(tmp_path / "b" / ITEMS_FILE), table, atol=1e-3)


def test_session_gap_option_overrides_checkpoint(tmp_path: Path) -> None:
    model = make_model()
    write_bundle(model, make_checkpoint(model), tmp_path / "b", ExportConfig(session_gap=60))
    assert json.loads((tmp_path / "b" / MANIFEST_FILE).read_text())["session_gap"] == 60


def test_non_empty_out_rejected(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "old.txt").write_text("x")
    model = make_model()
    with pytest.raises(ExportFailedError, match="already exists and is not empty"):
        write_bundle(model, make_checkpoint(model), tmp_path / "b", ExportConfig())


def test_bundle_folder_readable_by_others(tmp_path: Path) -> None:
    model = make_model()
    write_bundle(model, make_checkpoint(model), tmp_path / "b", ExportConfig())
    assert (tmp_path / "b").stat().st_mode & 0o777 == 0o755


def test_failed_export_leaves_no_directory(tmp_path: Path) -> None:
    model = make_model()
    checkpoint = make_checkpoint(model)
    short = type(checkpoint)(**{**checkpoint.__dict__, "item_ids": ["a", "b"]})
    with pytest.raises(ExportFailedError, match="lists 2 item ids but the model has 50"):
        write_bundle(model, short, tmp_path / "b", ExportConfig())
    assert list(tmp_path.iterdir()) == []


def test_model_without_serving_interface_rejected(tmp_path: Path) -> None:
    model = torch.nn.Linear(2, 2)
    with pytest.raises(ExportFailedError, match=r"lacks .*session_user_embedding"):
        write_bundle(model, make_checkpoint(make_model()), tmp_path / "b", ExportConfig())


def test_graph_runs_with_all_optimizations(bundle_dir: Path) -> None:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(
        str(bundle_dir / "session_step.onnx"), options, providers=["CPUExecutionProvider"]
    )
    feeds = {
        "prefix": np.zeros((2, 5, D), np.float32),
        "lengths": np.array([5, 0], np.int64),
        "state": np.zeros((2, G, H), np.float32),
    }
    assert session.run(None, feeds)[0].shape == (2, D)


def test_default_step_is_pruned_graph(bundle_dir: Path) -> None:
    # The pruned step runs its convolutions as MatMul; the model's own step exports Conv nodes.
    ops = {node.op_type for node in onnx.load(bundle_dir / "session_step.onnx").graph.node}
    assert "Conv" not in ops
    assert "MatMul" in ops


def test_full_step_export_matches_torch(tmp_path: Path) -> None:
    model = make_model(seed=2)
    config = ExportConfig(pruned_step=False)
    write_bundle(model, make_checkpoint(model), tmp_path / "b", config)
    ops = {node.op_type for node in onnx.load(tmp_path / "b" / "session_step.onnx").graph.node}
    assert "Conv" in ops
    report = verify_bundle(model, load_bundle(tmp_path / "b"), VerifyConfig(batch_sizes=(1, 7)))
    assert report.passed, report.format()


def test_float16_export_gets_other_version(tmp_path: Path) -> None:
    model = make_model()
    checkpoint = make_checkpoint(model)
    first = write_bundle(model, checkpoint, tmp_path / "a", ExportConfig())
    again = write_bundle(model, checkpoint, tmp_path / "b", ExportConfig())
    half = write_bundle(model, checkpoint, tmp_path / "c", ExportConfig(float16_items=True))
    assert first.version == again.version
    assert half.version != first.version
    assert half.files["session_step.onnx"] == first.files["session_step.onnx"]


def test_out_file_rejected_as_file(tmp_path: Path) -> None:
    (tmp_path / "b").touch()
    model = make_model()
    with pytest.raises(ExportFailedError, match=r"--out .*b is a file: pass a folder"):
        write_bundle(model, make_checkpoint(model), tmp_path / "b", ExportConfig())


def test_out_below_file_rejected(tmp_path: Path) -> None:
    (tmp_path / "f").touch()
    model = make_model()
    with pytest.raises(ExportFailedError, match=r"--out .*f/b is invalid because .*f is a file"):
        write_bundle(model, make_checkpoint(model), tmp_path / "f" / "b", ExportConfig())


def test_unwritable_out_folder_rejected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Simulated, because root may write to a read-only folder.
    def deny(**kwargs: object) -> str:
        raise PermissionError(13, "Permission denied", str(kwargs["dir"]))

    monkeypatch.setattr(tempfile, "mkdtemp", deny)
    model = make_model()
    with pytest.raises(
        ExportFailedError, match=r"cannot create the bundle folder .*b \(Permission denied: "
    ):
        write_bundle(model, make_checkpoint(model), tmp_path / "b", ExportConfig())


def test_empty_out_folder_accepted(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    model = make_model()
    write_bundle(model, make_checkpoint(model), tmp_path / "b", ExportConfig())
    assert (tmp_path / "b" / MANIFEST_FILE).is_file()


def test_top_k_above_catalog_rejected(tmp_path: Path) -> None:
    model = make_model()
    with pytest.raises(
        ExportFailedError,
        match=f"--top-k 1000 is larger than the catalog of {NUM_ITEMS} items: pass "
        f"--top-k {NUM_ITEMS} or less",
    ):
        write_bundle(model, make_checkpoint(model), tmp_path / "b", ExportConfig(top_k=1000))
    assert list(tmp_path.iterdir()) == []


def test_top_k_equal_to_catalog_accepted(tmp_path: Path) -> None:
    model = make_model()
    config = ExportConfig(top_k=NUM_ITEMS)
    assert write_bundle(model, make_checkpoint(model), tmp_path / "b", config).top_k == NUM_ITEMS


def test_default_top_k_capped_at_small_catalog(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model(TINY_CONFIG, 10).eval()
    checkpoint = dataclasses.replace(
        make_checkpoint(make_model()),
        model_state=model.state_dict(),
        item_ids=[f"item{row}" for row in range(10)],
    )
    assert write_bundle(model, checkpoint, tmp_path / "small", ExportConfig()).top_k == 10
    large = make_model()
    manifest = write_bundle(large, make_checkpoint(large), tmp_path / "large", ExportConfig())
    assert manifest.top_k == DEFAULT_TOP_K


@pytest.mark.parametrize("gap", [0, 0.0, -60, math.nan, "x", 1e-7])
def test_checkpoint_invalid_session_gap_rejected(tmp_path: Path, gap: object) -> None:
    model = make_model()
    checkpoint = dataclasses.replace(make_checkpoint(model), data_summary={"session_gap": gap})
    with pytest.raises(
        ExportFailedError,
        match=r"trained with session gap .* s, but the stream worker needs a number of seconds "
        r"from 0.001 to 31536000: pass --session-gap SECONDS",
    ):
        write_bundle(model, checkpoint, tmp_path / "b", ExportConfig())
    assert list(tmp_path.iterdir()) == []


def test_checkpoint_zero_gap_with_option_accepted(tmp_path: Path) -> None:
    model = make_model()
    checkpoint = dataclasses.replace(make_checkpoint(model), train_config={"session_gap": 0})
    config = ExportConfig(session_gap=60)
    assert write_bundle(model, checkpoint, tmp_path / "b", config).session_gap == 60


@pytest.mark.parametrize("gap", [0, -1.0, math.nan, math.inf, 1e-7, 4e7])
def test_invalid_session_gap_option_rejected(gap: float) -> None:
    with pytest.raises(ExportFailedError, match=r"use a number of seconds from 0\.001 to 31536000"):
        ExportConfig(session_gap=gap)
