"""The scrape targets during a switch of pools (docs/runbook.md, "Switch to a new pool without a
pause") on a real Prometheus server that runs this repository's prometheus.yml and alert rules.

Stand-in metrics endpoints play the old pool on the static target and the new pool on the port
that a file in targets/ adds. The test starts /usr/bin/prometheus on 127.0.0.1 and is skipped
where it is not installed.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, start_http_server

from ops.prometheus.run import DEFAULT_BINARY, PrometheusConfig, PrometheusServer, free_port
from tests.integration.standin_exporter import StandInWorkerExporter

PROMETHEUS_DIR = Path(__file__).resolve().parents[2] / "ops" / "prometheus"
STATIC_TARGET = "127.0.0.1:9100"
# The repository's intervals are 5 s. 1 s keeps the test short and changes no rule.
INTERVALS = ("scrape_interval: 5s", "evaluation_interval: 5s")


class RepositoryPrometheus(PrometheusServer):
    """A Prometheus server that runs a copy of ops/prometheus/prometheus.yml and its rules, with
    the static target moved to `static_target` and 1 s intervals."""

    def __init__(self, work_dir: Path, static_target: str) -> None:
        super().__init__(PrometheusConfig(targets=(), work_dir=work_dir))
        self.static_target = static_target

    def start(self) -> str:
        work_dir = self.config.work_dir
        assert work_dir is not None
        text = (PROMETHEUS_DIR / "prometheus.yml").read_text()
        assert STATIC_TARGET in text and all(interval in text for interval in INTERVALS)
        text = text.replace(STATIC_TARGET, self.static_target)
        for interval in INTERVALS:
            text = text.replace(interval, interval.replace("5s", "1s"))
        shutil.copytree(PROMETHEUS_DIR / "rules", work_dir / "rules")
        (work_dir / "targets").mkdir()
        config_path = work_dir / "prometheus.yml"
        config_path.write_text(text)

        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self._work_dir = work_dir
        command = [
            str(self.config.binary),
            f"--config.file={config_path}",
            f"--storage.tsdb.path={work_dir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ]
        with self.log_path.open("wb") as log:
            self._process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        self._wait_ready()
        return self.url


def pool_down_states(server: PrometheusServer) -> dict[str, str]:
    """Return the state (pending or firing) of HiertcnPoolDown by instance."""
    alerts = server.api("/api/v1/alerts")["alerts"]
    return {
        alert["labels"]["instance"]: alert["state"]
        for alert in alerts
        if alert["labels"]["alertname"] == "HiertcnPoolDown"
    }


def wait_until(condition: Any, timeout_s: float, description: str) -> float:
    """Poll `condition()` until it is true, and return the seconds it took."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {description}")
        time.sleep(0.25)
    return time.monotonic() - started


def is_up(server: PrometheusServer, target: str) -> bool:
    return bool(server.query(f'up{{instance="{target}"}} == 1'))


def has_target(server: PrometheusServer, target: str) -> bool:
    active = server.api("/api/v1/targets")["activeTargets"]
    return any(entry["labels"]["instance"] == target for entry in active)


@pytest.fixture
def exporters() -> Iterator[list[StandInWorkerExporter]]:
    started: list[StandInWorkerExporter] = []
    yield started
    for exporter in started:
        exporter.stop()


@pytest.mark.skipif(not DEFAULT_BINARY.is_file(), reason=f"{DEFAULT_BINARY} not installed")
@pytest.mark.timeout(180)
def test_switch_keeps_both_pools_scraped(
    tmp_path: Path, exporters: list[StandInWorkerExporter]
) -> None:
    old = StandInWorkerExporter()
    exporters.append(old)
    old_target = old.start()
    new = StandInWorkerExporter()
    exporters.append(new)
    new_target = new.start()

    with RepositoryPrometheus(tmp_path / "prometheus", old_target) as server:
        wait_until(lambda: is_up(server, old_target), 30, f"a scrape of {old_target}")

        # Step 2: a file in targets/ adds the new pool's port without a restart.
        switch_file = tmp_path / "prometheus" / "targets" / "switch.yml"
        switch_file.write_text(f'- targets: ["{new_target}"]\n')
        seconds = wait_until(lambda: is_up(server, new_target), 45, f"a scrape of {new_target}")
        print(f"{new_target} scraped {seconds:.1f} s after targets/switch.yml was written")

        # Step 3: the old pool exits, and HiertcnPoolDown turns pending for its port only.
        old.stop()
        wait_until(
            lambda: pool_down_states(server).get(old_target) == "pending",
            30,
            f"HiertcnPoolDown pending for {old_target}",
        )
        assert new_target not in pool_down_states(server)

        # Step 4: a pool takes the old port back, and the extra target goes.
        port = int(old_target.rsplit(":", 1)[1])
        back, _thread = start_http_server(port, addr="127.0.0.1", registry=CollectorRegistry())
        try:
            wait_until(
                lambda: old_target not in pool_down_states(server),
                30,
                f"HiertcnPoolDown resolved for {old_target}",
            )
            switch_file.unlink()
            wait_until(
                lambda: not has_target(server, new_target),
                45,
                f"{new_target} dropped from the targets",
            )
            assert pool_down_states(server) == {}
        finally:
            back.shutdown()
            back.server_close()
