"""Single-level GRU baseline that reads a user's whole history, event by event.

Shape letters: `B` rows, `L` events in a session, `D` item-embedding size, `H` hidden size,
`G` GRU layers. The input of each step is the previous item's embedding and a session-start
indicator (1 at the step that predicts a session's first event). The carry is the GRU state and
the embedding of the last item seen, so the history continues across sessions and batches.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from hiertcn.models.base import RecommenderModel, padded_bytes, select_rows
from hiertcn.models.config import ModelConfig
from hiertcn.models.embedding import ItemEmbedding
from hiertcn.models.registry import register_model
from hiertcn.models.sequence import last_item, previous_item_inputs


@register_model("gru")
class GRUBaseline(RecommenderModel):
    """A G-layer GRU over the whole history; carry = (state [B, G, H], last item [B, D])."""

    config_fields = frozenset({"embedding_dim", "hidden_size", "gru_layers", "item_vectors_path"})

    def __init__(self, config: ModelConfig, num_items: int) -> None:
        super().__init__(config, num_items)
        dim, hidden = config.embedding_dim, config.hidden_size
        self.items = ItemEmbedding(num_items, dim, config.item_vectors_path)
        self.gru = nn.GRU(dim + 1, hidden, num_layers=config.gru_layers, batch_first=True)
        self.start_state = nn.Parameter(torch.zeros(config.gru_layers, hidden))  # [G, H]
        self.output = nn.Linear(hidden, dim)

    def initial_carry(
        self, batch_size: int, device: torch.device | str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the learned start state [B, G, H] and a zero last item [B, D]."""
        state = self.start_state.to(device).unsqueeze(0).expand(batch_size, -1, -1)
        previous = torch.zeros(batch_size, self.config.embedding_dim, device=device)
        return state, previous

    def item_embeddings(self) -> torch.Tensor:
        """Return the item table [N, D]."""
        return self.items.table()

    def forward(
        self,
        items: torch.Tensor,
        lengths: torch.Tensor,
        carry: tuple[torch.Tensor, torch.Tensor],
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Predict every event of one session per row: queries [B, L, D] and the new carry."""
        state, previous = carry
        embedded = self.items(items)  # [B, L, D]
        inputs = previous_item_inputs(embedded, previous)  # [B, L, D + 1]
        self.last_input_bytes = padded_bytes(items, inputs)

        # Packing stops each row at its own length, so the final state is the state after the
        # row's last real event. Empty rows run one step and keep their carry below.
        packed = pack_padded_sequence(
            inputs, lengths.clamp(min=1).cpu(), batch_first=True, enforce_sorted=False
        )
        outputs, final = self.gru(packed, state.transpose(0, 1).contiguous())
        outputs, _ = pad_packed_sequence(outputs, batch_first=True, total_length=items.shape[1])
        queries = self.output(outputs)  # [B, L, D]

        new_carry = (final.transpose(0, 1), last_item(embedded, lengths, previous))
        return queries, select_rows(lengths > 0, new_carry, carry)  # type: ignore[return-value]
