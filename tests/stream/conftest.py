"""Fixtures of the stream tests: a real ONNX bundle of a tiny random HierTCN.

The bundle is exported with torch once per test session; `stream` itself never imports torch.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

NUM_ITEMS = 120
SESSION_GAP = 1800.0
REPOSITORY_ROOT = Path(__file__).resolve().parents[2]


def make_tiny_model():
    """Build a tiny HierTCN (D=8, H=6, G=2, TCN receptive field 13) with seeded weights."""
    import torch

    from hiertcn.models import ModelConfig, build_model

    torch.set_num_threads(1)
    torch.manual_seed(7)
    config = ModelConfig(
        embedding_dim=8,
        hidden_size=6,
        gru_layers=2,
        tcn_channels=5,
        kernel_size=3,
        dilations=(1, 2),
    )
    model = build_model(config, NUM_ITEMS)
    with torch.no_grad():
        # A non-zero start state, so a pipeline that ignores it changes the outputs.
        model.start_state.normal_(0.0, 0.3)
    return model.eval()


@pytest.fixture(scope="session")
def tiny_model():
    return make_tiny_model()


@pytest.fixture(scope="session")
def onnx_bundle_dir(tiny_model, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle of `tiny_model` with item ids "0".."119", K=5 and a 1800 s session gap."""
    from export.onnx_export import ExportConfig, write_bundle
    from hiertcn.checkpoint import Checkpoint

    checkpoint = Checkpoint(
        model_config=tiny_model.config.to_dict(),
        model_state=tiny_model.state_dict(),
        train_config={"session_gap": SESSION_GAP},
        item_ids=[str(row) for row in range(NUM_ITEMS)],
        data_summary={"session_gap": SESSION_GAP, "num_items": NUM_ITEMS},
        metrics={},
        epoch=1,
    )
    out = tmp_path_factory.mktemp("stream-bundle") / "tiny"
    write_bundle(tiny_model, checkpoint, out, ExportConfig(top_k=5))
    return out


@pytest.fixture(scope="session")
def onnx_bundle(onnx_bundle_dir: Path):
    from export.bundle import load_bundle

    return load_bundle(onnx_bundle_dir, intra_op_threads=1)


def write_event_log(path: Path, count: int, seed: int, num_items: int = NUM_ITEMS) -> list[dict]:
    """Write a JSONL event log of `count` events of 8 users, in global time order."""
    import json

    rng = np.random.default_rng(seed)
    clock = 1_700_000_000.0
    events = []
    for _ in range(count):
        user = f"user{int(rng.integers(8))}"
        clock += float(rng.choice([1.0, 30.0, 300.0, 1200.0]))
        event = {"user": user, "item": int(rng.integers(num_items)), "ts": clock}
        if rng.random() < 0.25:
            event["impressions"] = [int(x) for x in rng.choice(num_items, 5, replace=False)]
        events.append(event)
    path.write_text("".join(json.dumps(event) + "\n" for event in events))
    return events


def require_cuda_build_without_gpu() -> None:
    """Skip unless onnxruntime offers the CUDA provider and this host's NVIDIA driver finds no
    GPU: the case where ONNX Runtime would print its own errors when asked for CUDA."""
    import onnxruntime as ort

    from export.providers import CUDA_PROVIDER, probe_cuda_driver

    if CUDA_PROVIDER not in ort.get_available_providers():
        pytest.skip("this onnxruntime build has no CUDA provider (onnxruntime-gpu is missing)")
    if probe_cuda_driver() is None:
        pytest.skip("a CUDA GPU is usable on this host")


def run_stream_command(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run `hiertcn-stream ARGS` in a new Python process and capture its output.

    A subprocess is needed where native libraries (ONNX Runtime, librdkafka) write to the file
    descriptors directly, which capsys does not see.
    """
    return subprocess.run(
        [sys.executable, "-m", "stream.cli", *args],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(REPOSITORY_ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )


# Text of the lines that ONNX Runtime writes itself when the CUDA provider fails to start, such as
# "[E:onnxruntime:Default, provider_bridge_ort.cc:...] ... Failed to load library ...".
ORT_OUTPUT_MARKERS = ("onnxruntime", "[E:", "[W:", "LoadLibrary")
