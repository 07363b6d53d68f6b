"""ops/Dockerfile and ops/requirements-serve.txt, checked without a Docker engine: the serving
requirements carry pyproject.toml's bounds and no training package, the image installs that file
and the project without its dependencies, and its HEALTHCHECK command fails on a 503.

tests/integration/test_serve_install.py runs the build stage's commands in a fresh virtual
environment and serves a bundle from it.
"""

from __future__ import annotations

import http.server
import json
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from 3.11")

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO_ROOT / "ops" / "Dockerfile"
REQUIREMENTS = REPO_ROOT / "ops" / "requirements-serve.txt"
DOCKERIGNORE = REPO_ROOT / ".dockerignore"

# The variable that ops/Dockerfile sets before pip reads the requirements, and its two values.
ONNXRUNTIME_VARIABLE = "${ONNXRUNTIME_PACKAGE}"
ONNXRUNTIME_PACKAGES = ("onnxruntime", "onnxruntime-gpu")
TRAINING_PACKAGES = {"torch", "onnxscript", "matplotlib"}
INSTALL_REQUIREMENTS = "pip install --no-cache-dir -r ops/requirements-serve.txt"
INSTALL_PROJECT = "pip install --no-cache-dir --no-deps ."


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """Split a Dockerfile into (INSTRUCTION, arguments) pairs.

    Lines that end in a backslash continue on the next line, and comment lines are dropped, also
    inside a continued instruction, as Docker does.
    """
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        whole = (pending + line).strip()
        pending = ""
        if whole:
            keyword, _, arguments = whole.partition(" ")
            instructions.append((keyword.upper(), arguments.strip()))
    return instructions


def stage_instructions(text: str, stage: str) -> list[tuple[str, str]]:
    """Return the instructions of the stage named `stage` (`FROM ... AS stage`), FROM excluded."""
    found: list[tuple[str, str]] | None = None
    for keyword, arguments in dockerfile_instructions(text):
        if keyword == "FROM":
            if found is not None:
                return found
            if arguments.lower().endswith(f" as {stage}"):
                found = []
        elif found is not None:
            found.append((keyword, arguments))
    assert found is not None, f"no stage {stage!r} in {DOCKERFILE}"
    return found


def requirement_lines() -> list[str]:
    """Return the requirement lines of ops/requirements-serve.txt, without comments."""
    lines = []
    for line in REQUIREMENTS.read_text(encoding="utf-8").splitlines():
        content = line.split(" #", 1)[0].strip()
        if content and not content.startswith("#"):
            lines.append(content)
    return lines


def serving_requirements(onnxruntime_package: str) -> list[Requirement]:
    """Parse the requirements as pip does with ONNXRUNTIME_PACKAGE set to `onnxruntime_package`."""
    lines = requirement_lines()
    return [Requirement(line.replace(ONNXRUNTIME_VARIABLE, onnxruntime_package)) for line in lines]


def pyproject_dependencies() -> dict[str, Requirement]:
    """Return pyproject.toml's runtime dependencies by canonical name."""
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    requirements = [Requirement(text) for text in project["dependencies"]]
    return {canonicalize_name(requirement.name): requirement for requirement in requirements}


def test_requirements_choose_onnxruntime_package() -> None:
    onnxruntime_lines = [line for line in requirement_lines() if ONNXRUNTIME_VARIABLE in line]

    assert len(onnxruntime_lines) == 1
    for package in ONNXRUNTIME_PACKAGES:
        names = {canonicalize_name(req.name) for req in serving_requirements(package)}
        assert package in names


@pytest.mark.parametrize("onnxruntime_package", ONNXRUNTIME_PACKAGES)
def test_requirements_match_pyproject_bounds(onnxruntime_package: str) -> None:
    dependencies = pyproject_dependencies()

    for requirement in serving_requirements(onnxruntime_package):
        name = canonicalize_name(requirement.name)
        assert name in dependencies, f"{name} is not a dependency in pyproject.toml"
        expected = dependencies[name]
        assert requirement.specifier == expected.specifier, f"{name}: {expected.specifier}"
        assert not requirement.extras, f"{name} has extras {requirement.extras}"
        assert requirement.marker is None, f"{name} has the marker {requirement.marker}"


