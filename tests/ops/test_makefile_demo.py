"""`make demo` passes DATA_ARGS to the demo unchanged: one flag, quotes and shell syntax.

The real `make demo` calls run with `-o install -o system-deps`, so that make neither installs
nor checks system programs, and either with a stand-in python that records its arguments or
with flags that make the demo exit 2 before any work. The recipe runs `kafka.sh fetch` first,
which is a no-op when the Kafka jars are present and downloads them otherwise.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]

needs_make = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
needs_jars = pytest.mark.skipif(
    not (REPO_ROOT / "ops" / "kafka" / "lib" / ".complete").exists(),
    reason="the Kafka jars are not fetched, and `make demo` would download them",
)

# Values of DATA_ARGS that a recipe quoting them for the shell (--data-args '$(DATA_ARGS)')
# breaks: a single flag that argparse takes for an option, a quote, and a quote that ends the
# shell word and runs a command.
DATA_ARGS_VALUES = [
    "--no-header",
    "--time-unit=ms",
    "--user-col 'customer id' --time-unit ms",
    "x' ; echo INJECTED ; echo '",
]


def make(*arguments: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["make", "--no-print-directory", "-C", str(REPO_ROOT), *arguments],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=120,
    )


@pytest.fixture
def recording_venv(tmp_path: Path) -> tuple[Path, Path]:
    """A VENV whose bin/python writes its arguments, one per line, to a file, and exits 0."""
    venv, argv_file = tmp_path / "venv", tmp_path / "argv.txt"
    (venv / "bin").mkdir(parents=True)
    python = venv / "bin" / "python"
    python.write_text(f"#!/bin/sh\nprintf '%s\\n' \"$@\" > '{argv_file}'\n")
    python.chmod(0o755)
    return venv, argv_file


@needs_make
def test_demo_recipe_reads_data_args_from_environment() -> None:
    completed = make("-n", "demo", "DATA=x.csv", "FORMAT=csv", f"DATA_ARGS={DATA_ARGS_VALUES[-1]}")

    assert completed.returncode == 0, completed.stderr
    (line,) = [line for line in completed.stdout.splitlines() if "-m ops.demo" in line]
    assert '--data-args="$DATA_ARGS"' in line
    assert "INJECTED" not in line


@needs_make
@needs_jars
@pytest.mark.parametrize("data_args", DATA_ARGS_VALUES)
def test_demo_gets_data_args_unchanged(data_args: str, recording_venv: tuple[Path, Path]) -> None:
    venv, argv_file = recording_venv

    completed = make(
        "-o", "install", "-o", "system-deps", "demo", f"VENV={venv}",
        "DATA=x.csv", "FORMAT=csv", f"DATA_ARGS={data_args}",
    )  # fmt: skip

    assert completed.returncode == 0, completed.stderr
    assert "INJECTED" not in completed.stdout
    assert argv_file.read_text().splitlines() == [
        "-m",
        "ops.demo",
        "--data",
        "x.csv",
        "--format",
        "csv",
        f"--data-args={data_args}",
    ]


@needs_make
@needs_jars
def test_demo_without_data_args_gets_empty_value(recording_venv: tuple[Path, Path]) -> None:
    venv, argv_file = recording_venv

    completed = make("-o", "install", "-o", "system-deps", "demo", f"VENV={venv}")

    assert completed.returncode == 0, completed.stderr
    assert argv_file.read_text().splitlines() == ["-m", "ops.demo", "--data-args="]


@needs_make
@needs_jars
@pytest.mark.parametrize(
    ("data_args", "demo_args", "message"),
    [
        ("--no-header", "--epochs 0", "invalid --epochs 0: use an integer >= 1"),
        (
            "--format jsonl",
            "",
            "invalid --data-args: --format jsonl conflicts with the demo's own --format: "
            "pass --format jsonl to the demo instead (FORMAT=jsonl with make)",
        ),
    ],
)
def test_real_demo_checks_data_args_before_work(
    data_args: str, demo_args: str, message: str, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    venv = Path(sys.prefix)

    completed = make(
        "-o", "install", "-o", "system-deps", "demo", f"VENV={venv}",
        f"DATA={tmp_path / 'clicks.csv'}", "FORMAT=csv", f"DATA_ARGS={data_args}",
        f"DEMO_ARGS=--out {out} {demo_args}",
    )  # fmt: skip

    assert completed.returncode != 0
    assert f"python -m ops.demo: error: {message}" in completed.stderr
    assert "expected one argument" not in completed.stderr
    assert not out.exists()
