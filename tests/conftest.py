"""Fixtures shared by every test package: where the real data sets are."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Test modules import onnxruntime before export.providers, which turns its telemetry off at import.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA_DIR = REPO_ROOT.parent / "shared" / "data"


def data_dir() -> Path:
    """Return the folder of the real data sets (`HIERTCN_DATA_DIR`, else ../shared/data)."""
    return Path(os.environ.get("HIERTCN_DATA_DIR", DEFAULT_DATA_DIR))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The folder of the real data sets; fails when it is missing, because tests rely on it."""
    path = data_dir()
    if not path.is_dir():
        pytest.fail(
            f"data folder {path} not found: set HIERTCN_DATA_DIR to a folder that holds "
            "movielens-latest-small/, taobao-userbehavior-head/ and trivago-sample/"
        )
    return path
