"""`hiertcn experiment`: rerun the experiments of the HierTCN paper (You et al., "Hierarchical
Temporal Convolutional Networks for Dynamic Recommender Systems", WWW 2019) on one data set.

    hiertcn experiment compare UserBehavior_head.csv --format taobao --item-col category \\
        --out runs/exp-taobao
    hiertcn experiment all ratings.csv --format movielens --epochs 5 --out runs/exp-ml

Subcommands: `compare` (every model, cold and warm start), `epoch-times` (seconds per epoch and
padded input bytes per batch, as ratios to HierTCN), `losses` (HierTCN under each training
loss), `regularization` (HierTCN with no regularizer, each one alone, and all), `analyses` (MRP
against past interactions, position in session and time since the previous session, as PNG
plots), and `all`. Each writes a Markdown table and JSON into --out. A table of test metrics has
a `pool:` line under it, as `hiertcn evaluate` prints, that counts the test events ranked among
their impressions and among the whole catalog. Every variant gets the same data, model sizes,
training settings and seed. Within one command a variant that two experiments share is trained
once: `all` reuses the cold-start runs of `compare` for `epoch-times` and `analyses`, so their
epoch times come from that same run.

A subcommand rejects the flags that it does not read (`losses` trains every loss, so it rejects
--loss), and its --help leaves them out. No subcommand reads --split: `compare` trains on each
split that --splits names, and the other experiments train on the cold-start split only. An
--out folder that already contains the tables or checkpoints of an experiment run is rejected
unless --force (replace it) or --resume is given. --resume keeps each variant that the earlier run
finished with the same settings and trains the rest, so an interrupted `all` continues where it
stopped.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hiertcn import command_line
from hiertcn.data.counts import count_noun
from hiertcn.errors import ConfigError

if TYPE_CHECKING:
    from hiertcn.experiments.runner import VariantResult

logger = logging.getLogger(__name__)

# `all` runs them in this order; analyses and epoch-times reuse the runs of compare.
EXPERIMENTS = ("compare", "epoch-times", "analyses", "losses", "regularization")
ANALYSIS_MODELS = ("hiertcn", "hrnn", "gru")
METRIC_COLUMNS = ("recall@1", "recall@5", "recall@10", "recall@20", "mrr", "mrp", "events")
# The tables of each experiment in --out, as NAME.md and NAME.json; analyses adds PNG plots.
REPORT_PATTERNS = (
    "compare.md",
    "compare.json",
    "epoch_times.md",
    "epoch_times.json",
    "losses.md",
    "losses.json",
    "regularization.md",
    "regularization.json",
    "mrp_vs_*.md",
    "mrp_vs_*.json",
    "mrp_vs_*.png",
)
# Each variant trains into --out/runs/SPLIT-LABEL, as `hiertcn.experiments.runner` names it.
RUN_FOLDER_PATTERNS = ("runs/cold-*", "runs/warm-*")

_ONLY_REGULARIZATION = "only the regularization comparison reads it"
_COLD_ONLY = "it trains on the cold-start split only"
_SPLITS_INSTEAD = "each split that --splits names (default: cold,warm)"
_MODEL_OF_VARIANTS = "it trains --model (default: hiertcn) in each variant"
# The flags that each subcommand does not read, with the reason its error message gives. No
# subcommand reads --split: compare reads --splits, and the other experiments train on the
# cold-start split only.
UNREAD_FLAGS = {
    "compare": {
        "--model": "it trains each model of --models",
        "--split": f"it trains on {_SPLITS_INSTEAD}",
        "--regularization-rate": _ONLY_REGULARIZATION,
    },
    "epoch-times": {
        "--model": "it trains each model of --models",
        "--split": _COLD_ONLY,
        "--splits": _COLD_ONLY,
        "--regularization-rate": _ONLY_REGULARIZATION,
    },
    "analyses": {
        "--model": "it trains each model of --models",
        "--split": _COLD_ONLY,
        "--splits": _COLD_ONLY,
        "--regularization-rate": _ONLY_REGULARIZATION,
    },
    "losses": {
        "--models": _MODEL_OF_VARIANTS,
        "--split": _COLD_ONLY,
        "--splits": _COLD_ONLY,
        "--loss": "it trains with each loss in turn",
        "--regularization-rate": _ONLY_REGULARIZATION,
    },
    "regularization": {
        "--models": _MODEL_OF_VARIANTS,
        "--split": _COLD_ONLY,
        "--splits": _COLD_ONLY,
        "--dropout": "each variant sets it from --regularization-rate",
        "--gru-candidate-dropout": "each variant sets it from --regularization-rate",
        "--batch-norm": "each variant sets it",
    },
    "all": {
        "--split": f"the model comparison trains on {_SPLITS_INSTEAD}, and the other "
        "experiments on the cold-start split only",
    },
}


@dataclasses.dataclass(frozen=True)
class _Unset:
    """Default of a flag that a subcommand does not read, distinct from every value a user gives."""

    default: Any


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `experiment` subcommand group."""
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
        _add_arguments(sub, name)
        _hide_unread_flags(sub, UNREAD_FLAGS.get(name, {}))
        sub.set_defaults(func=run)


