"""Cold-start and warm-start splits."""

from __future__ import annotations

import numpy as np
import pytest

from hiertcn.data.log import EventLog, build_event_log
from hiertcn.data.readers import ReaderConfig, read_log
from hiertcn.data.splits import SplitConfig, cold_start_split, split_log, warm_start_split
from hiertcn.data.synthetic import SyntheticConfig, generate_synthetic_log
from hiertcn.errors import DataError


@pytest.fixture(scope="module")
def synthetic_log(tmp_path_factory) -> EventLog:
    path = tmp_path_factory.mktemp("split") / "log.csv"
    config = SyntheticConfig(num_clusters=5, mean_session_length=4.0)
    generate_synthetic_log(num_users=50, num_items=100, seed=3, path=path, config=config)
    return build_event_log(read_log(path, ReaderConfig(format="csv")))


def test_cold_start_users_are_disjoint_and_complete(synthetic_log):
    split = cold_start_split(synthetic_log, 0.8, 0.1, seed=1)
    train, valid, test = (set(part.user_ids) for part in (split.train, split.valid, split.test))
    assert (len(train), len(valid), len(test)) == (40, 5, 5)
    assert not train & valid
    assert not train & test
    assert not valid & test
    assert train | valid | test == set(synthetic_log.user_ids)
    total = split.train.num_events + split.valid.num_events + split.test.num_events
    assert total == synthetic_log.num_events


def test_cold_start_parts_share_vocab_and_target_everything(synthetic_log):
    split = cold_start_split(synthetic_log, 0.8, 0.1, seed=1)
    for part in (split.train, split.valid, split.test):
        assert part.vocab is synthetic_log.vocab
        assert part.targets.all()


def test_cold_start_seed_decides_users(synthetic_log):
    first = cold_start_split(synthetic_log, 0.8, 0.1, seed=1)
    again = cold_start_split(synthetic_log, 0.8, 0.1, seed=1)
    other = cold_start_split(synthetic_log, 0.8, 0.1, seed=2)
    assert list(first.test.user_ids) == list(again.test.user_ids)
    assert list(first.test.user_ids) != list(other.test.user_ids)


def test_cold_start_rejects_too_few_users(synthetic_log):
    with pytest.raises(DataError, match="leaves a part without users"):
        cold_start_split(synthetic_log.subset_users([0, 1]), 0.8, 0.1, seed=0)


def test_warm_start_respects_time_order(synthetic_log):
    split = warm_start_split(synthetic_log, 0.8, 0.1)
    train_max = split.train.timestamps.max()
    valid_targets = split.valid.timestamps[split.valid.targets]
    test_targets = split.test.timestamps[split.test.targets]
    assert train_max < valid_targets.min()
    assert valid_targets.max() < test_targets.min()
    assert split.train.targets.all()


def test_warm_start_context_precedes_targets(synthetic_log):
    split = warm_start_split(synthetic_log, 0.8, 0.1)
    for part in (split.valid, split.test):
        for user in range(part.num_users):
            targets = part.targets[part.user_slice(user)]
            assert targets.any()
            assert not targets[0]  # every evaluated user has training context
            first_target = int(np.argmax(targets))
            assert targets[first_target:].all()


def test_warm_start_uses_same_users_and_vocab(synthetic_log):
    split = warm_start_split(synthetic_log, 0.8, 0.1)
    train_users = set(split.train.user_ids)
    assert set(split.valid.user_ids) <= train_users
    assert set(split.test.user_ids) <= train_users
    for part in (split.train, split.valid, split.test):
        assert part.vocab is synthetic_log.vocab


def test_warm_start_test_keeps_whole_history(synthetic_log):
    split = warm_start_split(synthetic_log, 0.8, 0.1)
    user = split.test.user_ids[0]
    row = list(synthetic_log.user_ids).index(user)
    full = synthetic_log.items[synthetic_log.user_slice(row)]
    np.testing.assert_array_equal(split.test.items[split.test.user_slice(0)], full)


def test_split_log_dispatches_on_kind(synthetic_log):
    split = split_log(synthetic_log, SplitConfig(kind="warm"))
    assert not split.test.targets.all()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "random"}, "unknown split 'random'"),
        ({"train_fraction": 0.0}, "strictly between 0 and 1"),
        ({"train_fraction": 0.9, "valid_fraction": 0.1}, "leaves nothing for the test part"),
    ],
)
def test_split_config_rejects_bad_values(kwargs, message):
    with pytest.raises(DataError, match=message):
        SplitConfig(**kwargs)


def test_warm_start_on_real_log(shared_data):
    path = shared_data / "taobao-userbehavior-head" / "UserBehavior_head.csv"
    log = build_event_log(read_log(path))
    split = warm_start_split(log, 0.8, 0.1)
    assert split.train.num_users > 700
    assert split.test.timestamps[split.test.targets].min() >= split.valid.timestamps.max()


def log_of_times(tmp_path, times: list[int]) -> EventLog:
    """Build a log of one user with one event at each of `times`."""
    lines = ["user,item,ts", *(f"u1,i{n},{ts}" for n, ts in enumerate(times))]
    path = tmp_path / "log.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return build_event_log(read_log(path, ReaderConfig(format="csv")))


def test_warm_start_too_few_events_names_the_count(tmp_path):
    log = log_of_times(tmp_path, [1, 2, 3, 4, 5])

    with pytest.raises(DataError) as raised:
        warm_start_split(log, 0.8, 0.1)

    message = str(raised.value)
    assert "t1=5 and t2=5 leave an empty part" in message
    assert "the log has only 5 events, so both quantiles fall on event 5 in time order" in message
    assert "share" not in message


def test_warm_start_shared_timestamp_counted(tmp_path):
    log = log_of_times(tmp_path, [1, 2, 3, 4, 5, 6, 7, 9, 9, 9])

    with pytest.raises(DataError) as raised:
        warm_start_split(log, 0.8, 0.1)

    assert "3 of the 10 events share the timestamp 9" in str(raised.value)


def test_warm_start_shared_earliest_timestamp(tmp_path):
    log = log_of_times(tmp_path, [1] * 9 + [2])

    with pytest.raises(DataError) as raised:
        warm_start_split(log, 0.8, 0.1)

    message = str(raised.value)
    assert "9 of the 10 events share the earliest timestamp 1, so no event lies before t1" in (
        message
    )


def test_warm_start_train_fraction_below_one_event(tmp_path):
    log = log_of_times(tmp_path, [1, 2, 3, 4, 5])

    with pytest.raises(DataError) as raised:
        warm_start_split(log, 0.1, 0.5)

    assert "the train fraction 0.1 of 5 events is less than one event" in str(raised.value)
