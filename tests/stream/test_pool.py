"""Pool settings that need no broker; tests/integration runs the pool on a real one."""

from __future__ import annotations

from stream.pool import BLAS_THREAD_VARIABLES, single_threaded_blas


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
