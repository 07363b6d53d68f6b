"""Resuming a training run from the `last.pt` that `hiertcn.train.train_model` saved in --out.

`load_resumable` loads `last.pt` after checking that the model, the item vocabulary and the
data settings may continue it, and `restore_run` puts its weights, optimizer state and
`RunState` back and warns about training settings that the resume changes.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from hiertcn.checkpoint import (
    BEST_CHECKPOINT,
    LAST_CHECKPOINT,
    Checkpoint,
    check_data_settings,
    check_vocabulary,
    load_checkpoint,
)
from hiertcn.data.counts import count_noun
from hiertcn.errors import CheckpointError, ConfigError, UnreadableCheckpointError
from hiertcn.models.config import ModelConfig, flag_for
from hiertcn.models.registry import effective_settings, read_fields

if TYPE_CHECKING:
    from hiertcn.data.options import Dataset
    from hiertcn.train import TrainConfig

logger = logging.getLogger(__name__)


@dataclass
class RunState:
    """Run state that changes from epoch to epoch, which `--resume` restores."""

    epoch: int = 0
    best_mrr: float = -math.inf
    best_epoch: int = 0
    best_metrics: dict[str, float] = field(default_factory=dict)
    epochs_without_improvement: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best_state: dict[str, torch.Tensor] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "best_mrr": self.best_mrr,
            "best_epoch": self.best_epoch,
            "best_metrics": self.best_metrics,
            "epochs_without_improvement": self.epochs_without_improvement,
            "history": self.history,
        }


def restore_run(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    config: TrainConfig,
    out_dir: Path | None,
    device: torch.device,
    dataset: Dataset,
) -> RunState:
    """Load `last.pt` of `out_dir` into the model and optimizer; return the run state.

    Raises CheckpointError as `load_resumable` does.
    """
    checkpoint = load_resumable(model, out_dir, dataset)
    model.load_state_dict(checkpoint.model_state)
    if checkpoint.optimizer_state is not None:
        optimizer.load_state_dict(checkpoint.optimizer_state)
    saved = checkpoint.resume_state
    state = RunState(
        epoch=checkpoint.epoch,
        best_mrr=float(saved.get("best_mrr", -math.inf)),
        best_epoch=int(saved.get("best_epoch", 0)),
        best_metrics=dict(saved.get("best_metrics", {})),
        epochs_without_improvement=int(saved.get("epochs_without_improvement", 0)),
        history=list(saved.get("history", [])),
    )
    best_path = out_dir / BEST_CHECKPOINT
    if best_path.is_file():
        state.best_state = _load_run_checkpoint(best_path, str(device)).model_state
    logger.info("resumed %s at epoch %d (best MRR %.4f)", out_dir, state.epoch, state.best_mrr)
    if state.epoch >= config.epochs:
        logger.warning(
            "nothing to train: %s already contains %s and --epochs is %d; pass a larger "
            "--epochs to continue",
            out_dir,
            count_noun(state.epoch, "epoch"),
            config.epochs,
        )
    elif state.epochs_without_improvement >= config.patience:
        logger.warning(
            "nothing to train: early stopping ended %s after %s without a better "
            "validation MRR, and --patience is %d; pass a larger --patience to continue",
            out_dir,
            count_noun(state.epochs_without_improvement, "epoch"),
            config.patience,
        )
    else:
        _warn_changed_training(out_dir / LAST_CHECKPOINT, checkpoint.train_config, config)
    return state


# Training settings that change the run when a resume alters them, by their flags.
_TRAINING_FLAGS = {
    "batch_size": "--batch-size",
    "learning_rate": "--lr",
    "grad_clip": "--grad-clip",
    "seed": "--seed",
    "threads": "--threads",
}


# Loss settings by their flags, with the losses that read them (None: every loss).
_LOSS_FLAGS: dict[str, tuple[str, frozenset[str] | None]] = {
    "name": ("--loss", None),
    "margin": ("--margin", frozenset({"hinge"})),
    "negatives": ("--negatives", frozenset({"hinge", "bpr", "nce"})),
    "sampler": ("--sampler", frozenset({"hinge", "bpr", "nce"})),
}


# Added to the warning about a changed --threads, whose effect is not visible in the metrics.
_THREADS_NOTE = (
    ", so the run no longer repeats a run made in one go to the last digit (metrics.json lists "
    "the threads of each epoch)"
)


def _setting(flag: str, value: Any) -> str:
    return f"no {flag}" if value is None else f"{flag} {value}"


def _warn_changed_training(path: Path, saved: dict[str, Any], config: TrainConfig) -> None:
    """Log a warning for each training setting that differs from the one `path` was trained with.

    A resume may change them on purpose (a lower learning rate, say), but the checkpoints then
    record only the new values, so the change must not pass unnoticed. Loss settings count only
    where the saved or the new loss reads them.
    """
    current = config.to_dict()
    changes = [
        (flag, saved[key], current[key]) for key, flag in _TRAINING_FLAGS.items() if key in saved
    ]
    saved_loss = saved.get("loss") or {}
    losses = {saved_loss.get("name"), config.loss.name}
    for key, (flag, readers) in _LOSS_FLAGS.items():
        if key in saved_loss and (readers is None or losses & readers):
            changes.append((flag, saved_loss[key], current["loss"][key]))
    for flag, before, now in changes:
        if before != now:
            logger.warning(
                "%s was trained with %s; the run continues with %s%s",
                path,
                _setting(flag, before),
                _setting(flag, now),
                _THREADS_NOTE if flag == "--threads" else "",
            )


def load_resumable(model: torch.nn.Module, out_dir: Path | None, dataset: Dataset) -> Checkpoint:
    """Load `last.pt` of `out_dir` after checking that `model` and `dataset` may continue it.

    Raises CheckpointError when `last.pt` is missing, or when its model configuration, its
    item vocabulary (ids and row order) or its data settings differ from `model` and `dataset`.
    """
    if out_dir is None:
        raise ConfigError("resume needs the output folder of the run: pass --out DIR")
    last_path = out_dir / LAST_CHECKPOINT
    if not last_path.is_file():
        raise CheckpointError(
            f"nothing to resume in {out_dir} because it contains no {LAST_CHECKPOINT}: "
            "start a new run without --resume"
        )
    checkpoint = _load_run_checkpoint(last_path)
    _check_model_config(last_path, ModelConfig.from_dict(checkpoint.model_config), model.config)
    check_vocabulary(last_path, checkpoint, dataset.vocab.ids)
    check_data_settings(last_path, checkpoint, dataset.summary)
    return checkpoint


def check_resume_config(out_dir: Path, config: ModelConfig) -> None:
    """Raise CheckpointError when the run in `out_dir` was trained with other model settings.

    Commands call this before they read the log, so that a wrong flag fails at once. Then
    `train_model` checks the settings again, with the vocabulary and the data settings.
    """
    last_path = out_dir / LAST_CHECKPOINT
    checkpoint = _load_run_checkpoint(last_path)
    _check_model_config(last_path, ModelConfig.from_dict(checkpoint.model_config), config)


def _load_run_checkpoint(path: Path, map_location: str = "cpu") -> Checkpoint:
    """Load a checkpoint of the run in --out, which is damaged when it does not read as one."""
    try:
        return load_checkpoint(path, map_location=map_location)
    except UnreadableCheckpointError as error:
        if error.untrusted:
            raise CheckpointError(
                f"cannot resume, because {path} is {error.reason}. No hiertcn run writes such "
                "a file, so check who changed --out; start over with --force in place of "
                "--resume, or pass another --out"
            ) from error
        # The run wrote this file, so a file that does not read as a checkpoint is damaged.
        damage = error.reason if "damaged" in error.reason else f"damaged ({error.reason})"
        raise CheckpointError(
            f"cannot resume, because {path} is {damage}: start over with --force "
            "in place of --resume, or pass another --out"
        ) from error


def _check_model_config(path: Path, saved: ModelConfig, current: ModelConfig) -> None:
    """Raise CheckpointError naming each setting that differs and that either model reads.

    Settings that neither model reads have no effect, so a run may resume with other values.
    Unset dilations count as the model's default.
    """
    compared = read_fields(saved) | read_fields(current) | {"name"}
    trained, requested = effective_settings(saved), effective_settings(current)
    fields = [key for key in trained if key in compared and trained[key] != requested[key]]
    if not fields:
        return
    was = ", ".join(f"{key}={trained[key]}" for key in fields)
    now = ", ".join(f"{key}={requested[key]}" for key in fields)
    flags = " ".join(flag_for(key, trained[key]) for key in fields)
    raise CheckpointError(
        f"{path} was trained with {was}, not {now}: resume with {flags}, or start over "
        "with --force in place of --resume, or pass another --out"
    )
