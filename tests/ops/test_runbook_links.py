"""Every alert rule links to its own section of docs/runbook.md, and that section exists."""

from __future__ import annotations

import re
from pathlib import Path

from tests.ops.test_prometheus_rules import load_rules

RUNBOOK = Path(__file__).resolve().parents[2] / "docs" / "runbook.md"
RUNBOOK_PREFIX = "docs/runbook.md#"
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*$")


def heading_anchor(title: str) -> str:
    """Return the anchor that GitHub gives a Markdown heading: lower case, punctuation other
    than hyphens and underscores removed, spaces turned into hyphens."""
    slug = re.sub(r"[^\w\- ]", "", title.strip().lower())
    return slug.replace(" ", "-")


def runbook_headings(text: str) -> list[tuple[int, str, str]]:
    """Return (level, title, anchor) of each heading outside fenced code blocks, in order.

    A repeated anchor gets `-1`, `-2` and so on appended, as on GitHub.
    """
    headings = []
    seen: dict[str, int] = {}
    in_fence = False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            in_fence = not in_fence
            continue
        match = HEADING.match(line)
        if in_fence or match is None:
            continue
        anchor = heading_anchor(match.group(2))
        count = seen.get(anchor, 0)
        seen[anchor] = count + 1
        unique = f"{anchor}-{count}" if count else anchor
        headings.append((len(match.group(1)), match.group(2), unique))
    return headings


def alert_sections() -> dict[str, str]:
    """Return the anchors of the level-3 headings under the runbook's "Alerts" heading."""
    sections: dict[str, str] = {}
    inside = False
    for level, title, anchor in runbook_headings(RUNBOOK.read_text(encoding="utf-8")):
        if level <= 2:
            inside = title == "Alerts"
        elif level == 3 and inside:
            sections[anchor] = title
    return sections


def test_heading_anchor_follows_github() -> None:
    assert heading_anchor("HiertcnPoolDown") == "hiertcnpooldown"
    assert heading_anchor("Upgrade the model: same sizes and catalog") == (
        "upgrade-the-model-same-sizes-and-catalog"
    )
    assert heading_anchor("The pool exited with status 1") == "the-pool-exited-with-status-1"


def test_every_alert_has_runbook_url() -> None:
    for rule in load_rules():
        url = rule.get("annotations", {}).get("runbook_url")
        assert url, f"{rule['alert']} has no runbook_url annotation"
        assert url.startswith(RUNBOOK_PREFIX), f"{rule['alert']}: {url} is not {RUNBOOK_PREFIX}..."


def test_runbook_urls_point_at_alert_sections() -> None:
    sections = alert_sections()
    for rule in load_rules():
        anchor = rule["annotations"]["runbook_url"].removeprefix(RUNBOOK_PREFIX)
        assert anchor in sections, f"{rule['alert']}: no section #{anchor} under Alerts in runbook"
        assert sections[anchor] == rule["alert"], f"#{anchor} is titled {sections[anchor]!r}"


def test_runbook_has_no_section_of_unknown_alert() -> None:
    alerts = {rule["alert"] for rule in load_rules()}

    assert set(alert_sections().values()) == alerts
