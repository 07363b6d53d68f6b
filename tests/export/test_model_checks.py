"""Tests of the checks that a model can be exported: serving members, receptive field, state."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from export.errors import ExportFailedError
from export.onnx_export import ExportConfig, write_bundle
from hiertcn.checkpoint import save_checkpoint
from hiertcn.cli import main
from hiertcn.models import ModelConfig, build_model
from hiertcn.models.hiertcn import HierTCN
from tests.export.conftest import NUM_ITEMS, make_checkpoint, make_model

MEMBERS_DOC = 'docs/architecture.md, section "Models"'


def tiny_checkpoint(name: str, folder: Path) -> Path:
    """Save a checkpoint of a tiny untrained model `name` and return its path."""
    torch.manual_seed(0)
    config = ModelConfig(name=name, embedding_dim=8, hidden_size=6, gru_layers=2)
    model = build_model(config, NUM_ITEMS)
    return save_checkpoint(folder / f"{name}.pt", make_checkpoint(model))


def test_hiergru_export_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    checkpoint = tiny_checkpoint("hiergru", tmp_path)
    out = tmp_path / "bundle"

    code = main(["export", "--checkpoint", str(checkpoint), "--out", str(out)])

    error = capsys.readouterr().err
    assert code == 2
    assert "model 'hiergru' cannot be exported because its receptive_field is None" in error
    assert "the model reads the whole session" in error
    assert MEMBERS_DOC in error
    assert "TypeError" not in error
    assert not out.exists()


def test_gru_export_names_missing_members(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    checkpoint = tiny_checkpoint("gru", tmp_path)

    code = main(["export", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "bundle")])

    error = capsys.readouterr().err
    assert code == 2
    assert (
        "model 'gru' cannot be exported because it lacks session_user_embedding, close_session "
        "and receptive_field" in error
    )
    assert MEMBERS_DOC in error
    assert "only HierTCN" not in error


@pytest.mark.parametrize("value", [0, 10_001, 2.5, True, "13"])
def test_invalid_receptive_field_rejected(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: object
) -> None:
    model = make_model()
    monkeypatch.setattr(HierTCN, "receptive_field", value)

    with pytest.raises(ExportFailedError, match=f"its receptive_field is {value!r}\\. A bundle"):
        write_bundle(model, make_checkpoint(model), tmp_path / "b", ExportConfig())
    assert list(tmp_path.iterdir()) == []


def test_start_state_without_layers_rejected(tmp_path: Path) -> None:
    model = make_model()
    model.start_state = torch.nn.Parameter(torch.zeros(6))

    with pytest.raises(ExportFailedError, match=r"start_state is a tensor of shape \[6\]"):
        write_bundle(model, make_checkpoint(model), tmp_path / "b", ExportConfig())


def test_export_help_names_members(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["export", "--help"])

    help_text = " ".join(capsys.readouterr().out.split())
    assert "session_user_embedding, close_session, start_state and a finite receptive_field" in (
        help_text
    )
    assert 'defines in the section "Models"' in help_text
    assert "HierTCN checkpoint" not in help_text
