"""`hiertcn train`: train one model on a log, then evaluate its best epoch on the test split."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from hiertcn import command_line
from hiertcn.errors import (
    CheckpointError,
    ConfigError,
    InvalidFieldError,
    TrainingDivergedError,
)

if TYPE_CHECKING:
    import torch

    from hiertcn.data.options import Dataset
    from hiertcn.evaluate import EvaluationResult
    from hiertcn.losses import LossConfig
    from hiertcn.models.config import ModelConfig
    from hiertcn.train import TrainConfig, TrainResult

logger = logging.getLogger(__name__)

DESCRIPTION = "Train one model on a log, then evaluate its best epoch on the test split."
EPILOG = """example:
  hiertcn train ratings.csv --format movielens --model hiertcn --out runs/ml-hiertcn

It prints the data summary and the filter report, then trains with early stopping on validation
MRR and writes best.pt and last.pt into --out. Then it evaluates best.pt on the test split, prints
the metric table with a `pool:` line under it (as `hiertcn evaluate` does), and stores the test
metrics in best.pt and in metrics.json. It rejects an --out folder that already contains best.pt
or last.pt unless --resume or --force is given.

Each model reads only some of the model flags (--recent-items only moving_average and maxitem,
for example). It warns about each flag set for a model that does not read it, and --resume
compares only the flags that the model reads.
"""
# The files of a run in --out, which --force removes before training.
RUN_FILES = ("best.pt", "last.pt", "metrics.json")
LOSS_NAMES = ("cross_entropy", "hinge", "bpr", "nce", "l2")
SAMPLER_NAMES = ("uniform", "popularity", "impressions")
# The losses on sampled negatives, as `hiertcn.losses.PAIRWISE_LOSSES`, which imports torch.
SAMPLED_LOSSES = ("hinge", "bpr", "nce")
# The loss flags that only some losses read, with those losses.
LOSS_FLAG_READERS = {
    "--margin": ("hinge",),
    "--negatives": SAMPLED_LOSSES,
    "--sampler": SAMPLED_LOSSES,
}
# Namespace attribute with the loss flags that the command line gave, so that a flag given with
# its default value counts as given too.
LOSS_FLAGS_GIVEN = "loss_flags_given"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `train` subcommand."""
    from hiertcn.data.options import add_data_arguments

    parser = subparsers.add_parser(
        "train",
        help="train a model and evaluate it on the test split",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_data_arguments(parser, prepared_folder=True)
    add_model_arguments(parser)
    add_loss_arguments(parser)
    add_training_arguments(parser)
    parser.add_argument(
        "--out",
        type=Path,
        required=True,
        metavar="DIR",
        help="folder for best.pt, last.pt and metrics.json. A folder that already contains a run "
        "is rejected unless --resume or --force is given",
    )
    run_mode = parser.add_mutually_exclusive_group()
    run_mode.add_argument(
        "--resume", action="store_true", help="continue the run from --out/last.pt"
    )
    run_mode.add_argument(
        "--force",
        action="store_true",
        help="delete the best.pt, last.pt and metrics.json of --out and start a new run",
    )
    parser.set_defaults(func=run)


class _ModelNameAction(argparse.Action):
    """`--model`, whose help lists the registered model names.

    The help is built only when argparse prints it, because importing the models imports torch,
    which would slow down every `hiertcn` command.
    """

    @property
    def help(self) -> str:
        from hiertcn.models import list_models

        return self._help_template.format(models=", ".join(list_models()))

    @help.setter
    def help(self, template: str) -> None:
        self._help_template = template

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        setattr(namespace, self.dest, values)


def add_model_arguments(parser: argparse.ArgumentParser, model_required: bool = True) -> None:
    """Add `--model` and the model hyperparameter flags (defaults from `ModelConfig`)."""
    group = parser.add_argument_group("model")
    group.add_argument(
        "--model",
        action=_ModelNameAction,
        required=model_required,
        help="model name: one of {models}" + ("" if model_required else " (default: hiertcn)"),
    )
    add_size_arguments(group)
    _add_regularization_arguments(group)
    _add_model_input_arguments(group)


def add_size_arguments(group: argparse._ArgumentGroup) -> None:
    """Add the layer sizes of the models: D, H, G, TCN filters, kernel and dilations.

    bench/train_speed.py adds them too, so that its models take the sizes of `hiertcn train`.
    """
    group.add_argument(
        "--embedding-dim", type=int, default=128, help="item-embedding size D (default: 128)"
    )
    group.add_argument(
        "--hidden-size", type=int, default=128, help="hidden size H of every GRU (default: 128)"
    )
    group.add_argument(
        "--gru-layers",
        type=int,
        default=4,
        help="GRU layers G of the session GRU of hiertcn and hiergru, of both GRUs of hrnn, and "
        "of the gru baseline (default: 4)",
    )
    group.add_argument(
        "--tcn-channels",
        type=int,
        default=128,
        help="filters of each TCN convolution (default: 128)",
    )
    group.add_argument(
        "--kernel-size", type=int, default=5, help="TCN kernel size, in events (default: 5)"
    )
    group.add_argument(
        "--dilations",
        help="comma-separated TCN dilations, one residual block each "
        "(default: 1,2,4,8 for hiertcn and 1,2,4,8,16,32 for tcn)",
    )


def _add_regularization_arguments(group: argparse._ArgumentGroup) -> None:
    """Add dropout and batch normalization."""
    group.add_argument(
        "--dropout",
        action=command_line.StoreFloat,
        default=0.0,
        help="dropout rate on the activations of the within-session network: the TCN of "
        "hiertcn and tcn, the session GRU outputs of hiergru and hrnn (default: 0)",
    )
    group.add_argument(
        "--gru-candidate-dropout",
        action=command_line.StoreFloat,
        default=0.0,
        help="dropout rate on the candidate activation of the session GRU of hiertcn and "
        "hiergru (hrnn: the user GRU), which keeps the carried state intact (default: 0)",
    )
    group.add_argument(
        "--batch-norm",
        action="store_true",
        help="masked batch normalization in the TCN of hiertcn and tcn, with statistics per "
        "time step",
    )
    group.add_argument(
        "--batch-norm-steps",
        type=int,
        default=256,
        help="time steps with their own batch-norm statistics, with --batch-norm; later steps "
        "share the last (default: 256)",
    )


def _add_model_input_arguments(group: argparse._ArgumentGroup) -> None:
    """Add fixed item vectors, the baselines' recent items and the GRU backpropagation depth."""
    group.add_argument(
        "--item-vectors",
        help="fixed pre-trained item vectors, a float .npy file [N, D] in vocabulary row order "
        "(default: learned item embeddings)",
    )
    group.add_argument(
        "--recent-items",
        type=int,
        default=5,
        help="k, the last items that moving_average averages and maxitem compares "
        "(default: 5). moving_average with 1 ranks by the last item alone, the "
        '"last item" baseline',
    )
    add_bptt_sessions_argument(group)


def add_bptt_sessions_argument(group: argparse._ArgumentGroup) -> None:
    """Add `--bptt-sessions`, the GRU backpropagation depth, which bench/train_speed.py adds too."""
    group.add_argument(
        "--bptt-sessions",
        type=int,
        default=4,
        help="session updates of the high-level GRU (hrnn: the user GRU) of hiertcn, hiergru "
        "and hrnn that each training batch backpropagates through, 1 to 256; more lets the GRU "
        "learn to keep interests across sessions, at the cost of up to that many GRU steps per "
        "batch (default: 4)",
    )


class _RecordLossFlag(command_line.RecordGiven):
    """Store a loss flag's value and add the flag to `LOSS_FLAGS_GIVEN`."""

    given_attribute = LOSS_FLAGS_GIVEN


class _RecordLossFloat(_RecordLossFlag):
    """Parse a float loss flag as `command_line.StoreFloat` does, and record it as given."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        value = command_line.read_float_flag(self, namespace, str(values))
        super().__call__(parser, namespace, value, option_string)


def add_loss_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the loss flags."""
    parser.set_defaults(**{LOSS_FLAGS_GIVEN: ()})
    group = parser.add_argument_group("loss")
    group.add_argument(
        "--loss",
        choices=LOSS_NAMES,
        default="cross_entropy",
        help="training loss: softmax cross-entropy over the catalog, or sampled-negative hinge, "
        "bpr, nce, or l2 between user and target embedding (default: cross_entropy)",
    )
    group.add_argument(
        "--margin",
        action=_RecordLossFloat,
        default=1.0,
        help="hinge margin, in score units; only --loss hinge reads it (default: 1.0)",
    )
    group.add_argument(
        "--negatives",
        action=_RecordLossFlag,
        type=int,
        default=100,
        help="sampled negative items per event for hinge, bpr and nce; a draw of the event's "
        "own item is left out of the loss (default: 100)",
    )
    group.add_argument(
        "--sampler",
        action=_RecordLossFlag,
        choices=SAMPLER_NAMES,
        default="uniform",
        help="how hinge, bpr and nce draw negatives: uniformly, by training popularity, or from "
        "the event's impressions when the log has them (default: uniform)",
    )


def add_training_arguments(
    parser: argparse.ArgumentParser, threads_record: str = "metrics.json"
) -> None:
    """Add the training loop flags (defaults from `TrainConfig`); `threads_record` names the
    file that records the thread count."""
    group = parser.add_argument_group("training")
    group.add_argument("--epochs", type=int, default=10, help="maximum epochs (default: 10)")
    group.add_argument(
        "--batch-size", type=int, default=32, help="queues, i.e. sessions per batch (default: 32)"
    )
    group.add_argument(
        "--lr",
        action=command_line.StoreFloat,
        default=1e-3,
        help="Adam learning rate (default: 0.001)",
    )
    group.add_argument(
        "--patience",
        type=int,
        default=3,
        help="stop after this many epochs without a better validation MRR (default: 3)",
    )
    group.add_argument(
        "--grad-clip",
        action=command_line.StoreFloat,
        help="clip the global L2 norm of the gradients to this value (default: no clipping)",
    )
    group.add_argument(
        "--seed",
        type=command_line.seed,
        default=0,
        help="seed of weights, shuffling and sampling (default: 0)",
    )
    group.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="auto uses CUDA when present, else the CPU (default: auto)",
    )
    group.add_argument(
        "--max-batches",
        type=int,
        help="cap the batches of each epoch, for quick trials (default: all)",
    )
    add_threads_argument(group, threads_record)
    group.add_argument(
        "--no-progress", action="store_true", help="do not draw the progress bar on stderr"
    )


