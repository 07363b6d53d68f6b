"""The `hiertcn data` subcommands: output paths of `synthetic` and `prepare`, flag checks, and
the warm-split table of `stats`."""

from __future__ import annotations

import json
import logging

import pytest

from hiertcn.cli import main
from hiertcn.data.synthetic import SyntheticConfig, generate_synthetic_log

NO_FILTERS = ("--min-item-count", "0", "--min-user-events", "0")


def test_synthetic_into_folder_rejected(tmp_path, capsys):
    assert main(["data", "synthetic", str(tmp_path), "--users", "5"]) == 2
    error = capsys.readouterr().err
    assert f"hiertcn: error: OUT {tmp_path} is a folder: pass a file path" in error
    assert "Traceback" not in error


def test_synthetic_keeps_existing_file(tmp_path, capsys):
    path = tmp_path / "keep.csv"
    path.write_text("user,item,timestamp\nu,i,1\n", encoding="utf-8")
    assert main(["data", "synthetic", str(path), "--users", "5", "--items", "20"]) == 2
    error = capsys.readouterr().err
    assert f"OUT {path} already exists: pass --force to replace it" in error
    assert path.read_text(encoding="utf-8") == "user,item,timestamp\nu,i,1\n"


def test_synthetic_force_replaces_file(tmp_path):
    path = tmp_path / "keep.csv"
    path.write_text("user,item,timestamp\nu,i,1\n", encoding="utf-8")
    argv = ["data", "synthetic", str(path), "--users", "5", "--items", "20", "--force"]
    assert main(argv) == 0
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "user,item,timestamp"
    assert len(lines) > 2


