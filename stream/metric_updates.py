"""The worker's updates of its Prometheus metrics (`stream.metrics.WorkerMetrics`).

A batch updates the counters and histograms of what it did and the lag of its partitions. The
main loop reads the state store's size and the free space of its disk every few seconds, and a
thread of its own reads the input topic's partition count from the broker, so that a slow broker
cannot pause the loop.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lmdb
import numpy as np
from confluent_kafka import Consumer, KafkaException, Message, TopicPartition

from statestore import PartitionPosition
from statestore.errors import StateStoreError
from stream.interval import Interval
from stream.logs import RateLimitedLog
from stream.metrics import WorkerMetrics
from stream.pipeline import BatchResult, Bundle, IdleResult

if TYPE_CHECKING:
    from prometheus_client import Counter, Gauge

    from statestore import StateStore
    from stream.config import WorkerConfig

logger = logging.getLogger(__name__)

# Seconds between two readings of the state store's user count, map sizes and disk space for
# the gauges.
STORE_GAUGE_SECONDS = 5.0
# Seconds that one metadata request for the input topic's partition count may wait.
PARTITION_COUNT_TIMEOUT_SECONDS = 2.0


class MetricUpdates:
    """The metric updates of `stream.worker.Worker`, a base class of it.

    They read the worker's attributes below, and `_create_metric_updates` creates the last four.
    """

    config: WorkerConfig
    consumer: Consumer
    store: StateStore
    metrics: WorkerMetrics
    # The resolved --state-dir, whose file system the disk gauges measure.
    state_dir: Path
    top_k: int
    # Next offset and watermark of each assigned partition.
    _positions: dict[int, PartitionPosition]
    # Outputs by trigger. The session-close counter is None without --publish-on-session-close.
    _event_outputs: Counter
    _session_close_outputs: Counter | None
    # When the state store's size is due, and the log of failed readings.
    _store_gauges: Interval
    store_gauge_log: RateLimitedLog

    def _create_metric_updates(self) -> None:
        """Create the attributes of the metric updates below, from `config` and `metrics`."""
        # Outputs by trigger, created at 0 so that rates exist before the first output.
        self._event_outputs = self.metrics.outputs_produced.labels("event")
        self._session_close_outputs = (
            self.metrics.outputs_produced.labels("session_close")
            if self.config.publish_on_session_close
            else None
        )
        self._store_gauges = Interval(STORE_GAUGE_SECONDS)
        self.store_gauge_log = RateLimitedLog(
            "failed state store size readings",
            "error",
            logger=logger,
            singular="failed state store size reading",
        )

    def _observe(
        self, messages: Sequence[Message], result: BatchResult, idle: IdleResult, seconds: float
    ) -> None:
        metrics = self.metrics
        metrics.batch_size.observe(len(messages))
        metrics.batch_seconds.observe(seconds)
        self._event_outputs.inc(len(result.outputs))
        self._count_session_close_outputs(len(idle.outputs))
        metrics.states_reset.inc(result.reset + idle.reset)
        for trigger, count in result.closed.items():
            metrics.sessions_closed.labels(trigger).inc(count)
        # idle.states also contains the states that were reset, which closed no session.
        if len(idle.states) > idle.reset:
            metrics.sessions_closed.labels("timer").inc(len(idle.states) - idle.reset)
        ranks = [live[0] for live in result.live if live is not None]
        metrics.live_predictions.inc(len(ranks))
        for cutoff in live_cutoffs(self.top_k):
            metrics.live_hits.labels(str(cutoff)).inc(sum(rank <= cutoff for rank in ranks))
        metrics.live_reciprocal_rank_sum.inc(sum(1.0 / rank for rank in ranks))
        self._update_lag({m.partition(): self._positions.get(m.partition()) for m in messages})
        if logger.isEnabledFor(logging.DEBUG):
            created = [m.timestamp()[1] for m in messages if m.timestamp()[1] > 0]
            waited = time.time() * 1000 - min(created) if created else float("nan")
            logger.debug(
                "batch of %d messages: %d outputs in %.1f ms; the oldest message was created "
                "%.0f ms before the batch ended",
                len(messages),
                len(result.outputs),
                seconds * 1000,
                waited,
            )

    def _count_session_close_outputs(self, count: int) -> None:
        if count and self._session_close_outputs is not None:
            self._session_close_outputs.inc(count)

    def _update_lag(self, positions: dict[int, PartitionPosition | None]) -> None:
        topic = self.config.input_topic
        for partition, position in positions.items():
            if position is None:
                continue
            tp = TopicPartition(topic, partition)
            try:
                _low, high = self.consumer.get_watermark_offsets(tp, cached=True)
            except KafkaException as error:
                # The gauge keeps its last value until a later reading succeeds.
                logger.debug(
                    "reading the high watermark of %s[%d] for the lag gauge failed: %s",
                    topic,
                    partition,
                    error,
                )
                continue
            if high >= 0:
                lag = max(high - position.next_offset, 0)
                self.metrics.consumer_lag.labels(str(partition)).set(lag)

    def _refresh_gauges(self) -> None:
        """Read the state store's size and its disk's free space for their gauges when due."""
        if self._store_gauges.due():
            self._read_store_size()

    def _read_store_size(self) -> None:
        try:
            users = self.store.user_count()
            info = self.store.environment_info()
        except (StateStoreError, lmdb.Error) as error:
            # A gauge must not stop the worker, and the next reading may succeed.
            self.store_gauge_log.add(
                type(error).__name__,
                "reading the state store's size for the metrics failed: %s",
                error,
            )
            self.store_gauge_log.flush()
            return
        self.metrics.state_users.set(users)
        self.metrics.state_map_size.set(info["map_size"])
        self.metrics.state_map_used.set(info["used_bytes"])
        self.metrics.state_data.set(info["data_bytes"])
        # A failed store reading returns above and skips the disk until the next turn, so that
        # each turn logs at most one failure.
        self._read_state_disk()

    def _read_state_disk(self) -> None:
        try:
            free, size = state_disk_usage(self.state_dir)
        except OSError as error:
            self.store_gauge_log.add(
                type(error).__name__,
                "reading the free space of state directory %s for the metrics failed: %s",
                self.state_dir,
                error,
            )
            self.store_gauge_log.flush()
            return
        self.metrics.state_disk_free.set(free)
        self.metrics.state_disk_size.set(size)


def state_disk_usage(path: Path) -> tuple[int, int]:
    """Return the free bytes and the size in bytes of the file system that contains `path`.

    Free bytes are those that an unprivileged process such as the worker may still write
    (`f_bavail`), without the blocks reserved for root. Raises OSError, for example when `path`
    does not exist.
    """
    usage = os.statvfs(path)
    return usage.f_bavail * usage.f_frsize, usage.f_blocks * usage.f_frsize


class PartitionCountReader:
    """A daemon thread that sets `hiertcn_input_partitions` from the broker's metadata.

    A metadata request waits up to PARTITION_COUNT_TIMEOUT_SECONDS for a slow broker, and the
    worker's main loop must not wait that long. The thread reads the count at `start` and then
    every `seconds`. `stop` waits for a request in flight, and the worker calls it before it
    closes the consumer, so that no request runs on a closed consumer.
    """

    def __init__(self, consumer: Consumer, topic: str, gauge: Gauge, seconds: float) -> None:
        self.consumer = consumer
        self.topic = topic
        self.gauge = gauge
        self.seconds = seconds
        self._stopped = threading.Event()
        self._thread = threading.Thread(
            target=self._loop, name="hiertcn-partition-count", daemon=True
        )

    def start(self) -> None:
        """Start the thread, which reads the count at once."""
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread and wait for it. A reader that was never started returns at once."""
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join()

    def _loop(self) -> None:
        while not self._stopped.is_set():
            self.read()
            self._stopped.wait(self.seconds)

    def read(self) -> None:
        """Set the gauge to the input topic's partition count in the broker's metadata."""
        topic = self.topic
        try:
            metadata = self.consumer.list_topics(topic, timeout=PARTITION_COUNT_TIMEOUT_SECONDS)
        except KafkaException as error:
            logger.debug("reading the partition count of %s failed: %s", topic, error)
            return
        described = metadata.topics.get(topic)
        if described is None or described.error is not None:
            logger.debug("no partition count of %s in the metadata: %s", topic, described)
            return
        self.gauge.set(len(described.partitions))


def live_cutoffs(top_k: int) -> list[int]:
    """Return the K values of the live recall counters: 1, 5, 10 and 20 up to K, and K itself."""
    return sorted({cutoff for cutoff in (1, 5, 10, 20) if cutoff <= top_k} | {top_k})


class TimedBundle:
    """A model bundle whose two graph calls are timed into `hiertcn_inference_seconds`."""

    def __init__(self, bundle: Bundle, metrics: WorkerMetrics) -> None:
        self._bundle = bundle
        self._step_seconds = metrics.inference_seconds.labels("session_step")
        self._close_seconds = metrics.inference_seconds.labels("session_close")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._bundle, name)

    def session_step(
        self, prefix: np.ndarray, lengths: np.ndarray, state: np.ndarray
    ) -> np.ndarray:
        with self._step_seconds.time():
            return self._bundle.session_step(prefix, lengths, state)

    def session_close(self, state: np.ndarray, session_mean: np.ndarray) -> np.ndarray:
        with self._close_seconds.time():
            return self._bundle.session_close(state, session_mean)
