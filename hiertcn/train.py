"""The training loop: Adam over queue-based mini-batches, early stopping on validation MRR.

`train_model(model, dataset, config, out_dir)` is the entry point for the `hiertcn train` command
and for experiment runners. Each epoch:

1. seed python, numpy and torch from (seed, epoch), so a resumed run repeats the same epochs;
2. deal the users to B queues (`hiertcn.batching`) and run the batches in order. The model
   state is carried across batches and reset where a queue moves to a new user. It is detached
   after every batch (truncated backpropagation through time at batch edges). Each step's loss
   is the batch's mean loss scaled by its events over those of a full batch, so every event
   weighs the same: the few-row batches at the end of an epoch would otherwise take full steps
   toward a few users;
3. evaluate on the validation split, write `last.pt`, and `best.pt` when validation MRR improved;
4. stop after `patience` epochs without improvement.

Models with `trainable = False` (most popular) are fitted once from the item counts of the
training split and evaluated, with no optimizer.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import os
import platform
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hiertcn.batching import Batch, BatchConfig, BatchGenerator
from hiertcn.checkpoint import (
    BEST_CHECKPOINT,
    LAST_CHECKPOINT,
    Checkpoint,
    check_data_settings,
    check_vocabulary,
    load_checkpoint,
    save_checkpoint,
)
from hiertcn.errors import (
    CheckpointError,
    ConfigError,
    InvalidFieldError,
    TrainingDivergedError,
    UnreadableCheckpointError,
)
from hiertcn.evaluate import EvaluationConfig, capped_batch_size, evaluate_model
from hiertcn.losses import LossConfig, build_loss
from hiertcn.models.config import ModelConfig, flag_for
from hiertcn.models.registry import effective_settings, read_fields
from hiertcn.progress import ProgressBar

logger = logging.getLogger(__name__)

# The most CPU threads that `threads` may ask torch for: above the core count of common servers,
# and below 9999, at which torch 2 crashed with a segmentation fault on a 2-core machine.
MAX_THREADS = 1024

DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class TrainConfig:
    """Configuration of one training run.

    `patience` is the number of epochs without a better validation MRR after which training
    stops. `grad_clip` is the maximum global L2 norm of the gradients (None: no clipping).
    `max_batches` caps the batches of each epoch (None: all), for smoke runs and benchmarks.
    `threads` is torch's CPU thread count for the run (None: torch's default, one per core). The
    sums inside convolutions and matrix products split by thread, so the last digits of a run,
    and through them its metrics, depend on it: fix it to repeat a run on another machine.
    """

    epochs: int = 10
    batch_size: int = 32
    learning_rate: float = 1e-3
    patience: int = 3
    grad_clip: float | None = None
    seed: int = 0
    device: str = "auto"
    loss: LossConfig = field(default_factory=LossConfig)
    max_batches: int | None = None
    progress: bool = True
    threads: int | None = None

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "patience"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise InvalidFieldError("training", name, value, "use an integer >= 1")
        # An infinite learning rate makes every weight NaN, and an infinite norm clips nothing.
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise InvalidFieldError(
                "training", "learning_rate", self.learning_rate, "use a finite learning rate > 0"
            )
        if self.grad_clip is not None and not (
            math.isfinite(self.grad_clip) and self.grad_clip > 0
        ):
            raise InvalidFieldError(
                "training", "grad_clip", self.grad_clip, "use a finite norm > 0"
            )
        if self.max_batches is not None and self.max_batches < 1:
            raise InvalidFieldError("training", "max_batches", self.max_batches, "use 1 or more")
        if self.threads is not None and (
            not isinstance(self.threads, int) or not 1 <= self.threads <= MAX_THREADS
        ):
            raise InvalidFieldError("training", "threads", self.threads, f"use 1 to {MAX_THREADS}")
        if self.device not in DEVICES:
            raise ConfigError(f"device {self.device!r} is invalid: use one of {DEVICES}")

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict of every field, the loss configuration as a nested dict."""
        values = dataclasses.asdict(self)
        values["loss"] = dataclasses.asdict(self.loss)
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Rebuild a configuration written by `to_dict`."""
        values = dict(values)
        values["loss"] = LossConfig(**values.get("loss", {}))
        return cls(**values)


@dataclass(frozen=True)
class TrainResult:
    """Outcome of `train_model`.

    `model` has the weights of the best epoch. `history` has one dict per epoch (loss,
    validation metrics, seconds, events per second). `epoch_seconds` is the wall-clock training
    time of each epoch without validation, and `epoch_cpu_seconds` the CPU time of this process
    in the same span, which a busy machine distorts less. `last_input_bytes` is the bytes of the
    padded input tensors of each batch of the last epoch.
    """

    model: torch.nn.Module
    best_epoch: int
    best_metrics: dict[str, float]
    history: list[dict[str, Any]]
    epoch_seconds: list[float]
    epoch_cpu_seconds: list[float]
    last_input_bytes: list[int]
    device: str
    out_dir: Path | None = None


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


def seed_everything(seed: int) -> None:
    """Seed the python, numpy and torch random generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def item_counts(dataset) -> np.ndarray:
    """Return the number of training events of each item row, int64 [N]."""
    return np.bincount(np.asarray(dataset.train.items), minlength=len(dataset.vocab.ids))


