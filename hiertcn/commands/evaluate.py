"""`hiertcn evaluate`: evaluate several checkpoints side by side on the same split of a log."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hiertcn.errors import ConfigError, DataError

if TYPE_CHECKING:
    import torch

    from hiertcn.checkpoint import Checkpoint
    from hiertcn.data.log import EventLog
    from hiertcn.data.options import Dataset
    from hiertcn.evaluate import EvaluationConfig, PoolCounts

logger = logging.getLogger(__name__)

DESCRIPTION = "Evaluate several checkpoints side by side on the same split of a log."
EPILOG = """example:
  hiertcn evaluate runs/ml-hiertcn/best.pt runs/ml-gru/best.pt ratings.csv --format movielens

A data flag not given takes the value that trained the checkpoints, so the split and the item
vocabulary are the same as in training. Checkpoints trained with different values of a flag not
given stop the command, which names the flag. A flag given wins. A folder from
`hiertcn data prepare` in place of the log needs no data flags.
Prints one Markdown table (one row per checkpoint) and a `pool:` line under it that counts the
events ranked among their impressions and those ranked among the whole catalog. With --json, it
writes the metrics as JSON, with these counts under `pool` in each result.

--ranks adds `ranks` to each result: lists with one entry per ranked event, in batch order,
not in event order (sort by `events` for log order):
  events            index of the event in the evaluated part of the log
  users, user_ids   index of its user in that part (from 0), and the user's id in the log
  ranks             pessimistic rank of the event's item, 1 = best
  pool_sizes        items in its pool: the catalog size, or the size of its impression pool
  past_events       the user's events before it in the evaluated part
  session_position  its 0-based position in its session
  session_gap       seconds from the previous session's last event to this session's first
                    event, or -1 in the user's first session
