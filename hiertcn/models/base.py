"""The interface that the training loop, evaluation and export use for every model.

Shape letters: `B` rows in a batch, `L` events in a session prefix, `N` items in the catalog,
`D` item-embedding size, `H` GRU hidden size, `G` GRU layers, `C` candidates.
"""

from __future__ import annotations

from typing import ClassVar, Union

import torch
from torch import nn

from hiertcn.models.config import ModelConfig

# The state a model carries from one batch to the next: one tensor or a tuple of tensors,
# each with the batch row as its first axis.
Carry = Union[torch.Tensor, tuple[torch.Tensor, ...]]  # noqa: UP007 (runtime alias)


class RecommenderModel(nn.Module):
    """Base class of every registered model.

    Each batch row is one whole session of one user. `forward(items, lengths, carry)` returns
    queries [B, L, D], where `queries[:, j]` predicts `items[:, j]` from the events before it,
    and the carry after the session. Subclasses set `last_input_bytes` in `forward` to the bytes
    of the padded input tensors of that call, which the training benchmark compares.
    """

    # False for models without gradient training (most popular): the loop skips optimization.
    # A class attribute that an instance may override (moving average with fixed vectors).
    trainable: bool = True
    # The `ModelConfig` fields besides `name` that the model reads. The others have no effect on
    # it, so `hiertcn train` warns when they are set and resuming a run does not compare them.
    config_fields: ClassVar[frozenset[str]] = frozenset()
    # The dilations the model uses when the configuration sets none; None when it reads none.
    default_dilations: ClassVar[tuple[int, ...] | None] = None

    def __init__(self, config: ModelConfig, num_items: int) -> None:
        super().__init__()
        self.config = config
        self.num_items = num_items
        self.last_input_bytes = 0

    def initial_carry(self, batch_size: int, device: torch.device | str) -> Carry:
        """Return the carry of `batch_size` users that have no history yet."""
        raise NotImplementedError

    def reset_carry(self, carry: Carry, new_user: torch.Tensor) -> Carry:
        """Return `carry` with the rows of new users (bool [B]) set to the initial carry."""
        fresh = self.initial_carry(new_user.shape[0], new_user.device)
        return select_rows(new_user, fresh, carry)

    def detach_carry(self, carry: Carry) -> Carry:
        """Return `carry` cut from the autograd graph (truncated backpropagation at batch edges)."""
        if isinstance(carry, torch.Tensor):
            return carry.detach()
        return tuple(part.detach() for part in carry)

    def score(self, queries: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """Return dot-product scores [..., C] of queries [..., D] against candidates [C, D]."""
        return queries @ candidates.transpose(0, 1)

    def item_embeddings(self) -> torch.Tensor:
        """Return the item table [N, D] that scores are computed against."""
        raise NotImplementedError


def select_rows(rows: torch.Tensor, chosen: Carry, other: Carry) -> Carry:
    """Return `chosen` in the batch rows where `rows` (bool [B]) is true, else `other`."""
    if isinstance(chosen, torch.Tensor):
        return _select_tensor_rows(rows, chosen, other)  # type: ignore[arg-type]
    return tuple(_select_tensor_rows(rows, a, b) for a, b in zip(chosen, other, strict=True))


def _select_tensor_rows(
    rows: torch.Tensor, chosen: torch.Tensor, other: torch.Tensor
) -> torch.Tensor:
    mask = rows.reshape(rows.shape[0], *([1] * (chosen.dim() - 1)))
    return torch.where(mask, chosen, other)


def padded_bytes(*tensors: torch.Tensor) -> int:
    """Return the bytes that the given (padded) tensors occupy."""
    return sum(tensor.numel() * tensor.element_size() for tensor in tensors)
