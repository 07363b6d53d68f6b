"""Training checkpoints: everything needed to rebuild, evaluate, export or resume a model.

A checkpoint is one `torch.save` file of plain containers (dicts, lists, str, numbers and
tensors), so `torch.load(..., weights_only=True)` reads it without unpickling any class. It
stores the model configuration dict next to the state dict, so `build_model_from_checkpoint`
rebuilds the model without any other file.
"""

from __future__ import annotations

import errno
import logging
import os
import pickle
import re
import shlex
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import torch

from hiertcn.errors import CheckpointError, HierTCNError, UnreadableCheckpointError

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT_VERSION = 1
BEST_CHECKPOINT = "best.pt"
LAST_CHECKPOINT = "last.pt"
# `torch.save` writes a zip archive, which starts with the local file header signature.
_ZIP_MAGIC = b"PK\x03\x04"
# The global (module.name) in the messages of torch's weights-only unpickler (torch 2.15) when
# a pickle refers to a function or class outside its allowlist: "Trying to load unsupported
# GLOBAL posix.system whose module posix is blocked" or "Unsupported global: GLOBAL print was
# not an allowed global by default".
_REJECTED_GLOBAL = re.compile(r"GLOBAL (\S+) (?:whose module|was not an allowed global)")


@dataclass(frozen=True)
class Checkpoint:
    """The content of one checkpoint file.

    `item_ids[r]` is the external id (str) of item row `r`. `metrics` contains the validation
    metrics of `epoch` and, once a command evaluated it, `metrics["test"]`. `resume_state`
    contains what `--resume` needs besides the weights: the best validation MRR so far, the
    epochs without improvement and the history.
    """

    model_config: dict[str, Any]
    model_state: dict[str, torch.Tensor]
    train_config: dict[str, Any]
    item_ids: list[str]
    data_summary: dict[str, Any]
    metrics: dict[str, Any]
    epoch: int
    optimizer_state: dict[str, Any] | None = None
    resume_state: dict[str, Any] = field(default_factory=dict)

    @property
    def num_items(self) -> int:
        """Number of item rows N of the model."""
        return len(self.item_ids)

    def to_dict(self) -> dict[str, Any]:
        """Return the plain dict that `save_checkpoint` writes."""
        return {
            "format_version": CHECKPOINT_FORMAT_VERSION,
            "model_config": self.model_config,
            "model_state": self.model_state,
            "train_config": self.train_config,
            "item_ids": list(self.item_ids),
            "data_summary": self.data_summary,
            "metrics": self.metrics,
            "epoch": self.epoch,
            "optimizer_state": self.optimizer_state,
            "resume_state": self.resume_state,
        }


def save_checkpoint(path: str | os.PathLike[str], checkpoint: Checkpoint) -> Path:
    """Write `checkpoint` to `path` atomically (a temporary file, then a rename).

    Raises HierTCNError naming the path when the folder or the file cannot be written.
    """
    path = Path(path)
    temporary = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(checkpoint.to_dict(), temporary)
        os.replace(temporary, path)
    except OSError as error:
        raise HierTCNError(
            f"cannot write checkpoint {path} ({error.strerror or error}): {_write_fix(error)}"
        ) from error
    logger.debug("wrote checkpoint %s (epoch %d)", path, checkpoint.epoch)
    return path


def _write_fix(error: OSError) -> str:
    """Return the fix for a checkpoint that cannot be written, by the error's errno."""
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return "free disk space, or pass an --out folder on another disk"
    return "pass an --out folder that you can write"


# Keys of a checkpoint dict and the type of each value.
_REQUIRED_KEYS: dict[str, type | tuple[type, ...]] = {
    "format_version": int,
    "model_config": dict,
    "model_state": dict,
    "train_config": dict,
    "item_ids": (list, tuple),
    "data_summary": dict,
    "metrics": dict,
    "epoch": int,
}


