"""ops/docker-compose.yml, checked without a Docker engine: the demo producer reads the event log
by its own name, and the header and ops/README.md name the variables it needs.

The compose variables are substituted as Compose does for `${NAME:-default}`, and the producer's
settings are read from the text, because the project does not depend on a YAML parser.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from stream.records import read_records

OPS_DIR = Path(__file__).resolve().parents[2] / "ops"
COMPOSE = OPS_DIR / "docker-compose.yml"
VARIABLE = re.compile(r"\$\{(\w+)(?::([-?])([^}]*))?\}")


def interpolate(text: str, env: dict[str, str]) -> str:
    """Substitute `${NAME}`, `${NAME:-default}` and `${NAME:?message}` as Compose does."""

    def value(match: re.Match[str]) -> str:
        name, operator, argument = match.groups()
        if env.get(name):
            return env[name]
        if operator == "?":
            raise AssertionError(f"compose needs {name}: {argument}")
        return argument if operator == "-" else ""

    return VARIABLE.sub(value, text)


def producer_block(text: str) -> str:
    """Return the lines of the `producer` service."""
    found = re.search(r"^  producer:\n(.*?)(?=^  \w+:\n)", text, re.M | re.S)
    assert found, "no producer service in the compose file"
    return found.group(1)


def producer_paths(env: dict[str, str]) -> tuple[str, str, str, str]:
    """Return the bind source, bind target, `test -s` path and --events path of the producer."""
    block = " ".join(producer_block(interpolate(COMPOSE.read_text(encoding="utf-8"), env)).split())
    source = re.search(r"source: (\S+)", block).group(1)
    target = re.search(r"target: (\S+)", block).group(1)
    checked = re.search(r'test -s "([^"]+)"', block).group(1)
    events = re.search(r'--events "([^"]+)"', block).group(1)
    return source, target, checked, events


@pytest.fixture
def ratings_csv(tmp_path, shared_data) -> Path:
    lines = (shared_data / "movielens-latest-small" / "ratings.csv").read_text().splitlines()
    path = tmp_path / "ratings.csv"
    path.write_text("\n".join(lines[:200]) + "\n", encoding="utf-8")
    return path


def test_demo_producer_reads_file_by_its_name(ratings_csv):
    env = {"HIERTCN_EVENTS": str(ratings_csv), "HIERTCN_BUNDLE_DIR": "/bundle"}

    source, target, checked, events = producer_paths(env)

    assert source == target == checked == events == str(ratings_csv)
    assert len(list(read_records(events, "auto"))) == 199
    assert len(list(read_records(events, "movielens"))) == 199


def test_demo_producer_without_events_stops(tmp_path):
    env = {"HIERTCN_BUNDLE_DIR": "/bundle"}
    source, target, checked, events = producer_paths(env)
    block = " ".join(producer_block(interpolate(COMPOSE.read_text(encoding="utf-8"), env)).split())
    guard = re.search(r"(test -s .*? exit 2; \};)", block).group(1)
    sh = shutil.which("sh")
    if sh is None:
        pytest.skip("no sh to run the producer's guard")

    result = subprocess.run(
        [sh, "-c", guard.replace(checked, str(tmp_path / "absent"))], capture_output=True, text=True
    )

    assert source == "/dev/null"
    assert target == checked == events == "/data/events"
    assert result.returncode == 2
    assert "set HIERTCN_EVENTS to the absolute path of an event log" in result.stderr


def test_header_demo_example_sets_bundle_dir():
    header = COMPOSE.read_text(encoding="utf-8").split("services:")[0]
    demo = header[header.index("HIERTCN_EVENTS=") :].split("--profile demo up")[0]

    assert "HIERTCN_BUNDLE_DIR=" in demo


def test_readme_documents_producer_variables():
    readme = (OPS_DIR / "README.md").read_text(encoding="utf-8")

    for name in ("HIERTCN_EVENTS", "HIERTCN_EVENTS_FORMAT", "HIERTCN_PRODUCE_RATE"):
        assert f"- `{name}`:" in readme
    assert "\n Its variables" not in readme
    assert 'file "ops/prometheus/targets/*.yml" for file_sd' in readme