def add_threads_argument(group: argparse._ArgumentGroup, record: str) -> None:
    """Add `--threads`, torch's CPU thread count; `record` names the file that records it."""
    group.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="CPU threads of torch, 1 to 1024 (default: torch's choice, one per core). The last "
        "digits of convolutions and matrix products depend on it, so a run repeats exactly "
        f"only with the same count; {record} records the count used",
    )


def model_config_from_args(args: argparse.Namespace) -> ModelConfig:
    """Build the `ModelConfig` that the model flags describe. An invalid value names its flag."""
    dilations = parse_dilations(args.dilations)
    from hiertcn.models.config import field_flag

    try:
        return _model_config(args, dilations)
    except InvalidFieldError as error:
        flag = field_flag(error.field)
        value = command_line.format_flag_number(error.value, flag, command_line.flag_texts(args))
        raise ConfigError(f"{flag} {value} is invalid: {error.fix}") from None


def parse_dilations(value: str | None) -> tuple[int, ...] | None:
    """Parse the --dilations value `1,2,4,8`, where None (the flag not given) means the default.

    An empty value, an empty part or a dilation below 1 raises ConfigError naming the flag.
    """
    if value is None:
        return None
    try:
        dilations = tuple(int(part) for part in value.split(","))
    except ValueError:
        dilations = ()
    if not dilations or any(dilation < 1 for dilation in dilations):
        raise ConfigError(
            f"--dilations {value!r} is invalid: give one positive integer per residual block, "
            "comma-separated, e.g. 1,2,4,8"
        )
    return dilations


