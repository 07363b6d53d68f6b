"""The worker pool: N worker processes in one consumer group, and the metrics endpoint.

The parent process starts the workers with the multiprocessing `spawn` start method, so each
worker opens the model bundle, the LMDB environment and its Kafka clients itself (none of them
survives a fork). The parent serves the aggregate of every worker's metrics, forwards SIGTERM and
SIGINT to the workers, and waits for them. It restarts nothing: a worker that exits while the
pool is not stopping is logged with its exit code, and the pool stops the others and exits
non-zero, unless `WorkerConfig.keep_going` lets the remaining workers take over its partitions.
The only way back to the configured number of workers is to restart the pool.

A second SIGTERM or SIGINT while the pool stops kills the workers that are still stopping, and
the pool exits with 128 plus that signal's number, as the `hiertcn` commands end at once on a
second Ctrl-C. A worker ignores every stop signal after its first one, so the SIGINT that a
terminal sends the whole process group and the SIGTERM that the pool forwards count as one
request. Workers start with both signals blocked and unblock them once they have a handler, so
a stop signal during their start waits instead of killing them.

A worker whose pool process has exited, for example after a SIGKILL, stops as on SIGTERM:
nothing would serve its metrics or stop it any more. The kernel sends it `POOL_EXIT_SIGNAL`
then (`stop_with_pool`). Until it has stopped, it still holds the state directory's pool lock, which
each worker takes beside the pool (`statestore.pool_lock`).

The metrics server also serves /healthz and /readyz (rules in `stream.health`), so that an
orchestrator restarts a pool whose worker hangs or has exited under `keep_going`.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import math
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterable, MutableMapping
from multiprocessing import resource_tracker
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from hiertcn.signals import (
    STOP_SIGNALS,
    ignore_signals,
    stop_signals_blocked,
    unblock_stop_signals,
)
from statestore.maintenance import plural
from stream.config import WorkerConfig, format_option, format_setting, source_of
from stream.cpu_quota import available_cpus
from stream.errors import ConfigError, StreamError
from stream.health import (
    HealthReport,
    HealthSource,
    HeartbeatTable,
    WorkerHeartbeat,
    WorkerStatus,
    check_liveness,
    check_readiness,
)
from stream.metrics import (
    mark_process_dead,
    prepare_multiprocess_dir,
    remove_multiprocess_dir,
)
from stream.metrics_server import format_host_port, serve_aggregate

if TYPE_CHECKING:
    from prometheus_client.exposition import ThreadingWSGIServer

    from stream.bundle_watch import BundleWatch

logger = logging.getLogger(__name__)

# Environment variables that set the thread count of numpy's BLAS library (OpenBLAS, MKL or one
# built with OpenMP), read once when a worker process imports numpy.
BLAS_THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_NUM_THREADS")

# Seconds the pool waits at least for its workers to finish their batch and leave the group after
# a stop request, before it kills them. `stop_timeout` adds the longest delivery wait.
STOP_TIMEOUT_SECONDS = 60.0
# The exit code of a worker stopped by invalid settings, bundle or state (ConfigError and the
# like), which the pool passes on.
INVALID_INPUT_EXIT_CODE = 2
# The prctl(2) option that sets the signal a process gets when its parent exits
# (linux/prctl.h).
_PR_SET_PDEATHSIG = 1
# The signal that a worker gets when the pool thread that started it exits (`stop_with_pool`).
POOL_EXIT_SIGNAL = signal.SIGUSR2


def stop_timeout(config: WorkerConfig) -> float:
    """Return the seconds a worker may take to stop: the base wait plus its longest delivery
    wait, because a stopping worker commits what is pending only after its delivery."""
    return STOP_TIMEOUT_SECONDS + config.delivery_timeout * config.delivery_attempts


class PendingStop:
    """The first SIGTERM or SIGINT that a worker process gets before its `Worker` exists."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def record(self, signum: int, frame: FrameType | None) -> None:
        """Keep the first stop signal (the handler of both until the worker installs its own)."""
        if self.signum is None:
            self.signum = signum

    def install(self) -> None:
        for signum in STOP_SIGNALS:
            signal.signal(signum, self.record)


