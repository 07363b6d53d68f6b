"""Write an experiment's rows as a Markdown table and as JSON."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

METRICS = ("recall@1", "recall@5", "recall@10", "recall@20", "mrr", "mrp")


def _format_cell(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:.4f}" if abs(value) < 100 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """Format `rows` as a Markdown table with one column per key of `columns`."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_format_cell(row.get(name, "")) for name in columns) + " |")
    return "\n".join(lines)


def write_report(
    out_dir: Path,
    name: str,
    title: str,
    rows: Sequence[dict[str, Any]],
    columns: Sequence[str],
    setup: dict[str, Any],
    notes: Sequence[str] = (),
) -> Path:
    """Write `name.md` (title, table, set-up) and `name.json` (rows and set-up) into `out_dir`.

    `notes` are lines that go under the table of `name.md`, such as the `pool:` lines. Blank
    lines separate them, because Markdown reads a line right below a table as another row.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    body = "\n\n".join([markdown_table(rows, columns), *notes])
    markdown = f"## {title}\n\n{body}\n\nSet-up: `{json.dumps(setup, sort_keys=True)}`\n"
    path = out_dir / f"{name}.md"
    path.write_text(markdown, encoding="utf-8")
    payload = {"title": title, "setup": setup, "rows": list(rows)}
    (out_dir / f"{name}.json").write_text(
        json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8"
    )
    logger.info("wrote %s and %s.json", path, name)
    return path


def split_shared_settings(
    settings: Sequence[dict[str, Any]],
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Split equal-keyed setting dicts into the values they share and, per dict, the others.

    Nested dicts (the loss settings inside the training settings) are split key by key, so a
    loss comparison lists only the loss name per variant.
    """
    shared: dict[str, Any] = {}
    changed: list[dict[str, Any]] = [{} for _ in settings]
    for key in settings[0]:
        values = [entry.get(key) for entry in settings]
        if all(isinstance(value, dict) for value in values):
            inner_shared, inner_changed = split_shared_settings(values)
            if inner_shared:
                shared[key] = inner_shared
            for target, inner in zip(changed, inner_changed, strict=True):
                if inner:
                    target[key] = inner
        elif all(value == values[0] for value in values):
            shared[key] = values[0]
        else:
            for target, value in zip(changed, values, strict=True):
                target[key] = value
    return shared, changed
