"""`python -m ops.prometheus.run` stops its Prometheus child and deletes its folder on SIGTERM.

Starts the real /usr/bin/prometheus on 127.0.0.1; skipped where it is not installed.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ops.prometheus.run import DEFAULT_BINARY, free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
STARTED = re.compile(r"Prometheus started at \S+ \(pid (\d+), folder (\S+)\)")

pytestmark = pytest.mark.skipif(
    not DEFAULT_BINARY.is_file(), reason=f"{DEFAULT_BINARY} not installed"
)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _wait_for_start(process: subprocess.Popen, log: Path) -> tuple[int, Path]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = STARTED.search(log.read_text(encoding="utf-8"))
        if found and "SIGTERM stops it" in log.read_text(encoding="utf-8"):
            return int(found.group(1)), Path(found.group(2))
        assert process.poll() is None, log.read_text(encoding="utf-8")
        time.sleep(0.2)
    raise AssertionError(f"no start line within 60 s:\n{log.read_text(encoding='utf-8')}")


@pytest.mark.timeout(120)
def test_sigterm_stops_child_and_deletes_folder(tmp_path):
    log = tmp_path / "run.log"
    command = [sys.executable, "-m", "ops.prometheus.run", "--target", f"127.0.0.1:{free_port()}"]
    with log.open("w", encoding="utf-8") as output:
        process = subprocess.Popen(
            [*command, "--port", str(free_port())],
            cwd=REPO_ROOT,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    child = None
    try:
        child, folder = _wait_for_start(process, log)
        assert folder.is_dir()

        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=30)

        assert code == 0, log.read_text(encoding="utf-8")
        assert not _alive(child)
        assert not folder.exists()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if child is not None and _alive(child):
            os.kill(child, signal.SIGKILL)
