"""Measure the state store's read and commit time per user, next to the model's session step.

Run from the repository root:

    .venv/bin/python bench/statestore.py [--bundle DIR] [--dir DIR] [--batches 50]

For each durability mode (synced and not synced commits), the script fills a fresh store with
`--population` users. It then times `read` and `commit` of batches of `--batch-size` random
users, each with a G x H GRU state, a 10-item open session and a D-dimensional last embedding. With
`--bundle` (a directory written by `hiertcn export`), it also times the bundle's session step on
a batch of the same size and reports state I/O as a share of it. Without a bundle, G, H and D
are 4, 128 and 128. The store lives under `--dir` (default: the system temporary directory),
because fsync cost depends on the disk. The "LMDB floor" rows time plain py-lmdb gets and puts
of the same records in the same store, with no codec: what LMDB alone costs for these bytes on
this machine. "with timer index" adds one timer-key delete and put per user, as the store does.

Prints a Markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# `python bench/statestore.py` puts bench/ first on sys.path, where this file would shadow the
# `statestore` package. The repository root takes its place, for `bench.arguments`.
_BENCH_DIR = Path(__file__).resolve().parent
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != _BENCH_DIR]
sys.path.insert(0, str(_BENCH_DIR.parent))

from bench.arguments import positive_int  # noqa: E402
from hiertcn.command_line import seed  # noqa: E402
from statestore import PartitionPosition, StateStore, StoreConfig, UserState  # noqa: E402

SESSION_ITEMS = 10
TOPIC = "interactions"


@dataclass(frozen=True)
class Shapes:
    """State sizes: G GRU layers, H hidden size, D item-embedding size."""

    gru_layers: int = 4
    hidden_size: int = 128
    embedding_dim: int = 128


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--bundle",
        type=Path,
        help="model bundle directory written by `hiertcn export`, whose session step is timed "
        "too (default: none, and G, H, D of 4, 128, 128)",
    )
    parser.add_argument(
        "--device",
        choices=("cpu", "cuda", "auto"),
        default="cpu",
        help="device of the bundle's session step (default: cpu)",
    )
    parser.add_argument(
        "--threads",
        type=positive_int,
        default=1,
        help="ONNX Runtime intra-op threads of the session step (default: 1)",
    )
    parser.add_argument(
        "--dir",
        type=Path,
        help="existing folder in which the benchmark stores are made, on the disk to measure "
        "(default: the system temporary folder)",
    )
    parser.add_argument(
        "--batch-size", type=positive_int, default=512, help="users per batch (default: 512)"
    )
    parser.add_argument(
        "--batches",
        type=positive_int,
        default=50,
        help="timed batches per measure; with fewer than 11 the p90 lies between the two "
        "slowest (default: 50)",
    )
    parser.add_argument(
        "--population",
        type=positive_int,
        default=50_000,
        help="users in the store, at least --batch-size (default: 50000)",
    )
    parser.add_argument("--seed", type=seed, default=0, help="random seed (default: 0)")
    args = parser.parse_args(argv)
    if args.population < args.batch_size:
        parser.error(
            f"--population {args.population} is below --batch-size {args.batch_size}: each batch "
            "draws distinct users, so raise --population or lower --batch-size"
        )
    if args.dir is not None and not args.dir.is_dir():
        parser.error(f"--dir {args.dir} is not an existing folder: create it or pass another")
    if args.bundle is not None and not args.bundle.is_dir():
        parser.error(f"--bundle {args.bundle} is not a folder: pass a folder from hiertcn export")
    return args


def make_state(rng: np.random.Generator, shapes: Shapes, last_ts: float) -> UserState:
    """Return a state with an open 10-item session and a last embedding."""
    return UserState(
        gru_state=rng.standard_normal((shapes.gru_layers, shapes.hidden_size), np.float32),
        session_items=rng.integers(0, 100_000, SESSION_ITEMS, dtype=np.int32),
        session_sum=rng.standard_normal(shapes.embedding_dim, np.float32),
        session_length=SESSION_ITEMS,
        session_start=last_ts - 600.0,
        last_ts=last_ts,
        session_count=3,
        last_embedding=rng.standard_normal(shapes.embedding_dim, np.float32),
        partition=int(rng.integers(0, 8)),
    )


def fill_store(path: Path, args: argparse.Namespace, shapes: Shapes) -> None:
    """Write the population in unsynced batches, so that setup stays fast."""
    rng = np.random.default_rng(args.seed)
    with StateStore(StoreConfig(path=path, sync=False)) as store:
        for start in range(0, args.population, 5000):
            users = range(start, min(start + 5000, args.population))
            store.commit({f"user{u}": make_state(rng, shapes, 1e9 + u) for u in users})


def median_and_p90(samples: list[float]) -> tuple[float, float]:
    """Return the median and the 90th percentile of `samples`, interpolated between the two
    nearest samples (numpy's default), so the p90 is never below the median."""
    median, p90 = np.percentile(samples, [50, 90])
    return float(median), float(p90)


def time_store(path: Path, sync: bool, args: argparse.Namespace, shapes: Shapes) -> dict:
    """Time `read` and `commit` of random batches; return seconds per batch."""
    rng = np.random.default_rng(args.seed + 1)
    reads, commits = [], []
    with StateStore(StoreConfig(path=path, sync=sync)) as store:
        for batch in range(args.batches):
            users = [f"user{u}" for u in rng.choice(args.population, args.batch_size, False)]
            started = time.perf_counter()
            states = store.read(users)
            reads.append(time.perf_counter() - started)
            for state in states.values():
                state.last_ts += 1.0
                state.session_sum += 1.0
            position = {(TOPIC, 0): PartitionPosition(batch + 1, 1e9 + batch)}
            started = time.perf_counter()
            store.commit(states, position)
            commits.append(time.perf_counter() - started)
    return {"read": median_and_p90(reads), "commit": median_and_p90(commits)}


def time_lmdb_floor(path: Path, sync: bool, args: argparse.Namespace, timers: bool = False) -> dict:
    """Time plain py-lmdb `get` and `put` of the same records, with no codec.

    This is the least that LMDB itself costs for the same bytes on this machine, the floor
    under `time_store`. With `timers`, each commit also deletes one timer key per user and puts
    a new one, as the store's timer index does. Keys and records are prepared before the clock
    starts.
    """
    import lmdb

    rng = np.random.default_rng(args.seed + 1)
    reads, commits = [], []
    env = lmdb.open(str(path), max_dbs=4, sync=sync, map_size=1 << 34)
    try:
        users_db = env.open_db(b"users")
        timers_db = env.open_db(b"timers")
        for batch in range(args.batches):
            chosen = rng.choice(args.population, args.batch_size, False)
            keys = [f"user{u}".encode() for u in chosen]
            old_timers = [b"%08d" % batch + key for key in keys] if timers else []
            new_timers = [b"%08d" % (batch + 1) + key for key in keys] if timers else []
            started = time.perf_counter()
            with env.begin() as txn:
                records = [txn.get(key, db=users_db) for key in keys]
            reads.append(time.perf_counter() - started)
            started = time.perf_counter()
            with env.begin(write=True) as txn:
                for key, record in zip(keys, records, strict=True):
                    txn.put(key, record, db=users_db)
                for old, new in zip(old_timers, new_timers, strict=True):
                    txn.delete(old, db=timers_db)
                    txn.put(new, b"", db=timers_db)
            commits.append(time.perf_counter() - started)
    finally:
        env.close()
    return {"read": median_and_p90(reads), "commit": median_and_p90(commits)}


def time_session_step(args: argparse.Namespace) -> tuple[Shapes, float, str]:
    """Load the bundle, time its session step on one batch; return shapes, seconds, providers."""
    try:
        from export.bundle import load_bundle
    except ImportError as error:
        raise SystemExit(f"--bundle needs export.bundle, which failed to import: {error}") from None
    from export.errors import BundleError

    try:
        bundle = load_bundle(args.bundle, device=args.device, intra_op_threads=args.threads)
    except BundleError as error:
        print(f"statestore.py: error: --bundle {args.bundle}: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    manifest = bundle.manifest
    shapes = Shapes(manifest.gru_layers, manifest.hidden_size, manifest.embedding_dim)
    rng = np.random.default_rng(args.seed)
    length = min(SESSION_ITEMS, manifest.max_session_items)
    prefix = rng.standard_normal((args.batch_size, length, shapes.embedding_dim), np.float32)
    lengths = np.full(args.batch_size, length, dtype=np.int64)
    state = rng.standard_normal(
        (args.batch_size, shapes.gru_layers, shapes.hidden_size), np.float32
    )

    def step() -> None:
        bundle.session_step(prefix, lengths, state)

    for _ in range(3):
        step()  # warm-up: ONNX Runtime allocates its buffers on the first calls
    seconds = [_timed(step) for _ in range(args.batches)]
    return shapes, median_and_p90(seconds)[0], ",".join(bundle.providers)


def _timed(work: Callable[[], None]) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def print_table(results: dict[str, dict], model_seconds: float | None, args) -> None:
    per_user = 1e6 / args.batch_size
    print(
        f"| commits | read µs/user, median (p90) of {args.batches} batches "
        f"| commit µs/user, median (p90) of {args.batches} batches | read + commit ms/batch |"
        " share of session step |"
    )
    print("|---|---|---|---|---|")
    for mode, timing in results.items():
        read, read_p90 = timing["read"]
        commit, commit_p90 = timing["commit"]
        total = read + commit
        share = "n/a (no --bundle)"
        if model_seconds:
            share = f"{100 * total / model_seconds:.1f}%"
        print(
            f"| {mode} | {read * per_user:.2f} ({read_p90 * per_user:.2f}) "
            f"| {commit * per_user:.2f} ({commit_p90 * per_user:.2f}) "
            f"| {total * 1e3:.2f} | {share} |"
        )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    shapes, model_seconds, providers = Shapes(), None, None
    if args.bundle is not None:
        shapes, model_seconds, providers = time_session_step(args)
    print(
        f"batch {args.batch_size} users, {args.batches} batches, population {args.population}, "
        f"G={shapes.gru_layers} H={shapes.hidden_size} D={shapes.embedding_dim}, "
        f"{SESSION_ITEMS}-item sessions; {platform.processor() or platform.machine()}, "
        f"Python {platform.python_version()}"
    )
    if model_seconds is not None:
        print(f"session step: {model_seconds * 1e3:.2f} ms/batch median on {providers}")
    results = {}
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="statestore-bench-") as parent:
        for mode, sync in (("synced", True), ("not synced", False)):
            path = Path(parent) / mode.replace(" ", "-")
            fill_store(path, args, shapes)
            results[mode] = time_store(path, sync, args, shapes)
            results[f"{mode}, LMDB floor"] = time_lmdb_floor(path, sync, args)
            floor_with_timers = time_lmdb_floor(path, sync, args, timers=True)
            results[f"{mode}, LMDB floor with timer index"] = floor_with_timers
    print_table(results, model_seconds, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
