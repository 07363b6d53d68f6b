"""`stream` must run on ONNX Runtime and numpy alone: every module imports, and replay runs,
in a Python process where `import torch` fails."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.stream.conftest import write_event_log

REPO_ROOT = Path(__file__).resolve().parents[2]

BLOCK_TORCH = """
import sys
# A None entry makes every `import torch` raise ImportError.
sys.modules["torch"] = None
"""


def run_without_torch(code: str) -> subprocess.CompletedProcess[str]:
    script = BLOCK_TORCH + textwrap.dedent(code)
    return subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_every_stream_module_imports_without_torch() -> None:
    result = run_without_torch(
        """
        import importlib, pkgutil
        import stream
        names = [info.name for info in pkgutil.walk_packages(stream.__path__, "stream.")]
        for name in names:
            importlib.import_module(name)
        import export.bundle
        import statestore
        leaked = sorted(m for m in sys.modules if m.startswith("hiertcn.models"))
        print(len(names), leaked)
        """
    )

    assert result.returncode == 0, result.stderr
    count, leaked = result.stdout.split(" ", 1)
    assert int(count) >= 8
    assert leaked.strip() == "[]"


def test_replay_runs_without_torch(onnx_bundle_dir: Path, tmp_path: Path) -> None:
    events_path = tmp_path / "events.jsonl"
    events = write_event_log(events_path, 40, seed=3)
    output = tmp_path / "recs.jsonl"

    result = run_without_torch(
        f"""
        from stream.cli import main
        code = main(["replay", "--events", {str(events_path)!r}, "--bundle",
                     {str(onnx_bundle_dir)!r}, "--output", {str(output)!r}])
        assert sys.modules["torch"] is None
        sys.exit(code)
        """
    )

    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in output.read_text().splitlines()]
    assert len(lines) == len(events)


def test_dataset_reader_works_without_torch(shared_data: Path) -> None:
    path = shared_data / "movielens-100k" / "u.data"

    result = run_without_torch(
        f"""
        from stream.records import read_records
        first = next(iter(read_records({str(path)!r}, "movielens")))
        print(sorted(first.fields))
        """
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['item', 'ts', 'user']"