def load_checkpoint(path: str | os.PathLike[str], map_location: str = "cpu") -> Checkpoint:
    """Read a checkpoint written by `save_checkpoint`; raise CheckpointError when it is not one.

    A file that exists but does not read as a checkpoint raises UnreadableCheckpointError.
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(
            f"checkpoint {path} is a folder: pass the best.pt or last.pt file inside it"
        )
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found: pass the best.pt or last.pt of a run")
    content = _read_checkpoint_dict(path, map_location)
    version = content["format_version"]
    if version != CHECKPOINT_FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format version {version}, but this hiertcn reads "
            f"version {CHECKPOINT_FORMAT_VERSION}: retrain it with this version"
        )
    return Checkpoint(
        model_config=content["model_config"],
        model_state=content["model_state"],
        train_config=content["train_config"],
        item_ids=[str(item) for item in content["item_ids"]],
        data_summary=content["data_summary"],
        metrics=content["metrics"],
        epoch=int(content["epoch"]),
        optimizer_state=content.get("optimizer_state"),
        resume_state=content.get("resume_state") or {},
    )


def _read_checkpoint_dict(path: Path, map_location: str) -> dict[str, Any]:
    """Load `path` with `weights_only=True` and check the keys and value types of a checkpoint."""
    content = _torch_load(path, map_location)
    if not isinstance(content, dict):
        _raise_not_checkpoint(path, f"it contains a {type(content).__name__}, not a dict")
    missing = [key for key in _REQUIRED_KEYS if key not in content]
    if missing:
        _raise_not_checkpoint(path, f"it lacks the keys {', '.join(missing)}")
    for key, expected in _REQUIRED_KEYS.items():
        if not isinstance(content[key], expected):
            _raise_not_checkpoint(path, f"its {key!r} is a {type(content[key]).__name__}")
    return content


def _torch_load(path: Path, map_location: str) -> Any:
    """Run `torch.load(weights_only=True)`, or raise CheckpointError when the file does not load."""
    try:
        with path.open("rb") as file:
            head = file.read(len(_ZIP_MAGIC))
    except OSError as error:
        raise CheckpointError(
            f"checkpoint {path} cannot be read ({error}): pass a file you can read"
        ) from error
    try:
        # torch.load warns about the pickle protocol of a foreign pickle, which the CheckpointError
        # below replaces.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:
        # torch.load raises many unrelated types on foreign or truncated bytes (IndexError on
        # text, UnpicklingError on JSON or a plain pickle, RuntimeError on a broken zip, and
        # OSError "[Errno 22] Invalid argument" on some truncated zips). Its own message can
        # advise weights_only=False, which would run code from an untrusted file, so only the
        # debug log shows it.
        logger.debug("torch.load(%s) failed: %r", path, error)
        rejected = _rejected_global(error)
        if rejected is not None:
            _raise_untrusted(path, rejected)
        if _ZIP_MAGIC.startswith(head):
            # The file is empty or starts like a torch.save zip archive that torch cannot read,
            # so it was most likely cut short or damaged after it was written.
            size = path.stat().st_size
            reason = "empty (0 bytes)" if size == 0 else f"truncated or damaged ({size} bytes)"
            raise UnreadableCheckpointError(
                f"checkpoint {path} is {reason}: copy it again or retrain the run", reason
            ) from None
        _raise_not_checkpoint(path, "it is not a file written by torch.save")


def _rejected_global(error: Exception) -> str | None:
    """Return the Python global (a function or class) that torch's weights-only unpickler
    rejected, or None when `error` is not such a rejection."""
    if not isinstance(error, pickle.UnpicklingError):
        return None
    match = _REJECTED_GLOBAL.search(str(error))
    return match.group(1) if match else None


def _raise_untrusted(path: Path, rejected: str) -> NoReturn:
    reason = (
        f"it refers to the Python object {rejected}, which no hiertcn checkpoint contains, so "
        "it may come from an untrusted source"
    )
    raise UnreadableCheckpointError(
        f"{path} is not a hiertcn checkpoint: {reason}. Loading it with "
        "torch.load(weights_only=False) would run that object's code, so do not. Pass the "
        "best.pt of a run that you trained or got from a trusted source",
        f"not a hiertcn checkpoint ({reason})",
        untrusted=True,
    )


def _raise_not_checkpoint(path: Path, cause: str) -> NoReturn:
    reason = f"not a hiertcn checkpoint ({cause})"
    raise UnreadableCheckpointError(
        f"{path} is not a hiertcn checkpoint ({cause}): pass the best.pt of a run", reason
    )


def check_vocabulary(path: str | os.PathLike[str], checkpoint: Checkpoint, item_ids) -> None:
    """Raise CheckpointError unless `item_ids` are the checkpoint's item ids in the same order.

    The message names the log and the data flags of the checkpoint's run, from its data summary.
    """
    item_ids = tuple(item_ids)
    if tuple(checkpoint.item_ids) == item_ids:
        return
    if checkpoint.num_items != len(item_ids):
        difference = f"the log gives a vocabulary of {len(item_ids)} items"
    elif set(checkpoint.item_ids) == set(item_ids):
        difference = "the log gives the same items in another order"
    else:
        difference = f"the log gives {len(item_ids)} items with other ids"
    raise CheckpointError(
        f"checkpoint {path} was trained on {checkpoint.num_items} items of "
        f"{describe_data_source(checkpoint.data_summary)}, but {difference}: "
        "pass the log and data flags that trained it"
    )


# Data summary entries that must match for a run to resume: the log and the flags that choose
# its events, sessions and split.
RESUME_DATA_SETTINGS = ("source", "format", "session_gap", "filters", "split")
# Those that must match to evaluate a checkpoint: other sessions change the model's input,
# and another split can put the users it was trained on into the test part.
EVALUATION_DATA_SETTINGS = ("session_gap", "split")
# Flags of the data summary's nested settings whose flag is not `--` plus the key with dashes.
_SETTING_FLAGS = {"split": {"kind": "--split", "seed": "--split-seed"}}


def setting_flags(name: str, value: Any) -> str:
    """Return the data flags, with their values, that give the data summary entry `name`."""
    if name == "source":
        return f"the log {value}"
    if isinstance(value, dict):
        flags = _SETTING_FLAGS.get(name, {})
        return " ".join(
            f"{flags.get(key, '--' + key.replace('_', '-'))} {part}"
            for key, part in value.items()
            if part is not None
        )
    return f"--{name.replace('_', '-')} {value}"


def check_data_settings(
    path: str | os.PathLike[str],
    checkpoint: Checkpoint,
    summary: dict[str, Any],
    settings: tuple[str, ...] = RESUME_DATA_SETTINGS,
    action: str = "resume",
    prepared_folder: str | os.PathLike[str] | None = None,
) -> None:
    """Raise CheckpointError when the `settings` in `summary` differ from the checkpoint's.

    The message names the flags that trained the checkpoint, for the command doing `action`.
    A setting that one of the two summaries does not record is not compared. With
    `prepared_folder`, `summary` comes from that folder, whose flags the user did not type.
    """
    saved = checkpoint.data_summary
    names = [
        name
        for name in settings
        if name in saved and name in summary and not _same_setting(name, saved[name], summary[name])
    ]
    if names:
        trained = "; ".join(setting_flags(name, saved[name]) for name in names)
        now = "; ".join(setting_flags(name, summary[name]) for name in names)
        if prepared_folder is not None:
            raise CheckpointError(
                f"checkpoint {path} was trained with {trained}, and the prepared folder "
                f"{prepared_folder} has {now}: {action} on the log with the data flags that "
                "trained it, or on a folder prepared with them"
            )
        raise CheckpointError(
            f"checkpoint {path} was trained with {trained}, not {now}: {action} with the log "
            "and data flags that trained it"
        )


def _same_setting(name: str, saved: Any, now: Any) -> bool:
    """Return whether a checkpoint's data setting matches the current one. Checkpoints saved
    before summaries recorded the format that the reader resolved have `auto`, which matches
    any format."""
    if name == "format" and saved == "auto":
        return True
    return saved == now


# Reader settings of a data summary by their flags, each with the value of a flag not given.
_READER_FLAGS: dict[str, tuple[str, Any]] = {
    "user_col": ("--user-col", None),
    "item_col": ("--item-col", None),
    "time_col": ("--time-col", None),
    "event_type_col": ("--event-type-col", None),
    "event_types": ("--event-types", None),
    "impressions_col": ("--impressions-col", None),
    "impressions_sep": ("--impressions-sep", "|"),
    "delimiter": ("--delimiter", None),
    "time_unit": ("--time-unit", None),
}


def _reader_flag_pairs(reader: dict[str, Any]) -> list[tuple[str, str | None]]:
    """Return (flag, value as typed) for each reader flag that a data summary's `reader`
    records; the value is None for a flag without one (`--no-header`)."""
    pairs: list[tuple[str, str | None]] = []
    if reader.get("header") is False:
        pairs.append(("--no-header", None))
    for key, (flag, unset) in _READER_FLAGS.items():
        value = reader.get(key, unset)
        if value == unset:
            continue
        if isinstance(value, (list, tuple)):
            value = ",".join(str(part) for part in value)
        pairs.append((flag, str(value).replace("\t", "\\t")))
    return pairs


def _reader_flags(reader: dict[str, Any]) -> list[str]:
    """Return the reader flags, with their values, that a data summary's `reader` records."""
    return [
        flag if value is None else f"{flag} {shlex.quote(value)}"
        for flag, value in _reader_flag_pairs(reader)
    ]


