"""Messages of `hiertcn train` on Ctrl-C and of `hiertcn evaluate` on bad arguments."""

from __future__ import annotations

import dataclasses
import os
import signal
import time

import pytest
import torch

from hiertcn import train as train_module
from hiertcn.checkpoint import load_checkpoint
from hiertcn.cli import main
from tests.hiertcn.test_commands_evaluate import evaluate_argv
from tests.hiertcn.test_commands_train import train_argv, write_log

TINY_FLAGS = (
    "--embedding-dim", "4", "--hidden-size", "4", "--gru-layers", "1", "--tcn-channels", "4",
    "--dilations", "1", "--kernel-size", "2", "--no-progress",
)  # fmt: skip


# A batch size far above the 6 training users of `write_log`. The test that passes it runs under
# `address_space_cap`, because without the cap the queues of such a batch fill the memory.
HUGE_BATCH = 2**58


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


def test_nan_loss_stops_training(tmp_path, capsys, caplog):
    log, out = tmp_path / "log.csv", tmp_path / "run"
    write_log(log)
    # Adam moves each weight by about --lr per step, so the scores overflow in epoch 2.
    with caplog.at_level("INFO", logger="hiertcn.train"):
        assert main(hrnn_argv(log, out, "--epochs", "3", "--lr", "1e30")) == 1
    error = capsys.readouterr().err
    assert "hiertcn: error: the training loss of epoch 2 is nan at batch 1" in error
    assert "lower --lr (now 1e+30) or pass --grad-clip, e.g. --grad-clip 1" in error
    assert f"{out / 'last.pt'} contains epoch 1, the last finished one" in error
    assert "with --resume and the changed --lr or --grad-clip" in error
    assert load_checkpoint(out / "last.pt").epoch == 1
    assert not (out / "metrics.json").exists()
    epochs = [record.getMessage() for record in caplog.records if "loss nan" in record.getMessage()]
    assert epochs == []


def test_nan_loss_names_set_grad_clip(tmp_path, capsys):
    log, out = tmp_path / "log.csv", tmp_path / "run"
    write_log(log)
    assert main(hrnn_argv(log, out, "--lr", "1e30", "--grad-clip", "1e30")) == 1
    assert "or lower --grad-clip (now 1e+30)" in capsys.readouterr().err


def test_batch_wider_than_users_capped_once(tmp_path, capsys, caplog, address_space_cap):
    log, out = tmp_path / "log.csv", tmp_path / "run"
    write_log(log)
    with caplog.at_level("WARNING", logger="hiertcn.train"):
        assert main(hrnn_argv(log, out, "--epochs", "2", "--batch-size", str(HUGE_BATCH))) == 0
    warnings = [
        record.getMessage()
        for record in caplog.records
        if record.levelname == "WARNING" and record.name == "hiertcn.train"
    ]
    assert warnings == [
        f"--batch-size {HUGE_BATCH} is above the 6 users of the training split, and a batch "
        "contains at most one session per user: training with --batch-size 6"
    ]
    assert load_checkpoint(out / "best.pt").train_config["batch_size"] == 6


def test_failed_allocation_names_flags(tmp_path, capsys):
    log, out = tmp_path / "log.csv", tmp_path / "run"
    write_log(log)
    # 2**57 float32 values need 2**59 bytes, above any address space, so the allocation fails
    # at once and touches no memory.
    argv = hrnn_argv(log, out)
    argv[argv.index("--embedding-dim") + 1] = str(2**57)
    assert main(argv) == 1
    error = capsys.readouterr().err
    assert "hiertcn: error: training ran out of memory (RuntimeError: " in error
    assert "lower --batch-size (now 32), or the model sizes --embedding-dim" in error
    assert "Traceback" not in error


def test_failed_allocation_in_experiment_names_flags(tmp_path, capsys):
    log, out = tmp_path / "log.csv", tmp_path / "experiment"
    write_log(log)
    data = ["--format", "csv", "--min-item-count", "1", "--min-user-events", "1"]
    # As above: 2**57 float32 values cannot be allocated, so the failure comes at once.
    argv = ["experiment", "compare", str(log), *data, "--models", "hrnn", "--splits", "cold",
            "--embedding-dim", str(2**57), "--out", str(out), "--no-progress"]  # fmt: skip

    assert main(argv) == 1
    error = capsys.readouterr().err
    assert "hiertcn: error: experiment compare ran out of memory (RuntimeError: " in error
    assert "lower --batch-size (now 32), or the model sizes --embedding-dim" in error
    assert "Traceback" not in error


def terminate_after_epochs(monkeypatch, epochs: int) -> None:
    """Make train_model run `epochs` epochs, then send this process SIGTERM."""
    real_train_model = train_module.train_model

    def terminated(model, dataset, config, out_dir=None, resume=False):
        if epochs:
            short = dataclasses.replace(config, epochs=epochs)
            real_train_model(model, dataset, short, out_dir=out_dir, resume=resume)
        os.kill(os.getpid(), signal.SIGTERM)
        # The handler raises at the next bytecode; the loop only waits for it.
        for _ in range(1000):
            time.sleep(0.01)
        raise AssertionError("SIGTERM did not stop training")

    monkeypatch.setattr(train_module, "train_model", terminated)


def test_sigterm_names_saved_epoch(tmp_path, capsys, monkeypatch):
    log, out = tmp_path / "log.csv", tmp_path / "run"
    write_log(log)
    terminate_after_epochs(monkeypatch, 1)
    handler = signal.getsignal(signal.SIGTERM)
    assert main(hrnn_argv(log, out, "--epochs", "3")) == 143
    error = capsys.readouterr().err
    assert f"hiertcn: interrupted: {out / 'last.pt'} contains epoch 1, the last finished" in error
    assert "rerun the same command with --resume" in error
    assert signal.getsignal(signal.SIGTERM) == handler


def test_sigterm_stops_evaluate(tmp_path, capsys, monkeypatch):
    log, out = tmp_path / "log.csv", tmp_path / "run"
    write_log(log)
    assert main(train_argv(log, out)) == 0
    capsys.readouterr()

    def terminated(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(1000):
            time.sleep(0.01)
        raise AssertionError("SIGTERM did not stop the evaluation")

    monkeypatch.setattr("hiertcn.evaluate.evaluate_model", terminated)
    assert main(evaluate_argv(out / "best.pt", log)) == 143
    assert capsys.readouterr().err.strip().endswith("hiertcn: interrupted")
