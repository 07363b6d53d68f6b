"""Pool settings that need no broker; tests/integration runs the pool on a real one."""

from __future__ import annotations

from pathlib import Path

from stream.config import WorkerConfig
from stream.pool import (
    BLAS_THREAD_VARIABLES,
    STOP_TIMEOUT_SECONDS,
    single_threaded_blas,
    stop_timeout,
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
