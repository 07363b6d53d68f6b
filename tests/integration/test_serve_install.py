"""The serving install of ops/Dockerfile, without Docker: the build stage's commands in a fresh
virtual environment, then `hiertcn-stream` from that environment on the real broker.

The build stage's RUN instructions after the venv's creation run here as `sh -c` with
DEVICE=cpu, in a copy of the files that the stage's COPY instructions name, so this test
follows the Dockerfile as it changes. pip downloads the packages from the package index, which
must be reachable (about 15 s on a shared 2-core VM). The image's base, user, volume and
HEALTHCHECK options are not exercised, but the HEALTHCHECK's command runs against the pool.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from ops.prometheus.run import free_port
from tests.integration.fixtures_stream import (
    REPO_ROOT,
    Topics,
    WorkerRun,
    assert_same_recommendation,
    make_events,
    make_topics,
    read_topic,
    replay_outputs,
    stream_bundle,  # noqa: F401 - pytest fixture
    worker_runs,  # noqa: F401 - pytest fixture
)
from tests.ops.test_image import DOCKERFILE, healthcheck_command, stage_instructions

EVENTS = 200
TRAINING_MODULES = ("torch", "onnxscript", "matplotlib")


def build_commands() -> list[str]:
    """Return the shell commands of the build stage's RUN instructions after `python3 -m venv`."""
    build = stage_instructions(DOCKERFILE.read_text(encoding="utf-8"), "build")
    commands = [arguments for keyword, arguments in build if keyword == "RUN"]
    assert commands[0].startswith("python3 -m venv /opt/venv"), commands[0]
    return commands[1:]


def copy_build_context(target: Path) -> None:
    """Copy what the build stage's COPY instructions copy to the same paths under `target`.

    Each COPY of the stage puts its sources at their own relative paths under the working
    directory, so the copy keeps those paths. Bytecode caches are left out, as .dockerignore does.
    """
    build = stage_instructions(DOCKERFILE.read_text(encoding="utf-8"), "build")
    copies = [arguments.split() for keyword, arguments in build if keyword == "COPY"]
    assert copies, "no COPY in the build stage"
    for *sources, destination in copies:
        for name in sources:
            assert destination in (name, "./", f"{Path(name).parent}/"), (name, destination)
            source = REPO_ROOT / name
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            if source.is_dir():
                ignore = shutil.ignore_patterns("__pycache__")
                shutil.copytree(source, target / name, ignore=ignore)
            else:
                shutil.copy2(source, target / name)


