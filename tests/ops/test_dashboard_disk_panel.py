"""The dashboard panel of the state directory's disk, and the layout of ops/grafana/dashboard.json.

tests/integration/test_dashboard.py evaluates every panel's queries on a real Prometheus server.
These checks need no server.
"""

from __future__ import annotations

import json
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest

from stream.metrics import create_metrics

DASHBOARD = Path(__file__).resolve().parents[2] / "ops" / "grafana" / "dashboard.json"
DISK_PANEL = "State directory disk"
DISK_GAUGES = ("hiertcn_state_disk_free_bytes", "hiertcn_state_disk_size_bytes")


def load_panels() -> list[dict]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))["panels"]


def test_disk_panel_queries_both_gauges() -> None:
    (panel,) = [panel for panel in load_panels() if panel["title"] == DISK_PANEL]
    expressions = [target["expr"] for target in panel["targets"]]

    for gauge in DISK_GAUGES:
        assert any(gauge in expr for expr in expressions), f"{DISK_PANEL} does not show {gauge}"
    assert panel["fieldConfig"]["defaults"]["unit"] == "bytes"
    assert all('instance=~"$instance"' in expr for expr in expressions)


def test_disk_gauges_exported_by_worker() -> None:
    registry = CollectorRegistry()
    create_metrics(registry)

    text = generate_latest(registry).decode()

    for gauge in DISK_GAUGES:
        assert f"\n{gauge} 0.0" in text, f"{gauge} missing"


def test_panels_have_unique_ids() -> None:
    ids = [panel["id"] for panel in load_panels()]

    assert len(ids) == len(set(ids))


def test_panels_do_not_overlap() -> None:
    panels = load_panels()
    for index, first in enumerate(panels):
        a = first["gridPos"]
        for second in panels[index + 1 :]:
            b = second["gridPos"]
            apart = (
                a["x"] + a["w"] <= b["x"]
                or b["x"] + b["w"] <= a["x"]
                or a["y"] + a["h"] <= b["y"]
                or b["y"] + b["h"] <= a["y"]
            )
            assert apart, f"panels {first['title']!r} and {second['title']!r} overlap"