def _add_arguments(sub: argparse.ArgumentParser, name: str) -> None:
    """Add every flag of the experiment subcommands to `sub`."""
    from hiertcn.commands.train import (
        add_loss_arguments,
        add_model_arguments,
        add_training_arguments,
    )
    from hiertcn.data.options import add_data_arguments

    add_data_arguments(sub)
    add_model_arguments(sub, model_required=False)
    add_loss_arguments(sub)
    add_training_arguments(sub, threads_record="each table's JSON file (setup.environment)")
    sub.add_argument(
        "--models",
        help="comma-separated models to compare, each once (default for compare: "
        "hiertcn,hiergru,hrnn,gru,tcn,moving_average,maxitem,most_popular; "
        "for epoch-times: hiertcn,hiergru,hrnn,gru,tcn, where hiertcn is required because the "
        "ratios are to it; for analyses: hiertcn,hrnn,gru)",
    )
    sub.add_argument(
        "--splits",
        default="cold,warm",
        help="splits of the model comparison: cold, warm or both (default: cold,warm)",
    )
    sub.add_argument(
        "--regularization-rate",
        action=command_line.StoreFloat,
        default=0.2,
        help="dropout rate of the regularization comparison (default: 0.2)",
    )
    if name == "all":
        sub.add_argument(
            "--skip",
            help="comma-separated experiments to leave out, e.g. losses,regularization "
            "(default: none)",
        )
    sub.add_argument(
        "--out",
        type=Path,
        required=True,
        help="folder for tables, plots and the checkpoints of every variant (under runs/). A "
        "folder that already contains them is rejected unless --force or --resume is given",
    )
    earlier = sub.add_mutually_exclusive_group()
    earlier.add_argument(
        "--force",
        action="store_true",
        help="delete the tables, plots and variant checkpoints of an earlier experiment run in "
        "--out before training; other files there stay",
    )
    earlier.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted run in --out: keep each variant that it finished with the "
        "same data, model and training settings, and train the rest (a variant it finished "
        "with other settings is rejected)",
    )


def _hide_unread_flags(sub: argparse.ArgumentParser, unread: dict[str, str]) -> None:
    """Leave the flags of `unread` out of the help of `sub`, and mark their default as unset."""
    for flag in unread:
        action = sub._option_string_actions[flag]
        action.help = argparse.SUPPRESS
        action.default = _Unset(action.default)


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


def _names(value: str | None, default: tuple[str, ...], flag: str = "") -> tuple[str, ...]:
    """Split a comma-separated flag value; an empty value or a repeated name raises."""
    if value is None:
        return default
    names = tuple(part.strip() for part in value.split(",") if part.strip())
    if not names and default:
        raise ConfigError(f"{value!r} names nothing: give comma-separated names, e.g. hiertcn,gru")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ConfigError(
            f"{flag} {value} names {', '.join(repeated)} more than once: give each name once"
        )
    return names