# Data summary entries with nested settings, by key, with the flag of each.
_NESTED_FLAGS = {
    "filters": {
        "min_item_count": "--min-item-count",
        "min_user_events": "--min-user-events",
        "max_user_events": "--max-user-events",
    },
    "split": {
        "kind": "--split",
        "seed": "--split-seed",
        "train_fraction": "--train-fraction",
        "valid_fraction": "--valid-fraction",
    },
}


def recorded_data_words(summary: dict[str, Any]) -> list[str] | None:
    """Return the data flags of a data summary as command-line words, such as `["--format",
    "csv", "--item-col", "category"]`, or None for a summary without reader settings, which
    checkpoints written before they were recorded have."""
    reader = summary.get("reader")
    if not isinstance(reader, dict):
        return None
    words = [] if summary.get("format") is None else ["--format", str(summary["format"])]
    for flag, value in _reader_flag_pairs(reader):
        words += [flag] if value is None else [flag, value]
    gap = summary.get("session_gap")
    if gap is not None:
        words += ["--session-gap", str(int(gap) if float(gap).is_integer() else gap)]
    for name, flags in _NESTED_FLAGS.items():
        values = summary.get(name)
        if isinstance(values, dict):
            for key, flag in flags.items():
                if values.get(key) is not None:
                    words += [flag, str(values[key])]
    return words