def _worker_main(
    config: WorkerConfig,
    index: int,
    threads: int,
    log_level: int,
    heartbeat: WorkerHeartbeat | None = None,
    pool_pid: int | None = None,
    finished: ctypes.Array[ctypes.c_byte] | None = None,
) -> None:
    """Entry point of one spawned worker process; `pool_pid` is the pool process that started
    it (None in tests without a pool).

    The pool starts it with SIGTERM and SIGINT blocked (`Pool._start_children`). A stop signal
    that came before this function is kept in `PendingStop` and stops the worker before its
    first batch. The worker sets its item of `finished` to 1 once only its exit is left.
    """
    pending_stop = PendingStop()
    pending_stop.install()
    unblock_stop_signals()

    from export.errors import ExportError
    from hiertcn.command_line import configure_logging
    from statestore.errors import StateStoreError

    configure_logging(1 if log_level <= logging.DEBUG else 0)
    try:
        code = _run_locked_worker(config, index, threads, heartbeat, pool_pid, pending_stop)
    except (StreamError, ExportError, StateStoreError) as error:
        logger.error("worker %d failed: %s", index, error)
        code = error.exit_code
    except KeyboardInterrupt:
        code = 130
    except Exception:
        logger.exception("worker %d failed", index)
        code = 1
    # Only the exit follows, and a signal that kills the worker now would turn its exit code
    # into a signal status, which the pool reports as an error.
    ignore_signals((*STOP_SIGNALS, POOL_EXIT_SIGNAL))
    if finished is not None:
        finished[index] = 1
    sys.exit(code)


def _run_locked_worker(
    config: WorkerConfig,
    index: int,
    threads: int,
    heartbeat: WorkerHeartbeat | None,
    pool_pid: int | None,
    pending_stop: PendingStop | None = None,
) -> int:
    """Run the worker while it holds the pool lock of its state directory beside its pool.

    The worker holds the lock itself, so that a pool of another consumer group stays rejected
    until the last process of this pool has stopped, also when the pool process was killed.
    """
    from statestore.pool_lock import join_pool_lock
    from stream.worker import run_worker

    pool_lock = None
    if pool_pid is not None:
        pool_lock = join_pool_lock(config.state_dir, config.group_id, pool_pid)
    try:
        return run_worker(config, index, threads, heartbeat, pool_pid, pending_stop)
    finally:
        if pool_lock is not None:
            os.close(pool_lock)


