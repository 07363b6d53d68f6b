"""The `hiertcn evaluate` command: checks before the data is read and the vocabulary message."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from hiertcn.cli import main
from tests.hiertcn.test_commands_train import train_argv, write_log


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


def evaluate_argv(checkpoint, log, *extra: str) -> list[str]:
    data = [str(log), "--format", "csv", "--min-item-count", "1", "--min-user-events", "1"]
    return ["evaluate", str(checkpoint), *data, "--device", "cpu", *extra]


@pytest.fixture
def run_dir(tmp_path):
    log = tmp_path / "log.csv"
    write_log(log)
    out = tmp_path / "run"
    assert main(train_argv(log, out)) == 0
    return out


def test_json_under_file_rejected_before_data(tmp_path, capsys, run_dir):
    blocker = tmp_path / "empty.csv"
    blocker.write_text("", encoding="utf-8")
    argv = evaluate_argv(run_dir / "best.pt", tmp_path / "absent.csv", "--json")
    assert main([*argv, str(blocker / "m.json")]) == 2
    error = capsys.readouterr().err
    assert f"--json {blocker / 'm.json'} is invalid because {blocker} is a file" in error


def test_json_in_missing_folder_rejected(tmp_path, capsys, run_dir):
    argv = evaluate_argv(run_dir / "best.pt", tmp_path / "absent.csv", "--json")
    assert main([*argv, str(tmp_path / "nowhere" / "m.json")]) == 2
    assert "does not exist: create it first" in capsys.readouterr().err


def test_foreign_checkpoint_rejected_before_data(tmp_path, capsys):
    checkpoint = tmp_path / "notackpt.pt"
    checkpoint.write_text("not a checkpoint\n", encoding="utf-8")
    assert main(evaluate_argv(checkpoint, tmp_path / "absent.csv")) == 2
    error = capsys.readouterr().err
    assert f"hiertcn: error: {checkpoint} is not a hiertcn checkpoint" in error
    assert "Traceback" not in error


def test_other_log_vocabulary_message(tmp_path, capsys, run_dir):
    other = tmp_path / "other.csv"
    lines = ["user,item,timestamp"] + [
        f"u{user},{item},{user}" for user in range(10) for item in "xy"
    ]
    other.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert main(evaluate_argv(run_dir / "best.pt", other)) == 2
    error = capsys.readouterr().err
    assert "trained on 5 items" in error
    assert "a vocabulary of 2 items" in error
    assert "order" not in error
    assert str(tmp_path / "log.csv") in error


def test_json_on_the_log_rejected(tmp_path, capsys, run_dir):
    log = tmp_path / "log.csv"
    before = log.read_bytes()
    assert main(evaluate_argv(run_dir / "best.pt", log, "--json", str(log))) == 2
    assert f"--json {log} is one of the input files" in capsys.readouterr().err
    assert log.read_bytes() == before


@pytest.mark.parametrize(
    ("flags", "trained", "given"),
    [
        (["--split-seed", "7"], "--split-seed 0", "--split-seed 7"),
        (["--split", "warm"], "--split cold", "--split warm"),
        (["--session-gap", "60"], "--session-gap 1800", "--session-gap 60"),
    ],
)
def test_other_split_or_sessions_rejected(tmp_path, capsys, run_dir, flags, trained, given):
    argv = evaluate_argv(run_dir / "best.pt", tmp_path / "log.csv", *flags)
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert f"checkpoint {run_dir / 'best.pt'} was trained with" in error
    assert trained in error
    assert given in error
    assert "evaluate it with the log and data flags that trained it" in error


def test_same_settings_evaluate(tmp_path, capsys, run_dir):
    assert main(evaluate_argv(run_dir / "best.pt", tmp_path / "log.csv")) == 0
    assert "most_popular" in capsys.readouterr().out


def test_ranks_name_the_log_user_ids(tmp_path):
    # User u<k> has k + 2 events in one session, so k + 1 of them are scored.
    log = tmp_path / "sizes.csv"
    rows = [
        f"u{user},i{event % 3},{1_600_000_000 + event}"
        for user in range(10)
        for event in range(user + 2)
    ]
    log.write_text("user,item,timestamp\n" + "\n".join(rows) + "\n", encoding="utf-8")
    assert main(train_argv(log, tmp_path / "run")) == 0
    report = tmp_path / "ranks.json"
    argv = evaluate_argv(tmp_path / "run" / "best.pt", log, "--json", str(report), "--ranks")
    assert main(argv) == 0

    ranks = json.loads(report.read_text(encoding="utf-8"))["results"][0]["ranks"]
    assert ranks["user_ids"]
    for user_id in set(ranks["user_ids"]):
        assert ranks["user_ids"].count(user_id) == int(user_id[1:]) + 1


def test_thread_count_set_and_recorded(tmp_path, run_dir):
    report = tmp_path / "report.json"
    argv = evaluate_argv(run_dir / "best.pt", tmp_path / "log.csv", "--json", str(report))
    assert main([*argv, "--threads", "2"]) == 0

    assert torch.get_num_threads() == 2
    environment = json.loads(report.read_text(encoding="utf-8"))["environment"]
    assert environment["threads"] == 2
    assert environment["device"] == "cpu"


def test_thread_count_zero_rejected_before_data(tmp_path, capsys, run_dir):
    argv = evaluate_argv(run_dir / "best.pt", tmp_path / "absent.csv", "--threads", "0")
    assert main(argv) == 2
    assert "--threads 0 is invalid: use 1 to 1024" in capsys.readouterr().err


def test_thread_limit_matches_training():
    from hiertcn.commands.evaluate import MAX_THREADS
    from hiertcn.train import MAX_THREADS as TRAINING_MAX_THREADS

    assert MAX_THREADS == TRAINING_MAX_THREADS


def test_prepared_folder_mismatch_names_folder(tmp_path, capsys, run_dir):
    folder = tmp_path / "warm"
    data = [str(tmp_path / "log.csv"), "--format", "csv", "--min-item-count", "1"]
    prepare = ["data", "prepare", *data, "--min-user-events", "1", "--split", "warm"]
    assert main([*prepare, "--out", str(folder)]) == 0
    capsys.readouterr()

    argv = ["evaluate", str(run_dir / "best.pt"), str(folder), "--device", "cpu"]
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert "was trained with --split cold" in error
    assert f"and the prepared folder {folder} has --split warm" in error
    assert "or on a folder prepared with them" in error


def test_batch_wider_than_users_same_table(tmp_path, capsys, run_dir, address_space_cap):
    argv = evaluate_argv(run_dir / "best.pt", tmp_path / "log.csv")
    capsys.readouterr()
    assert main(argv) == 0
    default = capsys.readouterr().out
    assert main([*argv, "--batch-size", str(2**58)]) == 0
    assert capsys.readouterr().out == default


def test_batch_size_zero_rejected_before_data(tmp_path, capsys, run_dir):
    argv = evaluate_argv(run_dir / "best.pt", tmp_path / "absent.csv", "--batch-size", "0")
    assert main(argv) == 2
    assert "--batch-size 0 is invalid: use an integer >= 1" in capsys.readouterr().err


def write_category_log(path) -> None:
    """Write a log of 8 users whose 40 items fall in 2 categories."""
    lines = ["user,item,category,timestamp"]
    for user in range(8):
        for event in range(5):
            item = user * 5 + event
            lines.append(f"u{user},i{item},c{item % 2},{1_600_000_000 + 60 * event}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def train_on_categories(tmp_path, capsys, min_item_count: int) -> tuple[list[str], Path]:
    """Train most-popular on the category column; return the data flags (without --item-col)
    and the run folder."""
    log, out = tmp_path / "log.csv", tmp_path / "run"
    write_category_log(log)
    data = [str(log), "--format", "csv", "--min-item-count", str(min_item_count)]
    data += ["--min-user-events", "1"]
    train = ["train", *data, "--item-col", "category", "--model", "most_popular"]
    assert main([*train, "--out", str(out), "--device", "cpu"]) == 0
    capsys.readouterr()
    return data, out


def test_other_item_col_names_checkpoint_flags(tmp_path, capsys):
    data, out = train_on_categories(tmp_path, capsys, min_item_count=3)
    log = tmp_path / "log.csv"

    # Every item id occurs once, so --min-item-count 3 removes every event.
    argv = ["evaluate", str(out / "best.pt"), *data, "--item-col", "item", "--device", "cpu"]
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert "removed every remaining event" in error
    assert f"{out / 'best.pt'} was trained on {log} (--format csv --item-col category" in error
    assert "Check the data flags against those of the checkpoints" in error


def test_other_item_col_vocabulary_names_flag(tmp_path, capsys):
    data, out = train_on_categories(tmp_path, capsys, min_item_count=1)

    argv = ["evaluate", str(out / "best.pt"), *data, "--item-col", "item", "--device", "cpu"]
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert "a vocabulary of 40 items" in error
    assert "--item-col category" in error


def test_missing_data_flags_from_checkpoint(tmp_path, capsys, caplog):
    data, out = train_on_categories(tmp_path, capsys, min_item_count=3)
    log = tmp_path / "log.csv"
    with_flags = ["evaluate", str(out / "best.pt"), *data, "--item-col", "category"]
    assert main([*with_flags, "--device", "cpu"]) == 0
    table = capsys.readouterr().out

    with caplog.at_level("INFO", logger="hiertcn.commands.evaluate"):
        assert main(["evaluate", str(out / "best.pt"), str(log), "--device", "cpu"]) == 0

    assert capsys.readouterr().out == table
    (line,) = [
        message for message in caplog.messages if "as the checkpoints were trained" in message
    ]
    assert "--format csv" in line
    assert "--item-col category" in line
    assert "--min-item-count 3" in line
    assert "--min-user-events 1" in line


def test_given_data_flag_wins(tmp_path, capsys):
    _data, out = train_on_categories(tmp_path, capsys, min_item_count=1)
    log = tmp_path / "log.csv"

    argv = ["evaluate", str(out / "best.pt"), str(log), "--split-seed", "7"]
    assert main([*argv, "--device", "cpu"]) == 2

    error = capsys.readouterr().err
    assert "was trained with --split cold --split-seed 0" in error
    assert "--split-seed 7" in error


def train_most_popular(log: Path, out: Path, capsys, *flags: str) -> Path:
    """Train most-popular on the category log with extra data flags; return its best.pt."""
    data = [str(log), "--format", "csv", "--min-user-events", "1", "--min-item-count", "1"]
    train = ["train", *data, *flags, "--model", "most_popular", "--device", "cpu"]
    assert main([*train, "--out", str(out)]) == 0
    capsys.readouterr()
    return out / "best.pt"


@pytest.mark.parametrize(
    ("flag", "first", "second"),
    [("--min-item-count", "1", "2"), ("--session-gap", "1800", "3600")],
)
def test_checkpoints_with_different_flags_rejected(tmp_path, capsys, flag, first, second):
    log = tmp_path / "log.csv"
    write_category_log(log)
    category = ("--item-col", "category")  # 2 items of 20 events each
    a = train_most_popular(log, tmp_path / "a", capsys, *category, flag, first)
    b = train_most_popular(log, tmp_path / "b", capsys, *category, flag, second)
    c = train_most_popular(log, tmp_path / "c", capsys, *category, flag, first)

    assert main(["evaluate", str(a), str(b), str(c), str(log), "--device", "cpu"]) == 2

    error = capsys.readouterr().err
    assert (
        f"the checkpoints were trained with different data flags: {flag} {first} ({a}, {c}), "
        f"{second} ({b}). Because evaluate scores every checkpoint on one split, pass each of "
        "these flags with the value to evaluate on, or evaluate the checkpoints separately"
    ) in error
    assert "not --" not in error  # no blame for a default that was never passed


def test_reader_flag_given_to_one_checkpoint_only(tmp_path, capsys):
    log = tmp_path / "log.csv"
    write_category_log(log)
    a = train_most_popular(log, tmp_path / "a", capsys, "--item-col", "category")
    b = train_most_popular(log, tmp_path / "b", capsys)

    assert main(["evaluate", str(a), str(b), str(log), "--device", "cpu"]) == 2

    error = capsys.readouterr().err
    assert f"different data flags: --item-col category ({a}), not given ({b})." in error


def test_switch_values_described():
    import argparse

    from hiertcn.commands.evaluate import describe_flag_values
    from hiertcn.data.options import add_data_arguments

    parser = argparse.ArgumentParser()
    add_data_arguments(parser)
    (action,) = [action for action in parser._actions if "--no-header" in action.option_strings]
    recorded = [vars(parser.parse_args(["log.csv", *words])) for words in ([], ["--no-header"])]

    described = describe_flag_values([Path("a.pt"), Path("b.pt")], recorded, action)

    assert described == "--no-header not given (a.pt), given (b.pt)"


def test_different_flags_resolved_by_given_flag(tmp_path, capsys):
    log = tmp_path / "log.csv"
    write_category_log(log)
    category = ("--item-col", "category")
    a = train_most_popular(log, tmp_path / "a", capsys, *category, "--min-item-count", "1")
    b = train_most_popular(log, tmp_path / "b", capsys, *category, "--min-item-count", "2")

    argv = ["evaluate", str(a), str(b), str(log), "--min-item-count", "2", "--device", "cpu"]
    assert main(argv) == 0

    table = capsys.readouterr().out
    assert str(a) in table
    assert str(b) in table


def test_usage_shows_checkpoints_required(capsys):
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    usage = " ".join(capsys.readouterr().out.split("\n\n")[0].split())
    assert usage.endswith("CKPT [CKPT ...] FILE")


def write_impressions_log(path: Path) -> None:
    """Write a log of 8 users whose events cover every kind of impression pool.

    Ids x* are shown but never clicked, so they stay outside the vocabulary. Each user's 5
    ranked events (all but the first) are: 1 pool of only the clicked item, 1 list of unknown
    ids only, 2 pools of 2 items and 1 event without a list, with 5 unknown ids in all.
    """
    lines = ["user,item,timestamp,impressions"]
    for user in range(8):
        items = [f"i{(user + event) % 5}" for event in range(7)]
        impression_lists = [
            "",
            f"{items[1]}|x1|x2",
            "x3|x4",
            f"{items[3]}|{items[4]}|x5",
            "",
            f"{items[5]}|{items[6]}",
        ]
        for event, impressions in enumerate(impression_lists):
            lines.append(f"u{user},{items[event]},{1_600_000_000 + 60 * event},{impressions}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.fixture
def impressions_run(tmp_path) -> tuple[Path, Path]:
    """Train most-popular on the impressions log, and return the log and the run folder."""
    log = tmp_path / "impressions.csv"
    write_impressions_log(log)
    out = tmp_path / "run"
    assert main(train_argv(log, out, "--impressions-col", "impressions")) == 0
    return log, out


def test_pool_counts_printed_and_written(tmp_path, capsys, caplog, impressions_run):
    log, out = impressions_run
    report = tmp_path / "report.json"
    argv = ["evaluate", str(out / "best.pt"), str(out / "last.pt"), str(log), "--device", "cpu"]
    capsys.readouterr()
    with caplog.at_level("WARNING", logger="hiertcn.evaluate"):
        assert main([*argv, "--json", str(report)]) == 0

    results = json.loads(report.read_text(encoding="utf-8"))["results"]
    users = results[0]["events"] // 5
    assert users >= 1
    for result in results:
        assert result["pool"] == {
            "kind": "mixed",
            "use_impressions": True,
            "catalog_items": 5,
            "impressions_events": 3 * users,
            "catalog_events": 2 * users,
            "single_item_pools": users,
            "unknown_only_lists": users,
            "unknown_impression_ids": 5 * users,
        }
    pool_lines = [line for line in capsys.readouterr().out.splitlines() if "pool:" in line]
    assert pool_lines == [
        f"pool: impressions for {3 * users} events ({users} with only the clicked item, ranked "
        f"1), the whole catalog of 5 items for {2 * users} events ({users} whose shown items "
        f"are all outside the vocabulary); {5 * users} impression ids outside the vocabulary "
        "were dropped"
    ]
    (warning,) = caplog.messages  # once for both checkpoints
    assert warning.startswith(f"{users} of {5 * users} ranked events (20.0%) have an impression")


def test_no_impressions_pool_named(tmp_path, capsys, caplog, impressions_run):
    log, out = impressions_run
    report = tmp_path / "report.json"
    argv = ["evaluate", str(out / "best.pt"), str(log), "--device", "cpu", "--no-impressions"]
    capsys.readouterr()
    with caplog.at_level("WARNING", logger="hiertcn.evaluate"):
        assert main([*argv, "--json", str(report)]) == 0

    (result,) = json.loads(report.read_text(encoding="utf-8"))["results"]
    assert result["pool"]["kind"] == "catalog"
    assert result["pool"]["use_impressions"] is False
    assert result["pool"]["catalog_events"] == result["events"]
    output = capsys.readouterr().out
    assert output.endswith(
        "pool: the whole catalog of 5 items for every event (--no-impressions)\n"
    )
    assert caplog.messages == []


def test_log_without_impressions_pool_named(tmp_path, capsys, run_dir):
    assert main(evaluate_argv(run_dir / "best.pt", tmp_path / "log.csv")) == 0
    output = capsys.readouterr().out
    assert "pool: the whole catalog of 5 items for every event (no ranked event has" in output


def test_jsonl_copy_of_csv_log_names_format(tmp_path, capsys, impressions_run):
    log, out = impressions_run
    copy = tmp_path / "copy.jsonl"
    records = []
    for line in log.read_text(encoding="utf-8").splitlines()[1:]:
        user, item, timestamp, impressions = line.split(",")
        record = {
            "user": user,
            "item": item,
            "timestamp": int(timestamp),
            "impressions": impressions,
        }
        records.append(json.dumps(record) + "\n")
    copy.write_text("".join(records), encoding="utf-8")
    argv = ["evaluate", str(out / "best.pt"), str(copy), "--device", "cpu"]
    capsys.readouterr()

    assert main([*argv, "--impressions-col", "impressions"]) == 2
    error = capsys.readouterr().err
    assert f"{copy} looks like a jsonl log, but evaluate read it as csv" in error
    assert "pass --format jsonl" in error
    assert error.count("\n") == 1

    assert main([*argv, "--impressions-col", "impressions", "--format", "jsonl"]) == 0
    assert "pool: impressions for" in capsys.readouterr().out


def test_help_lists_ranks_fields(capsys):
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    output = capsys.readouterr().out
    assert "one entry per ranked event, in batch order" in output
    for name in ("pool_sizes", "past_events", "session_position", "session_gap", "user_ids"):
        assert f"\n  {name}" in output or f", {name}" in output
    assert "or -1 in the user's first session" in output
