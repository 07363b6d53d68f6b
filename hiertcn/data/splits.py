"""Train, validation and test splits of an `EventLog`; all three share the vocabulary.

- Cold start: the users are shuffled with a seed and cut into train, validation and test users
  (80/10/10 by default). Every event of a part is a target, so test users are never seen in
  training.
- Warm start: the same users in every part, cut by time. `t1` and `t2` are the time quantiles of
  the whole log at `train_fraction` and `train_fraction + valid_fraction`. Train contains the events
  before `t1`. Validation contains each user's events before `t2`, where those in `[t1, t2)` are
  targets and the earlier ones are context (targets False). Test contains each user's whole history,
  where the events from `t2` on are targets and all earlier events are context. Validation and test
  keep only users with at least one target and at least one training event, so every evaluated
  user was seen in training.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from hiertcn.data.counts import count_noun
from hiertcn.data.log import EventLog
from hiertcn.errors import DataError

logger = logging.getLogger(__name__)

SPLIT_KINDS = ("cold", "warm")


@dataclass(frozen=True)
class SplitConfig:
    """How to split: `kind` is "cold" or "warm"; test gets the fraction left after the other two."""

    kind: str = "cold"
    seed: int = 0
    train_fraction: float = 0.8
    valid_fraction: float = 0.1

    def __post_init__(self) -> None:
        if self.kind not in SPLIT_KINDS:
            raise DataError(f"unknown split {self.kind!r}: use one of {', '.join(SPLIT_KINDS)}")
        if not (0 < self.train_fraction < 1 and 0 < self.valid_fraction < 1):
            raise DataError(
                f"split fractions must lie strictly between 0 and 1, got train "
                f"{self.train_fraction} and validation {self.valid_fraction}"
            )
        if self.train_fraction + self.valid_fraction >= 1:
            raise DataError(
                f"train fraction {self.train_fraction} plus validation fraction "
                f"{self.valid_fraction} leaves nothing for the test part: make the sum below 1"
            )


@dataclass(frozen=True, eq=False)
class Split:
    """The three parts of a split."""

    train: EventLog
    valid: EventLog
    test: EventLog


def split_log(log: EventLog, config: SplitConfig) -> Split:
    """Split `log` into train, validation and test parts by the rule of `config.kind`."""
    if config.kind == "cold":
        split = cold_start_split(log, config.train_fraction, config.valid_fraction, config.seed)
    else:
        split = warm_start_split(log, config.train_fraction, config.valid_fraction)
    for name, part in (("train", split.train), ("valid", split.valid), ("test", split.test)):
        logger.info(
            "%s split %s: %s, %s, %s, %s",
            config.kind,
            name,
            count_noun(part.num_users, "user"),
            count_noun(part.num_sessions, "session"),
            count_noun(part.num_events, "event"),
            count_noun(part.num_targets, "target"),
        )
    return split


def cold_start_split(
    log: EventLog, train_fraction: float = 0.8, valid_fraction: float = 0.1, seed: int = 0
) -> Split:
    """Shuffle the users with `seed` and cut them into disjoint train, validation and test users."""
    num_users = log.num_users
    num_train = round(num_users * train_fraction)
    num_valid = round(num_users * valid_fraction)
    if num_train < 1 or num_valid < 1 or num_users - num_train - num_valid < 1:
        raise DataError(
            f"a cold-start split of {num_users} users at {train_fraction}/{valid_fraction} leaves "
            "a part without users: use more users or change the fractions"
        )
    order = np.random.default_rng(seed).permutation(num_users)
    parts = np.split(order, [num_train, num_train + num_valid])
    train, valid, test = (log.subset_users(part) for part in parts)
    return Split(train=train, valid=valid, test=test)


def _quantile_index(num_events: int, fraction: float) -> int:
    """Return the 0-based index, in time order, of the event at `fraction` of `num_events`."""
    return min(int(np.floor(fraction * num_events)), num_events - 1)


def _time_quantile(timestamps: np.ndarray, fraction: float) -> int:
    """Return the timestamp at `fraction` of the sorted event times."""
    ordered = np.sort(np.asarray(timestamps))
    return int(ordered[_quantile_index(len(ordered), fraction)])


def _empty_part_reason(
    timestamps: np.ndarray, train_fraction: float, valid_fraction: float, t1: int, t2: int
) -> str:
    """Explain why the quantiles `t1` and `t2` leave the train or the validation part empty."""
    num_events = len(timestamps)
    first = _quantile_index(num_events, train_fraction)
    second = _quantile_index(num_events, train_fraction + valid_fraction)
    if t1 == t2 and first == second:
        return (
            f"the log has only {count_noun(num_events, 'event')}, so both quantiles fall on "
            f"event {first + 1} in time order: use a log with more events, or change the "
            "split fractions"
        )
    if t1 == t2:
        shared = int(np.count_nonzero(timestamps == t1))
        return (
            f"{shared} of the {num_events} events share the timestamp {t1}, so no event lies "
            "between the quantiles: change the split fractions"
        )
    if first == 0:
        return (
            f"the train fraction {train_fraction} of {count_noun(num_events, 'event')} is "
            "less than one event: raise --train-fraction or use a log with more events"
        )
    shared = int(np.count_nonzero(timestamps == t1))
    return (
        f"{shared} of the {num_events} events share the earliest timestamp {t1}, so no event "
        "lies before t1: raise --train-fraction"
    )


def _users_with(log: EventLog, mask: np.ndarray) -> np.ndarray:
    """Return a bool `[U]`: whether the user has at least one event where `mask` `[E]` is true.

    Every user of an `EventLog` has at least one event, so the reduction ranges are never empty.
    """
    return np.logical_or.reduceat(mask, np.asarray(log.user_offsets[:-1]))


def warm_start_split(
    log: EventLog, train_fraction: float = 0.8, valid_fraction: float = 0.1
) -> Split:
    """Split every user's events by time at the log-wide quantiles `t1` and `t2`."""
    timestamps = np.asarray(log.timestamps)
    t1 = _time_quantile(timestamps, train_fraction)
    t2 = _time_quantile(timestamps, train_fraction + valid_fraction)
    in_train = timestamps < t1
    if not in_train.any() or t1 == t2:
        reason = _empty_part_reason(timestamps, train_fraction, valid_fraction, t1, t2)
        raise DataError(
            f"the warm-start time quantiles t1={t1} and t2={t2} leave an empty part, because "
            f"{reason}"
        )
    seen_user = _users_with(log, in_train)
    seen_event = np.repeat(seen_user, np.diff(log.user_offsets))

    valid_targets = (timestamps >= t1) & (timestamps < t2) & seen_event
    valid_users = seen_user & _users_with(log, valid_targets)
    valid_keep = (timestamps < t2) & np.repeat(valid_users, np.diff(log.user_offsets))

    test_targets = (timestamps >= t2) & seen_event
    test_users = seen_user & _users_with(log, test_targets)
    test_keep = np.repeat(test_users, np.diff(log.user_offsets))

    if not valid_users.any() or not test_users.any():
        raise DataError(
            f"the warm-start split at t1={t1}, t2={t2} leaves no user with both training "
            "events and validation or test targets: change the split fractions"
        )
    unseen = int(log.num_users - np.count_nonzero(seen_user))
    if unseen:
        logger.info(
            "warm start: left out %s with no event before t1=%d",
            count_noun(unseen, "user"),
            t1,
        )
    return Split(
        train=log.select_events(in_train, targets=np.ones_like(in_train)),
        valid=log.select_events(valid_keep, targets=valid_targets),
        test=log.select_events(test_keep, targets=test_targets),
    )