def run(args: argparse.Namespace) -> int:
    """Run the chosen experiment (or all of them) and print each table."""
    from hiertcn.commands.train import (
        check_loss_flags,
        model_config_from_args,
        train_config_from_args,
    )
    from hiertcn.data.options import data_config_from_args
    from hiertcn.experiments.runner import RunCache
    from hiertcn.memory import report_out_of_memory
    from hiertcn.run_info import set_threads

    reject_unread_flags(args)
    # The losses experiment trains with every loss, so every loss flag matters there. The
    # others train with --loss alone, and reject a loss flag that it ignores, as `train` does.
    if args.experiment not in ("losses", "all"):
        check_loss_flags(args)
    if args.model is None:
        args.model = "hiertcn"
    rate = args.regularization_rate
    if not 0.0 < rate < 1.0:
        rate_text = command_line.format_flag_number(
            rate, "--regularization-rate", command_line.flag_texts(args)
        )
        raise ConfigError(f"--regularization-rate {rate_text} is invalid: use a rate in (0, 1)")
    chosen = _chosen_experiments(args)
    _check_names(args, chosen)
    data = data_config_from_args(args)
    model = model_config_from_args(args)
    train = train_config_from_args(args)
    context = {
        "data": data,
        "model": model,
        "train": train,
        "args": args,
        "cache": RunCache(data, args.out / "runs", resume=args.resume),
    }
    check_out_dir(args.out, force=args.force, resume=args.resume)
    # The thread count applies to every variant, and each set-up line records it.
    set_threads(train.threads)
    fix = (
        f"lower --batch-size (now {train.batch_size}), or the model sizes --embedding-dim, "
        "--hidden-size and --tcn-channels"
    )
    try:
        for name in chosen:
            with report_out_of_memory(f"experiment {name}", fix):
                _RUNNERS[name](**context)
    except KeyboardInterrupt as interrupt:
        # `Terminated` (SIGTERM) keeps its class, so the command line exits 143 on it.
        raise type(interrupt)(interrupted_message(args.out)) from None
    print(f"experiment tables and plots are in {args.out}")
    return 0


def interrupted_message(out: Path) -> str:
    """Return what an interrupted experiment saved in `out` and how to continue it."""
    from hiertcn.experiments.finished import finished_variants

    finished = finished_variants(out / "runs")
    if not finished:
        return f"no variant finished, so {out} contains no result to keep"
    names = ", ".join(folder.name for folder in finished)
    return (
        f"{count_noun(len(finished), 'finished variant')} in {out / 'runs'} ({names}): rerun the "
        "same command with --resume to keep them and train the rest"
    )


def reject_unread_flags(args: argparse.Namespace) -> None:
    """Raise ConfigError for a flag that the subcommand does not read; unset ones get defaults."""
    for flag, reason in UNREAD_FLAGS.get(args.experiment, {}).items():
        dest = flag.removeprefix("--").replace("-", "_")
        value = getattr(args, dest)
        if not isinstance(value, _Unset):
            raise ConfigError(
                f"`hiertcn experiment {args.experiment}` does not read {flag}, because "
                f"{reason}: remove {flag}"
            )
        setattr(args, dest, value.default)


def _chosen_experiments(args: argparse.Namespace) -> tuple[str, ...]:
    """Return the experiments to run: the subcommand, or every one that `--skip` leaves."""
    if args.experiment != "all":
        return (args.experiment,)
    skipped = _names(getattr(args, "skip", None), (), "--skip")
    unknown = sorted(set(skipped) - set(EXPERIMENTS))
    if unknown:
        raise ConfigError(
            f"--skip {','.join(unknown)} names no experiment: use some of {', '.join(EXPERIMENTS)}"
        )
    return tuple(name for name in EXPERIMENTS if name not in skipped)