def stop_with_pool(pool_pid: int) -> None:
    """Ask Linux to send this worker `POOL_EXIT_SIGNAL` when the pool process `pool_pid` exits.

    Call it after the worker has installed its handler of that signal. Linux sends the signal
    when the thread that started the worker exits, and the pool starts its workers from the
    thread that runs `Pool.run`, which ends only after they have stopped. The signal is not
    SIGTERM, because it comes while the other threads of a killed pool may still be exiting.
    Until they have, `os.getppid()` returns the pool's pid, so the worker could not tell the
    pool's exit from a SIGTERM sent to it. Where prctl is missing, the worker's main loop still
    notices the exit through `os.getppid()` (`Worker.run`).
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return
    if prctl(_PR_SET_PDEATHSIG, int(POOL_EXIT_SIGNAL), 0, 0, 0) != 0:
        logger.debug("prctl(PR_SET_PDEATHSIG) failed: %s", os.strerror(ctypes.get_errno()))
        return
    # No signal comes for a pool that exited before prctl ran, so check for that once here.
    if os.getppid() != pool_pid:
        os.kill(os.getpid(), POOL_EXIT_SIGNAL)


def single_threaded_blas(environ: MutableMapping[str, str]) -> None:
    """Give numpy's BLAS one thread in the workers, unless the user has chosen a count.

    The workers' matrix products (a batch of user embeddings against the item table) are small.
    OpenBLAS's extra threads busy-wait between calls, and on a small machine that took a core
    from the Kafka clients and the broker: on 2 cores, one thread cut the worker's median
    latency at 800 events/s several times over (docs/benchmarks.md). Spawned workers inherit
    the parent's environment, so setting it here before they start is enough.
    """
    chosen = [name for name in BLAS_THREAD_VARIABLES if environ.get(name)]
    if chosen:
        logger.info("numpy BLAS threads left as set by %s", ", ".join(chosen))
        return
    for name in BLAS_THREAD_VARIABLES:
        environ[name] = "1"


class Pool:
    """Start, watch and stop the worker processes of one `hiertcn-stream run`."""

    def __init__(
        self,
        config: WorkerConfig,
        log_level: int = logging.INFO,
        bundle_watch: BundleWatch | None = None,
    ) -> None:
        self.config = config
        self.log_level = log_level
        # Stamps of the bundle's files, taken before the workers start unless given, and
        # compared again when a worker dies by SIGBUS. None when the manifest cannot be read.
        self.bundle_watch = bundle_watch
        self.children: list[BaseProcess] = []
        self._stopping = False
        # The first stop signal, and the one after it that killed the workers still stopping.
        self._stop_signal: int | None = None
        self._forced_signal: int | None = None
        # Seconds the pool waits for its workers after a stop request before it kills them.
        self.stop_timeout = stop_timeout(config)
        self._stop_deadline = math.inf  # time.monotonic() reading; set by the first request
        self.heartbeats = HeartbeatTable(multiprocessing.get_context("spawn"), config.processes)
        # 1 for each worker that has finished its stop, or failed, and whose process is only
        # exiting: a second stop signal does not kill those.
        self.finished = multiprocessing.get_context("spawn").RawArray("b", config.processes)
        self._started_at = time.monotonic()
        # Indexes of the workers that have exited, written by `_watch` and read by the
        # health checks in the HTTP server's threads.
        self._exited: set[int] = set()
        self._exited_lock = threading.Lock()
        # (exit code, description) of each worker exit that makes the pool's exit code non-zero.
        self._failures: list[tuple[int | None, str]] = []

    def request_stop(self, signum: int | None = None, frame: FrameType | None = None) -> None:
        """Ask every worker to finish its batch and stop (the SIGTERM and SIGINT handler).

        A second stop signal kills the workers still running (`_force_stop`). `signum` is None
        when the pool stops because a worker exited.
        """
        if signum is not None and self._stop_signal is not None:
            self._force_stop(signum)
            return
        if signum is not None:
            self._stop_signal = signum
        if not self._stopping:
            # Set first, because a signal can run this handler again while it logs.
            self._stopping = True
            self._stop_deadline = time.monotonic() + self.stop_timeout
            running = sum(child.is_alive() for child in self.children)
            if signum is None:
                logger.info("stopping the pool (a worker exited): stopping %d running workers",
                            running)  # fmt: skip
            else:
                logger.info(
                    "stopping the pool (%s received): stopping %d running workers. Another "
                    "SIGTERM or SIGINT kills the workers still running",
                    signal.Signals(signum).name,
                    running,
                )
        elif signum is not None:
            logger.info(
                "%s received while the pool stops after a worker exit: another SIGTERM or "
                "SIGINT kills the workers still running",
                signal.Signals(signum).name,
            )
        for child in self.children:
            if child.is_alive() and child.pid is not None:
                os.kill(child.pid, signal.SIGTERM)

    def _force_stop(self, signum: int) -> None:
        """Kill the workers still running, on a stop signal that follows the first one.

        The killed workers' outputs since their last commit are published again after a
        restart, as after any SIGKILL, but no state or position is lost.
        """
        cause = self._second_signal_cause(signum)
        if self._forced_signal is not None:
            return
        running = [
            child
            for index, child in enumerate(self.children)
            if child.is_alive() and not self.finished[index]
        ]
        if not running:
            logger.info("%s: every worker has stopped, the pool exits", cause)
            return
        self._forced_signal = signum
        logger.warning(
            "%s while the pool stops: killing %s still running (%s %s). A restart publishes "
            "again the outputs of their batches since the last commit, and its workers get no "
            "partitions until the broker drops the killed members after session.timeout.ms",
            cause,
            plural(len(running), "worker"),
            "pid" if len(running) == 1 else "pids",
            ", ".join(str(child.pid) for child in running),
        )
        for child in running:
            child.kill()

    def _second_signal_cause(self, signum: int) -> str:
        """Describe a stop signal that followed the first one, such as "SIGINT received again"
        or "SIGINT received after SIGTERM"."""
        name = signal.Signals(signum).name
        if self._stop_signal is None or self._stop_signal == signum:
            return f"{name} received again"
        return f"{name} received after {signal.Signals(self._stop_signal).name}"

    def run(self) -> int:
        """Run the pool until it is stopped or a worker fails; return the exit code."""
        metrics_dir = prepare_multiprocess_dir()
        server = None
        pool_lock = None
        try:
            logger.info(
                "state directory %s (from --state-dir %s, relative to the working directory "
                "unless absolute)",
                self.config.state_dir.resolve(),
                self.config.state_dir,
            )
            pool_lock = self._lock_state_dir()
            if self.config.metrics_port:
                warn_short_stall_limit(self.config)
                server = serve_metrics(
                    self.config.metrics_address,
                    self.config.metrics_port,
                    health=self,
                    name=source_of(self.config, "metrics_address"),
                )
            if self.bundle_watch is None:
                from stream.bundle_watch import watch_bundle_directory

                self.bundle_watch = watch_bundle_directory(self.config.bundle)
            self._start_children()
            return self._watch()
        finally:
            self._stop_children()
            if pool_lock is not None:
                os.close(pool_lock)
            if server is not None:
                server.shutdown()
                server.server_close()
            remove_multiprocess_dir(metrics_dir)

    def _lock_state_dir(self) -> int | None:
        """Take the pool lock of --state-dir, which rejects a pool of another consumer group,
        and return its descriptor (None on a file system without flock)."""
        from statestore.pool_lock import lock_pool

        # The store's open creates the directory too, but the lock file must exist first.
        with contextlib.suppress(OSError):
            self.config.state_dir.mkdir(parents=True, exist_ok=True)
        return lock_pool(self.config.state_dir, self.config.group_id)

    def _start_children(self) -> None:
        context = multiprocessing.get_context("spawn")
        # ONNX Runtime threads per process, so that the pool does not oversubscribe the cores.
        cpus = available_cpus()
        threads = max(1, cpus // self.config.processes)
        logger.info(
            "ONNX Runtime threads per worker: %d (%d %s available to the pool, %d worker %s)",
            threads,
            cpus,
            "CPU" if cpus == 1 else "CPUs",
            self.config.processes,
            "process" if self.config.processes == 1 else "processes",
        )
        single_threaded_blas(os.environ)
        # The spawn start method starts multiprocessing's resource tracker with the first
        # worker, and unblocks SIGINT and SIGTERM after it (CPython 3.11, resource_tracker.py),
        # which would cut `stop_signals_blocked` short. Started here, it is running already.
        resource_tracker.ensure_running()
        for index in range(self.config.processes):
            if self._stopping:
                logger.info("the pool is stopping: %d of %d workers not started",
                            self.config.processes - index, self.config.processes)  # fmt: skip
                return
            child = context.Process(
                target=_worker_main,
                args=(
                    self.config,
                    index,
                    threads,
                    self.log_level,
                    self.heartbeats.worker(index),
                    os.getpid(),
                    self.finished,
                ),
                name=f"hiertcn-worker-{index}",
            )
            # The worker inherits the blocked signals and unblocks them once it has a handler
            # (`_worker_main`), so a stop signal during its start waits for that handler.
            with stop_signals_blocked():
                child.start()
                self.children.append(child)
            logger.info("started worker %d (pid %d)", index, child.pid)
            # Another thread of the pool may have taken a stop signal before the child was in
            # the list that `request_stop` signals. A repeated SIGTERM changes nothing.
            if self._stopping and child.pid is not None:
                os.kill(child.pid, signal.SIGTERM)

    def _index(self, child: BaseProcess) -> int:
        """Return the worker number of a child process, as in "started worker N"."""
        return self.children.index(child)

    def _watch(self) -> int:
        """Wait for the workers and return the pool's exit code.

        The code is 0 when every worker stopped on request, and 2 when one stopped on invalid
        settings or state (its own exit code 2), or was killed by SIGBUS after a file of the
        bundle changed. Any other exit gives 1. Workers killed by a second stop signal give
        128 plus its number, unless another worker's exit gave 1 or 2 before.
        """
        running = {child.sentinel: child for child in self.children}
        failed = False
        invalid_input = False
        while running:
            self._kill_after_stop_timeout(running.values())
            for sentinel in wait(list(running), timeout=1.0):
                child = running.pop(sentinel)  # type: ignore[call-overload]
                child.join()
                mark_process_dead(child.pid)  # type: ignore[arg-type]
                with self._exited_lock:
                    self._exited.add(self._index(child))
                if self._stopping and child.exitcode == 0:
                    logger.info("worker %d (pid %d) stopped", self._index(child), child.pid)
                    continue
                if self._forced_signal is not None and child.exitcode == -signal.SIGKILL:
                    logger.info("worker %d (pid %d) killed", self._index(child), child.pid)
                    continue
                failed = True
                exitcode, ending, cause = self._explain_exit(child)
                invalid_input = invalid_input or exitcode == INVALID_INPUT_EXIT_CODE
                self._report_exit(child, exitcode, ending, cause, len(running))
            if not running and not self._stopping:
                logger.error("every worker has exited")
                failed = True
        code = 0
        if invalid_input:
            code = INVALID_INPUT_EXIT_CODE
        elif failed:
            code = 1
        elif self._forced_signal is not None:
            code = 128 + self._forced_signal
        self._log_pool_exit(code)
        return code

    def _log_pool_exit(self, code: int) -> None:
        """Log the pool's closing line: its exit code and the worker exit that caused it."""
        if code == 0:
            logger.info("pool exits with 0: every worker stopped on request")
            return
        if self._forced_signal is not None and code == 128 + self._forced_signal:
            cause = self._second_signal_cause(self._forced_signal)
            logger.warning("pool exits with %d: %s, workers killed", code, cause)
            return
        causes = [text for exitcode, text in self._failures if exitcode == code] or [
            text for _exitcode, text in self._failures
        ]
        reason = causes[0] if causes else "every worker has exited"
        logger.error("pool exits with %d: %s", code, reason)

    def _kill_after_stop_timeout(self, running: Iterable[BaseProcess]) -> None:
        """Kill the workers still running `stop_timeout` seconds after the stop request."""
        if time.monotonic() < self._stop_deadline:
            return
        for child in running:
            if child.is_alive():
                logger.error("worker %d (pid %d) did not stop within %.0f s: killing it",
                             self._index(child), child.pid, self.stop_timeout)  # fmt: skip
                child.kill()
        self._stop_deadline = math.inf  # once; the killed workers then exit through `wait`

    # -- health checks, called from the HTTP server's threads ----------------------------------

    def worker_statuses(self) -> list[WorkerStatus]:
        """Return the status of every configured worker, started or not."""
        with self._exited_lock:
            exited = set(self._exited)
        children = list(self.children)
        statuses = []
        for index in range(self.config.processes):
            if index >= len(children):
                statuses.append(WorkerStatus(index, None, False, False, self._started_at))
                continue
            statuses.append(
                WorkerStatus(
                    index=index,
                    pid=children[index].pid,
                    exited=index in exited,
                    ready=self.heartbeats.ready(index),
                    last_beat=self.heartbeats.last_beat(index),
                )
            )
        return statuses

    def liveness(self) -> HealthReport:
        """Return the /healthz report (rules in `stream.health.check_liveness`)."""
        now = time.monotonic()
        statuses = self.worker_statuses()
        stall_name = source_of(self.config, "health_stall_seconds")
        stall = self.config.health_stall_seconds
        return check_liveness(statuses, self._stopping, stall, now, stall_name)

    def readiness(self) -> HealthReport:
        """Return the /readyz report (rules in `stream.health.check_readiness`)."""
        now = time.monotonic()
        statuses = self.worker_statuses()
        stall_name = source_of(self.config, "health_stall_seconds")
        stall = self.config.health_stall_seconds
        return check_readiness(statuses, self._stopping, stall, now, stall_name)

    def _explain_exit(self, child: BaseProcess) -> tuple[int | None, str, str]:
        """Return the exit code that a worker's exit counts as, how it ended, and the likely
        cause with the fix ("" when the worker logged its own error).

        A worker killed by SIGBUS read a memory-mapped file beyond its end or on a failed disk,
        most likely its items.npy after a copy truncated it, before the worker's own bundle
        watch ran. When the bundle's stamps show a change, the exit counts as exit code 2, as
        the watch's own stop does.
        """
        ending = describe_exit(child.exitcode)
        if child.exitcode != -signal.SIGBUS:
            return child.exitcode, ending, ""
        watch = self.bundle_watch
        change = watch.find_change() if watch is not None else None
        if watch is not None and change is not None:
            from stream.bundle_watch import REDEPLOY_ADVICE

            cause = (
                f"Bundle {watch.directory} (version {watch.version}) changed on disk after the "
                f"pool started: {change}. A worker that reads its memory-mapped items.npy after "
                f"a copy has truncated the file gets SIGBUS. {REDEPLOY_ADVICE}"
            )
            return INVALID_INPUT_EXIT_CODE, ending, cause
        return child.exitcode, ending, self._describe_sigbus(bundle_checked=watch is not None)

    def _describe_sigbus(self, bundle_checked: bool) -> str:
        """Return the likely causes of a SIGBUS that no change of the bundle's files explains."""
        state_files = f"the LMDB files in {self.config.state_dir.resolve()}"
        fix = "then restart the pool, which resumes from the stored offsets"
        if bundle_checked:
            return (
                "The bundle's files are unchanged since the pool started, so a memory-mapped "
                f"file of the state store was probably truncated or became unreadable: "
                f"{state_files} (on a removed disk or a full file system). Check them, {fix}"
            )
        items = Path(self.config.bundle).resolve() / "items.npy"
        return (
            "A memory-mapped file was probably truncated or became unreadable under it: "
            f"{items} (a copy into the served directory truncates it first), or {state_files} "
            f"(on a removed disk or a full file system). Check both, {fix}"
        )

    def _report_exit(
        self, child: BaseProcess, exitcode: int | None, ending: str, cause: str, remaining: int
    ) -> None:
        """Log why a worker exited, and stop the pool unless `keep_going` lets it continue.

        `exitcode`, `ending` and `cause` come from `_explain_exit`.
        """
        worker = f"worker {self._index(child)} (pid {child.pid})"
        after = f". {cause}" if cause else ""
        if self._stopping:
            logger.error("%s %s while the pool was stopping%s", worker, ending, after)
            self._failures.append(
                (exitcode, f"{worker} {ending} while the pool was stopping{after}")
            )
            return
        # Invalid settings or state stop every worker the same way, so --keep-going does not
        # apply to them.
        if not self.config.keep_going or exitcode == INVALID_INPUT_EXIT_CODE:
            logger.error(
                "%s %s while the pool was running: stopping the pool%s", worker, ending, after
            )
            self._failures.append((exitcode, f"{worker} {ending}{after}"))
            self.request_stop()
            return
        logger.error("%s %s while the pool was running%s", worker, ending, after)
        self._failures.append((exitcode, f"{worker} {ending} under --keep-going{after}"))
        if remaining:
            logger.warning(
                "--keep-going: the pool continues with %d of %d workers, which take over the "
                "partitions of worker %d after a rebalance. The pool does not restart workers: "
                "to get back to %d, stop the pool (SIGTERM) and start it again, and it resumes "
                "from the stored offsets",
                remaining,
                self.config.processes,
                self._index(child),
                self.config.processes,
            )

    def _stop_children(self) -> None:
        """Stop workers that are still running: SIGTERM, then SIGKILL after the timeout."""
        for child in self.children:
            if child.is_alive() and child.pid is not None:
                os.kill(child.pid, signal.SIGTERM)
        timeout = self.stop_timeout
        for child in self.children:
            child.join(timeout)
            if child.is_alive():
                logger.error("worker %d (pid %d) did not stop within %.0f s: killing it",
                             self._index(child), child.pid, timeout)  # fmt: skip
                child.kill()
                child.join()


