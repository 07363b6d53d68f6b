"""Regularizers: dropout on the GRU candidate activation, and masked per-time-step batch norm.

Shape letters: `B` rows, `L` positions, `C` channels, `T` time steps with their own batch-norm
statistics, `D` input size, `H` hidden size, `G` layers.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from hiertcn.errors import ConfigError
from hiertcn.models.config import ModelConfig


def gru_step(
    gru: nn.GRU, inputs: torch.Tensor, state: torch.Tensor, candidate_dropout: float = 0.0
) -> torch.Tensor:
    """Advance a multi-layer `nn.GRU` by one step, with optional dropout on the candidate.

    inputs [B, D], state [B, G, H] -> new state [B, G, H]. Without dropout this gives the numbers
    of `gru(inputs[:, None], state.transpose(0, 1))`. With it, each layer computes
    `s = (1 - z) * dropout(n) + z * s_prev`: only the candidate n is dropped, and the carried
    term z * s_prev never is, so dropout does not erase the old state.
    Dropout acts only in training mode. The step is written with plain tensor operations so that
    ONNX export needs no recurrent operator.
    """
    layer_input = inputs
    new_states = []
    for layer in range(gru.num_layers):
        previous = state[:, layer]  # [B, H]
        input_gates = nn.functional.linear(
            layer_input, getattr(gru, f"weight_ih_l{layer}"), getattr(gru, f"bias_ih_l{layer}")
        )  # [B, 3H]
        hidden_gates = nn.functional.linear(
            previous, getattr(gru, f"weight_hh_l{layer}"), getattr(gru, f"bias_hh_l{layer}")
        )  # [B, 3H]
        input_reset, input_update, input_new = input_gates.chunk(3, dim=-1)
        hidden_reset, hidden_update, hidden_new = hidden_gates.chunk(3, dim=-1)
        reset = torch.sigmoid(input_reset + hidden_reset)
        update = torch.sigmoid(input_update + hidden_update)
        candidate = torch.tanh(input_new + reset * hidden_new)
        if candidate_dropout > 0.0:
            candidate = nn.functional.dropout(candidate, candidate_dropout, gru.training)
        layer_state = (1.0 - update) * candidate + update * previous
        new_states.append(layer_state)
        layer_input = layer_state
    return torch.stack(new_states, dim=1)


class MaskedTimeBatchNorm(nn.Module):
    """Batch normalization with statistics kept per time step, padded positions left out.

    x [B, C, L] and mask [B, 1, L] -> [B, C, L]. The time step of a position is its index among
    the row's real positions, so left- and right-padded rows share statistics. Steps from
    `steps - 1` on share the last statistics. In training, a step with at least `min_count` real
    positions in the batch is normalized with their mean and (biased) variance. A rarer step is
    normalized with the statistics of all real positions of the batch, because a few positions
    give a poor estimate, and a single position has variance 0, which maps it to `bias` whatever
    its value. The running mean of each step that occurs in the batch moves by `momentum` toward
    the mean it was normalized with, and so does the running (unbiased) variance when that mean
    came from at least two positions. Padding never enters the statistics. Padded positions of
    the output are zero.
    """

    def __init__(
        self,
        channels: int,
        steps: int,
        momentum: float = 0.1,
        eps: float = 1e-5,
        min_count: int = 8,  # NOTE: a judgment, not tuned
    ) -> None:
        super().__init__()
        if min_count < 1:
            raise ConfigError(f"batch-norm min_count={min_count} is invalid: use 1 or more")
        self.steps = steps
        self.momentum = momentum
        self.eps = eps
        self.min_count = min_count
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(steps, channels))
        self.register_buffer("running_var", torch.ones(steps, channels))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Normalize x [B, C, L] per time step; mask [B, 1, L] marks the real positions."""
        valid = mask[:, 0] > 0  # [B, L]
        step = (torch.cumsum(valid.to(torch.int64), dim=1) - 1).clamp(0, self.steps - 1)
        values = x.transpose(1, 2)  # [B, L, C]
        weights = valid.unsqueeze(-1).to(values.dtype)  # [B, L, 1]

        if self.training:
            mean, var = self._batch_statistics(values, weights, step)  # [T, C] each
            mean_at, var_at = mean[step], var[step]  # [B, L, C]
        else:
            mean_at, var_at = self.running_mean[step], self.running_var[step]

        normalized = (values - mean_at) * torch.rsqrt(var_at + self.eps)
        output = (normalized * self.weight + self.bias) * weights
        return output.transpose(1, 2)

    def _batch_statistics(
        self, values: torch.Tensor, weights: torch.Tensor, step: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Compute the mean and variance [T, C] that normalize each step, and update the running
        statistics of the steps that occur."""
        channels = values.shape[-1]
        flat_step = step.reshape(-1)
        flat_weights = weights.reshape(-1)
        counts = values.new_zeros(self.steps).index_add(0, flat_step, flat_weights)  # [T]
        sums = values.new_zeros(self.steps, channels).index_add(
            0, flat_step, (values * weights).reshape(-1, channels)
        )
        mean = sums / counts.clamp(min=1.0).unsqueeze(1)
        squares = ((values - mean[step]) * weights).pow(2).reshape(-1, channels)
        square_sums = values.new_zeros(self.steps, channels).index_add(0, flat_step, squares)

        # Statistics of all real positions, for the steps with fewer than min_count of them.
        pooled_count = counts.sum()
        pooled_mean = sums.sum(0) / pooled_count.clamp(min=1.0)  # [C]
        pooled_squares = ((values - pooled_mean) * weights).pow(2).reshape(-1, channels)
        own = (counts >= self.min_count).unsqueeze(1)  # [T, 1]
        used_counts = torch.where(own[:, 0], counts, pooled_count)  # [T]
        used_square_sums = torch.where(own, square_sums, pooled_squares.sum(0))  # [T, C]
        mean = torch.where(own, mean, pooled_mean)
        var = used_square_sums / used_counts.clamp(min=1.0).unsqueeze(1)

        with torch.no_grad():
            # A mean from a single position has no unbiased variance, so only the mean moves.
            seen = (counts > 0).unsqueeze(1)  # [T, 1]
            has_variance = seen & (used_counts > 1).unsqueeze(1)
            unbiased = used_square_sums / (used_counts - 1.0).clamp(min=1.0).unsqueeze(1)
            new_mean = torch.lerp(self.running_mean, mean, self.momentum)
            new_var = torch.lerp(self.running_var, unbiased, self.momentum)
            self.running_mean.copy_(torch.where(seen, new_mean, self.running_mean))
            self.running_var.copy_(torch.where(has_variance, new_var, self.running_var))
        return mean, var


def batch_norm_factory(config: ModelConfig) -> partial[MaskedTimeBatchNorm] | None:
    """Return the builder of masked batch-norm layers, or None when `config.batch_norm` is off."""
    if not config.batch_norm:
        return None
    return partial(MaskedTimeBatchNorm, steps=config.batch_norm_steps)
