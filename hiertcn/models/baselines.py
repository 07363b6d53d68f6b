"""Baselines without a learned user model: moving average of recent items, and most popular.

Shape letters: `B` rows, `L` events in a session, `K` recent items, `N` items, `D` item-embedding
size, `T` positions and `F` features of a window input.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from hiertcn.errors import ConfigError
from hiertcn.models.base import RecommenderModel, padded_bytes
from hiertcn.models.config import ModelConfig
from hiertcn.models.recent_items import RecentItems, RecentItemsModel
from hiertcn.models.registry import register_model


@register_model("moving_average")
class MovingAverage(RecentItemsModel):
    """User embedding = mean embedding of the user's last K items (`recent_items`).

    The K items may reach back into earlier sessions, and the averages always use the current
    item table. Before the user's first item the query is zero.
    """

    def forward(
        self, items: torch.Tensor, lengths: torch.Tensor, carry: RecentItems
    ) -> tuple[torch.Tensor, RecentItems]:
        """Average the K items before each event: queries [B, L, D] and the new carry."""
        window = self.config.recent_items
        length = items.shape[1]
        rows, valid, next_carry = self.with_recent(items, lengths, carry)
        weights = valid.unsqueeze(-1).to(self.items.table().dtype)  # [B, K + L, 1]
        embedded = self.items(rows) * weights  # [B, K + L, D]
        self.last_input_bytes = padded_bytes(rows, embedded)

        # Event j of the session averages the window of positions j .. j + K - 1.
        sums = _window_sums(embedded, window)[:, :length]  # [B, L, D]
        counts = _window_sums(weights, window)[:, :length]  # [B, L, 1]
        return sums / counts.clamp(min=1.0), next_carry


def _window_sums(values: torch.Tensor, window: int) -> torch.Tensor:
    """Return sums over windows of `window` positions: [B, T, F] -> [B, T - window + 1, F]."""
    pooled = nn.functional.avg_pool1d(values.transpose(1, 2), window, stride=1)
    return pooled.transpose(1, 2) * window


@register_model("most_popular")
class MostPopular(RecommenderModel):
    """Baseline that scores every item by its interaction count in the training data.

    The model keeps the interface of the other models: the item table is the count column [N, 1]
    and every query is the 1-vector [1], so `score` returns the counts. Call `fit_counts` once
    before scoring; the counts are a buffer and are saved in checkpoints.
    """

    trainable = False

    def __init__(self, config: ModelConfig, num_items: int) -> None:
        super().__init__(config, num_items)
        self.register_buffer("counts", torch.zeros(num_items, 1))

    def fit_counts(self, item_counts: Sequence[float] | np.ndarray | torch.Tensor) -> None:
        """Store the interaction count [N] of each item row."""
        counts = torch.as_tensor(np.asarray(item_counts, dtype=np.float32))
        if counts.shape != (self.num_items,):
            raise ConfigError(
                f"item_counts has shape {tuple(counts.shape)}, expected ({self.num_items},): "
                "give one count per item row of the vocabulary"
            )
        self.counts.copy_(counts.unsqueeze(1).to(self.counts.device))

    def initial_carry(self, batch_size: int, device: torch.device | str) -> torch.Tensor:
        """Return an empty carry [B, 0]: the model keeps nothing per user."""
        return torch.zeros(batch_size, 0, device=device)

    def reset_carry(self, carry: torch.Tensor, new_user: torch.Tensor) -> torch.Tensor:
        """Return `carry` unchanged, because there is no per-user state."""
        return carry

    def item_embeddings(self) -> torch.Tensor:
        """Return the count column [N, 1]."""
        return self.counts

    def forward(
        self, items: torch.Tensor, lengths: torch.Tensor, carry: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the all-ones queries [B, L, 1] and the unchanged carry."""
        self.last_input_bytes = padded_bytes(items)
        queries = torch.ones(*items.shape, 1, dtype=self.counts.dtype, device=items.device)
        return queries, carry
