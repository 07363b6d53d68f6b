"""Tests of the demo's metrics-port check on real sockets of 127.0.0.1."""

from __future__ import annotations

import socket

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