def _model_config(args: argparse.Namespace, dilations: tuple[int, ...] | None) -> ModelConfig:
    """Build the `ModelConfig` of the parsed flags; invalid values raise `InvalidFieldError`."""
    from hiertcn.models.config import ModelConfig

    return ModelConfig(
        name=args.model,
        embedding_dim=args.embedding_dim,
        hidden_size=args.hidden_size,
        gru_layers=args.gru_layers,
        tcn_channels=args.tcn_channels,
        kernel_size=args.kernel_size,
        dilations=dilations,
        dropout=args.dropout,
        gru_candidate_dropout=args.gru_candidate_dropout,
        batch_norm=args.batch_norm,
        batch_norm_steps=args.batch_norm_steps,
        item_vectors_path=args.item_vectors,
        recent_items=args.recent_items,
        bptt_sessions=args.bptt_sessions,
    )


# Flags of the training and loss fields whose flag is not `--` plus the field with dashes.
_TRAINING_FLAGS = {"learning_rate": "--lr"}


def loss_config_from_args(args: argparse.Namespace) -> LossConfig:
    """Build the `LossConfig` that the loss flags describe."""
    from hiertcn.losses import LossConfig

    return LossConfig(
        name=args.loss, margin=args.margin, negatives=args.negatives, sampler=args.sampler
    )


