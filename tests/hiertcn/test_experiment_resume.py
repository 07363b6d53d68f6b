"""`hiertcn experiment` after Ctrl-C or SIGTERM: the message and `--resume`."""

from __future__ import annotations

import json

import pytest
import torch

from hiertcn.cli import main
from hiertcn.errors import Terminated
from hiertcn.experiments import runner
from tests.hiertcn.test_commands_messages import TINY_FLAGS
from tests.hiertcn.test_commands_train import write_log

# The unpatched function, because a test patches it more than once.
REAL_RUN_VARIANT = runner.run_variant
DATA_FLAGS = ("--format", "csv", "--min-item-count", "1", "--min-user-events", "1")


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


def compare_argv(log, out, *extra: str) -> list[str]:
    models = ("--models", "gru,most_popular", "--splits", "cold", "--epochs", "1")
    flags = (*DATA_FLAGS, *models, *TINY_FLAGS)
    return ["experiment", "compare", str(log), *flags, "--out", str(out), *extra]


def count_trained(monkeypatch, stop_after: int | None = None, signal=KeyboardInterrupt):
    """Count the variants that `run_variant` trains; raise `signal` once `stop_after` finished."""
    trained: list[str] = []

    def counted(variant, dataset, split, out_dir):
        if stop_after is not None and len(trained) == stop_after:
            raise signal
        trained.append(variant.label)
        return REAL_RUN_VARIANT(variant, dataset, split, out_dir)

    monkeypatch.setattr(runner, "run_variant", counted)
    return trained


@pytest.mark.parametrize(("signal", "code"), [(KeyboardInterrupt, 130), (Terminated, 143)])
def test_interrupt_names_finished_variants(tmp_path, capsys, monkeypatch, signal, code):
    log, out = tmp_path / "log.csv", tmp_path / "exp"
    write_log(log)
    count_trained(monkeypatch, stop_after=1, signal=signal)
    assert main(compare_argv(log, out)) == code
    error = capsys.readouterr().err
    assert f"hiertcn: interrupted: 1 finished variant in {out / 'runs'} (cold-gru)" in error
    assert "rerun the same command with --resume" in error


def test_interrupt_before_any_variant(tmp_path, capsys, monkeypatch):
    log, out = tmp_path / "log.csv", tmp_path / "exp"
    write_log(log)
    count_trained(monkeypatch, stop_after=0)
    assert main(compare_argv(log, out)) == 130
    assert "no variant finished" in capsys.readouterr().err


def test_resume_keeps_finished_variant(tmp_path, capsys, monkeypatch):
    log, out = tmp_path / "log.csv", tmp_path / "exp"
    write_log(log)
    count_trained(monkeypatch, stop_after=1)
    assert main(compare_argv(log, out)) == 130
    capsys.readouterr()

    assert main(compare_argv(log, out)) == 2
    assert "pass --resume to keep its finished variants" in capsys.readouterr().err

    trained = count_trained(monkeypatch)
    assert main(compare_argv(log, out, "--resume")) == 0
    assert trained == ["most_popular"]
    rows = json.loads((out / "compare.json").read_text(encoding="utf-8"))["rows"]
    assert [row["model"] for row in rows] == ["gru", "most_popular"]
    assert rows[0]["best_epoch"] == 1
    assert rows[0]["epoch_seconds"] > 0


def test_resume_matches_uninterrupted_run(tmp_path, monkeypatch):
    log = tmp_path / "log.csv"
    write_log(log)
    assert main(compare_argv(log, tmp_path / "whole")) == 0
    count_trained(monkeypatch, stop_after=1)
    assert main(compare_argv(log, tmp_path / "parts")) == 130
    count_trained(monkeypatch)
    assert main(compare_argv(log, tmp_path / "parts", "--resume")) == 0
    whole = json.loads((tmp_path / "whole" / "compare.json").read_text(encoding="utf-8"))
    parts = json.loads((tmp_path / "parts" / "compare.json").read_text(encoding="utf-8"))
    for whole_row, parts_row in zip(whole["rows"], parts["rows"], strict=True):
        assert whole_row["mrr"] == pytest.approx(parts_row["mrr"])
        assert whole_row["recall@10"] == pytest.approx(parts_row["recall@10"])


def test_resume_with_other_settings_rejected(tmp_path, capsys, monkeypatch):
    log, out = tmp_path / "log.csv", tmp_path / "exp"
    write_log(log)
    count_trained(monkeypatch, stop_after=1)
    assert main(compare_argv(log, out)) == 130
    capsys.readouterr()
    trained = count_trained(monkeypatch)
    assert main(compare_argv(log, out, "--resume", "--lr", "0.01")) == 2
    error = capsys.readouterr().err
    assert "was trained with other training settings" in error
    assert trained == []


def test_resume_and_force_exclusive(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(compare_argv(tmp_path / "log.csv", tmp_path / "exp", "--resume", "--force"))
    assert exit_info.value.code == 2
    assert "argument --force: not allowed with argument --resume" in capsys.readouterr().err
