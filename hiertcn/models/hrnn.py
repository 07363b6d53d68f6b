"""HRNN: hierarchical recurrent network of Quadrana et al. (RecSys 2017).

"Personalizing Session-based Recommendations with Hierarchical Recurrent Neural Networks".
Shape letters: `B` rows, `L` events in a session, `D` item-embedding size, `H` hidden size,
`G` GRU layers. Both levels are G-layer GRUs of H units. The user-level state c initializes the
session GRU through `tanh(Linear(c))` (the "init" connection), and the session GRU's last hidden
state (top layer) updates c when the session closes.

As in HierTCN, the user-level update of session i runs in the batch of session i + 1, so that the
user GRU is part of the graph of the loss that depends on it (see `HRNNCarry`).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from hiertcn.models.base import RecommenderModel, padded_bytes, select_rows
from hiertcn.models.config import ModelConfig
from hiertcn.models.embedding import ItemEmbedding
from hiertcn.models.registry import register_model
from hiertcn.models.regularization import gru_step


class HRNNCarry(NamedTuple):
    """The user-level state before the row's last `bptt_sessions` sessions, and their summaries.

    The summaries are carried, detached at batch edges, and the user GRU applies them again in
    each of the next batches. So the user GRU gets gradients through up to `bptt_sessions` steps,
    while the session GRU that made a summary gets them only from its own session's predictions.
    """

    state: torch.Tensor  # [B, G, H], the user-level state before the open sessions
    summary: torch.Tensor  # [B, K, H], each open session's last top-layer hidden state
    pending: torch.Tensor  # bool [B, K], true where the slot contains a session to apply


@register_model("hrnn")
class HRNN(RecommenderModel):
    """The HRNN model. Its carry is an `HRNNCarry`; `user_state(carry)` is the user-level state."""

    config_fields = frozenset(
        {
            "embedding_dim",
            "hidden_size",
            "gru_layers",
            "dropout",
            "gru_candidate_dropout",
            "item_vectors_path",
            "bptt_sessions",
        }
    )

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

    def initial_carry(self, batch_size: int, device: torch.device | str) -> HRNNCarry:
        """Return the learned user-level start state for `batch_size` new users, nothing open."""
        state = self.start_state.to(device).unsqueeze(0).expand(batch_size, -1, -1)
        return self.carry_from_state(state)

    def carry_from_state(self, state: torch.Tensor) -> HRNNCarry:
        """Return the carry of users with the user-level state `state` [B, G, H], nothing open."""
        rows, slots = state.shape[0], self.config.bptt_sessions
        summary = state.new_zeros(rows, slots, self.config.hidden_size)
        pending = torch.zeros(rows, slots, dtype=torch.bool, device=state.device)
        return HRNNCarry(state, summary, pending)

    def reset_carry(self, carry: HRNNCarry, new_user: torch.Tensor) -> HRNNCarry:
        """Return `carry` with the rows of new users (bool [B]) set to the start state."""
        fresh = self.initial_carry(len(new_user), new_user.device)
        return HRNNCarry(*select_rows(new_user, fresh, carry))

    def detach_carry(self, carry: HRNNCarry) -> HRNNCarry:  # type: ignore[override]
        """Return `carry` cut from the autograd graph (truncated backpropagation at batch edges)."""
        return HRNNCarry(*(part.detach() for part in carry))

    def user_state(self, carry: HRNNCarry) -> torch.Tensor:
        """Return the user-level state [B, G, H] after every session in `carry`."""
        return self._apply_open_sessions(carry)[1]

    def _apply_open_sessions(self, carry: HRNNCarry) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the user-level states [B, G, H] after the oldest open session and after all."""
        dropout = self.config.gru_candidate_dropout
        state, after_oldest = carry.state, carry.state
        for slot in range(carry.summary.shape[1]):
            closed = gru_step(self.user_gru, carry.summary[:, slot], state, dropout)
            state = select_rows(carry.pending[:, slot], closed, state)  # type: ignore[assignment]
            if slot == 0:
                after_oldest = state
        return after_oldest, state

    def item_embeddings(self) -> torch.Tensor:
        """Return the item table [N, D]."""
        return self.items.table()

    def forward(
        self, items: torch.Tensor, lengths: torch.Tensor, carry: HRNNCarry
    ) -> tuple[torch.Tensor, HRNNCarry]:
        """Predict every event of one session per row: queries [B, L, D] and the new carry."""
        batch_size, length = items.shape
        layers, hidden = self.config.gru_layers, self.config.hidden_size
        # Apply the row's open sessions. The oldest one leaves the carry below.
        after_oldest, state = self._apply_open_sessions(carry)  # [B, G, H] each
        embedded = self.items(items)  # [B, L, D]

        # L + 1 steps: the start token, then every item. Output j predicts item j, and the
        # state after the last real item is the session representation.
        start = self.start_token.expand(batch_size, 1, -1)
        inputs = torch.cat([start, embedded], dim=1)  # [B, L + 1, D]
        self.last_input_bytes = padded_bytes(items, inputs)
        session_start = torch.tanh(self.init_session(state[:, -1]))  # [B, G * H]
        session_start = session_start.view(batch_size, layers, hidden).transpose(0, 1)
        packed = pack_padded_sequence(
            inputs, (lengths + 1).cpu(), batch_first=True, enforce_sorted=False
        )
        outputs, final = self.session_gru(packed, session_start.contiguous())
        outputs, _ = pad_packed_sequence(outputs, batch_first=True, total_length=length + 1)
        queries = self.output(self.dropout(outputs[:, :length]))  # [B, L, D]

        summary = final[-1]  # [B, H], top layer after the last real item
        summaries = torch.cat([carry.summary[:, 1:], summary.unsqueeze(1)], dim=1)
        pending = torch.cat([carry.pending[:, 1:], (lengths > 0).unsqueeze(1)], dim=1)
        return queries, HRNNCarry(after_oldest, summaries, pending)
