"""Tests of the graph signature check: in the export, in `load_bundle`, and in replay."""

from __future__ import annotations

import dataclasses
import io
import shutil
import warnings
from pathlib import Path

import onnx
import pytest
import torch

from export.bundle import load_bundle
from export.errors import BundleError, ExportFailedError
from export.graph_signature import (
    CLOSE_SIGNATURE,
    STEP_SIGNATURE,
    DeclaredTensor,
    signature_problems,
)
from export.manifest import (
    CLOSE_INPUTS,
    CLOSE_OUTPUT,
    SESSION_CLOSE_FILE,
    SESSION_STEP_FILE,
    compute_version,
    read_manifest,
    sha256_file,
    write_manifest,
)
from export.onnx_export import ExportConfig, write_bundle
from hiertcn.checkpoint import save_checkpoint
from hiertcn.cli import main as hiertcn_main
from hiertcn.models.hiertcn import HierTCN
from stream.cli import main as stream_main
from tests.export.conftest import make_checkpoint, make_model

D, G, H = 8, 2, 6
SIZES = {"embedding_dim": D, "gru_layers": G, "hidden_size": H}


def close_ignoring_state(state: torch.Tensor, session_mean: torch.Tensor) -> torch.Tensor:
    """A session close [B, G, H], [B, D] -> [B, G, H] that never reads `state`."""
    return torch.tanh(session_mean[:, :H]).unsqueeze(1).expand(-1, G, -1).contiguous()


def step_ignoring_lengths(
    prefix: torch.Tensor, lengths: torch.Tensor, state: torch.Tensor
) -> torch.Tensor:
    """A session step [B, L, D], [B], [B, G, H] -> [B, D] that never reads `lengths`."""
    return prefix.sum(dim=1) + state[:, -1, :1]


class CloseIgnoringState(torch.nn.Module):
    def forward(self, state: torch.Tensor, session_mean: torch.Tensor) -> torch.Tensor:
        return close_ignoring_state(state, session_mean)


