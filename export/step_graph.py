"""A faster, equivalent form of HierTCN's session step for export: only the cone of the output.

Shape letters: `B` rows, `L` events in a session prefix, `T` positions of the TCN input (L + 1,
the start token included), `C` channels, `D` item-embedding size, `G` GRU layers, `H` GRU hidden
size, `K` kernel size.

`HierTCN.session_user_embedding` runs the whole TCN over all T positions and keeps the last
output. That last output depends on far fewer activations: with dilations d_1..d_n, block i only
needs its input at positions `T - 1 - m * s_i` (m = 0, 1, ...), where `s_i = gcd(d_i, ..., d_n)`,
because every later tap lands on that lattice. For the default dilations (1, 2, 4, 8) and
T = 21 (a prefix of 20 items), the two convolutions of the four blocks run at 21, 11, 6 and 3
positions, 82 in all instead of 168. `PrunedSessionStep` computes exactly those positions:

1. Build the item part of the TCN input as the model does: the start token before the first
   real item, and padded positions zeroed. Then reverse the time axis, so the last position is
   index 0 and every lattice is a plain stride `[::r]`.
2. In each block, run both causal convolutions on the block's lattice, where dilation d_i
   becomes d_i / s_i. Each convolution is one MatMul over the K taps, which ONNX Runtime runs
   as a single large GEMM instead of one Conv per batch row. The first block takes the top GRU
   layer's state as a per-row vector instead of a copy at every position (`_StateSplitConv`).
3. Keep every (s_{i+1} / s_i)-th position for the next block; after the last block, apply the
   output layer to index 0.

The result equals the model's within float32 rounding; `build_pruned_step` checks that in torch
before export, and `export.verify` checks the exported graph.
"""

from __future__ import annotations

import logging
import math

import torch
from torch import nn

logger = logging.getLogger(__name__)


class _LatticeConv(nn.Module):
    """A causal Conv1d applied in reversed time on channel-last input, as one MatMul."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, lattice_dilation: int) -> None:
        super().__init__()
        out_channels, in_channels, kernel = weight.shape  # the Conv1d layout
        self.kernel = kernel
        self.dilation = lattice_dilation
        # Row j * C_in + c of the matrix is weight[:, c, j], the tap j of the Conv1d.
        matrix = weight.detach().permute(2, 1, 0).reshape(kernel * in_channels, out_channels)
        self.weight = nn.Parameter(matrix.clone(), requires_grad=False)
        self.bias = nn.Parameter(bias.detach().clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map reversed x [B, T, C_in] to [B, T, C_out].

        In reversed time, tap j of a causal convolution reads `(K - 1 - j) * dilation` positions
        later, so the input is zero-padded on the right.
        """
        if self.kernel == 1:
            return x @ self.weight + self.bias
        length = x.shape[1]
        span = (self.kernel - 1) * self.dilation
        padded = nn.functional.pad(x, (0, 0, 0, span))  # [B, T + span, C_in]
        taps = [
            padded[:, (self.kernel - 1 - j) * self.dilation :][:, :length]
            for j in range(self.kernel)
        ]
        return torch.cat(taps, dim=-1) @ self.weight + self.bias  # [B, T, C_out]


def _shifted_taps(x: torch.Tensor, kernel: int, dilation: int) -> torch.Tensor:
    """Stack the K reversed-time taps of x [B, T, 1] into [B, T, K] (zeros past the end)."""
    length = x.shape[1]
    padded = nn.functional.pad(x, (0, 0, 0, (kernel - 1) * dilation))
    taps = [padded[:, (kernel - 1 - j) * dilation :][:, :length] for j in range(kernel)]
    return torch.cat(taps, dim=-1)


