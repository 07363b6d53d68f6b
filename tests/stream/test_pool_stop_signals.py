"""Stop signals after the first one, and stop signals during a start, in the pool and a worker.

The pool tests run stand-in workers (`tests/stream/test_pool.py`); the worker tests run a
`Worker` with fakes. tests/integration/test_worker_stop_signals.py sends the signals to a real
pool on a broker.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from stream.config import WorkerConfig
from stream.pool import PendingStop, Pool
from stream.worker import install_signal_handlers
from tests.stream.test_pool_orphans import _loop_ready_worker, signal_handlers  # noqa: F401
from tests.stream.test_worker import FakeProducer, make_worker


def _ignore_sigterm() -> None:
    """A stand-in worker whose stop hangs: it ignores SIGTERM, as one stuck in a system call."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    time.sleep(60)
    sys.exit(3)


class StandInPool(Pool):
    """A pool of two stand-in workers that run `target`."""

    target: Callable[[], None] = staticmethod(_ignore_sigterm)

    def _start_children(self) -> None:
        context = multiprocessing.get_context("spawn")
        for _index in range(self.config.processes):
            child = context.Process(target=self.target)
            child.start()
            self.children.append(child)


def _wait_until_ignoring_sigterm(pool: Pool) -> None:
    """Wait until every stand-in of `pool` ignores SIGTERM, which /proc/PID/status shows."""
    deadline = time.monotonic() + 60
    for child in pool.children:
        while time.monotonic() < deadline:
            status = Path(f"/proc/{child.pid}/status").read_text()
            ignored = int(status.split("SigIgn:")[1].split()[0], 16)
            if ignored & (1 << (signal.SIGTERM - 1)):
                break
            time.sleep(0.05)


def _pool(tmp_path: Path, target: Callable[[], None]) -> StandInPool:
    config = WorkerConfig(
        brokers="127.0.0.1:1",
        bundle=tmp_path / "bundle",
        processes=2,
        metrics_port=0,
        state_dir=tmp_path / "state",
    )
    pool = StandInPool(config)
    pool.target = target  # type: ignore[method-assign]
    return pool


def _run_with_signals(pool: Pool, *signums: int) -> int:
    """Run `pool`, and call its signal handler with each of `signums`, 0.2 s apart, once its
    stand-ins ignore SIGTERM."""

    def send() -> None:
        while len(pool.children) < pool.config.processes:
            time.sleep(0.05)
        _wait_until_ignoring_sigterm(pool)
        for signum in signums:
            pool.request_stop(signum)
            time.sleep(0.2)

    sender = threading.Thread(target=send)
    sender.start()
    try:
        return pool.run()
    finally:
        sender.join()


def _errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR]


def test_second_signal_kills_stopping_workers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="stream.pool")
    pool = _pool(tmp_path, _ignore_sigterm)

    started = time.monotonic()
    code = _run_with_signals(pool, signal.SIGTERM, signal.SIGINT)

    # The stop timeout is 60 s or more, and the second signal ends the stop at once.
    assert time.monotonic() - started < 30
    assert code == 130
    assert _errors(caplog) == []
    messages = [record.getMessage() for record in caplog.records]
    assert "stopping the pool (SIGTERM received): stopping 2 running workers. Another " in (
        "\n".join(messages)
    )
    forced = [message for message in messages if "SIGINT received after SIGTERM" in message]
    assert len(forced) == 2
    assert forced[0].startswith(
        "SIGINT received after SIGTERM while the pool stops: killing 2 workers "
    )
    assert "A restart publishes again the outputs of their batches" in forced[0]
    assert forced[1] == "pool exits with 130: SIGINT received after SIGTERM, workers killed"
    assert sum(message.endswith(") killed") for message in messages) == 2


def test_second_sigterm_gives_143(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="stream.pool")
    pool = _pool(tmp_path, _ignore_sigterm)

    code = _run_with_signals(pool, signal.SIGINT, signal.SIGTERM, signal.SIGTERM)

    assert code == 143
    assert _errors(caplog) == []
    forced = [r.getMessage() for r in caplog.records if "killing 2 workers" in r.getMessage()]
    assert len(forced) == 1, "a third signal changes nothing"
    assert forced[0].startswith("SIGTERM received after SIGINT while the pool stops")


def test_second_signal_spares_finished_workers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="stream.pool")
    pool = _pool(tmp_path, _ignore_sigterm)
    pool._start_children()
    _wait_until_ignoring_sigterm(pool)
    # As if both workers had finished their stop and were only exiting.
    pool.finished[0] = 1
    pool.finished[1] = 1
    try:
        pool.request_stop(signal.SIGINT)
        pool.request_stop(signal.SIGINT)
        alive = [child.is_alive() for child in pool.children]
    finally:
        for child in pool.children:
            child.kill()
            child.join()

    assert alive == [True, True]
    messages = [record.getMessage() for record in caplog.records]
    assert "SIGINT received again: every worker has stopped, the pool exits" in messages
    assert not any("killing" in message for message in messages)


