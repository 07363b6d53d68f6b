"""Workers whose pool process was killed: they stop, and hold the pool lock until they do.

A SIGKILL of the pool's parent leaves its workers to the kernel, which makes pid 1 (or a
subreaper) their parent. Each worker notices that by os.getppid() and by the SIGTERM of
prctl(PR_SET_PDEATHSIG), and stops as on SIGTERM. Each also holds `pool.lock` itself, so a pool
of another consumer group stays rejected while any of them runs.

These tests run real pools of two workers against an address where no broker listens
(`tests/stream/pool_process.py`); tests/integration/test_worker_orphans.py runs one on a broker.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from statestore import StoreInUseError
from statestore.pool_lock import lock_pool
from stream.config import WorkerConfig
from stream.pool import POOL_EXIT_SIGNAL, _worker_main
from stream.worker import Worker
from tests.stream.test_worker import ClosingConsumer, FakeProducer, _partition_metadata, make_worker

REPO_ROOT = Path(__file__).resolve().parents[2]
# Seconds for a pool to start both workers, each of which loads the bundle and opens the store.
START_TIMEOUT_S = 60.0
# Seconds within which an orphaned worker must have exited.
ORPHAN_EXIT_S = 10.0
_STARTED = re.compile(r"worker (\d) \(pid (\d+)\) started on")


class PoolProcess:
    """A pool of `tests.stream.pool_process` in its own process group, with its log file."""

    def __init__(self, bundle: Path, state_dir: Path, group: str, log_path: Path) -> None:
        self.log_path = log_path
        env = {key: value for key, value in os.environ.items() if not key.startswith("HIERTCN_")}
        env["PYTHONPATH"] = str(REPO_ROOT)
        env["TMPDIR"] = str(log_path.parent)  # the pool's metrics folder
        with log_path.open("ab") as log:
            command = [sys.executable, "-m", "tests.stream.pool_process", str(bundle)]
            self.process = subprocess.Popen(
                [*command, str(state_dir), group],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=REPO_ROOT,
                start_new_session=True,
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_workers(self) -> list[int]:
        """Return the pids of both workers once each has logged that its main loop started."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log()
            started = dict(_STARTED.findall(self.log()))
            if len(started) == 2:
                return [int(started[index]) for index in sorted(started)]
            time.sleep(0.2)
        raise AssertionError(f"the workers did not start within {START_TIMEOUT_S} s\n{self.log()}")

    def kill_group(self) -> None:
        """SIGKILL every process left in the pool's process group."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(30)


@pytest.fixture
def pools() -> Iterator[list[PoolProcess]]:
    """The pools that a test started; every process of their groups is killed at the end."""
    started: list[PoolProcess] = []
    yield started
    for pool in started:
        pool.kill_group()


def process_running(pid: int) -> bool:
    """Return whether `pid` runs and is no zombie; pid 1 of a container may not reap zombies."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    # The state follows the command name, which is in brackets and may contain spaces.
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_until_exited(pids: list[int], timeout_s: float) -> list[int]:
    """Wait up to `timeout_s` for every pid in `pids` to exit, and return those still running."""
    deadline = time.monotonic() + timeout_s
    running = list(pids)
    while running and time.monotonic() < deadline:
        time.sleep(0.1)
        running = [pid for pid in running if process_running(pid)]
    return running


def test_orphaned_workers_stop_and_free_lock(
    onnx_bundle_dir: Path, tmp_path: Path, pools: list[PoolProcess]
) -> None:
    state_dir = tmp_path / "state"
    pool = PoolProcess(onnx_bundle_dir, state_dir, "g1", tmp_path / "pool.log")
    pools.append(pool)
    workers = pool.wait_for_workers()

    pool.process.kill()
    pool.process.wait(10)
    killed_at = time.monotonic()

    still_running = wait_until_exited(workers, ORPHAN_EXIT_S)
    assert still_running == [], pool.log()
    assert time.monotonic() - killed_at < ORPHAN_EXIT_S
    log = pool.log()
    for index, pid in enumerate(workers):
        worker = f"worker {index} (pid {pid})"
        assert f"{worker}: its pool process (pid {pool.process.pid}) has exited" in log
        assert f"{worker} stopped" in log
    assert "Traceback" not in log

    # The last worker released the lock as it exited, so another group may take the directory.
    other = lock_pool(state_dir, "g2")
    assert other is not None
    os.close(other)


