"""Output paths of `hiertcn train` and `evaluate`: rejected before any data is read."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys

import pytest
import torch

from hiertcn.cli import main
from tests.hiertcn.test_commands_evaluate import evaluate_argv
from tests.hiertcn.test_commands_train import train_argv, write_log

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


@pytest.fixture
def prepared(tmp_path, capsys):
    """A prepared folder of the small log, and the log."""
    log = tmp_path / "log.csv"
    write_log(log)
    folder = tmp_path / "prepared"
    data = [str(log), "--format", "csv", "--min-item-count", "1", "--min-user-events", "1"]
    assert main(["data", "prepare", *data, "--out", str(folder)]) == 0
    capsys.readouterr()
    return folder


@pytest.fixture
def run_dir(tmp_path):
    log = tmp_path / "log.csv"
    write_log(log)
    out = tmp_path / "run"
    assert main(train_argv(log, out)) == 0
    return out


def folder_files(folder) -> dict[str, bytes]:
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


@pytest.mark.parametrize("name", ["prepared.json", "summary.json", "train/m.json", "new.json"])
def test_evaluate_json_in_prepared_input_rejected(tmp_path, capsys, prepared, run_dir, name):
    before = folder_files(prepared)
    target = prepared / name
    argv = ["evaluate", str(run_dir / "best.pt"), str(prepared), "--json", str(target)]
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert f"--json {target} is inside the prepared folder {prepared}" in error
    assert "pass a path outside it" in error
    assert folder_files(prepared) == before


def test_evaluate_json_in_other_prepared_rejected(tmp_path, capsys, prepared, run_dir):
    target = prepared / "prepared.json"
    argv = evaluate_argv(run_dir / "best.pt", tmp_path / "log.csv", "--json", str(target))
    assert main(argv) == 2
    assert f"--json {target} is inside the prepared folder {prepared}" in capsys.readouterr().err


def test_evaluate_json_on_checkpoint_rejected(tmp_path, capsys, prepared, run_dir):
    checkpoint = run_dir / "best.pt"
    before = checkpoint.read_bytes()
    argv = ["evaluate", str(checkpoint), str(prepared), "--json", str(checkpoint)]
    assert main(argv) == 2
    assert f"--json {checkpoint} is one of the input files" in capsys.readouterr().err
    assert checkpoint.read_bytes() == before


def test_evaluate_json_outside_prepared_written(tmp_path, capsys, prepared, run_dir):
    target = tmp_path / "metrics.json"
    argv = ["evaluate", str(run_dir / "best.pt"), str(prepared), "--json", str(target)]
    assert main([*argv, "--device", "cpu"]) == 0
    assert target.is_file()


def test_train_out_equal_to_prepared_input_rejected(tmp_path, capsys, prepared):
    before = folder_files(prepared)
    argv = ["train", str(prepared), "--model", "most_popular", "--out", str(prepared)]
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert f"--out {prepared} is the input {prepared}: pass a new folder" in error
    assert folder_files(prepared) == before


@pytest.mark.parametrize("name", ["run", "train"])
def test_train_out_in_prepared_rejected(tmp_path, capsys, prepared, name):
    before = folder_files(prepared)
    out = prepared / name
    argv = ["train", str(prepared), "--model", "most_popular", "--out", str(out)]
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert f"--out {out} is inside the prepared folder {prepared}" in error
    assert "pass a folder outside it" in error
    assert folder_files(prepared) == before


def test_train_out_in_other_prepared_rejected(tmp_path, capsys, prepared):
    out = prepared / "run"
    assert main(train_argv(tmp_path / "log.csv", out)) == 2
    assert f"--out {out} is inside the prepared folder {prepared}" in capsys.readouterr().err
    assert not out.exists()


def test_train_out_equal_to_log_rejected(tmp_path, capsys):
    log = tmp_path / "log.csv"
    write_log(log)
    assert main(train_argv(log, log)) == 2
    assert f"--out {log} is the input {log}: pass a new folder" in capsys.readouterr().err


def test_train_log_among_run_files_rejected(tmp_path, capsys):
    # --force deletes metrics.json of --out, which here is the log.
    log = tmp_path / "metrics.json"
    log.write_text('{"user": "u1", "item": "i1", "ts": 1}\n', encoding="utf-8")
    argv = ["train", str(log), "--model", "most_popular", "--out", str(tmp_path), "--force"]
    assert main(argv) == 2
    assert f"would hold the run file metrics.json, but that is the input {log}" in (
        capsys.readouterr().err
    )
    assert log.is_file()


def test_train_out_below_file_rejected_before_data(tmp_path, capsys):
    blocker = tmp_path / "blocker"
    blocker.write_text("", encoding="utf-8")
    out = blocker / "sub" / "run"
    assert main(train_argv(tmp_path / "absent.csv", out)) == 2
    error = capsys.readouterr().err
    assert f"--out {out} is invalid because {blocker} is a file" in error


def read_only_mount_available() -> bool:
    """Return whether this process may bind-mount a folder read-only in a mount namespace."""
    if shutil.which("unshare") is None or os.geteuid() != 0:
        return False
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True, check=False, timeout=30)
    return probe.returncode == 0


@pytest.mark.skipif(
    not read_only_mount_available(), reason="needs root and unshare for a read-only bind mount"
)
def test_train_out_on_read_only_mount_rejected(tmp_path):
    # Root may write to any folder whose mode denies writing, so only a read-only file system
    # shows the failure. The mount exists only in the mount namespace of the command.
    read_only = tmp_path / "ro"
    read_only.mkdir()
    out = read_only / "run"

    # The log does not exist, so a check of --out that ran after reading would report the log.
    train = train_argv(tmp_path / "absent.csv", out)
    command = " && ".join(
        [
            shlex.join(["mount", "--bind", str(read_only), str(read_only)]),
            shlex.join(["mount", "-o", "remount,bind,ro", str(read_only)]),
            shlex.join([sys.executable, "-m", "hiertcn.cli", *train]),
        ]
    )
    result = subprocess.run(
        ["unshare", "-m", "sh", "-c", command],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO_ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert f"--out {out} cannot be created or written because {read_only} is not writable" in (
        result.stderr
    )
    assert "Traceback" not in result.stderr
