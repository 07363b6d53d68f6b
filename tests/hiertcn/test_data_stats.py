"""Statistics, the data flags, `load_dataset`, the `hiertcn data` command and synthetic logs."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from hiertcn.cli import main
from hiertcn.data.log import EventLog, build_event_log
from hiertcn.data.options import add_data_arguments, load_dataset
from hiertcn.data.readers import ReaderConfig, read_log
from hiertcn.data.stats import (
    compute_impression_stats,
    compute_stats,
    format_impression_line,
    format_stats_table,
)
from hiertcn.data.synthetic import SyntheticConfig, generate_synthetic_log
from hiertcn.errors import DataError
from tests.hiertcn.event_logs import make_log


def test_stats_on_hand_computed_log(tmp_path):
    path = tmp_path / "log.csv"
    # u: sessions of 2 and 1 events; v: one session of 3 events.
    path.write_text(
        "user,item,timestamp\nu,a,0\nu,b,10\nu,c,5000\nv,a,0\nv,a,1\nv,d,2\n", encoding="utf-8"
    )
    stats = compute_stats(build_event_log(read_log(path, ReaderConfig(format="csv"))))
    assert (stats.users, stats.items, stats.events, stats.sessions) == (2, 4, 6, 3)
    assert stats.scored_events == 4
    assert stats.events_per_session_mean == pytest.approx(2.0)
    assert stats.events_per_session_std == pytest.approx(np.std([2, 1, 3]))
    assert stats.sessions_per_user_mean == pytest.approx(1.5)
    assert stats.sessions_per_user_std == pytest.approx(0.5)
    table = format_stats_table({"all": stats})
    assert "| all | 2 | 4 | 6 | 4 | 3 | 2.00 ± 0.82 | 1.50 ± 0.50 |" in table


def test_stats_of_movielens_match_readme(shared_data):
    log = build_event_log(read_log(shared_data / "movielens-latest-small" / "ratings.csv"))
    stats = compute_stats(log)
    assert stats.events_per_session_mean == pytest.approx(14.11, abs=0.005)
    assert stats.sessions_per_user_mean == pytest.approx(11.71, abs=0.005)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_data_arguments(parser)
    return parser.parse_args(argv)


def test_load_dataset_from_flags(shared_data):
    path = shared_data / "taobao-userbehavior-head" / "UserBehavior_head.csv"
    args = parse([str(path), "--min-item-count", "5", "--split-seed", "7"])
    dataset = load_dataset(args)
    users = [set(part.user_ids) for part in (dataset.train, dataset.valid, dataset.test)]
    assert sum(len(part) for part in users) == dataset.log.num_users
    assert dataset.train.vocab is dataset.vocab
    assert dataset.vocab is dataset.log.vocab
    summary = json.loads(json.dumps(dataset.summary))
    assert summary["filters"] == {
        "min_item_count": 5,
        "min_user_events": 10,
        "max_user_events": 1000,
    }
    assert summary["stats"]["all"]["events"] == dataset.log.num_events
    assert summary["split"]["seed"] == 7
    assert summary["filter_report"]["events_before"] == 84_287


def test_data_flags_defaults():
    args = parse(["log.csv"])
    assert args.session_gap == 1800
    assert (args.min_item_count, args.min_user_events, args.max_user_events) == (50, 10, 1000)
    assert args.split == "cold"
    assert args.format == "auto"
    assert args.time_unit is None


def test_data_flags_zero_maximum_means_no_limit(tmp_path):
    path = generate_synthetic_log(20, 40, 0, tmp_path / "log.csv", SyntheticConfig(num_clusters=4))
    args = parse(
        [str(path), "--min-item-count", "0", "--min-user-events", "0", "--max-user-events", "0"]
    )
    dataset = load_dataset(args)
    assert dataset.summary["filters"]["max_user_events"] is None
    assert dataset.filter_report.events_after == dataset.filter_report.events_before


def test_cli_stats_prints_table(shared_data, capsys):
    path = shared_data / "movielens-latest-small" / "ratings.csv"
    code = main(
        [
            "data",
            "stats",
            str(path),
            "--min-item-count",
            "0",
            "--min-user-events",
            "0",
            "--max-user-events",
            "0",
        ]
    )
    assert code == 0
    output = capsys.readouterr().out
    assert "| all | 610 | 9,724 | 100,836 | 100,226 | 7,145 | 14.11 ± " in output


def test_cli_stats_json_with_splits(shared_data, capsys):
    path = shared_data / "taobao-userbehavior-head" / "UserBehavior_head.csv"
    code = main(["data", "stats", str(path), "--min-item-count", "5", "--splits", "--json"])
    assert code == 0
    output = json.loads(capsys.readouterr().out)
    assert set(output["stats"]) == {"all", "train", "valid", "test"}
    assert output["filter_report"]["events_before"] == 84_287
    assert output["stats"]["all"]["users"] == sum(
        output["stats"][part]["users"] for part in ("train", "valid", "test")
    )


def test_cli_reports_bad_input_without_traceback(tmp_path, capsys):
    path = tmp_path / "log.csv"
    path.write_text("user,item,timestamp\nu,i,oops\n", encoding="utf-8")
    code = main(["data", "stats", str(path)])
    assert code == DataError.exit_code
    assert f"{path}:2: timestamp 'oops' is not an integer" in capsys.readouterr().err


def test_cli_prepare_saves_loadable_split(tmp_path, capsys):
    path = generate_synthetic_log(30, 40, 1, tmp_path / "log.csv", SyntheticConfig(num_clusters=4))
    out = tmp_path / "prepared"
    code = main(
        [
            "data",
            "prepare",
            str(path),
            "--out",
            str(out),
            "--min-item-count",
            "1",
            "--min-user-events",
            "2",
            "--split",
            "warm",
        ]
    )
    assert code == 0
    test = EventLog.load(out / "test")
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert test.num_events == summary["stats"]["test"]["events"]
    assert int(np.count_nonzero(test.targets)) == summary["targets"]["test"]


def test_synthetic_log_is_deterministic(tmp_path):
    first = generate_synthetic_log(10, 30, 5, tmp_path / "a.csv", SyntheticConfig(num_clusters=3))
    second = generate_synthetic_log(10, 30, 5, tmp_path / "b.csv", SyntheticConfig(num_clusters=3))
    other = generate_synthetic_log(10, 30, 6, tmp_path / "c.csv", SyntheticConfig(num_clusters=3))
    assert first.read_bytes() == second.read_bytes()
    assert first.read_bytes() != other.read_bytes()


def test_synthetic_sessions_match_gap(tmp_path):
    config = SyntheticConfig(num_clusters=4, mean_sessions_per_user=5.0, mean_event_gap=900.0)
    path = generate_synthetic_log(40, 80, 2, tmp_path / "log.csv", config)
    log = build_event_log(read_log(path, ReaderConfig(format="csv")), gap=config.session_gap)
    gaps = np.diff(log.timestamps)
    same_user = np.repeat(np.arange(log.num_users), np.diff(log.user_offsets))
    inside = np.ones(log.num_events, dtype=bool)
    inside[log.session_offsets[:-1]] = False
    assert (gaps[inside[1:]] <= config.session_gap).all()
    starts = log.session_offsets[1:-1]
    continued = same_user[starts] == same_user[starts - 1]
    assert (
        log.timestamps[starts][continued] - log.timestamps[starts - 1][continued]
        > config.session_gap
    ).all()
    assert log.num_sessions / log.num_users > 2


def test_synthetic_users_prefer_few_clusters(tmp_path):
    config = SyntheticConfig(
        num_clusters=10, clusters_per_user=2, explore_probability=0.0, mean_sessions_per_user=6.0
    )
    path = generate_synthetic_log(30, 100, 4, tmp_path / "log.csv", config)
    log = build_event_log(read_log(path, ReaderConfig(format="csv")))
    cluster_of_row = np.array([int(item) * 10 // 100 for item in log.vocab.ids])
    for user in range(log.num_users):
        clusters = set(cluster_of_row[log.items[log.user_slice(user)]])
        assert len(clusters) <= 2


def test_synthetic_rejects_too_few_items(tmp_path):
    with pytest.raises(DataError, match="at least 1 user and 20 items"):
        generate_synthetic_log(5, 10, 0, tmp_path / "log.csv")


def test_scored_events_of_warm_split_are_targets(tmp_path):
    path = generate_synthetic_log(40, 40, 1, tmp_path / "log.csv", SyntheticConfig(num_clusters=4))
    args = parse([str(path), "--min-item-count", "0", "--min-user-events", "0", "--split", "warm"])
    dataset = load_dataset(args)
    for part in (dataset.valid, dataset.test):
        stats = compute_stats(part)
        assert stats.scored_events == part.num_targets
        assert stats.scored_events < stats.events


def test_scored_events_of_cold_split_skip_first_events(tmp_path):
    path = generate_synthetic_log(40, 40, 1, tmp_path / "log.csv", SyntheticConfig(num_clusters=4))
    dataset = load_dataset(parse([str(path), "--min-item-count", "0", "--min-user-events", "0"]))
    stats = compute_stats(dataset.test)
    assert stats.scored_events == stats.events - stats.users


def test_impression_stats_on_hand_built_log():
    # Event 0 (item 0) shows two other known items and one outside the vocabulary, event 1 has
    # no list, and event 2 (item 2) shows only itself and an unknown item.
    log = make_log([[[0, 1, 2]]], num_items=3, impressions=[[1, 2, -1], [], [2, -1]])
    stats = compute_impression_stats(log)
    assert stats is not None
    assert stats.events == 3
    assert stats.events_with_impressions == 2
    assert stats.list_length_mean == pytest.approx(2.5)
    assert stats.list_length_max == 3
    assert stats.entries == 5
    assert stats.entries_outside_vocabulary == 2
    assert stats.events_with_other_impressions == 1
    assert format_impression_line("all", stats) == (
        "impressions of all: 2 of 3 events carry a list (mean length 2.5, max 3), and 2 of the "
        "5 entries are items outside the vocabulary"
    )


def test_impression_stats_none_without_lists():
    assert compute_impression_stats(make_log([[[0, 1]]])) is None


def test_impression_line_for_empty_lists():
    stats = compute_impression_stats(make_log([[[0, 1]]], impressions=[[], []]))
    assert stats is not None
    assert stats.list_length_max == 0
    assert format_impression_line("valid", stats) == (
        "impressions of valid: none of the 2 events carries a list"
    )


def test_impression_stats_of_trivago_match_readme(shared_data):
    raw = read_log(shared_data / "trivago-sample" / "train_small.csv")
    stats = compute_impression_stats(build_event_log(raw))
    assert stats is not None
    # The folder's README: 12 clickouts with lists of 23 to 25 items, 24.8 on average.
    assert stats.events_with_impressions == 12
    assert stats.list_length_max == 25
    assert stats.list_length_mean == pytest.approx(24.83, abs=0.005)
    assert stats.entries == 298
    assert 0 < stats.entries_outside_vocabulary < stats.entries
