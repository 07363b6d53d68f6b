"""HierGRU: HierTCN with a GRU in place of the TCN inside each session.

Shape letters: `B` rows, `L` positions, `F` input features, `H` hidden size.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from hiertcn.models.hiertcn import HierTCN
from hiertcn.models.registry import register_model


class PaddedGRU(nn.Module):
    """A single-layer GRU over sequences that are left- or right-padded, with dropout on outputs.

    inputs [B, L, F] and valid (bool [B, L], one contiguous run of real positions per row) ->
    outputs [B, L, H], zero at padded positions. Each row starts from a zero state at its first
    real position, so padding on either side gives the outputs of the unpadded sequence.
    """

    def __init__(self, input_size: int, hidden_size: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.gru = nn.GRU(input_size, hidden_size, batch_first=True)
        self.dropout = nn.Dropout(dropout)

    def forward(self, inputs: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Run the GRU over the real positions of each row."""
        length = inputs.shape[1]
        counts = valid.sum(dim=1)  # [B]
        first = valid.to(torch.int64).argmax(dim=1)  # [B], 0 for empty rows
        positions = torch.arange(length, device=inputs.device).unsqueeze(0)  # [1, L]

        # Move each row's real positions to the front, run the packed GRU, and move them back.
        source = (positions + first.unsqueeze(1)).clamp(max=max(length - 1, 0))  # [B, L]
        aligned = _gather_positions(inputs, source)
        packed = pack_padded_sequence(
            aligned, counts.clamp(min=1).cpu(), batch_first=True, enforce_sorted=False
        )
        outputs, _ = self.gru(packed)
        outputs, _ = pad_packed_sequence(outputs, batch_first=True, total_length=length)
        restored = _gather_positions(outputs, (positions - first.unsqueeze(1)).clamp(min=0))
        restored = restored * valid.unsqueeze(-1).to(restored.dtype)
        return self.dropout(restored)


def _gather_positions(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Return values [B, L, F] read at the positions index [B, L] of each row."""
    return torch.gather(values, 1, index.unsqueeze(-1).expand(-1, -1, values.shape[-1]))


@register_model("hiergru")
class HierGRU(HierTCN):
    """HierTCN whose low level is a one-layer GRU of `hidden_size` units.

    The high level, the start token, the inputs `concat(x_j, s)` and the serving functions are
    those of HierTCN. The GRU reads the whole session, so there is no receptive field.
    """

    # The fields of HierTCN without those of its TCN.
    config_fields = HierTCN.config_fields - {
        "tcn_channels",
        "kernel_size",
        "dilations",
        "batch_norm",
        "batch_norm_steps",
    }
    default_dilations = None

    def build_low_level(self, input_size: int) -> tuple[nn.Module, int]:
        """Build the within-session GRU and return it with its output size."""
        hidden = self.config.hidden_size
        return PaddedGRU(input_size, hidden, self.config.dropout), hidden

    @property
    def receptive_field(self) -> int | None:  # type: ignore[override]
        """None: the low-level GRU depends on every earlier event of the session."""
        return None
