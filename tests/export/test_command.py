"""Tests of the `hiertcn export` command line."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest
import torch
from torch.onnx._constants import ONNX_MAX_OPSET

from export.bundle import load_bundle
from export.verify import VerifyConfig
from hiertcn.checkpoint import save_checkpoint
from hiertcn.cli import main
from tests.export.conftest import NUM_ITEMS, make_checkpoint, make_model


@pytest.fixture
def checkpoint_path(tmp_path: Path) -> Path:
    model = make_model()
    return save_checkpoint(tmp_path / "best.pt", make_checkpoint(model))


def test_export_with_verify_succeeds(
    checkpoint_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "bundle"
    code = main(
        ["export", "--checkpoint", str(checkpoint_path), "--out", str(out), "--verify",
         "--float16", "--top-k", "7", "--opset", "18"]
    )  # fmt: skip
    output = capsys.readouterr().out
    assert code == 0, output
    assert "PASS" in output
    bundle = load_bundle(out)
    assert bundle.manifest.top_k == 7
    assert bundle.item_table.dtype.name == "float16"


def test_export_into_non_empty_directory_fails(
    checkpoint_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "bundle"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    code = main(["export", "--checkpoint", str(checkpoint_path), "--out", str(out)])
    assert code == 2
    assert "already exists and is not empty" in capsys.readouterr().err


def test_export_into_empty_file_says_file(
    checkpoint_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "bundle-file"
    out.touch()
    code = main(["export", "--checkpoint", str(checkpoint_path), "--out", str(out)])
    error = capsys.readouterr().err
    assert code == 2
    assert f"--out {out} is a file: pass a folder" in error
    assert "not empty" not in error


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--top-k", "0", "--top-k 0 is invalid: use a positive integer"),
        ("--session-gap", "0", "--session-gap 0 is invalid: use a number of seconds from 0.001"),
        ("--session-gap", "1e-7", "--session-gap 1e-7 is invalid: use a number of seconds from"),
        ("--opset", "13", f"--opset 13 is invalid: use 14 to {ONNX_MAX_OPSET}"),
        ("--opset", str(ONNX_MAX_OPSET + 1), f"use 14 to {ONNX_MAX_OPSET}, the range"),
    ],
)
def test_export_invalid_flag_named(
    checkpoint_path: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    flag: str,
    value: str,
    message: str,
) -> None:
    out = tmp_path / "bundle"
    code = main(["export", "--checkpoint", str(checkpoint_path), "--out", str(out), flag, value])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_export_top_k_above_catalog_fails(
    checkpoint_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "bundle"
    code = main(
        ["export", "--checkpoint", str(checkpoint_path), "--out", str(out), "--top-k", "1000"]
    )
    error = capsys.readouterr().err
    assert code == 2
    assert f"--top-k 1000 is larger than the catalog of {NUM_ITEMS} items" in error
    assert f"pass --top-k {NUM_ITEMS} or less" in error
    assert not out.exists()


def test_export_zero_gap_checkpoint_needs_option(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = make_model()
    checkpoint = dataclasses.replace(make_checkpoint(model), train_config={"session_gap": 0})
    path = save_checkpoint(tmp_path / "gap0.pt", checkpoint)
    out = tmp_path / "bundle"
    code = main(["export", "--checkpoint", str(path), "--out", str(out)])
    assert code == 2
    assert "pass --session-gap SECONDS" in capsys.readouterr().err
    assert not out.exists()

    code = main(["export", "--checkpoint", str(path), "--out", str(out), "--session-gap", "60"])
    assert code == 0
    assert json.loads((out / "manifest.json").read_text())["session_gap"] == 60


def test_export_of_missing_checkpoint_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["export", "--checkpoint", str(tmp_path / "no.pt"), "--out", str(tmp_path / "b")])
    assert code == 2
    assert "not found" in capsys.readouterr().err


def test_export_out_help_allows_empty_folder(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "must not exist or be empty" in help_text


def test_export_verify_help_states_checks(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "by more than 1e-4" in help_text
    assert "top-20 item lists differ" in help_text
    assert "minutes" not in help_text


def test_export_of_nan_weights_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = make_model()
    with torch.no_grad():
        model.state_dict()["session_gru.weight_hh_l0"][2, 3] = float("nan")
    checkpoint = save_checkpoint(tmp_path / "best.pt", make_checkpoint(model))
    out = tmp_path / "bundle"
    assert main(["export", "--checkpoint", str(checkpoint), "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert "weight tensor 'session_gru.weight_hh_l0' of the checkpoint contains 1 NaN" in error
    assert "retrain with a lower --lr or with --grad-clip" in error
    assert not out.exists()


def test_export_float16_overflow_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = make_model()
    with torch.no_grad():
        model.state_dict()["items.embedding.weight"][7, 0] = 1e6
    checkpoint = save_checkpoint(tmp_path / "best.pt", make_checkpoint(model))
    out = tmp_path / "bundle"
    argv = ["export", "--checkpoint", str(checkpoint), "--out", str(out), "--float16"]
    assert main(argv) == 2
    assert "above the float16 maximum of 65504: export without --float16" in (
        capsys.readouterr().err
    )
    assert not out.exists()


class FailingVerifyConfig(VerifyConfig):
    """A verification whose tolerance no difference meets, so every check fails."""

    def __init__(self) -> None:
        super().__init__(batch_sizes=(1,), atol=-1.0)


def test_failed_verify_writes_nothing(
    checkpoint_path: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("export.verify.VerifyConfig", FailingVerifyConfig)
    out = tmp_path / "bundle"
    argv = ["export", "--checkpoint", str(checkpoint_path), "--out", str(out), "--verify"]
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert "FAIL: tolerance -1" in captured.out
    assert f"nothing was written to --out {out}" in captured.err
    assert not out.exists()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["best.pt"]


def test_export_through_symlink_fills_target(
    checkpoint_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "bundles" / "v1"
    target.mkdir(parents=True)
    link = tmp_path / "current"
    link.symlink_to(target)

    code = main(["export", "--checkpoint", str(checkpoint_path), "--out", str(link)])

    assert code == 0, capsys.readouterr().err
    assert link.is_symlink()
    assert link.resolve() == target
    assert load_bundle(link).num_items == NUM_ITEMS
    assert (target / "manifest.json").is_file()
    assert sorted(path.name for path in (tmp_path / "bundles").iterdir()) == ["v1"]


def test_export_through_dangling_symlink_creates_target(
    checkpoint_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "bundles" / "v2"
    link = tmp_path / "current"
    link.symlink_to(target)

    code = main(["export", "--checkpoint", str(checkpoint_path), "--out", str(link)])

    assert code == 0, capsys.readouterr().err
    assert link.is_symlink()
    assert (target / "manifest.json").is_file()


def test_export_through_symlink_to_full_folder_fails(
    checkpoint_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "v1"
    target.mkdir()
    (target / "keep.txt").write_text("x")
    link = tmp_path / "current"
    link.symlink_to(target)

    code = main(["export", "--checkpoint", str(checkpoint_path), "--out", str(link)])

    assert code == 2
    assert f"{target} already exists and is not empty" in capsys.readouterr().err
    assert sorted(path.name for path in target.iterdir()) == ["keep.txt"]


def test_export_through_symlink_loop_fails(
    checkpoint_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")

    code = main(["export", "--checkpoint", str(checkpoint_path), "--out", str(tmp_path / "a")])

    error = capsys.readouterr().err
    assert code == 2
    assert f"--out {tmp_path / 'a'} is a symlink that cannot be followed" in error
    assert "Traceback" not in error


class CallOnLoad:
    """Pickles as a call of `function(*args)`, as a malicious checkpoint's objects do."""

    def __init__(self, function: object, args: tuple[object, ...]) -> None:
        self.function = function
        self.args = args

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return (self.function, self.args)


def test_export_of_checkpoint_with_python_object_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # os.getcwd replaces a payload such as os.system, and is harmless if it ever ran.
    path = tmp_path / "hostile.pt"
    content = make_checkpoint(make_model()).to_dict()
    torch.save({**content, "model_state": CallOnLoad(os.getcwd, ())}, path)
    out = tmp_path / "bundle"

    code = main(["export", "--checkpoint", str(path), "--out", str(out)])

    error = capsys.readouterr().err
    assert code == 2
    assert f"it refers to the Python object {os.name}.getcwd" in error
    assert "may come from an untrusted source" in error
    assert "Traceback" not in error
    assert not out.exists()