def _check_names(args: argparse.Namespace, chosen: tuple[str, ...]) -> None:
    """Reject unknown or repeated models and splits, and epoch-times without hiertcn."""
    from hiertcn.data.splits import SPLIT_KINDS
    from hiertcn.experiments.runner import EPOCH_TIME_MODELS
    from hiertcn.models import list_models

    models = _names(args.models, (), "--models")
    unknown = sorted(set(models) - set(list_models()))
    if unknown:
        raise ConfigError(
            f"--models names unknown models {', '.join(unknown)}: choose from "
            f"{', '.join(list_models())}"
        )
    splits = _names(args.splits, (), "--splits")
    unknown = sorted(set(splits) - set(SPLIT_KINDS))
    if unknown:
        raise ConfigError(
            f"--splits names unknown splits {', '.join(unknown)}: choose from "
            f"{', '.join(SPLIT_KINDS)}"
        )
    epoch_time_models = models or EPOCH_TIME_MODELS
    if "epoch-times" in chosen and "hiertcn" not in epoch_time_models:
        raise ConfigError(
            f"--models {args.models} has no hiertcn, but epoch-times gives every time and size "
            "as a ratio to HierTCN: add hiertcn to --models"
        )


def check_out_dir(out: Path, force: bool, resume: bool = False) -> None:
    """Reject an --out that is a file or contains an earlier run; delete that run with `force`.

    With `resume`, an earlier run stays, and `RunCache` keeps its finished variants.
    """
    existing = next((path for path in (out, *out.parents) if path.exists()), None)
    if existing == out and not out.is_dir():
        raise ConfigError(f"--out {out} is a file: pass a folder")
    if existing is not None and not existing.is_dir():
        raise ConfigError(f"--out {out} is inside the file {existing}: pass a folder")
    earlier = earlier_run_files(out)
    if not earlier or resume:
        return
    if not force:
        shown = ", ".join(str(path.relative_to(out)) for path in earlier[:3])
        more = f" and {len(earlier) - 3} more" if len(earlier) > 3 else ""
        raise ConfigError(
            f"--out {out} already contains an experiment run ({shown}{more}): pass --resume "
            "to keep its finished variants and train the rest, --force to replace it, or "
            "another --out folder"
        )
    for path in earlier:
        path.unlink()
    for folder in _run_folders(out):
        if not any(folder.iterdir()):
            folder.rmdir()
    logger.info("--force: deleted %d files of an earlier experiment run in %s", len(earlier), out)


def earlier_run_files(out: Path) -> list[Path]:
    """Return the tables, plots and variant checkpoints of an experiment run in `out`."""
    from hiertcn.commands.train import RUN_FILES
    from hiertcn.experiments.finished import VARIANT_FILE

    if not out.is_dir():
        return []
    reports = sorted(path for pattern in REPORT_PATTERNS for path in out.glob(pattern))
    checkpoints = sorted(
        folder / name
        for folder in _run_folders(out)
        for name in (*RUN_FILES, VARIANT_FILE)
        if (folder / name).is_file()
    )
    return [path for path in reports if path.is_file()] + checkpoints


def _run_folders(out: Path) -> list[Path]:
    return sorted(
        path for pattern in RUN_FOLDER_PATTERNS for path in out.glob(pattern) if path.is_dir()
    )


def _setup(data, variants, splits: tuple[str, ...] = ("cold",)) -> dict[str, Any]:
    """Describe the data, the splits, the settings that every variant shares, and the others.

    A setting that differs between the variants (the model name in compare, the loss in losses)
    is listed per variant label under "variants", so the line shows what each row trained.
    """
    from hiertcn.experiments.report import split_shared_settings
    from hiertcn.run_info import resolve_device, run_environment

    settings = [
        {"model": variant.model.to_dict(), "training": variant.train.to_dict()}
        for variant in variants
    ]
    shared, changed = split_shared_settings(settings)
    setup = {
        "data": str(data.path),
        "format": data.reader.format,
        "item_col": data.reader.item_col,
        "session_gap": data.session_gap,
        "filters": dataclasses.asdict(data.filters),
        "splits": list(splits),
        **shared,
        "environment": run_environment(str(resolve_device(variants[0].train.device))),
    }
    if any(changed):
        setup["variants"] = {
            variant.label: change for variant, change in zip(variants, changed, strict=True)
        }
    return setup


