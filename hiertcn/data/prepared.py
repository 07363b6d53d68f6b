"""Prepared folders: a filtered, sessionized and split log saved by `hiertcn data prepare`.

A prepared folder contains one saved `EventLog` per part (`all/`, the whole filtered log, and
`train/`, `valid/`, `test/`), `summary.json` (the `Dataset.summary` of the log) and
`prepared.json`, the manifest. The manifest records the `DataConfig` with the log's absolute
path, the format that the reader used and the effective time unit. It also records the warnings
logged while the log was read, and a SHA-256 digest of those and of summary.json, which detects
a hand edit of either file.
Loading a folder gives the same `Dataset`, summary included, as reading the log with those
settings, so a checkpoint trained on either one evaluates the same on the other.

The commands that take a log FILE (`train`, `evaluate`, `data stats`) take a prepared folder in
its place. They accept a data flag only when it equals the value that the folder records.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import logging
import shlex
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hiertcn.data.filters import FilterConfig, FilterReport
from hiertcn.data.log import EventLog
from hiertcn.data.options import (
    GIVEN_FLAGS,
    DataConfig,
    Dataset,
    data_config_from_flags,
    load_dataset_from_config,
)
from hiertcn.data.prepared_files import (
    MANIFEST,
    PARTS,
    SUMMARY,
    DamagedPartError,
    check_part_arrays,
    read_part_meta,
)
from hiertcn.data.readers import ReaderConfig, effective_time_unit, resolve_reader_config
from hiertcn.data.splits import SplitConfig
from hiertcn.data.vocab import ItemVocab
from hiertcn.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

__all__ = [
    "MANIFEST",
    "PARTS",
    "PREPARED_FORMAT_VERSION",
    "SUMMARY",
    "is_prepared_folder",
    "load_prepared",
    "load_prepared_from_args",
    "prepare_dataset",
    "read_prepared_config",
    "save_prepared",
]

# Version 1 recorded the log path as typed, `auto` and an unset time unit, and had no digest.
PREPARED_FORMAT_VERSION = 2

# Every data flag, and the setting of `DataConfig` that it sets.
_DATA_FLAGS: dict[str, Callable[[DataConfig], object]] = {
    "--format": lambda config: config.reader.format,
    "--user-col": lambda config: config.reader.user_col,
    "--item-col": lambda config: config.reader.item_col,
    "--time-col": lambda config: config.reader.time_col,
    "--event-type-col": lambda config: config.reader.event_type_col,
    "--event-types": lambda config: config.reader.event_types,
    "--impressions-col": lambda config: config.reader.impressions_col,
    "--impressions-sep": lambda config: config.reader.impressions_sep,
    "--no-header": lambda config: config.reader.header,
    "--delimiter": lambda config: config.reader.delimiter,
    "--time-unit": lambda config: config.reader.time_unit,
    "--session-gap": lambda config: config.session_gap,
    "--min-item-count": lambda config: config.filters.min_item_count,
    "--min-user-events": lambda config: config.filters.min_user_events,
    "--max-user-events": lambda config: config.filters.max_user_events,
    "--split": lambda config: config.split.kind,
    "--split-seed": lambda config: config.split.seed,
    "--train-fraction": lambda config: config.split.train_fraction,
    "--valid-fraction": lambda config: config.split.valid_fraction,
}


@dataclass(frozen=True)
class PreparedManifest:
    """The checked content of prepared.json, with the summary.json that it matches."""

    config: DataConfig
    summary: dict[str, Any]
    warnings: tuple[str, ...]


def is_prepared_folder(path: Path) -> bool:
    """Return whether `path` is a folder written by `hiertcn data prepare`, of any version."""
    return path.is_dir() and ((path / MANIFEST).is_file() or (path / SUMMARY).is_file())


def enclosing_prepared_folder(path: Path) -> Path | None:
    """Return the prepared folder that is `path` or contains it (resolved), or None."""
    resolved = path.resolve()
    return next(
        (folder for folder in (resolved, *resolved.parents) if is_prepared_folder(folder)), None
    )


def resolve_reader(config: DataConfig) -> DataConfig:
    """Return `config` with the format that `auto` picks for its log and the effective unit."""
    reader = resolve_reader_config(config.path, config.reader)
    return dataclasses.replace(config, path=config.path.absolute(), reader=reader)


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


def _digest(data: object, warnings: object, summary: object) -> str:
    """Return the SHA-256 of the manifest's data and warnings and of the summary, as hex."""
    content = json.dumps({"data": data, "warnings": warnings, "summary": summary}, sort_keys=True)
    return hashlib.sha256(content.encode("utf-8")).hexdigest()