def test_signal_after_worker_exit_does_not_kill(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="stream.pool")
    pool = _pool(tmp_path, _ignore_sigterm)
    pool.children = [multiprocessing.get_context("spawn").Process(target=_ignore_sigterm)]
    pool.children[0].start()
    _wait_until_ignoring_sigterm(pool)
    try:
        pool.request_stop()  # as after a worker's exit
        pool.request_stop(signal.SIGTERM)
        alive = pool.children[0].is_alive()
    finally:
        pool.children[0].kill()
        pool.children[0].join()

    assert alive
    messages = [record.getMessage() for record in caplog.records]
    assert "stopping the pool (a worker exited): stopping 1 running workers" in messages
    assert (
        "SIGTERM received while the pool stops after a worker exit: another SIGTERM or SIGINT "
        "kills the workers still running"
    ) in messages
    assert not any("killing" in message for message in messages)


def test_stop_before_start_starts_no_worker(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.INFO, logger="stream.pool")
    config = WorkerConfig(
        brokers="127.0.0.1:1",
        bundle=tmp_path / "bundle",
        processes=2,
        metrics_port=0,
        state_dir=tmp_path / "state",
    )
    pool = Pool(config)
    monkeypatch.setattr("stream.bundle_watch.watch_bundle_directory", lambda directory: None)
    monkeypatch.setattr("stream.pool.single_threaded_blas", lambda environ: None)

    pool.request_stop(signal.SIGTERM)
    code = pool.run()

    assert code == 0
    assert pool.children == []
    messages = [record.getMessage() for record in caplog.records]
    assert "the pool is stopping: 2 of 2 workers not started" in messages


def test_pending_stop_keeps_first_signal() -> None:
    pending = PendingStop()

    pending.record(signal.SIGINT, None)
    pending.record(signal.SIGTERM, None)

    assert pending.signum == signal.SIGINT


def test_pending_stop_skips_group_join(
    caplog: pytest.LogCaptureFixture,
    signal_handlers: None,  # noqa: F811
) -> None:
    worker, consumer = _loop_ready_worker()
    subscribed: list[str] = []
    consumer.subscribe = lambda *args, **kwargs: subscribed.append("subscribe")  # type: ignore[attr-defined]
    pending = PendingStop()
    pending.record(signal.SIGINT, None)

    with caplog.at_level(logging.INFO, logger="stream.worker"):
        install_signal_handlers(worker, pending)
        worker.run()

    assert subscribed == []
    assert consumer.calls == ["unsubscribe", "close"]
    messages = [record.getMessage() for record in caplog.records]
    assert "received SIGINT: finishing the batch in flight" in messages[0]
    assert messages[1].endswith(") stopping before it joined the group")
    assert messages[-1].endswith(") stopped")


def test_worker_logs_first_of_many_stop_signals(caplog: pytest.LogCaptureFixture) -> None:
    # One Ctrl-C gives a worker the terminal's SIGINT and the SIGTERM that the pool forwards.
    worker = make_worker(FakeProducer())

    with caplog.at_level(logging.INFO, logger="stream.worker"):
        worker.request_stop(signal.SIGINT)
        worker.request_stop(signal.SIGTERM)
        worker.request_stop(signal.SIGINT)

    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 1
    assert "received SIGINT: finishing the batch in flight" in messages[0]


def test_pool_exit_signal_stops_worker(caplog: pytest.LogCaptureFixture) -> None:
    # getppid() still names the pool while the pool's other threads exit.
    worker = make_worker(FakeProducer())
    worker.pool_pid = os.getppid()

    with caplog.at_level(logging.INFO, logger="stream.worker"):
        worker.stop_on_pool_exit(signal.SIGUSR2)
        worker.request_stop(signal.SIGTERM)

    assert worker.pool_exited()
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 1
    assert messages[0].endswith(
        f"its pool process (pid {os.getppid()}) has exited, so nothing serves its metrics or "
        "stops it any more: finishing the batch in flight, then stopping"
    )


def test_pool_exit_during_stop_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    worker = make_worker(FakeProducer())
    worker.pool_pid = os.getppid()

    with caplog.at_level(logging.INFO, logger="stream.worker"):
        worker.request_stop(signal.SIGTERM)
        worker.stop_on_pool_exit(signal.SIGUSR2)
        worker.stop_on_pool_exit(signal.SIGUSR2)

    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 2
    assert "received SIGTERM: finishing the batch in flight" in messages[0]
    assert messages[1].endswith(
        "has exited, so nothing serves its metrics or stops it any more: stopping"
    )
