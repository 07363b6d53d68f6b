"""Prometheus metrics of the worker pool, and the multiprocess directory that they live in.

The pool runs prometheus_client in multiprocess mode: every worker process writes its values to
memory-mapped files under `PROMETHEUS_MULTIPROC_DIR`, and the parent process serves the aggregate.
prometheus_client picks its storage when the first metric is created, so `prepare_multiprocess_dir`
must run in the parent before any worker process starts (spawned processes inherit the
environment). `prepare_multiprocess_dir` creates a new directory for every run, so counters of an
earlier run never leak in.

The pool's HTTP server (`stream.metrics_server`) serves the aggregate at /metrics.

Gauges state how the processes combine: `livesum` for counts that add up across processes and
`livemax` for the lag of a partition, which the owning process reports and every other process
leaves at 0. Dead processes drop out once the parent calls `mark_process_dead`.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    multiprocess,
)

from stream.errors import ConfigError

logger = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Name prefix of the multiprocess directories, followed by the pool's process id.
MULTIPROC_PREFIX = "hiertcn-metrics-"
# Name prefix of the empty directory that `check_temporary_directory` creates and deletes at once.
TEMPORARY_PROBE_PREFIX = "hiertcn-tmp-check-"

# Seconds: from 0.5 ms (one small ONNX call) to 30 s (a broker outage).
_TIME_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
# End-to-end latency also spans broker outages and rebalances, which last up to the delivery
# wait (60 s by default) plus a session timeout (45 s), so its buckets go on to 10 minutes.
_LATENCY_BUCKETS = (*_TIME_BUCKETS, 60.0, 120.0, 300.0, 600.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
# Seconds of one changelog restore: from 10 ms (an empty partition) to 10 minutes, beyond the
# default max.poll.interval.ms of 300 s, at which the group evicts the restoring worker.
_RESTORE_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)


@dataclass(frozen=True)
class WorkerMetrics:
    """The metric objects a worker process updates; names as `create_metrics` registers them."""

    events_consumed: Counter
    outputs_produced: Counter
    dead_letters: Counter
    batch_size: Histogram
    batch_seconds: Histogram
    inference_seconds: Histogram
    end_to_end_latency: Histogram
    sessions_closed: Counter
    state_read_seconds: Histogram
    state_write_seconds: Histogram
    consumer_lag: Gauge
    live_predictions: Counter
    live_hits: Counter
    live_reciprocal_rank_sum: Counter
    partitions_assigned: Gauge
    paused_partitions: Gauge
    workers_running: Gauge
    delivery_retries: Counter
    states_reset: Counter
    kafka_errors: Counter
    late_events: Counter
    changelog_records_restored: Counter
    changelog_restore_seconds: Histogram
    bundle_info: Gauge
    state_users: Gauge
    state_map_size: Gauge
    state_map_used: Gauge
    state_data: Gauge
    state_disk_free: Gauge
    state_disk_size: Gauge
    input_partitions: Gauge


def create_metrics(registry: CollectorRegistry | None) -> WorkerMetrics:
    """Create every worker metric on `registry` (None: create them unregistered)."""
    kwargs: dict[str, Any] = {"registry": registry}
    return WorkerMetrics(
        events_consumed=Counter(
            "hiertcn_events_consumed_total",
            "Messages read from the input topic, valid or not.",
            ["partition"],
            **kwargs,
        ),
        outputs_produced=Counter(
            "hiertcn_outputs_produced_total",
            "Recommendations produced to the output topic, by trigger: event (one per accepted "
            "event) or session_close (one per timer close, with --publish-on-session-close).",
            ["trigger"],
            **kwargs,
        ),
        dead_letters=Counter(
            "hiertcn_dead_letters_total",
            "Messages sent to the dead-letter topic, by rejection reason.",
            ["reason"],
            **kwargs,
        ),
        batch_size=Histogram(
            "hiertcn_batch_size_events",
            "Messages in one batch.",
            buckets=_BATCH_BUCKETS,
            **kwargs,
        ),
        batch_seconds=Histogram(
            "hiertcn_batch_seconds",
            "Processing time of one batch in the worker thread, from decoding to the hand-over "
            "to the commit thread.",
            buckets=_TIME_BUCKETS,
            **kwargs,
        ),
        inference_seconds=Histogram(
            "hiertcn_inference_seconds",
            "Time of one ONNX Runtime call, by graph.",
            ["graph"],
            buckets=_TIME_BUCKETS,
            **kwargs,
        ),
        end_to_end_latency=Histogram(
            "hiertcn_end_to_end_latency_seconds",
            "Time from the input message's Kafka timestamp to its output being delivered.",
            buckets=_LATENCY_BUCKETS,
            **kwargs,
        ),
        sessions_closed=Counter(
            "hiertcn_sessions_closed_total",
            "Sessions closed with a GRU update, by trigger (gap or timer).",
            ["trigger"],
            **kwargs,
        ),
        state_read_seconds=Histogram(
            "hiertcn_state_read_seconds",
            "Time of one state store read transaction.",
            buckets=_TIME_BUCKETS,
            **kwargs,
        ),
        state_write_seconds=Histogram(
            "hiertcn_state_write_seconds",
            "Time of one state store write transaction of the commit thread, which may cover "
            "several batches.",
            buckets=_TIME_BUCKETS,
            **kwargs,
        ),
        consumer_lag=Gauge(
            "hiertcn_consumer_lag_messages",
            "Messages between the partition's high watermark and the next offset to process.",
            ["partition"],
            multiprocess_mode="livemax",
            **kwargs,
        ),
        live_predictions=Counter(
            "hiertcn_live_predictions_total",
            "Events scored against the user's previous recommendation.",
            **kwargs,
        ),
        live_hits=Counter(
            "hiertcn_live_hits_total",
            "Events whose item ranked within the top K of the previous recommendation.",
            ["k"],
            **kwargs,
        ),
        live_reciprocal_rank_sum=Counter(
            "hiertcn_live_reciprocal_rank_sum",
            "Sum of 1/rank of each event's item under the previous recommendation.",
            **kwargs,
        ),
        partitions_assigned=Gauge(
            "hiertcn_partitions_assigned",
            "Input partitions assigned to the pool.",
            multiprocess_mode="livesum",
            **kwargs,
        ),
        paused_partitions=Gauge(
            "hiertcn_paused_partitions",
            "Input partitions paused until pending work drains.",
            multiprocess_mode="livesum",
            **kwargs,
        ),
        workers_running=Gauge(
            "hiertcn_workers_running",
            "Worker processes of the pool that are consuming; below --processes after a worker "
            "exited under --keep-going.",
            multiprocess_mode="livesum",
            **kwargs,
        ),
        delivery_retries=Counter(
            "hiertcn_delivery_retries_total",
            "Output or dead-letter messages produced again after a failed delivery.",
            **kwargs,
        ),
        states_reset=Counter(
            "hiertcn_states_reset_total",
            "Stored user states that did not fit the bundle (another GRU state shape or D, or "
            "session item rows beyond its catalog), replaced by a new state.",
            **kwargs,
        ),
        kafka_errors=Counter(
            "hiertcn_kafka_errors_total",
            "Errors that librdkafka reported to the error callback of a worker's consumer or "
            "producer, by librdkafka error code (_TRANSPORT, _ALL_BROKERS_DOWN, ...). "
            "librdkafka retries most of them itself.",
            ["code"],
            **kwargs,
        ),
        late_events=Counter(
            "hiertcn_late_events_total",
            "Accepted events older than their partition's watermark minus the session gap, "
            "whose users' sessions the timers may have closed already: the partition is not in "
            "event-time order.",
            **kwargs,
        ),
        changelog_records_restored=Counter(
            "hiertcn_changelog_records_restored_total",
            "Records read from the changelog topic (--changelog-topic) to restore the user states "
            "and positions of partitions assigned to the worker.",
            **kwargs,
        ),
        changelog_restore_seconds=Histogram(
            "hiertcn_changelog_restore_seconds",
            "Time to restore one partition from the changelog topic: reading it up to its high "
            "watermark and writing its states and position to the state store.",
            buckets=_RESTORE_BUCKETS,
            **kwargs,
        ),
        **_serving_gauges(kwargs),
    )


def _serving_gauges(kwargs: dict[str, Any]) -> dict[str, Gauge]:
    """Create the gauges of what a pool serves: the bundle, the state store and its disk, and
    the topic.

    Every worker of a pool reads the same bundle, state directory and topic, so `livemax` gives
    the pool's value once, not once per worker.
    """
    return {
        "bundle_info": Gauge(
            "hiertcn_bundle_info",
            "1 for the version of the model bundle that the pool's workers have loaded.",
            ["version"],
            multiprocess_mode="livemax",
            **kwargs,
        ),
        "state_users": Gauge(
            "hiertcn_state_users",
            "Users with a stored state in the state store (LMDB entries of the users database), "
            "read every few seconds.",
            multiprocess_mode="livemax",
            **kwargs,
        ),
        "state_map_size": Gauge(
            "hiertcn_state_map_size_bytes",
            "Size of the state store's LMDB map, which grows on demand up to its maximum.",
            multiprocess_mode="livemax",
            **kwargs,
        ),
        "state_map_used": Gauge(
            "hiertcn_state_map_used_bytes",
            "Bytes of the state store's LMDB map in use, free pages included.",
            multiprocess_mode="livemax",
            **kwargs,
        ),
        "state_data": Gauge(
            "hiertcn_state_data_bytes",
            "Bytes of the state store's LMDB pages that hold data: the map in use less its free "
            "pages, so it falls after an evict.",
            multiprocess_mode="livemax",
            **kwargs,
        ),
        "state_disk_free": Gauge(
            "hiertcn_state_disk_free_bytes",
            "Bytes free for unprivileged users on the file system of the state directory "
            "(os.statvfs: f_bavail * f_frsize), read every few seconds.",
            multiprocess_mode="livemax",
            **kwargs,
        ),
        "state_disk_size": Gauge(
            "hiertcn_state_disk_size_bytes",
            "Size of the file system of the state directory (os.statvfs: f_blocks * f_frsize), "
            "read every few seconds.",
            multiprocess_mode="livemax",
            **kwargs,
        ),
        "input_partitions": Gauge(
            "hiertcn_input_partitions",
            "Partitions of the input topic in the broker's metadata, read as often as the "
            "consumer refreshes its metadata (60 s by default); above the sum of "
            "hiertcn_partitions_assigned, some partitions are not read.",
            multiprocess_mode="livemax",
            **kwargs,
        ),
    }


def prepare_multiprocess_dir(parent: Path | None = None) -> Path:
    """Create a fresh multiprocess directory and point `PROMETHEUS_MULTIPROC_DIR` at it.

    The name contains this process's id. Directories of earlier pools whose process no longer
    exists (a pool killed with SIGKILL cannot remove its own) are deleted first.
    """
    root = Path(parent) if parent is not None else check_temporary_directory()
    remove_orphaned_multiprocess_dirs(root)
    path = Path(tempfile.mkdtemp(prefix=f"{MULTIPROC_PREFIX}{os.getpid()}-", dir=root))
    os.environ[MULTIPROC_ENV] = str(path)
    logger.debug("prometheus multiprocess directory %s", path)
    return path


def check_temporary_directory(environ: Mapping[str, str] = os.environ) -> Path:
    """Check that the parent of the metrics directories is writable by creating a directory in it.

    Returns the parent: `TMPDIR` when set. An unwritable `TMPDIR` raises, where Python's `tempfile`
    would silently fall back to /tmp. Without `TMPDIR`, it is the first writable one of /tmp,
    /var/tmp, /usr/tmp and the working directory. Raises `ConfigError` (exit code 2) when the
    directory cannot be written, for example on a read-only root file system without a /tmp volume.
    """
    chosen = environ.get("TMPDIR")
    try:
        root = Path(chosen) if chosen else Path(tempfile.gettempdir())
        probe = tempfile.mkdtemp(prefix=TEMPORARY_PROBE_PREFIX, dir=root)
    except OSError as error:
        reason = error.strerror or str(error)
        detail = f"TMPDIR={chosen!r}: {reason}" if chosen else reason
        raise ConfigError(
            f"no writable temporary directory for the worker metrics ({detail}): mount a writable "
            "/tmp or set TMPDIR"
        ) from error
    os.rmdir(probe)
    return root


def remove_orphaned_multiprocess_dirs(root: Path) -> None:
    """Delete the multiprocess directories under `root` whose pool process has exited."""
    for path in root.glob(f"{MULTIPROC_PREFIX}*-*"):
        pid_text = path.name[len(MULTIPROC_PREFIX) :].split("-", 1)[0]
        if not pid_text.isdigit() or not path.is_dir() or _process_exists(int(pid_text)):
            continue
        logger.info("removing the metrics directory %s of exited process %s", path, pid_text)
        shutil.rmtree(path, ignore_errors=True)


def _process_exists(pid: int) -> bool:
    """Return whether a process with this id exists (one of another user counts too)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_multiprocess_dir(path: Path) -> None:
    """Delete the directory of `prepare_multiprocess_dir` and unset the environment variable."""
    if os.environ.get(MULTIPROC_ENV) == str(path):
        del os.environ[MULTIPROC_ENV]
    shutil.rmtree(path, ignore_errors=True)


def mark_process_dead(pid: int) -> None:
    """Drop a finished worker process from the `live*` gauges."""
    if MULTIPROC_ENV in os.environ:
        multiprocess.mark_process_dead(pid)
