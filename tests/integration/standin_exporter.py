"""A stand-in for the worker's metrics endpoint: the worker's metric objects with made-up values.

It checks the dashboard's queries against the metric names and labels of `stream.metrics` without
a model bundle or a broker. It is no substitute for scraping a real worker run.
"""

from __future__ import annotations

import random
import threading
import time
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server

from stream.health import HealthReport, WorkerStatus, check_liveness, check_readiness
from stream.metrics import WorkerMetrics, create_metrics
from stream.metrics_server import HeartbeatAgeCollector

PARTITIONS = ("0", "1", "2")
DEAD_LETTER_REASONS = ("not_msgpack", "unknown_item")
TOP_K = "10"
KAFKA_ERROR_CODES = ("_TRANSPORT", "_ALL_BROKERS_DOWN")
BUNDLE_VERSION = "0123456789ab"


class _StandInHealth:
    """A pool of one worker whose heartbeat is a made-up fraction of a second old."""

    def __init__(self, rand: random.Random) -> None:
        self._random = rand

    def _workers(self, now: float) -> list[WorkerStatus]:
        last_beat = now - self._random.uniform(0.0, 0.5)
        return [WorkerStatus(index=0, pid=1, exited=False, ready=True, last_beat=last_beat)]

    def liveness(self) -> HealthReport:
        now = time.monotonic()
        return check_liveness(self._workers(now), False, 300.0, now)

    def readiness(self) -> HealthReport:
        now = time.monotonic()
        return check_readiness(self._workers(now), False, 300.0, now)


class StandInWorkerExporter:
    """Serve the worker metrics on 127.0.0.1 and update them every `interval_s` seconds."""

    def __init__(self, interval_s: float = 0.1, seed: int = 0) -> None:
        self.registry = CollectorRegistry()
        self.metrics = create_metrics(self.registry)
        self.interval_s = interval_s
        self._random = random.Random(seed)
        # The pool computes the heartbeat gauge at each scrape, as this collector does.
        self.registry.register(HeartbeatAgeCollector(_StandInHealth(self._random)))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="standin-exporter", daemon=True)
        self._server: Any = None

    def start(self) -> str:
        """Start serving and updating; return the endpoint HOST:PORT."""
        self._server, _ = start_http_server(0, addr="127.0.0.1", registry=self.registry)
        self._thread.start()
        return f"127.0.0.1:{self._server.server_port}"

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def _run(self) -> None:
        self.metrics.partitions_assigned.set(len(PARTITIONS))
        self.metrics.paused_partitions.set(0)
        self.metrics.workers_running.set(1)
        self.metrics.input_partitions.set(len(PARTITIONS))
        self.metrics.bundle_info.labels(version=BUNDLE_VERSION).set(1)
        while not self._stop.wait(self.interval_s):
            self._record_batch(self.metrics)

    def _record_batch(self, metrics: WorkerMetrics) -> None:
        """Record one made-up batch of events, as the worker would after processing it."""
        rand = self._random
        size = rand.randint(1, 64)
        metrics.batch_size.observe(size)
        metrics.batch_seconds.observe(rand.uniform(0.002, 0.05))
        metrics.inference_seconds.labels(graph="session_step").observe(rand.uniform(0.001, 0.01))
        metrics.inference_seconds.labels(graph="session_close").observe(rand.uniform(0.001, 0.005))
        metrics.state_read_seconds.observe(rand.uniform(0.0001, 0.002))
        metrics.state_write_seconds.observe(rand.uniform(0.0005, 0.005))
        for _ in range(size):
            metrics.events_consumed.labels(partition=rand.choice(PARTITIONS)).inc()
            metrics.outputs_produced.labels(trigger="event").inc()
            metrics.end_to_end_latency.observe(rand.uniform(0.005, 0.08))
            metrics.live_predictions.inc()
            rank = rand.randint(1, 50)
            metrics.live_reciprocal_rank_sum.inc(1.0 / rank)
            if rank <= int(TOP_K):
                metrics.live_hits.labels(k=TOP_K).inc()
        metrics.dead_letters.labels(reason=rand.choice(DEAD_LETTER_REASONS)).inc()
        trigger = rand.choice(("gap", "timer"))
        metrics.sessions_closed.labels(trigger=trigger).inc()
        if trigger == "timer":
            metrics.outputs_produced.labels(trigger="session_close").inc()
        for partition in PARTITIONS:
            metrics.consumer_lag.labels(partition=partition).set(rand.randint(0, 100))
        # A broker that refuses a connection now and then.
        metrics.kafka_errors.labels(code=rand.choice(KAFKA_ERROR_CODES)).inc()
        metrics.delivery_retries.inc(rand.randint(0, 2))
        metrics.late_events.inc(rand.randint(0, 1))
        metrics.states_reset.inc(rand.randint(0, 1))
        metrics.state_users.inc(size)
        metrics.state_map_size.set(1 << 30)
        metrics.state_map_used.inc(size * 512)
        metrics.state_data.inc(size * 256)
        metrics.changelog_records_restored.inc(rand.randint(0, 50))
        metrics.changelog_restore_seconds.observe(rand.random())