def describe_exit(exitcode: int | None) -> str:
    """Return how a worker process ended, from its `multiprocessing` exit code."""
    if exitcode == 0:
        # A worker returns 0 only after a stop request, which here came to it directly.
        return "stopped on a SIGTERM or SIGINT sent to it directly (exit code 0)"
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return f"was killed by {name}"
    return f"failed with exit code {exitcode} (its error is logged above)"


def warn_short_stall_limit(config: WorkerConfig) -> None:
    """Warn once when /healthz would fail during a pause that the worker rides out by design."""
    longest_pause = config.delivery_timeout * config.delivery_attempts + config.max_batch_delay
    if config.health_stall_seconds < longest_pause:
        logger.warning(
            "%s is below the longest pause that a worker survives by "
            "design (delivery retries plus the batch delay, %.0f s): /healthz fails during a "
            "broker outage of that length; raise it above %.0f s unless that is the intent",
            format_option(config, "health_stall_seconds", f"{config.health_stall_seconds:g}"),
            longest_pause,
            longest_pause,
        )


def serve_metrics(
    address: str,
    port: int,
    health: HealthSource | None = None,
    name: str = "--metrics-address",
) -> ThreadingWSGIServer:
    """Start the aggregate /metrics server; an address that cannot be bound is named as such.

    `serve_aggregate` reports every bind failure as a port problem, but an address that does not
    resolve, or that belongs to no interface of this machine, needs another --metrics-address.
    """
    try:
        server, _thread = serve_aggregate(address, port, health)
    except ConfigError as error:
        cause = error.__cause__
        if not isinstance(cause, OSError) or not _is_bad_address(cause):
            raise
        raise _bad_address_error(address, name, cause) from cause
    return server


