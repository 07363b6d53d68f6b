"""The promtool unit tests of the alert rules (ops/prometheus/tests), which check the condition,
labels and annotations of every alert on made-up series without a Prometheus server.

The other tests check that each alert of the rules file has a case that fires and one that
stays silent, so a new rule without unit tests fails here."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPOSITORY = Path(__file__).resolve().parents[2]
UNIT_TESTS = REPOSITORY / "ops" / "prometheus" / "tests" / "hiertcn-alerts-test.yml"
RULES = REPOSITORY / "ops" / "prometheus" / "rules" / "hiertcn-alerts.yml"


def load_yaml(path: Path) -> dict[str, Any]:
    with path.open(encoding="utf-8") as file:
        return yaml.safe_load(file)


def rule_alert_names() -> set[str]:
    """Return the names of the alerting rules in RULES, leaving out recording rules."""
    groups = load_yaml(RULES)["groups"]
    return {rule["alert"] for group in groups for rule in group["rules"] if "alert" in rule}


def alert_cases() -> list[dict[str, Any]]:
    """Return every `alert_rule_test` case of UNIT_TESTS, over all its test groups."""
    groups = load_yaml(UNIT_TESTS)["tests"]
    return [case for group in groups for case in group.get("alert_rule_test", [])]


def test_promtool_rule_unit_tests_pass() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool not found: install the Debian package prometheus")

    completed = subprocess.run(
        [promtool, "test", "rules", str(UNIT_TESTS)],
        capture_output=True,
        text=True,
        check=False,
    )

    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "SUCCESS" in completed.stdout


def test_unit_tests_load_rules_file() -> None:
    rule_files = load_yaml(UNIT_TESTS)["rule_files"]
    loaded = {(UNIT_TESTS.parent / path).resolve() for path in rule_files}

    assert RULES in loaded, f"{UNIT_TESTS.name} loads {sorted(map(str, loaded))}, not {RULES}"


def test_every_alert_has_unit_case() -> None:
    tested = {case["alertname"] for case in alert_cases()}

    missing = sorted(rule_alert_names() - tested)
    assert not missing, f"alerts of {RULES.name} without a case in {UNIT_TESTS.name}: {missing}"


def test_unit_cases_name_existing_alerts() -> None:
    # promtool 2.42 passes a case that expects no alert from a misspelled alert name.
    tested = {case["alertname"] for case in alert_cases()}

    unknown = sorted(tested - rule_alert_names())
    assert not unknown, f"cases in {UNIT_TESTS.name} name alerts not in {RULES.name}: {unknown}"


def test_every_alert_fires_and_stays_silent() -> None:
    cases = alert_cases()
    firing = {case["alertname"] for case in cases if case.get("exp_alerts")}
    silent = {case["alertname"] for case in cases if not case.get("exp_alerts")}

    for alert in sorted(rule_alert_names()):
        assert alert in firing, f"{alert} has no case in {UNIT_TESTS.name} that expects it to fire"
        assert alert in silent, f"{alert} has no case in {UNIT_TESTS.name} that expects no alert"