def epoch_seed(seed: int, epoch: int) -> int:
    """Return the seed of one epoch, distinct for every (seed, epoch) with epoch < 1000003."""
    return seed * 1_000_003 + epoch


@dataclass
class _RunState:
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


def train_model(
    model: torch.nn.Module,
    dataset,
    config: TrainConfig,
    out_dir: str | Path | None = None,
    resume: bool = False,
) -> TrainResult:
    """Train `model` on `dataset.train`, select the epoch by MRR on `dataset.valid`.

    With `out_dir`, every epoch writes `last.pt` and every better epoch `best.pt` there. With
    `resume`, training continues from `out_dir/last.pt`. Returns the model with the weights of
    the best epoch.
    """
    device = resolve_device(config.device)
    set_threads(config.threads)
    out_dir = Path(out_dir) if out_dir is not None else None
    model.to(device)
    if not getattr(model, "trainable", True):
        if resume:
            # Nothing to continue, but a run of another model or log must not be overwritten.
            _load_resumable(model, out_dir, dataset)
        return _fit_untrained(model, dataset, config, device, out_dir)

    config = _cap_batch_size(config, dataset.train.num_users)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    state = _RunState()
    if resume:
        state = _restore(model, optimizer, config, out_dir, device, dataset)

    loss_fn = build_loss(config.loss, len(dataset.vocab.ids), item_counts(dataset))
    generator = BatchGenerator(
        dataset.train, BatchConfig(batch_size=config.batch_size, seed=config.seed)
    )
    epoch_seconds: list[float] = []
    epoch_cpu_seconds: list[float] = []
    input_bytes: list[int] = []
    while state.epoch < config.epochs and state.epochs_without_improvement < config.patience:
        state.epoch += 1
        seed_everything(epoch_seed(config.seed, state.epoch))
        cpu_started = time.process_time()
        loss, seconds, events, input_bytes = _train_epoch(
            model, generator, optimizer, loss_fn, config, state.epoch, device
        )
        epoch_cpu_seconds.append(time.process_time() - cpu_started)
        epoch_seconds.append(seconds)
        valid = _validate(model, dataset, config, device)
        _record_epoch(state, model, valid, loss, seconds, events, config)
        if out_dir is not None:
            _save_run(out_dir, model, optimizer, dataset, config, state, valid)
        if state.epochs_without_improvement >= config.patience and state.epoch < config.epochs:
            logger.info(
                "early stopping after epoch %d/%d: no better validation MRR for %d epoch%s "
                "(--patience %d), best epoch %d (valid MRR %.4f)",
                state.epoch,
                config.epochs,
                state.epochs_without_improvement,
                "" if state.epochs_without_improvement == 1 else "s",
                config.patience,
                state.best_epoch,
                state.best_mrr,
            )

    if state.best_state is not None:
        model.load_state_dict(state.best_state)
    return TrainResult(
        model=model,
        best_epoch=state.best_epoch,
        best_metrics=state.best_metrics,
        history=state.history,
        epoch_seconds=epoch_seconds,
        epoch_cpu_seconds=epoch_cpu_seconds,
        last_input_bytes=input_bytes,
        device=str(device),
        out_dir=out_dir,
    )


