"""Tests of the losses: hand-computed values, gradient signs, samplers and `build_loss`."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hiertcn.errors import ConfigError
from hiertcn.losses import (
    LossConfig,
    bpr,
    build_loss,
    cross_entropy,
    hinge,
    impression_negatives,
    l2,
    nce,
    popularity_negatives,
    uniform_negatives,
)


@pytest.fixture(autouse=True)
def single_thread() -> None:
    torch.set_num_threads(1)


def log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


def log_sigmoid_tensor(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.logsigmoid(x)


TABLE = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])


def test_cross_entropy_hand_case() -> None:
    queries = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    targets = torch.tensor([0, 2])

    loss = cross_entropy(queries, targets, TABLE)

    # Scores are [1, 0, 0] and [0, 2, 0].
    first = -1.0 + math.log(math.e + 2.0)
    second = -0.0 + math.log(2.0 + math.exp(2.0))
    assert loss.item() == pytest.approx((first + second) / 2, abs=1e-6)


def test_cross_entropy_chunks_match_one_block() -> None:
    generator = torch.Generator().manual_seed(0)
    table = torch.randn(11, 4, generator=generator, requires_grad=True)
    queries = torch.randn(9, 4, generator=generator, requires_grad=True)
    targets = torch.randint(0, 11, (9,), generator=generator)

    whole = cross_entropy(queries, targets, table)
    whole_grads = torch.autograd.grad(whole, (queries, table))
    chunked = cross_entropy(queries, targets, table, chunk_scores=22)  # two positions per chunk
    chunked_grads = torch.autograd.grad(chunked, (queries, table))

    torch.testing.assert_close(chunked, whole)
    torch.testing.assert_close(chunked_grads[0], whole_grads[0])
    torch.testing.assert_close(chunked_grads[1], whole_grads[1])


def test_cross_entropy_gradient_raises_target_score() -> None:
    queries = torch.tensor([[0.3, -0.2]], requires_grad=True)

    cross_entropy(queries, torch.tensor([1]), TABLE).backward()

    # A gradient step moves the query toward the target embedding [0, 1].
    assert queries.grad is not None
    assert (queries.grad @ TABLE[1]).item() < 0


def test_hinge_hand_case() -> None:
    pos = torch.tensor([2.0, 0.5])
    neg = torch.tensor([[1.5, 3.0], [0.0, 0.2]])

    loss = hinge(pos, neg, margin=1.0)

    assert loss.item() == pytest.approx((0.5 + 2.0 + 0.5 + 0.7) / 4)


def test_hinge_gradient_signs() -> None:
    pos = torch.tensor([0.5], requires_grad=True)
    neg = torch.tensor([[0.2, -3.0]], requires_grad=True)

    hinge(pos, neg, margin=1.0).backward()

    assert pos.grad is not None and neg.grad is not None
    assert pos.grad.item() < 0
    assert neg.grad[0, 0].item() > 0
    assert neg.grad[0, 1].item() == 0  # beyond the margin: no gradient


def test_bpr_hand_case() -> None:
    loss = bpr(torch.tensor([1.0, 0.0]), torch.tensor([[0.0], [2.0]]))

    assert loss.item() == pytest.approx(-(log_sigmoid(1.0) + log_sigmoid(-2.0)) / 2, abs=1e-6)


def test_bpr_gradient_signs() -> None:
    pos = torch.tensor([0.3], requires_grad=True)
    neg = torch.tensor([[0.1, 0.9]], requires_grad=True)

    bpr(pos, neg).backward()

    assert pos.grad is not None and neg.grad is not None
    assert pos.grad.item() < 0
    assert bool((neg.grad > 0).all())


def test_nce_hand_case_without_noise_correction() -> None:
    loss = nce(torch.tensor([1.0]), torch.tensor([[0.5, -0.5]]))

    expected = -log_sigmoid(1.0) - log_sigmoid(-0.5) - log_sigmoid(0.5)
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_nce_hand_case_with_noise_correction() -> None:
    pos_log_q = torch.tensor([math.log(0.1)])
    neg_log_q = torch.tensor([[math.log(0.25), math.log(0.5)]])

    loss = nce(torch.tensor([1.0]), torch.tensor([[0.5, -0.5]]), pos_log_q, neg_log_q)

    # logit = score - log(M * q) with M = 2.
    pos_logit = 1.0 - math.log(2 * 0.1)
    neg_logits = [0.5 - math.log(2 * 0.25), -0.5 - math.log(2 * 0.5)]
    expected = -log_sigmoid(pos_logit) - sum(log_sigmoid(-x) for x in neg_logits)
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_nce_gradient_signs() -> None:
    pos = torch.tensor([0.3, -1.0], requires_grad=True)
    neg = torch.tensor([[0.1, 0.9], [0.0, -2.0]], requires_grad=True)

    nce(pos, neg).backward()

    assert pos.grad is not None and neg.grad is not None
    assert bool((pos.grad < 0).all())
    assert bool((neg.grad > 0).all())


def test_l2_hand_case() -> None:
    loss = l2(torch.tensor([[1.0, 2.0], [0.0, 0.0]]), torch.tensor([[0.0, 0.0], [0.0, 3.0]]))

    assert loss.item() == pytest.approx((5.0 + 9.0) / 2)


def test_l2_gradient_points_away_from_target() -> None:
    queries = torch.tensor([[1.0, -2.0]], requires_grad=True)

    l2(queries, torch.tensor([[0.0, 0.0]])).backward()

    assert queries.grad is not None
    assert queries.grad[0, 0].item() > 0
    assert queries.grad[0, 1].item() < 0


def test_uniform_negatives_in_catalog() -> None:
    negatives = uniform_negatives(7, 50, 4, generator=torch.Generator().manual_seed(0))

    assert negatives.shape == (50, 4)
    assert negatives.dtype == torch.int64
    assert int(negatives.min()) >= 0
    assert int(negatives.max()) <= 6


def test_popularity_negatives_follow_counts() -> None:
    probabilities = torch.tensor([0.0, 0.9, 0.1])

    negatives = popularity_negatives(probabilities, 1000, 5, torch.Generator().manual_seed(0))

    assert negatives.shape == (1000, 5)
    assert int((negatives == 0).sum()) == 0
    share = (negatives == 1).float().mean().item()
    assert 0.85 < share < 0.95


def test_impression_negatives_use_other_impressions() -> None:
    impressions = torch.tensor([[4, 5, 6, -1], [7, -1, -1, -1], [-1, -1, -1, -1]])
    targets = torch.tensor([5, 7, 1])

    negatives = impression_negatives(
        impressions, targets, 50, num_items=100, generator=torch.Generator().manual_seed(0)
    )

    assert set(negatives[0].tolist()) == {4, 6}
    # Rows without other impressions draw from the whole catalog.
    assert len(set(negatives[1].tolist())) > 2
    assert len(set(negatives[2].tolist())) > 2
    assert int(negatives.min()) >= 0


@pytest.mark.parametrize("name", ["cross_entropy", "hinge", "bpr", "nce", "l2"])
def test_build_loss_gives_finite_gradient(name: str) -> None:
    generator = torch.Generator().manual_seed(0)
    table = torch.randn(20, 4, generator=generator, requires_grad=True)
    queries = torch.randn(6, 4, generator=generator, requires_grad=True)
    targets = torch.randint(0, 20, (6,), generator=generator)
    loss = build_loss(LossConfig(name=name, negatives=3), num_items=20)

    value = loss(queries, targets, table, generator=generator)
    value.backward()

    assert value.dim() == 0
    assert torch.isfinite(value)
    assert queries.grad is not None
    assert torch.isfinite(queries.grad).all()


@pytest.mark.parametrize("sampler", ["uniform", "popularity", "impressions"])
def test_build_loss_with_each_sampler(sampler: str) -> None:
    generator = torch.Generator().manual_seed(0)
    table = torch.randn(10, 4, generator=generator)
    queries = torch.randn(3, 4, generator=generator, requires_grad=True)
    targets = torch.tensor([1, 2, 3])
    impressions = torch.tensor([[1, 4, 5], [2, 6, -1], [3, -1, -1]])
    counts = np.arange(10, dtype=np.float64)
    loss = build_loss(LossConfig(name="nce", sampler=sampler, negatives=4), 10, counts)

    value = loss(queries, targets, table, impressions=impressions, generator=generator)
    value.backward()

    assert torch.isfinite(value)
    assert queries.grad is not None


def test_several_vector_queries_score_by_max() -> None:
    queries = torch.tensor([[[1.0, 0.0], [0.0, 3.0]]])  # [P=1, K=2, D=2]

    loss = cross_entropy(queries, torch.tensor([1]), TABLE)

    # Scores are the max over the two vectors: [1, 3, 0].
    expected = -3.0 + math.log(math.e + math.exp(3.0) + 1.0)
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_l2_rejects_several_vector_queries() -> None:
    loss = build_loss(LossConfig(name="l2"), num_items=3)

    with pytest.raises(ConfigError, match="one user embedding per position"):
        loss(torch.zeros(1, 2, 2), torch.tensor([0]), TABLE)


def test_impressions_sampler_needs_impressions() -> None:
    loss = build_loss(LossConfig(name="hinge", sampler="impressions"), num_items=3)

    with pytest.raises(ConfigError, match="needs the events' impressions"):
        loss(torch.zeros(1, 2), torch.tensor([0]), TABLE)


def test_popularity_sampler_needs_counts() -> None:
    with pytest.raises(ConfigError, match="needs item counts"):
        build_loss(LossConfig(name="bpr", sampler="popularity"), num_items=3)


def test_loss_config_rejects_unknown_names() -> None:
    with pytest.raises(ConfigError, match="unknown loss 'softmax'"):
        LossConfig(name="softmax")
    with pytest.raises(ConfigError, match="unknown negative sampler 'hard'"):
        LossConfig(sampler="hard")
    with pytest.raises(ConfigError, match="negatives=0"):
        LossConfig(negatives=0)


# Accidental hits: sampled negatives equal to the position's target.


def fixed_negatives_loss(name: str, negatives: torch.Tensor, num_items: int = 6):
    """Build the `name` loss with a uniform sampler that always returns `negatives`."""
    loss = build_loss(LossConfig(name=name, negatives=negatives.shape[1]), num_items)
    assert loss.sampler is not None
    loss.sampler.sample = lambda targets, impressions, generator=None: negatives  # type: ignore[method-assign]
    return loss


def random_batch(positions: int, num_items: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    table = torch.randn(num_items, 4, generator=generator).requires_grad_()
    queries = torch.randn(positions, 4, generator=generator).requires_grad_()
    return table, queries


@pytest.mark.parametrize("name", ["hinge", "bpr"])
def test_pairwise_loss_ignores_accidental_hit(name: str) -> None:
    table, queries = random_batch(2)
    targets = torch.tensor([2, 4])

    # Position 0 drew its target 2 as its second negative. Position 1 drew no hit.
    with_hit = fixed_negatives_loss(name, torch.tensor([[0, 2, 5], [1, 3, 5]]))
    value = with_hit(queries, targets, table)
    grads = torch.autograd.grad(value, (queries, table))

    # The same batch without that negative: each position is averaged over its own negatives.
    first = fixed_negatives_loss(name, torch.tensor([[0, 5]]))(queries[:1], targets[:1], table)
    second = fixed_negatives_loss(name, torch.tensor([[1, 3, 5]]))(queries[1:], targets[1:], table)
    expected = (first + second) / 2
    expected_grads = torch.autograd.grad(expected, (queries, table))

    torch.testing.assert_close(value, expected)
    torch.testing.assert_close(grads[0], expected_grads[0])
    torch.testing.assert_close(grads[1], expected_grads[1])


def test_nce_ignores_accidental_hit() -> None:
    num_items = 6
    table, queries = random_batch(1, num_items)
    targets = torch.tensor([2])

    value = fixed_negatives_loss("nce", torch.tensor([[0, 2, 5]]), num_items)(
        queries, targets, table
    )
    grads = torch.autograd.grad(value, (queries, table))

    # The batch without negative 2. The correction log(M q) keeps M = 3, the number of draws.
    correction = math.log(3 / num_items)
    scores = queries[0] @ table.T  # [N]
    expected = -log_sigmoid_tensor(scores[2] - correction)
    for item in (0, 5):
        expected = expected - log_sigmoid_tensor(-(scores[item] - correction))
    expected_grads = torch.autograd.grad(expected, (queries, table))

    torch.testing.assert_close(value, expected)
    torch.testing.assert_close(grads[0], expected_grads[0])
    torch.testing.assert_close(grads[1], expected_grads[1])


def test_position_with_only_hits_left_out() -> None:
    table, queries = random_batch(2)
    targets = torch.tensor([2, 4])

    # Position 1 drew nothing but its target, so it has no pair to rank.
    only_hits = fixed_negatives_loss("hinge", torch.tensor([[0, 5], [4, 4]]))
    value = only_hits(queries, targets, table)
    first = fixed_negatives_loss("hinge", torch.tensor([[0, 5]]))(queries[:1], targets[:1], table)

    torch.testing.assert_close(value, first)


def test_pairwise_loss_zero_when_all_hit() -> None:
    table, queries = random_batch(1)
    loss = fixed_negatives_loss("bpr", torch.tensor([[3, 3]]))

    value = loss(queries, torch.tensor([3]), table)
    value.backward()

    assert value.item() == 0.0
    assert queries.grad is not None
    assert torch.count_nonzero(queries.grad) == 0


def test_uniform_sampler_hits_removed() -> None:
    # Two items and 50 draws: nearly every position draws its target many times.
    table, queries = random_batch(3, num_items=2)
    targets = torch.tensor([0, 1, 1])
    loss = build_loss(LossConfig(name="hinge", negatives=50, margin=1.0), num_items=2)

    value = loss(queries, targets, table, generator=torch.Generator().manual_seed(7))

    drawn = uniform_negatives(2, 3, 50, generator=torch.Generator().manual_seed(7))
    scores = queries @ table.T  # [P, N]
    per_position = []
    for position in range(3):
        target = int(targets[position])
        others = [int(item) for item in drawn[position] if int(item) != target]
        assert 0 < len(others) < 50
        margins = [1.0 - scores[position, target] + scores[position, item] for item in others]
        per_position.append(torch.relu(torch.stack(margins)).mean())
    torch.testing.assert_close(value, torch.stack(per_position).mean())