def _run_compare(data, model, train, args, cache) -> None:
    from hiertcn.experiments.report import write_report
    from hiertcn.experiments.runner import COMPARISON_MODELS, model_variants

    splits = _names(args.splits, ("cold", "warm"), "--splits")
    variants = model_variants(model, train, _names(args.models, COMPARISON_MODELS, "--models"))
    results = [cache.run(variant, split) for split in splits for variant in variants]
    rows = [result.row() for result in results]
    columns = (
        "model",
        "split",
        *METRIC_COLUMNS,
        "best_epoch",
        "epochs",
        "epoch_seconds",
        "parameters",
    )
    setup = _setup(data, variants, splits)
    notes = describe_result_pools(results)
    path = write_report(args.out, "compare", "Model comparison", rows, columns, setup, notes)
    print(path.read_text(encoding="utf-8"))


def _run_epoch_times(data, model, train, args, cache) -> None:
    from hiertcn.experiments.report import write_report
    from hiertcn.experiments.runner import EPOCH_TIME_MODELS, epoch_time_rows, model_variants

    variants = model_variants(model, train, _names(args.models, EPOCH_TIME_MODELS, "--models"))
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
    path = write_report(args.out, "epoch_times", title, rows, columns, _setup(data, variants))
    print(path.read_text(encoding="utf-8"))


def _run_losses(data, model, train, args, cache) -> None:
    from hiertcn.experiments.report import write_report
    from hiertcn.experiments.runner import LOSSES, loss_variants

    variants = loss_variants(model, train, LOSSES)
    results = [cache.run(variant, "cold") for variant in variants]
    rows = [{**result.row(), "loss": result.variant.label} for result in results]
    columns = ("loss", *METRIC_COLUMNS, "best_epoch", "epochs")
    title = f"Loss comparison ({model.name}, cold start)"
    setup = _setup(data, variants)
    notes = describe_result_pools(results)
    path = write_report(args.out, "losses", title, rows, columns, setup, notes)
    print(path.read_text(encoding="utf-8"))


def _run_regularization(data, model, train, args, cache) -> None:
    from hiertcn.experiments.report import write_report
    from hiertcn.experiments.runner import regularization_variants

    variants = regularization_variants(model, train, args.regularization_rate)
    results = [cache.run(variant, "cold") for variant in variants]
    rows = [result.row() for result in results]
    columns = ("variant", *METRIC_COLUMNS, "best_epoch", "epochs")
    title = f"Regularization comparison ({model.name}, cold start)"
    setup = _setup(data, variants)
    notes = describe_result_pools(results)
    path = write_report(args.out, "regularization", title, rows, columns, setup, notes)
    print(path.read_text(encoding="utf-8"))


def _run_analyses(data, model, train, args, cache) -> None:
    from hiertcn.experiments.analyses import BINNINGS, binned_mrp, plot_binned
    from hiertcn.experiments.report import write_report
    from hiertcn.experiments.runner import model_variants

    variants = model_variants(model, train, _names(args.models, ANALYSIS_MODELS, "--models"))
    results = [cache.run(variant, "cold") for variant in variants]
    notes = describe_result_pools(results)
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
            _setup(data, variants),
            notes,
        )
    print(f"analysis plots: {', '.join(f'mrp_vs_{b.name}.png' for b in BINNINGS)}")
    print("\n".join(notes))


def describe_result_pools(results: Sequence[VariantResult]) -> list[str]:
    """Describe the test pools of `results` in `pool:` lines, as `hiertcn evaluate` prints them,
    and log evaluate's warning when some pools contain only the clicked item.

    The variants of one split rank the same test events with the same vocabulary, so their
    counts match and the split gets one line (else one line per distinct count). The lines
    name the split when `results` come from more than one.
    """
    from hiertcn.evaluate import describe_pools, warn_single_item_pools

    splits = list(dict.fromkeys(result.split for result in results))
    lines = []
    for split in splits:
        counts = [result.evaluation.pools for result in results if result.split == split]
        for pools in dict.fromkeys(counts):
            warn_single_item_pools(pools)
            lines.append(describe_pools(pools, split if len(splits) > 1 else None))
    return lines


_RUNNERS = {
    "compare": _run_compare,
    "epoch-times": _run_epoch_times,
    "losses": _run_losses,
    "regularization": _run_regularization,
    "analyses": _run_analyses,
}
