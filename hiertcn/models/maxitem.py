"""MaxItem: the score of a candidate is its largest dot product with the user's last K items.

Shape letters: `B` rows, `L` events in a session, `K` recent items (`recent_items`), `C`
candidates, `D` item-embedding size. MaxItem only ranks and has no user embedding: its queries
are the K recent item embeddings [B, L, K, D], and `score` takes the maximum over K.
"""

from __future__ import annotations

import torch

from hiertcn.models.base import RecommenderModel, padded_bytes
from hiertcn.models.config import ModelConfig
from hiertcn.models.embedding import ItemEmbedding
from hiertcn.models.registry import register_model
from hiertcn.models.sequence import gather_window, valid_positions

RecentItems = tuple[torch.Tensor, torch.Tensor]


@register_model("maxitem")
class MaxItem(RecommenderModel):
    """MaxItem over the last K items of the user's history, across sessions.

    The carry is (item rows int64 [B, K], valid bool [B, K]) with the valid rows right-aligned.
    While a user has fewer than K items, the empty slots repeat the most recent item, which
    leaves the maximum unchanged. Before the user's first item every query is zero, so all
    candidates tie. Only the item table can be trained.
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

    def score(self, queries: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """Return the max over K of the dot products: queries [..., K, D], candidates [C, D]."""
        return (queries @ candidates.transpose(0, 1)).amax(dim=-2)

    def forward(
        self, items: torch.Tensor, lengths: torch.Tensor, carry: RecentItems
    ) -> tuple[torch.Tensor, RecentItems]:
        """Return the K item embeddings before each event [B, L, K, D] and the new carry."""
        window = self.config.recent_items
        length = items.shape[1]
        recent, recent_valid = carry
        rows = torch.cat([recent, items], dim=1)  # [B, K + L]
        valid = torch.cat([recent_valid, valid_positions(lengths, length)], dim=1)

        # Event j of the session is at position K + j, so its window is positions j .. j + K - 1.
        row_windows = rows.unfold(1, window, 1)[:, :length]  # [B, L, K]
        valid_windows = valid.unfold(1, window, 1)[:, :length]  # [B, L, K]
        most_recent = row_windows[..., -1:].expand_as(row_windows)
        slots = torch.where(valid_windows, row_windows, most_recent)
        any_item = valid_windows[..., -1:].unsqueeze(-1)  # [B, L, 1, 1]
        queries = self.items(slots) * any_item.to(self.items.table().dtype)  # [B, L, K, D]
        self.last_input_bytes = padded_bytes(rows, queries)

        end = window + lengths
        return queries, (gather_window(rows, end, window), gather_window(valid, end, window))
