"""Messages of `hiertcn train` on Ctrl-C and of `hiertcn evaluate` on bad arguments."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from hiertcn import train as train_module
from hiertcn.cli import main
from tests.hiertcn.test_commands_evaluate import evaluate_argv
from tests.hiertcn.test_commands_train import train_argv, write_log

TINY_FLAGS = (
    "--embedding-dim", "4", "--hidden-size", "4", "--gru-layers", "1", "--tcn-channels", "4",
    "--dilations", "1", "--kernel-size", "2", "--no-progress",
)  # fmt: skip


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


def hrnn_argv(log, out, *extra: str) -> list[str]:
    argv = train_argv(log, out, *TINY_FLAGS, *extra)
    argv[argv.index("most_popular")] = "hrnn"
    return argv


def interrupt_after_epochs(monkeypatch, epochs: int) -> None:
    """Make train_model run `epochs` epochs, then raise KeyboardInterrupt as Ctrl-C does."""
    real_train_model = train_module.train_model

    def interrupted(model, dataset, config, out_dir=None, resume=False):
        if epochs:
            short = dataclasses.replace(config, epochs=epochs)
            real_train_model(model, dataset, short, out_dir=out_dir, resume=resume)
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "train_model", interrupted)


def test_interrupt_names_saved_epoch(tmp_path, capsys, monkeypatch):
    log, out = tmp_path / "log.csv", tmp_path / "run"
    write_log(log)
    interrupt_after_epochs(monkeypatch, 1)
    assert main(hrnn_argv(log, out, "--epochs", "3")) == 130
    error = capsys.readouterr().err
    assert f"hiertcn: interrupted: {out / 'last.pt'} contains epoch 1, the last finished" in error
    assert "rerun the same command with --resume" in error
    assert "in place of --force" not in error


def test_interrupt_after_force_suggests_resume(tmp_path, capsys, monkeypatch):
    log, out = tmp_path / "log.csv", tmp_path / "run"
    write_log(log)
    interrupt_after_epochs(monkeypatch, 1)
    assert main(hrnn_argv(log, out, "--epochs", "3", "--force")) == 130
    assert "with --resume in place of --force" in capsys.readouterr().err


def test_interrupt_in_first_epoch_says_nothing_saved(tmp_path, capsys, monkeypatch):
    log, out = tmp_path / "log.csv", tmp_path / "run"
    write_log(log)
    interrupt_after_epochs(monkeypatch, 0)
    assert main(hrnn_argv(log, out)) == 130
    error = capsys.readouterr().err
    assert f"hiertcn: interrupted: no epoch finished, so {out} contains no checkpoint" in error


def test_evaluate_without_checkpoint_names_checkpoint(tmp_path, capsys):
    log = tmp_path / "log.csv"
    argv = evaluate_argv(log, log)
    argv.remove(str(log))
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert f"hiertcn: error: no checkpoint given, only the log {log}" in error
    assert "required: FILE" not in error


def test_evaluate_ranks_without_json_rejected(tmp_path, capsys):
    assert main(evaluate_argv(tmp_path / "best.pt", tmp_path / "log.csv", "--ranks")) == 2
    assert "pass --json FILE" in capsys.readouterr().err


def test_evaluate_folder_checkpoint_named_folder(tmp_path, capsys):
    assert main(evaluate_argv(tmp_path, tmp_path / "log.csv")) == 2
    assert f"checkpoint {tmp_path} is a folder" in capsys.readouterr().err


def test_evaluate_truncated_checkpoint_named_truncated(tmp_path, capsys):
    log, out = tmp_path / "log.csv", tmp_path / "run"
    write_log(log)
    assert main(hrnn_argv(log, out, "--epochs", "1")) == 0
    best = out / "best.pt"
    content = best.read_bytes()
    best.write_bytes(content[: len(content) // 2])
    capsys.readouterr()
    assert main(evaluate_argv(best, log)) == 2
    error = capsys.readouterr().err
    assert f"checkpoint {best} is truncated or damaged" in error
    assert "Errno" not in error
