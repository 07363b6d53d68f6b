"""Bad input on the `hiertcn` command line: one line with the fix and exit 2, no traceback."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import torch

from hiertcn.cli import main
from tests.hiertcn.test_commands_evaluate import evaluate_argv
from tests.hiertcn.test_commands_train import train_argv, write_log

DATA_FLAGS = ("--format", "csv", "--min-item-count", "1", "--min-user-events", "1")


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


def commands_reading_log(log: Path, tmp_path: Path) -> dict[str, list[str]]:
    """Return an argv for each command that reads the log `log`."""
    checkpoint = tmp_path / "trained" / "best.pt"
    prepared, events, experiment = tmp_path / "p", tmp_path / "e.jsonl", tmp_path / "x"
    return {
        "data stats": ["data", "stats", str(log), *DATA_FLAGS],
        "data prepare": ["data", "prepare", str(log), "--out", str(prepared), *DATA_FLAGS],
        "data events": ["data", "events", str(log), "--out", str(events), *DATA_FLAGS],
        "train": train_argv(log, tmp_path / "run"),
        "evaluate": evaluate_argv(checkpoint, log),
        "experiment": ["experiment", "compare", str(log), "--out", str(experiment), *DATA_FLAGS],
    }


@pytest.fixture
def trained(tmp_path):
    log = tmp_path / "good.csv"
    write_log(log)
    assert main(train_argv(log, tmp_path / "trained")) == 0


def deny_reading(monkeypatch, denied: Path) -> None:
    """Make `Path.open` raise PermissionError for `denied`, as for a file mode 000 as non-root."""
    real_open = Path.open

    def open_or_deny(self, *args, **kwargs):
        if self.absolute() == denied.absolute():
            raise PermissionError(13, "Permission denied", str(self))
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", open_or_deny)


@pytest.mark.parametrize(
    "command", ["data stats", "data prepare", "data events", "train", "evaluate", "experiment"]
)
def test_unreadable_log_named(tmp_path, capsys, monkeypatch, trained, command):
    log = tmp_path / "log.csv"
    write_log(log)
    argv = commands_reading_log(log, tmp_path)[command]
    capsys.readouterr()
    deny_reading(monkeypatch, log)
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert f"hiertcn: error: log file {log} cannot be read (Permission denied)" in error
    assert "Traceback" not in error


@pytest.mark.parametrize("command", ["data stats", "train", "evaluate", "experiment"])
def test_fifo_log_rejected(tmp_path, capsys, trained, command):
    log = tmp_path / "log.fifo"
    os.mkfifo(log)
    argv = commands_reading_log(log, tmp_path)[command]
    capsys.readouterr()
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert f"hiertcn: error: log file {log} is not a regular file" in error


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc")
def test_out_that_cannot_be_created_rejected_before_data(tmp_path, capsys):
    out = Path("/proc/hiertcn-no-such-folder/run")
    assert main(train_argv(tmp_path / "absent.csv", out)) == 2
    error = capsys.readouterr().err
    assert f"--out {out} cannot be created or written" in error
    assert "absent.csv" not in error


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc")
def test_checkpoint_write_error_worded_by_errno(tmp_path, monkeypatch):
    from hiertcn import checkpoint as checkpoint_module
    from hiertcn.errors import HierTCNError

    checkpoint = checkpoint_module.Checkpoint({}, {}, {}, [], {}, {}, 0)
    with pytest.raises(HierTCNError) as missing:
        checkpoint_module.save_checkpoint("/proc/hiertcn-no-such-folder/last.pt", checkpoint)
    assert "pass an --out folder that you can write" in str(missing.value)
    assert "free disk space" not in str(missing.value)

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(checkpoint_module.torch, "save", full_disk)
    with pytest.raises(HierTCNError) as full:
        checkpoint_module.save_checkpoint(tmp_path / "last.pt", checkpoint)
    assert "(No space left on device): free disk space" in str(full.value)


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["train", "log.csv", "--model", "gru", "--out", "run", "--seed", "-1"], "--seed"),
        (["data", "stats", "log.csv", "--split-seed", "-1"], "--split-seed"),
        (["data", "synthetic", "out.csv", "--seed", "-1"], "--seed"),
        (["train", "log.csv", "--model", "gru", "--out", "run", "--seed", str(2**63)], "--seed"),
    ],
)
def test_seed_out_of_range_rejected(capsys, argv, flag):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert f"error: argument {flag}: " in error
    assert "is invalid: use an integer from 0 to" in error


def test_unknown_flag_shows_subcommand_usage(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "log.csv", "--model", "gru", "--out", "run", "--bundle", "x"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith("usage: hiertcn train ")
    assert "hiertcn train: error: unrecognized arguments: --bundle x" in error


def test_checkpoint_as_only_argument_names_missing_log(tmp_path, capsys, trained):
    checkpoint = tmp_path / "trained" / "best.pt"
    assert main(["evaluate", str(checkpoint)]) == 2
    error = capsys.readouterr().err
    assert f"the log is missing: {checkpoint} is a checkpoint" in error
    assert "no checkpoint given" not in error


def test_wrong_format_names_detected_format(tmp_path, capsys):
    log = tmp_path / "ratings.csv"
    log.write_text("userId,movieId,rating,timestamp\n1,2,3.0,964982703\n", encoding="utf-8")
    assert main(["data", "stats", str(log), "--format", "taobao"]) == 2
    error = capsys.readouterr().err
    assert "looks like a movielens file, not taobao: pass --format movielens" in error


def test_synthetic_users_above_maximum_rejected(tmp_path, capsys):
    out = tmp_path / "log.csv"
    assert main(["data", "synthetic", str(out), "--users", "100000000"]) == 2
    assert "--users 100000000 is invalid: use 1 to 1000000" in capsys.readouterr().err
    assert not out.exists()


def test_synthetic_help_names_item_minimum(capsys):
    with pytest.raises(SystemExit):
        main(["data", "synthetic", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "number of items, at least 20" in help_text


def test_synthetic_too_few_items_singular_user(tmp_path, capsys):
    assert (
        main(["data", "synthetic", str(tmp_path / "log.csv"), "--users", "1", "--items", "5"]) == 2
    )
    assert "got 1 user and 5 items" in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--min-item-count", "--min-user-events"])
def test_negative_filter_minimum_named(tmp_path, capsys, flag):
    log = tmp_path / "log.csv"
    write_log(log)
    assert main(["data", "stats", str(log), "--format", "csv", flag, "-1"]) == 2
    assert f"hiertcn: error: {flag} -1 is invalid: use an integer >= 0" in capsys.readouterr().err
