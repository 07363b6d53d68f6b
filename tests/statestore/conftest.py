"""Fixtures of the statestore tests: a fresh store in a temporary directory."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from statestore import StateStore, StoreConfig


@pytest.fixture
def store(tmp_path: Path) -> Iterator[StateStore]:
    """A small, unsynced store (the tests do not need durability across OS crashes)."""
    with StateStore(StoreConfig(path=tmp_path / "state", map_size=1 << 20, sync=False)) as opened:
        yield opened
