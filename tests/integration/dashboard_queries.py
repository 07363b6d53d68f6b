"""Read the PromQL queries of ops/grafana/dashboard.json and evaluate them on Prometheus."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from ops.prometheus.run import PrometheusServer, has_number

DASHBOARD_PATH = Path(__file__).resolve().parents[2] / "ops" / "grafana" / "dashboard.json"
LABEL_VALUES = re.compile(r"label_values\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)\s*,\s*(\w+)\s*\)")


@dataclass(frozen=True)
class PanelQuery:
    """One target of a dashboard panel: the panel title, the target's refId and its PromQL."""

    title: str
    ref_id: str
    expr: str


def load_dashboard(path: Path = DASHBOARD_PATH) -> dict:
    with path.open(encoding="utf-8") as file:
        return json.load(file)


def panel_queries(dashboard: dict) -> list[PanelQuery]:
    """Return every PromQL expression of every panel, rows included, in dashboard order."""
    queries = []
    panels = list(dashboard["panels"])
    while panels:
        panel = panels.pop(0)
        panels[:0] = panel.get("panels", [])  # collapsed rows nest their panels
        for target in panel.get("targets", []):
            queries.append(PanelQuery(panel["title"], target["refId"], target["expr"]))
    return queries


def resolve_variables(dashboard: dict, server: PrometheusServer) -> dict[str, str]:
    """Choose a value for each query variable as Grafana would on opening the dashboard.

    A variable with "All" gets its allValue; one defined by `label_values(metric, label)` gets
    the first value Prometheus lists. Data source variables need no value in PromQL.
    """
    values: dict[str, str] = {}
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable["type"] != "query":
            continue
        if variable.get("includeAll"):
            values[variable["name"]] = variable["allValue"]
            continue
        definition = variable.get("definition") or variable["query"]["query"]
        match = LABEL_VALUES.fullmatch(definition.strip())
        if match is None:
            raise ValueError(f"variable {variable['name']}: unsupported query {definition!r}")
        metric, label = match.groups()
        listed = server.api(f"/api/v1/label/{label}/values", {"match[]": metric})
        values[variable["name"]] = listed[0] if listed else ""
    return values


def substitute(expr: str, variables: dict[str, str], rate_interval: str) -> str:
    """Replace Grafana's $__rate_interval and the dashboard variables ($name, ${name}) in `expr`."""
    expr = expr.replace("$__rate_interval", rate_interval)
    for name in sorted(variables, key=len, reverse=True):
        expr = expr.replace(f"${{{name}}}", variables[name]).replace(f"${name}", variables[name])
    return expr


def queries_without_data(
    dashboard: dict, server: PrometheusServer, rate_interval: str
) -> list[str]:
    """Evaluate every panel query now; return one line per query that returned no number."""
    variables = resolve_variables(dashboard, server)
    missing = []
    for query in panel_queries(dashboard):
        expr = substitute(query.expr, variables, rate_interval)
        samples = server.query(expr)
        if not any(has_number(sample) for sample in samples):
            missing.append(f"panel {query.title!r} query {query.ref_id}: {expr}")
    return missing