def test_other_group_rejected_while_orphan_runs(
    onnx_bundle_dir: Path, tmp_path: Path, pools: list[PoolProcess]
) -> None:
    state_dir = tmp_path / "state"
    pool = PoolProcess(onnx_bundle_dir, state_dir, "g1", tmp_path / "pool.log")
    pools.append(pool)
    workers = pool.wait_for_workers()
    # A stopped worker cannot see its pool exit, so it stays an orphan until it is continued.
    for pid in workers:
        os.kill(pid, signal.SIGSTOP)

    pool.process.kill()
    pool.process.wait(10)

    with pytest.raises(StoreInUseError) as rejected:
        lock_pool(state_dir, "g2")
    message = str(rejected.value)
    assert f"names pid {pool.process.pid}, the pool that took the lock first" in message
    assert "but that process has exited" in message
    assert f"(pids {', '.join(map(str, sorted(workers)))} in /proc/locks)" in message
    assert "by a worker of that pool that has not stopped yet" in message
    assert f"deleting {state_dir / 'pool.lock'} does not help" in message

    for pid in workers:
        os.kill(pid, signal.SIGCONT)
    assert wait_until_exited(workers, ORPHAN_EXIT_S) == [], pool.log()
    other = lock_pool(state_dir, "g2")
    assert other is not None
    os.close(other)


def _loop_ready_worker() -> tuple[Worker, ClosingConsumer]:
    """A worker with fakes whose main loop runs without a broker, started by this process's
    parent as its pool."""
    worker = make_worker(FakeProducer())
    worker.pool_pid = os.getppid()
    consumer = ClosingConsumer()
    consumer.subscribe = lambda *args, **kwargs: None  # type: ignore[attr-defined]
    consumer.list_topics = lambda topic, timeout: _partition_metadata(topic, 1)  # type: ignore[attr-defined]
    worker.consumer = consumer  # type: ignore[assignment]
    worker._idle = lambda: None  # type: ignore[method-assign]
    worker._refresh_gauges = lambda: None  # type: ignore[method-assign]
    return worker, consumer


def test_worker_stops_after_pool_exit(caplog: pytest.LogCaptureFixture) -> None:
    worker, consumer = _loop_ready_worker()
    turns: list[int] = []

    def collect() -> list[Any]:
        turns.append(len(turns))
        if len(turns) == 2:
            worker.pool_pid = os.getppid() + 1  # as if the kernel had re-parented the worker
        return []

    worker._collect = collect  # type: ignore[method-assign]
    with caplog.at_level(logging.INFO, logger="stream.worker"):
        worker.run()

    assert turns == [0, 1]
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors == [
        f"worker (pid {os.getpid()}): its pool process (pid {os.getppid() + 1}) has exited, so "
        "nothing serves its metrics or stops it any more: finishing the batch in flight, then "
        "stopping"
    ]
    assert consumer.calls == ["unsubscribe", "close"]


def test_sigterm_before_reparenting_logged_at_shutdown(caplog: pytest.LogCaptureFixture) -> None:
    # Linux sends the parent-death signal while the pool's last threads still exit, so
    # getppid() may name the pool when the SIGTERM handler runs.
    worker, _consumer = _loop_ready_worker()
    worker.committer = SimpleNamespace(close=lambda: None, failed=False)  # type: ignore[assignment]

    with caplog.at_level(logging.INFO, logger="stream.worker"):
        worker.request_stop(signal.SIGTERM)
        worker.pool_pid = os.getppid() + 1
        worker._shutdown()

    messages = [r.getMessage() for r in caplog.records]
    assert "received SIGTERM: finishing the batch in flight" in messages[0]
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert errors[0].endswith(
        "has exited, so nothing serves its metrics or stops it any more: stopping"
    )


def test_worker_without_pool_ignores_parent() -> None:
    worker = make_worker(FakeProducer())

    assert worker.pool_pid is None
    assert not worker.pool_exited()


@pytest.fixture
def signal_handlers() -> Iterator[None]:
    """Restore the handlers of the signals that `_worker_main` sets in this process."""
    signums = (signal.SIGTERM, signal.SIGINT, POOL_EXIT_SIGNAL)
    previous = {signum: signal.getsignal(signum) for signum in signums}
    yield
    for signum, handler in previous.items():
        signal.signal(signum, handler)