def close_graph_without_state() -> bytes:
    """Export a real session close graph that lacks the `state` input, as torch writes it."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated, but it is the one that `hiertcn export` uses.
        warnings.simplefilter("ignore", category=DeprecationWarning)
        torch.onnx.export(
            CloseIgnoringState(),
            (torch.zeros(3, G, H), torch.zeros(3, D)),
            buffer,
            input_names=list(CLOSE_INPUTS),
            output_names=[CLOSE_OUTPUT],
            dynamic_axes={"state": {0: "B"}, "session_mean": {0: "B"}, CLOSE_OUTPUT: {0: "B"}},
            opset_version=17,
            dynamo=False,
        )
    return buffer.getvalue()


def rehash(bundle_dir: Path, name: str) -> None:
    """List the new sha256 of file `name` in the manifest and recompute its version."""
    manifest = read_manifest(bundle_dir)
    files = {**manifest.files, name: sha256_file(bundle_dir / name)}
    manifest = dataclasses.replace(manifest, files=files)
    write_manifest(bundle_dir, dataclasses.replace(manifest, version=compute_version(manifest)))


@pytest.fixture
def bundle_without_state(bundle_dir: Path, tmp_path: Path) -> Path:
    """A copy of the tiny bundle whose close graph lacks `state`, with a consistent manifest."""
    copy = Path(shutil.copytree(bundle_dir, tmp_path / "copy"))
    graph = close_graph_without_state()
    assert [value.name for value in onnx.load_from_string(graph).graph.input] == ["session_mean"]
    (copy / SESSION_CLOSE_FILE).write_bytes(graph)
    rehash(copy, SESSION_CLOSE_FILE)
    return copy


# The export.


def test_export_rejects_close_without_state(tmp_path: Path) -> None:
    model = make_model()
    model.close_session = close_ignoring_state
    out = tmp_path / "bundle"

    with pytest.raises(ExportFailedError) as caught:
        write_bundle(model, make_checkpoint(model), out, ExportConfig())

    message = str(caught.value)
    assert "the session_close.onnx graph" in message
    assert "the input 'state' (float32 [B, G, H]) is missing" in message
    assert "close_session probably does not use its argument state" in message
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_export_rejects_step_without_lengths(tmp_path: Path) -> None:
    model = make_model()
    model.session_user_embedding = step_ignoring_lengths
    out = tmp_path / "bundle"

    with pytest.raises(ExportFailedError) as caught:
        write_bundle(model, make_checkpoint(model), out, ExportConfig(pruned_step=False))

    message = str(caught.value)
    assert "the session_step.onnx graph" in message
    assert "the input 'lengths' (int64 [B]) is missing" in message
    assert "session_user_embedding probably does not use its argument lengths" in message
    assert not out.exists()


def test_export_command_without_state_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    checkpoint = save_checkpoint(tmp_path / "best.pt", make_checkpoint(make_model()))
    monkeypatch.setattr(
        HierTCN, "close_session", lambda self, state, mean: close_ignoring_state(state, mean)
    )
    out = tmp_path / "bundle"

    code = hiertcn_main(["export", "--checkpoint", str(checkpoint), "--out", str(out), "--verify"])

    error = capsys.readouterr().err
    assert code == 2
    assert "the input 'state' (float32 [B, G, H]) is missing" in error
    assert "Traceback" not in error
    assert "Invalid input name" not in error
    assert not out.exists()


# The loader and replay.


def test_load_rejects_close_without_state(bundle_without_state: Path) -> None:
    with pytest.raises(BundleError) as caught:
        load_bundle(bundle_without_state)

    message = str(caught.value)
    assert (
        f"{bundle_without_state / SESSION_CLOSE_FILE} does not match the bundle format" in message
    )
    assert "the input 'state' (float32 [B, G, H]) is missing" in message
    assert "export the bundle again with `hiertcn export`" in message


def test_load_rejects_fixed_size_other_than_manifest(bundle_dir: Path, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(bundle_dir, tmp_path / "copy"))
    graph = onnx.load(str(copy / SESSION_STEP_FILE))
    state = next(value for value in graph.graph.input if value.name == "state")
    state.type.tensor_type.shape.dim[1].dim_value = G + 1
    onnx.save(graph, str(copy / SESSION_STEP_FILE))
    rehash(copy, SESSION_STEP_FILE)

    with pytest.raises(
        BundleError, match=f"'state' has G={G + 1} on axis 1, but the bundle has G={G}"
    ):
        load_bundle(copy)


def test_replay_on_close_without_state_exits_2(
    bundle_without_state: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    events = tmp_path / "events.jsonl"
    # Two sessions of one user, so a replay that got past loading would close one.
    events.write_text(
        '{"user": "u", "item": "item1", "ts": 1000}\n{"user": "u", "item": "item2", "ts": 9000}\n'
    )

    code = stream_main(["replay", "--events", str(events), "--bundle", str(bundle_without_state)])

    error = capsys.readouterr().err
    assert code == 2
    assert "cannot load the model bundle" in error
    assert "the input 'state' (float32 [B, G, H]) is missing" in error
    assert "Invalid input name" not in error


# The check itself.


def declared(name: str, dtype: str, dims: tuple[int | str | None, ...] | None) -> DeclaredTensor:
    return DeclaredTensor(name, dtype, dims)


CLOSE_OUTPUTS = [declared("new_state", "float32", ("B", G, H))]
CLOSE_MEAN = declared("session_mean", "float32", ("B", D))
CLOSE_STATE = declared("state", "float32", ("B", G, H))


def test_matching_close_graph_has_no_problems() -> None:
    assert (
        signature_problems(CLOSE_SIGNATURE, [CLOSE_STATE, CLOSE_MEAN], CLOSE_OUTPUTS, SIZES) == []
    )


@pytest.mark.parametrize(
    ("state", "problem"),
    [
        (declared("state", "float64", ("B", G, H)), "'state' has dtype float64, expected float32"),
        (declared("state", "float32", ("B", H)), "'state' has rank 2, expected float32 [B, G, H]"),
        (declared("state", "float32", (1, G, H)), "'state' fixes axis B at 1"),
        (declared("state", "float32", ("B", G, H + 1)), f"'state' has H={H + 1} on axis 2"),
    ],
)
def test_close_state_problem_named(state: DeclaredTensor, problem: str) -> None:
    problems = signature_problems(CLOSE_SIGNATURE, [state, CLOSE_MEAN], CLOSE_OUTPUTS, SIZES)

    assert len(problems) == 1
    assert problem in problems[0]


def test_unknown_rank_and_symbolic_sizes_pass() -> None:
    state = declared("state", "float32", None)
    mean = declared("session_mean", "float32", ("batch", None))

    assert signature_problems(CLOSE_SIGNATURE, [state, mean], CLOSE_OUTPUTS, SIZES) == []


def test_extra_input_rejected_extra_output_allowed() -> None:
    extra_input = declared("dropout_seed", "int64", ())
    extra_output = declared("debug", "float32", ("B",))

    problems = signature_problems(
        CLOSE_SIGNATURE,
        [CLOSE_STATE, CLOSE_MEAN, extra_input],
        [*CLOSE_OUTPUTS, extra_output],
        SIZES,
    )

    assert problems == [
        "the input 'dropout_seed' is not in the bundle format, so the worker does not feed it"
    ]


def test_missing_step_output_named() -> None:
    inputs = [
        declared("prefix", "float32", ("B", "L", D)),
        declared("lengths", "int64", ("B",)),
        declared("state", "float32", ("B", G, H)),
    ]
    outputs = [declared("output_0", "float32", ("B", D))]

    problems = signature_problems(STEP_SIGNATURE, inputs, outputs, SIZES)

    assert "the output 'user_embedding' (float32 [B, D]) is missing" in problems
