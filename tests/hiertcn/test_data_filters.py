"""Filters: rounds to a fixed point, the report, and the empty-result error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hiertcn.data.filters import (
    FilterConfig,
    FilterReport,
    FilterStep,
    filter_log,
    small_share_hint,
)
from hiertcn.data.readers import RawLog, ReaderConfig, read_log
from hiertcn.errors import DataError


def raw_from_rows(tmp_path: Path, rows: list[tuple[str, str]]) -> RawLog:
    """Write (user, item) rows with increasing timestamps and read them back."""
    path = tmp_path / "log.csv"
    lines = ["user,item,timestamp"] + [f"{u},{i},{t}" for t, (u, i) in enumerate(rows)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return read_log(path, ReaderConfig(format="csv"))


# Removing the item `rare` drops user u1 below 2 events; removing u1 drops item `y` below 2
# interactions, which takes one event from u2.
CASCADE = [
    ("u1", "rare"),
    ("u1", "y"),
    ("u2", "y"),
    ("u2", "z"),
    ("u2", "z"),
    ("u3", "z"),
    ("u3", "w"),
    ("u3", "w"),
]


def test_filters_reach_fixed_point_through_cascade(tmp_path):
    config = FilterConfig(min_item_count=2, min_user_events=2, max_user_events=None)
    filtered, report = filter_log(raw_from_rows(tmp_path, CASCADE), config)
    assert sorted(set(filtered.users)) == ["u2", "u3"]
    assert sorted(set(filtered.items)) == ["w", "z"]
    assert len(filtered) == 5
    assert report.rounds == 3
    assert report.events_before == 8
    assert report.events_after == 5


def test_filter_report_states_each_removal(tmp_path):
    config = FilterConfig(min_item_count=2, min_user_events=2, max_user_events=None)
    _, report = filter_log(raw_from_rows(tmp_path, CASCADE), config)
    removals = [
        (step.round, step.filter, step.events_removed, step.users_removed, step.items_removed)
        for step in report.steps
        if step.events_removed
    ]
    assert removals == [
        (1, "min_item_count", 1, 0, 1),
        (1, "min_user_events", 1, 1, 0),
        (2, "min_item_count", 1, 0, 1),
    ]
    assert report.format_lines()[0] == (
        "round 1: min_item_count=2 removed 1 event, 0 users, 1 item"
    )
    assert report.to_dict()["events_after"] == 5


def test_max_user_events_removes_whole_user(tmp_path):
    rows = [("heavy", "a")] * 4 + [("light", "a")] * 2
    config = FilterConfig(min_item_count=0, min_user_events=0, max_user_events=3)
    filtered, _ = filter_log(raw_from_rows(tmp_path, rows), config)
    assert set(filtered.users) == {"light"}


def test_filter_keeps_positions_and_timestamps(tmp_path):
    config = FilterConfig(min_item_count=2, min_user_events=2, max_user_events=None)
    filtered, _ = filter_log(raw_from_rows(tmp_path, CASCADE), config)
    assert list(filtered.positions) == [3, 4, 5, 6, 7]
    assert (np.diff(filtered.timestamps) > 0).all()


def test_empty_result_names_filter_and_fix(tmp_path):
    config = FilterConfig(min_item_count=0, min_user_events=1000, max_user_events=None)
    with pytest.raises(DataError) as error:
        filter_log(raw_from_rows(tmp_path, CASCADE), config)
    message = str(error.value)
    assert "min_user_events=1000 removed every remaining event in round 1" in message
    assert "lower --min-user-events" in message


def test_empty_result_from_maximum_asks_to_raise(tmp_path):
    config = FilterConfig(min_item_count=0, min_user_events=0, max_user_events=1)
    with pytest.raises(DataError, match="raise --max-user-events"):
        filter_log(raw_from_rows(tmp_path, CASCADE), config)


def test_maximum_below_minimum_is_rejected():
    with pytest.raises(DataError, match="--max-user-events 5 is below --min-user-events 10"):
        FilterConfig(min_item_count=0, min_user_events=10, max_user_events=5)


def test_real_log_filters_reach_fixed_point(shared_data):
    path = shared_data / "taobao-userbehavior-head" / "UserBehavior_head.csv"
    config = FilterConfig(min_item_count=5, min_user_events=10, max_user_events=1000)
    filtered, report = filter_log(read_log(path), config)
    _, item_counts = np.unique(filtered.items, return_counts=True)
    _, user_counts = np.unique(filtered.users, return_counts=True)
    assert item_counts.min() >= 5
    assert user_counts.min() >= 10
    assert user_counts.max() <= 1000
    assert report.rounds > 1
    assert not any(step.events_removed for step in report.steps if step.round == report.rounds)


def test_filter_report_counts_are_singular_for_one(tmp_path):
    rows = [("u", "a"), ("u", "a"), ("v", "b")]
    config = FilterConfig(min_item_count=2, min_user_events=0, max_user_events=None)
    _, report = filter_log(raw_from_rows(tmp_path, rows), config)
    assert report.format_lines() == [
        "round 1: min_item_count=2 removed 1 event, 1 user, 1 item",
        "filters kept 2 of 3 events, 1 of 2 users and 1 of 2 items after 2 rounds",
    ]


def test_filter_report_one_round(tmp_path):
    config = FilterConfig(min_item_count=0, min_user_events=0, max_user_events=None)
    _, report = filter_log(raw_from_rows(tmp_path, [("u", "a")]), config)
    assert report.format_lines() == [
        "filters kept 1 of 1 event, 1 of 1 user and 1 of 1 item after 1 round"
    ]


def test_filter_report_counts_raw_users_and_items(tmp_path):
    config = FilterConfig(min_item_count=2, min_user_events=2, max_user_events=None)
    _, report = filter_log(raw_from_rows(tmp_path, CASCADE), config)
    assert report.users_before == 3
    assert report.items_before == 4
    assert report.users_after == 2
    assert report.items_after == 2
    saved = report.to_dict()
    assert saved["users_before"] == 3
    assert saved["items_before"] == 4
    assert FilterReport.from_dict(saved) == report


def test_filter_report_from_summary_without_user_counts(tmp_path):
    config = FilterConfig(min_item_count=0, min_user_events=0, max_user_events=None)
    _, report = filter_log(raw_from_rows(tmp_path, [("u", "a")]), config)
    saved = report.to_dict()
    for key in ("users_before", "users_after", "items_before", "items_after"):
        del saved[key]
    old = FilterReport.from_dict(saved)
    assert old.users_before is None
    assert old.format_lines() == ["filters kept 1 of 1 event after 1 round"]


def report_with(removed: dict[str, tuple[int, int]], events_after: int, **counts) -> FilterReport:
    """Build a one-round report of 1000 events where each filter removed (value, events)."""
    steps = tuple(
        FilterStep(
            round=1,
            filter=name,
            value=value,
            events_removed=events,
            users_removed=0,
            items_removed=0,
        )
        for name, (value, events) in removed.items()
    )
    sizes = {"users_before": 10, "users_after": 5, "items_before": 40, "items_after": 20}
    return FilterReport(steps, 1, 1000, events_after, **(sizes | counts))


def test_small_share_hint_names_largest_filter_first():
    removed = {"min_item_count": (50, 300), "min_user_events": (10, 650)}
    hint = small_share_hint(report_with(removed, events_after=50))
    assert hint is not None
    assert hint.startswith(
        "the filters kept only 50 of 1000 events (5.0%), 5 of 10 users and 20 of 40 items: "
        "--min-user-events 10 removed 650 events, --min-item-count 50 removed 300 events. "
        "To keep more, lower --min-user-events and --min-item-count."
    )
    assert "The defaults follow the HierTCN paper (You et al., WWW 2019)" in hint


def test_small_share_hint_for_one_item_left():
    removed = {"min_item_count": (5, 100)}
    hint = small_share_hint(report_with(removed, events_after=900, items_after=1))
    assert hint is not None
    assert hint.startswith("the filters left a single item, keeping 900 of ")
    assert "--min-item-count 5 removed 100 events" in hint


def test_small_share_hint_for_one_user_left():
    removed = {"min_user_events": (3, 100)}
    hint = small_share_hint(report_with(removed, events_after=900, users_after=1))
    assert hint is not None
    assert hint.startswith("the filters left a single user, keeping 900 of ")


def test_small_share_hint_absent_for_large_share():
    removed = {"min_item_count": (50, 899)}
    assert small_share_hint(report_with(removed, events_after=101)) is None


def test_small_share_hint_absent_without_removals():
    report = report_with({}, events_after=1000, users_before=1, users_after=1)
    assert small_share_hint(report) is None


def test_small_share_hint_asks_to_raise_maximum():
    removed = {"max_user_events": (30, 950)}
    hint = small_share_hint(report_with(removed, events_after=50))
    assert hint is not None
    assert "To keep more, raise --max-user-events, or give 0 for no maximum" in hint
    assert "HierTCN paper" not in hint


def test_small_share_hint_names_paper_only_for_defaults():
    hint = small_share_hint(report_with({"min_item_count": (5, 950)}, events_after=50))
    assert hint is not None
    assert "HierTCN paper" not in hint


def test_small_share_hint_default_maximum_without_paper():
    hint = small_share_hint(report_with({"max_user_events": (1000, 950)}, events_after=50))
    assert hint is not None
    assert "raise --max-user-events" in hint
    assert "HierTCN paper" not in hint


def test_small_share_hint_logged_as_warning(tmp_path, caplog):
    rows = [("u", "a"), ("u", "a"), ("v", "b")]
    config = FilterConfig(min_item_count=2, min_user_events=0, max_user_events=None)
    with caplog.at_level("INFO", logger="hiertcn.data.filters"):
        filter_log(raw_from_rows(tmp_path, rows), config)
    warnings = [record.getMessage() for record in caplog.records if record.levelname == "WARNING"]
    assert warnings == [
        "the filters left a single user and a single item, keeping 2 of 3 events (66.7%), "
        "1 of 2 users and 1 of 2 items: "
        "--min-item-count 2 removed 1 event. To keep more, lower --min-item-count"
    ]


def test_no_hint_when_filters_keep_most(tmp_path, caplog):
    config = FilterConfig(min_item_count=2, min_user_events=2, max_user_events=None)
    with caplog.at_level("INFO", logger="hiertcn.data.filters"):
        filter_log(raw_from_rows(tmp_path, CASCADE), config)
    assert not [record for record in caplog.records if record.levelname == "WARNING"]
