"""Tests of the ranking metrics: hand-computed ranks, ties, pools and context."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hiertcn.metrics import event_context, pessimistic_ranks, pool_rank, summarize_ranks
from tests.hiertcn.event_logs import SESSION_STEP, make_log


def test_ranks_hand_computed():
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.3], [2.0, 1.0, 3.0, 0.0]])
    ranks = pessimistic_ranks(scores, torch.tensor([2, 3]))
    assert ranks.tolist() == [2, 4]


def test_ties_rank_pessimistically():
    scores = torch.tensor([[0.5, 0.5, 0.5, 0.1]])
    assert pessimistic_ranks(scores, torch.tensor([0])).tolist() == [3]
    assert pessimistic_ranks(scores, torch.tensor([3])).tolist() == [4]


def test_constant_scorer_ranks_last():
    num_items = 50
    scores = torch.zeros(6, num_items)
    ranks = pessimistic_ranks(scores, torch.tensor([0, 1, 7, 20, 33, 49]))
    assert ranks.tolist() == [num_items] * 6
    summary = summarize_ranks(ranks.numpy(), np.full(6, num_items))
    assert summary["mrr"] == pytest.approx(1 / num_items)
    assert summary["mrr"] < 1.0
    assert summary["mrp"] == pytest.approx(1.0)
    assert summary["recall@20"] == 0.0


def test_summary_hand_computed():
    ranks = np.array([1, 3, 10, 25])
    pools = np.array([100, 100, 50, 25])
    summary = summarize_ranks(ranks, pools)
    assert summary["recall@1"] == pytest.approx(0.25)
    assert summary["recall@5"] == pytest.approx(0.5)
    assert summary["recall@10"] == pytest.approx(0.75)
    assert summary["recall@20"] == pytest.approx(0.75)
    assert summary["mrr"] == pytest.approx((1 + 1 / 3 + 1 / 10 + 1 / 25) / 4)
    assert summary["mrp"] == pytest.approx((0.01 + 0.03 + 0.2 + 1.0) / 4)
    assert summary["events"] == 4


def test_summary_empty_is_nan():
    summary = summarize_ranks(np.zeros(0), np.zeros(0))
    assert summary["events"] == 0
    assert math.isnan(summary["mrr"])


def test_pool_rank_among_impressions():
    scores = torch.tensor([0.0, 5.0, 4.0, 3.0, 9.0, 1.0])
    # Pool {1, 2, 3} with item 4 (the best overall) outside it: target 2 is second.
    assert pool_rank(scores, np.array([3, 1, 2]), target=2) == (2, 3)


def test_pool_rank_drops_unknown_and_duplicates():
    scores = torch.tensor([0.0, 5.0, 4.0, 3.0])
    assert pool_rank(scores, np.array([-1, 3, 3, -1, 2]), target=3) == (2, 2)


def test_pool_rank_adds_missing_target():
    scores = torch.tensor([0.0, 5.0, 4.0, 3.0])
    assert pool_rank(scores, np.array([1, 2]), target=0) == (3, 3)


def test_pool_rank_ties_pessimistic():
    scores = torch.ones(5)
    assert pool_rank(scores, np.array([0, 1, 2, 3]), target=1) == (4, 4)


def test_event_context_counts_history():
    log = make_log([[[1, 2], [3, 4, 5]], [[6]]])
    events = np.arange(log.num_events)
    sessions = np.repeat(np.arange(log.num_sessions), np.diff(log.session_offsets))
    users = np.repeat(np.arange(log.num_users), np.diff(log.user_offsets))
    past, position, gap = event_context(log, events, sessions, users)
    assert past.tolist() == [0, 1, 2, 3, 4, 0]
    assert position.tolist() == [0, 1, 0, 1, 2, 0]
    gap_seconds = SESSION_STEP + 60
    assert gap.tolist() == [-1, -1, gap_seconds, gap_seconds, gap_seconds, -1]
