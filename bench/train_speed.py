"""Training speed and padded input memory of HierTCN, GRU and TCN on the same data, in one run.

    python bench/train_speed.py                      # Taobao head slice from HIERTCN_DATA_DIR
    python bench/train_speed.py --data FILE --format taobao --users 100 --device cpu

For each model it trains one epoch over the same users with the same batch size. It reports the
wall-clock and CPU seconds of that epoch (without validation) and the peak bytes of the padded
input tensors of one batch, which every model reports as `last_input_bytes`. HierTCN only pads
one session per row, while the single-level TCN also carries the last `receptive_field - 1`
events of the user's history. Each number is also given as a ratio to HierTCN. For reference,
the HierTCN paper (You et al., WWW 2019) is quoted with TCN-family models about 2.5 times faster
per epoch than GRU-family models, and HierTCN using about 10% of TCN's input memory (figures not
rechecked against the paper here).
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hiertcn.command_line import seed
from hiertcn.commands.train import add_bptt_sessions_argument, add_size_arguments, parse_dilations
from hiertcn.data.filters import FilterConfig
from hiertcn.data.options import DataConfig, load_dataset_from_config
from hiertcn.data.readers import FORMATS, ReaderConfig
from hiertcn.errors import ConfigError, HierTCNError, InvalidFieldError
from hiertcn.models import ModelConfig, build_model, list_models
from hiertcn.models.config import field_flag
from hiertcn.train import TrainConfig, seed_everything, train_model

# `python bench/train_speed.py` puts bench/ on sys.path, not the repository root, whose `bench`
# package contains the argument types that the bench scripts share.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.arguments import DEFAULT_DATA, default_data, positive_int

logger = logging.getLogger(__name__)

MODELS = ("hiertcn", "gru", "tcn")


@dataclass(frozen=True, eq=False)
class BenchDataset:
    """The parts of a dataset that `train_model` reads: a user slice for training."""

    train: object
    valid: object
    test: object
    vocab: object
    summary: dict


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data",
        type=Path,
        help="interaction log (default: taobao-userbehavior-head in HIERTCN_DATA_DIR, or in "
        "../shared/data beside the clone when it is unset)",
    )
    parser.add_argument(
        "--format", choices=FORMATS, default="taobao", help="log format (default: taobao)"
    )
    parser.add_argument(
        "--item-col",
        help="item column (default: category for --format taobao, whose item ids are too "
        "sparse for the filters; the format's item column otherwise)",
    )
    parser.add_argument(
        "--min-item-count",
        type=positive_int,
        default=50,
        help="drop rarer items, in events (default: 50)",
    )
    parser.add_argument(
        "--users", type=positive_int, default=100, help="training users in the slice (default: 100)"
    )
    parser.add_argument(
        "--models",
        default=",".join(MODELS),
        help="comma-separated models, each once; the first is the reference of the ratios "
        "(default: hiertcn,gru,tcn)",
    )
    parser.add_argument(
        "--batch-size", type=positive_int, default=32, help="sessions per batch (default: 32)"
    )
    parser.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), default="cpu", help="device (default: cpu)"
    )
    parser.add_argument("--seed", type=seed, default=0, help="seed (default: 0)")
    parser.add_argument(
        "--threads",
        type=positive_int,
        default=1,
        help="torch CPU threads; one thread keeps CPU seconds comparable on a shared machine "
        "(default: 1)",
    )
    # The flags and defaults of `hiertcn train`. `model_config` checks their values.
    model_flags = parser.add_argument_group("model sizes, as in `hiertcn train`")
    add_size_arguments(model_flags)
    add_bptt_sessions_argument(model_flags)
    args = parser.parse_args(argv)
    if args.data is None:
        args.data, source = default_data()
        if not args.data.is_file():
            parser.error(
                f"the default log {args.data} is not a file ({source}): set HIERTCN_DATA_DIR to "
                f"the folder that contains {DEFAULT_DATA}, or pass --data LOG"
            )
    elif not args.data.is_file():
        parser.error(f"--data {args.data} is not a file: pass an interaction log")
    if args.item_col is None and args.format == "taobao":
        args.item_col = "category"
    try:
        args.models = model_names(args.models)
    except ValueError as error:
        parser.error(f"argument --models: {error}")
    return args


def model_names(value: str) -> list[str]:
    """Split --models; an unknown, repeated or missing name raises ValueError."""
    names = [name.strip() for name in value.split(",") if name.strip()]
    known = list_models()
    unknown = sorted(set(names) - set(known))
    if unknown:
        raise ValueError(f"unknown model {', '.join(unknown)}: choose from {', '.join(known)}")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"{', '.join(repeated)} given more than once: give each model once")
    if not names:
        raise ValueError(f"{value!r} names no model: e.g. --models hiertcn,gru")
    return names


def load_slice(args: argparse.Namespace) -> BenchDataset:
    """Load the log and keep the first `args.users` training users."""
    reader = ReaderConfig(format=args.format, item_col=args.item_col)
    filters = FilterConfig(min_item_count=args.min_item_count)
    dataset = load_dataset_from_config(DataConfig(path=args.data, reader=reader, filters=filters))
    train = dataset.train.subset_users(np.arange(min(args.users, dataset.train.num_users)))
    # Validation only has to run; two users keep its cost out of the way.
    valid = dataset.valid.subset_users(np.arange(min(2, dataset.valid.num_users)))
    return BenchDataset(train, valid, valid, dataset.vocab, dataset.summary)


def model_config(name: str, args: argparse.Namespace) -> ModelConfig:
    """Build the configuration of model `name` from the size flags.

    An invalid value raises ConfigError naming its flag, as `hiertcn train` does.
    """
    dilations = parse_dilations(args.dilations)
    try:
        return ModelConfig(
            name=name,
            embedding_dim=args.embedding_dim,
            hidden_size=args.hidden_size,
            gru_layers=args.gru_layers,
            tcn_channels=args.tcn_channels,
            kernel_size=args.kernel_size,
            dilations=dilations,
            bptt_sessions=args.bptt_sessions,
        )
    except InvalidFieldError as error:
        raise ConfigError(
            f"{field_flag(error.field)} {error.value} is invalid: {error.fix}"
        ) from None


def measure(
    config: ModelConfig, dataset: BenchDataset, args: argparse.Namespace
) -> dict[str, float]:
    """Train the model of `config` for one epoch; return its seconds, events/s and peak bytes."""
    seed_everything(args.seed)
    model = build_model(config, len(dataset.vocab))
    training = TrainConfig(
        epochs=1, batch_size=args.batch_size, device=args.device, seed=args.seed, progress=False
    )
    result = train_model(model, dataset, training)
    seconds = result.epoch_seconds[0]
    return {
        "seconds": seconds,
        "cpu_seconds": result.epoch_cpu_seconds[0],
        "events_per_second": dataset.train.num_events / seconds,
        "peak_input_bytes": max(result.last_input_bytes),
        "batches": len(result.last_input_bytes),
    }


def format_results(results: dict[str, dict[str, float]], reference: str) -> str:
    """Format the measurements as a Markdown table with ratios to the `reference` model."""
    base = results[reference]
    lines = [
        f"| model | epoch wall s | epoch CPU s | CPU x {reference} | events/s (wall) "
        f"| peak input bytes per batch | x {reference} |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in results.items():
        cpu_ratio = row["cpu_seconds"] / base["cpu_seconds"]
        bytes_ratio = row["peak_input_bytes"] / base["peak_input_bytes"]
        lines.append(
            f"| {name} | {row['seconds']:.1f} | {row['cpu_seconds']:.1f} | {cpu_ratio:.2f} | "
            f"{row['events_per_second']:,.0f} | {row['peak_input_bytes']:,} | {bytes_ratio:.2f} |"
        )
    return "\n".join(lines)


def _count(number: int, noun: str) -> str:
    """Return `1 torch thread` or `2 torch threads`."""
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        run(args)
    except HierTCNError as error:
        print(f"train_speed.py: error: {error}", file=sys.stderr)
        return error.exit_code
    return 0


def run(args: argparse.Namespace) -> None:
    """Load the slice, train each model of --models for one epoch and print the table."""
    # Invalid sizes fail here, before the log is read.
    configs = {name: model_config(name, args) for name in args.models}
    dataset = load_slice(args)
    train = dataset.train
    machine = platform.processor() or platform.machine()
    print(
        f"data: {args.data.name}, item column {args.item_col or 'of the format'}, "
        f"{train.num_users} users, "
        f"{train.num_sessions} sessions, {train.num_events} events, {len(dataset.vocab)} items; "
        f"batch {args.batch_size}, D={args.embedding_dim}, device {args.device}, "
        f"{_count(torch.get_num_threads(), 'torch thread')}, {machine}, "
        f"{time.strftime('%Y-%m-%d')}, load average {os.getloadavg()[0]:.1f}"
    )
    results = {}
    for name, config in configs.items():
        results[name] = measure(config, dataset, args)
        print(f"{name}: {results[name]['seconds']:.1f} s", file=sys.stderr)
    print(format_results(results, args.models[0]))
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    sys.exit(main())
