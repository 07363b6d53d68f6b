"""Events per second of the bundle's graphs: ONNX Runtime on CPU against torch eager.

    .venv/bin/python bench/inference.py [--batch-sizes 1,32,256,1024] [--threads 2]

Builds a HierTCN with the sizes of the default `ModelConfig` (D = H = 128, G = 4, TCN of 4 blocks of
128 filters of size 5, dilations 1, 2, 4, 8; random weights, which do not change the speed), exports
it to a temporary bundle and times, at each batch size:

- the session step: prefixes whose lengths are drawn uniformly from 1..20 (the width L of a
  batch is its longest prefix), with random states;
- the session close: random states and session means.

Both sides run with the same thread count, on the same inputs, alternating in rounds so that
load from other processes affects both alike. One event is one batch row. Scoring against the
item table is not timed: it is numpy outside the graphs and the same for both sides.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from functools import partial
from pathlib import Path

import numpy as np
import torch

from export import providers
from export.bundle import load_bundle
from export.onnx_export import ExportConfig, write_bundle
from hiertcn.checkpoint import Checkpoint
from hiertcn.command_line import seed
from hiertcn.models import ModelConfig, build_model

# `python bench/inference.py` puts bench/ on sys.path, not the repository root, whose `bench`
# package contains the argument types that the bench scripts share.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.arguments import positive_int, positive_seconds

NUM_ITEMS = 1000  # the item table is outside the timed graphs, so its size does not matter
MAX_PREFIX = 20
# Above this the random inputs of one batch take gigabytes; the worker's batches stay far below.
MAX_BATCH_SIZE = 65536


def batch_sizes(values: list[str]) -> list[int]:
    """Parse --batch-sizes given as `1 32 256`, `1,32,256` or a mix; sizes run 1..MAX_BATCH_SIZE."""
    parts = [part for value in values for part in value.replace(",", " ").split()]
    sizes = []
    for part in parts:
        try:
            sizes.append(positive_int(part))
        except argparse.ArgumentTypeError:
            raise argparse.ArgumentTypeError(
                f"batch size {part!r} is invalid: use integers >= 1, separated by commas or spaces"
            ) from None
        if sizes[-1] > MAX_BATCH_SIZE:
            raise argparse.ArgumentTypeError(
                f"batch size {part!r} is invalid: use at most {MAX_BATCH_SIZE} events per call"
            )
    if not sizes:
        raise argparse.ArgumentTypeError("no batch size given: e.g. --batch-sizes 1,32,256")
    return sizes


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--batch-sizes",
        nargs="+",
        default=["1,32,256,1024"],
        metavar="SIZES",
        help="batch sizes (events per call) to time, separated by commas or spaces, each "
        f"1 to {MAX_BATCH_SIZE} (default: 1,32,256,1024)",
    )
    parser.add_argument(
        "--threads",
        type=positive_int,
        default=os.cpu_count(),
        help="threads of both sides (default: all cores)",
    )
    parser.add_argument(
        "--seconds",
        type=positive_seconds,
        default=1.0,
        help="time per side and round, in seconds (default: 1)",
    )
    parser.add_argument(
        "--rounds",
        type=positive_int,
        default=3,
        help="alternating rounds per case; the table gives the median (default: 3)",
    )
    parser.add_argument(
        "--seed",
        type=seed,
        default=0,
        help="seed of the prefix lengths, inputs and states (default: 0)",
    )
    parser.add_argument(
        "--full-step",
        action="store_true",
        help="export the model's own session step instead of the pruned one, for comparison",
    )
    args = parser.parse_args(argv)
    try:
        args.batch_sizes = batch_sizes(args.batch_sizes)
    except argparse.ArgumentTypeError as error:
        parser.error(f"argument --batch-sizes: {error}")
    return args


def _count(number: int, noun: str) -> str:
    """Return `1 thread` or `2 threads`."""
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def build_bundle(directory: Path, pruned_step: bool = True) -> torch.nn.Module:
    """Export a paper-sized HierTCN with random weights into `directory`; return the model."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(), NUM_ITEMS).eval()
    checkpoint = Checkpoint(
        model_config=model.config.to_dict(),
        model_state=model.state_dict(),
        train_config={},
        item_ids=[str(row) for row in range(NUM_ITEMS)],
        data_summary={"session_gap": 1800},
        metrics={},
        epoch=0,
    )
    write_bundle(model, checkpoint, directory, ExportConfig(pruned_step=pruned_step))
    return model


