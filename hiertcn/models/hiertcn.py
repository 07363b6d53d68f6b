"""HierTCN: a session-level GRU of long-term interest over a causal TCN inside each session.

You et al., "Hierarchical Temporal Convolutional Networks for Dynamic Recommender Systems"
(WWW 2019). Shape letters: `B` rows, `L` events in a session prefix, `N` items, `D` item-embedding
size, `H` GRU hidden size, `G` GRU layers.

- High level: a G-layer GRU whose state s [G, H] is updated once per closed session with the mean
  item embedding of that session, `s_i = GRU(s_{i-1}, mean(x in session i))`, starting from the
  learned `start_state`. In training, session i's update runs in the batch of session i + 1, the
  first batch whose loss depends on it, so the GRU receives gradients (see `HierarchicalCarry`).
- Low level: a causal dilated TCN whose input at position j is `concat(x_j, s_{i-1}[top layer])`.
  Position 0 contains a learned start token in place of an item, so the first item of a session is
  predicted from the start token and s alone. A linear layer maps the TCN output to the user
  embedding u [D], and the score of an item is the dot product of u and its embedding.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from hiertcn.models.base import RecommenderModel, padded_bytes, select_rows
from hiertcn.models.config import HIERTCN_DILATIONS, ModelConfig
from hiertcn.models.embedding import ItemEmbedding
from hiertcn.models.registry import register_model
from hiertcn.models.regularization import batch_norm_factory, gru_step
from hiertcn.models.tcn import TemporalConvNet


class HierarchicalCarry(NamedTuple):
    """The state that HierTCN carries from one batch row to the row's next session.

    The row's last session is carried open as items, and up to `bptt_sessions - 1` sessions
    before it as their mean item embeddings, oldest first. `forward` closes them all into the GRU
    state before it runs the next session. The only loss that depends on a GRU update is that of
    a later session, and training detaches the carry at every batch edge, so an update computed
    in its own session's batch would never get a gradient. Closed again in each of the next
    `bptt_sessions` batches, an update is part of those losses' graphs: their gradients reach the
    GRU weights through up to `bptt_sessions` steps, and stop at `state`. The item embeddings of
    a closed session get the gradient of the next session's loss only, because older sessions
    are carried as detached means, which keeps the carry at D numbers per session.
    """

    state: torch.Tensor  # [B, G, H], the GRU state before the carried sessions
    means: torch.Tensor  # [B, J, D], mean item embeddings of the older sessions, oldest first
    closed: torch.Tensor  # bool [B, J], true where a slot of `means` contains a session (J < K)
    items: torch.Tensor  # int64 [B, S], the last session's items, right-padded
    lengths: torch.Tensor  # int64 [B], the last session's length, 0 when there is none


@register_model("hiertcn")
class HierTCN(RecommenderModel):
    """HierTCN with the serving functions that `export/` turns into ONNX graphs.

    The carry is a `HierarchicalCarry`, and `user_state(carry)` is the GRU state after every
    session seen. Subclasses may replace the low level by overriding `build_low_level`.
    """

    config_fields = frozenset(
        {
            "embedding_dim",
            "hidden_size",
            "gru_layers",
            "tcn_channels",
            "kernel_size",
            "dilations",
            "dropout",
            "gru_candidate_dropout",
            "batch_norm",
            "batch_norm_steps",
            "item_vectors_path",
            "bptt_sessions",
        }
    )
    default_dilations = HIERTCN_DILATIONS

    def __init__(self, config: ModelConfig, num_items: int) -> None:
        super().__init__(config, num_items)
        dim, hidden, layers = config.embedding_dim, config.hidden_size, config.gru_layers
        self.items = ItemEmbedding(num_items, dim, config.item_vectors_path)
        self.session_gru = nn.GRU(dim, hidden, num_layers=layers, batch_first=True)
        self.start_state = nn.Parameter(torch.zeros(layers, hidden))  # [G, H]
        self.start_token = nn.Parameter(torch.randn(dim) * dim**-0.5)  # [D]
        self.low_level, low_level_size = self.build_low_level(dim + hidden)
        self.output = nn.Linear(low_level_size, dim)

    def build_low_level(self, input_size: int) -> tuple[nn.Module, int]:
        """Build the within-session network and return it with its output size.

        The network maps inputs [B, L, input_size] and valid (bool [B, L]) to [B, L, size],
        causally, and padded positions must not change the outputs at real positions.
        """
        config = self.config
        tcn = TemporalConvNet(
            input_size,
            config.tcn_channels,
            config.kernel_size,
            config.dilations_or(self.default_dilations),
            config.dropout,
            batch_norm_factory(config),
        )
        return tcn, config.tcn_channels

    @property
    def receptive_field(self) -> int:
        """Input positions (the start token and items) that the TCN uses for one prediction.

        A serving prefix of the last `receptive_field` items of a session gives the same user
        embedding as the whole session.

        NOTE: with `batch_norm` this holds only for sessions shorter than the receptive field,
        because a truncated prefix numbers its batch-norm time steps from its own start.
        """
        return self.low_level.receptive_field

    # Training interface.

    def initial_carry(self, batch_size: int, device: torch.device | str) -> HierarchicalCarry:
        """Return the carry of `batch_size` new users: the start state and no open session."""
        state = self.start_state.to(device).unsqueeze(0).expand(batch_size, -1, -1)
        return self.carry_from_state(state)

    def carry_from_state(self, state: torch.Tensor) -> HierarchicalCarry:
        """Return the carry of users with the GRU state `state` [B, G, H] and no open session."""
        rows, device = state.shape[0], state.device
        means = state.new_zeros(rows, 0, self.config.embedding_dim)
        closed = torch.zeros(rows, 0, dtype=torch.bool, device=device)
        items = torch.zeros(rows, 0, dtype=torch.int64, device=device)
        lengths = torch.zeros(rows, dtype=torch.int64, device=device)
        return HierarchicalCarry(state, means, closed, items, lengths)

    def reset_carry(self, carry: HierarchicalCarry, new_user: torch.Tensor) -> HierarchicalCarry:
        """Return `carry` with the rows of new users (bool [B]) set to the start state."""
        fresh = self.start_state.unsqueeze(0).expand_as(carry.state)
        state = select_rows(new_user, fresh, carry.state)
        closed = carry.closed & ~new_user.unsqueeze(1)
        lengths = torch.where(new_user, 0, carry.lengths)
        return carry._replace(state=state, closed=closed, lengths=lengths)

    def detach_carry(self, carry: HierarchicalCarry) -> HierarchicalCarry:  # type: ignore[override]
        """Return `carry` cut from the autograd graph (truncated backpropagation at batch edges)."""
        return HierarchicalCarry(*(part.detach() for part in carry))

    def user_state(self, carry: HierarchicalCarry) -> torch.Tensor:
        """Return the GRU state [B, G, H] after every session in `carry`."""
        return self._close_carried_sessions(carry)[0]

    def item_embeddings(self) -> torch.Tensor:
        """Return the item table [N, D]."""
        return self.items.table()

    def forward(
        self, items: torch.Tensor, lengths: torch.Tensor, carry: HierarchicalCarry
    ) -> tuple[torch.Tensor, HierarchicalCarry]:
        """Predict every event of one session per row.

        items: int64 [B, L], right-padded; lengths: int64 [B]. Returns queries [B, L, D], where
        `queries[:, j]` is the user embedding that predicts `items[:, j]` from `items[:, :j]`,
        and the carry with this session open. A row of length 0 predicts nothing and carries
        the state after its earlier sessions.
        """
        batch_size, length = items.shape
        # 1. Close the row's carried sessions into the GRU state, inside this batch's graph.
        state, base, means, closed = self._close_carried_sessions(carry)  # state: [B, G, H]

        # 2. Shift right by one, so position j gets the start token and the items before j.
        embedded = self.items(items)  # [B, L, D]
        valid = torch.arange(length, device=items.device).unsqueeze(0) < lengths.unsqueeze(1)
        start = self.start_token.expand(batch_size, 1, -1)
        inputs = torch.cat([start, embedded], dim=1)[:, :length]  # [B, L, D]

        # 3. Run the low level on the items and the state.
        queries = self._user_embeddings(inputs, valid, state)
        # The low level's input is [B, L, D + H]; it is built inside `_user_embeddings`.
        feature_bytes = batch_size * length * self.low_level_input_size * inputs.element_size()
        self.last_input_bytes = padded_bytes(items) + feature_bytes

        # 4. Carry this session as items, and the earlier ones as means up to the window size.
        return queries, HierarchicalCarry(base, means, closed, items, lengths)

    @property
    def low_level_input_size(self) -> int:
        """Features per low-level position: D for the item and H for the session state."""
        return self.config.embedding_dim + self.config.hidden_size

    # Serving interface (exported to ONNX).

    def session_user_embedding(
        self, prefix: torch.Tensor, lengths: torch.Tensor, state: torch.Tensor
    ) -> torch.Tensor:
        """Return the user embedding [B, D] after the last real item of each session prefix.

        prefix: float [B, L, D], left-padded (real item embeddings right-aligned, zeros before);
        lengths: int64 [B] in 0..L; state: GRU state [B, G, H] before the session. With length 0
        the result is the prediction for the first item of a session.
        """
        length = prefix.shape[1]
        # One more position than the prefix: the start token goes just before the first real item.
        shifted = nn.functional.pad(prefix, (0, 0, 1, 0))  # [B, L+1, D], zeros at position 0
        positions = torch.arange(length + 1, device=prefix.device).unsqueeze(0)  # [1, L+1]
        first = (length - lengths).unsqueeze(1)  # [B, 1], position of the start token
        valid = positions >= first  # [B, L+1]
        is_start = (positions == first).unsqueeze(-1)  # [B, L+1, 1]
        inputs = torch.where(is_start, self.start_token.expand_as(shifted), shifted)
        queries = self._user_embeddings(inputs, valid, state)  # [B, L+1, D]
        return queries[:, -1]

    def close_session(self, state: torch.Tensor, session_mean: torch.Tensor) -> torch.Tensor:
        """Update the GRU state [B, G, H] with a closed session's mean item embedding [B, D]."""
        return gru_step(self.session_gru, session_mean, state, self.config.gru_candidate_dropout)

    def _close_carried_sessions(
        self, carry: HierarchicalCarry
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Close every session in `carry` into its state, oldest first.

        Returns four tensors. The first is the GRU state [B, G, H] after every session. The
        other three start the next carry: the state before its older sessions, and their means
        [B, J, D] and flags bool [B, J], where the older sessions are the last J < K of those
        closed here. A carry without a last session (S = 0, as from `initial_carry`) runs no GRU
        step for it, so the optimizer gets no gradient rather than a zero one, and the window
        grows from empty to its full size.
        """
        means, closed = carry.means, carry.closed  # [B, J, D], [B, J]
        if carry.items.shape[1] > 0:
            embedded = self.items(carry.items)  # [B, S, D]
            positions = torch.arange(embedded.shape[1], device=embedded.device)
            weights = (positions < carry.lengths[:, None]).unsqueeze(-1).to(embedded.dtype)
            last_mean = (embedded * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
            means = torch.cat([means, last_mean.unsqueeze(1)], dim=1)
            closed = torch.cat([closed, (carry.lengths > 0).unsqueeze(1)], dim=1)
        leaving = max(0, means.shape[1] - (self.config.bptt_sessions - 1))

        state = base = carry.state
        for slot in range(means.shape[1]):
            updated = self.close_session(state, means[:, slot])
            state = select_rows(closed[:, slot], updated, state)  # type: ignore[assignment]
            if slot == leaving - 1:
                base = state
        return state, base, means[:, leaving:], closed[:, leaving:]

    def _user_embeddings(
        self, inputs: torch.Tensor, valid: torch.Tensor, state: torch.Tensor
    ) -> torch.Tensor:
        """Run the low level on inputs [B, L, D] with the top GRU layer of state [B, G, H].

        Returns user embeddings [B, L, D]; `valid` (bool [B, L]) marks the real positions.
        """
        length = inputs.shape[1]
        session_state = state[:, -1].unsqueeze(1).expand(-1, length, -1)  # [B, L, H]
        features = torch.cat([inputs, session_state], dim=-1)  # [B, L, D + H]
        features = features * valid.unsqueeze(-1).to(features.dtype)
        hidden = self.low_level(features, valid)  # [B, L, C]
        return self.output(hidden)
