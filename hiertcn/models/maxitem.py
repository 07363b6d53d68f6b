"""MaxItem: the score of a candidate is its largest dot product with the user's last K items.

Shape letters: `B` rows, `L` events in a session, `K` recent items (`recent_items`), `C`
candidates, `D` item-embedding size. MaxItem only ranks and has no user embedding: its queries
are the K recent item embeddings [B, L, K, D], and `score` takes the maximum over K.
"""

from __future__ import annotations

import torch

from hiertcn.models.base import padded_bytes
from hiertcn.models.recent_items import RecentItems, RecentItemsModel
from hiertcn.models.registry import register_model


@register_model("maxitem")
class MaxItem(RecentItemsModel):
    """MaxItem over the last K items of the user's history, across sessions.

    While a user has fewer than K items, the empty slots repeat the most recent item, which
    leaves the maximum unchanged. Before the user's first item every query is zero, so all
    candidates tie.
    """

    def score(self, queries: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """Return the max over K of the dot products: queries [..., K, D], candidates [C, D]."""
        return (queries @ candidates.transpose(0, 1)).amax(dim=-2)

    def forward(
        self, items: torch.Tensor, lengths: torch.Tensor, carry: RecentItems
    ) -> tuple[torch.Tensor, RecentItems]:
        """Return the K item embeddings before each event [B, L, K, D] and the new carry."""
        window = self.config.recent_items
        length = items.shape[1]
        rows, valid, next_carry = self.with_recent(items, lengths, carry)

        # Event j of the session reads the window of positions j .. j + K - 1.
        row_windows = rows.unfold(1, window, 1)[:, :length]  # [B, L, K]
        valid_windows = valid.unfold(1, window, 1)[:, :length]  # [B, L, K]
        most_recent = row_windows[..., -1:].expand_as(row_windows)
        slots = torch.where(valid_windows, row_windows, most_recent)
        any_item = valid_windows[..., -1:].unsqueeze(-1)  # [B, L, 1, 1]
        queries = self.items(slots) * any_item.to(self.items.table().dtype)  # [B, L, K, D]
        self.last_input_bytes = padded_bytes(rows, queries)
        return queries, next_carry