def test_synthetic_under_file_rejected(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x", encoding="utf-8")
    assert main(["data", "synthetic", str(blocker / "log.csv"), "--users", "5"]) == 2
    error = capsys.readouterr().err
    assert f"OUT {blocker / 'log.csv'} is inside {blocker}, which is a file" in error


def test_synthetic_help_explains_force(capsys):
    with pytest.raises(SystemExit):
        main(["data", "synthetic", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--force replace OUT if it already exists" in help_text


def write_log(tmp_path):
    return generate_synthetic_log(40, 40, 1, tmp_path / "log.csv", SyntheticConfig(num_clusters=4))


def test_prepare_out_file_rejected_before_data(tmp_path, capsys):
    out = tmp_path / "log.jsonl"
    out.write_text("{}\n", encoding="utf-8")
    argv = ["data", "prepare", str(tmp_path / "absent.csv"), "--out", str(out), *NO_FILTERS]
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert f"hiertcn: error: --out {out} is a file: pass a folder" in error
    assert out.read_text(encoding="utf-8") == "{}\n"


def test_prepare_out_under_file_rejected(tmp_path, capsys):
    log = write_log(tmp_path)
    out = log / "prepared"
    assert main(["data", "prepare", str(log), "--out", str(out), *NO_FILTERS]) == 2
    error = capsys.readouterr().err
    assert f"--out {out} is inside {log}, which is a file: pass a path in a folder" in error
    assert "Traceback" not in error


@pytest.mark.parametrize("gap", ["0", "-5"])
def test_stats_rejects_session_gap_below_one(tmp_path, capsys, gap):
    log = write_log(tmp_path)
    assert main(["data", "stats", str(log), *NO_FILTERS, "--session-gap", gap]) == 2
    error = capsys.readouterr().err
    assert f"--session-gap {gap} is invalid: give a positive number of seconds" in error


def test_stats_warm_split_explains_history(tmp_path, capsys):
    log = write_log(tmp_path)
    assert main(["data", "stats", str(log), *NO_FILTERS, "--split", "warm", "--splits"]) == 0
    output = capsys.readouterr().out
    assert "| log | users | items | events | scored events | sessions |" in output
    assert "warm split: the valid and test events include each user's earlier events" in output


def test_stats_cold_split_has_no_warm_note(tmp_path, capsys):
    log = write_log(tmp_path)
    assert main(["data", "stats", str(log), *NO_FILTERS, "--splits"]) == 0
    assert "warm split" not in capsys.readouterr().out


def test_stats_json_counts_scored_events(tmp_path, capsys):
    log = write_log(tmp_path)
    argv = ["data", "stats", str(log), *NO_FILTERS, "--split", "warm", "--splits", "--json"]
    assert main(argv) == 0
    stats = json.loads(capsys.readouterr().out)["stats"]
    for part in ("valid", "test"):
        assert 0 < stats[part]["scored_events"] < stats[part]["events"]
    assert stats["all"]["scored_events"] == stats["all"]["events"] - stats["all"]["users"]


def test_stats_event_types_matching_nothing(tmp_path, capsys):
    path = tmp_path / "log.csv"
    path.write_text("user,item,timestamp,kind\nu,i,1,pv\nu,j,2,buy\n", encoding="utf-8")
    argv = ["data", "stats", str(path), "--event-type-col", "kind", "--event-types", "click"]
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert "--event-types click matches no event" in error
    assert "the event types in the file are pv, buy" in error


def test_stats_reports_raw_users_and_items(tmp_path, capsys, caplog):
    rows = [
        f"u{user},i{(user + event) % 5},{100 * event}" for user in range(3) for event in range(4)
    ]
    path = tmp_path / "log.csv"
    path.write_text("user,item,timestamp\n" + "\n".join([*rows, "u9,i9,0"]) + "\n", "utf-8")
    argv = ["data", "stats", str(path), "--min-item-count", "0", "--min-user-events", "2"]
    with caplog.at_level(logging.INFO, logger="hiertcn.data.filters"):
        assert main([*argv, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)["filter_report"]
    assert report["users_before"] == 4
    assert report["items_before"] == 6
    assert report["users_after"] == 3
    assert report["items_after"] == 5
    assert "filters kept 12 of 13 events, 3 of 4 users and 5 of 6 items" in caplog.text


def prepare_argv(log, out, *flags):
    return ["data", "prepare", str(log), "--out", str(out), *NO_FILTERS, *flags]


def split_kind(folder):
    return json.loads((folder / "prepared.json").read_text(encoding="utf-8"))["data"]["split"]


def test_prepare_keeps_existing_folder(tmp_path, capsys):
    log, out = write_log(tmp_path), tmp_path / "prepared"
    assert main(prepare_argv(log, out, "--split", "warm")) == 0
    capsys.readouterr()
    assert main(prepare_argv(log, out)) == 2
    error = capsys.readouterr().err
    assert f"hiertcn: error: --out {out} already contains a prepared folder: pass --force" in error
    assert split_kind(out)["kind"] == "warm"


def test_prepare_force_replaces_folder(tmp_path):
    log, out = write_log(tmp_path), tmp_path / "prepared"
    assert main(prepare_argv(log, out, "--split", "warm")) == 0
    # A file of an earlier folder that this run does not write must not survive --force.
    (out / "all" / "impressions.npy").write_bytes(b"stale")
    assert main(prepare_argv(log, out, "--force")) == 0
    assert split_kind(out)["kind"] == "cold"
    assert not (out / "all" / "impressions.npy").exists()
    assert main(["data", "stats", str(out)]) == 0


@pytest.mark.parametrize("force", [(), ("--force",)])
@pytest.mark.parametrize("other", ["notes.txt", "all/notes.txt"])
def test_prepare_rejects_folder_with_other_files(tmp_path, capsys, force, other):
    log, out = write_log(tmp_path), tmp_path / "prepared"
    if other.startswith("all/"):
        assert main(prepare_argv(log, out)) == 0
    (out / other).parent.mkdir(parents=True, exist_ok=True)
    (out / other).write_text("hi\n", encoding="utf-8")
    capsys.readouterr()
    assert main(prepare_argv(log, out, *force)) == 2
    error = capsys.readouterr().err
    assert (
        f"--out {out} contains files that `hiertcn data prepare` does not write ({other})" in error
    )
    assert "--force replaces only a prepared folder" in error
    assert (out / other).read_text(encoding="utf-8") == "hi\n"


def test_prepare_into_empty_folder(tmp_path):
    log, out = write_log(tmp_path), tmp_path / "prepared"
    out.mkdir()
    assert main(prepare_argv(log, out)) == 0
    assert (out / "prepared.json").is_file()


def test_prepare_force_keeps_folder_when_log_fails(tmp_path, capsys):
    log, out = write_log(tmp_path), tmp_path / "prepared"
    assert main(prepare_argv(log, out, "--split", "warm")) == 0
    bad = tmp_path / "bad.csv"
    bad.write_text("user,item,timestamp\nu,i,noon\n", encoding="utf-8")
    assert main(prepare_argv(bad, out, "--force")) == 2
    assert "is not an integer" in capsys.readouterr().err
    assert split_kind(out)["kind"] == "warm"
    assert main(["data", "stats", str(out)]) == 0


def test_prepare_help_explains_force(capsys):
    with pytest.raises(SystemExit):
        main(["data", "prepare", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--force replace the prepared folder in --out" in help_text
    assert "prepared.json records the log's absolute path" in help_text


def test_prepare_unreadable_out_rejected(tmp_path, capsys, monkeypatch):
    out = tmp_path / "prepared"
    out.mkdir()

    def deny(self):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(type(out), "iterdir", deny)
    assert main(prepare_argv(write_log(tmp_path), out)) == 2
    error = capsys.readouterr().err
    assert f"cannot list --out {out}: Permission denied ({out})" in error


def test_stats_rejects_no_header_for_jsonl(tmp_path, capsys):
    log = tmp_path / "events.jsonl"
    log.write_text('{"user": "u", "item": "a", "ts": 1}\n', encoding="utf-8")

    assert main(["data", "stats", str(log), *NO_FILTERS, "--no-header"]) == 2

    error = capsys.readouterr().err
    assert "--no-header applies only to CSV and TSV files (the formats csv, movielens and " in error
    assert f"but {log} has the format jsonl: drop --no-header" in error
    assert "Traceback" not in error


def write_impression_log(tmp_path):
    """Write a log whose event u,a,1 shows a, b and an item z that no event has."""
    path = tmp_path / "log.csv"
    rows = ["user,item,timestamp,shown", "u,a,1,a|b|z", "u,b,2,", "v,a,3,b", "v,c,4,"]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def test_stats_prints_impression_line(tmp_path, capsys):
    path = write_impression_log(tmp_path)
    assert main(["data", "stats", str(path), *NO_FILTERS, "--impressions-col", "shown"]) == 0
    output = capsys.readouterr().out
    assert (
        "impressions of all: 2 of 4 events carry a list (mean length 2.0, max 3), and 1 of the "
        "4 entries are items outside the vocabulary"
    ) in output


def test_stats_json_counts_impressions(tmp_path, capsys):
    path = write_impression_log(tmp_path)
    argv = ["data", "stats", str(path), *NO_FILTERS, "--impressions-col", "shown", "--json"]
    assert main(argv) == 0
    impressions = json.loads(capsys.readouterr().out)["impressions"]
    assert impressions == {
        "all": {
            "events": 4,
            "events_with_impressions": 2,
            "list_length_mean": 2.0,
            "list_length_max": 3,
            "entries": 4,
            "entries_outside_vocabulary": 1,
            "events_with_other_impressions": 2,
        }
    }


def test_stats_without_impressions_has_no_line(tmp_path, capsys):
    log = write_log(tmp_path)
    assert main(["data", "stats", str(log), *NO_FILTERS]) == 0
    assert "impressions" not in capsys.readouterr().out
    assert main(["data", "stats", str(log), *NO_FILTERS, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["impressions"] == {"all": None}


def test_stats_impression_lines_per_part(shared_data, capsys):
    path = shared_data / "trivago-sample" / "test_small.csv"
    assert main(["data", "stats", str(path), *NO_FILTERS, "--splits"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if "impressions" in line]
    assert [line.split(":")[0] for line in lines] == [
        "impressions of all",
        "impressions of train",
        "impressions of valid",
        "impressions of test",
    ]
    assert lines[0].startswith("impressions of all: 41 of 873 events carry a list")


def test_stats_trivago_small_share_hint(shared_data, caplog):
    path = shared_data / "trivago-sample" / "train_small.csv"
    with caplog.at_level(logging.INFO, logger="hiertcn.data.filters"):
        assert main(["data", "stats", str(path)]) == 0
    warnings = [record.getMessage() for record in caplog.records if record.levelname == "WARNING"]
    assert len(warnings) == 1
    assert warnings[0].startswith(
        "the filters kept only 52 of 997 events (5.2%), 1 of 7 users and 1 of 48 items: "
        "--min-item-count 50 removed 945 events. To keep more, lower --min-item-count."
    )
    assert "The defaults follow the HierTCN paper" in warnings[0]
