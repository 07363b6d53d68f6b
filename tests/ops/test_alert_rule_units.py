"""The promtool unit tests of the alert rules (ops/prometheus/tests): the condition, labels and
annotations of the alerts that they cover, on made-up series, without a Prometheus server."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

UNIT_TESTS = (
    Path(__file__).resolve().parents[2] / "ops" / "prometheus" / "tests" / "hiertcn-alerts-test.yml"
)


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
