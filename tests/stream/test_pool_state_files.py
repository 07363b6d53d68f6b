"""A state directory deleted under a running pool stops the pool with exit status 2.

LMDB keeps writing to the open, now unlinked, data.mdb, so every commit after the deletion would
be lost at the next restart. The pool of `tests.stream.pool_process` runs two real workers with
real LMDB stores against an address where no broker listens.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tests.stream.test_pool_orphans import PoolProcess, pools  # noqa: F401 (fixture)

# Seconds for the workers to notice the deletion (a check every second) and the pool to stop.
STOP_TIMEOUT_S = 60.0


def test_deleted_state_dir_stops_pool(
    onnx_bundle_dir: Path,
    tmp_path: Path,
    pools: list[PoolProcess],  # noqa: F811 (fixture)
) -> None:
    state_dir = tmp_path / "state"
    pool = PoolProcess(onnx_bundle_dir, state_dir, "g1", tmp_path / "pool.log")
    pools.append(pool)
    pool.wait_for_workers()

    shutil.rmtree(state_dir)
    try:
        code = pool.process.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the pool ran on without its state directory\n{pool.log()}") from None

    log = pool.log()
    assert code == 2, log
    assert f"state file {state_dir / 'data.mdb'} cannot be read (No such file or directory)" in log
    assert "Traceback" not in log
