"""Tests of MaxItem: hand-computed scores, history across sessions, causality, fixed outputs."""

from __future__ import annotations

import pytest
import torch

from hiertcn.models import ModelConfig, build_model
from hiertcn.models.maxitem import MaxItem

NUM_ITEMS = 12


@pytest.fixture(autouse=True)
def single_thread() -> None:
    torch.set_num_threads(1)


def tiny(seed: int = 0, recent_items: int = 2) -> MaxItem:
    torch.manual_seed(seed)
    config = ModelConfig(name="maxitem", embedding_dim=4, recent_items=recent_items)
    model = build_model(config, NUM_ITEMS)
    assert isinstance(model, MaxItem)
    return model.eval()


def test_maxitem_shapes() -> None:
    model = tiny(recent_items=3)
    items = torch.randint(0, NUM_ITEMS, (2, 5))

    queries, (rows, valid) = model(items, torch.tensor([5, 1]), model.initial_carry(2, "cpu"))

    assert queries.shape == (2, 5, 3, 4)
    assert model.score(queries, model.item_embeddings()).shape == (2, 5, NUM_ITEMS)
    assert rows.shape == (2, 3)
    assert valid.shape == (2, 3)


def test_maxitem_score_is_max_dot_product() -> None:
    model = tiny()
    with torch.no_grad():
        model.items.embedding.weight.copy_(torch.eye(NUM_ITEMS, 4) * 2.0 + 0.5)
    table = model.item_embeddings().detach()
    carry = model.initial_carry(1, "cpu")

    queries, carry = model(torch.tensor([[0, 1, 2]]), torch.tensor([3]), carry)
    scores = model.score(queries, table)

    # Before any item every query is zero, so every candidate scores 0.
    assert scores[0, 0].abs().sum().item() == 0
    # After item 0 alone, the score of candidate c is table[0] . table[c].
    torch.testing.assert_close(scores[0, 1], table @ table[0])
    # After items 0 and 1, the score is the larger of the two dot products.
    expected = torch.maximum(table @ table[0], table @ table[1])
    torch.testing.assert_close(scores[0, 2], expected)


def test_maxitem_window_reaches_previous_session() -> None:
    model = tiny()
    table = model.item_embeddings().detach()
    _, carry = model(torch.tensor([[3, 4, 5]]), torch.tensor([3]), model.initial_carry(1, "cpu"))

    queries, _ = model(torch.tensor([[6, 7]]), torch.tensor([2]), carry)

    torch.testing.assert_close(queries[0, 0], table[[4, 5]])
    torch.testing.assert_close(queries[0, 1], table[[5, 6]])


def test_maxitem_ignores_later_items() -> None:
    model = tiny()
    items = torch.randint(0, NUM_ITEMS, (2, 5))
    lengths = torch.tensor([5, 5])
    carry = model.initial_carry(2, "cpu")
    queries, _ = model(items, lengths, carry)

    for t in range(5):
        changed = items.clone()
        changed[:, t:] = (items[:, t:] + 1) % NUM_ITEMS
        changed_queries, _ = model(changed, lengths, carry)
        torch.testing.assert_close(changed_queries[:, : t + 1], queries[:, : t + 1])


def test_maxitem_empty_rows_keep_carry() -> None:
    model = tiny()
    _, carry = model(
        torch.tensor([[1, 2], [3, 4]]), torch.tensor([2, 2]), model.initial_carry(2, "cpu")
    )

    _, new_carry = model(torch.tensor([[5, 6], [7, 8]]), torch.tensor([2, 0]), carry)

    assert new_carry[0][1].tolist() == [3, 4]
    assert new_carry[0][0].tolist() == [5, 6]


# Recorded from this implementation under torch.manual_seed(0).
EXPECTED_SCORES = [0.699018, 0.164461, 0.748613, 0.510688]


def test_maxitem_fixed_outputs_under_seed() -> None:
    model = tiny(seed=0)
    queries, _ = model(torch.tensor([[1, 5, 9]]), torch.tensor([3]), model.initial_carry(1, "cpu"))

    scores = model.score(queries, model.item_embeddings())

    expected = torch.tensor(EXPECTED_SCORES)
    torch.testing.assert_close(scores[0, 2, :4], expected, atol=1e-5, rtol=0)
