"""`hiertcn evaluate`: evaluate several checkpoints side by side on the same split of a log.

    hiertcn evaluate runs/ml-hiertcn/best.pt runs/ml-gru/best.pt ratings.csv --format movielens

Pass the same data flags as for training, so the split and the item vocabulary are the same.
Prints one Markdown table (one row per checkpoint) and, with --json, writes the metrics as JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from hiertcn.errors import CheckpointError

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `evaluate` subcommand."""
    from hiertcn.data.options import add_data_arguments

    parser = subparsers.add_parser(
        "evaluate",
        help="evaluate checkpoints side by side on one split",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "checkpoints", metavar="CKPT", nargs="+", type=Path, help="checkpoint files (best.pt)"
    )
    add_data_arguments(parser)
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
    group.add_argument(
        "--no-impressions",
        action="store_true",
        help="rank among the whole catalog even when the log has impressions",
    )
    group.add_argument("--json", type=Path, help="also write the metrics to this JSON file")
    group.add_argument(
        "--ranks",
        action="store_true",
        help="include the rank and context of every scored event in the --json file",
    )
    parser.set_defaults(func=run)


def check_vocabulary(path: Path, item_ids: list[str], vocab_ids: tuple[str, ...]) -> None:
    """Raise CheckpointError when a checkpoint was trained on another item vocabulary."""
    if tuple(item_ids) != tuple(vocab_ids):
        raise CheckpointError(
            f"checkpoint {path} was trained on {len(item_ids)} items, but the log gives a "
            f"vocabulary of {len(vocab_ids)} items in another order: pass the data flags that "
            "trained it"
        )


def run(args: argparse.Namespace) -> int:
    """Evaluate every checkpoint and print one table."""
    from hiertcn.checkpoint import load_model
    from hiertcn.data.options import load_dataset
    from hiertcn.evaluate import EvaluationConfig, evaluate_model, format_table
    from hiertcn.train import resolve_device

    dataset = load_dataset(args)
    log = dataset.test if args.on == "test" else dataset.valid
    device = resolve_device(args.device)
    config = EvaluationConfig(batch_size=args.batch_size, use_impressions=not args.no_impressions)

    rows: list[dict[str, Any]] = []
    for path in args.checkpoints:
        model, checkpoint = load_model(path, device)
        check_vocabulary(path, checkpoint.item_ids, dataset.vocab.ids)
        result = evaluate_model(model, log, config, device)
        row: dict[str, Any] = {
            "model": f"{checkpoint.model_config['name']} ({path})",
            "checkpoint": str(path),
            "epoch": checkpoint.epoch,
            **result.metrics,
        }
        if args.ranks:
            row["ranks"] = result.ranks.to_dict()
        rows.append(row)
        logger.info("evaluated %s: MRR %.4f on %d events", path, row["mrr"], row["events"])

    print(format_table(rows))
    if args.json is not None:
        report = {"split": args.on, "data": dataset.summary, "results": rows}
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        logger.info("wrote %s", args.json)
    return 0
