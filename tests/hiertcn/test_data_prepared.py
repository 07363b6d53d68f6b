"""Prepared folders: the same dataset as the log, the data flag checks, and the commands."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from hiertcn.checkpoint import load_checkpoint
from hiertcn.cli import build_parser, main
from hiertcn.data.log import EventLog
from hiertcn.data.options import Dataset, data_config_from_args, load_dataset
from hiertcn.data.prepared import MANIFEST, load_prepared
from hiertcn.data.synthetic import SyntheticConfig, generate_synthetic_log
from hiertcn.errors import ConfigError, DataError

NO_FILTERS = ("--min-item-count", "0", "--min-user-events", "0")
ARRAYS = (
    "user_offsets",
    "user_session_offsets",
    "session_offsets",
    "items",
    "timestamps",
    "targets",
)


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


def write_log(tmp_path: Path) -> Path:
    config = SyntheticConfig(num_clusters=4)
    return generate_synthetic_log(40, 40, 1, tmp_path / "log.csv", config)


def write_impressions_log(tmp_path: Path) -> Path:
    lines = ["user,item,timestamp,shown"]
    for user in range(12):
        for event in range(5):
            item = (user + event) % 6
            shown = "|".join(f"i{(item + offset) % 9}" for offset in range(3))
            lines.append(f"u{user},i{item},{1_600_000_000 + 900 * event},{shown}")
    path = tmp_path / "shown.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def data_args(command: list[str]):
    return build_parser().parse_args(command)


def prepare(log: Path, out: Path, *flags: str) -> Path:
    assert main(["data", "prepare", str(log), "--out", str(out), *flags]) == 0
    return out


def assert_same_log(actual: EventLog, expected: EventLog) -> None:
    for name in ARRAYS:
        np.testing.assert_array_equal(getattr(actual, name), getattr(expected, name), err_msg=name)
        assert np.asarray(getattr(actual, name)).dtype == np.asarray(getattr(expected, name)).dtype
    assert list(actual.user_ids) == list(expected.user_ids)
    assert actual.vocab == expected.vocab
    if expected.impressions is None:
        assert actual.impressions is None
        assert actual.impression_offsets is None
    else:
        np.testing.assert_array_equal(actual.impressions, expected.impressions)
        np.testing.assert_array_equal(actual.impression_offsets, expected.impression_offsets)


def assert_same_dataset(actual: Dataset, expected: Dataset) -> None:
    for part in ("log", "train", "valid", "test"):
        assert_same_log(getattr(actual, part), getattr(expected, part))
    assert actual.vocab == expected.vocab
    assert actual.filter_report == expected.filter_report
    assert actual.summary == expected.summary


@pytest.mark.parametrize(
    "flags",
    [
        (*NO_FILTERS,),
        (*NO_FILTERS, "--split", "warm", "--session-gap", "600"),
        ("--min-item-count", "3", "--min-user-events", "4", "--split-seed", "7"),
    ],
)
def test_prepared_dataset_equals_log(tmp_path, flags):
    log = write_log(tmp_path)
    folder = prepare(log, tmp_path / "prepared", *flags)
    from_log = load_dataset(data_args(["data", "stats", str(log), *flags]))
    from_folder = load_dataset(data_args(["train", str(folder), "--model", "gru", "--out", "x"]))
    assert_same_dataset(from_folder, from_log)


def test_prepared_impressions_equal_log(tmp_path):
    log = write_impressions_log(tmp_path)
    flags = ("--impressions-col", "shown", *NO_FILTERS)
    folder = prepare(log, tmp_path / "prepared", *flags)
    from_log = load_dataset(data_args(["data", "stats", str(log), *flags]))
    from_folder = load_prepared(folder)
    assert from_folder.log.impressions is not None
    assert_same_dataset(from_folder, from_log)


def test_prepared_real_log_equals_log(tmp_path, shared_data):
    log = shared_data / "otto-sample" / "train.jsonl"
    flags = ("--min-item-count", "2", "--min-user-events", "3")
    folder = prepare(log, tmp_path / "prepared", *flags)
    from_log = load_dataset(data_args(["data", "stats", str(log), *flags]))
    assert_same_dataset(load_prepared(folder), from_log)


def test_parts_share_one_vocab(tmp_path):
    folder = prepare(write_log(tmp_path), tmp_path / "prepared", *NO_FILTERS)
    dataset = load_prepared(folder)
    for part in (dataset.log, dataset.train, dataset.valid, dataset.test):
        assert part.vocab is dataset.vocab


def test_manifest_records_data_flags(tmp_path):
    log = write_log(tmp_path)
    folder = prepare(log, tmp_path / "prepared", *NO_FILTERS, "--session-gap", "600")
    manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    assert manifest["format_version"] == 1
    assert manifest["data"]["path"] == str(log)
    assert manifest["data"]["session_gap"] == 600
    assert manifest["data"]["filters"]["min_item_count"] == 0
    assert manifest["data"]["reader"]["format"] == "auto"


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (
            ("--session-gap", "900"),
            "--session-gap sets the session gap to 900, but the folder has 600",
        ),
        (("--split", "warm"), "--split sets the split to 'warm', but the folder has 'cold'"),
        (("--min-item-count", "2"), "--min-item-count sets the min item count to 2"),
        (("--format", "csv"), "--format sets the format to 'csv', but the folder has 'auto'"),
        (("--no-header",), "--no-header sets the header to False, but the folder has True"),
        (("--time-unit", "ms"), "--time-unit sets the time unit to 'ms', but the folder has None"),
    ],
)
def test_differing_flag_rejected(tmp_path, capsys, flags, expected):
    folder = prepare(
        write_log(tmp_path), tmp_path / "prepared", *NO_FILTERS, "--session-gap", "600"
    )
    assert main(["data", "stats", str(folder), *flags]) == 2
    error = capsys.readouterr().err
    assert f"hiertcn: error: {folder} is a prepared folder, which fixes the data settings" in error
    assert expected in error
    assert "drop the flag, or run `hiertcn data prepare" in error
    assert "Traceback" not in error


def test_equal_flags_accepted(tmp_path):
    folder = prepare(
        write_log(tmp_path), tmp_path / "prepared", *NO_FILTERS, "--session-gap", "600"
    )
    args = data_args(["data", "stats", str(folder), *NO_FILTERS, "--session-gap", "600"])
    assert load_dataset(args).summary["session_gap"] == 600


def test_flags_left_out_take_recorded_values(tmp_path):
    folder = prepare(
        write_log(tmp_path), tmp_path / "prepared", *NO_FILTERS, "--session-gap", "600"
    )
    dataset = load_dataset(data_args(["data", "stats", str(folder)]))
    assert dataset.summary["session_gap"] == 600
    assert dataset.summary["filters"]["min_item_count"] == 0


def test_default_value_given_still_compared(tmp_path):
    folder = prepare(
        write_log(tmp_path), tmp_path / "prepared", *NO_FILTERS, "--session-gap", "600"
    )
    args = data_args(["data", "stats", str(folder), "--session-gap", "1800"])
    with pytest.raises(ConfigError, match="--session-gap sets the session gap to 1800"):
        load_dataset(args)


def test_folder_of_earlier_version_rejected(tmp_path, capsys):
    log = write_log(tmp_path)
    folder = prepare(log, tmp_path / "prepared", *NO_FILTERS)
    (folder / MANIFEST).unlink()
    assert main(["data", "stats", str(folder)]) == 2
    error = capsys.readouterr().err
    assert f"{folder} has no {MANIFEST}" in error
    assert f"run `hiertcn data prepare {log} --out {folder}` again" in error


def test_other_manifest_version_rejected(tmp_path):
    folder = prepare(write_log(tmp_path), tmp_path / "prepared", *NO_FILTERS)
    manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    manifest["format_version"] = 99
    (folder / MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")
    with pytest.raises(DataError, match="has prepared-folder format 99, and this version reads 1"):
        load_prepared(folder)


def test_log_only_commands_reject_folder(tmp_path):
    folder = prepare(write_log(tmp_path), tmp_path / "prepared", *NO_FILTERS)
    args = data_args(["data", "prepare", str(folder), "--out", str(tmp_path / "again")])
    with pytest.raises(ConfigError, match="this command reads only log files"):
        data_config_from_args(args)


def test_stats_of_folder_equal_stats_of_log(tmp_path, capsys):
    log = write_log(tmp_path)
    folder = prepare(log, tmp_path / "prepared", *NO_FILTERS, "--split", "warm")
    capsys.readouterr()
    assert (
        main(["data", "stats", str(log), *NO_FILTERS, "--split", "warm", "--splits", "--json"]) == 0
    )
    from_log = json.loads(capsys.readouterr().out)
    assert main(["data", "stats", str(folder), "--splits", "--json"]) == 0
    from_folder = json.loads(capsys.readouterr().out)
    assert from_folder == from_log


def test_stats_table_warm_note_from_folder(tmp_path, capsys):
    folder = prepare(write_log(tmp_path), tmp_path / "prepared", *NO_FILTERS, "--split", "warm")
    capsys.readouterr()
    assert main(["data", "stats", str(folder), "--splits"]) == 0
    assert "warm split: the valid and test events include" in capsys.readouterr().out


def evaluate_json(checkpoint: Path, data: Path, out: Path, *flags: str) -> dict:
    argv = ["evaluate", str(checkpoint), str(data), *flags, "--device", "cpu", "--json", str(out)]
    assert main(argv) == 0
    return json.loads(out.read_text(encoding="utf-8"))


def test_train_on_folder_evaluates_same_on_log(tmp_path):
    log = write_log(tmp_path)
    folder = prepare(log, tmp_path / "prepared", *NO_FILTERS)
    run = tmp_path / "run"
    model = ["--model", "gru", "--hidden-size", "8", "--embedding-dim", "8"]
    train = ["--epochs", "1", "--max-batches", "2", "--batch-size", "4", "--no-progress"]
    argv = ["train", str(folder), *model, *train, "--device", "cpu", "--out", str(run)]
    assert main(argv) == 0

    checkpoint = load_checkpoint(run / "best.pt")
    from_log = load_dataset(data_args(["data", "stats", str(log), *NO_FILTERS]))
    assert checkpoint.data_summary == from_log.summary

    on_folder = evaluate_json(run / "best.pt", folder, tmp_path / "folder.json")
    on_log = evaluate_json(run / "best.pt", log, tmp_path / "log.json", *NO_FILTERS)
    assert on_folder["data"] == on_log["data"]
    for row_folder, row_log in zip(on_folder["results"], on_log["results"], strict=True):
        assert row_folder["mrr"] == row_log["mrr"]
        assert row_folder["events"] == row_log["events"]
