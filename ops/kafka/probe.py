"""Check that a Kafka broker responds to a Metadata request, using the Python standard library.

kafka.sh runs this while the broker starts, before any project environment exists:

    python3 ops/kafka/probe.py 127.0.0.1:9092 [--timeout 2]

It sends one Metadata request (API key 3, version 4, no topics) and exits 0 when the response
lists at least one broker, 1 otherwise, printing the reason to standard error.
"""

from __future__ import annotations

import argparse
import socket
import struct
import sys

METADATA_API_KEY = 3
# Kafka 4.1.1 serves Metadata versions 0 to 13, as its ApiVersions response lists. Version 4
# predates the flexible encoding (version 9 and later), so it needs no tagged fields.
METADATA_VERSION = 4
CORRELATION_ID = 7
CLIENT_ID = b"hiertcn-probe"


class ProbeError(Exception):
    """The broker did not return a usable Metadata response."""


def encode_request() -> bytes:
    """Encode a Metadata v4 request for no topics, with a version 1 request header."""
    header = struct.pack(
        ">hhih", METADATA_API_KEY, METADATA_VERSION, CORRELATION_ID, len(CLIENT_ID)
    )
    # topics: an empty array, because null requests every topic; then allow_auto_topic_creation.
    body = struct.pack(">ib", 0, 0)
    payload = header + CLIENT_ID + body
    return struct.pack(">i", len(payload)) + payload


def read_exactly(sock: socket.socket, size: int) -> bytes:
    """Read `size` bytes or raise ProbeError when the broker closes the connection first."""
    chunks = []
    remaining = size
    while remaining > 0:
        chunk = sock.recv(remaining)
        if not chunk:
            raise ProbeError("the broker closed the connection before the response was complete")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def count_brokers(response: bytes) -> int:
    """Return the number of brokers in a Metadata v4 response body (after the size field)."""
    correlation_id, _throttle_ms, broker_count = struct.unpack_from(">iii", response, 0)
    if correlation_id != CORRELATION_ID:
        raise ProbeError(f"response correlation id {correlation_id}, expected {CORRELATION_ID}")
    return broker_count


def probe(host: str, port: int, timeout: float) -> int:
    """Send one Metadata request to host:port and return the number of brokers it lists."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(encode_request())
        (size,) = struct.unpack(">i", read_exactly(sock, 4))
        return count_brokers(read_exactly(sock, size))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bootstrap", help="broker address as HOST:PORT")
    parser.add_argument("--timeout", type=float, default=2.0, help="socket timeout in seconds")
    args = parser.parse_args()

    host, _, port = args.bootstrap.rpartition(":")
    try:
        brokers = probe(host, int(port), args.timeout)
    except (OSError, ProbeError, struct.error) as error:
        print(f"Metadata request to {args.bootstrap} failed: {error}", file=sys.stderr)
        return 1
    if brokers < 1:
        print(f"Metadata response from {args.bootstrap} lists no broker yet", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