def check_metrics_port(config: WorkerConfig) -> None:
    """Bind the metrics address and port of `config` once and release them, so that `run`
    rejects a port in use before it creates topics or the state directory.

    Raises the `ConfigError` that `serve_metrics` raises for the same failure. Another process
    may still take the port before the pool binds it, and the pool then stops with that error.
    """
    address, port = config.metrics_address, config.metrics_port
    if not port:
        return
    try:
        infos = socket.getaddrinfo(address, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, _type, _protocol, _name, socket_address = infos[0]
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            # The metrics server binds with SO_REUSEADDR (http.server.HTTPServer), so a port
            # that only has connections in TIME_WAIT passes here as it passes there.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(socket_address)
    except OSError as error:
        if _is_bad_address(error):
            name = source_of(config, "metrics_address")
            raise _bad_address_error(address, name, error) from error
        reason = "is already in use" if error.errno == errno.EADDRINUSE else f"failed ({error})"
        raise ConfigError(
            f"metrics port {format_host_port(address, port)} {reason}: pass --metrics-port N, "
            "or 0 to turn the endpoint off"
        ) from error


def _is_bad_address(error: OSError) -> bool:
    """Return whether a bind failed on the address (it does not resolve, or it belongs to no
    interface of this machine) rather than on the port."""
    return isinstance(error, socket.gaierror) or error.errno == errno.EADDRNOTAVAIL


def _bad_address_error(address: str, name: str, error: OSError) -> ConfigError:
    return ConfigError(
        f"{format_setting(name, repr(address))} is invalid ({error.strerror or error}): pass "
        "an address of this machine, such as 127.0.0.1 or 0.0.0.0"
    )


def run_pool(config: WorkerConfig, log_level: int = logging.INFO) -> int:
    """Run the pool with SIGTERM and SIGINT forwarded to the workers; return the exit code.

    It leaves both signals ignored, because only the exit of the process follows: a late
    second Ctrl-C would otherwise end it with a signal status in place of the pool's exit code
    (`hiertcn.signals.ignore_signals`).
    """
    pool = Pool(config, log_level)
    for signum in STOP_SIGNALS:
        signal.signal(signum, pool.request_stop)
    try:
        return pool.run()
    finally:
        ignore_signals()
