"""Round trip on real data: train a small HierTCN, export, verify, load without torch."""

from __future__ import annotations

import itertools
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from export.bundle import load_bundle
from export.manifest import read_manifest
from export.verify import VerifyConfig, require_passed, verify_bundle
from hiertcn.checkpoint import load_model
from hiertcn.cli import main
from hiertcn.data.options import DataConfig, load_dataset_from_config
from hiertcn.models import ModelConfig, build_model
from hiertcn.train import TrainConfig, train_model
from tests.conftest import REPO_ROOT
from tests.export.conftest import build_prefix

pytestmark = pytest.mark.slow

SMALL_CONFIG = ModelConfig(
    embedding_dim=16, hidden_size=16, gru_layers=2, tcn_channels=16, kernel_size=3,
    dilations=(1, 2, 4),
)  # fmt: skip
TRAIN_CONFIG = TrainConfig(epochs=1, max_batches=20, device="cpu", progress=False)

# Runs in a fresh interpreter where `import torch` raises ImportError, like a serving host
# without torch: it loads the bundle, runs both graphs and saves what they returned.
NO_TORCH_SCRIPT = textwrap.dedent(
    """
    import sys
    sys.modules["torch"] = None  # any import of torch now raises ImportError
    import numpy as np
    from export.bundle import load_bundle

    bundle_dir, inputs_path, outputs_path = sys.argv[1:]
    inputs = np.load(inputs_path)
    bundle = load_bundle(bundle_dir, device="cpu", intra_op_threads=1)
    embedding = bundle.session_step(inputs["prefix"], inputs["lengths"], inputs["state"])
    new_state = bundle.session_close(inputs["state"], inputs["session_mean"])
    loaded = sorted(
        name
        for name, module in sys.modules.items()
        if module is not None and name.split(".")[0] in ("torch", "hiertcn")
    )
    np.savez(outputs_path, embedding=embedding, new_state=new_state)
    print("modules:", loaded)
    """
)


def session_rows(log) -> list[np.ndarray]:
    """Return the item rows of every session of an `EventLog`."""
    offsets = log.session_offsets
    return [log.items[start:end] for start, end in itertools.pairwise(offsets)]


def test_movielens_round_trip(shared_data: Path, tmp_path: Path) -> None:
    dataset = load_dataset_from_config(
        DataConfig(path=shared_data / "movielens-latest-small" / "ratings.csv")
    )
    torch.manual_seed(0)
    model = build_model(SMALL_CONFIG, dataset.log.num_items)
    train_model(model, dataset, TRAIN_CONFIG, tmp_path / "run")

    # Export the checkpoint file with the command, as a user would.
    out = tmp_path / "bundle"
    assert (
        main(["export", "--checkpoint", str(tmp_path / "run" / "best.pt"), "--out", str(out)]) == 0
    )
    restored, _ = load_model(tmp_path / "run" / "best.pt")
    manifest = read_manifest(out)
    assert manifest.session_gap == dataset.summary["session_gap"]
    assert manifest.max_session_items == restored.receptive_field
    assert manifest.training["metrics"]["valid"]["mrr"] > 0

    bundle = load_bundle(tmp_path / "bundle", intra_op_threads=1)
    report = verify_bundle(restored, bundle, VerifyConfig(), session_rows(dataset.test))
    require_passed(report)

    # The serving side: a process in which torch cannot be imported.
    rng = np.random.default_rng(1)
    sessions = [s[-restored.receptive_field :] for s in session_rows(dataset.test)[:64]]
    prefix, lengths = build_prefix(bundle, sessions)
    state = np.repeat(bundle.start_state[None], len(sessions), axis=0)
    state = state + rng.uniform(-0.5, 0.5, state.shape).astype(np.float32)
    session_mean = np.stack([bundle.gather_items(s).mean(axis=0) for s in sessions])
    np.savez(tmp_path / "inputs.npz", prefix=prefix, lengths=lengths, state=state,
             session_mean=session_mean)  # fmt: skip
    completed = subprocess.run(
        [sys.executable, "-c", NO_TORCH_SCRIPT, str(tmp_path / "bundle"),
         str(tmp_path / "inputs.npz"), str(tmp_path / "outputs.npz")],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    assert "modules: []" in completed.stdout

    outputs = np.load(tmp_path / "outputs.npz")
    with torch.no_grad():
        expected_embedding = restored.session_user_embedding(
            torch.from_numpy(prefix), torch.from_numpy(lengths), torch.from_numpy(state)
        ).numpy()
        expected_state = restored.close_session(
            torch.from_numpy(state), torch.from_numpy(session_mean)
        ).numpy()
    np.testing.assert_allclose(outputs["embedding"], expected_embedding, atol=1e-4)
    np.testing.assert_allclose(outputs["new_state"], expected_state, atol=1e-4)