class _StateSplitConv(nn.Module):
    """The first convolution, split into its item channels and its state channels.

    The TCN input is concat(item [D], state [H]) * valid, and the state is the same at every
    position of a row. So the state channels contribute `sum_j valid(t + o_j) * (W_j s)`: the
    product W_j s [C_out] is computed once per row and tap instead of once per position.
    """

    def __init__(self, conv: nn.Conv1d, item_channels: int, lattice_dilation: int) -> None:
        super().__init__()
        weight = conv.weight.detach()  # [C_out, D + H, K]
        self.items = _LatticeConv(weight[:, :item_channels], conv.bias, lattice_dilation)
        out_channels, _, kernel = weight.shape
        # Column block j of the matrix is W_j for the state channels, [H, K * C_out].
        state = weight[:, item_channels:].permute(1, 2, 0).reshape(-1, kernel * out_channels)
        self.state_weight = nn.Parameter(state.clone(), requires_grad=False)
        self.kernel, self.out_channels = kernel, out_channels
        self.dilation = lattice_dilation

    def forward(self, items: torch.Tensor, state: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Map items [B, T, D] (zero where masked), state [B, H], mask [B, T, 1] to [B, T, C]."""
        per_tap = (state @ self.state_weight).reshape(
            -1, self.kernel, self.out_channels
        )  # [B, K, C]
        valid_taps = _shifted_taps(mask, self.kernel, self.dilation)  # [B, T, K]
        return self.items(items) + valid_taps @ per_tap


class _LatticeBlock(nn.Module):
    """A TCN residual block (no normalization, eval mode) on a lattice of its positions."""

    def __init__(self, block: nn.Module, stride: int, next_stride: int) -> None:
        super().__init__()
        dilation = block.conv1.conv.dilation[0] // stride
        conv1, conv2 = block.conv1.conv, block.conv2.conv
        self.conv1 = _LatticeConv(conv1.weight, conv1.bias, dilation)
        self.conv2 = _LatticeConv(conv2.weight, conv2.bias, dilation)
        self.downsample = None
        if block.downsample is not None:
            self.downsample = _LatticeConv(block.downsample.weight, block.downsample.bias, 1)
        self.step = next_stride // stride

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Map x [B, T, C_in] and mask [B, T, 1] to the next lattice's x and mask."""
        hidden = torch.relu(self.conv1(x) * mask)
        residual = x if self.downsample is None else self.downsample(x) * mask
        return self.finish(hidden, residual, mask)

    def finish(
        self, hidden: torch.Tensor, residual: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the second convolution and the residual sum, then keep the next lattice."""
        hidden = torch.relu(self.conv2(hidden) * mask)
        x = torch.relu(hidden + residual)
        if self.step > 1:
            x, mask = x[:, :: self.step], mask[:, :: self.step]
        return x, mask


class _FirstLatticeBlock(_LatticeBlock):
    """The first block, which takes the item channels and the row's state separately."""

    def __init__(self, block: nn.Module, stride: int, next_stride: int, item_channels: int) -> None:
        super().__init__(block, stride, next_stride)
        dilation = block.conv1.conv.dilation[0] // stride
        self.conv1 = _StateSplitConv(block.conv1.conv, item_channels, dilation)
        if block.downsample is not None:
            self.downsample = _StateSplitConv(block.downsample, item_channels, 1)

    def forward_split(
        self, items: torch.Tensor, state: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Map items [B, T, D], state [B, H] and mask [B, T, 1] to the next lattice."""
        hidden = torch.relu(self.conv1(items, state, mask) * mask)
        if self.downsample is None:
            length = items.shape[1]
            residual = torch.cat([items, state.unsqueeze(1).expand(-1, length, -1) * mask], -1)
        else:
            residual = self.downsample(items, state, mask) * mask
        return self.finish(hidden, residual, mask)


class PrunedSessionStep(nn.Module):
    """Session step of a HierTCN: prefix [B, L, D], lengths [B], state [B, G, H] -> [B, D]."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        tcn = model.low_level
        dilations = list(tcn.dilations)
        strides = [_gcd(dilations[i:]) for i in range(len(dilations))]
        next_strides = [*strides[1:], strides[-1]]
        layout = list(zip(tcn.blocks, strides, next_strides, strict=True))
        block, stride, next_stride = layout[0]
        item_channels = model.start_token.shape[0]
        self.first = _FirstLatticeBlock(block, stride, next_stride, item_channels)
        self.blocks = nn.ModuleList(_LatticeBlock(*entry) for entry in layout[1:])
        self.start_token = model.start_token
        self.output = model.output

    def forward(
        self, prefix: torch.Tensor, lengths: torch.Tensor, state: torch.Tensor
    ) -> torch.Tensor:
        """Return the user embedding [B, D] after the last real item of each prefix."""
        length = prefix.shape[1]
        # The same TCN input as HierTCN.session_user_embedding: the start token at position
        # L - lengths, the real items after it, zeros before it.
        shifted = nn.functional.pad(prefix, (0, 0, 1, 0))  # [B, T, D]
        positions = torch.arange(length + 1, device=prefix.device).unsqueeze(0)  # [1, T]
        first = (length - lengths).unsqueeze(1)  # [B, 1]
        valid = (positions >= first).unsqueeze(-1).to(prefix.dtype)  # [B, T, 1]
        is_start = (positions == first).unsqueeze(-1)  # [B, T, 1]
        inputs = torch.where(is_start, self.start_token.expand_as(shifted), shifted)
        items = torch.flip(inputs * valid, dims=[1])  # [B, T, D], reversed time
        mask = torch.flip(valid, dims=[1])
        x, mask = self.first.forward_split(items, state[:, -1], mask)
        for block in self.blocks:
            x, mask = block(x, mask)
        return self.output(x[:, 0])


def _gcd(values: list[int]) -> int:
    result = 0
    for value in values:
        result = math.gcd(result, value)
    return result


def build_pruned_step(model: nn.Module) -> PrunedSessionStep | None:
    """Return the pruned session step of `model`, or None when its layout is not supported.

    Supported: a HierTCN whose low level is a `TemporalConvNet` without normalization layers.
    Any other model is exported with its own `session_user_embedding`.
    """
    tcn = getattr(model, "low_level", None)
    blocks = getattr(tcn, "blocks", None)
    needed = ("start_token", "output")
    if (
        blocks is None
        or not hasattr(tcn, "dilations")
        or not all(hasattr(model, n) for n in needed)
    ):
        return None
    for block in blocks:
        if getattr(block, "norm1", None) is not None or getattr(block, "norm2", None) is not None:
            logger.info("the TCN uses normalization layers: exporting the full session step")
            return None
    try:
        return PrunedSessionStep(model).eval()
    except (AttributeError, TypeError, ValueError) as error:
        logger.warning("pruned session step unavailable (%s): exporting the full one", error)
        return None
