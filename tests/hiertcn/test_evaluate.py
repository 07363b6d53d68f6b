"""Tests of offline evaluation: which events count, pools, and the side-by-side table."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from hiertcn.evaluate import EvaluationConfig, evaluate_model, format_table
from hiertcn.models import ModelConfig, build_model
from tests.hiertcn.event_logs import make_log, random_log


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


class FixedQueryModel(nn.Module):
    """A model with one-hot item embeddings [N, N] whose queries do not depend on the history.

    `oracle=True` returns the one-hot of the item to predict itself (rank 1 everywhere);
    otherwise every query is zero (a constant scorer).
    """

    trainable = True

    def __init__(self, num_items: int, oracle: bool) -> None:
        super().__init__()
        self.num_items = num_items
        self.oracle = oracle

    def initial_carry(self, batch_size, device):
        return torch.zeros(batch_size, 1, device=device)

    def reset_carry(self, carry, new_user):
        return torch.where(new_user.unsqueeze(1), torch.zeros_like(carry), carry)

    def detach_carry(self, carry):
        return carry.detach()

    def forward(self, items, lengths, carry):
        queries = nn.functional.one_hot(items, self.num_items).float()  # [B, L, N]
        if not self.oracle:
            queries = torch.zeros_like(queries)
        return queries, carry + lengths.unsqueeze(1)

    def score(self, queries, candidates):
        return queries @ candidates.transpose(0, 1)

    def item_embeddings(self):
        return torch.eye(self.num_items)


def test_first_event_of_each_user_not_scored():
    log = make_log([[[1, 2], [3]], [[4]], [[5, 6, 7]]], num_items=8)
    result = evaluate_model(FixedQueryModel(8, oracle=True), log)
    assert result.metrics["events"] == log.num_events - log.num_users
    assert 0 not in result.ranks.past_events
    # The first event of a later session is scored.
    assert 2 in result.ranks.events.tolist()


def test_oracle_scores_rank_one():
    log = random_log(num_users=11, num_items=9, seed=3)
    result = evaluate_model(FixedQueryModel(9, oracle=True), log, EvaluationConfig(batch_size=4))
    assert result.metrics["mrr"] == pytest.approx(1.0)
    assert result.metrics["recall@1"] == pytest.approx(1.0)
    assert np.all(result.ranks.pool_sizes == 9)


def test_constant_scorer_not_mrr_one():
    log = random_log(num_users=11, num_items=9, seed=3)
    result = evaluate_model(FixedQueryModel(9, oracle=False), log, EvaluationConfig(batch_size=4))
    assert result.metrics["mrr"] == pytest.approx(1 / 9)
    assert result.metrics["mrp"] == pytest.approx(1.0)
    assert np.all(result.ranks.ranks == 9)


def test_non_target_events_not_scored():
    targets = [True, False, True, True, False]
    log = make_log([[[1, 2, 3]], [[4, 5]]], targets=targets)
    result = evaluate_model(FixedQueryModel(6, oracle=True), log)
    # User 0: event 0 is the first event, event 1 no target. User 1: event 3 first, 4 no target.
    assert result.ranks.events.tolist() == [2]


def test_impressions_form_the_pool():
    impressions = [[1, 2], [2, 3, 4], [0, 5, -1], [3], [1, 3, 3]]
    log = make_log([[[1, 2, 5]], [[3, 1]]], num_items=6, impressions=impressions)
    constant = evaluate_model(FixedQueryModel(6, oracle=False), log)
    # Event 1: pool {2, 3, 4}. Event 2: pool {0, 5}, -1 dropped. Event 4: pool {1, 3}.
    assert constant.ranks.events.tolist() == [1, 2, 4]
    assert constant.ranks.pool_sizes.tolist() == [3, 2, 2]
    assert constant.ranks.ranks.tolist() == [3, 2, 2]
    oracle = evaluate_model(FixedQueryModel(6, oracle=True), log)
    assert oracle.ranks.ranks.tolist() == [1, 1, 1]


def test_impressions_ignored_on_request():
    impressions = [[1, 2], [2, 3, 4], [0, 5, -1]]
    log = make_log([[[1, 2, 5]]], num_items=6, impressions=impressions)
    config = EvaluationConfig(use_impressions=False)
    result = evaluate_model(FixedQueryModel(6, oracle=False), log, config)
    assert result.ranks.pool_sizes.tolist() == [6, 6]


def test_chunked_scoring_matches_whole():
    log = random_log(num_users=7, num_items=12, seed=8)
    torch.manual_seed(0)
    config = ModelConfig(
        embedding_dim=8,
        hidden_size=8,
        gru_layers=1,
        tcn_channels=8,
        kernel_size=2,
        dilations=(1, 2),
    )
    model = build_model(config, 12)
    whole = evaluate_model(model, log, EvaluationConfig(batch_size=3, chunk_size=10_000))
    chunked = evaluate_model(model, log, EvaluationConfig(batch_size=3, chunk_size=2))
    assert np.array_equal(whole.ranks.ranks, chunked.ranks.ranks)
    assert whole.metrics == chunked.metrics


def test_evaluation_restores_training_mode():
    log = random_log(num_users=3, num_items=5, seed=0)
    model = FixedQueryModel(5, oracle=True)
    model.train()
    evaluate_model(model, log)
    assert model.training


def test_table_lists_models_side_by_side():
    rows = [
        {
            "model": "hiertcn",
            "recall@1": 0.1,
            "recall@5": 0.2,
            "recall@10": 0.3,
            "recall@20": 0.4,
            "mrr": 0.15,
            "mrp": 0.05,
            "events": 1234,
        },
        {
            "model": "most_popular",
            "recall@1": 0.0,
            "recall@5": 0.1,
            "recall@10": 0.2,
            "recall@20": 0.3,
            "mrr": 0.05,
            "mrp": 0.2,
            "events": 1234,
        },
    ]
    lines = format_table(rows).splitlines()
    assert (
        lines[0] == "| model | Recall@1 | Recall@5 | Recall@10 | Recall@20 | MRR | MRP | events |"
    )
    assert lines[2] == "| hiertcn | 0.1000 | 0.2000 | 0.3000 | 0.4000 | 0.1500 | 0.0500 | 1234 |"
    assert lines[3].startswith("| most_popular | 0.0000")


@pytest.mark.parametrize("name", ["hiertcn", "hrnn"])
def test_batch_cap_keeps_results(monkeypatch, name, address_space_cap):
    # The cap at the user count must give the ranks that the wider batch gives without it.
    log = random_log(num_users=7, num_items=12, seed=8)
    torch.manual_seed(0)
    config = ModelConfig(
        name=name,
        embedding_dim=8,
        hidden_size=8,
        gru_layers=2,
        tcn_channels=8,
        kernel_size=2,
        dilations=(1, 2),
        batch_norm=name == "hiertcn",
    )
    model = build_model(config, 12)
    capped = evaluate_model(model, log, EvaluationConfig(batch_size=2**58))
    monkeypatch.setattr("hiertcn.evaluate.capped_batch_size", lambda batch_size, _: batch_size)
    wide = evaluate_model(model, log, EvaluationConfig(batch_size=log.num_users + 9))
    assert np.array_equal(capped.ranks.events, wide.ranks.events)
    assert np.array_equal(capped.ranks.ranks, wide.ranks.ranks)
    assert capped.metrics == wide.metrics


def test_batch_wider_than_users_capped(address_space_cap):
    log = random_log(num_users=5, num_items=9, seed=2)
    model = FixedQueryModel(9, oracle=True)
    result = evaluate_model(model, log, EvaluationConfig(batch_size=2**58))
    assert result.metrics["events"] == log.num_events - log.num_users
