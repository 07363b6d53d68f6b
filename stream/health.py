"""Liveness and readiness of the worker pool, served at /healthz and /readyz next to /metrics.

Each worker process writes two numbers into a table of shared memory that the pool creates before
it starts the workers: the `time.monotonic()` reading of its last main-loop turn (its heartbeat)
and whether it has joined the consumer group. The pool's HTTP server thread reads the table and
the pool's own record of exited workers, and applies the rules of `check_liveness` and
`check_readiness`:

- /healthz fails (503) when a worker has exited while the pool is not stopping, or when a running
  worker's heartbeat is older than `--health-stall-seconds`. It succeeds while the pool stops,
  because the pool itself kills the workers that do not stop within its stop timeout.
- /readyz succeeds once every worker has loaded the bundle, opened the state store and received
  its first assignment from the group (an empty one counts), while no worker has exited or
  stalled. It fails while the pool stops.

The workers and the pool read the same clock: `time.monotonic()` is CLOCK_MONOTONIC on Linux,
one clock for every process of the host. The rules are pure functions of `WorkerStatus` values
and a clock reading, so tests can give them a fake clock.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.context import BaseContext
from typing import Any, Protocol

from stream.config import format_setting

logger = logging.getLogger(__name__)

# Numbers per worker in the shared table: the heartbeat time and the ready flag (1.0 or 0.0).
_SLOT_SIZE = 2


@dataclass(frozen=True)
class WorkerStatus:
    """The pool's record of one configured worker at the time of a health check.

    `last_beat` is a `time.monotonic()` reading: the worker's last main-loop turn, or the time
    the pool started it while it has not reported yet.
    """

    index: int
    pid: int | None
    exited: bool
    ready: bool
    last_beat: float

    @property
    def label(self) -> str:
        """The worker's name as the pool logs it: "worker 0 (pid 123)"."""
        pid = "not started" if self.pid is None else f"pid {self.pid}"
        return f"worker {self.index} ({pid})"


@dataclass(frozen=True)
class HealthReport:
    """The result of one liveness or readiness check, with the body that /healthz or /readyz
    returns."""

    ok: bool
    status: str  # "ok", "failing", "not ready" or "stopping"
    problems: tuple[str, ...]
    workers: tuple[WorkerStatus, ...]
    now: float

    @property
    def http_status(self) -> str:
        return "200 OK" if self.ok else "503 Service Unavailable"

    def to_json(self) -> bytes:
        """Encode the report as the JSON body of the HTTP response."""
        workers = [
            {
                "worker": status.index,
                "pid": status.pid,
                "state": "exited" if status.exited else "running",
                # The ready flag in shared memory keeps the last value that a killed worker set.
                "ready": status.ready and not status.exited,
                "seconds_since_heartbeat": round(max(self.now - status.last_beat, 0.0), 3),
            }
            for status in self.workers
        ]
        body = {"status": self.status, "problems": list(self.problems), "workers": workers}
        return (json.dumps(body) + "\n").encode()


def _exited_problems(workers: Sequence[WorkerStatus]) -> list[str]:
    exited = [status for status in workers if status.exited]
    if not exited:
        return []
    running = len(workers) - len(exited)
    return [
        f"{status.label} has exited: {running} of {len(workers)} workers running, and the "
        "pool does not restart workers; restart the pool"
        for status in exited
    ]


def _stalled_problems(
    workers: Sequence[WorkerStatus], stall_seconds: float, now: float, stall_name: str
) -> list[str]:
    return [
        f"{status.label} has not reported for {now - status.last_beat:.1f} s, more than "
        f"{format_setting(stall_name, f'{stall_seconds:g}')}"
        for status in workers
        if not status.exited and now - status.last_beat > stall_seconds
    ]


def check_liveness(
    workers: Sequence[WorkerStatus],
    stopping: bool,
    stall_seconds: float,
    now: float,
    stall_name: str = "--health-stall-seconds",
) -> HealthReport:
    """Apply the /healthz rules: fail on an exited worker or on a heartbeat older than
    `stall_seconds`, and succeed while the pool stops."""
    workers = tuple(workers)
    if stopping:
        return HealthReport(True, "stopping", (), workers, now)
    problems = _exited_problems(workers) + _stalled_problems(
        workers, stall_seconds, now, stall_name
    )
    status = "failing" if problems else "ok"
    return HealthReport(not problems, status, tuple(problems), workers, now)


def check_readiness(
    workers: Sequence[WorkerStatus],
    stopping: bool,
    stall_seconds: float,
    now: float,
    stall_name: str = "--health-stall-seconds",
) -> HealthReport:
    """Apply the /readyz rules: succeed when every worker has joined the group and none has
    exited or stalled, and fail while the pool stops."""
    workers = tuple(workers)
    if stopping:
        return HealthReport(False, "stopping", ("the pool is stopping",), workers, now)
    problems = _exited_problems(workers) + _stalled_problems(
        workers, stall_seconds, now, stall_name
    )
    problems += [
        f"{status.label} has not joined the consumer group yet"
        for status in workers
        if not status.exited and not status.ready
    ]
    status = "not ready" if problems else "ok"
    return HealthReport(not problems, status, tuple(problems), workers, now)


class HealthSource(Protocol):
    """The pool's side of /healthz and /readyz: one report per check."""

    def liveness(self) -> HealthReport: ...

    def readiness(self) -> HealthReport: ...


class HeartbeatTable:
    """The heartbeat times and ready flags of every worker, in memory shared with the workers.

    The table is a lock-free `RawArray`: each slot has one writer (its worker), and the reader
    (the pool's HTTP thread) takes no lock that a worker stopped with SIGSTOP while holding it
    could block. An aligned 8-byte store is atomic on x86-64 and ARM64, so a reader sees the old
    or the new time, never a mix.
    """

    def __init__(
        self, context: BaseContext, processes: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.processes = processes
        self.clock = clock
        self.values: Any = context.RawArray("d", processes * _SLOT_SIZE)

    def worker(self, index: int) -> WorkerHeartbeat:
        """Return the heartbeat of worker `index`, to pass to its process at start."""
        heartbeat = WorkerHeartbeat(self.values, index, self.clock)
        heartbeat.set_ready(False)
        heartbeat.beat()  # the silence of a worker that never reports counts from its start
        return heartbeat

    def last_beat(self, index: int) -> float:
        return float(self.values[index * _SLOT_SIZE])

    def ready(self, index: int) -> bool:
        return bool(self.values[index * _SLOT_SIZE + 1])


class WorkerHeartbeat:
    """One worker's slot in the `HeartbeatTable`; a slot without a table ignores every call.

    The table is shared memory, which `multiprocessing` passes to a process only as an argument
    of its start, so the worker gets this object through the process's arguments.
    """

    def __init__(
        self, values: Any | None = None, index: int = 0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.values = values
        self.index = index
        self.clock = clock

    def beat(self) -> None:
        """Record that the worker's main loop is turning."""
        if self.values is not None:
            self.values[self.index * _SLOT_SIZE] = self.clock()

    def set_ready(self, ready: bool) -> None:
        """Record whether the worker has joined the group and can process events."""
        if self.values is not None:
            self.values[self.index * _SLOT_SIZE + 1] = 1.0 if ready else 0.0