def _cap_batch_size(config: TrainConfig, num_users: int) -> TrainConfig:
    """Return `config` with a batch size of at most `num_users`, warning when it lowers it.

    With B > U the rows past U stay empty (see `capped_batch_size`), but each step's loss is
    still scaled by its events over those of B full rows, so a wider batch would only shrink
    every step. The checkpoints record the capped size.
    """
    batch_size = capped_batch_size(config.batch_size, num_users)
    if batch_size == config.batch_size:
        return config
    logger.warning(
        "--batch-size %d is above the %d users of the training split, and a batch contains at "
        "most one session per user: training with --batch-size %d",
        config.batch_size,
        num_users,
        batch_size,
    )
    return dataclasses.replace(config, batch_size=batch_size)


def _train_epoch(
    model: torch.nn.Module,
    generator: BatchGenerator,
    optimizer: torch.optim.Optimizer,
    loss_fn,
    config: TrainConfig,
    epoch: int,
    device: torch.device,
) -> tuple[float, float, int, list[int]]:
    """Run one epoch; return (mean loss per event, seconds, events, input bytes per batch)."""
    model.train()
    total_batches = generator.num_batches(epoch)
    if config.max_batches is not None:
        total_batches = min(total_batches, config.max_batches)
    progress = ProgressBar(total_batches, f"epoch {epoch}", enabled=config.progress)
    carry = model.initial_carry(config.batch_size, device)
    loss_sum, events, input_bytes = 0.0, 0, []
    started = time.perf_counter()
    for index, batch in enumerate(generator.epoch(epoch)):
        if index >= total_batches:
            break
        weight = batch.num_events / generator.events_per_full_batch
        loss, carry = _train_batch(model, batch, carry, optimizer, loss_fn, config, device, weight)
        if not math.isfinite(loss):
            progress.close()
            raise TrainingDivergedError(_diverged_message(config, epoch, index + 1, loss))
        input_bytes.append(int(getattr(model, "last_input_bytes", 0) or batch.input_bytes))
        loss_sum += loss * batch.num_events
        events += batch.num_events
        progress.update(1, events=batch.num_events, loss=loss)
    progress.close()
    seconds = time.perf_counter() - started
    return loss_sum / max(events, 1), seconds, events, input_bytes


def _diverged_message(config: TrainConfig, epoch: int, batch: int, loss: float) -> str:
    """Describe a non-finite training loss and the flags that usually prevent it."""
    clip = (
        "pass --grad-clip, e.g. --grad-clip 1"
        if config.grad_clip is None
        else f"lower --grad-clip (now {config.grad_clip:g})"
    )
    return (
        f"the training loss of epoch {epoch} is {loss} at batch {batch}, so training stopped "
        f"before saving this epoch: lower --lr (now {config.learning_rate:g}) or {clip}"
    )


def _train_batch(
    model, batch: Batch, carry, optimizer, loss_fn, config, device, weight: float = 1.0
):
    """Take one optimizer step on `weight` times the batch's mean loss.

    Returns the mean loss (unweighted) and the carry detached from the graph.
    """
    carry = model.reset_carry(carry, torch.as_tensor(batch.new_user, device=device))
    items = torch.as_tensor(batch.items, device=device)
    lengths = torch.as_tensor(batch.lengths, device=device)
    queries, carry = model(items, lengths, carry)  # [B, L, D]
    carry = model.detach_carry(carry)
    if batch.num_events == 0:
        return 0.0, carry

    valid = torch.as_tensor(batch.valid, device=device)  # [B, L]
    impressions = None
    if batch.impressions is not None:
        impressions = torch.as_tensor(batch.impressions, device=device)[valid]  # [P, M]
    loss = _batch_loss(loss_fn, model, queries[valid], items[valid], impressions)

    optimizer.zero_grad(set_to_none=True)
    (loss * weight).backward()
    if config.grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
    optimizer.step()
    return float(loss.detach()), carry


def _batch_loss(loss_fn, model, queries, targets, impressions) -> torch.Tensor:
    """Mean loss over the P real events: queries [P, D], targets int64 [P], impressions [P, M]."""
    return loss_fn(queries, targets, model.item_embeddings(), impressions=impressions)


def _validate(model, dataset, config: TrainConfig, device) -> dict[str, float]:
    evaluation = EvaluationConfig(batch_size=config.batch_size)
    return evaluate_model(model, dataset.valid, evaluation, device).metrics


