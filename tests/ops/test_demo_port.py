"""Tests of the demo's metrics-port check on real sockets of 127.0.0.1."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from ops.demo.run import check_port_free


def test_listening_port_rejected() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]

        with pytest.raises(SystemExit, match=f"127.0.0.1:{port} is already in use"):
            check_port_free(port)


def test_time_wait_port_accepted() -> None:
    # The side that closes first keeps its end in TIME_WAIT, as a stopped metrics server does.
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        accepted, _ = listener.accept()
        accepted.close()
        client.recv(1)
        client.close()

    check_port_free(port)


def test_taken_port_exits_2_without_run_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from ops.demo.run import main

    out = tmp_path / "run"
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]

        code = main(["--out", str(out), "--metrics-port", str(port)])

    assert code == 2
    assert f"127.0.0.1:{port} is already in use" in capsys.readouterr().err
    assert not out.exists()


def test_missing_data_exits_2_without_run_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from ops.demo.run import main

    out = tmp_path / "run"

    code = main(["--out", str(out), "--data", str(tmp_path / "nope.csv")])

    assert code == 2
    assert "nope.csv not found: check DATA=" in capsys.readouterr().err
    assert not out.exists()