@pytest.mark.parametrize("onnxruntime_package", ONNXRUNTIME_PACKAGES)
def test_requirements_leave_out_training_packages(onnxruntime_package: str) -> None:
    names = {canonicalize_name(req.name) for req in serving_requirements(onnxruntime_package)}

    assert not names & TRAINING_PACKAGES
    assert len(names) == len(serving_requirements(onnxruntime_package)), "a name appears twice"


def test_dockerfile_installs_requirements_then_project() -> None:
    build = stage_instructions(DOCKERFILE.read_text(encoding="utf-8"), "build")
    runs = [arguments for keyword, arguments in build if keyword == "RUN"]
    copies = [arguments for keyword, arguments in build if keyword == "COPY"]

    requirements_step = next(i for i, command in enumerate(runs) if INSTALL_REQUIREMENTS in command)
    project_step = next(i for i, command in enumerate(runs) if INSTALL_PROJECT in command)
    assert requirements_step < project_step
    assert "ops/requirements-serve.txt ops/" in copies
    assert "ONNXRUNTIME_PACKAGE=onnxruntime-gpu" in runs[requirements_step]
    assert "ONNXRUNTIME_PACKAGE=onnxruntime;" in runs[requirements_step]


def test_dockerfile_never_installs_torch() -> None:
    instructions = dockerfile_instructions(DOCKERFILE.read_text(encoding="utf-8"))
    runs = [arguments for keyword, arguments in instructions if keyword == "RUN"]

    pip_installs = [command for command in runs if "pip install" in command]
    assert len(pip_installs) == 2, pip_installs
    for command in runs:
        for package in TRAINING_PACKAGES:
            assert not re.search(rf"\b{package}\b", command), f"{package} in RUN {command}"
    # Every other pip install would resolve pyproject.toml's dependencies, torch among them.
    project_installs = [command for command in pip_installs if re.search(r"\s\.(\s|$)", command)]
    assert project_installs == [INSTALL_PROJECT]


def test_dockerfile_serving_stage_settings() -> None:
    serve = dict(stage_instructions(DOCKERFILE.read_text(encoding="utf-8"), "serve"))

    assert serve["USER"] == "10001:10001"
    assert json.loads(serve["ENTRYPOINT"]) == ["hiertcn-stream"]
    assert json.loads(serve["CMD"]) == ["run"]
    assert json.loads(serve["VOLUME"]) == ["/state"]
    assert "HIERTCN_STATE_DIR=/state" in serve["ENV"]
    assert "HIERTCN_METRICS_PORT=9100" in serve["ENV"]
    assert serve["EXPOSE"] == "9100"
    assert "/healthz" in serve["HEALTHCHECK"]


def test_dockerignore_leaves_out_local_files() -> None:
    patterns = {
        line.strip()
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    }

    for pattern in (".git", ".venv", ".local", "runs", "**/__pycache__", ".pytest_cache"):
        assert pattern in patterns
    for needed in ("pyproject.toml", "README.md", "LICENSE", "ops", "stream", "hiertcn"):
        assert needed not in patterns


def healthcheck_command() -> list[str]:
    """Return the HEALTHCHECK's CMD of the serving stage as an argument list."""
    serve = dict(stage_instructions(DOCKERFILE.read_text(encoding="utf-8"), "serve"))
    found = re.search(r"\bCMD\s+(\[.*\])\s*$", serve["HEALTHCHECK"])
    assert found, serve["HEALTHCHECK"]
    return json.loads(found.group(1))


class HealthServer(http.server.HTTPServer):
    """An HTTP server whose /healthz returns `health_status`, and every other path 404."""

    health_status = 200


class HealthHandler(http.server.BaseHTTPRequestHandler):
    server: HealthServer

    def do_GET(self) -> None:
        self.send_response(self.server.health_status if self.path == "/healthz" else 404)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        """Keep the test output free of access log lines."""


@pytest.fixture
def health_server() -> Iterator[HealthServer]:
    """A HealthServer on 127.0.0.1 and a free port, served from a thread."""
    server = HealthServer(("127.0.0.1", 0), HealthHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(("status", "healthy"), [(200, True), (503, False)])
def test_healthcheck_fails_on_503(health_server: HealthServer, status: int, healthy: bool) -> None:
    command = healthcheck_command()
    assert command[0] == "python"
    health_server.health_status = status
    port = str(health_server.server_address[1])

    result = subprocess.run(
        [sys.executable, *command[1:]],
        env={"HIERTCN_METRICS_PORT": port},
        capture_output=True,
        text=True,
        timeout=30,
    )

    assert (result.returncode == 0) == healthy, result.stderr
