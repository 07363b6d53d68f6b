"""Tests of the pruned session step against HierTCN.session_user_embedding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from export.step_graph import build_pruned_step
from hiertcn.models import ModelConfig, build_model

CONFIGS = {
    "downsample": ModelConfig(
        embedding_dim=8, hidden_size=6, gru_layers=2, tcn_channels=5, kernel_size=3,
        dilations=(1, 2),
    ),
    "identity_residual": ModelConfig(
        embedding_dim=4, hidden_size=4, gru_layers=1, tcn_channels=8, kernel_size=2,
        dilations=(1, 2, 4, 8),
    ),
    "odd_dilations": ModelConfig(
        embedding_dim=8, hidden_size=8, gru_layers=3, tcn_channels=8, kernel_size=2,
        dilations=(3, 2, 6),
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_pruned_step_matches_model(name: str) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    config = CONFIGS[name]
    model = build_model(config, 30).eval()
    pruned = build_pruned_step(model)
    assert pruned is not None
    rng = np.random.default_rng(0)
    for width in [*range(20), model.receptive_field, model.receptive_field + 5]:
        lengths = rng.integers(0, width + 1, size=5)
        lengths[0] = width
        prefix = torch.randn(5, width, config.embedding_dim)
        for row, length in enumerate(lengths):
            prefix[row, : width - length] = 0.0
        state = torch.rand(5, config.gru_layers, config.hidden_size) * 2 - 1
        with torch.no_grad():
            expected = model.session_user_embedding(prefix, torch.from_numpy(lengths), state)
            actual = pruned(prefix, torch.from_numpy(lengths), state)
        torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0, msg=f"width {width}")


def test_pruned_step_declines_batch_norm() -> None:
    model = build_model(ModelConfig(embedding_dim=4, hidden_size=4, batch_norm=True), 10)
    assert build_pruned_step(model.eval()) is None
