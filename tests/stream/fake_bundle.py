"""A small numpy stand-in for `export.bundle.ModelBundle`, for the pipeline's pure logic.

Its session step depends on the order of the prefix and on the GRU state, and its session
close on the state and the session mean, so that wrong prefixes or states change the outputs.
It records every call, so tests can count batched calls.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class FakeManifest:
    """The manifest fields that `stream.pipeline` reads."""

    session_gap: float = 1800.0
    top_k: int = 5
    max_session_items: int = 4
    version: str = "fake00000000"


class FakeBundle:
    """Random weights; N items named `i0`, `i1`, ...; G x H GRU state; D-sized embeddings."""

    def __init__(
        self,
        num_items: int = 50,
        dim: int = 8,
        layers: int = 2,
        hidden: int = 6,
        seed: int = 0,
        manifest: FakeManifest | None = None,
        table_dtype: type = np.float32,
    ) -> None:
        rng = np.random.default_rng(seed)
        self.manifest = manifest or FakeManifest()
        self.item_table = rng.normal(size=(num_items, dim)).astype(table_dtype)  # [N, D]
        self.item_ids = [f"i{row}" for row in range(num_items)]
        self.row_of = {item: row for row, item in enumerate(self.item_ids)}
        self.start_state = rng.normal(size=(layers, hidden)).astype(np.float32)  # [G, H]
        self._position_weights = rng.uniform(0.5, 1.5, size=64).astype(np.float32)
        self._state_to_embedding = rng.normal(size=(layers * hidden, dim)).astype(np.float32)
        self._mean_to_state = rng.normal(size=(dim, hidden)).astype(np.float32)
        self._state_to_state = rng.normal(size=(hidden, hidden)).astype(np.float32) * 0.5
        self.step_calls: list[int] = []  # batch size of each session_step call
        self.close_calls: list[int] = []  # batch size of each session_close call

    def session_step(
        self, prefix: np.ndarray, lengths: np.ndarray, state: np.ndarray
    ) -> np.ndarray:
        """Return float32 [B, D]: position-weighted prefix sum plus a projection of the state."""
        assert prefix.dtype == np.float32
        assert lengths.dtype == np.int64
        assert state.dtype == np.float32
        assert state.shape[1:] == self.start_state.shape
        self.step_calls.append(prefix.shape[0])
        # Every sum below runs in a fixed order per row, so a row's result does not depend on
        # the batch size or the padded width (BLAS products may regroup sums by shape).
        width = prefix.shape[1]
        pooled = np.zeros((prefix.shape[0], prefix.shape[2]), dtype=np.float32)  # [B, D]
        for back in range(width):
            pooled = pooled + prefix[:, width - 1 - back] * self._position_weights[back]
        flat = state.reshape(state.shape[0], -1)  # [B, G*H]
        projected = _ordered_product(flat, self._state_to_embedding)
        return np.tanh(pooled + projected).astype(np.float32)

    def session_close(self, state: np.ndarray, session_mean: np.ndarray) -> np.ndarray:
        """Return float32 [B, G, H]: a GRU-like update of every layer from the session mean."""
        assert state.dtype == np.float32
        assert session_mean.dtype == np.float32
        self.close_calls.append(state.shape[0])
        update = _ordered_product(session_mean, self._mean_to_state)[:, None, :]  # [B, 1, H]
        layers = [
            _ordered_product(state[:, layer], self._state_to_state)
            for layer in range(state.shape[1])
        ]
        return np.tanh(np.stack(layers, axis=1) + update).astype(np.float32)


def _ordered_product(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Return left [B, K] @ right [K, M], summed over K in index order for every row."""
    result = np.zeros((left.shape[0], right.shape[1]), dtype=np.float32)
    for index in range(left.shape[1]):
        result = result + left[:, index, None] * right[index]
    return result
