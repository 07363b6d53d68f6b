"""A worker pool in a process of its own, for tests that kill the pool's parent process.

Run as `python -m tests.stream.pool_process BUNDLE STATE_DIR GROUP` from the repository root. It
runs a pool of two real workers against 127.0.0.1:1, where no broker listens, so the workers
load the bundle, open the state store, take the pool lock and turn their main loops without
partitions. The pool logs "started worker N (pid P)" for each worker to stderr.
"""

from __future__ import annotations

import sys
from pathlib import Path

from hiertcn.command_line import configure_logging
from stream.config import WorkerConfig
from stream.pool import run_pool

# No broker listens on port 1 of the loopback address.
UNREACHABLE_BROKER = "127.0.0.1:1"


def main(bundle: str, state_dir: str, group: str) -> int:
    configure_logging(0)
    config = WorkerConfig(
        brokers=UNREACHABLE_BROKER,
        bundle=Path(bundle),
        state_dir=Path(state_dir),
        group_id=group,
        processes=2,
        metrics_port=0,
        state_sync=False,
    )
    return run_pool(config)


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
