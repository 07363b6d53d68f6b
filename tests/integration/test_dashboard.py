"""The Grafana dashboard against a real Prometheus server scraping the worker's metrics."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import msgpack
import pytest

from ops.prometheus.run import DEFAULT_BINARY, PrometheusConfig, PrometheusServer, free_port
from tests.integration.dashboard_queries import (
    load_dashboard,
    panel_queries,
    queries_without_data,
)
from tests.integration.fixtures_stream import (
    WorkerRun,
    make_events,
    make_topics,
    produce_raw,
    start_worker,
    stream_bundle,  # noqa: F401 - pytest fixture
    worker_runs,  # noqa: F401 - pytest fixture
)
from tests.integration.standin_exporter import StandInWorkerExporter

REPO_ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_CONFIG = REPO_ROOT / "ops" / "prometheus" / "prometheus.yml"
# Scrapes every 0.5 s; the rate window spans many of them, so every rate has two or more samples.
SCRAPE_INTERVAL_S = 0.5
RATE_INTERVAL = "30s"
# The worker run publishes events in chunks over about 8 s, so every rate spans several scrapes.
WORKER_EVENTS = 480
CHUNK_EVENTS = 30
CHUNK_PAUSE_S = 0.5
WORKER_RATE_INTERVAL = "1m"
METRIC_NAME = re.compile(r"\bhiertcn_\w+")
# The series names that prometheus_client exposes for each metric type.
SERIES_SUFFIXES = {
    "counter": ("_total",),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count"),
}
REQUIRED_PANELS = (
    "Throughput",
    "End-to-end latency",
    "Batch size",
    "Inference time by graph",
    "Consumer lag per partition",
    "Dead letters by reason",
    "Sessions closed by trigger",
    "Live recall@$k",
    "Live reciprocal rank",
)


def require_prometheus() -> None:
    if not DEFAULT_BINARY.is_file():
        pytest.fail(
            f"{DEFAULT_BINARY} not found: install the Debian package prometheus "
            "(bash ops/system-deps.sh does it as root)"
        )


def worker_series_names() -> set[str]:
    """Return the series names of the worker metrics, such as hiertcn_batch_seconds_sum, and of
    the heartbeat gauge that the pool adds."""
    registry = StandInWorkerExporter().registry
    return {
        family.name + suffix
        for family in registry.collect()
        for suffix in SERIES_SUFFIXES[family.type]
    }


@pytest.fixture
def prometheus_on_standin() -> Iterator[PrometheusServer]:
    """A Prometheus server that has scraped the stand-in exporter for a few seconds."""
    require_prometheus()
    exporter = StandInWorkerExporter()
    endpoint = exporter.start()
    config = PrometheusConfig(targets=(endpoint,), scrape_interval_s=SCRAPE_INTERVAL_S)
    try:
        with PrometheusServer(config) as server:
            server.wait_for_samples('up{job="hiertcn-worker"} == 1')
            server.wait_for_samples("increase(hiertcn_outputs_produced_total[30s]) > 0")
            # Two more scrapes, so every labelled series has samples on both sides of a change.
            time.sleep(4 * SCRAPE_INTERVAL_S)
            yield server
    finally:
        exporter.stop()


def test_dashboard_has_required_panels() -> None:
    titles = [panel["title"] for panel in load_dashboard()["panels"]]
    for title in REQUIRED_PANELS:
        assert title in titles, f"panel {title!r} missing from ops/grafana/dashboard.json"


def test_dashboard_latency_panel_shows_p50_p95_p99() -> None:
    queries = [q for q in panel_queries(load_dashboard()) if q.title == "End-to-end latency"]
    quantiles = sorted(re.search(r"histogram_quantile\(([\d.]+)", q.expr).group(1) for q in queries)
    assert quantiles == ["0.5", "0.95", "0.99"]


def test_dashboard_uses_only_worker_metric_names() -> None:
    known = worker_series_names()
    for query in panel_queries(load_dashboard()):
        for name in METRIC_NAME.findall(query.expr):
            assert name in known, f"panel {query.title!r} uses unknown metric {name}"


def test_prometheus_config_is_valid() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool not found: install the Debian package prometheus")
    completed = subprocess.run(
        [promtool, "check", "config", str(PROMETHEUS_CONFIG)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr


def test_dashboard_queries_return_data_from_standin(
    prometheus_on_standin: PrometheusServer,
) -> None:
    missing = queries_without_data(load_dashboard(), prometheus_on_standin, RATE_INTERVAL)
    assert not missing, "dashboard queries without data:\n" + "\n".join(missing)


def publish_steadily(bootstrap: str, topic: str, events: Sequence[dict[str, Any]]) -> None:
    """Publish `events` in chunks with pauses, each chunk followed by one message that is not
    msgpack, so outputs, dead letters and latencies grow across many scrapes."""
    for start in range(0, len(events), CHUNK_EVENTS):
        chunk = events[start : start + CHUNK_EVENTS]
        messages = [(e["user"].encode(), msgpack.packb(e)) for e in chunk]
        messages.append((b"u0", b"\xc1 is never valid msgpack"))
        produce_raw(bootstrap, topic, messages)
        time.sleep(CHUNK_PAUSE_S)


def test_dashboard_queries_return_data_from_worker(
    kafka_bootstrap: str,
    unique_topic: Callable[[str], str],
    stream_bundle: Path,  # noqa: F811
    worker_runs: list[WorkerRun],  # noqa: F811
    tmp_path: Path,
) -> None:
    require_prometheus()
    topics = make_topics(kafka_bootstrap, unique_topic, partitions=3)
    metrics_port = free_port()
    config = PrometheusConfig(
        targets=(f"127.0.0.1:{metrics_port}",), scrape_interval_s=SCRAPE_INTERVAL_S
    )
    with PrometheusServer(config) as prometheus:
        run = start_worker(
            kafka_bootstrap,
            stream_bundle,
            topics,
            tmp_path / "state",
            tmp_path / "worker.log",
            ["--metrics-port", str(metrics_port), "--processes", "2", "--no-state-sync"],
        )
        worker_runs.append(run)
        prometheus.wait_for_samples('up{job="hiertcn-worker"} == 1', timeout_s=60)

        events = make_events(users=30, count=WORKER_EVENTS, seed=3)
        publisher = threading.Thread(
            target=publish_steadily, args=(kafka_bootstrap, topics.input, events)
        )
        publisher.start()
        publisher.join()
        prometheus.wait_for_samples(
            f"hiertcn_outputs_produced_total >= {WORKER_EVENTS}", timeout_s=60
        )
        time.sleep(4 * SCRAPE_INTERVAL_S)

        missing = queries_without_data(load_dashboard(), prometheus, WORKER_RATE_INTERVAL)
        run.signal(signal.SIGTERM)
        assert run.wait() == 0, run.log()
    assert not missing, "dashboard queries without data:\n" + "\n".join(missing)