class _WarningCollector(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def _collect_data_warnings() -> Iterator[list[str]]:
    """Collect the warnings that the `hiertcn.data` loggers log inside the block."""
    collector = _WarningCollector()
    data_logger = logging.getLogger("hiertcn.data")
    data_logger.addHandler(collector)
    try:
        yield collector.messages
    finally:
        data_logger.removeHandler(collector)


def prepare_dataset(config: DataConfig) -> tuple[Dataset, list[str]]:
    """Read, filter, sessionize and split the log, and return the warnings logged meanwhile."""
    with _collect_data_warnings() as warnings:
        dataset = load_dataset_from_config(config)
    return dataset, list(warnings)


def save_prepared(
    dataset: Dataset, config: DataConfig, out: Path, warnings: list[str] | None = None
) -> None:
    """Write every part, summary.json and the manifest of `dataset` under `out`.

    The manifest records `config` with the resolved format and time unit, and `warnings`, the
    messages to repeat on load. It is removed first and written last, so a folder whose writing
    failed half-way is rejected on load in place of mixing parts of two runs.
    """
    (out / MANIFEST).unlink(missing_ok=True)
    data = data_config_to_dict(resolve_reader(config))
    parts = {"all": dataset.log, "train": dataset.train, "valid": dataset.valid}
    parts["test"] = dataset.test
    for name, part in parts.items():
        part.save(out / name)
    summary_text = json.dumps(dataset.summary, indent=2)
    (out / SUMMARY).write_text(summary_text, encoding="utf-8")
    warnings = list(warnings or ())
    manifest = {
        "format_version": PREPARED_FORMAT_VERSION,
        "parts": list(PARTS),
        "data": data,
        "warnings": warnings,
        # The digest covers the summary as it reads back, where tuples are lists.
        "digest": _digest(data, warnings, json.loads(summary_text)),
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")


def read_prepared_config(folder: Path) -> DataConfig:
    """Return the `DataConfig` that the prepared `folder` was made with."""
    return read_manifest(folder).config


def read_manifest(folder: Path) -> PreparedManifest:
    """Read and check prepared.json and summary.json of `folder`.

    Raises DataError naming the file and the `data prepare` command that writes the folder again
    when a file is missing, malformed, from another format version, or edited after writing.
    """
    path = folder / MANIFEST
    if not path.is_file():
        raise DataError(f"{folder} has no {MANIFEST}: {_write_again(folder)}")
    manifest = _read_json_object(path, folder)
    version = manifest.get("format_version")
    if version != PREPARED_FORMAT_VERSION:
        raise DataError(
            f"{folder} has prepared-folder format {version}, and this version reads "
            f"{PREPARED_FORMAT_VERSION}: {_write_again(folder, _config_or_none(manifest))}"
        )
    try:
        config = data_config_from_dict(manifest["data"])
        warnings = tuple(str(message) for message in manifest["warnings"])
        digest = manifest["digest"]
    except KeyError as error:
        raise DataError(f"{path} lacks the entry {error}: {_write_again(folder)}") from None
    except (TypeError, ValueError, AttributeError, DataError, ConfigError) as error:
        raise DataError(f"{path} has an invalid entry ({error}): {_write_again(folder)}") from None
    summary = _read_json_object(folder / SUMMARY, folder, config)
    if digest != _digest(manifest["data"], manifest["warnings"], summary):
        raise DataError(
            f"{path} or {folder / SUMMARY} was changed after `hiertcn data prepare` wrote it, so "
            f"its settings may not be those of the arrays: {_write_again(folder, config)}"
        )
    return PreparedManifest(config=config, summary=summary, warnings=warnings)


def _read_json_object(path: Path, folder: Path, config: DataConfig | None = None) -> dict:
    """Read a JSON object of the prepared `folder`. Raises DataError naming `path`."""
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path} not found: {_write_again(folder, config)}") from None
    except json.JSONDecodeError as error:
        raise DataError(
            f"{path} is not valid JSON ({error.msg}): {_write_again(folder, config)}"
        ) from None
    except (OSError, UnicodeDecodeError) as error:
        fix = _write_again(folder, config)
        raise DataError(f"{path} cannot be read ({error}): {fix}") from None
    if not isinstance(content, dict):
        raise DataError(f"{path} is not a JSON object: {_write_again(folder, config)}")
    return content


def _config_or_none(manifest: dict) -> DataConfig | None:
    """Return the `DataConfig` of a manifest of any version, or None when it cannot be read."""
    try:
        return data_config_from_dict(manifest["data"])
    except (KeyError, TypeError, ValueError, AttributeError, DataError, ConfigError):
        return None


def recorded_log(folder: Path) -> str | None:
    """Return the log path that the prepared `folder` records, or None when it records none."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        manifest = None
    data = manifest.get("data") if isinstance(manifest, dict) else None
    if isinstance(data, dict) and isinstance(data.get("path"), str):
        return data["path"]
    return _recorded_source(folder)


def _recorded_source(folder: Path) -> str | None:
    """Return the log path in the folder's summary.json, or None when it cannot be read."""
    try:
        summary = json.loads((folder / SUMMARY).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    source = summary.get("source") if isinstance(summary, dict) else None
    return None if source is None else str(source)


def _write_again(folder: Path, config: DataConfig | None = None) -> str:
    """Return the fix for a prepared folder that cannot be read: the command that rewrites it."""
    if config is not None:
        command = prepare_command(config, folder)
        return (
            f"it is damaged or was written by another version of hiertcn, so run `{command}` to "
            "write it again"
        )
    source = recorded_log(folder) or "LOG"
    return (
        "it was written by another version of hiertcn, or its writing did not finish, so run "
        f"`hiertcn data prepare {shlex.quote(source)} --out {shlex.quote(str(folder))} --force` "
        "again with the data flags it was made with"
    )


def prepare_command(
    config: DataConfig, folder: Path, overrides: dict[str, object] | None = None
) -> str:
    """Return the `hiertcn data prepare` command that writes `config` to `folder` again.

    It names every data flag whose value differs from its default, with `overrides` (flag to
    value) in place of the values of `config`, and `--force` because the folder exists.
    """
    overrides = overrides or {}
    values = {flag: overrides.get(flag, setting(config)) for flag, setting in _DATA_FLAGS.items()}
    defaults = {flag: setting(DataConfig(config.path)) for flag, setting in _DATA_FLAGS.items()}
    defaults["--time-unit"] = effective_time_unit(str(values["--format"]), None)
    tokens = ["hiertcn", "data", "prepare", str(config.path)]
    for flag, value in values.items():
        if value != defaults[flag]:
            tokens.extend(_flag_tokens(flag, value))
    tokens.extend(["--out", str(folder), "--force"])
    return shlex.join(tokens)


def _flag_tokens(flag: str, value: object) -> list[str]:
    """Return the command-line words that set the data flag `flag` to `value`."""
    if flag == "--no-header":
        return [] if value else [flag]
    if value is None:
        # A missing maximum is what `--max-user-events 0` sets.
        return [flag, "0"] if flag == "--max-user-events" else []
    if isinstance(value, tuple):
        return [flag, ",".join(str(part) for part in value)]
    if flag == "--delimiter":
        return [flag, str(value).replace("\t", "\\t")]
    return [flag, str(value)]


def load_prepared(folder: Path) -> Dataset:
    """Load the `Dataset` saved in the prepared `folder`. The arrays are read-only memory maps."""
    return _load_parts(folder, read_manifest(folder))


def _load_parts(folder: Path, manifest: PreparedManifest) -> Dataset:
    """Load every part of `folder`. Raises DataError naming a damaged file."""
    for message in manifest.warnings:
        logger.warning("%s was prepared from a log whose reading warned: %s", folder, message)
    try:
        # Every part was saved with the same vocabulary, so it is read once and shared.
        vocab = ItemVocab.load(folder / "all" / "vocab.json")
        parts = {name: _load_part(folder / name, vocab) for name in PARTS}
        filter_report = FilterReport.from_dict(manifest.summary["filter_report"])
    except (DataError, OSError, ValueError, KeyError, TypeError) as error:
        raise DataError(f"{error}: {_write_again(folder, manifest.config)}") from None
    logger.info(
        "loaded the prepared folder %s (%d users, %d items, %d events) made from %s",
        folder,
        parts["all"].num_users,
        len(vocab),
        parts["all"].num_events,
        manifest.config.path,
    )
    return Dataset(
        log=parts["all"],
        train=parts["train"],
        valid=parts["valid"],
        test=parts["test"],
        vocab=vocab,
        filter_report=filter_report,
        summary=manifest.summary,
    )


def _load_part(part: Path, vocab: ItemVocab) -> EventLog:
    """Check the files of one part against its meta.json, then memory-map it."""
    meta = read_part_meta(part)
    check_part_arrays(part, meta)
    if meta.get("items") != len(vocab):
        raise DamagedPartError(
            f"{part / 'meta.json'} gives {meta.get('items')} items, but the vocabulary in "
            f"all/vocab.json has {len(vocab)}"
        )
    try:
        log = EventLog.load(part, mmap=True, vocab=vocab)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise DamagedPartError(f"{part} cannot be read ({error})") from None
    offsets, impressions = log.impression_offsets, log.impressions
    if offsets is not None and impressions is not None and int(offsets[-1]) != len(impressions):
        raise DamagedPartError(
            f"{part / 'impressions.npy'} has {len(impressions)} values, but "
            f"impression_offsets.npy ends at {int(offsets[-1])}"
        )
    return log


def check_flags_match(args: argparse.Namespace, folder: Path, recorded: DataConfig) -> None:
    """Raise ConfigError when a data flag in `args` differs from the value `folder` records.

    A flag counts when the command line gave it. A namespace built without the command-line
    parser records no given flags, so every data flag in it is compared. `--format auto` names
    no format, so it matches the recorded one, and an unset `--time-unit` is the format's own.
    """
    given_flags = getattr(args, GIVEN_FLAGS, None)
    flags = list(_DATA_FLAGS)
    if given_flags is not None:
        flags = [flag for flag in _DATA_FLAGS if flag in given_flags]
    requested = _resolve_requested(data_config_from_flags(args, recorded.path), recorded)
    overrides = {}
    differences = []
    for flag in flags:
        setting = _DATA_FLAGS[flag]
        if setting(requested) != setting(recorded):
            overrides[flag] = setting(requested)
            typed = shlex.join(_flag_tokens(flag, setting(requested)))
            differences.append(f"{typed} differs from {_describe_recorded(flag, recorded)}")
    if differences:
        command = prepare_command(recorded, folder, overrides)
        raise ConfigError(
            f"{folder} is a prepared folder, which fixes the data settings, and "
            f"{'; '.join(differences)}: drop the flag, or run `{command}` to prepare the folder "
            "again with it"
        )


def _resolve_requested(requested: DataConfig, recorded: DataConfig) -> DataConfig:
    """Give `auto` the recorded format and an unset time unit the effective one."""
    reader = requested.reader
    log_format = recorded.reader.format if reader.format == "auto" else reader.format
    reader = dataclasses.replace(
        reader, format=log_format, time_unit=effective_time_unit(log_format, reader.time_unit)
    )
    return dataclasses.replace(requested, reader=reader)


def _describe_recorded(flag: str, recorded: DataConfig) -> str:
    """Describe the value of `flag` in the folder as the command line gives it."""
    value = _DATA_FLAGS[flag](recorded)
    if flag == "--no-header":
        return "the folder, which reads a header row" if value else "the folder's --no-header"
    tokens = _flag_tokens(flag, value)
    if not tokens:
        return f"the folder, which has no {flag}"
    return f"the folder's {shlex.join(tokens)}"


def load_prepared_from_args(args: argparse.Namespace) -> Dataset:
    """Load the prepared folder `args.data` after checking the data flags against it."""
    folder = Path(args.data)
    manifest = read_manifest(folder)
    check_flags_match(args, folder, manifest.config)
    return _load_parts(folder, manifest)
