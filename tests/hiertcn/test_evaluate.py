"""Tests of offline evaluation: which events count, pools, and the side-by-side table."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from hiertcn.evaluate import (
    EvaluationConfig,
    PoolCounts,
    describe_pools,
    evaluate_model,
    format_table,
    warn_single_item_pools,
)
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


# Events 0 and 5 are each user's first event and are not ranked. Row -1 is an impression id
# outside the vocabulary.
MIXED_IMPRESSIONS = [
    [1, -1],  # event 0, not ranked
    [2, 3, -1],  # pool {2, 3}
    [-1, -1],  # every id unknown: the whole catalog
    [4, -1, -1, -1],  # pool {4}, the target alone
    [],  # no list: the whole catalog
    [0],  # event 5, not ranked
    [-1, 2],  # pool {2} plus the target 1
]


def mixed_impressions_log():
    return make_log([[[1, 2, 3, 4, 5]], [[0, 1]]], num_items=6, impressions=MIXED_IMPRESSIONS)


@pytest.mark.parametrize("batch_size", [1, 32])
def test_pool_counts_mixed_log(batch_size):
    config = EvaluationConfig(batch_size=batch_size)
    result = evaluate_model(FixedQueryModel(6, oracle=False), mixed_impressions_log(), config)

    assert result.pools.to_dict() == {
        "kind": "mixed",
        "use_impressions": True,
        "catalog_items": 6,
        "impressions_events": 3,
        "catalog_events": 2,
        "single_item_pools": 1,
        "unknown_only_lists": 1,
        "unknown_impression_ids": 7,
    }
    # The counts describe the ranking, which they leave as it was.
    ranks = dict(zip(result.ranks.events.tolist(), result.ranks.ranks.tolist(), strict=True))
    assert ranks == {1: 2, 2: 6, 3: 1, 4: 6, 6: 2}


def test_pool_counts_without_impressions():
    config = EvaluationConfig(use_impressions=False)
    result = evaluate_model(FixedQueryModel(6, oracle=False), mixed_impressions_log(), config)

    assert result.pools.kind == "catalog"
    assert result.pools.catalog_events == 5
    assert result.pools.impressions_events == 0
    assert result.pools.single_item_pools == 0
    assert result.pools.unknown_impression_ids == 0
    assert result.pools.use_impressions is False


def test_pool_counts_log_without_impressions():
    log = random_log(num_users=5, num_items=9, seed=2)
    result = evaluate_model(FixedQueryModel(9, oracle=True), log)

    assert result.pools == PoolCounts(
        use_impressions=True, catalog_items=9, catalog_events=result.metrics["events"]
    )
    assert result.pools.kind == "catalog"


def test_pool_counts_only_impressions():
    impressions = [[1], [2, 3], [3, -1]]
    log = make_log([[[1, 2, 3]]], num_items=4, impressions=impressions)
    result = evaluate_model(FixedQueryModel(4, oracle=False), log)

    assert result.pools.kind == "impressions"
    assert result.pools.impressions_events == 2
    assert result.pools.unknown_impression_ids == 1


# Counts from a trivago log: 4 of its 7 impression pools held the clicked item alone.
TRIAL_POOLS = PoolCounts(
    use_impressions=True,
    catalog_items=135,
    impressions_events=7,
    catalog_events=375,
    single_item_pools=4,
    unknown_impression_ids=843,
)


@pytest.mark.parametrize(
    ("counts", "line"),
    [
        (
            TRIAL_POOLS,
            "pool: impressions for 7 events (4 with only the clicked item, ranked 1), the whole "
            "catalog of 135 items for 375 events; 843 impression ids outside the vocabulary "
            "were dropped",
        ),
        (
            PoolCounts(
                use_impressions=True,
                catalog_items=6,
                impressions_events=1,
                catalog_events=2,
                unknown_only_lists=1,
                unknown_impression_ids=1,
            ),
            "pool: impressions for 1 event, the whole catalog of 6 items for 2 events (1 whose "
            "shown items are all outside the vocabulary); 1 impression id outside the "
            "vocabulary was dropped",
        ),
        (
            PoolCounts(
                use_impressions=True,
                catalog_items=6,
                impressions_events=0,
                catalog_events=3,
                unknown_only_lists=3,
                unknown_impression_ids=5,
            ),
            "pool: the whole catalog of 6 items for 3 events (3 whose shown items are all "
            "outside the vocabulary); 5 impression ids outside the vocabulary were dropped",
        ),
        (
            PoolCounts(
                use_impressions=True, catalog_items=6, impressions_events=4, catalog_events=0
            ),
            "pool: impressions for 4 events",
        ),
        (
            PoolCounts(
                use_impressions=True, catalog_items=1682, impressions_events=0, catalog_events=8649
            ),
            "pool: the whole catalog of 1682 items for every event (no ranked event has "
            "impressions)",
        ),
        (
            PoolCounts(
                use_impressions=False, catalog_items=97, impressions_events=0, catalog_events=77
            ),
            "pool: the whole catalog of 97 items for every event (--no-impressions)",
        ),
    ],
)
def test_pool_line_describes_counts(counts, line):
    assert describe_pools(counts) == line


def test_single_item_pools_warned(caplog):
    with caplog.at_level("WARNING", logger="hiertcn.evaluate"):
        warn_single_item_pools(TRIAL_POOLS)
    (message,) = caplog.messages
    assert message.startswith("4 of 382 ranked events (1.0%) have an impression pool of only")
    assert "outside the vocabulary" in message
    assert "rank 1 whatever the model scores" in message
    assert "Compare with --no-impressions" in message


def test_no_warning_without_single_item_pools(caplog):
    with caplog.at_level("WARNING", logger="hiertcn.evaluate"):
        warn_single_item_pools(dataclasses.replace(TRIAL_POOLS, single_item_pools=0))
    assert caplog.messages == []
