"""Fixtures of the export tests: a tiny HierTCN, its checkpoint and its exported bundle."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from export.bundle import ModelBundle, load_bundle
from export.onnx_export import ExportConfig, write_bundle
from hiertcn.checkpoint import Checkpoint
from hiertcn.models import ModelConfig, build_model

NUM_ITEMS = 50
# D=8, H=6, G=2, receptive field 1 + 2 * (3 - 1) * (1 + 2) = 13.
TINY_CONFIG = ModelConfig(
    embedding_dim=8, hidden_size=6, gru_layers=2, tcn_channels=5, kernel_size=3, dilations=(1, 2)
)


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def make_model(seed: int = 0) -> torch.nn.Module:
    """Build the tiny HierTCN with weights drawn from `seed`, in eval mode."""
    torch.manual_seed(seed)
    model = build_model(TINY_CONFIG, NUM_ITEMS)
    with torch.no_grad():
        # A non-zero start state, so tests notice a graph that ignores it.
        model.start_state.normal_(0.0, 0.3)
    return model.eval()


def build_prefix(bundle: ModelBundle, sessions: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Gather and left-pad the item rows of each session into the session step's inputs.

    Returns `prefix` float32 [B, L, D] (real items right-aligned, zeros before) and
    `lengths` int64 [B], with L the longest session (at least 1). The serving path pads in
    `stream.pipeline.Pipeline._session_step`, in one vectorized gather.
    """
    lengths = np.array([len(session) for session in sessions], dtype=np.int64)
    width = max(int(lengths.max(initial=0)), 1)
    prefix = np.zeros((len(sessions), width, bundle.embedding_dim), dtype=np.float32)
    for index, session in enumerate(sessions):
        if len(session):
            prefix[index, width - len(session) :] = bundle.gather_items(np.asarray(session))
    return prefix, lengths


def make_checkpoint(model: torch.nn.Module) -> Checkpoint:
    """Wrap `model` in a checkpoint with item ids "item0".."item49" and a session gap of 900 s."""
    return Checkpoint(
        model_config=model.config.to_dict(),
        model_state=model.state_dict(),
        train_config={},
        item_ids=[f"item{row}" for row in range(NUM_ITEMS)],
        data_summary={"session_gap": 900, "num_items": NUM_ITEMS},
        metrics={"mrr": 0.25},
        epoch=3,
    )


@pytest.fixture(scope="module")
def tiny_model() -> torch.nn.Module:
    return make_model()


@pytest.fixture(scope="module")
def bundle_dir(tiny_model: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle of `tiny_model`, exported once per test module; tests must not change it."""
    out = tmp_path_factory.mktemp("bundle") / "tiny"
    torch.set_num_threads(1)
    write_bundle(tiny_model, make_checkpoint(tiny_model), out, ExportConfig(top_k=5))
    return out


@pytest.fixture(scope="module")
def bundle(bundle_dir: Path) -> ModelBundle:
    return load_bundle(bundle_dir, intra_op_threads=1)
