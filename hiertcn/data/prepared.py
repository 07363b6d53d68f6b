"""Prepared folders: a filtered, sessionized and split log saved by `hiertcn data prepare`.

A prepared folder contains one saved `EventLog` per part (`all/`, the whole filtered log, and
`train/`, `valid/`, `test/`), `summary.json` (the `Dataset.summary` of the log) and
`prepared.json`, the manifest that records the `DataConfig` it was made with. Loading it gives
the same `Dataset`, summary included, as reading the log with those settings, so a checkpoint
trained on either one evaluates the same on the other.

The commands that take a log FILE (`train`, `evaluate`, `data stats`) take a prepared folder in
its place. They accept a data flag only when it equals the value that the folder records.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hiertcn.data.filters import FilterConfig, FilterReport
from hiertcn.data.log import EventLog
from hiertcn.data.options import GIVEN_FLAGS, DataConfig, Dataset, data_config_from_flags
from hiertcn.data.readers import ReaderConfig
from hiertcn.data.splits import SplitConfig
from hiertcn.data.vocab import ItemVocab
from hiertcn.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

PREPARED_FORMAT_VERSION = 1
MANIFEST = "prepared.json"
SUMMARY = "summary.json"
PARTS = ("all", "train", "valid", "test")

# Every data flag, and the setting of `DataConfig` that it sets.
_DATA_FLAGS: dict[str, tuple[str, Callable[[DataConfig], object]]] = {
    "--format": ("format", lambda config: config.reader.format),
    "--user-col": ("user column", lambda config: config.reader.user_col),
    "--item-col": ("item column", lambda config: config.reader.item_col),
    "--time-col": ("time column", lambda config: config.reader.time_col),
    "--event-type-col": ("event type column", lambda config: config.reader.event_type_col),
    "--event-types": ("event types", lambda config: config.reader.event_types),
    "--impressions-col": ("impressions column", lambda config: config.reader.impressions_col),
    "--impressions-sep": ("impressions separator", lambda config: config.reader.impressions_sep),
    "--no-header": ("header", lambda config: config.reader.header),
    "--delimiter": ("delimiter", lambda config: config.reader.delimiter),
    "--time-unit": ("time unit", lambda config: config.reader.time_unit),
    "--session-gap": ("session gap", lambda config: config.session_gap),
    "--min-item-count": ("min item count", lambda config: config.filters.min_item_count),
    "--min-user-events": ("min user events", lambda config: config.filters.min_user_events),
    "--max-user-events": ("max user events", lambda config: config.filters.max_user_events),
    "--split": ("split", lambda config: config.split.kind),
    "--split-seed": ("split seed", lambda config: config.split.seed),
    "--train-fraction": ("train fraction", lambda config: config.split.train_fraction),
    "--valid-fraction": ("valid fraction", lambda config: config.split.valid_fraction),
}


def is_prepared_folder(path: Path) -> bool:
    """Return whether `path` is a folder written by `hiertcn data prepare`, of any version."""
    return path.is_dir() and ((path / MANIFEST).is_file() or (path / SUMMARY).is_file())


def data_config_to_dict(config: DataConfig) -> dict[str, Any]:
    """Return a JSON-able form of `config`."""
    return {
        "path": str(config.path),
        "reader": dataclasses.asdict(config.reader),
        "session_gap": config.session_gap,
        "filters": dataclasses.asdict(config.filters),
        "split": dataclasses.asdict(config.split),
    }


def data_config_from_dict(data: dict[str, Any]) -> DataConfig:
    """Rebuild a `DataConfig` from the output of `data_config_to_dict`."""
    reader = dict(data["reader"])
    if reader.get("event_types") is not None:
        # JSON has no tuples, and ReaderConfig compares event types as a tuple.
        reader["event_types"] = tuple(reader["event_types"])
    return DataConfig(
        path=Path(data["path"]),
        reader=ReaderConfig(**reader),
        session_gap=data["session_gap"],
        filters=FilterConfig(**data["filters"]),
        split=SplitConfig(**data["split"]),
    )


def save_prepared(dataset: Dataset, config: DataConfig, out: Path) -> None:
    """Write every part, summary.json and the manifest of `dataset` under `out`.

    The manifest is removed first and written last, so a folder whose writing failed half-way is
    rejected on load in place of mixing parts of two runs.
    """
    (out / MANIFEST).unlink(missing_ok=True)
    parts = {"all": dataset.log, "train": dataset.train, "valid": dataset.valid}
    parts["test"] = dataset.test
    for name, part in parts.items():
        part.save(out / name)
    (out / SUMMARY).write_text(json.dumps(dataset.summary, indent=2), encoding="utf-8")
    manifest = {
        "format_version": PREPARED_FORMAT_VERSION,
        "parts": list(PARTS),
        "data": data_config_to_dict(config),
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")


def read_prepared_config(folder: Path) -> DataConfig:
    """Return the `DataConfig` that the prepared `folder` was made with.

    A folder from a version that wrote no manifest raises DataError, because it lacks the whole
    log and the reader flags.
    """
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        raise DataError(f"{folder} has no {MANIFEST}: {_prepare_again(folder)}")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise DataError(
            f"{manifest_path} is not valid JSON ({error.msg}): {_prepare_again(folder)}"
        ) from None
    version = manifest.get("format_version")
    if version != PREPARED_FORMAT_VERSION:
        raise DataError(
            f"{folder} has prepared-folder format {version}, and this version reads "
            f"{PREPARED_FORMAT_VERSION}: {_prepare_again(folder)}"
        )
    return data_config_from_dict(manifest["data"])


def _prepare_again(folder: Path) -> str:
    """Return the fix for a prepared folder that cannot be read: write it again."""
    source = _recorded_source(folder) or "LOG"
    return (
        "it was written by another version of hiertcn, or its writing did not finish, so run "
        f"`hiertcn data prepare {source} --out {folder}` again with the data flags it was made "
        "with"
    )


def _recorded_source(folder: Path) -> str | None:
    """Return the log path in the folder's summary.json, or None when it cannot be read."""
    try:
        summary = json.loads((folder / SUMMARY).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    source = summary.get("source") if isinstance(summary, dict) else None
    return None if source is None else str(source)


def load_prepared(folder: Path) -> Dataset:
    """Load the `Dataset` saved in the prepared `folder`. The arrays are read-only memory maps."""
    read_prepared_config(folder)
    summary = json.loads((folder / SUMMARY).read_text(encoding="utf-8"))
    # Every part was saved with the same vocabulary, so it is read once and shared.
    vocab = ItemVocab.load(folder / "all" / "vocab.json")
    parts = {name: EventLog.load(folder / name, mmap=True, vocab=vocab) for name in PARTS}
    logger.info(
        "loaded the prepared folder %s (%d users, %d items, %d events) made from %s",
        folder,
        parts["all"].num_users,
        len(vocab),
        parts["all"].num_events,
        summary.get("source"),
    )
    return Dataset(
        log=parts["all"],
        train=parts["train"],
        valid=parts["valid"],
        test=parts["test"],
        vocab=vocab,
        filter_report=FilterReport.from_dict(summary["filter_report"]),
        summary=summary,
    )


def check_flags_match(args: argparse.Namespace, folder: Path, recorded: DataConfig) -> None:
    """Raise ConfigError when a data flag in `args` differs from the value `folder` records.

    A flag counts when the command line gave it. A namespace built without the command-line
    parser records no given flags, so every data flag in it is compared.
    """
    given_flags = getattr(args, GIVEN_FLAGS, None)
    flags = _DATA_FLAGS
    if given_flags is not None:
        flags = [flag for flag in _DATA_FLAGS if flag in given_flags]
    requested = data_config_from_flags(args, recorded.path)
    differences = []
    for flag in flags:
        name, setting = _DATA_FLAGS[flag]
        if setting(requested) != setting(recorded):
            differences.append(
                f"{flag} sets the {name} to {setting(requested)!r}, "
                f"but the folder has {setting(recorded)!r}"
            )
    if differences:
        raise ConfigError(
            f"{folder} is a prepared folder, which fixes the data settings, and "
            f"{'; '.join(differences)}: drop the flag, or run `hiertcn data prepare "
            f"{recorded.path}` again with it"
        )


def load_prepared_from_args(args: argparse.Namespace) -> Dataset:
    """Load the prepared folder `args.data` after checking the data flags against it."""
    folder = Path(args.data)
    recorded = read_prepared_config(folder)
    check_flags_match(args, folder, recorded)
    return load_prepared(folder)
