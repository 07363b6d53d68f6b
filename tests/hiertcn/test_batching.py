"""Tests of the queue-based mini-batch generator."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest

from hiertcn.batching import BatchConfig, BatchGenerator, assign_users_to_queues
from hiertcn.errors import ConfigError
from tests.hiertcn.event_logs import make_log, random_log


def collect_epoch(generator: BatchGenerator, epoch: int = 0) -> list:
    return list(generator.epoch(epoch))


def test_every_session_appears_once_per_epoch():
    log = random_log(num_users=23, num_items=30, seed=1)
    generator = BatchGenerator(log, BatchConfig(batch_size=4, seed=7))
    for epoch in range(3):
        seen = [s for batch in generator.epoch(epoch) for s in batch.sessions if s >= 0]
        assert sorted(seen) == list(range(log.num_sessions))


def test_sessions_of_user_stay_in_order_and_queue():
    log = random_log(num_users=17, num_items=20, seed=2)
    generator = BatchGenerator(log, BatchConfig(batch_size=3, seed=3))
    sessions_of_user = defaultdict(list)
    queue_of_user = defaultdict(set)
    for batch in generator.epoch(1):
        for row, (user, session) in enumerate(zip(batch.users, batch.sessions, strict=True)):
            if session >= 0:
                sessions_of_user[int(user)].append(int(session))
                queue_of_user[int(user)].add(row)
    for user in range(log.num_users):
        expected = list(log.user_sessions(user))
        assert sessions_of_user[user] == expected
        assert len(queue_of_user[user]) == 1


def test_rows_hold_the_session_items():
    log = random_log(num_users=9, num_items=15, seed=4)
    generator = BatchGenerator(log, BatchConfig(batch_size=4, seed=0))
    for batch in generator.epoch(0):
        for row, session in enumerate(batch.sessions):
            length = batch.lengths[row]
            if session < 0:
                assert length == 0
                continue
            expected = log.items[log.session_slice(int(session))]
            assert np.array_equal(batch.items[row, :length], expected)
            assert np.all(batch.items[row, length:] == 0)
            assert np.all(batch.events[row, length:] == -1)


def test_padding_only_to_longest_session_in_batch():
    log = make_log([[[1, 2, 3, 4, 5, 6, 7]], [[1, 2]], [[3], [4, 5, 6]]])
    generator = BatchGenerator(log, BatchConfig(batch_size=3, shuffle=False))
    batches = collect_epoch(generator)
    assert [batch.items.shape[1] for batch in batches] == [7, 3]
    assert [batch.lengths.tolist() for batch in batches] == [[7, 2, 1], [0, 0, 3]]
    for batch in batches:
        assert batch.items.shape[1] == batch.lengths.max()
        assert batch.items.dtype == np.int64


def test_new_user_flags_user_changes_only():
    # Two queues: user 0 (4 events) fills queue 0, users 1 and 2 share queue 1 in turn.
    log = make_log([[[1, 2], [3, 4]], [[5]], [[6], [7]]])
    generator = BatchGenerator(log, BatchConfig(batch_size=2, shuffle=False))
    batches = collect_epoch(generator)
    users = [batch.users.tolist() for batch in batches]
    new_user = [batch.new_user.tolist() for batch in batches]
    assert users == [[0, 1], [0, 2], [-1, 2]]
    assert new_user == [[True, True], [False, True], [False, False]]


def test_empty_queue_gives_empty_row():
    log = make_log([[[1], [2], [3]], [[4]]])
    generator = BatchGenerator(log, BatchConfig(batch_size=3, shuffle=False))
    batches = collect_epoch(generator)
    assert [batch.lengths.tolist() for batch in batches] == [[1, 1, 0], [1, 0, 0], [1, 0, 0]]
    assert batches[1].sessions.tolist() == [1, -1, -1]
    assert not batches[1].new_user[1]
    assert not batches[0].new_user[2]


def test_new_user_goes_to_least_loaded_queue():
    sessions = np.array([5, 1, 1, 3, 2])
    queues = assign_users_to_queues(sessions, np.arange(5), num_queues=2)
    # Loads: u0 -> q0 (5), u1 -> q1 (1), u2 -> q1 (2), u3 -> q1 (5), u4 -> q0 (tie, lowest).
    assert queues == [[0, 4], [1, 2, 3]]


def test_queues_balanced_by_sessions_not_events():
    # One user of many short sessions and two of one long session each, on two queues: by
    # events the first two users would share a queue, by sessions the long ones do.
    log = make_log([[[1]] * 4, [[1, 2, 3, 4, 5]], [[2, 3, 4, 5, 6]]])
    generator = BatchGenerator(log, BatchConfig(batch_size=2, shuffle=False))
    assert generator.num_batches() == 4
    assert [int((batch.lengths > 0).sum()) for batch in collect_epoch(generator)] == [2, 2, 1, 1]


def test_events_per_full_batch():
    log = make_log([[[1, 2], [3]], [[1, 2, 3]]])  # 6 events in 3 sessions
    generator = BatchGenerator(log, BatchConfig(batch_size=4))
    assert generator.events_per_full_batch == pytest.approx(8.0)


def test_shuffle_depends_on_seed_and_epoch():
    log = random_log(num_users=40, num_items=10, seed=5)
    generator = BatchGenerator(log, BatchConfig(batch_size=4, seed=11))
    again = BatchGenerator(log, BatchConfig(batch_size=4, seed=11))
    assert np.array_equal(generator.user_order(2), again.user_order(2))
    assert not np.array_equal(generator.user_order(1), generator.user_order(2))
    unshuffled = BatchGenerator(log, BatchConfig(batch_size=4, shuffle=False))
    assert np.array_equal(unshuffled.user_order(3), np.arange(40))


def test_targets_mask_follows_log():
    targets = [False, True, True, False, True]
    log = make_log([[[1, 2, 3]], [[4, 5]]], targets=targets)
    batch = collect_epoch(BatchGenerator(log, BatchConfig(batch_size=2, shuffle=False)))[0]
    assert batch.targets.tolist() == [[False, True, True], [False, True, False]]


def test_impressions_padded_per_event():
    impressions = [[1, 2], [3], [], [2, -1, 0]]
    log = make_log([[[1, 3]], [[2, 0]]], num_items=4, impressions=impressions)
    batch = collect_epoch(BatchGenerator(log, BatchConfig(batch_size=2, shuffle=False)))[0]
    assert batch.impressions.shape == (2, 2, 3)
    assert batch.impressions[0].tolist() == [[1, 2, -1], [3, -1, -1]]
    assert batch.impressions[1].tolist() == [[-1, -1, -1], [2, -1, 0]]


def test_no_impressions_gives_none():
    batch = next(BatchGenerator(random_log(3, 5, seed=0), BatchConfig(batch_size=2)).epoch(0))
    assert batch.impressions is None


def test_num_batches_matches_epoch():
    log = random_log(num_users=13, num_items=10, seed=6)
    generator = BatchGenerator(log, BatchConfig(batch_size=4, seed=1))
    assert generator.num_batches(2) == len(collect_epoch(generator, 2))


def test_batch_size_zero_rejected():
    with pytest.raises(ConfigError, match="batch size 0"):
        BatchConfig(batch_size=0)
