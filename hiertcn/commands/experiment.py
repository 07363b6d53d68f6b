"""`hiertcn experiment`: rerun the experiments of the HierTCN paper (You et al., "Hierarchical
Temporal Convolutional Networks for Dynamic Recommender Systems", WWW 2019) on one data set.

    hiertcn experiment compare UserBehavior_head.csv --format taobao --item-col category \\
        --out runs/exp-taobao
    hiertcn experiment all ratings.csv --format movielens --epochs 5 --out runs/exp-ml

Subcommands: `compare` (every model, cold and warm start), `epoch-times` (seconds per epoch and
padded input bytes per batch, as ratios to HierTCN), `losses` (HierTCN under each training
loss), `regularization` (HierTCN with no regularizer, each one alone, and all), `analyses` (MRP
against past interactions, position in session and time since the previous session, as PNG
plots), and `all`. Each writes a Markdown table and JSON into --out. Every variant gets the same
data, model sizes, training settings and seed. Within one command a variant that two
experiments share is trained once: `all` reuses the cold-start runs of `compare` for `epoch-times`
and `analyses`, so their epoch times come from that same run.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path
from typing import Any

from hiertcn.errors import ConfigError

logger = logging.getLogger(__name__)

# `all` runs them in this order; analyses and epoch-times reuse the runs of compare.
EXPERIMENTS = ("compare", "epoch-times", "analyses", "losses", "regularization")
ANALYSIS_MODELS = ("hiertcn", "hrnn", "gru")
METRIC_COLUMNS = ("recall@1", "recall@5", "recall@10", "recall@20", "mrr", "mrp", "events")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `experiment` subcommand group."""
    from hiertcn.commands.train import (
        add_loss_arguments,
        add_model_arguments,
        add_training_arguments,
    )
    from hiertcn.data.options import add_data_arguments

    parser = subparsers.add_parser(
        "experiment",
        help="rerun the HierTCN paper's experiments (model, loss and regularization comparisons, "
        "epoch times, MRP analyses)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    experiments = parser.add_subparsers(dest="experiment", metavar="EXPERIMENT", required=True)
    for name in (*EXPERIMENTS, "all"):
        sub = experiments.add_parser(name, help=_HELP[name], description=_HELP[name])
        add_data_arguments(sub)
        add_model_arguments(sub, model_required=False)
        add_loss_arguments(sub)
        add_training_arguments(sub)
        sub.add_argument(
            "--models",
            help="comma-separated models to compare (default for compare: "
            "hiertcn,hiergru,hrnn,gru,tcn,moving_average,maxitem,most_popular; "
            "for epoch-times: hiertcn,hiergru,hrnn,gru,tcn; for analyses: hiertcn,hrnn,gru)",
        )
        sub.add_argument(
            "--splits",
            default="cold,warm",
            help="splits of the model comparison: cold, warm or both (default: cold,warm)",
        )
        sub.add_argument(
            "--regularization-rate",
            type=float,
            default=0.2,
            help="dropout rate of the regularization comparison (default: 0.2)",
        )
        if name == "all":
            sub.add_argument(
                "--skip",
                help="comma-separated experiments to leave out, e.g. losses,regularization "
                "(default: none)",
            )
        sub.add_argument("--out", type=Path, required=True, help="folder for tables and plots")
        sub.set_defaults(func=run)


_HELP = {
    "compare": "train and evaluate every model on the cold-start and warm-start splits",
    "epoch-times": "seconds per epoch and padded input bytes per batch, as ratios to HierTCN",
    "losses": "HierTCN trained with each loss: cross_entropy, hinge, bpr, nce, l2",
    "regularization": "HierTCN with no regularizer, TCN dropout, GRU candidate dropout, "
    "masked batch norm, and all together",
    "analyses": "MRP against past interactions, session position and time since the previous "
    "session, as PNG plots",
    "all": "every experiment above, one after the other",
}


def _names(value: str | None, default: tuple[str, ...]) -> tuple[str, ...]:
    if value is None:
        return default
    names = tuple(part.strip() for part in value.split(",") if part.strip())
    if not names and default:
        raise ConfigError(f"{value!r} names nothing: give comma-separated names, e.g. hiertcn,gru")
    return names


def run(args: argparse.Namespace) -> int:
    """Run the chosen experiment (or all of them) and print each table."""
    from hiertcn.commands.train import model_config_from_args, train_config_from_args
    from hiertcn.data.options import data_config_from_args
    from hiertcn.experiments.runner import RunCache

    if args.model is None:
        args.model = "hiertcn"
    rate = getattr(args, "regularization_rate", None)
    if rate is not None and not 0.0 < rate < 1.0:
        raise ConfigError(f"--regularization-rate {rate} is invalid: use a rate in (0, 1)")
    data = data_config_from_args(args)
    context = {
        "data": data,
        "model": model_config_from_args(args),
        "train": train_config_from_args(args),
        "args": args,
        "cache": RunCache(data, args.out / "runs"),
    }
    chosen = _chosen_experiments(args)
    for name in chosen:
        _RUNNERS[name](**context)
    print(f"experiment tables and plots are in {args.out}")
    return 0


def _chosen_experiments(args: argparse.Namespace) -> tuple[str, ...]:
    """Return the experiments to run: the subcommand, or every one that `--skip` leaves."""
    if args.experiment != "all":
        return (args.experiment,)
    skipped = _names(getattr(args, "skip", None), ())
    unknown = sorted(set(skipped) - set(EXPERIMENTS))
    if unknown:
        raise ConfigError(
            f"--skip {','.join(unknown)} names no experiment: use some of {', '.join(EXPERIMENTS)}"
        )
    return tuple(name for name in EXPERIMENTS if name not in skipped)


def _setup(data, model, train, **extra: Any) -> dict[str, Any]:
    return {
        "data": str(data.path),
        "format": data.reader.format,
        "item_col": data.reader.item_col,
        "session_gap": data.session_gap,
        "filters": dataclasses.asdict(data.filters),
        "model": model.to_dict(),
        "training": train.to_dict(),
        **extra,
    }


def _run_compare(data, model, train, args, cache) -> None:
    from hiertcn.experiments.report import write_report
    from hiertcn.experiments.runner import COMPARISON_MODELS, model_variants

    rows = []
    for split in _names(args.splits, ("cold", "warm")):
        for variant in model_variants(model, train, _names(args.models, COMPARISON_MODELS)):
            rows.append(cache.run(variant, split).row())
    columns = ("model", "split", *METRIC_COLUMNS, "best_epoch", "epoch_seconds", "parameters")
    path = write_report(
        args.out, "compare", "Model comparison", rows, columns, _setup(data, model, train)
    )
    print(path.read_text(encoding="utf-8"))


def _run_epoch_times(data, model, train, args, cache) -> None:
    from hiertcn.experiments.report import write_report
    from hiertcn.experiments.runner import EPOCH_TIME_MODELS, epoch_time_rows, model_variants

    variants = model_variants(model, train, _names(args.models, EPOCH_TIME_MODELS))
    rows = epoch_time_rows([cache.run(variant, "cold") for variant in variants])
    columns = (
        "model",
        "epochs",
        "epoch_seconds",
        "time_ratio",
        "epoch_cpu_seconds",
        "cpu_time_ratio",
        "input_bytes_per_batch",
        "input_bytes_ratio",
    )
    title = f"Epoch times and padded input bytes per batch, ratios to {rows[0]['reference']}"
    path = write_report(args.out, "epoch_times", title, rows, columns, _setup(data, model, train))
    print(path.read_text(encoding="utf-8"))


def _run_losses(data, model, train, args, cache) -> None:
    from hiertcn.experiments.report import write_report
    from hiertcn.experiments.runner import LOSSES, loss_variants

    rows = [
        {**cache.run(variant, "cold").row(), "loss": variant.label}
        for variant in loss_variants(model, train, LOSSES)
    ]
    columns = ("loss", *METRIC_COLUMNS, "best_epoch")
    title = f"Loss comparison ({model.name}, cold start)"
    path = write_report(args.out, "losses", title, rows, columns, _setup(data, model, train))
    print(path.read_text(encoding="utf-8"))


def _run_regularization(data, model, train, args, cache) -> None:
    from hiertcn.experiments.report import write_report
    from hiertcn.experiments.runner import regularization_variants

    variants = regularization_variants(model, train, args.regularization_rate)
    rows = [cache.run(variant, "cold").row() for variant in variants]
    columns = ("variant", *METRIC_COLUMNS, "best_epoch")
    title = f"Regularization comparison ({model.name}, cold start)"
    path = write_report(
        args.out, "regularization", title, rows, columns, _setup(data, model, train)
    )
    print(path.read_text(encoding="utf-8"))


def _run_analyses(data, model, train, args, cache) -> None:
    from hiertcn.experiments.analyses import BINNINGS, binned_mrp, plot_binned
    from hiertcn.experiments.report import write_report
    from hiertcn.experiments.runner import model_variants

    names = _names(args.models, ANALYSIS_MODELS)
    results = [cache.run(variant, "cold") for variant in model_variants(model, train, names)]
    for binning in BINNINGS:
        series = {
            result.variant.label: binned_mrp(result.evaluation.ranks, binning) for result in results
        }
        rows = [{"model": label, **row} for label, bins in series.items() for row in bins]
        title = f"MRP against {binning.axis_label} (cold start)"
        plot_binned(series, binning, args.out / f"mrp_vs_{binning.name}.png", title)
        write_report(
            args.out,
            f"mrp_vs_{binning.name}",
            title,
            rows,
            ("model", "bin", "events", "mrp"),
            _setup(data, model, train),
        )
    print(f"analysis plots: {', '.join(f'mrp_vs_{b.name}.png' for b in BINNINGS)}")


_RUNNERS = {
    "compare": _run_compare,
    "epoch-times": _run_epoch_times,
    "losses": _run_losses,
    "regularization": _run_regularization,
    "analyses": _run_analyses,
}
