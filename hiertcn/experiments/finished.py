"""The record of a finished experiment variant, so that `hiertcn experiment --resume` keeps it.

`run_variant` writes `variant.json` into the variant's folder as its last step, after best.pt and
metrics.json, so the file marks a complete variant. It stores the settings that trained the
variant and the numbers of its table row that best.pt does not keep (epoch times, input bytes).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from hiertcn.errors import ConfigError

logger = logging.getLogger(__name__)

VARIANT_FILE = "variant.json"
# The parts of the settings that must match for a finished variant to be kept.
SETTING_KEYS = ("split", "model", "training", "data")


def variant_settings(
    split: str, model: dict[str, Any], training: dict[str, Any], data: dict[str, object]
) -> dict[str, Any]:
    """Return the settings of a variant as they read back from JSON (tuples become lists)."""
    settings = {"split": split, "model": model, "training": training, "data": data}
    return json.loads(json.dumps(settings))


def save_finished(run_dir: Path, settings: dict[str, Any], row: dict[str, Any]) -> Path:
    """Write the record of a finished variant: its settings and its timing numbers."""
    path = run_dir / VARIANT_FILE
    temporary = path.with_name(f".{VARIANT_FILE}.tmp")
    temporary.write_text(json.dumps({**settings, "row": row}, indent=2) + "\n", encoding="utf-8")
    temporary.replace(path)
    return path


def load_finished(run_dir: Path, settings: dict[str, Any]) -> dict[str, Any] | None:
    """Return the row numbers of the finished variant in `run_dir`, or None when it is unfinished.

    Raises ConfigError when the variant finished with other settings, because keeping it would
    mix two configurations in one table.
    """
    path = run_dir / VARIANT_FILE
    if not path.is_file() or not (run_dir / "best.pt").is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        row = dict(record["row"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        logger.warning("%s cannot be read (%s), so the variant is trained again", path, error)
        return None
    changed = [key for key in SETTING_KEYS if record.get(key) != settings[key]]
    if changed:
        raise ConfigError(
            f"--resume: the finished variant in {run_dir} was trained with other "
            f"{' and '.join(changed)} settings than this command gives: rerun the command that "
            "made it, or pass --force to replace the earlier run"
        )
    return row


def finished_variants(runs_dir: Path) -> list[Path]:
    """Return the folders of the finished variants under `runs_dir`, sorted by name."""
    if not runs_dir.is_dir():
        return []
    return sorted(path.parent for path in runs_dir.glob(f"*/{VARIANT_FILE}"))
