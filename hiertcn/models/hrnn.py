"""HRNN: hierarchical recurrent network of Quadrana et al. (RecSys 2017).

"Personalizing Session-based Recommendations with Hierarchical Recurrent Neural Networks".
Shape letters: `B` rows, `L` events in a session, `D` item-embedding size, `H` hidden size,
`G` GRU layers. Both levels are G-layer GRUs of H units. The user-level state c initializes the
session GRU through `tanh(Linear(c))` (the "init" connection), and the session GRU's last hidden
state (top layer) updates c when the session closes.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from hiertcn.models.base import RecommenderModel, padded_bytes, select_rows
from hiertcn.models.config import ModelConfig
from hiertcn.models.embedding import ItemEmbedding
from hiertcn.models.registry import register_model
from hiertcn.models.regularization import gru_step


@register_model("hrnn")
class HRNN(RecommenderModel):
    """The HRNN model. Its carry is the user-level GRU state [B, G, H] before the session."""

    def __init__(self, config: ModelConfig, num_items: int) -> None:
        super().__init__(config, num_items)
        dim, hidden, layers = config.embedding_dim, config.hidden_size, config.gru_layers
        self.items = ItemEmbedding(num_items, dim, config.item_vectors_path)
        self.user_gru = nn.GRU(hidden, hidden, num_layers=layers, batch_first=True)
        self.session_gru = nn.GRU(dim, hidden, num_layers=layers, batch_first=True)
        self.init_session = nn.Linear(hidden, layers * hidden)
        self.start_state = nn.Parameter(torch.zeros(layers, hidden))  # [G, H]
        self.start_token = nn.Parameter(torch.randn(dim) * dim**-0.5)  # [D]
        self.dropout = nn.Dropout(config.dropout)
        self.output = nn.Linear(hidden, dim)

    def initial_carry(self, batch_size: int, device: torch.device | str) -> torch.Tensor:
        """Return the learned user-level start state for `batch_size` new users [B, G, H]."""
        return self.start_state.to(device).unsqueeze(0).expand(batch_size, -1, -1)

    def item_embeddings(self) -> torch.Tensor:
        """Return the item table [N, D]."""
        return self.items.table()

    def forward(
        self, items: torch.Tensor, lengths: torch.Tensor, carry: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Predict every event of one session per row: queries [B, L, D] and the new carry."""
        batch_size, length = items.shape
        layers, hidden = self.config.gru_layers, self.config.hidden_size
        embedded = self.items(items)  # [B, L, D]

        # L + 1 steps: the start token, then every item. Output j predicts item j, and the
        # state after the last real item is the session representation.
        start = self.start_token.expand(batch_size, 1, -1)
        inputs = torch.cat([start, embedded], dim=1)  # [B, L + 1, D]
        self.last_input_bytes = padded_bytes(items, inputs)
        session_start = torch.tanh(self.init_session(carry[:, -1]))  # [B, G * H]
        session_start = session_start.view(batch_size, layers, hidden).transpose(0, 1)
        packed = pack_padded_sequence(
            inputs, (lengths + 1).cpu(), batch_first=True, enforce_sorted=False
        )
        outputs, final = self.session_gru(packed, session_start.contiguous())
        outputs, _ = pad_packed_sequence(outputs, batch_first=True, total_length=length + 1)
        queries = self.output(self.dropout(outputs[:, :length]))  # [B, L, D]

        session_summary = final[-1]  # [B, H], top layer after the last real item
        closed = gru_step(self.user_gru, session_summary, carry, self.config.gru_candidate_dropout)
        return queries, select_rows(lengths > 0, closed, carry)  # type: ignore[return-value]
