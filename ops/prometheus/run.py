"""Run a local Prometheus server as a plain process, for tests and for watching a local worker.

    python -m ops.prometheus.run --target 127.0.0.1:9100 --port 9090

starts /usr/bin/prometheus (Debian package `prometheus`) with its own generated configuration and
a fresh data folder, listening on 127.0.0.1 only, until Ctrl-C (SIGINT) or SIGTERM. Either signal
stops the Prometheus child and deletes a temporary data folder. Tests use `PrometheusServer` as a
context manager and query it through the HTTP API.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

logger = logging.getLogger(__name__)

DEFAULT_BINARY = Path("/usr/bin/prometheus")
JOB_NAME = "hiertcn-worker"  # the job name of ops/prometheus/prometheus.yml
# The example alert rules that ops/prometheus/prometheus.yml loads.
DEFAULT_RULE_FILE = Path(__file__).resolve().parent / "rules" / "hiertcn-alerts.yml"


class PrometheusError(Exception):
    """The Prometheus server failed to start, or a query through its HTTP API failed."""


@dataclass(frozen=True)
class PrometheusConfig:
    """Settings of one local Prometheus server.

    targets: metrics endpoints HOST:PORT to scrape, as the job `hiertcn-worker`.
    port: HTTP port on 127.0.0.1, or 0 for a free port chosen at start.
    scrape_interval_s: seconds between scrapes of every target.
    work_dir: folder for the configuration, data and log; None for a temporary folder that
        `stop` deletes.
    binary: the prometheus executable.
    start_timeout_s: seconds to wait until /-/ready returns HTTP 200.
    rule_files: alerting and recording rule files to load, such as `DEFAULT_RULE_FILE`.
    """

    targets: tuple[str, ...]
    port: int = 0
    scrape_interval_s: float = 1.0
    work_dir: Path | None = None
    binary: Path = DEFAULT_BINARY
    start_timeout_s: float = 30.0
    rule_files: tuple[Path, ...] = ()


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free now (another process may take it later)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def render_config(
    targets: tuple[str, ...], scrape_interval_s: float, rule_files: tuple[Path, ...] = ()
) -> str:
    """Return a prometheus.yml that scrapes `targets` as the worker job and loads `rule_files`."""
    target_list = ", ".join(json.dumps(target) for target in targets)
    # Prometheus durations take whole units, so the interval is written in milliseconds.
    interval = f"{round(scrape_interval_s * 1000)}ms"
    rules = ", ".join(json.dumps(str(Path(path).resolve())) for path in rule_files)
    return (
        "global:\n"
        f"  scrape_interval: {interval}\n"
        f"  evaluation_interval: {interval}\n"
        f"rule_files: [{rules}]\n"
        "scrape_configs:\n"
        f"  - job_name: {JOB_NAME}\n"
        "    static_configs:\n"
        f"      - targets: [{target_list}]\n"
    )


class PrometheusServer:
    """A Prometheus process with its own configuration and data folder on 127.0.0.1."""

    def __init__(self, config: PrometheusConfig) -> None:
        self.config = config
        self.url = ""
        self._process: subprocess.Popen[bytes] | None = None
        self._work_dir: Path | None = None
        self._owns_work_dir = False

    @property
    def log_path(self) -> Path:
        """The server's log file (its standard error)."""
        if self._work_dir is None:
            raise PrometheusError("the Prometheus server is not started: call start() first")
        return self._work_dir / "prometheus.log"

    def start(self) -> str:
        """Start the server, wait until it is ready and return its base URL."""
        if not self.config.binary.is_file():
            raise PrometheusError(
                f"{self.config.binary} not found: install it with "
                "'apt-get install prometheus' (Debian) or set PrometheusConfig.binary"
            )
        self._owns_work_dir = self.config.work_dir is None
        self._work_dir = self.config.work_dir or Path(tempfile.mkdtemp(prefix="hiertcn-prom-"))
        self._work_dir.mkdir(parents=True, exist_ok=True)
        config_path = self._work_dir / "prometheus.yml"
        config_path.write_text(
            render_config(
                self.config.targets, self.config.scrape_interval_s, self.config.rule_files
            )
        )

        port = self.config.port or free_port()
        self.url = f"http://127.0.0.1:{port}"
        command = [
            str(self.config.binary),
            f"--config.file={config_path}",
            f"--storage.tsdb.path={self._work_dir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ]
        with self.log_path.open("wb") as log:
            self._process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        logger.info(
            "Prometheus started at %s (pid %d, folder %s)",
            self.url,
            self._process.pid,
            self._work_dir,
        )
        self._wait_ready()
        return self.url

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL after `timeout_s`); delete a temporary folder."""
        if self._process is not None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                logger.warning("Prometheus (pid %d) ignored SIGTERM; killing it", self._process.pid)
                self._process.kill()
                self._process.wait()
            logger.info("Prometheus stopped (pid %d)", self._process.pid)
            self._process = None
        if self._owns_work_dir and self._work_dir is not None:
            shutil.rmtree(self._work_dir, ignore_errors=True)
            self._work_dir = None

    def log_tail(self, lines: int = 40) -> str:
        """Return the last `lines` lines of the server log."""
        if self._work_dir is None or not self.log_path.is_file():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def api(self, path: str, params: dict[str, str] | None = None) -> Any:
        """GET an HTTP API path such as /api/v1/query and return its `data` field."""
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        try:
            with urllib.request.urlopen(f"{self.url}{path}{query}", timeout=10) as response:
                body = json.load(response)
        except urllib.error.HTTPError as error:
            detail = error.read().decode(errors="replace")
            raise PrometheusError(f"GET {path} {params} failed: {error.code} {detail}") from error
        if body.get("status") != "success":
            raise PrometheusError(f"GET {path} {params} returned {body}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Evaluate an instant PromQL query now and return the result samples."""
        return self.api("/api/v1/query", {"query": expr})["result"]

    def wait_for_samples(self, expr: str, timeout_s: float = 30.0) -> list[dict[str, Any]]:
        """Poll `expr` until it returns at least one sample that is a number; return the samples."""
        deadline = time.monotonic() + timeout_s
        while True:
            result = self.query(expr)
            if any(has_number(sample) for sample in result):
                return result
            if time.monotonic() > deadline:
                raise PrometheusError(f"{expr} returned no number within {timeout_s:.0f}s")
            time.sleep(0.5)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.config.start_timeout_s
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                raise PrometheusError(
                    f"Prometheus exited with code {self._process.returncode} during start-up:\n"
                    f"{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        tail = self.log_tail()  # read before stop() removes a temporary work directory
        self.stop()
        raise PrometheusError(
            f"Prometheus at {self.url} was not ready within {self.config.start_timeout_s:.0f}s; "
            f"the end of its log:\n{tail}"
        )

    def __enter__(self) -> PrometheusServer:
        try:
            self.start()
        except BaseException:
            # __exit__ does not run when __enter__ raises, also for a signal during start-up.
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def has_number(sample: dict[str, Any]) -> bool:
    """Return whether the value of an instant-query sample is a number (not NaN)."""
    _timestamp, value = sample["value"]
    return not math.isnan(float(value))


def _interrupt(signum: int, frame: object) -> None:
    """Turn SIGTERM into KeyboardInterrupt, so that it stops the server as Ctrl-C does."""
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main() -> int:
    parser = argparse.ArgumentParser(
        description="Run a local Prometheus server until Ctrl-C or SIGTERM."
    )
    parser.add_argument(
        "--target",
        action="append",
        default=[],
        help="metrics endpoint HOST:PORT to scrape (repeatable; default 127.0.0.1:9100)",
    )
    parser.add_argument("--port", type=int, default=9090, help="HTTP port on 127.0.0.1")
    parser.add_argument(
        "--scrape-interval", type=float, default=5.0, help="seconds between scrapes"
    )
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=None,
        help="folder for configuration and data (default: temporary)",
    )
    parser.add_argument(
        "--rules",
        type=Path,
        action="append",
        default=None,
        metavar="FILE",
        help=f"alert rule file to load (repeatable; default {DEFAULT_RULE_FILE.name} of "
        "ops/prometheus/rules)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    config = PrometheusConfig(
        targets=tuple(args.target or ["127.0.0.1:9100"]),
        port=args.port,
        scrape_interval_s=args.scrape_interval,
        work_dir=args.work_dir,
        rule_files=tuple(args.rules or [DEFAULT_RULE_FILE]),
    )
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        with PrometheusServer(config) as server:
            print(
                f"Prometheus at {server.url}, scraping {', '.join(config.targets)}; "
                "Ctrl-C or SIGTERM stops it",
                flush=True,
            )
            while True:
                time.sleep(1)
    except KeyboardInterrupt:
        logger.info("stopped by a signal")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