def venv_environment(venv: Path) -> dict[str, str]:
    """Return os.environ with `venv` first on PATH and without this checkout's Python settings."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("HIERTCN_") and key not in ("PYTHONPATH", "VIRTUAL_ENV")
    }
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return env


@pytest.fixture(scope="module")
def serve_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment after the build stage's commands, as in the CPU image."""
    root = tmp_path_factory.mktemp("serve-install")
    source = root / "src"
    copy_build_context(source)
    venv = root / "venv"
    # Run from a virtual environment, venv builds on its base interpreter, so none of the
    # packages of the test's environment are visible in the new one.
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    env = venv_environment(venv) | {"DEVICE": "cpu", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    for command in build_commands():
        result = subprocess.run(
            ["sh", "-c", command],
            cwd=source,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"
    return venv


def run_in_venv(
    venv: Path, args: Sequence[str], cwd: Path, timeout_s: float = 120.0
) -> subprocess.CompletedProcess[str]:
    """Run a program of `venv` outside the checkout, so that nothing imports from it."""
    return subprocess.run(
        [str(venv / "bin" / args[0]), *args[1:]],
        cwd=cwd,
        env=venv_environment(venv),
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def wait_until_healthy(venv: Path, run: WorkerRun, port: int, timeout_s: float) -> None:
    """Run the Dockerfile's HEALTHCHECK command until it exits with 0."""
    command = healthcheck_command()
    env = venv_environment(venv) | {"HIERTCN_METRICS_PORT": str(port)}
    deadline = time.monotonic() + timeout_s
    result = None
    while time.monotonic() < deadline:
        assert run.process.poll() is None, run.log()
        result = subprocess.run(
            [str(venv / "bin" / command[0]), *command[1:]],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        if result.returncode == 0:
            return
        time.sleep(0.5)
    stderr = result.stderr if result is not None else ""
    raise AssertionError(f"HEALTHCHECK failed for {timeout_s} s: {stderr}\n{run.log()}")


def start_pool(
    venv: Path, bootstrap: str, bundle: Path, topics: Topics, port: int, folder: Path
) -> WorkerRun:
    """Start `hiertcn-stream run` of `venv` in `folder` with its server on 127.0.0.1:`port`.

    The settings go through HIERTCN_* variables, as the image sets its defaults.
    """
    env = venv_environment(venv) | {
        "HIERTCN_BROKERS": bootstrap,
        "HIERTCN_BUNDLE": str(bundle),
        "HIERTCN_GROUP_ID": topics.group,
        "HIERTCN_INPUT_TOPIC": topics.input,
        "HIERTCN_OUTPUT_TOPIC": topics.output,
        "HIERTCN_DEAD_LETTER_TOPIC": topics.dead_letter,
        "HIERTCN_STATE_DIR": "state",
        "HIERTCN_PROCESSES": "2",
        "HIERTCN_METRICS_ADDRESS": "127.0.0.1",
        "HIERTCN_METRICS_PORT": str(port),
        "HIERTCN_MAX_BATCH_DELAY_MS": "5",
        "TMPDIR": str(folder),
    }
    args = [str(venv / "bin" / "hiertcn-stream"), "run"]
    log_path = folder / "pool.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=folder, start_new_session=True
        )
    return WorkerRun(process, log_path, args)


def test_serve_venv_has_no_training_packages(serve_venv: Path, tmp_path: Path) -> None:
    code = (
        "import importlib.util, json, stream\n"
        f"found = {{m: importlib.util.find_spec(m) is not None for m in {TRAINING_MODULES!r}}}\n"
        "print(json.dumps(found | {'stream': stream.__file__}))\n"
    )

    result = run_in_venv(serve_venv, ["python", "-c", code], tmp_path)

    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    for module in TRAINING_MODULES:
        assert found[module] is False, f"{module} is installed in the serving venv"
    assert Path(found["stream"]).is_relative_to(serve_venv), found["stream"]


def test_serve_venv_runs_pool(
    serve_venv: Path,
    kafka_bootstrap: str,
    unique_topic: Callable[[str], str],
    stream_bundle: Path,  # noqa: F811
    worker_runs: list[WorkerRun],  # noqa: F811
    tmp_path: Path,
) -> None:
    events = make_events(users=20, count=EVENTS, seed=5)
    events_path = tmp_path / "events.jsonl"
    events_path.write_text("".join(json.dumps(event) + "\n" for event in events))
    topics = make_topics(kafka_bootstrap, unique_topic, partitions=2)
    port = free_port()
    run = start_pool(serve_venv, kafka_bootstrap, stream_bundle, topics, port, tmp_path)
    worker_runs.append(run)
    wait_until_healthy(serve_venv, run, port, timeout_s=45.0)

    produce = ["produce", "--events", str(events_path), "--topic", topics.input]
    produced = run_in_venv(
        serve_venv, ["hiertcn-stream", *produce, "--brokers", kafka_bootstrap], tmp_path
    )
    assert produced.returncode == 0, produced.stderr
    outputs = read_topic(kafka_bootstrap, topics.output, EVENTS, settle_s=1.0)
    run.signal(signal.SIGTERM)
    assert run.wait() == 0, run.log()

    assert len(outputs) == EVENTS, run.log()
    reference = {output["event_id"]: output for output in replay_outputs(stream_bundle, events)}
    for output in outputs:
        assert_same_recommendation(output.value, reference[output.value["event_id"]])

    stats = run_in_venv(
        serve_venv, ["hiertcn-stream", "state", "--state-dir", "state", "stats"], tmp_path
    )
    assert stats.returncode == 0, stats.stderr
    assert "bundle_version" in stats.stdout

    replay_path = tmp_path / "replay.jsonl"
    replay = ["replay", "--events", str(events_path), "--output", str(replay_path)]
    replayed = run_in_venv(
        serve_venv, ["hiertcn-stream", *replay, "--bundle", str(stream_bundle)], tmp_path
    )
    assert replayed.returncode == 0, replayed.stderr
    lines = [json.loads(line) for line in replay_path.read_text().splitlines()]
    assert len(lines) == EVENTS
    for line in lines:
        assert_same_recommendation(line, reference[line["event_id"]])
