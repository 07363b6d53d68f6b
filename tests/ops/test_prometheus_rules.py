"""The example alert rules of ops/prometheus/rules: syntax, metric names, and loading them into a
real Prometheus server that scrapes the worker's metric objects.

The server tests start /usr/bin/prometheus on 127.0.0.1 and are skipped where it is not installed.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from ops.prometheus.run import DEFAULT_BINARY, DEFAULT_RULE_FILE, PrometheusConfig, PrometheusServer
from tests.integration.standin_exporter import StandInWorkerExporter

PROMETHEUS_CONFIG = Path(__file__).resolve().parents[2] / "ops" / "prometheus" / "prometheus.yml"
METRIC_NAME = re.compile(r"\bhiertcn_\w+")
SERIES_SUFFIXES = {
    "counter": ("_total",),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count"),
}
# The conditions that the example rules must cover, by alert name.
EXPECTED_ALERTS = {
    "HiertcnPoolDown",
    "HiertcnWorkersNotRunning",
    "HiertcnWorkerHeartbeatStale",
    "HiertcnPartitionsUnassigned",
    "HiertcnConsumerLagGrowing",
    "HiertcnDeadLetterRate",
    "HiertcnKafkaErrors",
    "HiertcnDeliveryRetries",
    "HiertcnLateEvents",
    "HiertcnChangelogRestoreSlow",
    "HiertcnStateDiskLow",
}


def load_rules() -> list[dict]:
    with DEFAULT_RULE_FILE.open(encoding="utf-8") as file:
        groups = yaml.safe_load(file)["groups"]
    return [rule for group in groups for rule in group["rules"]]


def exported_series() -> set[str]:
    """Return the series names of the worker metrics and of the gauges the pool adds."""
    registry = StandInWorkerExporter().registry
    return {
        family.name + suffix
        for family in registry.collect()
        for suffix in SERIES_SUFFIXES[family.type]
    }


def test_rules_cover_expected_alerts() -> None:
    assert {rule["alert"] for rule in load_rules()} == EXPECTED_ALERTS


def test_rules_use_only_exported_metrics() -> None:
    known = exported_series()
    for rule in load_rules():
        names = METRIC_NAME.findall(rule["expr"])
        assert names or "up{" in rule["expr"], f"{rule['alert']} names no metric"
        for name in names:
            assert name in known, f"alert {rule['alert']} uses unknown metric {name}"


def test_promtool_accepts_rules_and_config() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool not found: install the Debian package prometheus")
    for command in (
        ["check", "rules", str(DEFAULT_RULE_FILE)],
        ["check", "config", str(PROMETHEUS_CONFIG)],
    ):
        completed = subprocess.run(
            [promtool, *command], capture_output=True, text=True, check=False
        )
        assert completed.returncode == 0, completed.stdout + completed.stderr
    # The configuration loads the rule file through its glob.
    assert "SUCCESS: 1 rule files found" in completed.stdout


@pytest.mark.skipif(not DEFAULT_BINARY.is_file(), reason=f"{DEFAULT_BINARY} not installed")
@pytest.mark.timeout(120)
def test_prometheus_loads_and_evaluates_rules() -> None:
    exporter = StandInWorkerExporter()
    endpoint = exporter.start()
    config = PrometheusConfig(
        targets=(endpoint,), scrape_interval_s=0.5, rule_files=(DEFAULT_RULE_FILE,)
    )
    try:
        with PrometheusServer(config) as server:
            server.wait_for_samples('up{job="hiertcn-worker"} == 1')
            deadline = time.monotonic() + 30
            while True:
                rules = [
                    rule
                    for group in server.api("/api/v1/rules")["groups"]
                    for rule in group["rules"]
                ]
                evaluated = [rule for rule in rules if rule["lastEvaluation"][:4] != "0001"]
                if len(evaluated) == len(rules) or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
    finally:
        exporter.stop()

    assert {rule["name"] for rule in rules} == EXPECTED_ALERTS
    for rule in rules:
        assert rule["health"] == "ok", f"{rule['name']}: {rule.get('lastError')}"
    assert len(evaluated) == len(rules)
