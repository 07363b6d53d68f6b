"""Base of the models whose only per-user state is the user's last K items.

Shape letters: `B` rows, `L` events in a session, `K` recent items (`recent_items`), `N` items,
`D` item-embedding size.
"""

from __future__ import annotations

import torch

from hiertcn.models.base import RecommenderModel
from hiertcn.models.config import ModelConfig
from hiertcn.models.embedding import ItemEmbedding
from hiertcn.models.sequence import gather_window, valid_positions

# (item rows int64 [B, K], valid bool [B, K]), the valid rows right-aligned.
RecentItems = tuple[torch.Tensor, torch.Tensor]


class RecentItemsModel(RecommenderModel):
    """Model that reads the last K items of the user's history, across sessions.

    Only the item table is learned, and with fixed pre-trained vectors nothing is. Subclasses
    turn the K items before each event into queries in `forward`.
    """

    config_fields = frozenset({"embedding_dim", "item_vectors_path", "recent_items"})

    def __init__(self, config: ModelConfig, num_items: int) -> None:
        super().__init__(config, num_items)
        self.items = ItemEmbedding(num_items, config.embedding_dim, config.item_vectors_path)
        self.trainable = self.items.trainable

    def initial_carry(self, batch_size: int, device: torch.device | str) -> RecentItems:
        """Return no recent items."""
        window = self.config.recent_items
        rows = torch.zeros(batch_size, window, dtype=torch.int64, device=device)
        return rows, torch.zeros(batch_size, window, dtype=torch.bool, device=device)

    def item_embeddings(self) -> torch.Tensor:
        """Return the item table [N, D]."""
        return self.items.table()

    def with_recent(
        self, items: torch.Tensor, lengths: torch.Tensor, carry: RecentItems
    ) -> tuple[torch.Tensor, torch.Tensor, RecentItems]:
        """Return the K carried items followed by the session, rows and valid [B, K + L].

        Event j of the session is at position K + j, so the K items before it are at positions
        j .. j + K - 1. The third value is the carry after the session.
        """
        window = self.config.recent_items
        recent, recent_valid = carry
        rows = torch.cat([recent, items], dim=1)
        valid = torch.cat([recent_valid, valid_positions(lengths, items.shape[1])], dim=1)
        end = window + lengths
        return rows, valid, (gather_window(rows, end, window), gather_window(valid, end, window))
