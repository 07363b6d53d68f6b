"""Pool settings that need no broker; tests/integration runs the pool on a real one."""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from stream.config import WorkerConfig, build_config
from stream.cpu_quota import available_cpus
from stream.errors import ConfigError
from stream.health import HealthReport
from stream.metrics import prepare_multiprocess_dir, remove_multiprocess_dir
from stream.pool import (
    BLAS_THREAD_VARIABLES,
    STOP_TIMEOUT_SECONDS,
    Pool,
    describe_exit,
    serve_metrics,
    single_threaded_blas,
    stop_timeout,
    warn_short_stall_limit,
)


def test_blas_gets_one_thread_by_default() -> None:
    environ: dict[str, str] = {"PATH": "/usr/bin"}

    single_threaded_blas(environ)

    assert {name: environ[name] for name in BLAS_THREAD_VARIABLES} == dict.fromkeys(
        BLAS_THREAD_VARIABLES, "1"
    )
    assert environ["PATH"] == "/usr/bin"


def test_blas_threads_chosen_by_user_are_kept() -> None:
    environ = {"OMP_NUM_THREADS": "4"}

    single_threaded_blas(environ)

    assert environ == {"OMP_NUM_THREADS": "4"}


def test_stop_timeout_covers_longest_delivery_wait() -> None:
    config = WorkerConfig(
        brokers="127.0.0.1:1", bundle=Path("b"), delivery_timeout=10.0, delivery_attempts=6
    )

    assert stop_timeout(config) == STOP_TIMEOUT_SECONDS + 60.0


def _exit_at_once() -> None:
    """A stand-in worker that stops as a worker does after a SIGTERM sent to it directly."""
    sys.exit(0)


def _exit_on_invalid_state() -> None:
    """A stand-in worker that stops as a worker does on invalid settings or state."""
    sys.exit(2)


def _ignore_sigterm() -> None:
    """A stand-in worker that hangs: it ignores SIGTERM, as one stuck in a system call would."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    time.sleep(60)
    sys.exit(3)


def _wait_for_sigterm() -> None:
    """A stand-in worker that runs until SIGTERM and then exits 0, as a worker does."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    time.sleep(60)
    sys.exit(3)


class StandInPool(Pool):
    """A pool whose worker 0 exits at once and whose other workers wait for SIGTERM."""

    first_worker = staticmethod(_exit_at_once)

    def _start_children(self) -> None:
        context = multiprocessing.get_context("spawn")
        for index in range(self.config.processes):
            target = self.first_worker if index == 0 else _wait_for_sigterm
            self.heartbeats.worker(index)  # the start time, as the real pool records it
            child = context.Process(target=target)
            child.start()
            self.children.append(child)


def _run_stand_in_pool(
    tmp_path: Path,
    keep_going: bool,
    first_worker: Callable[[], None] = _exit_at_once,
    on_pool: Callable[[Pool], None] = lambda pool: None,
) -> int:
    config = WorkerConfig(
        brokers="127.0.0.1:1",
        bundle=tmp_path / "bundle",
        processes=2,
        keep_going=keep_going,
        metrics_port=0,
        state_dir=Path("relative-state"),
    )
    pool = StandInPool(config)
    pool.first_worker = first_worker  # type: ignore[method-assign]
    on_pool(pool)
    # With --keep-going the pool runs on after worker 0 exits, until a stop request.
    stopper = threading.Timer(5.0, pool.request_stop, args=(signal.SIGTERM,))
    stopper.start()
    # The relative --state-dir resolves in tmp_path, so the pool's lock file stays out of the
    # working directory of the test run.
    previous = Path.cwd()
    os.chdir(tmp_path)
    try:
        return pool.run()
    finally:
        os.chdir(previous)
        stopper.cancel()


def test_pool_logs_absolute_state_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    caplog.set_level(logging.INFO, logger="stream.pool")

    _run_stand_in_pool(tmp_path, keep_going=False)

    expected = str((tmp_path / "relative-state").resolve())
    assert f"state directory {expected} (from --state-dir relative-state" in caplog.text


def test_pool_stopped_by_worker_exit_says_why(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="stream.pool")

    code = _run_stand_in_pool(tmp_path, keep_going=False)

    assert code == 1
    assert "worker 0 (pid " in caplog.text
    assert (
        ") stopped on a SIGTERM or SIGINT sent to it directly (exit code 0) while the pool "
        "was running: stopping the pool" in caplog.text
    )
    assert "stopping the pool (a worker exited): stopping 1 running workers" in caplog.text
    assert "signal None" not in caplog.text
    assert "exited with code 0" not in caplog.text


def test_keep_going_pool_says_how_to_restore_workers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="stream.pool")

    code = _run_stand_in_pool(tmp_path, keep_going=True)

    assert code == 1
    assert "--keep-going: the pool continues with 1 of 2 workers" in caplog.text
    assert "to get back to 2, stop the pool (SIGTERM) and start it again" in caplog.text
    assert "stopping the pool (SIGTERM received): stopping 1 running workers" in caplog.text


