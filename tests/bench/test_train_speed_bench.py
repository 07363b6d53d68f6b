"""bench/train_speed.py: flag checks and a one-epoch run on a small synthetic log."""

from __future__ import annotations

import pytest
import torch

from hiertcn.data.synthetic import SyntheticConfig, generate_synthetic_log
from tests.bench.conftest import load_script

train_speed = load_script("train_speed")


@pytest.fixture
def small_log(tmp_path):
    config = SyntheticConfig(num_clusters=4, mean_sessions_per_user=4.0, mean_session_length=3.0)
    path = tmp_path / "log.csv"
    return generate_synthetic_log(num_users=30, num_items=40, seed=5, path=path, config=config)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--users", "0"], "argument --users: invalid value '0': use an integer >= 1"),
        (["--batch-size", "0"], "argument --batch-size: invalid value '0': use an integer >= 1"),
        (["--models", "nosuch"], "argument --models: unknown model nosuch: choose from"),
        (["--models", "gru,gru"], "argument --models: gru given more than once"),
        (["--data", "{tmp}/absent.csv"], "--data {tmp}/absent.csv is not a file"),
    ],
)
def test_bad_flag_exits_2(tmp_path, capsys, small_log, flags, message):
    flags = [flag.format(tmp=tmp_path) for flag in flags]
    data = [] if "--data" in flags else ["--data", str(small_log)]

    with pytest.raises(SystemExit) as exit_info:
        train_speed.parse_args([*data, *flags])

    assert exit_info.value.code == 2
    assert message.format(tmp=tmp_path) in capsys.readouterr().err


def test_missing_default_log_names_data_dir_variable(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HIERTCN_DATA_DIR", str(tmp_path / "nodata"))

    with pytest.raises(SystemExit) as exit_info:
        train_speed.parse_args([])

    error = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert f"HIERTCN_DATA_DIR is '{tmp_path / 'nodata'}'" in error
    assert "set HIERTCN_DATA_DIR to the folder that contains taobao-userbehavior-head/" in error
    assert "or pass --data LOG" in error


def test_missing_default_log_without_variable(tmp_path, capsys, monkeypatch):
    # A clone outside the project folder has no ../shared/data beside it.
    monkeypatch.delenv("HIERTCN_DATA_DIR", raising=False)
    monkeypatch.setattr(train_speed, "__file__", str(tmp_path / "clone" / "bench" / "x.py"))

    with pytest.raises(SystemExit) as exit_info:
        train_speed.parse_args([])

    error = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert f"HIERTCN_DATA_DIR is unset, so the folder is {tmp_path / 'shared' / 'data'}" in error
    assert "set HIERTCN_DATA_DIR" in error


def test_one_thread_run_prints_singular(small_log, capsys):
    flags = ["--data", str(small_log), "--format", "csv", "--item-col", "item"]
    sizes = ["--embedding-dim", "8", "--hidden-size", "8", "--gru-layers", "1"]
    threads = torch.get_num_threads()
    try:
        code = train_speed.main(
            [*flags, "--min-item-count", "1", "--users", "5", "--models", "hiertcn", *sizes,
             "--tcn-channels", "8", "--batch-size", "4", "--threads", "1"]
        )  # fmt: skip
    finally:
        torch.set_num_threads(threads)

    out = capsys.readouterr().out
    assert code == 0
    assert ", 1 torch thread," in out
    assert "| hiertcn |" in out


def test_invalid_model_size_exits_2_with_one_line(small_log, capsys):
    flags = ["--data", str(small_log), "--format", "csv", "--item-col", "item"]

    code = train_speed.main([*flags, "--min-item-count", "1", "--bptt-sessions", "300"])

    error = capsys.readouterr().err
    assert code == 2
    assert error.startswith("train_speed.py: error: ")
    assert "bptt_sessions=300 is invalid" in error
    assert "Traceback" not in error