def _record_epoch(state: _RunState, model, valid, loss, seconds, events, config) -> None:
    """Append the epoch to the history and keep the weights when validation MRR improved."""
    mrr = valid["mrr"]
    improved = not math.isnan(mrr) and mrr > state.best_mrr
    if improved:
        state.best_mrr, state.best_epoch, state.best_metrics = mrr, state.epoch, dict(valid)
        state.best_state = copy.deepcopy(model.state_dict())
        state.epochs_without_improvement = 0
    else:
        state.epochs_without_improvement += 1
    rate = events / seconds if seconds > 0 else 0.0
    # The thread count of each epoch, because a resume may change it (see `set_threads`).
    state.history.append(
        {"epoch": state.epoch, "loss": loss, "seconds": seconds, "events_per_second": rate}
        | {"threads": torch.get_num_threads(), "valid": dict(valid)}
    )
    logger.info(
        "epoch %d/%d: loss %.4f, valid MRR %.4f, Recall@10 %.4f, %.1f s, %.0f events/s%s",
        state.epoch,
        config.epochs,
        loss,
        mrr,
        valid.get("recall@10", float("nan")),
        seconds,
        rate,
        " (best)" if improved else "",
    )


def _checkpoint(model, optimizer, dataset, config, epoch, metrics, resume_state) -> Checkpoint:
    return Checkpoint(
        model_config=model.config.to_dict(),
        model_state={name: value.detach().cpu() for name, value in model.state_dict().items()},
        train_config=config.to_dict(),
        item_ids=list(dataset.vocab.ids),
        data_summary=dict(dataset.summary),
        metrics={"valid": dict(metrics)},
        epoch=epoch,
        optimizer_state=optimizer.state_dict() if optimizer is not None else None,
        resume_state=resume_state,
    )


def _save_run(out_dir, model, optimizer, dataset, config, state: _RunState, valid) -> None:
    last = _checkpoint(model, optimizer, dataset, config, state.epoch, valid, state.to_dict())
    save_checkpoint(out_dir / LAST_CHECKPOINT, last)
    if state.best_epoch == state.epoch:
        save_checkpoint(out_dir / BEST_CHECKPOINT, last)


def _restore(model, optimizer, config: TrainConfig, out_dir, device, dataset) -> _RunState:
    """Load `last.pt` of `out_dir` into the model and optimizer; return the run state.

    Raises CheckpointError as `_load_resumable` does.
    """
    checkpoint = _load_resumable(model, out_dir, dataset)
    model.load_state_dict(checkpoint.model_state)
    if checkpoint.optimizer_state is not None:
        optimizer.load_state_dict(checkpoint.optimizer_state)
    saved = checkpoint.resume_state
    state = _RunState(
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
            "nothing to train: %s already contains %d epochs and --epochs is %d; pass a larger "
            "--epochs to continue",
            out_dir,
            state.epoch,
            config.epochs,
        )
    elif state.epochs_without_improvement >= config.patience:
        logger.warning(
            "nothing to train: early stopping ended %s after %d epochs without a better "
            "validation MRR, and --patience is %d; pass a larger --patience to continue",
            out_dir,
            state.epochs_without_improvement,
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


def _load_resumable(model, out_dir, dataset) -> Checkpoint:
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


def _fit_untrained(model, dataset, config: TrainConfig, device, out_dir) -> TrainResult:
    """Fit a model without gradient training from the item counts of the training split.

    A model without `fit_counts` (moving average over fixed item vectors) is only evaluated.
    """
    if hasattr(model, "fit_counts"):
        model.fit_counts(item_counts(dataset))
    valid = _validate(model, dataset, config, device)
    logger.info("fitted %s without training: valid MRR %.4f", model.config.name, valid["mrr"])
    history = [{"epoch": 0, "loss": float("nan"), "seconds": 0.0, "valid": dict(valid)}]
    if out_dir is not None:
        resume_state = {"best_mrr": valid["mrr"], "best_epoch": 0, "history": history}
        checkpoint = _checkpoint(model, None, dataset, config, 0, valid, resume_state)
        save_checkpoint(out_dir / LAST_CHECKPOINT, checkpoint)
        save_checkpoint(out_dir / BEST_CHECKPOINT, checkpoint)
    return TrainResult(
        model=model,
        best_epoch=0,
        best_metrics=dict(valid),
        history=history,
        epoch_seconds=[],
        epoch_cpu_seconds=[],
        last_input_bytes=[],
        device=str(device),
        out_dir=out_dir,
    )