"""


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Show the checkpoints as required in the usage line.

    argparse parses them with nargs="*" (see `register`), which it would show as optional.
    """

    def _format_args(self, action: argparse.Action, default_metavar: str) -> str:
        if action.dest == "checkpoints":
            return "CKPT [CKPT ...]"
        return super()._format_args(action, default_metavar)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `evaluate` subcommand."""
    from hiertcn.commands.train import add_threads_argument
    from hiertcn.data.options import add_data_arguments

    parser = subparsers.add_parser(
        "evaluate",
        help="evaluate checkpoints side by side on one split",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=_HelpFormatter,
    )
    # nargs="*" with the required FILE after it lets argparse give a lone path to FILE, so that
    # `check_arguments` can report the missing checkpoint instead of a missing FILE.
    parser.add_argument(
        "checkpoints",
        metavar="CKPT",
        nargs="*",
        type=Path,
        help="checkpoint files (best.pt), one or more",
    )
    add_data_arguments(parser, prepared_folder=True)
    group = parser.add_argument_group("evaluation")
    group.add_argument(
        "--on",
        choices=("test", "valid"),
        default="test",
        help="split to evaluate on (default: test)",
    )
    group.add_argument(
        "--batch-size", type=int, default=32, help="sessions per batch (default: 32)"
    )
    group.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="auto uses CUDA when present, else the CPU (default: auto)",
    )
    add_threads_argument(group, "the --json file")
    group.add_argument(
        "--no-impressions",
        action="store_true",
        help="rank among the whole catalog even when the log has impressions",
    )
    group.add_argument("--json", type=Path, help="also write the metrics to this JSON file")
    group.add_argument(
        "--ranks",
        action="store_true",
        help="include the rank and context of every ranked event in the --json file, one "
        "entry per event and not in event order (the fields are listed below)",
    )
    parser.set_defaults(func=run)


def check_json_path(path: Path) -> None:
    """Raise ConfigError when the --json file cannot be written, before anything is evaluated."""
    folder = path.parent
    if path.is_dir():
        raise ConfigError(f"--json {path} is a folder: pass a file path")
    if folder.exists() and not folder.is_dir():
        raise ConfigError(
            f"--json {path} is invalid because {folder} is a file: pass a path in a folder"
        )
    if not folder.is_dir():
        raise ConfigError(
            f"--json {path} is invalid because the folder {folder} does not exist: create it first"
        )
    target = path if path.exists() else folder
    if not os.access(target, os.W_OK):
        raise ConfigError(f"--json {path} is not writable: pass a path you can write")


def is_torch_file(path: Path) -> bool:
    """Return whether `path` is a file that `torch.save` wrote: a zip archive with data.pkl."""
    try:
        if not path.is_file() or not zipfile.is_zipfile(path):
            return False
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("/data.pkl") for name in archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


# The most --threads that `hiertcn.train.TrainConfig` accepts, kept here so that the check runs
# before torch is imported.
MAX_THREADS = 1024


def check_arguments(args: argparse.Namespace) -> None:
    """Raise ConfigError on a missing checkpoint, an invalid flag or an --json that cannot be
    written or would overwrite an input."""
    if not args.checkpoints and is_torch_file(Path(args.data)):
        raise ConfigError(
            f"the log is missing: {args.data} is a checkpoint, so pass the log after it, e.g. "
            f"hiertcn evaluate {args.data} LOG"
        )
    if not args.checkpoints:
        raise ConfigError(
            f"no checkpoint given, only the log {args.data}: pass one or more checkpoints "
            f"(the best.pt of a run) before it, e.g. hiertcn evaluate runs/NAME/best.pt {args.data}"
        )
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size {args.batch_size} is invalid: use an integer >= 1")
    if args.threads is not None and not 1 <= args.threads <= MAX_THREADS:
        raise ConfigError(f"--threads {args.threads} is invalid: use 1 to {MAX_THREADS}")
    if args.ranks and args.json is None:
        raise ConfigError(
            "--ranks adds the ranks to the --json file, but no --json was given: "
            "pass --json FILE as well"
        )
    if args.json is not None:
        check_json_path(args.json)
        check_json_apart_from_inputs(args.json, [Path(args.data), *args.checkpoints])


def check_json_apart_from_inputs(path: Path, inputs: list[Path]) -> None:
    """Raise ConfigError when the --json file is an input or lies in a prepared folder."""
    from hiertcn.data.prepared import enclosing_prepared_folder

    if any(path.resolve() == Path(input_path).resolve() for input_path in inputs):
        raise ConfigError(
            f"--json {path} is one of the input files and would be overwritten: "
            "pass a new file path"
        )
    prepared = enclosing_prepared_folder(path)
    if prepared is not None:
        raise ConfigError(
            f"--json {path} is inside the prepared folder {prepared}, which only "
            "`hiertcn data prepare` writes, and would damage it: pass a path outside it"
        )


def load_evaluation_data(args: argparse.Namespace, checkpoints: Sequence[Checkpoint]) -> Dataset:
    """Load the data to evaluate on; a DataError on a log file names the checkpoints' data flags.

    Data flags other than those that trained a checkpoint (another --item-col, say) often fail
    in reading or filtering, before the vocabulary check could name them.
    """
    from hiertcn.checkpoint import describe_data_source
    from hiertcn.data.options import load_dataset
    from hiertcn.data.prepared import is_prepared_folder

    try:
        return load_dataset(args)
    except DataError as error:
        if args.data is None or is_prepared_folder(Path(args.data)):
            raise
        detected = detect_mismatched_format(args)
        if detected is not None:
            raise DataError(
                f"{args.data} looks like a {detected} log, but evaluate read it as {args.format}, "
                "the format that trained the checkpoints, because --format was not given: pass "
                f"--format {detected}. Reading it as {args.format} failed with: {error}"
            ) from None
        trained = {}
        for path, checkpoint in zip(args.checkpoints, checkpoints, strict=True):
            trained.setdefault(describe_data_source(checkpoint.data_summary), []).append(str(path))
        sources = "; ".join(
            f"{', '.join(paths)} {'was' if len(paths) == 1 else 'were'} trained on {source}"
            for source, paths in trained.items()
        )
        raise DataError(
            f"{error}. Check the data flags against those of the checkpoints: {sources}"
        ) from None


def detect_mismatched_format(args: argparse.Namespace) -> str | None:
    """Return the format detected for the log when it differs from the --format taken from the
    checkpoints, else None.

    A JSON Lines copy of a CSV training log is the usual case: read as csv, its error names the
    delimiter, not the format.
    """
    from hiertcn.data.format_detection import detect_format
    from hiertcn.data.options import GIVEN_FLAGS, data_config_from_args

    # --format defaults to auto, so another value not given came from the checkpoints.
    if "--format" in getattr(args, GIVEN_FLAGS) or args.format == "auto":
        return None
    try:
        reader = dataclasses.replace(data_config_from_args(args).reader, format="auto")
        detected = detect_format(Path(args.data), reader)
    except (ConfigError, DataError, OSError):
        return None
    return None if detected == args.format else detected


def adopt_training_data_flags(args: argparse.Namespace, checkpoints) -> list[str]:
    """Set each data flag not given to the value that trained every checkpoint, and return the
    flags set.

    Raise ConfigError when the checkpoints were trained with different values of a flag not
    given, because one split cannot match all of them. Every flag keeps its parsed value when a
    checkpoint predates the recorded reader settings, and the vocabulary check then names the
    flags that trained each checkpoint.
    """
    from hiertcn.checkpoint import recorded_data_words
    from hiertcn.data.options import GIVEN_FLAGS, add_data_arguments

    parser = argparse.ArgumentParser(add_help=False, exit_on_error=False)
    add_data_arguments(parser)
    recorded = []
    for checkpoint in checkpoints:
        words = recorded_data_words(checkpoint.data_summary)
        if words is None:
            return []
        try:
            recorded.append(vars(parser.parse_args([str(args.data), *words])))
        except argparse.ArgumentError as error:
            logger.debug("the recorded data flags %s do not parse: %s", words, error)
            return []
    given_flags = set(getattr(args, GIVEN_FLAGS))
    adopted: list[str] = []
    conflicts: list[str] = []
    # argparse has no public list of a parser's actions.
    for action in parser._actions:
        if not action.option_strings or action.option_strings[0] in given_flags:
            continue
        flag, dest = action.option_strings[0], action.dest
        values = [namespace[dest] for namespace in recorded]
        if any(value != values[0] for value in values):
            conflicts.append(describe_flag_values(args.checkpoints, recorded, action))
            continue
        if any(flag not in namespace[GIVEN_FLAGS] for namespace in recorded):
            continue
        if getattr(args, dest) == values[0]:
            continue
        setattr(args, dest, values[0])
        adopted.append(flag if action.nargs == 0 else f"{flag} {values[0]}")
    if conflicts:
        raise ConfigError(
            f"the checkpoints were trained with different data flags: {'; '.join(conflicts)}. "
            "Because evaluate scores every checkpoint on one split, pass each of these flags "
            "with the value to evaluate on, or evaluate the checkpoints separately"
        )
    if adopted:
        logger.info("data flags not given, as the checkpoints were trained: %s", " ".join(adopted))
    return adopted


def describe_flag_values(
    paths: list[Path], recorded: list[dict[str, Any]], action: argparse.Action
) -> str:
    """Describe the value of one data flag for each checkpoint, grouped by value, such as
    `--min-item-count 10 (a.pt, b.pt), 20 (c.pt)`."""
    from hiertcn.data.options import GIVEN_FLAGS

    flag, dest = action.option_strings[0], action.dest
    groups: dict[str, list[str]] = {}
    for path, namespace in zip(paths, recorded, strict=True):
        if flag not in namespace[GIVEN_FLAGS]:
            value = "not given"
        elif action.nargs == 0:
            value = "given"
        else:
            value = str(namespace[dest])
        groups.setdefault(value, []).append(str(path))
    return f"{flag} " + ", ".join(
        f"{value} ({', '.join(group)})" for value, group in groups.items()
    )


def evaluate_checkpoints(
    args: argparse.Namespace,
    checkpoints: Sequence[Checkpoint],
    log: EventLog,
    config: EvaluationConfig,
    device: torch.device,
) -> tuple[list[dict[str, Any]], list[PoolCounts]]:
    """Evaluate each checkpoint on `log`, and return one table row and the pool counts of each.

    A failed allocation raises an error that names the flag to lower.
    """
    from hiertcn.checkpoint import build_model_from_checkpoint
    from hiertcn.evaluate import evaluate_model, warn_single_item_pools
    from hiertcn.memory import report_out_of_memory

    rows: list[dict[str, Any]] = []
    pools: list[PoolCounts] = []
    fix = f"lower --batch-size (now {args.batch_size})"
    for path, checkpoint in zip(args.checkpoints, checkpoints, strict=True):
        with report_out_of_memory(f"evaluating {path}", fix):
            model = build_model_from_checkpoint(checkpoint, device)
            model.eval()
            result = evaluate_model(model, log, config, device)
        row: dict[str, Any] = {
            "model": f"{checkpoint.model_config['name']} ({path})",
            "checkpoint": str(path),
            "epoch": checkpoint.epoch,
            **result.metrics,
            "pool": result.pools.to_dict(),
        }
        if args.ranks:
            user_ids = [str(user) for user in log.user_ids[result.ranks.users]]
            row["ranks"] = {**result.ranks.to_dict(), "user_ids": user_ids}
        rows.append(row)
        logger.info("evaluated %s: MRR %.4f on %d events", path, row["mrr"], row["events"])
        # The checkpoints share the vocabulary (check_vocabulary) and are ranked on one log, so
        # their pool counts match, and the warning and the `pool:` line come once.
        if result.pools not in pools:
            warn_single_item_pools(result.pools)
        pools.append(result.pools)
    return rows, pools


def run(args: argparse.Namespace) -> int:
    """Evaluate every checkpoint and print one table."""
    from hiertcn.checkpoint import (
        EVALUATION_DATA_SETTINGS,
        check_data_settings,
        check_vocabulary,
        load_checkpoint,
    )
    from hiertcn.data.prepared import is_prepared_folder
    from hiertcn.evaluate import EvaluationConfig, describe_pools, format_table
    from hiertcn.run_info import resolve_device, run_environment, set_threads

    check_arguments(args)
    device = resolve_device(args.device)
    set_threads(args.threads)
    checkpoints = [load_checkpoint(path) for path in args.checkpoints]
    if not is_prepared_folder(Path(args.data)):
        adopt_training_data_flags(args, checkpoints)
    dataset = load_evaluation_data(args, checkpoints)
    log = dataset.test if args.on == "test" else dataset.valid
    config = EvaluationConfig(batch_size=args.batch_size, use_impressions=not args.no_impressions)
    for path, checkpoint in zip(args.checkpoints, checkpoints, strict=True):
        check_vocabulary(path, checkpoint, dataset.vocab.ids)
        check_data_settings(
            path,
            checkpoint,
            dataset.summary,
            EVALUATION_DATA_SETTINGS,
            action="evaluate it",
            prepared_folder=args.data if is_prepared_folder(Path(args.data)) else None,
        )

    rows, pools = evaluate_checkpoints(args, checkpoints, log, config, device)
    print(format_table(rows))
    for counts in dict.fromkeys(pools):
        print(describe_pools(counts))
    if args.json is not None:
        report = {
            "split": args.on,
            "data": dataset.summary,
            "environment": run_environment(str(device)),
            "results": rows,
        }
        try:
            args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        except OSError as error:
            raise ConfigError(
                f"--json {args.json} cannot be written ({error}): pass a writable path"
            ) from error
        logger.info("wrote %s", args.json)
    return 0
