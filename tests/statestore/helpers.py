"""Small user states for the statestore tests, and the child processes that write to a store."""

from __future__ import annotations

import numpy as np

from statestore import UserState

GRU_LAYERS = 2
HIDDEN_SIZE = 8
EMBEDDING_DIM = 6


def make_state(
    seed: int = 0,
    session_length: int = 3,
    last_ts: float = 1_700_000_000.25,
    partition: int = 0,
    with_embedding: bool = True,
) -> UserState:
    """Return a state whose every field contains a value that depends on `seed`."""
    rng = np.random.default_rng(seed)
    return UserState(
        gru_state=rng.standard_normal((GRU_LAYERS, HIDDEN_SIZE)).astype(np.float32),
        session_items=rng.integers(0, 1000, size=session_length).astype(np.int32),
        session_sum=rng.standard_normal(EMBEDDING_DIM).astype(np.float32),
        session_length=session_length,
        session_start=last_ts - 60.5,
        last_ts=last_ts,
        session_count=seed + 1,
        last_embedding=(
            rng.standard_normal(EMBEDDING_DIM).astype(np.float32) if with_embedding else None
        ),
        partition=partition,
    )