def describe_data_source(summary: dict[str, Any]) -> str:
    """Describe the log and the data flags that choose its events, from a data summary.

    Summaries written before the reader settings were recorded name only the format and the
    filters.
    """
    source = summary.get("source")
    if source is None:
        return "an unrecorded log"
    flags = []
    if summary.get("format") is not None:
        flags.append(f"--format {summary['format']}")
    reader = summary.get("reader")
    if isinstance(reader, dict):
        flags.extend(_reader_flags(reader))
    filters = summary.get("filters")
    if isinstance(filters, dict):
        for key, value in filters.items():
            if value is not None:
                flags.append(f"--{key.replace('_', '-')} {value}")
    return f"{source} ({' '.join(flags)})" if flags else str(source)


def build_model_from_checkpoint(
    checkpoint: Checkpoint, device: str | torch.device = "cpu"
) -> torch.nn.Module:
    """Rebuild the model of `checkpoint` from its configuration and load its weights."""
    # Importing the package registers every model class by name.
    from hiertcn.models import registry
    from hiertcn.models.config import ModelConfig

    config = ModelConfig.from_dict(checkpoint.model_config)
    model = registry.build_model(config, checkpoint.num_items)
    try:
        model.load_state_dict(checkpoint.model_state)
    except RuntimeError as error:
        raise CheckpointError(
            f"weights of the checkpoint do not fit model {checkpoint.model_config.get('name')!r} "
            f"({error}): the checkpoint was written by another version of the model"
        ) from error
    return model.to(device)


def load_model(
    path: str | os.PathLike[str], device: str | torch.device = "cpu"
) -> tuple[torch.nn.Module, Checkpoint]:
    """Load a checkpoint file and return the rebuilt model (in eval mode) with the checkpoint."""
    checkpoint = load_checkpoint(path)
    model = build_model_from_checkpoint(checkpoint, device)
    model.eval()
    return model, checkpoint
