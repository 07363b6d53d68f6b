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
import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from hiertcn.batching import Batch, BatchConfig, BatchGenerator
from hiertcn.checkpoint import BEST_CHECKPOINT, LAST_CHECKPOINT, Checkpoint, save_checkpoint
from hiertcn.data.stats import compute_impression_stats
from hiertcn.errors import ConfigError, InvalidFieldError, TrainingDivergedError
from hiertcn.evaluate import EvaluationConfig, capped_batch_size, evaluate_model
from hiertcn.losses import PAIRWISE_LOSSES, Loss, LossConfig, build_loss
from hiertcn.models.base import Carry
from hiertcn.progress import ProgressBar
from hiertcn.resume import RunState, load_resumable, restore_run
from hiertcn.run_info import DEVICES, resolve_device, set_threads

if TYPE_CHECKING:
    from hiertcn.data.log import EventLog
    from hiertcn.data.options import Dataset

logger = logging.getLogger(__name__)

# Share of training events with other impressions in the vocabulary below which
# `--sampler impressions` logs a warning, because most events then draw their negatives from the
# whole catalog. 10% is a judgment, not a measured limit.
IMPRESSION_SHARE_WARNING = 0.1

# The most CPU threads that `threads` may ask torch for: above the core count of common servers,
# and below 9999, at which torch 2 crashed with a segmentation fault on a 2-core machine.
MAX_THREADS = 1024


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


def seed_everything(seed: int) -> None:
    """Seed the python, numpy and torch random generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def item_counts(dataset: Dataset) -> np.ndarray:
    """Return the number of training events of each item row, int64 [N]."""
    return np.bincount(np.asarray(dataset.train.items), minlength=len(dataset.vocab.ids))


def epoch_seed(seed: int, epoch: int) -> int:
    """Return the seed of one epoch, distinct for every (seed, epoch) with epoch < 1000003."""
    return seed * 1_000_003 + epoch


def train_model(
    model: torch.nn.Module,
    dataset: Dataset,
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
            load_resumable(model, out_dir, dataset)
        return _fit_untrained(model, dataset, config, device, out_dir)

    config = _cap_batch_size(config, dataset.train.num_users)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    state = RunState()
    if resume:
        state = restore_run(model, optimizer, config, out_dir, device, dataset)

    log_impression_sampling(dataset.train, config.loss)
    loss_fn = build_loss(config.loss, len(dataset.vocab.ids), item_counts(dataset))
    generator = BatchGenerator(
        dataset.train, BatchConfig(batch_size=config.batch_size, seed=config.seed)
    )
    epoch_seconds: list[float] = []
    epoch_cpu_seconds: list[float] = []
    input_bytes: list[int] = []
    while state.epoch < config.epochs and state.epochs_without_improvement < config.patience:
        state.epoch += 1
        seconds, cpu_seconds, input_bytes = _run_epoch(
            model, generator, optimizer, loss_fn, dataset, config, device, out_dir, state
        )
        epoch_cpu_seconds.append(cpu_seconds)
        epoch_seconds.append(seconds)

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


def log_impression_sampling(train: EventLog, loss: LossConfig) -> None:
    """Log how many training events draw negatives from their impressions, when the loss does.

    The impressions sampler draws from the whole catalog for an event without other impressions
    in the vocabulary, so a log with few such events trains almost as `--sampler uniform` does.
    A log without impression lists raises ConfigError here, before the first batch.
    """
    if loss.name not in PAIRWISE_LOSSES or loss.sampler != "impressions":
        return
    stats = compute_impression_stats(train)
    if stats is None:
        raise ConfigError(
            "--sampler impressions needs the events' impressions, and this log has none: "
            "use --sampler uniform or popularity, or give the impressions column with "
            "--impressions-col"
        )
    share = stats.events_with_other_impressions / max(stats.events, 1)
    few = share < IMPRESSION_SHARE_WARNING
    logger.log(
        logging.WARNING if few else logging.INFO,
        "impressions sampler: %s of %s training events (%.1f%%) have other impressions in the "
        "vocabulary, and the others draw their negatives from the whole catalog%s",
        f"{stats.events_with_other_impressions:,}",
        f"{stats.events:,}",
        100 * share,
        ", so most events train as with --sampler uniform" if few else "",
    )


def _run_epoch(
    model: torch.nn.Module,
    generator: BatchGenerator,
    optimizer: torch.optim.Optimizer,
    loss_fn: Loss,
    dataset: Dataset,
    config: TrainConfig,
    device: torch.device,
    out_dir: Path | None,
    state: RunState,
) -> tuple[float, float, list[int]]:
    """Run epoch `state.epoch`: seed, train, validate, record, save, and log an early stop.

    Returns the training seconds, the CPU seconds of the training and the input bytes of each
    batch.
    """
    seed_everything(epoch_seed(config.seed, state.epoch))
    cpu_started = time.process_time()
    loss, seconds, events, input_bytes = _train_epoch(
        model, generator, optimizer, loss_fn, config, state.epoch, device
    )
    cpu_seconds = time.process_time() - cpu_started
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
    return seconds, cpu_seconds, input_bytes


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
    loss_fn: Loss,
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
    model: torch.nn.Module,
    batch: Batch,
    carry: Carry,
    optimizer: torch.optim.Optimizer,
    loss_fn: Loss,
    config: TrainConfig,
    device: torch.device,
    weight: float = 1.0,
) -> tuple[float, Carry]:
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


def _batch_loss(
    loss_fn: Loss,
    model: torch.nn.Module,
    queries: torch.Tensor,
    targets: torch.Tensor,
    impressions: torch.Tensor | None,
) -> torch.Tensor:
    """Mean loss over the P real events: queries [P, D], targets int64 [P], impressions [P, M]."""
    return loss_fn(queries, targets, model.item_embeddings(), impressions=impressions)


def _validate(
    model: torch.nn.Module, dataset: Dataset, config: TrainConfig, device: torch.device
) -> dict[str, float]:
    evaluation = EvaluationConfig(batch_size=config.batch_size)
    return evaluate_model(model, dataset.valid, evaluation, device).metrics


def _record_epoch(
    state: RunState,
    model: torch.nn.Module,
    valid: dict[str, float],
    loss: float,
    seconds: float,
    events: int,
    config: TrainConfig,
) -> None:
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
    # The thread count of each epoch, because a resume may change it (see
    # `hiertcn.run_info.set_threads`).
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


def _checkpoint(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    dataset: Dataset,
    config: TrainConfig,
    epoch: int,
    metrics: dict[str, float],
    resume_state: dict[str, Any],
) -> Checkpoint:
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


def _save_run(
    out_dir: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    dataset: Dataset,
    config: TrainConfig,
    state: RunState,
    valid: dict[str, float],
) -> None:
    last = _checkpoint(model, optimizer, dataset, config, state.epoch, valid, state.to_dict())
    save_checkpoint(out_dir / LAST_CHECKPOINT, last)
    if state.best_epoch == state.epoch:
        save_checkpoint(out_dir / BEST_CHECKPOINT, last)


def _fit_untrained(
    model: torch.nn.Module,
    dataset: Dataset,
    config: TrainConfig,
    device: torch.device,
    out_dir: Path | None,
) -> TrainResult:
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
