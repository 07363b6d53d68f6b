"""The files of a prepared folder: checks of its saved parts, and of the --out of `data prepare`.

A part is a folder written by `EventLog.save`. Its arrays are checked against the lengths in its
meta.json before they are memory-mapped, so a truncated or foreign .npy file gives a DataError
that names the file. No file is ever unpickled.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from hiertcn.errors import DataError

logger = logging.getLogger(__name__)

MANIFEST = "prepared.json"
SUMMARY = "summary.json"
PARTS = ("all", "train", "valid", "test")
# The files that `EventLog.save` writes into each part.
PART_ARRAYS = (
    "user_offsets",
    "user_session_offsets",
    "session_offsets",
    "items",
    "timestamps",
    "targets",
)
IMPRESSION_ARRAYS = ("impression_offsets", "impressions")
PART_FILES = (
    *(f"{name}.npy" for name in (*PART_ARRAYS, *IMPRESSION_ARRAYS)),
    "user_ids.json",
    "vocab.json",
    "meta.json",
)
# Number of unexpected file names that an --out error lists.
_MAX_LISTED_FILES = 5


class DamagedPartError(DataError):
    """A file of a saved part is missing, truncated or not what `EventLog.save` writes.

    The message names the file and the damage, without the fix, which the caller adds.
    """


def read_part_meta(part: Path) -> dict[str, Any]:
    """Return the part's meta.json. Raises DamagedPartError when it is missing or malformed."""
    path = part / "meta.json"
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DamagedPartError(f"{path} not found") from None
    except (OSError, ValueError) as error:
        raise DamagedPartError(f"{path} cannot be read ({error})") from None
    if not isinstance(meta, dict):
        raise DamagedPartError(f"{path} is not a JSON object")
    for key in ("users", "events", "sessions"):
        if not isinstance(meta.get(key), int) or meta[key] < 0:
            raise DamagedPartError(f"{path} has no valid {key!r} count")
    return meta


def check_part_arrays(part: Path, meta: dict[str, Any]) -> None:
    """Raise DamagedPartError when an array of `part` disagrees with its meta.json.

    Each .npy header is read without loading the data: the array must be one-dimensional, of an
    integer or bool type, with the length that meta.json gives, and the file must contain exactly
    that many bytes after the header.
    """
    lengths: dict[str, int | None] = {
        "user_offsets": meta["users"] + 1,
        "user_session_offsets": meta["users"] + 1,
        "session_offsets": meta["sessions"] + 1,
        "items": meta["events"],
        "timestamps": meta["events"],
        "targets": meta["events"],
    }
    if meta.get("impressions"):
        # The number of impressions is the last impression offset, which is checked on load.
        lengths.update(impression_offsets=meta["events"] + 1, impressions=None)
    for name, length in lengths.items():
        _check_npy(part / f"{name}.npy", length)


def _check_npy(path: Path, length: int | None) -> None:
    """Raise DamagedPartError unless `path` is a .npy file of `length` integers or bools."""
    try:
        with path.open("rb") as file:
            shape, dtype = _read_npy_header(file)
            data_start = file.tell()
        size = path.stat().st_size
    except FileNotFoundError:
        raise DamagedPartError(f"{path} not found") from None
    except (OSError, ValueError) as error:
        raise DamagedPartError(f"{path} is not a readable .npy file ({error})") from None
    if dtype.hasobject or dtype.kind not in "biu" or len(shape) != 1:
        raise DamagedPartError(
            f"{path} contains an array of type {dtype} and shape {shape}, not a list of integers"
        )
    if length is not None and shape[0] != length:
        raise DamagedPartError(f"{path} has {shape[0]} values, but meta.json gives {length}")
    expected_size = data_start + math.prod(shape) * dtype.itemsize
    if size != expected_size:
        raise DamagedPartError(
            f"{path} is {size} bytes, but its header needs {expected_size}, so it is truncated "
            "or was changed"
        )


def _read_npy_header(file) -> tuple[tuple[int, ...], np.dtype]:
    """Read the shape and dtype of an open .npy file. Raises ValueError when it is not one."""
    version = np.lib.format.read_magic(file)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(file)
    elif version == (2, 0):
        shape, _, dtype = np.lib.format.read_array_header_2_0(file)
    else:
        raise ValueError(f".npy format version {version[0]}.{version[1]} is not written by numpy")
    return shape, dtype


def prepared_files(out: Path) -> tuple[list[Path], list[str]]:
    """Split the content of the folder `out` into the files of a prepared folder and the rest.

    Returns the paths that `data prepare` writes (part folders listed after their files), and
    the names, relative to `out`, of everything else.
    """
    own: list[Path] = []
    other: list[str] = []
    for entry in sorted(out.iterdir()):
        if entry.name in (MANIFEST, SUMMARY) and entry.is_file():
            own.append(entry)
        elif entry.name in PARTS and entry.is_dir():
            for file in sorted(entry.iterdir()):
                if file.name in PART_FILES and file.is_file():
                    own.append(file)
                else:
                    other.append(f"{entry.name}/{file.name}")
            own.append(entry)
        else:
            other.append(entry.name)
    return own, other


def check_prepare_out(out: Path, force: bool) -> None:
    """Raise DataError unless `data prepare` may write into the folder `out`.

    A new or empty folder is accepted. A folder that contains a prepared folder is accepted only
    with `force`. A folder with any other content is rejected even with `force`, because
    `--force` replaces only what `data prepare` wrote.
    """
    if not out.is_dir():
        return
    try:
        own, other = prepared_files(out)
    except OSError as error:
        raise DataError(
            f"cannot list --out {out}: {error.strerror} ({error.filename}): pass a folder that "
            "can be read and written"
        ) from None
    if other:
        listed = ", ".join(other[:_MAX_LISTED_FILES])
        if len(other) > _MAX_LISTED_FILES:
            listed += f" and {len(other) - _MAX_LISTED_FILES} more"
        raise DataError(
            f"--out {out} contains files that `hiertcn data prepare` does not write ({listed}): "
            "pass a new or empty folder, because --force replaces only a prepared folder"
        )
    if own and not force:
        raise DataError(
            f"--out {out} already contains a prepared folder: pass --force to replace it, or "
            "another --out folder"
        )


def remove_prepared(out: Path) -> None:
    """Delete the files and part folders that `data prepare` wrote in `out` (for --force)."""
    if not out.is_dir():
        return
    own, _ = prepared_files(out)
    for path in own:
        if path.is_dir():
            # A part folder is empty here unless it also held other files, which stay.
            if not any(path.iterdir()):
                path.rmdir()
        else:
            path.unlink()
    if own:
        logger.info("--force: deleted the prepared folder in %s", out)
