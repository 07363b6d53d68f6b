"""Single-level TCN baseline that reads a user's whole history, event by event.

Shape letters: `B` rows, `L` events in a session, `W` carried history steps (the receptive field
minus one), `D` item-embedding size. Each step's input is the previous item's embedding and a
session-start indicator, as in the GRU baseline. The TCN has no recurrent state, so the carry
is the last `W` input steps of the history. Every batch therefore feeds [B, W + L, D + 1]
through the network, far more than HierTCN's [B, L, D + H], and the training benchmark
measures this difference.
"""

from __future__ import annotations

import torch
from torch import nn

from hiertcn.models.base import RecommenderModel, padded_bytes, select_rows
from hiertcn.models.config import ModelConfig
from hiertcn.models.embedding import ItemEmbedding
from hiertcn.models.registry import register_model
from hiertcn.models.regularization import batch_norm_factory
from hiertcn.models.sequence import (
    gather_window,
    last_item,
    previous_item_inputs,
    valid_positions,
)
from hiertcn.models.tcn import TemporalConvNet

TCN_BASELINE_DILATIONS = (1, 2, 4, 8, 16, 32)

TCNCarry = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


@register_model("tcn")
class TCNBaseline(RecommenderModel):
    """A causal TCN over the whole history.

    The carry is (history inputs [B, W, D + 1], history valid bool [B, W], last item [B, D]).
    Valid history steps are right-aligned, and invalid ones act as the TCN's zero padding.
    """

    config_fields = frozenset(
        {
            "embedding_dim",
            "tcn_channels",
            "kernel_size",
            "dilations",
            "dropout",
            "batch_norm",
            "batch_norm_steps",
            "item_vectors_path",
        }
    )
    default_dilations = TCN_BASELINE_DILATIONS

    def __init__(self, config: ModelConfig, num_items: int) -> None:
        super().__init__(config, num_items)
        dim = config.embedding_dim
        self.items = ItemEmbedding(num_items, dim, config.item_vectors_path)
        self.tcn = TemporalConvNet(
            dim + 1,
            config.tcn_channels,
            config.kernel_size,
            config.dilations_or(self.default_dilations),
            config.dropout,
            batch_norm_factory(config),
        )
        self.output = nn.Linear(config.tcn_channels, dim)

    @property
    def receptive_field(self) -> int:
        """Input steps that one prediction depends on."""
        return self.tcn.receptive_field

    def initial_carry(self, batch_size: int, device: torch.device | str) -> TCNCarry:
        """Return an empty history: zero inputs, all invalid, and a zero last item."""
        window = self.receptive_field - 1
        dim = self.config.embedding_dim
        history = torch.zeros(batch_size, window, dim + 1, device=device)
        history_valid = torch.zeros(batch_size, window, dtype=torch.bool, device=device)
        previous = torch.zeros(batch_size, dim, device=device)
        return history, history_valid, previous

    def item_embeddings(self) -> torch.Tensor:
        """Return the item table [N, D]."""
        return self.items.table()

    def forward(
        self, items: torch.Tensor, lengths: torch.Tensor, carry: TCNCarry
    ) -> tuple[torch.Tensor, TCNCarry]:
        """Predict every event of one session per row: queries [B, L, D] and the new carry."""
        history, history_valid, previous = carry
        window = history.shape[1]
        embedded = self.items(items)  # [B, L, D]
        inputs = previous_item_inputs(embedded, previous)  # [B, L, D + 1]

        sequence = torch.cat([history, inputs], dim=1)  # [B, W + L, D + 1]
        valid = torch.cat([history_valid, valid_positions(lengths, items.shape[1])], dim=1)
        self.last_input_bytes = padded_bytes(items, sequence, valid)
        hidden = self.tcn(sequence, valid)  # [B, W + L, C]
        queries = self.output(hidden[:, window:])  # [B, L, D]

        # The new history is the last W steps up to each row's last real event.
        end = window + lengths
        new_carry = (
            gather_window(sequence, end, window),
            gather_window(valid, end, window),
            last_item(embedded, lengths, previous),
        )
        return queries, select_rows(lengths > 0, new_carry, carry)  # type: ignore[return-value]
