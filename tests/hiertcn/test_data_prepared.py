"""Prepared folders: the same dataset as the log, the data flag checks, and the commands."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from hiertcn.checkpoint import load_checkpoint
from hiertcn.cli import build_parser, main
from hiertcn.data.log import EventLog
from hiertcn.data.options import Dataset, data_config_from_args, load_dataset
from hiertcn.data.prepared import MANIFEST, load_prepared
from hiertcn.data.prepared import _digest as prepared_digest
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
    assert manifest["format_version"] == 2
    assert manifest["data"]["path"] == str(log)
    assert manifest["data"]["session_gap"] == 600
    assert manifest["data"]["filters"]["min_item_count"] == 0
    assert manifest["data"]["reader"]["format"] == "csv"
    assert manifest["data"]["reader"]["time_unit"] == "s"
    assert manifest["warnings"] == []


def test_summary_records_resolved_format_and_unit(tmp_path):
    log = write_log(tmp_path)
    folder = prepare(log, tmp_path / "prepared", *NO_FILTERS)
    summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
    assert summary["format"] == "csv"
    assert summary["reader"]["time_unit"] == "s"
    from_log = load_dataset(data_args(["data", "stats", str(log), *NO_FILTERS]))
    assert from_log.summary["format"] == "csv"
    assert from_log.summary["reader"]["time_unit"] == "s"


def test_otto_summary_records_milliseconds(tmp_path, shared_data):
    log = shared_data / "otto-sample" / "train.jsonl"
    folder = prepare(log, tmp_path / "prepared", "--min-item-count", "2", "--min-user-events", "3")
    summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
    assert summary["format"] == "otto"
    assert summary["reader"]["time_unit"] == "ms"


def test_folder_with_unresolved_summary_loads(tmp_path):
    # A folder of format 2 written before the summary recorded the resolved format and unit.
    folder = prepare(write_log(tmp_path), tmp_path / "prepared", *NO_FILTERS)
    summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
    summary["format"] = "auto"
    summary["reader"]["time_unit"] = None
    for key in ("users_before", "users_after", "items_before", "items_after"):
        del summary["filter_report"][key]
    (folder / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    manifest["digest"] = prepared_digest(manifest["data"], manifest["warnings"], summary)
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    dataset = load_prepared(folder)
    assert dataset.summary["format"] == "auto"
    assert dataset.filter_report.users_before is None
    assert dataset.log.num_events > 0


def test_manifest_records_absolute_log_path(tmp_path, monkeypatch):
    write_log(tmp_path)
    monkeypatch.chdir(tmp_path)
    folder = prepare(Path("log.csv"), Path("prepared"), *NO_FILTERS)
    manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    assert manifest["data"]["path"] == str(tmp_path / "log.csv")


def test_otto_folder_records_milliseconds(tmp_path, shared_data):
    log = shared_data / "otto-sample" / "train.jsonl"
    folder = prepare(log, tmp_path / "prepared", "--min-item-count", "2", "--min-user-events", "3")
    manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    assert manifest["data"]["reader"]["format"] == "otto"
    assert manifest["data"]["reader"]["time_unit"] == "ms"
    args = data_args(["data", "stats", str(folder), "--format", "otto", "--time-unit", "ms"])
    assert load_dataset(args).log.num_events > 0


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (("--session-gap", "900"), "--session-gap 900 differs from the folder's --session-gap 600"),
        (("--split", "warm"), "--split warm differs from the folder's --split cold"),
        (
            ("--min-item-count", "2"),
            "--min-item-count 2 differs from the folder's --min-item-count 0",
        ),
        (("--format", "jsonl"), "--format jsonl differs from the folder's --format csv"),
        (("--no-header",), "--no-header differs from the folder, which reads a header row"),
        (("--time-unit", "ms"), "--time-unit ms differs from the folder's --time-unit s"),
        (("--user-col", "0"), "--user-col 0 differs from the folder, which has no --user-col"),
        (
            ("--event-types", "pv,cart"),
            "--event-types pv,cart differs from the folder, which has no --event-types",
        ),
        (
            ("--max-user-events", "0"),
            "--max-user-events 0 differs from the folder's --max-user-events 1000",
        ),
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
    assert "None" not in error
    assert "Traceback" not in error


def test_differing_flag_error_gives_command(tmp_path, capsys, monkeypatch):
    log = write_log(tmp_path)
    folder = prepare(log, tmp_path / "prepared", *NO_FILTERS, "--session-gap", "600")
    monkeypatch.chdir(tmp_path)
    assert main(["data", "stats", "prepared", "--session-gap", "900"]) == 2
    error = capsys.readouterr().err
    command = (
        f"hiertcn data prepare {log} --format csv --session-gap 900 --min-item-count 0 "
        "--min-user-events 0 --out prepared --force"
    )
    assert f"run `{command}` to prepare the folder again with it" in error
    assert folder.is_dir()


@pytest.mark.parametrize(
    "flags",
    [
        ("--format", "csv"),
        ("--format", "auto"),
        ("--time-unit", "s"),
        ("--session-gap", "600", *NO_FILTERS),
    ],
)
def test_flags_equal_to_resolved_values_accepted(tmp_path, flags):
    folder = prepare(
        write_log(tmp_path), tmp_path / "prepared", *NO_FILTERS, "--session-gap", "600"
    )
    args = data_args(["data", "stats", str(folder), *flags])
    assert load_dataset(args).summary["session_gap"] == 600


def test_movielens_folder_accepts_format_and_unit(tmp_path, capsys):
    log = tmp_path / "ratings.csv"
    rows = [
        f"{user},{item},4.0,{1_600_000_000 + 60 * item}" for user in range(8) for item in range(6)
    ]
    log.write_text("userId,movieId,rating,timestamp\n" + "\n".join(rows) + "\n", encoding="utf-8")
    folder = prepare(log, tmp_path / "prepared", *NO_FILTERS)
    capsys.readouterr()
    argv = ["data", "stats", str(folder), "--format", "movielens", "--time-unit", "s"]
    assert main(argv) == 0
    assert main(["data", "stats", str(folder), "--time-unit", "ms"]) == 2
    assert "--time-unit ms differs from the folder's --time-unit s" in capsys.readouterr().err


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
    with pytest.raises(ConfigError, match="--session-gap 1800 differs from the folder's"):
        load_dataset(args)


def test_folder_of_earlier_version_rejected(tmp_path, capsys):
    log = write_log(tmp_path)
    folder = prepare(log, tmp_path / "prepared", *NO_FILTERS)
    (folder / MANIFEST).unlink()
    assert main(["data", "stats", str(folder)]) == 2
    error = capsys.readouterr().err
    assert f"{folder} has no {MANIFEST}" in error
    assert f"run `hiertcn data prepare {log} --out {folder} --force` again" in error


def test_other_manifest_version_rejected(tmp_path):
    log = write_log(tmp_path)
    folder = prepare(log, tmp_path / "prepared", *NO_FILTERS)
    manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    manifest["format_version"] = 99
    (folder / MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")
    with pytest.raises(DataError, match="has prepared-folder format 99, and this version reads 2"):
        load_prepared(folder)
    command = (
        f"hiertcn data prepare {log} --format csv --min-item-count 0 --min-user-events 0 "
        f"--out {folder} --force"
    )
    with pytest.raises(DataError, match=re.escape(f"run `{command}` to write it again")):
        load_prepared(folder)


def test_version_one_folder_rejected(tmp_path):
    folder = prepare(write_log(tmp_path), tmp_path / "prepared", *NO_FILTERS)
    manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    manifest["format_version"] = 1
    manifest["data"]["reader"].update(format="auto", time_unit=None)
    del manifest["digest"], manifest["warnings"]
    (folder / MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")
    with pytest.raises(DataError, match="has prepared-folder format 1, and this version reads 2"):
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


def truncate(path: Path, size: int) -> None:
    with path.open("r+b") as file:
        file.truncate(size)


def drop_split(folder: Path) -> None:
    manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    del manifest["data"]["split"]
    (folder / MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")


# Each damage, and the file that the error must name, relative to the folder.
DAMAGES = [
    (lambda folder: truncate(folder / "train" / "items.npy", 100), "train/items.npy"),
    (lambda folder: truncate(folder / "test" / "timestamps.npy", 140), "test/timestamps.npy"),
    (lambda folder: (folder / "all" / "items.npy").write_text("garbage\n"), "all/items.npy"),
    (
        lambda folder: np.save(folder / "all" / "targets.npy", np.array(["x"] * 3, dtype=object)),
        "all/targets.npy",
    ),
    (lambda folder: np.save(folder / "valid" / "items.npy", np.zeros(3, np.int32)), "valid/items"),
    (lambda folder: (folder / "valid" / "meta.json").unlink(), "valid/meta.json"),
    (lambda folder: (folder / "all" / "vocab.json").write_text("[1, 2]"), "all/meta.json"),
    (lambda folder: (folder / "test" / "user_ids.json").write_text("{"), "test"),
    (lambda folder: (folder / "summary.json").unlink(), "summary.json"),
    (lambda folder: (folder / "summary.json").write_text("[]"), "summary.json"),
    (drop_split, "prepared.json lacks the entry 'split'"),
]


@pytest.mark.parametrize(("damage", "named"), DAMAGES)
def test_damaged_folder_plain_error(tmp_path, capsys, damage, named):
    log = write_log(tmp_path)
    folder = prepare(log, tmp_path / "prepared", *NO_FILTERS)
    damage(folder)
    capsys.readouterr()
    assert main(["data", "stats", str(folder), "--splits"]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"hiertcn: error: {folder}")
    assert named in error
    assert "Traceback" not in error
    assert "allow_pickle" not in error
    assert f"--out {folder} --force" in error
    assert str(log) in error


def test_damaged_folder_train_exit_2(tmp_path, capsys):
    folder = prepare(write_log(tmp_path), tmp_path / "prepared", *NO_FILTERS)
    truncate(folder / "test" / "timestamps.npy", 140)
    argv = ["train", str(folder), "--model", "gru", "--epochs", "1", "--max-batches", "1"]
    assert main([*argv, "--device", "cpu", "--out", str(tmp_path / "run")]) == 2
    error = capsys.readouterr().err
    assert f"{folder / 'test' / 'timestamps.npy'} is 140 bytes" in error
    assert "Traceback" not in error


def test_impressions_length_checked(tmp_path):
    log = write_impressions_log(tmp_path)
    folder = prepare(log, tmp_path / "prepared", "--impressions-col", "shown", *NO_FILTERS)
    impressions = np.load(folder / "train" / "impressions.npy")
    np.save(folder / "train" / "impressions.npy", impressions[:-1])
    with pytest.raises(DataError, match=r"impressions\.npy has \d+ values, but impression_offsets"):
        load_prepared(folder)


@pytest.mark.parametrize(
    ("file", "key", "value"),
    [
        (MANIFEST, "session_gap", 600),
        (MANIFEST, "path", "/elsewhere/log.csv"),
        ("summary.json", "session_gap", 600),
    ],
)
def test_edited_folder_rejected(tmp_path, capsys, file, key, value):
    folder = prepare(write_log(tmp_path), tmp_path / "prepared", *NO_FILTERS)
    content = json.loads((folder / file).read_text(encoding="utf-8"))
    (content["data"] if file == MANIFEST else content)[key] = value
    (folder / file).write_text(json.dumps(content), encoding="utf-8")
    capsys.readouterr()
    assert main(["data", "stats", str(folder), "--session-gap", "600"]) == 2
    error = capsys.readouterr().err
    assert "was changed after `hiertcn data prepare` wrote it" in error
    assert f"--out {folder} --force` to write it again" in error


def test_reader_warning_kept_and_logged_on_load(tmp_path, caplog):
    log = tmp_path / "old.csv"
    log.write_text("user,item,timestamp\n" + "".join(f"u{n},i{n},-{n}\n" for n in range(1, 9)))
    folder = prepare(log, tmp_path / "prepared", *NO_FILTERS)
    manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    assert len(manifest["warnings"]) == 1
    assert "8 timestamps before 1970" in manifest["warnings"][0]
    caplog.clear()
    load_prepared(folder)
    warnings = [record.getMessage() for record in caplog.records if record.levelname == "WARNING"]
    assert len(warnings) == 1
    assert f"{folder} was prepared from a log whose reading warned: " in warnings[0]
    assert "8 timestamps before 1970" in warnings[0]


@pytest.mark.parametrize(
    ("inside", "expected"),
    [
        ("train", "{path} is a part of the prepared folder {folder}: pass the folder {folder}"),
        (MANIFEST, "{path} is a file of the prepared folder {folder}: pass the folder {folder}"),
        ("summary.json", "{path} is a file of the prepared folder {folder}: pass the folder"),
    ],
)
def test_path_inside_folder_names_folder(tmp_path, capsys, inside, expected):
    folder = prepare(write_log(tmp_path), tmp_path / "prepared", *NO_FILTERS)
    path = folder / inside
    capsys.readouterr()
    assert main(["data", "stats", str(path)]) == 2
    assert expected.format(path=path, folder=folder) in capsys.readouterr().err
    argv = ["evaluate", str(tmp_path / "absent.pt"), str(path)]
    with pytest.raises(ConfigError, match="of the prepared folder"):
        load_dataset(data_args(argv))


def test_empty_folder_says_what_is_accepted(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["data", "stats", str(empty)]) == 2
    error = capsys.readouterr().err
    assert f"{empty} is a folder without prepared.json: pass a log file" in error
    assert "or a folder written by `hiertcn data prepare`, which contains prepared.json" in error


def test_log_only_command_names_recorded_log(tmp_path, capsys):
    log = write_log(tmp_path)
    folder = prepare(log, tmp_path / "prepared", *NO_FILTERS)
    capsys.readouterr()
    assert main(["experiment", "all", str(folder), "--out", str(tmp_path / "exp")]) == 2
    error = capsys.readouterr().err
    assert "this command reads only log files" in error
    assert f"pass the log file that the folder was made from, {log}" in error
    argv = ["data", "prepare", str(folder / "train"), "--out", str(tmp_path / "again")]
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert f"{folder / 'train'} is a part of the prepared folder {folder}" in error
    assert f"made from, {log}" in error
