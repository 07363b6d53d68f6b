"""Tensor helpers for right-padded sessions and the histories that models carry across batches.

Shape letters: `B` rows, `L` events in a session, `T` positions of a longer sequence, `D` item
embedding size.
"""

from __future__ import annotations

import torch


def valid_positions(lengths: torch.Tensor, length: int) -> torch.Tensor:
    """Return bool [B, length] that is true at the first `lengths[b]` positions of each row."""
    positions = torch.arange(length, device=lengths.device)
    return positions.unsqueeze(0) < lengths.unsqueeze(1)


def gather_window(sequence: torch.Tensor, end: torch.Tensor, size: int) -> torch.Tensor:
    """Return the `size` positions of each row before `end[b]` (exclusive): [B, size, ...].

    sequence: [B, T, ...]; end: int64 [B] with size <= end[b] <= T.
    """
    offsets = torch.arange(size, device=sequence.device)
    index = (end.unsqueeze(1) - size + offsets.unsqueeze(0)).to(torch.int64)  # [B, size]
    index = index.reshape(*index.shape, *([1] * (sequence.dim() - 2)))
    index = index.expand(-1, -1, *sequence.shape[2:])
    return torch.gather(sequence, 1, index)


def previous_item_inputs(embedded: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
    """Build the inputs of a model that reads a user's whole history one event at a time.

    `embedded` contains the session's item embeddings [B, L, D], and `previous` [B, D] is the
    embedding of the last item before the session (zeros for a new user). Step j gets the item
    before event j and a session-start indicator that is 1 at step 0, so the output of step j
    predicts event j. Returns [B, L, D + 1].
    """
    batch_size, length, _ = embedded.shape
    items_before = torch.cat([previous.unsqueeze(1), embedded], dim=1)[:, :length]  # [B, L, D]
    indicator = torch.zeros(batch_size, length, 1, dtype=embedded.dtype, device=embedded.device)
    indicator[:, :1] = 1.0
    return torch.cat([items_before, indicator], dim=-1)


def last_item(
    embedded: torch.Tensor, lengths: torch.Tensor, previous: torch.Tensor
) -> torch.Tensor:
    """Return the embedding [B, D] of each row's last real item, or `previous` for empty rows."""
    rows = torch.arange(embedded.shape[0], device=embedded.device)
    last = embedded[rows, (lengths - 1).clamp(min=0)]  # [B, D]
    return torch.where((lengths > 0).unsqueeze(1), last, previous)
