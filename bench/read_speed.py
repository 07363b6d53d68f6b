"""Read speed and peak memory per row of `read_log`, next to a bare pass over the same file.

    python bench/read_speed.py                    # 5 copies of the Taobao head log, 421k rows
    python bench/read_speed.py --copies 60        # 5.06M rows, 200 MB
    python bench/read_speed.py --data FILE --format csv --repeat 3

Without --data the script writes a synthetic Taobao log into a temporary folder: --copies copies
of the Taobao head log in HIERTCN_DATA_DIR, 84,287 rows each. Copy k adds k times a power of ten
above the largest user id to each user id, so that every copy adds new users. Each measure runs
in a fresh Python process, which imports the readers and then records its peak resident memory
(`ru_maxrss`, Linux) before and after the work:

- "floor": a bare pass that only counts the rows, the least a Python read of the file costs:
  `csv.reader`, or `json.loads` of each line for the JSON Lines formats (jsonl, otto), whose
  rows are then lines and not events;
- "read_log": `hiertcn.data.readers.read_log` with --format and the format's default columns,
  which returns the `RawLog`.

The table gives rows per second, the peak memory above the process's start per row, and the
time as a multiple of the floor's. With --repeat N each measure runs N times and the fastest run
counts, because other programs slow a shared machine down.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# `python bench/read_speed.py` puts bench/ on sys.path, not the repository root, whose `bench`
# package contains the argument types that the bench scripts share.
REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from bench.arguments import DEFAULT_DATA, default_data, positive_int  # noqa: E402
from hiertcn.data.readers import FORMATS  # noqa: E402

MEASURES = ("floor", "read_log")
JSON_FORMATS = ("jsonl", "otto")

# Run by a child interpreter: argv is the measure, the log path and the format. It prints one
# JSON line. Both measures import the readers first, so that the baseline memory is the same.
_CHILD = """
import csv, json, resource, sys, time
sys.path.insert(0, {root!r})
from hiertcn.data.readers import ReaderConfig, read_log
measure, path, log_format = sys.argv[1:4]
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
started = time.perf_counter()
if measure == "read_log":
    rows = len(read_log(path, ReaderConfig(format=log_format)))
elif log_format in {json_formats!r}:
    rows = 0
    with open(path, encoding="utf-8-sig") as file:
        for line in file:
            if line.strip():
                json.loads(line)
                rows += 1
else:
    with open(path, encoding="utf-8-sig", newline="") as file:
        rows = sum(1 for _ in csv.reader(file))
seconds = time.perf_counter() - started
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({{"rows": rows, "seconds": seconds, "peak_kib": after - before}}))
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data",
        type=Path,
        help="log file to read (default: a synthetic log of --copies copies of the Taobao head "
        "log in HIERTCN_DATA_DIR, or in ../shared/data beside the clone when it is unset)",
    )
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default="taobao",
        help="log format that read_log is given (default: taobao)",
    )
    parser.add_argument(
        "--copies",
        type=positive_int,
        default=5,
        help="copies of the Taobao head log in the synthetic log; ignored with --data (default: 5)",
    )
    parser.add_argument(
        "--repeat",
        type=positive_int,
        default=1,
        help="runs of each measure, of which the fastest counts (default: 1)",
    )
    args = parser.parse_args(argv)
    if args.data is not None and not args.data.is_file():
        parser.error(f"--data {args.data} is not a file: pass a log file")
    if args.data is None:
        head, source = default_data()
        if not head.is_file():
            parser.error(
                f"the Taobao head log {head} is not a file ({source}): set HIERTCN_DATA_DIR to "
                f"the folder that contains {DEFAULT_DATA}, or pass --data LOG"
            )
        args.head = head
    return args


def write_copies(head: Path, copies: int, out: Path) -> None:
    """Write `copies` copies of the Taobao log `head` to `out`, each copy with new user ids.

    Copy k adds k times a power of ten above the largest user id to every user id, and keeps
    the items, categories, behaviors and timestamps.
    """
    rows = [line.rstrip("\n").split(",", 1) for line in head.read_text().splitlines() if line]
    shift = 10 ** len(str(max(int(user) for user, _ in rows)))
    with out.open("w") as file:
        for copy in range(copies):
            file.writelines(f"{int(user) + copy * shift},{rest}\n" for user, rest in rows)


def _child_code() -> str:
    return _CHILD.format(root=str(REPO_ROOT), json_formats=JSON_FORMATS)


class MeasureError(Exception):
    """A measure's child process failed; the message ends with its last line of output."""


def run_measure(measure: str, path: Path, log_format: str) -> dict[str, float]:
    """Run one measure in a fresh interpreter and return its rows, seconds and peak KiB."""
    result = subprocess.run(
        [sys.executable, "-c", _child_code(), measure, str(path), log_format],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines() or ["no output"]
        raise MeasureError(f"{measure} failed: {lines[-1]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def fastest(measure: str, path: Path, log_format: str, repeat: int) -> dict[str, float]:
    """Return the fastest of `repeat` runs of `measure`."""
    runs = [run_measure(measure, path, log_format) for _ in range(repeat)]
    return min(runs, key=lambda run: run["seconds"])


def format_table(results: dict[str, dict[str, float]], log_format: str) -> str:
    """Format the measures as a Markdown table, with each time as a multiple of the floor's."""
    floor = results["floor"]["seconds"]
    lines = [
        "| measure | rows | seconds | rows/s | peak MiB above start | bytes/row | time x floor |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    floor_name = "floor: json.loads" if log_format in JSON_FORMATS else "floor: csv.reader"
    for measure, result in results.items():
        rows, seconds, peak = result["rows"], result["seconds"], result["peak_kib"] * 1024
        name = floor_name if measure == "floor" else measure
        lines.append(
            f"| {name} | {rows:,} | {seconds:.2f} | {rows / seconds:,.0f} "
            f"| {peak / 2**20:.1f} | {peak / max(rows, 1):.0f} | {seconds / floor:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="read_speed_") as folder:
        path = args.data
        if path is None:
            path = Path(folder) / "taobao_copies.csv"
            write_copies(args.head, args.copies, path)
        print(
            f"data: {path.name}, {path.stat().st_size / 2**20:.0f} MiB, format {args.format}; "
            f"Python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} CPUs, "
            f"{time.strftime('%Y-%m-%d')}, load average {os.getloadavg()[0]:.1f}, fastest of "
            f"{args.repeat} {'run' if args.repeat == 1 else 'runs'}"
        )
        try:
            results = {name: fastest(name, path, args.format, args.repeat) for name in MEASURES}
        except MeasureError as error:
            print(f"read_speed.py: error: {error}", file=sys.stderr)
            return 2
    print(format_table(results, args.format))
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