def test_invalid_state_stops_keep_going_pool_with_2(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="stream.pool")

    code = _run_stand_in_pool(tmp_path, keep_going=True, first_worker=_exit_on_invalid_state)

    assert code == 2
    assert (
        "failed with exit code 2 (its error is logged above) while the pool was running: "
        "stopping the pool" in caplog.text
    )
    assert "the pool continues with" not in caplog.text


@pytest.mark.parametrize(
    ("exitcode", "text"),
    [
        (0, "stopped on a SIGTERM or SIGINT sent to it directly (exit code 0)"),
        (-9, "was killed by SIGKILL"),
        (2, "failed with exit code 2 (its error is logged above)"),
    ],
)
def test_worker_exit_described(exitcode: int, text: str) -> None:
    assert describe_exit(exitcode) == text


@pytest.fixture
def metrics_dir(tmp_path: Path):
    """The multiprocess directory that the /metrics server reads, as the pool prepares it."""
    path = prepare_multiprocess_dir(tmp_path)
    yield path
    remove_multiprocess_dir(path)


def test_unresolvable_metrics_address_named(
    metrics_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail_lookup(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    # The lookup fails here without a query to any DNS server.
    monkeypatch.setattr(socket, "getaddrinfo", fail_lookup)

    with pytest.raises(ConfigError) as error_info:
        serve_metrics("999.1.1.1", 0)

    message = str(error_info.value)
    assert message.startswith(
        "--metrics-address '999.1.1.1' is invalid (Name or service not known)"
    )
    assert "--metrics-port" not in message


def test_foreign_metrics_address_named(metrics_dir: Path) -> None:
    # 192.0.2.1 is reserved for documentation (RFC 5737), so no interface of this machine has it
    # and the bind fails locally without sending anything.
    with pytest.raises(ConfigError, match=r"^--metrics-address '192\.0\.2\.1' is invalid \("):
        serve_metrics("192.0.2.1", 0)


def test_metrics_port_in_use_still_blames_port(metrics_dir: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        with pytest.raises(ConfigError, match="is already in use: pass --metrics-port N"):
            serve_metrics("127.0.0.1", port)


def test_hung_worker_killed_after_stop_timeout(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="stream.pool")

    def short_stop_timeout(pool: Pool) -> None:
        pool.stop_timeout = 1.0

    started = time.monotonic()
    code = _run_stand_in_pool(
        tmp_path, keep_going=True, first_worker=_ignore_sigterm, on_pool=short_stop_timeout
    )

    # The stop request comes after 5 s; the hung worker would sleep for 60 s.
    assert time.monotonic() - started < 30
    assert code == 1
    assert "worker 0 (pid " in caplog.text
    assert ") did not stop within 1 s: killing it" in caplog.text
    assert ") was killed by SIGKILL while the pool was stopping" in caplog.text


def test_keep_going_pool_fails_liveness_after_worker_exit(tmp_path: Path) -> None:
    reports: list[tuple[HealthReport, HealthReport]] = []

    def check_before_stop(pool: Pool) -> None:
        # Worker 0 exits at once; the stop request comes after 5 s.
        timer = threading.Timer(3.0, lambda: reports.append((pool.liveness(), pool.readiness())))
        timer.start()

    code = _run_stand_in_pool(tmp_path, keep_going=True, on_pool=check_before_stop)

    assert code == 1
    ((liveness, readiness),) = reports
    assert not liveness.ok
    assert liveness.problems[0].startswith("worker 0 (pid ")
    assert "has exited: 1 of 2 workers running" in liveness.problems[0]
    assert len(liveness.problems) == 1, "worker 1 runs and its start time is recent"
    assert not readiness.ok


def test_pool_health_ok_while_stopping(tmp_path: Path) -> None:
    config = WorkerConfig(brokers="127.0.0.1:1", bundle=tmp_path / "bundle", metrics_port=0)
    pool = Pool(config)

    pool.request_stop(signal.SIGTERM)

    assert pool.liveness().status == "stopping"
    assert pool.liveness().ok
    assert not pool.readiness().ok


def test_pool_health_counts_unstarted_workers(tmp_path: Path) -> None:
    config = WorkerConfig(
        brokers="127.0.0.1:1", bundle=tmp_path / "bundle", processes=2, metrics_port=0
    )
    pool = Pool(config)

    statuses = pool.worker_statuses()

    assert [status.pid for status in statuses] == [None, None]
    assert pool.liveness().ok
    assert pool.readiness().problems == (
        "worker 0 (not started) has not joined the consumer group yet",
        "worker 1 (not started) has not joined the consumer group yet",
    )


def test_short_stall_limit_warned(caplog: pytest.LogCaptureFixture) -> None:
    config = WorkerConfig(
        brokers="127.0.0.1:1", bundle=Path("b"), health_stall_seconds=5.0, max_batch_delay_ms=0
    )

    with caplog.at_level(logging.WARNING, logger="stream.pool"):
        warn_short_stall_limit(config)

    assert "--health-stall-seconds 5 is below the longest pause" in caplog.text
    assert "(delivery retries plus the batch delay, 60 s)" in caplog.text


def test_short_stall_limit_names_variable(caplog: pytest.LogCaptureFixture) -> None:
    environ = {"HIERTCN_HEALTH_STALL_SECONDS": "5", "HIERTCN_MAX_BATCH_DELAY_MS": "0"}
    config = build_config({"brokers": "127.0.0.1:1", "bundle": "b"}, environ)

    with caplog.at_level(logging.WARNING, logger="stream.pool"):
        warn_short_stall_limit(config)

    assert "HIERTCN_HEALTH_STALL_SECONDS=5 is below the longest pause" in caplog.text


def test_metrics_address_from_variable_named(metrics_dir: Path) -> None:
    with pytest.raises(ConfigError, match=r"^HIERTCN_METRICS_ADDRESS='192\.0\.2\.1' is invalid \("):
        serve_metrics("192.0.2.1", 0, name="HIERTCN_METRICS_ADDRESS")


def test_default_stall_limit_not_warned(caplog: pytest.LogCaptureFixture) -> None:
    config = WorkerConfig(brokers="127.0.0.1:1", bundle=Path("b"))

    with caplog.at_level(logging.WARNING, logger="stream.pool"):
        warn_short_stall_limit(config)

    assert caplog.text == ""


def _fake_cgroup(tmp_path: Path, proc_line: str, files: dict[str, str]) -> tuple[Path, Path]:
    """Write a fake cgroup mount and /proc/self/cgroup; return their paths."""
    root = tmp_path / "cgroup"
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    proc = tmp_path / "proc-cgroup"
    proc.write_text(proc_line + "\n")
    return root, proc


@pytest.mark.parametrize(
    ("proc_line", "files", "expected"),
    [
        ("0::/", {"cpu.max": "200000 100000\n"}, 2),
        ("0::/", {"cpu.max": "150000 100000\n"}, 1),
        ("0::/", {"cpu.max": "max 100000\n"}, 8),
        ("0::/pod/app", {"pod/app/cpu.max": "300000 100000\n"}, 3),
        ("0::/host/path", {"cpu.max": "400000 100000\n"}, 4),
        ("0::/pod/app", {"pod/cpu.max": "200000 100000", "pod/app/cpu.max": "max 100000"}, 2),
        ("0::/pod/app", {"pod/cpu.max": "600000 100000", "pod/app/cpu.max": "300000 100000"}, 3),
        ("0::/pod/app", {"cpu.max": "100000 100000", "pod/app/cpu.max": "500000 100000"}, 1),
        ("0::/../outside", {"cpu.max": "500000 100000"}, 5),
        ("0::/", {"cpu.max": "10000 100000\n"}, 1),
        (
            "3:cpu,cpuacct:/",
            {"cpu,cpuacct/cpu.cfs_quota_us": "200000\n", "cpu,cpuacct/cpu.cfs_period_us": "100000"},
            2,
        ),
        (
            "3:cpu,cpuacct:/",
            {"cpu,cpuacct/cpu.cfs_quota_us": "-1\n", "cpu,cpuacct/cpu.cfs_period_us": "100000"},
            8,
        ),
        (
            "3:cpu,cpuacct:/pod/app",
            {
                "cpu,cpuacct/pod/cpu.cfs_quota_us": "100000",
                "cpu,cpuacct/pod/cpu.cfs_period_us": "1e5",
            },
            1,
        ),
        ("0::/", {}, 8),
    ],
)
def test_available_cpus_capped_by_cgroup(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    proc_line: str,
    files: dict[str, str],
    expected: int,
) -> None:
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(8)))
    monkeypatch.setattr("os.cpu_count", lambda: 64)
    root, proc = _fake_cgroup(tmp_path, proc_line, files)

    assert available_cpus(root, proc) == expected


def test_available_cpus_follow_affinity(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0})
    monkeypatch.setattr("os.cpu_count", lambda: 64)
    root, proc = _fake_cgroup(tmp_path, "0::/", {"cpu.max": "400000 100000\n"})

    assert available_cpus(root, proc) == 1


def test_available_cpus_without_proc_cgroup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(3)))

    assert available_cpus(tmp_path / "none", tmp_path / "missing") == 3


def test_pool_exit_line_names_keep_going_loss(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="stream.pool")

    code = _run_stand_in_pool(tmp_path, keep_going=True)

    assert code == 1
    last = caplog.records[-1].getMessage()
    assert last.startswith("pool exits with 1: worker 0 (pid ")
    assert last.endswith(
        ") stopped on a SIGTERM or SIGINT sent to it directly (exit code 0) under --keep-going"
    )


def test_pool_exit_line_names_invalid_input(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="stream.pool")

    code = _run_stand_in_pool(tmp_path, keep_going=False, first_worker=_exit_on_invalid_state)

    assert code == 2
    last = caplog.records[-1].getMessage()
    assert last.startswith("pool exits with 2: worker 0 (pid ")
    assert last.endswith(") failed with exit code 2 (its error is logged above)")


def test_pool_exit_line_after_clean_stop(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="stream.pool")

    code = _run_stand_in_pool(tmp_path, keep_going=False, first_worker=_wait_for_sigterm)

    assert code == 0
    assert caplog.records[-1].getMessage() == "pool exits with 0: every worker stopped on request"
