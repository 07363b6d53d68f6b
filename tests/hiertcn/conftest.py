"""Fixtures of the hiertcn tests."""

from __future__ import annotations

import resource
from collections.abc import Iterator
from pathlib import Path

import pytest

# Room for the allocations of a test above the address space the process uses when it starts.
ADDRESS_SPACE_HEADROOM = 4 << 30


def _address_space_bytes() -> int:
    """Return the virtual memory size of this process, from /proc/self/status (Linux)."""
    for line in Path("/proc/self/status").read_text(encoding="ascii").splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("/proc/self/status has no VmSize line")


@pytest.fixture
def address_space_cap() -> Iterator[None]:
    """Cap the address space of this process during the test, then restore the limit.

    A test that passes a huge --batch-size then fails with MemoryError when the batch is not
    capped, in place of filling the machine's memory.
    """
    if not Path("/proc/self/status").is_file():
        pytest.skip("needs /proc/self/status to size the cap")
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = _address_space_bytes() + ADDRESS_SPACE_HEADROOM
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
