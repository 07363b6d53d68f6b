"""Train and evaluate sets of model variants under one protocol, and collect their rows.

Every variant of an experiment gets the same data, split, model sizes, training settings and
seed; only the field under study changes. No variant is tuned on its own, so a comparison shows
the models as configured, not as tuned.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hiertcn.checkpoint import load_model
from hiertcn.data.options import DataConfig, Dataset, load_dataset_from_config
from hiertcn.evaluate import EvaluationConfig, EvaluationResult, evaluate_model
from hiertcn.experiments.finished import load_finished, save_finished, variant_settings
from hiertcn.models.config import ModelConfig
from hiertcn.models.registry import build_model
from hiertcn.run_info import resolve_device, save_run_metrics
from hiertcn.train import TrainConfig, seed_everything, train_model

logger = logging.getLogger(__name__)

COMPARISON_MODELS = (
    "hiertcn",
    "hiergru",
    "hrnn",
    "gru",
    "tcn",
    "moving_average",
    "maxitem",
    "most_popular",
)
EPOCH_TIME_MODELS = ("hiertcn", "hiergru", "hrnn", "gru", "tcn")
LOSSES = ("cross_entropy", "hinge", "bpr", "nce", "l2")


@dataclass(frozen=True)
class Variant:
    """One trained configuration: a label for the table and the configurations it uses."""

    label: str
    model: ModelConfig
    train: TrainConfig


@dataclass(frozen=True)
class VariantResult:
    """Test metrics of one variant, with its training time and the ranks behind the metrics."""

    variant: Variant
    split: str
    metrics: dict[str, float]
    best_epoch: int
    epochs: int
    epoch_seconds: float
    epoch_cpu_seconds: float
    input_bytes_per_batch: float
    parameters: int
    evaluation: EvaluationResult

    def row(self) -> dict[str, Any]:
        """Return the JSON-ready table row of this result."""
        return {
            "variant": self.variant.label,
            "model": self.variant.model.name,
            "split": self.split,
            **self.metrics,
            "best_epoch": self.best_epoch,
            "epochs": self.epochs,
            "epoch_seconds": self.epoch_seconds,
            "epoch_cpu_seconds": self.epoch_cpu_seconds,
            "input_bytes_per_batch": self.input_bytes_per_batch,
            "parameters": self.parameters,
            "pool": self.evaluation.pools.to_dict(),
        }


def load_split(data: DataConfig, kind: str) -> Dataset:
    """Load `data` with the split kind replaced by `kind` ("cold" or "warm")."""
    split = dataclasses.replace(data.split, kind=kind)
    return load_dataset_from_config(dataclasses.replace(data, split=split))


def run_variant(variant: Variant, dataset: Dataset, split: str, out_dir: Path) -> VariantResult:
    """Train one variant, evaluate its best epoch on the test part, and return the result."""
    logger.info("experiment variant %s on the %s split: training", variant.label, split)
    seed_everything(variant.train.seed)
    model = build_model(variant.model, len(dataset.vocab))
    run_dir = out_dir / f"{split}-{variant.label}"
    result = train_model(model, dataset, variant.train, out_dir=run_dir)

    device = resolve_device(variant.train.device)
    evaluation = evaluate_model(
        result.model, dataset.test, EvaluationConfig(batch_size=variant.train.batch_size), device
    )
    save_run_metrics(run_dir, variant.model, variant.train, result, evaluation.metrics)
    seconds = float(np.mean(result.epoch_seconds)) if result.epoch_seconds else math.nan
    cpu_seconds = float(np.mean(result.epoch_cpu_seconds)) if result.epoch_cpu_seconds else math.nan
    input_bytes = float(np.mean(result.last_input_bytes)) if result.last_input_bytes else math.nan
    parameters = sum(p.numel() for p in result.model.parameters() if p.requires_grad)

    logger.info(
        "experiment variant %s on the %s split: MRR %.4f, recall@10 %.4f",
        variant.label,
        split,
        evaluation.metrics["mrr"],
        evaluation.metrics["recall@10"],
    )
    numbers = {
        "best_epoch": result.best_epoch,
        "epochs": len(result.epoch_seconds),
        "epoch_seconds": seconds,
        "epoch_cpu_seconds": cpu_seconds,
        "input_bytes_per_batch": input_bytes,
        "parameters": parameters,
    }
    save_finished(run_dir, _settings(variant, dataset, split), numbers)
    return VariantResult(
        variant=variant,
        split=split,
        metrics=evaluation.metrics,
        evaluation=evaluation,
        **numbers,
    )


def resume_variant(
    variant: Variant, dataset: Dataset, split: str, out_dir: Path
) -> VariantResult | None:
    """Return the result of the finished variant in `out_dir`, or None when it is unfinished.

    The test part is evaluated again from best.pt, which gives the ranks that the analyses
    need. Raises ConfigError when the variant finished with other settings.
    """
    run_dir = out_dir / f"{split}-{variant.label}"
    numbers = load_finished(run_dir, _settings(variant, dataset, split))
    if numbers is None:
        return None
    logger.info(
        "experiment variant %s on the %s split: --resume keeps the finished run in %s",
        variant.label,
        split,
        run_dir,
    )
    device = resolve_device(variant.train.device)
    model, _ = load_model(run_dir / "best.pt", device)
    evaluation = evaluate_model(
        model, dataset.test, EvaluationConfig(batch_size=variant.train.batch_size), device
    )
    return VariantResult(
        variant=variant,
        split=split,
        metrics=evaluation.metrics,
        evaluation=evaluation,
        **numbers,
    )


def _settings(variant: Variant, dataset: Dataset, split: str) -> dict[str, Any]:
    return variant_settings(
        split, variant.model.to_dict(), variant.train.to_dict(), dataset.summary
    )


class RunCache:
    """Loaded splits and finished variants of one command, so `all` trains each variant once.

    Two variants are the same run when their split, model configuration and training
    configuration are equal, whatever their labels. For example, the `cross_entropy` variant of
    the loss comparison is the `hiertcn` row of the model comparison when the flags train HierTCN
    with cross-entropy.
    """

    def __init__(self, data: DataConfig, out_dir: Path, resume: bool = False) -> None:
        self.data = data
        self.out_dir = out_dir
        self.resume = resume  # keep the variants that an earlier run of the command finished
        self._datasets: dict[str, Dataset] = {}
        self._results: dict[tuple[str, ModelConfig, TrainConfig], VariantResult] = {}

    def dataset(self, split: str) -> Dataset:
        """Return the data set of `split` ("cold" or "warm"), loading it on first use."""
        if split not in self._datasets:
            self._datasets[split] = load_split(self.data, split)
        return self._datasets[split]

    def run(self, variant: Variant, split: str) -> VariantResult:
        """Return the result of `variant` on `split`, training it only on first use."""
        key = (split, variant.model, variant.train)
        if key not in self._results:
            dataset = self.dataset(split)
            finished = (
                resume_variant(variant, dataset, split, self.out_dir) if self.resume else None
            )
            self._results[key] = finished or run_variant(variant, dataset, split, self.out_dir)
        else:
            logger.info(
                "experiment variant %s on the %s split: reusing the run", variant.label, split
            )
        cached = self._results[key]
        return dataclasses.replace(cached, variant=variant)


def epoch_time_rows(results: Sequence[VariantResult]) -> list[dict[str, Any]]:
    """Return the mean epoch times of `results` as rows, with ratios to the HierTCN row.

    The reference is the first result whose model is `hiertcn`, else the first result. A ratio
    above 1 means the model needs more time (or input bytes) per epoch than the reference.
    """
    reference = next((r for r in results if r.variant.model.name == "hiertcn"), results[0])
    rows = []
    for result in results:
        rows.append(
            {
                "model": result.variant.label,
                "reference": reference.variant.label,
                "epochs": result.epochs,
                "epoch_seconds": result.epoch_seconds,
                "time_ratio": _ratio(result.epoch_seconds, reference.epoch_seconds),
                "epoch_cpu_seconds": result.epoch_cpu_seconds,
                "cpu_time_ratio": _ratio(result.epoch_cpu_seconds, reference.epoch_cpu_seconds),
                "input_bytes_per_batch": result.input_bytes_per_batch,
                "input_bytes_ratio": _ratio(
                    result.input_bytes_per_batch, reference.input_bytes_per_batch
                ),
            }
        )
    return rows


def _ratio(value: float, reference: float) -> float:
    """Return value / reference, or NaN when the reference is 0 or NaN (an untrained model)."""
    return value / reference if reference > 0 else math.nan


def model_variants(base: ModelConfig, train: TrainConfig, names: Sequence[str]) -> list[Variant]:
    """Build one variant per model name, each with the sizes of `base`."""
    return [Variant(name, dataclasses.replace(base, name=name), train) for name in names]


def loss_variants(base: ModelConfig, train: TrainConfig, losses: Sequence[str]) -> list[Variant]:
    """Build one variant of `base` per training loss; sampled losses keep the flags' sampler."""
    variants = []
    for loss in losses:
        config = dataclasses.replace(train.loss, name=loss)
        variants.append(Variant(loss, base, dataclasses.replace(train, loss=config)))
    return variants


def regularization_variants(base: ModelConfig, train: TrainConfig, rate: float) -> list[Variant]:
    """Build `base` without regularization, with each regularizer alone, and with all of them."""
    plain = dataclasses.replace(base, dropout=0.0, gru_candidate_dropout=0.0, batch_norm=False)
    return [
        Variant("none", plain, train),
        Variant(f"tcn_dropout_{rate:g}", dataclasses.replace(plain, dropout=rate), train),
        Variant(
            f"gru_candidate_dropout_{rate:g}",
            dataclasses.replace(plain, gru_candidate_dropout=rate),
            train,
        ),
        Variant("batch_norm", dataclasses.replace(plain, batch_norm=True), train),
        Variant(
            "all",
            dataclasses.replace(plain, dropout=rate, gru_candidate_dropout=rate, batch_norm=True),
            train,
        ),
    ]
