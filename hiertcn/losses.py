"""Training losses on the valid (non-padding) positions of a batch, and negative samplers.

Shape letters: `P` valid positions, `N` items in the catalog, `D` item-embedding size, `M`
negatives per position, `I` impressions per position, `K` vectors per query. Queries are user
embeddings [P, D]. A model that ranks by several vectors (MaxItem) passes queries [P, K, D],
and the score of an item is then its largest dot product with the K vectors.

`build_loss(config)` returns a `Loss` that the training loop calls the same way for every loss:
`loss(queries, targets, table, impressions=...)`.

Accidental hits: the uniform and popularity samplers draw from the whole catalog, so a position
can draw its own target as a negative. With M uniform draws from N items that happens with
probability 1 - (1 - 1/N)^M, 0.20 for M = 100 and N = 442. `Loss` removes these hits, as
TensorFlow's sampled softmax does with `remove_accidental_hits`: every negative equal to its
position's target is masked out of hinge, BPR and NCE, and out of the negative count that hinge
and BPR average over. The draws themselves are unchanged, so the random stream, and with it
every other negative, stays the same.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from hiertcn.errors import ConfigError, InvalidFieldError

LOSS_NAMES = ("cross_entropy", "hinge", "bpr", "nce", "l2")
SAMPLER_NAMES = ("uniform", "popularity", "impressions")
PAIRWISE_LOSSES = ("hinge", "bpr", "nce")


@dataclass(frozen=True)
class LossConfig:
    """The training loss and, for the losses on sampled negatives, how negatives are drawn."""

    name: str = "cross_entropy"  # one of LOSS_NAMES
    margin: float = 1.0  # hinge margin, in score units
    negatives: int = 100  # M: negatives per position for hinge, bpr and nce
    sampler: str = "uniform"  # one of SAMPLER_NAMES
    # Cross-entropy computes at most this many scores at once ([chunk, N] blocks of [P, N]).
    chunk_scores: int = 1 << 24

    def __post_init__(self) -> None:
        if self.name not in LOSS_NAMES:
            raise ConfigError(f"unknown loss {self.name!r}: choose one of {', '.join(LOSS_NAMES)}")
        if self.sampler not in SAMPLER_NAMES:
            raise ConfigError(
                f"unknown negative sampler {self.sampler!r}: "
                f"choose one of {', '.join(SAMPLER_NAMES)}"
            )
        if self.negatives < 1:
            raise InvalidFieldError("loss", "negatives", self.negatives, "use an integer >= 1")
        if self.chunk_scores < 1:
            raise InvalidFieldError("loss", "chunk_scores", self.chunk_scores, "use a count >= 1")
        if not (math.isfinite(self.margin) and self.margin >= 0):
            raise InvalidFieldError("loss", "margin", self.margin, "use a finite margin >= 0")


# Scoring of queries against per-position candidates.


def candidate_scores(queries: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """Score queries [P, D] or [P, K, D] against per-position candidates [P, M, D] -> [P, M]."""
    if queries.dim() == 2:
        return torch.einsum("pd,pmd->pm", queries, candidates)
    return torch.einsum("pkd,pmd->pkm", queries, candidates).amax(dim=1)


def catalog_scores(queries: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Score queries [P, D] or [P, K, D] against the whole table [N, D] -> [P, N]."""
    scores = queries @ table.transpose(0, 1)
    return scores if queries.dim() == 2 else scores.amax(dim=1)


# Losses.


