"""The device, threads and environment of a training or evaluation run, and its metrics file.

`resolve_device` and `set_threads` pick the device and torch's CPU threads of a run, and
`run_environment` lists them with the library versions and the CPU, because these decide the last
digits of the results. `save_run_metrics` writes a run's metrics.json.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import platform
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from hiertcn.checkpoint import BEST_CHECKPOINT, load_checkpoint, save_checkpoint
from hiertcn.errors import ConfigError

if TYPE_CHECKING:
    from hiertcn.models.config import ModelConfig
    from hiertcn.train import TrainConfig, TrainResult

logger = logging.getLogger(__name__)

# Values of `TrainConfig.device` and of the --device flags: auto (CUDA when present), cpu or cuda.
DEVICES = ("auto", "cpu", "cuda")


def resolve_device(name: str) -> torch.device:
    """Return the torch device for `auto` (CUDA when present, else CPU), `cpu` or `cuda`."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        if torch.version.cuda is None:
            reason = f"this torch build ({torch.__version__}) has no CUDA support"
        else:
            reason = f"torch {torch.__version__} (CUDA {torch.version.cuda}) finds no GPU"
        raise ConfigError(
            f"device 'cuda' requested, but {reason}: use --device cpu, or check the NVIDIA "
            "driver with nvidia-smi"
        )
    if name not in DEVICES:
        raise ConfigError(f"device {name!r} is invalid: use one of {DEVICES}")
    return torch.device(name)


def set_threads(threads: int | None) -> int:
    """Set torch's CPU thread count for this process when `threads` is given; return the count.

    The setting is process-wide, as torch has no other kind.
    """
    if threads is not None and threads != torch.get_num_threads():
        torch.set_num_threads(threads)
        logger.info("torch uses %d CPU thread%s", threads, "" if threads == 1 else "s")
        cores = os.cpu_count() or 1
        if threads > cores:
            logger.warning(
                "--threads %d is above this machine's core count (%d), which slows torch down: "
                "use it only to repeat a run made with %d threads",
                threads,
                cores,
                threads,
            )
    return torch.get_num_threads()


def run_environment(device: str) -> dict[str, Any]:
    """Return what besides the settings decides a run's last digits, for its records.

    The thread count, the library versions and the CPU's vector instructions, by which torch
    picks its convolution kernels, change the order of floating-point sums, so two runs of one
    command agree to every digit only where these agree too.
    """
    from hiertcn import __version__

    return {
        "hiertcn": __version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "device": device,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "cpu": cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }


def save_run_metrics(
    run_dir: Path,
    model_config: ModelConfig,
    train_config: TrainConfig,
    result: TrainResult,
    test: dict[str, float],
) -> Path:
    """Add the test metrics to the run's best.pt and write its metrics.json.

    The training settings are those saved in best.pt, which records the batch size after
    `train_model` capped it, and `train_config` where the run saved no best.pt.
    """
    best_path = run_dir / BEST_CHECKPOINT
    training = train_config.to_dict()
    if best_path.is_file():
        best = load_checkpoint(best_path)
        metrics = {**best.metrics, "test": test}
        save_checkpoint(best_path, dataclasses.replace(best, metrics=metrics))
        training = best.train_config
    summary = {
        "model": model_config.to_dict(),
        "training": training,
        "best_epoch": result.best_epoch,
        "valid": result.best_metrics,
        "test": test,
        "environment": run_environment(result.device),
        "history": result.history,
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "metrics.json"
    path.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    logger.info("wrote %s", path)
    return path


def cpu_model() -> str | None:
    """Return the CPU's model name from /proc/cpuinfo, or None where there is none (not Linux)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as info:
            for line in info:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    return value.strip()
    except OSError:
        return None
    return None
