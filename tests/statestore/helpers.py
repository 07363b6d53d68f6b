"""Small user states for the statestore tests, a read-only state directory, and writer processes."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import lmdb
import numpy as np
import pytest

from statestore import UserState
from tests.conftest import REPO_ROOT

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


def make_read_only(state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Make the existing directory `state_dir` read-only for LMDB; return how: "chmod" or
    "emulated".

    The directory and its files lose their write bits. A process that ignores them (root, or
    one with CAP_DAC_OVERRIDE) could still write, so there `lmdb.open` of this path raises the
    error that LMDB raises for a read-only directory instead: `lmdb.ReadonlyError` with errno
    EACCES. Every check above the `lmdb.open` call still runs unchanged.
    """
    for path in state_dir.iterdir():
        path.chmod(0o444)
    state_dir.chmod(0o555)
    if not os.access(state_dir, os.W_OK):
        return "chmod"

    real_open = lmdb.open

    def open_read_only(path: str, *args: Any, **kwargs: Any) -> lmdb.Environment:
        if Path(path).resolve() != state_dir.resolve():
            return real_open(path, *args, **kwargs)
        error = lmdb.ReadonlyError(f"{path}: Permission denied")
        error.code = errno.EACCES  # type: ignore[attr-defined]
        raise error

    monkeypatch.setattr(lmdb, "open", open_read_only)
    return "emulated"


def start_writer(mode: str, state_dir: Path, *args: str) -> subprocess.Popen[str]:
    """Start `python -m tests.statestore.writer_process MODE STATE_DIR ARGS` and wait for its
    `ready` line; the caller kills the process."""
    writer = subprocess.Popen(
        [sys.executable, "-m", "tests.statestore.writer_process", mode, str(state_dir), *args],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert writer.stdout is not None
    assert writer.stdout.readline() == "ready\n"
    return writer
