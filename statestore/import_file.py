"""Importing the export files of a state store, whose format `statestore.export` describes.

An import reads the whole file before it writes anything, and rejects the file when the trailer
is missing or its counts differ from the records, so a cut copy is never imported in part. It also
rejects states whose sizes differ from the header, from each other, or from the users already in
the store. So are states of another catalog than the one recorded with the stored users, and
states with a NaN or infinite value, which the model would turn into NaN scores.
Exports of earlier hiertcn versions have neither header nor trailer: they are still imported,
with a warning that their completeness cannot be checked. Exports without a catalog are
imported with a warning that their item rows cannot be checked.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, BinaryIO

import msgpack

from statestore import codec
from statestore.bundle_meta import describe_catalog
from statestore.errors import (
    CatalogMismatchError,
    ExportFileError,
    StateCodecError,
    StoreConfigError,
)
from statestore.export import EXPORT_FORMAT_NAME, EXPORT_VERSION, StateSizes, format_position_count
from statestore.maintenance import DEFAULT_CHUNK_SIZE, iter_records, plural, state_from_json
from statestore.state import PartitionPosition, ReplayProgress, UserState
from statestore.store import StateStore

logger = logging.getLogger(__name__)

_IMPORT_FIX = "import only files that `hiertcn-stream state export` wrote"


@dataclass(frozen=True)
class ExportSummary:
    """Contents of an import file, from a full read by `scan_export`."""

    users: int  # user records
    positions: int  # position records
    bundle_version: str | None  # from the header; None in an export without one
    sizes: StateSizes  # from the header, completed from the states
    catalog: str | None = None  # from the header; None in an export of an earlier version
    catalog_items: int | None = None


def check_import_path(path: Path) -> None:
    """Raise `ExportFileError` unless `path` is an existing regular file."""
    if str(path) == "-":
        raise ExportFileError(
            "import reads a file, not standard input: save the export to a file and pass its path"
        )
    if path.is_dir():
        raise ExportFileError(
            f"import file {path} is a directory: pass the file that `state export` wrote"
        )
    if not path.exists():
        raise ExportFileError(f"import file {path} not found: check the path")
    if not path.is_file():
        raise ExportFileError(f"import file {path} is not a regular file: pass an export file")


def scan_export(path: Path) -> ExportSummary:
    """Read and check every record of an export file, and write nothing.

    Raises `ExportFileError` when the file is empty, incomplete, corrupt, mixes states of
    different sizes, or has a state with a NaN or infinite value.
    """
    header: dict[str, Any] | None = None
    end: dict[str, Any] | None = None
    sizes = StateSizes()
    non_finite: list[str] = []
    users = positions = number = 0
    for number, line, kind, value in _iter_export(path):
        if end is not None:
            raise ExportFileError(
                f"record {number} of {path} follows the end record, so the file is corrupt: "
                "export the store again"
            )
        if kind == "header":
            header = _check_header(value, number, path)
            sizes = StateSizes.of_meta(header)
        elif kind == "position":
            positions += 1
        elif kind == "user":
            user, state = value
            sizes = _check_state_sizes(state, sizes, user, number, path, header is not None)
            non_finite.extend(_describe_non_finite(state, user, _location(number, line)))
            users += 1
        else:
            end = value
    if number == 0:
        raise ExportFileError(f"import file {path} is empty: it is not a complete export")
    if header is None:
        _check_legacy(path, end)
    else:
        _check_end(end, users, positions, path)
    _check_finite(non_finite, path)
    return ExportSummary(
        users=users,
        positions=positions,
        bundle_version=None if header is None else header.get("bundle_version"),
        sizes=sizes,
        catalog=None if header is None else header.get("catalog"),
        catalog_items=None if header is None else header.get("catalog_items"),
    )


def check_import_sizes(store: StateStore, summary: ExportSummary, path: Path) -> None:
    """Raise `StoreConfigError` when the store has users whose sizes differ from the file's.

    A store without users takes states of any size, as it does for a bundle of other sizes.
    """
    stored = stored_sizes(store)
    if stored is None or not summary.sizes.differs_from(stored):
        return
    raise StoreConfigError(
        f"{path} contains states with {summary.sizes}, but state store {store.path} contains "
        f"states with {stored}: import into a new --state-dir, or delete the stored users first "
        f"with `hiertcn-stream state --state-dir {store.path} evict --inactive-days 0 --now` "
        "(run `export FILE` first to keep a copy)"
    )


def check_import_catalog(store: StateStore | None, summary: ExportSummary, path: Path) -> None:
    """Raise `CatalogMismatchError` when `store` has users and records another catalog than
    the file's; warn when the file records none. `store` is None for a store not created yet.

    A store without users takes states of any catalog, and records the file's.
    """
    if summary.catalog is None:
        logger.warning(
            "%s records no catalog (an export of an earlier hiertcn version), so the import "
            "cannot check that its session items are rows of the catalog of the bundle that "
            "serves %s: import it only into a store of the bundle that the export came from",
            path,
            "this store" if store is None else store.path,
        )
        return
    if store is None or store.user_count() == 0:
        return
    meta = store.meta()
    stored = meta.get("catalog")
    if stored is None or stored == summary.catalog:
        return
    stored_catalog = describe_catalog(stored, meta.get("catalog_items"))
    file_catalog = describe_catalog(summary.catalog, summary.catalog_items)
    raise CatalogMismatchError(
        f"{path} contains states of bundle {summary.bundle_version} with a {file_catalog}, but "
        f"the users in state store {store.path} contain item rows of the {stored_catalog}, "
        "where the same rows name other items. Import into a new --state-dir, or delete the "
        f"stored users first with `hiertcn-stream state --state-dir {store.path} evict "
        "--inactive-days 0 --now` (run `export FILE` first to keep a copy)"
    )


def stored_sizes(store: StateStore) -> StateSizes | None:
    """Return the sizes of the states in `store`, or None when it has no users.

    They come from the store's metadata, completed from the first stored state, because stores
    filled by `import` of earlier versions have no sizes in their metadata.
    """
    if store.user_count() == 0:
        return None
    sizes = StateSizes.of_meta(store.meta())
    if sizes.state_shape is None or sizes.embedding_dim is None:
        for _user, blob in iter_records(store, chunk_size=1):
            sizes = sizes.merged_with(StateSizes.of_state(codec.decode_state(blob)))
            break
    return sizes


def import_export(
    store: StateStore, path: Path, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> tuple[int, int]:
    """Commit the records of an export file, `chunk_size` users per transaction; return counts.

    Call `scan_export` first: this function commits as it reads, so a file that is corrupt
    further on would leave the users before that point in the store.
    """
    users = 0
    states: dict[str, UserState] = {}
    positions: dict[tuple[str, int], PartitionPosition] = {}
    for _number, _line, kind, value in _iter_export(path):
        if kind == "user":
            user, state = value
            states[user] = state
        elif kind == "position":
            key, position = value
            positions[key] = position
        if len(states) >= chunk_size:
            store.commit(states)
            users += len(states)
            states = {}
    store.commit(states, positions)
    users += len(states)
    logger.info(
        "imported %s and %s from %s",
        plural(users, "user"),
        format_position_count(len(positions)),
        path,
    )
    return users, len(positions)


def _check_header(record: dict[str, Any], number: int, path: Path) -> dict[str, Any]:
    if number != 1:
        raise ExportFileError(
            f"record {number} of {path} is a header, but only the first record may be one, so "
            "the file is corrupt: export the store again"
        )
    if record.get("format") != EXPORT_FORMAT_NAME:
        raise ExportFileError(
            f"{path} has a header of format {record.get('format')!r}, expected "
            f"{EXPORT_FORMAT_NAME!r}: {_IMPORT_FIX}"
        )
    version = record.get("version")
    if not isinstance(version, int) or version > EXPORT_VERSION:
        raise ExportFileError(
            f"{path} is an export of version {version!r}, but this code reads up to "
            f"{EXPORT_VERSION}: upgrade hiertcn before importing it"
        )
    shape = record.get("state_shape")
    dim = record.get("embedding_dim")
    version_name = record.get("bundle_version")
    if not (
        (shape is None or (isinstance(shape, list) and len(shape) == 2 and _are_sizes(shape)))
        and (dim is None or _are_sizes([dim]))
        and (version_name is None or isinstance(version_name, str))
    ):
        raise ExportFileError(
            f"the header of {path} has state_shape {shape!r}, embedding_dim {dim!r} and "
            f"bundle_version {version_name!r}, expected [G, H], D and a string (or null), so "
            "the file is corrupt: export the store again"
        )
    catalog = record.get("catalog")
    items = record.get("catalog_items")
    if not (
        (catalog is None or isinstance(catalog, str)) and (items is None or _are_sizes([items]))
    ):
        raise ExportFileError(
            f"the header of {path} has catalog {catalog!r} and catalog_items {items!r}, "
            "expected a sha256 string and an item count (or null), so the file is corrupt: "
            "export the store again"
        )
    return record


def _are_sizes(values: list[Any]) -> bool:
    return all(type(value) is int and value >= 0 for value in values)


def _check_state_sizes(
    state: UserState, sizes: StateSizes, user: str, number: int, path: Path, from_header: bool
) -> StateSizes:
    """Return `sizes` completed from `state`; raise when `state` has other sizes."""
    try:
        codec.encode_state(state)  # the checks of a commit: dtypes, dimensions, embedding sizes
    except StateCodecError as error:
        raise ExportFileError(
            f"user record {number} of {path} is invalid ({error}): {_IMPORT_FIX}"
        ) from error
    own = StateSizes.of_state(state)
    if own.differs_from(sizes):
        source = "the file's header" if from_header else "the users before it in the file"
        raise ExportFileError(
            f"user {user!r} (record {number}) of {path} has states with {own}, but {source} "
            f"gives {sizes}: the file mixes states of bundles with other sizes; export each "
            "store on its own"
        )
    return sizes.merged_with(own)


def _describe_non_finite(state: UserState, user: str, location: str) -> list[str]:
    """Return one description per float field of `state` with a NaN or infinite value."""
    descriptions = []
    for field, index, value in state.non_finite_values():
        element = f"{field}[{', '.join(map(str, index))}]" if index else field
        descriptions.append(f"user {user!r} ({location}) has {element} = {value}")
    return descriptions


def _check_finite(non_finite: list[str], path: Path) -> None:
    """Raise `ExportFileError` when a state of the file has a NaN or infinite value.

    The model would score such a user NaN on every event, and the GRU update keeps the NaN.
    """
    if not non_finite:
        return
    more = f" (and {len(non_finite) - 1} more such fields)" if len(non_finite) > 1 else ""
    raise ExportFileError(
        f"{path} has a NaN or infinite value in a user state: {non_finite[0]}{more}. The model "
        "would score that user NaN from then on, so nothing was imported: correct the value, or "
        "delete the user's record and lower `users` in the end record by one, so that the user "
        "starts anew. A number beyond the float32 range reads as infinite too"
    )


def _location(number: int, line: int | None) -> str:
    """Return where record `number` is: with its line in a JSON-lines file."""
    return f"record {number}" if line is None else f"record {number}, line {line}"


def _check_end(end: dict[str, Any] | None, users: int, positions: int, path: Path) -> None:
    found = f"{plural(users, 'user')} and {format_position_count(positions)}"
    if end is None:
        raise ExportFileError(
            f"{path} ends after {found} without the end record that `state export` writes "
            "last, so the file is incomplete (cut short, or still being written) and nothing "
            "was imported: use a complete copy, or export the store again"
        )
    if end.get("users") != users or end.get("positions") != positions:
        raise ExportFileError(
            f"{path} contains {found}, but its end record counts "
            f"{end.get('users')!r} users and {end.get('positions')!r} positions, so the file is "
            "corrupt and nothing was imported: use a complete copy, or export the store again"
        )


def _check_legacy(path: Path, end: dict[str, Any] | None) -> None:
    if end is not None:
        raise ExportFileError(
            f"{path} has an end record but no header, so the file is corrupt: {_IMPORT_FIX}"
        )
    logger.warning(
        "%s has no header, so an earlier hiertcn version wrote it and the import cannot check "
        "that the file is complete: compare the imported user count with the store it came "
        "from, or export that store again with this version",
        path,
    )


def _iter_export(path: Path) -> Iterator[tuple[int, int | None, str, Any]]:
    """Yield `(record number, line, type, value)` for every record of an export file.

    The line is the record's line in a JSON-lines file, and None in msgpack. The value is the
    record for a header or an end record, `(user, UserState)` for a user and
    `((topic, partition), PartitionPosition)` for a position.
    """
    for number, (line, record) in enumerate(_read_records(path), start=1):
        kind = record.get("type") if isinstance(record, dict) else None
        if kind == "user":
            yield number, line, kind, _user_of_record(record, path, number)
        elif kind == "position":
            yield number, line, kind, _position_of_record(record, path, number)
        elif kind in ("header", "end"):
            yield number, line, kind, record
        else:
            raise ExportFileError(
                f"record {number} of {path} has type {kind!r}, expected 'header', 'position', "
                f"'user' or 'end': {_IMPORT_FIX}"
            )


def _user_of_record(record: dict[str, Any], path: Path, number: int) -> tuple[str, UserState]:
    try:
        user = record["user"]
        if not isinstance(user, str):
            raise TypeError(f"user id {user!r} is not a string")
        if "record" in record:
            return user, codec.decode_state(record["record"])
        return user, state_from_json(record["state"])
    except (KeyError, TypeError, ValueError, AttributeError, StateCodecError) as error:
        raise ExportFileError(
            f"user record {number} of {path} is invalid ({error!r}): {_IMPORT_FIX}"
        ) from error


def _position_of_record(
    record: dict[str, Any], path: Path, number: int
) -> tuple[tuple[str, int], PartitionPosition]:
    try:
        key = (str(record["topic"]), int(record["partition"]))
        replay = record.get("replay")
        progress = None if replay is None else ReplayProgress(**replay)
        position = PartitionPosition(int(record["next_offset"]), float(record["watermark"]))
        return key, replace(position, replay=progress)
    except (KeyError, TypeError, ValueError) as error:
        raise ExportFileError(
            f"position record {number} of {path} is invalid ({error!r}): {_IMPORT_FIX}"
        ) from error


def _read_records(path: Path) -> Iterator[tuple[int | None, Any]]:
    """Yield `(line, record)` for the records of a JSON-lines or msgpack file; the first byte
    `{` means JSON lines. The line is None in msgpack."""
    try:
        stream = path.open("rb")
    except OSError as error:
        raise ExportFileError(
            f"cannot read import file {path} ({error}): check the path"
        ) from error
    with stream:
        first = stream.read(1)
        stream.seek(0)
        if first == b"{":
            yield from _read_json_lines(stream, path)
            return
        try:
            for record in msgpack.Unpacker(stream, raw=False):
                yield None, record
        except (ValueError, msgpack.UnpackException) as error:
            raise ExportFileError(
                f"{path} is neither JSON lines nor a valid msgpack stream ({error}): {_IMPORT_FIX}"
            ) from error


def _read_json_lines(stream: BinaryIO, path: Path) -> Iterator[tuple[int, Any]]:
    for number, line in enumerate(stream, start=1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except ValueError as error:
            raise ExportFileError(
                f"line {number} of {path} is not valid JSON ({error}): {_IMPORT_FIX}"
            ) from error