def check_loss_flags(args: argparse.Namespace) -> None:
    """Raise ConfigError for a loss flag given on the command line that --loss does not read.

    A flag counts as given even with its default value, because the user then still expects an
    effect. Flags left at their defaults pass with every loss.
    """
    for flag in dict.fromkeys(getattr(args, LOSS_FLAGS_GIVEN, ())):
        readers = LOSS_FLAG_READERS[flag]
        if args.loss in readers:
            continue
        value = getattr(args, flag.removeprefix("--"))
        if isinstance(value, float):
            value = command_line.format_flag_number(value, flag, command_line.flag_texts(args))
        if len(readers) == 1:
            reason, fix = f"only --loss {readers[0]} reads it", readers[0]
        else:
            names = f"{', '.join(readers[:-1])} and {readers[-1]}"
            reason = f"only the losses {names} read it"
            fix = f"{readers[0]} (or {' or '.join(readers[1:])})"
        raise ConfigError(
            f"{flag} {value} has no effect with --loss {args.loss}, because {reason}: pass "
            f"--loss {fix}, or drop {flag}"
        )


def train_config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Build the `TrainConfig` that the training and loss flags describe."""
    try:
        return _train_config(args)
    except InvalidFieldError as error:
        flag = _TRAINING_FLAGS.get(error.field, "--" + error.field.replace("_", "-"))
        value = command_line.format_flag_number(error.value, flag, command_line.flag_texts(args))
        raise ConfigError(f"{flag} {value} is invalid: {error.fix}") from None


def _train_config(args: argparse.Namespace) -> TrainConfig:
    """Build the `TrainConfig` of the parsed flags; invalid values raise `InvalidFieldError`."""
    from hiertcn.train import TrainConfig

    return TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        patience=args.patience,
        grad_clip=args.grad_clip,
        seed=args.seed,
        device=args.device,
        loss=loss_config_from_args(args),
        max_batches=args.max_batches,
        progress=not args.no_progress,
        threads=args.threads,
    )


def warn_ignored_flags(model_config) -> None:
    """Log a warning for each model flag that the chosen model does not read."""
    from hiertcn.models import ignored_fields
    from hiertcn.models.config import flag_for

    for field in ignored_fields(model_config):
        logger.warning(
            "%s has no effect on --model %s, which does not read it",
            flag_for(field, getattr(model_config, field)),
            model_config.name,
        )


def print_dataset(dataset) -> None:
    """Print the statistics of each part of a dataset.

    The filter report is not printed here, because the loader already logs it at INFO level.
    """
    from hiertcn.data.stats import WARM_SPLIT_NOTE, compute_stats, format_stats_table

    parts = {"train": dataset.train, "valid": dataset.valid, "test": dataset.test}
    print(format_stats_table({name: compute_stats(log) for name, log in parts.items()}))
    if dataset.summary["split"]["kind"] == "warm":
        print(WARM_SPLIT_NOTE)
    print()


def check_out_dir(out: Path, resume: bool, force: bool, data: Path | None = None) -> None:
    """Reject an --out that cannot take this run, before any data is read.

    `data` is the input log or prepared folder, which --out must neither be nor contain.
    """
    from hiertcn.checkpoint import BEST_CHECKPOINT, LAST_CHECKPOINT

    if data is not None:
        check_out_apart_from_data(out, data)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file: pass a folder")
    check_out_writable(out)
    if resume:
        if not (out / LAST_CHECKPOINT).is_file():
            raise CheckpointError(
                f"nothing to resume in {out} because it contains no {LAST_CHECKPOINT}: "
                "start a new run without --resume"
            )
        return
    existing = [name for name in (BEST_CHECKPOINT, LAST_CHECKPOINT) if (out / name).exists()]
    if existing and not force:
        raise ConfigError(
            f"--out {out} already contains a run ({', '.join(existing)}): pass --resume to "
            "continue it, --force to replace it, or another --out folder"
        )


def check_out_apart_from_data(out: Path, data: Path) -> None:
    """Raise ConfigError when --out is the input, lies in a prepared folder, or contains the log.

    A run in a prepared folder would mix its files with the folder's, and --force deletes the
    run files of --out, which must not include the log.
    """
    from hiertcn.data.prepared import enclosing_prepared_folder

    out_path, data_path = out.resolve(), data.resolve()
    if out_path == data_path:
        raise ConfigError(f"--out {out} is the input {data}: pass a new folder for the run")
    prepared = enclosing_prepared_folder(out)
    if prepared is not None:
        raise ConfigError(
            f"--out {out} is inside the prepared folder {prepared}, which only "
            "`hiertcn data prepare` writes: pass a folder outside it"
        )
    if data_path.parent == out_path and data_path.name in RUN_FILES:
        raise ConfigError(
            f"--out {out} would hold the run file {data_path.name}, but that is the input "
            f"{data}: pass another --out folder, or move the log"
        )


def check_out_writable(out: Path) -> None:
    """Create --out and write a test file in it; raise ConfigError when either fails.

    The check runs before the data is read, so a bad --out fails in seconds, not after the first
    epoch. `os.access` alone is not enough, because root passes it even where no folder can be
    created (under /proc, on a read-only mount). The first checkpoint creates the folder again.
    """
    existing = next((path for path in (out, *out.parents) if path.exists()), Path("."))
    if not existing.is_dir():
        raise ConfigError(
            f"--out {out} is invalid because {existing} is a file: pass a path in a folder"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        place = "" if existing == out else f" because {existing} is not writable"
        raise ConfigError(
            f"--out {out} cannot be created or written{place}: pass a folder you can write, or "
            f"change the permissions of {existing}"
        )
    # The folders that this check creates are removed again, so a later error leaves none.
    created = [path for path in (out, *out.parents) if not path.exists()]
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as error:
        raise ConfigError(
            f"--out {out} cannot be created or written ({error.strerror or error}): pass a "
            "folder you can write"
        ) from None
    finally:
        for folder in created:
            with contextlib.suppress(OSError):
                folder.rmdir()


def remove_run(out: Path) -> None:
    """Delete the files of an earlier run in `out` (for --force)."""
    for name in RUN_FILES:
        path = out / name
        if path.is_file():
            path.unlink()
            logger.info("--force: deleted %s", path)


def describe_saved_run(out: Path, force: bool, new_flags: str = "") -> str:
    """Describe what an interrupted or failed run left in `out` and how to continue it.

    `new_flags` names the flags to change in the rerun, e.g. " with a lower --lr".
    """
    from hiertcn.checkpoint import LAST_CHECKPOINT, load_checkpoint

    last = out / LAST_CHECKPOINT
    if not last.is_file():
        return f"no epoch finished, so {out} contains no checkpoint to resume"
    try:
        checkpoint = load_checkpoint(last)
    except CheckpointError as error:
        logger.debug("cannot read %s after the interrupt: %s", last, error)
        return f"{last} cannot be read, so start over with --force"
    best_epoch = checkpoint.resume_state.get("best_epoch")
    rerun = "rerun the same command with --resume" + (" in place of --force" if force else "")
    rerun += new_flags
    return (
        f"{last} contains epoch {checkpoint.epoch}, the last finished one (best.pt: epoch "
        f"{best_epoch}): to continue, {rerun}"
    )


def train_and_test(
    args: argparse.Namespace,
    model_config: ModelConfig,
    train_config: TrainConfig,
    dataset: Dataset,
    device: torch.device,
) -> tuple[TrainResult, EvaluationResult]:
    """Build and train the model, then return the training result and the test evaluation.

    An interrupt or a diverged loss raises an error that states what the run saved in --out and
    how to continue it. A failed allocation raises one that names the flags to lower.
    """
    from hiertcn.evaluate import EvaluationConfig, evaluate_model
    from hiertcn.memory import report_out_of_memory
    from hiertcn.models import build_model
    from hiertcn.train import seed_everything, train_model

    seed_everything(train_config.seed)
    fix = (
        f"lower --batch-size (now {train_config.batch_size}), or the model sizes "
        "--embedding-dim, --hidden-size and --tcn-channels"
    )
    try:
        with report_out_of_memory("training", fix):
            model = build_model(model_config, len(dataset.vocab))
            result = train_model(model, dataset, train_config, out_dir=args.out, resume=args.resume)
            evaluation = EvaluationConfig(batch_size=train_config.batch_size)
            test = evaluate_model(result.model, dataset.test, evaluation, device)
    except KeyboardInterrupt as interrupt:
        # The command line prints this message and exits with 130, or 143 on SIGTERM, which
        # raises a subclass.
        raise type(interrupt)(describe_saved_run(args.out, args.force)) from None
    except TrainingDivergedError as error:
        saved = describe_saved_run(args.out, args.force, " and the changed --lr or --grad-clip")
        raise TrainingDivergedError(f"{error}. {saved}") from None
    return result, test


def run(args: argparse.Namespace) -> int:
    """Train, evaluate the best epoch on the test split, and print the metric table and pools."""
    from hiertcn.data.options import load_dataset
    from hiertcn.evaluate import describe_pools, format_table, warn_single_item_pools
    from hiertcn.resume import check_resume_config
    from hiertcn.run_info import resolve_device, save_run_metrics

    model_config = model_config_from_args(args)
    train_config = train_config_from_args(args)
    check_loss_flags(args)
    warn_ignored_flags(model_config)
    device = resolve_device(train_config.device)
    check_out_dir(args.out, resume=args.resume, force=args.force, data=args.data)
    if args.resume:
        check_resume_config(args.out, model_config)
    dataset = load_dataset(args)
    print_dataset(dataset)

    if args.force:
        remove_run(args.out)
    result, test = train_and_test(args, model_config, train_config, dataset, device)
    warn_single_item_pools(test.pools)
    print(f"test split, best epoch {result.best_epoch}:")
    print(format_table([{"model": model_config.name, **test.metrics}]))
    print(describe_pools(test.pools))

    save_run_metrics(args.out, model_config, train_config, result, test.metrics)
    return 0
