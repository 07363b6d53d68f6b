"""Causal dilated temporal convolutional network with exact handling of padded positions.

Shape letters: `B` rows, `L` positions, `C` channels. Each residual block has two causal
dilated convolutions with ReLU and dropout, and a 1x1 convolution on the residual path when
the channel counts differ.

Padding is exact: the activations are multiplied by a validity mask after every convolution, so
a padded position is zero in every layer, as the implicit zero padding of a causal
convolution does. A left-padded sequence therefore gives the same outputs at its real positions
as the unpadded sequence, and right padding never reaches a real position.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

# Builds a normalization layer for a channel count. The layer is called as `norm(x, mask)` with
# x [B, C, L] and mask [B, 1, L], and returns [B, C, L].
NormFactory = Callable[[int], nn.Module]


def receptive_field(kernel_size: int, dilations: Sequence[int]) -> int:
    """Return the input positions one output depends on: 1 + 2 * (k - 1) * sum(dilations)."""
    return 1 + 2 * (kernel_size - 1) * sum(dilations)


class CausalConv1d(nn.Module):
    """A Conv1d whose output at position t depends on inputs at positions <= t only."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, dilation: int
    ) -> None:
        super().__init__()
        self.left_padding = (kernel_size - 1) * dilation
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size, dilation=dilation)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Convolve x [B, C_in, L] and zero the padded positions (mask [B, 1, L]) of the result."""
        x = nn.functional.pad(x, (self.left_padding, 0))
        return self.conv(x) * mask


class TemporalBlock(nn.Module):
    """Residual block of two causal convolutions of one dilation, each with ReLU and dropout."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        dilation: int,
        dropout: float = 0.0,
        norm_factory: NormFactory | None = None,
    ) -> None:
        super().__init__()
        self.conv1 = CausalConv1d(in_channels, out_channels, kernel_size, dilation)
        self.conv2 = CausalConv1d(out_channels, out_channels, kernel_size, dilation)
        self.norm1 = norm_factory(out_channels) if norm_factory is not None else None
        self.norm2 = norm_factory(out_channels) if norm_factory is not None else None
        self.dropout = nn.Dropout(dropout)
        self.downsample: nn.Conv1d | None = None
        if in_channels != out_channels:
            self.downsample = nn.Conv1d(in_channels, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Map x [B, C_in, L] with mask [B, 1, L] to [B, C_out, L]; padded positions stay zero."""
        hidden = self.conv1(x, mask)
        if self.norm1 is not None:
            hidden = self.norm1(hidden, mask)
        hidden = self.dropout(torch.relu(hidden))

        hidden = self.conv2(hidden, mask)
        if self.norm2 is not None:
            hidden = self.norm2(hidden, mask)
        hidden = self.dropout(torch.relu(hidden))

        residual = x if self.downsample is None else self.downsample(x) * mask
        return torch.relu(hidden + residual)


class TemporalConvNet(nn.Module):
    """A stack of residual blocks, one per dilation, each with `channels` filters."""

    def __init__(
        self,
        in_channels: int,
        channels: int,
        kernel_size: int,
        dilations: Sequence[int],
        dropout: float = 0.0,
        norm_factory: NormFactory | None = None,
    ) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.dilations = tuple(dilations)
        self.out_channels = channels
        blocks = []
        for index, dilation in enumerate(self.dilations):
            block_in = in_channels if index == 0 else channels
            blocks.append(
                TemporalBlock(block_in, channels, kernel_size, dilation, dropout, norm_factory)
            )
        self.blocks = nn.ModuleList(blocks)

    @property
    def receptive_field(self) -> int:
        """Input positions that one output depends on, its own position included."""
        return receptive_field(self.kernel_size, self.dilations)

    def forward(self, inputs: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Map inputs [B, L, C_in] with valid (bool [B, L]) to outputs [B, L, C].

        Padded inputs are zeroed first, so callers may leave any values there.
        """
        mask = valid.unsqueeze(1).to(inputs.dtype)  # [B, 1, L]
        hidden = inputs.transpose(1, 2) * mask  # [B, C_in, L]
        for block in self.blocks:
            hidden = block(hidden, mask)
        return hidden.transpose(1, 2)