def test_worker_of_lost_lock_exits_2_before_load(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    signal_handlers: None,
) -> None:
    monkeypatch.setattr("hiertcn.command_line.configure_logging", lambda verbosity: None)
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    other = lock_pool(state_dir, "other-group")
    assert other is not None
    # No bundle exists, so a worker that got past the lock would fail on the bundle instead.
    config = WorkerConfig(brokers="127.0.0.1:1", bundle=tmp_path / "bundle", state_dir=state_dir)

    try:
        with (
            caplog.at_level(logging.ERROR, logger="stream.pool"),
            pytest.raises(SystemExit) as exit,
        ):
            _worker_main(config, 0, 1, logging.INFO, None, 4321)
    finally:
        os.close(other)

    assert exit.value.code == 2
    # Only the exit follows, which a late stop signal must not turn into a signal status.
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    (record,) = caplog.records
    message = record.getMessage()
    assert message.startswith("worker 0 failed: cannot join the pool lock ")
    assert "of consumer group 'hiertcn', which this worker's pool (pid 4321) took" in message
    assert "consumer group 'other-group'" in message


# Run in a process of its own, because the parent-death signal stays set for the process.
_STOP_WITH_EXITED_POOL = """
import os, signal, sys
from stream.pool import POOL_EXIT_SIGNAL, stop_with_pool
signal.signal(POOL_EXIT_SIGNAL, lambda signum, frame: sys.exit(15))
stop_with_pool(os.getpid())  # never the parent of this process, as if the pool had exited
sys.exit(0)
"""


def test_stop_with_exited_pool_signals_at_once() -> None:
    # The pool may exit before the worker requests the parent-death signal, and then the kernel
    # sends none, so the worker sends itself the pool-exit signal.
    completed = subprocess.run(
        [sys.executable, "-c", _STOP_WITH_EXITED_POOL],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert completed.returncode == 15, completed.stderr


# A worker with fakes whose pool is the process that started it. It creates the file that its
# first argument names once the parent-death signal is set.
_WORKER_OF_THREAD = """
import sys, time
from pathlib import Path
from hiertcn.command_line import configure_logging
from stream.pool import stop_with_pool
from stream.worker import install_signal_handlers
from tests.stream.test_pool_orphans import _loop_ready_worker

configure_logging(0)
worker, _consumer = _loop_ready_worker()
worker._collect = lambda: time.sleep(0.02) or []
install_signal_handlers(worker)
stop_with_pool(worker.pool_pid)
Path(sys.argv[1]).touch()
worker.run()
"""


def _start_worker_in_thread(ready: Path, log_path: Path) -> subprocess.Popen[bytes]:
    """Start `_WORKER_OF_THREAD` from a thread that exits once the worker is ready."""
    started: list[subprocess.Popen[bytes]] = []

    def start() -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
        command = [sys.executable, "-c", _WORKER_OF_THREAD, str(ready)]
        with log_path.open("wb") as log:
            started.append(
                subprocess.Popen(
                    command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT
                )
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while not ready.exists() and time.monotonic() < deadline:
            time.sleep(0.05)

    thread = threading.Thread(target=start)
    thread.start()
    thread.join()
    return started[0]


def test_pool_exit_named_while_pool_threads_exit(tmp_path: Path) -> None:
    # Linux sends the parent-death signal when the thread that started the worker exits, and
    # getppid() returns the pool's pid until the pool's last thread has exited. The threads of
    # a killed pool exit in any order, so the signal alone must tell the worker the cause. Here
    # the starting thread exits while this process runs on.
    ready = tmp_path / "ready"
    log_path = tmp_path / "worker.log"

    process = _start_worker_in_thread(ready, log_path)

    assert ready.exists(), log_path.read_text()
    assert process.wait(ORPHAN_EXIT_S) == 0, log_path.read_text()
    log = log_path.read_text()
    assert log.count(f"its pool process (pid {os.getpid()}) has exited") == 1, log
    assert "received SIGTERM" not in log
    assert f"worker (pid {process.pid}) stopped" in log
    assert "Traceback" not in log
