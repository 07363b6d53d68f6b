"""Worker metrics: names on a fresh registry, and the multiprocess aggregate of the pool."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest

from stream.metrics import create_metrics

# The names that ops/grafana's dashboard queries.
DASHBOARD_METRICS = (
    "hiertcn_events_consumed_total",
    "hiertcn_outputs_produced_total",
    "hiertcn_dead_letters_total",
    "hiertcn_batch_size_events",
    "hiertcn_batch_seconds",
    "hiertcn_inference_seconds",
    "hiertcn_end_to_end_latency_seconds",
    "hiertcn_sessions_closed_total",
    "hiertcn_state_read_seconds",
    "hiertcn_state_write_seconds",
    "hiertcn_consumer_lag_messages",
    "hiertcn_live_predictions_total",
    "hiertcn_live_hits_total",
    "hiertcn_live_reciprocal_rank_sum",
    "hiertcn_partitions_assigned",
    "hiertcn_paused_partitions",
    "hiertcn_workers_running",
    "hiertcn_kafka_errors_total",
    "hiertcn_delivery_retries_total",
    "hiertcn_states_reset_total",
    "hiertcn_bundle_info",
    "hiertcn_state_users",
    "hiertcn_state_map_size_bytes",
    "hiertcn_state_map_used_bytes",
    "hiertcn_state_data_bytes",
    "hiertcn_state_disk_free_bytes",
    "hiertcn_state_disk_size_bytes",
    "hiertcn_changelog_records_restored_total",
    "hiertcn_changelog_restore_seconds",
    "hiertcn_input_partitions",
)


def test_metric_names_match_dashboard() -> None:
    registry = CollectorRegistry()
    metrics = create_metrics(registry)
    metrics.events_consumed.labels("0").inc()
    metrics.outputs_produced.labels("event").inc()
    metrics.dead_letters.labels("invalid_ts").inc(2)
    metrics.inference_seconds.labels("session_step").observe(0.01)
    metrics.sessions_closed.labels("gap").inc()
    metrics.consumer_lag.labels("0").set(5)
    metrics.live_hits.labels("10").inc()
    metrics.kafka_errors.labels("_TRANSPORT").inc()
    metrics.bundle_info.labels("0123456789ab").set(1)

    text = generate_latest(registry).decode()

    for name in DASHBOARD_METRICS:
        assert f"\n{name}" in text or text.startswith(name), f"{name} missing"
    assert 'hiertcn_dead_letters_total{reason="invalid_ts"} 2.0' in text


_CHILD = textwrap.dedent(
    """
    import sys
    from stream.metrics import create_metrics
    metrics = create_metrics(None)
    metrics.events_consumed.labels("0").inc(int(sys.argv[1]))
    metrics.partitions_assigned.set(2)
    metrics.workers_running.set(1)
    metrics.consumer_lag.labels("0").set(int(sys.argv[1]))
    """
)


def test_pool_aggregate_sums_processes(tmp_path: Path) -> None:
    from prometheus_client import multiprocess

    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    for count in ("3", "4"):
        subprocess.run([sys.executable, "-c", _CHILD, count], env=env, check=True)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(tmp_path))

    text = generate_latest(registry).decode()

    assert 'hiertcn_events_consumed_total{partition="0"} 7.0' in text
    # The live modes drop a process only when mark_process_dead removes its files, and these
    # children exited without that, so both still count.
    assert "hiertcn_partitions_assigned 4.0" in text
    assert "hiertcn_workers_running 2.0" in text
    assert 'hiertcn_consumer_lag_messages{partition="0"} 4.0' in text


_SERVING_CHILD = textwrap.dedent(
    """
    import sys
    from stream.metrics import create_metrics
    metrics = create_metrics(None)
    metrics.bundle_info.labels("0123456789ab").set(1)
    metrics.state_users.set(int(sys.argv[1]))
    metrics.state_map_used.set(4096 * int(sys.argv[1]))
    metrics.input_partitions.set(6)
    """
)


def test_pool_aggregate_reports_serving_gauges_once(tmp_path: Path) -> None:
    from prometheus_client import multiprocess

    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    # Two workers of one pool read the same bundle, state store and topic.
    for users in ("500", "502"):
        subprocess.run([sys.executable, "-c", _SERVING_CHILD, users], env=env, check=True)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(tmp_path))

    text = generate_latest(registry).decode()

    assert 'hiertcn_bundle_info{version="0123456789ab"} 1.0' in text
    assert "hiertcn_state_users 502.0" in text
    assert "hiertcn_state_map_used_bytes 2.056192e+06" in text
    assert "hiertcn_input_partitions 6.0" in text


def test_end_to_end_latency_resolves_outages() -> None:
    registry = CollectorRegistry()
    metrics = create_metrics(registry)

    metrics.end_to_end_latency.observe(45.0)

    name = "hiertcn_end_to_end_latency_seconds_bucket"
    assert registry.get_sample_value(name, {"le": "30.0"}) == 0.0
    assert registry.get_sample_value(name, {"le": "60.0"}) == 1.0
    assert registry.get_sample_value(name, {"le": "600.0"}) == 1.0
