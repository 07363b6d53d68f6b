"""Training checkpoints: everything needed to rebuild, evaluate, export or resume a model.

A checkpoint is one `torch.save` file of plain containers (dicts, lists, str, numbers and
tensors), so `torch.load(..., weights_only=True)` reads it without unpickling any class. It
stores the model configuration dict next to the state dict, so `build_model_from_checkpoint`
rebuilds the model without any other file.
"""

from __future__ import annotations

import logging
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from hiertcn.errors import CheckpointError

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT_VERSION = 1
BEST_CHECKPOINT = "best.pt"
LAST_CHECKPOINT = "last.pt"


@dataclass(frozen=True)
class Checkpoint:
    """The content of one checkpoint file.

    `item_ids[r]` is the external id (str) of item row `r`. `metrics` contains the validation
    metrics of `epoch` and, once a command evaluated it, `metrics["test"]`. `resume_state`
    contains what `--resume` needs besides the weights: the best validation MRR so far, the
    epochs without improvement and the history.
    """

    model_config: dict[str, Any]
    model_state: dict[str, torch.Tensor]
    train_config: dict[str, Any]
    item_ids: list[str]
    data_summary: dict[str, Any]
    metrics: dict[str, Any]
    epoch: int
    optimizer_state: dict[str, Any] | None = None
    resume_state: dict[str, Any] = field(default_factory=dict)

    @property
    def num_items(self) -> int:
        """Number of item rows N of the model."""
        return len(self.item_ids)

    def to_dict(self) -> dict[str, Any]:
        """Return the plain dict that `save_checkpoint` writes."""
        return {
            "format_version": CHECKPOINT_FORMAT_VERSION,
            "model_config": self.model_config,
            "model_state": self.model_state,
            "train_config": self.train_config,
            "item_ids": list(self.item_ids),
            "data_summary": self.data_summary,
            "metrics": self.metrics,
            "epoch": self.epoch,
            "optimizer_state": self.optimizer_state,
            "resume_state": self.resume_state,
        }


def save_checkpoint(path: str | os.PathLike[str], checkpoint: Checkpoint) -> Path:
    """Write `checkpoint` to `path` atomically (a temporary file, then a rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    torch.save(checkpoint.to_dict(), temporary)
    os.replace(temporary, path)
    logger.debug("wrote checkpoint %s (epoch %d)", path, checkpoint.epoch)
    return path


def load_checkpoint(path: str | os.PathLike[str], map_location: str = "cpu") -> Checkpoint:
    """Read a checkpoint written by `save_checkpoint`; raise CheckpointError when it is not one."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found: pass the best.pt or last.pt of a run")
    try:
        content = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, OSError, EOFError, ValueError, pickle.UnpicklingError) as error:
        raise CheckpointError(f"checkpoint {path} is unreadable ({error}): retrain it") from error
    if not isinstance(content, dict) or "format_version" not in content:
        raise CheckpointError(f"{path} is not a hiertcn checkpoint: pass the best.pt of a run")
    version = content["format_version"]
    if version != CHECKPOINT_FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format version {version}, but this hiertcn reads "
            f"version {CHECKPOINT_FORMAT_VERSION}: retrain it with this version"
        )
    return Checkpoint(
        model_config=content["model_config"],
        model_state=content["model_state"],
        train_config=content["train_config"],
        item_ids=[str(item) for item in content["item_ids"]],
        data_summary=content["data_summary"],
        metrics=content["metrics"],
        epoch=int(content["epoch"]),
        optimizer_state=content["optimizer_state"],
        resume_state=content.get("resume_state") or {},
    )


def build_model_from_checkpoint(
    checkpoint: Checkpoint, device: str | torch.device = "cpu"
) -> torch.nn.Module:
    """Rebuild the model of `checkpoint` from its configuration and load its weights."""
    # Importing the package registers every model class by name.
    from hiertcn.models import registry
    from hiertcn.models.config import ModelConfig

    config = ModelConfig.from_dict(checkpoint.model_config)
    model = registry.build_model(config, checkpoint.num_items)
    try:
        model.load_state_dict(checkpoint.model_state)
    except RuntimeError as error:
        raise CheckpointError(
            f"weights of the checkpoint do not fit model {checkpoint.model_config.get('name')!r} "
            f"({error}): the checkpoint was written by another version of the model"
        ) from error
    return model.to(device)


def load_model(
    path: str | os.PathLike[str], device: str | torch.device = "cpu"
) -> tuple[torch.nn.Module, Checkpoint]:
    """Load a checkpoint file and return the rebuilt model (in eval mode) with the checkpoint."""
    checkpoint = load_checkpoint(path)
    model = build_model_from_checkpoint(checkpoint, device)
    model.eval()
    return model, checkpoint
