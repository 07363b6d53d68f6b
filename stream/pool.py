"""The worker pool: N worker processes in one consumer group, and the metrics endpoint.

The parent process starts the workers with the multiprocessing `spawn` start method, so each
worker opens the model bundle, the LMDB environment and its Kafka clients itself (none of them
survives a fork). The parent serves the aggregate of every worker's metrics, forwards SIGTERM and
SIGINT to the workers, and waits for them. It restarts nothing: a worker that exits while the
pool is not stopping is logged with its exit code, and the pool stops the others and exits
non-zero, unless `WorkerConfig.keep_going` lets the remaining workers take over its partitions.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import sys
from collections.abc import MutableMapping
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from types import FrameType

from stream.config import WorkerConfig
from stream.errors import StreamError
from stream.metrics import (
    mark_process_dead,
    prepare_multiprocess_dir,
    remove_multiprocess_dir,
    serve_aggregate,
)

logger = logging.getLogger(__name__)

# Environment variables that set the thread count of numpy's BLAS library (OpenBLAS, MKL or one
# built with OpenMP), read once when a worker process imports numpy.
BLAS_THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_NUM_THREADS")

# Seconds the pool waits at least for its workers to finish their batch and leave the group after
# a stop request, before it kills them. `stop_timeout` adds the longest delivery wait.
STOP_TIMEOUT_SECONDS = 60.0


def stop_timeout(config: WorkerConfig) -> float:
    """Return the seconds a worker may take to stop: the base wait plus its longest delivery
    wait, because a stopping worker commits what is pending only after its delivery."""
    return STOP_TIMEOUT_SECONDS + config.delivery_timeout * config.delivery_attempts


def _worker_main(config: WorkerConfig, index: int, threads: int, log_level: int) -> None:
    """Entry point of one spawned worker process."""
    from export.errors import ExportError
    from statestore.errors import StateStoreError
    from stream.cli import configure_logging
    from stream.worker import run_worker

    configure_logging(1 if log_level <= logging.DEBUG else 0)
    try:
        code = run_worker(config, index, threads)
    except (StreamError, ExportError, StateStoreError) as error:
        logger.error("worker %d failed: %s", index, error)
        code = error.exit_code
    except KeyboardInterrupt:
        code = 130
    except Exception:
        logger.exception("worker %d failed", index)
        code = 1
    sys.exit(code)


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

    def __init__(self, config: WorkerConfig, log_level: int = logging.INFO) -> None:
        self.config = config
        self.log_level = log_level
        self.children: list[BaseProcess] = []
        self._stopping = False

    def request_stop(self, signum: int | None = None, frame: FrameType | None = None) -> None:
        """Ask every worker to finish its batch and stop (the SIGTERM and SIGINT handler)."""
        if not self._stopping:
            logger.info("stop requested (signal %s): stopping %d workers", signum,
                        len(self.children))  # fmt: skip
        self._stopping = True
        for child in self.children:
            if child.is_alive() and child.pid is not None:
                os.kill(child.pid, signal.SIGTERM)

    def run(self) -> int:
        """Run the pool until it is stopped or a worker fails; return the exit code."""
        metrics_dir = prepare_multiprocess_dir()
        server = None
        try:
            if self.config.metrics_port:
                server, _thread = serve_aggregate(
                    self.config.metrics_address, self.config.metrics_port
                )
            self._start_children()
            return self._watch()
        finally:
            self._stop_children()
            if server is not None:
                server.shutdown()
                server.server_close()
            remove_multiprocess_dir(metrics_dir)

    def _start_children(self) -> None:
        context = multiprocessing.get_context("spawn")
        # ONNX Runtime threads per process, so that the pool does not oversubscribe the cores.
        threads = max(1, (os.cpu_count() or 1) // self.config.processes)
        single_threaded_blas(os.environ)
        for index in range(self.config.processes):
            child = context.Process(
                target=_worker_main,
                args=(self.config, index, threads, self.log_level),
                name=f"hiertcn-worker-{index}",
            )
            child.start()
            self.children.append(child)
            logger.info("started worker %d (pid %d)", index, child.pid)

    def _index(self, child: BaseProcess) -> int:
        """Return the worker number of a child process, as in "started worker N"."""
        return self.children.index(child)

    def _watch(self) -> int:
        """Wait for the workers; return 0 when all stopped on request, else 1."""
        running = {child.sentinel: child for child in self.children}
        failed = False
        while running:
            for sentinel in wait(list(running), timeout=1.0):
                child = running.pop(sentinel)  # type: ignore[call-overload]
                child.join()
                mark_process_dead(child.pid)  # type: ignore[arg-type]
                if self._stopping and child.exitcode == 0:
                    logger.info("worker %d (pid %d) stopped", self._index(child), child.pid)
                    continue
                failed = True
                logger.error(
                    "worker %d (pid %d) exited with code %s%s",
                    self._index(child),
                    child.pid,
                    child.exitcode,
                    "" if self._stopping else " while the pool was running",
                )
                if not self._stopping and not self.config.keep_going:
                    logger.error("stopping the pool because a worker exited (see above)")
                    self.request_stop()
            if not running and not self._stopping:
                logger.error("every worker has exited")
                failed = True
        return 1 if failed else 0

    def _stop_children(self) -> None:
        """Stop workers that are still running: SIGTERM, then SIGKILL after the timeout."""
        for child in self.children:
            if child.is_alive() and child.pid is not None:
                os.kill(child.pid, signal.SIGTERM)
        timeout = stop_timeout(self.config)
        for child in self.children:
            child.join(timeout)
            if child.is_alive():
                logger.error("worker %d (pid %d) did not stop within %.0f s: killing it",
                             self._index(child), child.pid, timeout)  # fmt: skip
                child.kill()
                child.join()


def run_pool(config: WorkerConfig, log_level: int = logging.INFO) -> int:
    """Run the pool with SIGTERM and SIGINT forwarded to the workers; return the exit code."""
    pool = Pool(config, log_level)
    previous = {
        signum: signal.signal(signum, pool.request_stop)
        for signum in (signal.SIGTERM, signal.SIGINT)
    }
    try:
        return pool.run()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