def cross_entropy(
    queries: torch.Tensor, targets: torch.Tensor, table: torch.Tensor, chunk_scores: int = 1 << 24
) -> torch.Tensor:
    """Return the mean softmax cross-entropy of the targets [P] over the full catalog [N, D].

    Positions are processed in chunks of about `chunk_scores / N` rows. With gradients enabled
    each chunk is checkpointed, so backward recomputes its scores and memory stays near one
    [chunk, N] block in place of [P, N].
    """
    positions = queries.shape[0]
    if positions == 0:
        return queries.sum() * 0.0
    chunk = max(1, chunk_scores // table.shape[0])
    total = queries.new_zeros(())
    for start in range(0, positions, chunk):
        query_chunk = queries[start : start + chunk]
        target_chunk = targets[start : start + chunk]
        if torch.is_grad_enabled():
            total = total + checkpoint(
                _chunk_cross_entropy, query_chunk, target_chunk, table, use_reentrant=False
            )
        else:
            total = total + _chunk_cross_entropy(query_chunk, target_chunk, table)
    return total / positions


def _chunk_cross_entropy(
    queries: torch.Tensor, targets: torch.Tensor, table: torch.Tensor
) -> torch.Tensor:
    logits = catalog_scores(queries, table)  # [chunk, N]
    return nn.functional.cross_entropy(logits, targets, reduction="sum")


def hinge(
    pos_scores: torch.Tensor,
    neg_scores: torch.Tensor,
    margin: float = 1.0,
    keep: torch.Tensor | None = None,
) -> torch.Tensor:
    """Return the hinge loss max(0, margin - pos + neg) for positions [P] and negatives [P, M].

    Each position's terms are averaged over its negatives, then the positions are averaged.
    `keep` (bool [P, M]) leaves out the negatives where it is False, as `mean_over_negatives`
    describes.
    """
    terms = torch.relu(margin - pos_scores.unsqueeze(1) + neg_scores)  # [P, M]
    return mean_over_negatives(terms, keep)


def bpr(
    pos_scores: torch.Tensor, neg_scores: torch.Tensor, keep: torch.Tensor | None = None
) -> torch.Tensor:
    """Return the BPR loss -log(sigmoid(pos - neg)) for positions [P] and negatives [P, M].

    It is averaged as `hinge` is, and `keep` (bool [P, M]) leaves out negatives in the same way.
    """
    terms = -nn.functional.logsigmoid(pos_scores.unsqueeze(1) - neg_scores)  # [P, M]
    return mean_over_negatives(terms, keep)


def mean_over_negatives(terms: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
    """Average terms [P, M] over each position's kept negatives, then over the positions.

    Without `keep` this is the plain mean. With it, a position's mean runs over its kept
    negatives only, so a removed negative changes neither the sum nor the count. A position
    with no kept negative has no term and is left out of the mean over positions. The result
    is 0 when no position keeps a negative.
    """
    if keep is None:
        return terms.mean()
    kept = keep.sum(dim=1)  # [P]
    sums = torch.where(keep, terms, torch.zeros_like(terms)).sum(dim=1)  # [P]
    per_position = sums / kept.clamp(min=1)
    return per_position.sum() / (kept > 0).sum().clamp(min=1)


def nce(
    pos_scores: torch.Tensor,
    neg_scores: torch.Tensor,
    pos_noise_log_prob: torch.Tensor | None = None,
    neg_noise_log_prob: torch.Tensor | None = None,
    keep: torch.Tensor | None = None,
) -> torch.Tensor:
    """Return the noise-contrastive estimation loss, averaged over the P positions.

    Each target is classified against its M sampled negatives with the logit
    `score - log(M * q(item))`, where q is the probability that the sampler draws the item.
    Without noise log-probabilities the correction is left out, which gives the plain
    negative-sampling loss `-log sigmoid(pos) - sum(log sigmoid(-neg))`.

    `keep` (bool [P, M]) drops the negatives where it is False from the sum. M stays the number
    of draws in the correction: after removing the hits on the target, the kept negatives are
    M(1 - q(target)) draws on average from q / (1 - q(target)), whose product is still M * q.
    """
    count = neg_scores.shape[1]
    pos_logits, neg_logits = pos_scores, neg_scores
    if pos_noise_log_prob is not None and neg_noise_log_prob is not None:
        pos_logits = pos_scores - (math.log(count) + pos_noise_log_prob)
        neg_logits = neg_scores - (math.log(count) + neg_noise_log_prob)
    pos_term = -nn.functional.logsigmoid(pos_logits)  # [P]
    neg_terms = -nn.functional.logsigmoid(-neg_logits)  # [P, M]
    if keep is not None:
        neg_terms = torch.where(keep, neg_terms, torch.zeros_like(neg_terms))
    return (pos_term + neg_terms.sum(dim=1)).mean()


def l2(queries: torch.Tensor, target_embeddings: torch.Tensor) -> torch.Tensor:
    """Return the mean squared Euclidean distance between queries [P, D] and targets [P, D].

    NOTE: with a learned item table this loss has no term that pushes other items away, so it
    can fall by shrinking every embedding toward one point without improving the ranking.
    Fixed pre-trained item vectors rule that out.
    """
    return (queries - target_embeddings).pow(2).sum(dim=-1).mean()


# Negative samplers.


def uniform_negatives(
    num_items: int,
    positions: int,
    count: int,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Draw `count` item rows per position uniformly, with replacement: int64 [P, M]."""
    return torch.randint(0, num_items, (positions, count), device=device, generator=generator)


def popularity_negatives(
    probabilities: torch.Tensor,
    positions: int,
    count: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Draw `count` item rows per position with the given probabilities [N]: int64 [P, M]."""
    if positions * count == 0:
        return torch.zeros(positions, count, dtype=torch.int64, device=probabilities.device)
    drawn = torch.multinomial(
        probabilities, positions * count, replacement=True, generator=generator
    )
    return drawn.view(positions, count)


def impression_negatives(
    impressions: torch.Tensor,
    targets: torch.Tensor,
    count: int,
    num_items: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Draw `count` negatives per position from the event's own impressions: int64 [P, M].

    impressions: int64 [P, I], padded with -1 (also the value of impressions outside the
    vocabulary). Each position draws uniformly, with replacement, among its impressions other
    than its target. A position without such impressions draws from the whole catalog instead.
    """
    positions = impressions.shape[0]
    usable = (impressions >= 0) & (impressions != targets.unsqueeze(1))  # [P, I]
    usable_count = usable.sum(dim=1)  # [P]
    # A stable sort moves each row's usable impressions to its front, in their logged order.
    order = torch.sort((~usable).to(torch.int8), dim=1, stable=True).indices
    compact = torch.gather(impressions, 1, order)  # [P, I]

    uniform = torch.rand(positions, count, device=impressions.device, generator=generator)
    slots = (uniform * usable_count.clamp(min=1).unsqueeze(1)).long()
    slots = torch.minimum(slots, (usable_count - 1).clamp(min=0).unsqueeze(1))
    if compact.shape[1] == 0:
        drawn = torch.zeros(positions, count, dtype=torch.int64, device=impressions.device)
    else:
        drawn = torch.gather(compact, 1, slots)
    fallback = uniform_negatives(num_items, positions, count, impressions.device, generator)
    return torch.where((usable_count > 0).unsqueeze(1), drawn, fallback)


class NegativeSampler:
    """Draws negatives with the configured sampler and returns their noise log-probabilities."""

    def __init__(
        self, name: str, count: int, num_items: int, item_counts: np.ndarray | None
    ) -> None:
        self.name = name
        self.count = count
        self.num_items = num_items
        self.log_probabilities: torch.Tensor | None = None
        if name == "popularity":
            if item_counts is None:
                raise ConfigError(
                    "the popularity sampler needs item counts: pass item_counts to build_loss"
                )
            counts = torch.as_tensor(np.asarray(item_counts, dtype=np.float64))
            if counts.shape != (num_items,) or counts.sum() <= 0:
                raise ConfigError(
                    f"item_counts of shape {tuple(counts.shape)} and total {float(counts.sum())} "
                    f"are invalid: give {num_items} non-negative counts with a positive total"
                )
            self.log_probabilities = (counts / counts.sum()).log().float()

    def sample(
        self,
        targets: torch.Tensor,
        impressions: torch.Tensor | None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Return negatives int64 [P, M] for the targets [P]."""
        positions = targets.shape[0]
        if self.name == "impressions":
            if impressions is None:
                raise ConfigError(
                    "the impressions sampler needs the events' impressions, and this data has "
                    "none: use --sampler uniform or popularity"
                )
            return impression_negatives(impressions, targets, self.count, self.num_items, generator)
        if self.name == "popularity":
            probabilities = self._log_probabilities(targets.device).exp()
            return popularity_negatives(probabilities, positions, self.count, generator)
        return uniform_negatives(self.num_items, positions, self.count, targets.device, generator)

    def noise_log_prob(self, items: torch.Tensor, impressions: torch.Tensor | None) -> torch.Tensor:
        """Return log q(item), the probability that `sample` draws each item: [P] or [P, M]."""
        if self.name == "popularity":
            return self._log_probabilities(items.device)[items]
        if self.name == "impressions" and impressions is not None:
            # NOTE: every impression of a row counts as equally likely here, the target included,
            # although `sample` never draws the target. This keeps the target's logit finite.
            per_row = (impressions >= 0).sum(dim=1).clamp(min=1).to(torch.float32)  # [P]
            log_prob = -per_row.log()
            return log_prob if items.dim() == 1 else log_prob.unsqueeze(1).expand_as(items)
        return torch.full(items.shape, -math.log(self.num_items), device=items.device)

    def _log_probabilities(self, device: torch.device) -> torch.Tensor:
        if self.log_probabilities is None:
            raise RuntimeError("the popularity sampler was built without item counts")
        if self.log_probabilities.device != device:
            self.log_probabilities = self.log_probabilities.to(device)
        return self.log_probabilities


# The loss that the training loop calls.


class Loss:
    """The configured loss, called as `loss(queries, targets, table, impressions=None)`.

    Arguments: queries [P, D] or [P, K, D], targets int64 [P] and the item table [N, D]. Only
    the impressions sampler needs `impressions`, int64 [P, I] padded with -1. The call returns
    the mean loss as a scalar tensor. The sampled losses (hinge, BPR, NCE) leave out every
    drawn negative that equals its position's target (an accidental hit).
    """

    def __init__(
        self, config: LossConfig, num_items: int, item_counts: np.ndarray | None = None
    ) -> None:
        self.config = config
        self.sampler: NegativeSampler | None = None
        if config.name in PAIRWISE_LOSSES:
            self.sampler = NegativeSampler(config.sampler, config.negatives, num_items, item_counts)

    def __call__(
        self,
        queries: torch.Tensor,
        targets: torch.Tensor,
        table: torch.Tensor,
        impressions: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Return the mean loss over the P positions."""
        name = self.config.name
        if name == "cross_entropy":
            return cross_entropy(queries, targets, table, self.config.chunk_scores)
        if name == "l2":
            if queries.dim() != 2:
                raise ConfigError(
                    "the l2 loss needs one user embedding per position, and this model gives "
                    f"queries of shape {tuple(queries.shape)}: choose another loss"
                )
            return l2(queries, table[targets])

        if self.sampler is None:
            raise RuntimeError(f"loss {name!r} was built without a negative sampler")
        negatives = self.sampler.sample(targets, impressions, generator)  # [P, M]
        # Accidental hits: a negative equal to its position's target is no negative.
        keep = negatives != targets.unsqueeze(1)  # [P, M]
        pos_scores = candidate_scores(queries, table[targets].unsqueeze(1)).squeeze(1)  # [P]
        neg_scores = candidate_scores(queries, table[negatives])  # [P, M]
        if name == "hinge":
            return hinge(pos_scores, neg_scores, self.config.margin, keep)
        if name == "bpr":
            return bpr(pos_scores, neg_scores, keep)
        return nce(
            pos_scores,
            neg_scores,
            self.sampler.noise_log_prob(targets, impressions),
            self.sampler.noise_log_prob(negatives, impressions),
            keep,
        )


def build_loss(config: LossConfig, num_items: int, item_counts: np.ndarray | None = None) -> Loss:
    """Build the loss that `config` names for a catalog of `num_items` items.

    `item_counts` (the training interactions of each item row, [N]) is needed by the popularity
    sampler only.
    """
    return Loss(config, num_items, item_counts)
