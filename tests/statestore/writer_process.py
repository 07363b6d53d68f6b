"""Child processes for the multi-process statestore tests.

Run as `python -m tests.statestore.writer_process MODE STATE_DIR ...` from the repository root:

- `batches STATE_DIR USERS SYNC`: commit batch 1, 2, ... forever; every state of batch n has
  `session_count == n` and the position of batch n has `next_offset == n`. Prints `ready` after
  the first commit.
- `grow STATE_DIR PREFIX BATCHES`: open a 64 KiB map, print `ready`, wait for a line on stdin,
  then commit BATCHES batches of 50 users named PREFIX-i, so the map must grow while another
  writer grows it too.
- `fill STATE_DIR LIMIT`: lower the file-size limit to LIMIT bytes and commit batches until the
  store raises. Then print the last committed batch, and the error class and message.
- `hold STATE_DIR`: open a read transaction, print `ready` and wait in it for an hour.
- `replay STATE_DIR`: open the store with the writers lock held exclusively, as a replay does,
  commit user `replayed`, print `ready` and wait for an hour.
"""

from __future__ import annotations

import logging
import resource
import signal
import sys
import time
from pathlib import Path

from statestore import PartitionPosition, StateStore, StateStoreError, StoreConfig
from tests.statestore.helpers import make_state

TOPIC = "interactions"


def commit_batches(state_dir: Path, users: int, sync: bool) -> None:
    with StateStore(StoreConfig(path=state_dir, map_size=1 << 20, sync=sync)) as store:
        batch = 0
        while True:
            batch += 1
            states = {}
            for i in range(users):
                state = make_state(seed=i, session_length=1 + (batch + i) % 3, last_ts=batch)
                state.session_count = batch
                states[f"user{i}"] = state
            store.commit(states, {(TOPIC, 0): PartitionPosition(batch, float(batch))})
            if batch == 1:
                print("ready", flush=True)


def grow_map(state_dir: Path, prefix: str, batches: int) -> None:
    # The parent test reads the growth lines, which are INFO.
    logging.getLogger("statestore.map_size").setLevel(logging.INFO)
    config = StoreConfig(path=state_dir, map_size=64 << 10, max_map_size=256 << 20, sync=False)
    with StateStore(config) as store:
        print("ready", flush=True)
        sys.stdin.readline()  # the parent starts both writers at once
        for batch in range(batches):
            states = {f"{prefix}-{batch * 50 + i}": make_state(seed=i) for i in range(50)}
            store.commit(states, {(TOPIC, hash(prefix) % 2): PartitionPosition(batch + 1, 0.0)})


def fill_disk(state_dir: Path, limit: int, batch_size: int) -> None:
    # Without SIG_IGN, SIGXFSZ kills the process instead of failing the write with EFBIG.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    config = StoreConfig(path=state_dir, map_size=64 << 20)
    with StateStore(config) as store:
        store.commit({"seed": make_state()})
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
        batch = 0
        try:
            while True:
                batch += 1
                states = {f"b{batch}-{i}": make_state(seed=i) for i in range(batch_size)}
                store.commit(states, {(TOPIC, 0): PartitionPosition(batch, 0.0)})
        except StateStoreError as error:
            print(f"last {batch - 1}")
            print(f"error {type(error).__name__} {error}")


def hold_reader(state_dir: Path) -> None:
    with StateStore(StoreConfig(path=state_dir)) as store:

        def wait_in_transaction(_: object) -> None:
            print("ready", flush=True)
            time.sleep(3600)

        store.run(wait_in_transaction)


def hold_exclusive(state_dir: Path) -> None:
    with StateStore(StoreConfig(path=state_dir, sync=False, writer_lock="exclusive")) as store:
        store.commit({"replayed": make_state()})
        print("ready", flush=True)
        time.sleep(3600)


def main(argv: list[str]) -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    mode, state_dir = argv[0], Path(argv[1])
    if mode == "batches":
        commit_batches(state_dir, int(argv[2]), argv[3] == "sync")
    elif mode == "grow":
        grow_map(state_dir, argv[2], int(argv[3]))
    elif mode == "fill":
        fill_disk(state_dir, int(argv[2]), int(argv[3]))
    elif mode == "hold":
        hold_reader(state_dir)
    elif mode == "replay":
        hold_exclusive(state_dir)
    else:
        raise SystemExit(f"unknown mode {mode!r}: use batches, grow, fill, hold or replay")


if __name__ == "__main__":
    main(sys.argv[1:])
