"""bench/train_speed.py: flag checks and a one-epoch run on a small synthetic log."""

from __future__ import annotations

import pytest
import torch

from bench import arguments
from hiertcn.data.synthetic import SyntheticConfig, generate_synthetic_log
from hiertcn.models import ModelConfig
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
        (["--users", "0"], "argument --users: '0' is invalid: use an integer >= 1"),
        (["--batch-size", "0"], "argument --batch-size: '0' is invalid: use an integer >= 1"),
        (["--seed", "-1"], "argument --seed: -1 is invalid: use an integer from 0 to "),
        (["--seed", "1.5"], "argument --seed: '1.5' is invalid: use an integer"),
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
    monkeypatch.setattr(arguments, "__file__", str(tmp_path / "clone" / "bench" / "x.py"))

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


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--bptt-sessions", "300"], "--bptt-sessions 300 is invalid: use at most 256"),
        (["--embedding-dim", "0"], "--embedding-dim 0 is invalid: use a positive integer"),
        (["--kernel-size", "-1"], "--kernel-size -1 is invalid: use a positive integer"),
        (["--dilations", "1,0"], "--dilations '1,0' is invalid: give one positive integer"),
    ],
)
def test_invalid_size_fails_before_log_read(tmp_path, capsys, flags, message):
    # The log lacks the columns of the csv format, so reading it would fail with another error.
    # The size check must come first.
    log = tmp_path / "unreadable.csv"
    log.write_text("no,columns,here\n1,2,3\n")

    code = train_speed.main(["--data", str(log), "--format", "csv", *flags])

    error = capsys.readouterr().err
    assert code == 2
    assert error.startswith("train_speed.py: error: ")
    assert message in error
    assert error.count("\n") == 1
    assert "Traceback" not in error


def test_model_size_defaults_match_model_config(small_log):
    args = train_speed.parse_args(["--data", str(small_log)])

    for name in ("hiertcn", "gru", "tcn"):
        assert train_speed.model_config(name, args) == ModelConfig(name=name)


def test_kernel_and_dilations_reach_model_config(small_log):
    flags = ["--data", str(small_log), "--kernel-size", "3", "--dilations", "1,2"]

    config = train_speed.model_config("tcn", train_speed.parse_args(flags))

    assert config.kernel_size == 3
    assert config.dilations == (1, 2)


@pytest.mark.parametrize(
    ("fmt", "item_col"), [("taobao", "category"), ("movielens", None), ("csv", None)]
)
def test_item_column_default_depends_on_format(small_log, fmt, item_col):
    args = train_speed.parse_args(["--data", str(small_log), "--format", fmt])

    assert args.item_col == item_col


def test_run_without_item_column_reads_format_default(small_log, capsys):
    sizes = ["--embedding-dim", "8", "--hidden-size", "8", "--gru-layers", "1"]
    threads = torch.get_num_threads()
    try:
        code = train_speed.main(
            ["--data", str(small_log), "--format", "csv", "--min-item-count", "1",
             "--users", "5", "--models", "gru", *sizes, "--batch-size", "4", "--threads", "1"]
        )  # fmt: skip
    finally:
        torch.set_num_threads(threads)

    assert code == 0
    assert "item column of the format," in capsys.readouterr().out
