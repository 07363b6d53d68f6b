"""The alert HiertcnPartitionsUnassigned on a real Prometheus server: it turns pending while the
pools own fewer partitions than the input topic has, and stays inactive when they own all.

The test starts /usr/bin/prometheus on 127.0.0.1 and is skipped where it is not installed.
"""

from __future__ import annotations

import time

import pytest
from prometheus_client import CollectorRegistry, start_http_server

from ops.prometheus.run import DEFAULT_BINARY, DEFAULT_RULE_FILE, PrometheusConfig, PrometheusServer
from stream.metrics import create_metrics

ALERT = "HiertcnPartitionsUnassigned"


def alert_state(server: PrometheusServer, alert: str = ALERT) -> str:
    """Return the state of the alert rule `alert`: inactive, pending or firing."""
    for group in server.api("/api/v1/rules")["groups"]:
        for rule in group["rules"]:
            if rule["name"] == alert:
                return rule["state"]
    raise AssertionError(f"{alert} not loaded")


def wait_for_state(
    server: PrometheusServer, state: str, timeout_s: float = 30.0, alert: str = ALERT
) -> str:
    """Wait until `alert` is in `state`, at most `timeout_s`; return the state it is in."""
    deadline = time.monotonic() + timeout_s
    current = alert_state(server, alert)
    while current != state and time.monotonic() < deadline:
        time.sleep(0.5)
        current = alert_state(server, alert)
    return current


@pytest.mark.skipif(not DEFAULT_BINARY.is_file(), reason=f"{DEFAULT_BINARY} not installed")
@pytest.mark.timeout(120)
def test_unassigned_partition_makes_alert_pending() -> None:
    registry = CollectorRegistry()
    metrics = create_metrics(registry)
    metrics.partitions_assigned.set(3)
    metrics.input_partitions.set(3)
    exporter, _thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    config = PrometheusConfig(
        targets=(f"127.0.0.1:{exporter.server_port}",),
        scrape_interval_s=0.5,
        rule_files=(DEFAULT_RULE_FILE,),
    )
    try:
        with PrometheusServer(config) as server:
            server.wait_for_samples("hiertcn_input_partitions == 3")
            assert wait_for_state(server, "inactive") == "inactive"
            # A partition added to the topic that no worker has picked up yet.
            metrics.input_partitions.set(4)
            server.wait_for_samples("hiertcn_input_partitions == 4")

            assert wait_for_state(server, "pending") == "pending"

            metrics.partitions_assigned.set(4)
            server.wait_for_samples("hiertcn_partitions_assigned == 4")
            assert wait_for_state(server, "inactive") == "inactive"
    finally:
        exporter.shutdown()
        exporter.server_close()
