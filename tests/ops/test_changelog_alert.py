"""The alert HiertcnChangelogRestoreSlow on a real Prometheus server: it fires once the restores
of the last 15 minutes took more than 120 s on average, and stays inactive for quick ones.

The test starts /usr/bin/prometheus on 127.0.0.1 and is skipped where it is not installed.
"""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, start_http_server

from ops.prometheus.run import DEFAULT_BINARY, DEFAULT_RULE_FILE, PrometheusConfig, PrometheusServer
from stream.metrics import create_metrics
from tests.ops.test_partition_alert import wait_for_state

ALERT = "HiertcnChangelogRestoreSlow"


@pytest.mark.skipif(not DEFAULT_BINARY.is_file(), reason=f"{DEFAULT_BINARY} not installed")
@pytest.mark.timeout(120)
def test_slow_restores_fire_and_quick_ones_do_not() -> None:
    registry = CollectorRegistry()
    metrics = create_metrics(registry)
    exporter, _thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    config = PrometheusConfig(
        targets=(f"127.0.0.1:{exporter.server_port}",),
        scrape_interval_s=0.5,
        rule_files=(DEFAULT_RULE_FILE,),
    )
    try:
        with PrometheusServer(config) as server:
            server.wait_for_samples("hiertcn_changelog_restore_seconds_count == 0")
            metrics.changelog_restore_seconds.observe(2.0)
            server.wait_for_samples("hiertcn_changelog_restore_seconds_count == 1")
            assert wait_for_state(server, "inactive", alert=ALERT) == "inactive"

            metrics.changelog_restore_seconds.observe(400.0)
            server.wait_for_samples("hiertcn_changelog_restore_seconds_count == 2")

            assert wait_for_state(server, "firing", alert=ALERT) == "firing"
    finally:
        exporter.shutdown()
        exporter.server_close()
