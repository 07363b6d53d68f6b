"""Impressions as the candidate pool, on the real Trivago sample."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hiertcn.data.log import build_event_log
from hiertcn.data.readers import read_log
from hiertcn.evaluate import EvaluationConfig, evaluate_model
from hiertcn.models.config import ModelConfig
from hiertcn.models.registry import build_model


def _trivago_log(shared_data, name: str = "train_small.csv"):
    return build_event_log(read_log(shared_data / "trivago-sample" / name))


def _most_popular(log):
    model = build_model(ModelConfig(name="most_popular"), len(log.vocab))
    model.fit_counts(np.bincount(np.asarray(log.items), minlength=len(log.vocab)))
    return model


def test_clickouts_ranked_among_impressions(shared_data) -> None:
    torch.set_num_threads(1)
    log = _trivago_log(shared_data)
    offsets = np.asarray(log.impression_offsets)
    has_list = offsets[1:] > offsets[:-1]  # [E]
    result = evaluate_model(_most_popular(log), log, EvaluationConfig(use_impressions=True))
    ranks = result.ranks
    scored_with_list = has_list[ranks.events]

    assert scored_with_list.any()
    assert (~scored_with_list).any()
    # A clickout is ranked among its shown hotels that are in the vocabulary, plus the target.
    impressions = np.asarray(log.impressions)
    items = np.asarray(log.items)
    for event, size in zip(ranks.events, ranks.pool_sizes, strict=True):
        if not has_list[event]:
            continue
        shown = impressions[offsets[event] : offsets[event + 1]]
        expected = set(shown[shown >= 0].tolist()) | {int(items[event])}
        assert size == len(expected)
    # Events without a list are ranked among the whole catalog, never among a pool of one.
    assert (ranks.pool_sizes[~scored_with_list] == len(log.vocab)).all()


def test_without_impressions_every_pool_is_catalog(shared_data) -> None:
    torch.set_num_threads(1)
    log = _trivago_log(shared_data)
    result = evaluate_model(_most_popular(log), log, EvaluationConfig(use_impressions=False))
    assert (result.ranks.pool_sizes == len(log.vocab)).all()


@pytest.mark.parametrize("name", ["train_small.csv", "test_small.csv"])
def test_pool_counts_match_log(shared_data, name) -> None:
    torch.set_num_threads(1)
    log = _trivago_log(shared_data, name)
    result = evaluate_model(_most_popular(log), log, EvaluationConfig(batch_size=4))
    events = result.ranks.events
    offsets = np.asarray(log.impression_offsets)
    impressions = np.asarray(log.impressions)
    lists = [impressions[offsets[event] : offsets[event + 1]] for event in events]
    known = np.array([(shown >= 0).sum() for shown in lists])
    listed = np.array([len(shown) for shown in lists])

    pools = result.pools
    assert pools.impressions_events == (known > 0).sum()
    assert pools.catalog_events == (known == 0).sum()
    assert pools.unknown_only_lists == ((listed > 0) & (known == 0)).sum()
    assert pools.unknown_impression_ids == (listed - known).sum()
    assert pools.single_item_pools == ((known > 0) & (result.ranks.pool_sizes == 1)).sum()
    assert pools.unknown_impression_ids > 0
    assert pools.single_item_pools > 0
    assert pools.kind == "mixed"
