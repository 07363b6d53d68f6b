"""Start and stop the local Kafka broker of `ops/kafka/kafka.sh` from Python.

Tests, the demo and the benchmarks use it like this:

    with LocalBroker(BrokerConfig(state_dir=Path("/tmp/kafka"))) as bootstrap:
        ...  # bootstrap is "127.0.0.1:PORT"

It assumes what kafka.sh assumes: Java 17 and python3 on the PATH, and Maven for the first fetch.
"""

from __future__ import annotations

import logging
import subprocess
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

logger = logging.getLogger(__name__)

KAFKA_SCRIPT = Path(__file__).resolve().parent / "kafka.sh"


class BrokerError(Exception):
    """A kafka.sh subcommand failed; the message contains its output and the log location."""


@dataclass(frozen=True)
class BrokerConfig:
    """Settings of one local broker instance.

    state_dir: folder for the pid file, bootstrap address, server.properties and broker.log;
        one folder per instance, so several brokers can run side by side.
    port: PLAINTEXT port on 127.0.0.1, or 0 for a free port chosen at start.
    start_timeout_s: seconds to wait for the broker's first Metadata response.
    stop_timeout_s: seconds between SIGTERM and SIGKILL on stop.
    script: the kafka.sh to run.
    """

    state_dir: Path
    port: int = 0
    start_timeout_s: float = 90.0
    stop_timeout_s: float = 30.0
    script: Path = KAFKA_SCRIPT


class LocalBroker:
    """One Kafka node (KRaft broker and controller) run by kafka.sh on 127.0.0.1."""

    def __init__(self, config: BrokerConfig) -> None:
        self.config = config
        self._bootstrap: str | None = None

    @property
    def log_path(self) -> Path:
        """The broker's log file (standard output and error of the JVM)."""
        return self.config.state_dir / "broker.log"

    @property
    def bootstrap(self) -> str:
        """The bootstrap address HOST:PORT of the running broker."""
        if self._bootstrap is None:
            raise BrokerError("the broker is not started: call start() first")
        return self._bootstrap

    def fetch(self) -> None:
        """Fetch the Kafka jars with Maven unless they are already there."""
        self._run("fetch")

    def start(self) -> str:
        """Start the broker, wait for its first Metadata response and return HOST:PORT."""
        output = self._run(
            "start",
            "--port",
            str(self.config.port),
            "--timeout",
            str(int(self.config.start_timeout_s)),
        )
        self._bootstrap = output.strip().splitlines()[-1]
        logger.info("Kafka broker started at %s, log %s", self._bootstrap, self.log_path)
        return self._bootstrap

    def stop(self, keep_data: bool = False) -> None:
        """Stop the broker (SIGTERM, then SIGKILL after the timeout) and delete its data.

        With `keep_data`, the data folder stays, and the next `start()` runs the broker again
        on it, on the same port.
        """
        keep = ("--keep-data",) if keep_data else ()
        self._run("stop", "--timeout", str(int(self.config.stop_timeout_s)), *keep)
        logger.info(
            "Kafka broker stopped (state folder %s, data %s)",
            self.config.state_dir,
            "kept" if keep_data else "deleted",
        )
        self._bootstrap = None

    def log_tail(self, lines: int = 50) -> str:
        """Return the last `lines` lines of the broker log, or "" when there is none yet."""
        if not self.log_path.is_file():
            return ""
        with self.log_path.open(encoding="utf-8", errors="replace") as log:
            return "".join(log.readlines()[-lines:])

    def __enter__(self) -> str:
        self.fetch()
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _run_unchecked(self, *args: str) -> subprocess.CompletedProcess[str]:
        command = [
            "bash",
            str(self.config.script),
            *args,
            "--state-dir",
            str(self.config.state_dir),
        ]
        return subprocess.run(command, capture_output=True, text=True, check=False)

    def _run(self, *args: str) -> str:
        completed = self._run_unchecked(*args)
        if completed.returncode != 0:
            raise BrokerError(
                f"kafka.sh {args[0]} failed with exit code {completed.returncode}: "
                f"{completed.stderr.strip() or completed.stdout.strip()} (log: {self.log_path})"
            )
        return completed.stdout