def events_per_second(run: Callable[[], object], rows: int, seconds: float) -> float:
    """Call `run` for about `seconds` after one warm-up call; return rows per second."""
    run()
    calls, start = 0, time.perf_counter()
    while True:
        run()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return calls * rows / elapsed


def step_inputs(rng: np.random.Generator, batch: int, model: torch.nn.Module) -> tuple:
    """Return a left-padded prefix [B, L, D], lengths [B] from 1..20 and states [B, G, H]."""
    config = model.config
    lengths = rng.integers(1, MAX_PREFIX + 1, size=batch).astype(np.int64)
    width = int(lengths.max())
    prefix = rng.standard_normal((batch, width, config.embedding_dim)).astype(np.float32)
    for row, length in enumerate(lengths):
        prefix[row, : width - length] = 0.0
    state = rng.uniform(-1, 1, (batch, config.gru_layers, config.hidden_size)).astype(np.float32)
    return prefix, lengths, state


def measure(
    onnx_run: Callable[[], object], torch_run: Callable[[], object], rows: int, args
) -> tuple[float, float]:
    """Return the median events per second of (ONNX Runtime, torch) over alternating rounds."""
    onnx_rates, torch_rates = [], []
    for _ in range(args.rounds):
        onnx_rates.append(events_per_second(onnx_run, rows, args.seconds))
        torch_rates.append(events_per_second(torch_run, rows, args.seconds))
    return statistics.median(onnx_rates), statistics.median(torch_rates)


def measure_batch(bundle, model: torch.nn.Module, batch: int, rng, args) -> list[str]:
    """Time both graphs at one batch size; return one Markdown table row per graph."""
    prefix, lengths, state = step_inputs(rng, batch, model)
    means = rng.standard_normal((batch, model.config.embedding_dim)).astype(np.float32)
    tensors = [torch.from_numpy(array) for array in (prefix, lengths, state, means)]

    def torch_step() -> object:
        with torch.inference_mode():
            return model.session_user_embedding(*tensors[:3])

    def torch_close() -> object:
        with torch.inference_mode():
            return model.close_session(tensors[2], tensors[3])

    cases = {
        "session_step": (partial(bundle.session_step, prefix, lengths, state), torch_step),
        "session_close": (partial(bundle.session_close, state, means), torch_close),
    }
    rows = []
    for name, (onnx_run, torch_run) in cases.items():
        onnx_rate, torch_rate = measure(onnx_run, torch_run, batch, args)
        rows.append(
            f"| {name} | {batch} | {onnx_rate:,.0f} | {torch_rate:,.0f} | "
            f"{onnx_rate / torch_rate:.2f} |"
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    with tempfile.TemporaryDirectory() as temporary:
        model = build_bundle(Path(temporary) / "bundle", pruned_step=not args.full_step)
        bundle = load_bundle(Path(temporary) / "bundle", intra_op_threads=args.threads)
        load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
        print(
            f"# {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores, "
            f"load average {load}, {_count(args.threads, 'thread')} per side, "
            f"torch {torch.__version__}, "
            f"onnxruntime {providers.ort.__version__}"
        )
        field = model.receptive_field
        step = "full" if args.full_step else "pruned"
        print(f"# prefix lengths uniform in 1..{MAX_PREFIX}, receptive field {field}, {step} step")
        print("| graph | batch | ONNX Runtime events/s | torch eager events/s | ratio |")
        print("|---|---:|---:|---:|---:|")
        for batch in args.batch_sizes:
            for row in measure_batch(bundle, model, batch, rng, args):
                print(row, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
