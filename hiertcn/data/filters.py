"""Item and user filters, applied in rounds until no filter removes anything.

Each round first removes the items with fewer than `min_item_count` interactions. Then it
removes the users with fewer than `min_user_events` events, and then those with more than
`max_user_events` events. Such users are removed whole, not truncated. Removing items can push a
user below the minimum, which can in turn push an item below its minimum, hence the rounds.

The default thresholds are those of the HierTCN paper (You et al., WWW 2019) for its public log.
On a small log they can remove nearly everything, so `filter_log` then logs a warning that names
the filters that removed most.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from hiertcn.data.counts import count_noun
from hiertcn.data.readers import RawLog
from hiertcn.errors import DataError

logger = logging.getLogger(__name__)

# Filter names, and the command-line flag that sets each one.
FILTER_FLAGS = {
    "min_item_count": "--min-item-count",
    "min_user_events": "--min-user-events",
    "max_user_events": "--max-user-events",
}


# The filters kept a small share of the log when they kept fewer than this share of its events,
# or one item or one user of several. The share is a judgment, not a measured limit.
SMALL_SHARE = 0.1


@dataclass(frozen=True)
class FilterConfig:
    """Filter thresholds; 0 disables a minimum and None disables the maximum."""

    min_item_count: int = 50
    min_user_events: int = 10
    max_user_events: int | None = 1000

    def __post_init__(self) -> None:
        for flag, value in (
            ("--min-item-count", self.min_item_count),
            ("--min-user-events", self.min_user_events),
        ):
            if value < 0:
                raise DataError(f"{flag} {value} is invalid: use an integer >= 0")
        if self.max_user_events is not None and self.max_user_events < self.min_user_events:
            raise DataError(
                f"--max-user-events {self.max_user_events} is below --min-user-events "
                f"{self.min_user_events}: raise it, or give 0 for no maximum"
            )


@dataclass(frozen=True)
class FilterStep:
    """Removals of one filter in one round."""

    round: int
    filter: str
    value: int
    events_removed: int
    users_removed: int
    items_removed: int


@dataclass(frozen=True)
class FilterReport:
    """The removals of every filter in every round, and the size before and after.

    The user and item counts are None in a report saved before they were recorded.
    """

    steps: tuple[FilterStep, ...]
    rounds: int
    events_before: int
    events_after: int
    users_before: int | None = None
    users_after: int | None = None
    items_before: int | None = None
    items_after: int | None = None

    def to_dict(self) -> dict[str, object]:
        """Return a JSON-able form of the report."""
        return {
            "rounds": self.rounds,
            "events_before": self.events_before,
            "events_after": self.events_after,
            "users_before": self.users_before,
            "users_after": self.users_after,
            "items_before": self.items_before,
            "items_after": self.items_after,
            "steps": [asdict(step) for step in self.steps],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FilterReport:
        """Rebuild a report from the output of `to_dict`, of this or an earlier version."""
        return cls(
            steps=tuple(FilterStep(**step) for step in data["steps"]),
            rounds=data["rounds"],
            events_before=data["events_before"],
            events_after=data["events_after"],
            users_before=data.get("users_before"),
            users_after=data.get("users_after"),
            items_before=data.get("items_before"),
            items_after=data.get("items_after"),
        )

    def format_lines(self) -> list[str]:
        """Return one readable line per step that removed something, then a total line."""
        lines = [
            f"round {step.round}: {step.filter}={step.value} removed "
            f"{count_noun(step.events_removed, 'event')}, "
            f"{count_noun(step.users_removed, 'user')}, {count_noun(step.items_removed, 'item')}"
            for step in self.steps
            if step.events_removed
        ]
        kept = f"filters kept {self.events_after} of {count_noun(self.events_before, 'event')}"
        if self.users_before is not None and self.items_before is not None:
            kept += (
                f", {self.users_after} of {count_noun(self.users_before, 'user')} and "
                f"{self.items_after} of {count_noun(self.items_before, 'item')}"
            )
        lines.append(f"{kept} after {count_noun(self.rounds, 'round')}")
        return lines


def small_share_hint(report: FilterReport) -> str | None:
    """Return a hint that names the filters that removed most, when they kept a small share.

    None when the filters kept at least `SMALL_SHARE` of the events and more than one item and
    one user (unless the log had only one), or when no filter removed anything.
    """
    share = report.events_after / max(report.events_before, 1)
    one_left = any(
        after == 1 and before is not None and before > 1
        for before, after in (
            (report.items_before, report.items_after),
            (report.users_before, report.users_after),
        )
    )
    removed = _events_removed_by_filter(report)
    if not removed or (share >= SMALL_SHARE and not one_left):
        return None

    kept_counts = (
        f"{report.events_after} of {count_noun(report.events_before, 'event')} ({share:.1%})"
    )
    if report.users_before is not None and report.items_before is not None:
        kept_counts += (
            f", {report.users_after} of {count_noun(report.users_before, 'user')} and "
            f"{report.items_after} of {count_noun(report.items_before, 'item')}"
        )
    removals = ", ".join(
        f"{FILTER_FLAGS[name]} {value} removed {count_noun(events, 'event')}"
        for name, (value, events) in removed.items()
    )
    if share < SMALL_SHARE:
        lead = "the filters kept only"
    else:
        # The hint is due to a single user or item left, which the lead then names first.
        single = [
            noun
            for noun, before, after in (
                ("user", report.users_before, report.users_after),
                ("item", report.items_before, report.items_after),
            )
            if after == 1 and before is not None and before > 1
        ]
        lead = f"the filters left a single {' and a single '.join(single)}, keeping"
    hint = f"{lead} {kept_counts}: {removals}. {_fix(removed)}"
    # The note suggests lower minimums, so it applies only where a minimum kept its default.
    defaults = asdict(FilterConfig())
    if any(
        value == defaults[name] and name != "max_user_events"
        for name, (value, _) in removed.items()
    ):
        hint += (
            ". The defaults follow the HierTCN paper (You et al., WWW 2019), whose logs are "
            "large, so a small log needs lower values, e.g. --min-item-count 1 "
            "--min-user-events 1"
        )
    return hint


def _events_removed_by_filter(report: FilterReport) -> dict[str, tuple[int, int]]:
    """Return (value, events removed) of each filter that removed events, most removed first."""
    removed: dict[str, tuple[int, int]] = {}
    for step in report.steps:
        _, events = removed.get(step.filter, (step.value, 0))
        removed[step.filter] = (step.value, events + step.events_removed)
    ranked = sorted(removed.items(), key=lambda entry: entry[1][1], reverse=True)
    return {name: entry for name, entry in ranked if entry[1] > 0}


def _fix(removed: dict[str, tuple[int, int]]) -> str:
    """Say which flags to lower and which to raise to keep more of the log."""
    minimums = [FILTER_FLAGS[name] for name in removed if name != "max_user_events"]
    fixes = []
    if minimums:
        fixes.append(f"lower {' and '.join(minimums)}")
    if "max_user_events" in removed:
        fixes.append("raise --max-user-events, or give 0 for no maximum")
    return "To keep more, " + ", and ".join(fixes)


@dataclass(frozen=True)
class _CodedLog:
    """A raw log with the number of user and item codes. Each filter round counts the codes
    with `np.bincount` instead of sorting the id strings again."""

    raw: RawLog
    num_users: int  # codes run from 0 to num_users - 1, some of them unused after a filter
    num_items: int

    @classmethod
    def of(cls, raw: RawLog) -> _CodedLog:
        return cls(raw, len(raw.distinct_users), len(raw.distinct_items))

    @property
    def user_codes(self) -> np.ndarray:
        return self.raw.user_codes

    @property
    def item_codes(self) -> np.ndarray:
        return self.raw.item_codes

    def select(self, keep: np.ndarray) -> _CodedLog:
        return _CodedLog(self.raw.select(keep), self.num_users, self.num_items)

    def user_counts(self) -> np.ndarray:
        """Return the events of each user code `[num_users]`."""
        return np.bincount(self.user_codes, minlength=self.num_users)

    def item_counts(self) -> np.ndarray:
        """Return the events of each item code `[num_items]`."""
        return np.bincount(self.item_codes, minlength=self.num_items)

    def distinct(self) -> tuple[int, int]:
        """Return the numbers of users and items that still have events."""
        users = int(np.count_nonzero(self.user_counts()))
        return users, int(np.count_nonzero(self.item_counts()))


def _apply(
    log: _CodedLog,
    keep: np.ndarray,
    round_number: int,
    name: str,
    value: int,
    steps: list[FilterStep],
) -> _CodedLog:
    """Keep the events in `keep`, record the step, and raise DataError if nothing is left."""
    removed = int(len(keep) - np.count_nonzero(keep))
    users_before, items_before = log.distinct()
    filtered = log.select(keep) if removed else log
    users_after, items_after = filtered.distinct() if removed else (users_before, items_before)
    steps.append(
        FilterStep(
            round=round_number,
            filter=name,
            value=value,
            events_removed=removed,
            users_removed=users_before - users_after,
            items_removed=items_before - items_after,
        )
    )
    if len(filtered.raw) == 0:
        fix = "raise" if name == "max_user_events" else "lower"
        raise DataError(
            f"{log.raw.source}: the filter {name}={value} removed every remaining event in round "
            f"{round_number}: {fix} {FILTER_FLAGS[name]}"
        )
    return filtered


def filter_log(raw: RawLog, config: FilterConfig) -> tuple[RawLog, FilterReport]:
    """Apply the filters in rounds until a fixed point; return the kept events and the report."""
    steps: list[FilterStep] = []
    events_before = len(raw)
    log = _CodedLog.of(raw)
    users_before, items_before = log.distinct()
    round_number = 0
    while True:
        round_number += 1
        size_at_start = len(log.raw)

        keep = log.item_counts()[log.item_codes] >= config.min_item_count
        log = _apply(log, keep, round_number, "min_item_count", config.min_item_count, steps)

        keep = log.user_counts()[log.user_codes] >= config.min_user_events
        log = _apply(log, keep, round_number, "min_user_events", config.min_user_events, steps)

        if config.max_user_events is not None:
            keep = log.user_counts()[log.user_codes] <= config.max_user_events
            log = _apply(log, keep, round_number, "max_user_events", config.max_user_events, steps)

        if len(log.raw) == size_at_start:
            break
    raw = log.raw
    users_after, items_after = log.distinct()
    report = FilterReport(
        tuple(steps),
        round_number,
        events_before,
        len(raw),
        users_before=users_before,
        users_after=users_after,
        items_before=items_before,
        items_after=items_after,
    )
    for line in report.format_lines():
        logger.info("%s", line)
    hint = small_share_hint(report)
    if hint is not None:
        logger.warning("%s", hint)
    return raw, report
