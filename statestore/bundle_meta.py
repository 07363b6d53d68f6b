"""The bundle metadata of a state store, and the checks on open that keep states and bundle in step.

Keys of the `meta` database that describe bundles (msgpack values):

- `bundle_version`: the bundle that opened the store most recently.
- `state_shape` [G, H] and `embedding_dim` D: the sizes of the stored states.
- `catalog`: the sha256 (hex) of the `item_ids.json` of the bundle whose item rows the stored
  open sessions hold, and `catalog_items`: its item count N.
- `bundle_history`: up to `HISTORY_LENGTH` entries, oldest first, one per change of the bundle
  that opened the store for writing. Each entry is `{"bundle_version", "since", "state_shape",
  "embedding_dim", "catalog", "catalog_items"}`, where `since` is the UTC time at which the entry
  was recorded. A store written before the history existed gets a first entry from its
  `bundle_version`, with `since` null.

A state stores its open session as item rows, not item ids. A bundle with the same sizes but
another catalog (other filters, rows in another order) would read those rows as other items
without any error. So a store with users rejects a bundle of another catalog on open, as it
rejects a bundle of other sizes. A store without users accepts any bundle and records it. A
store written before catalogs were recorded has none, so it only warns when the bundle version
changes, as before, and records the catalog from then on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from statestore.errors import CatalogMismatchError, StoreConfigError

if TYPE_CHECKING:
    from statestore.store import StoreConfig

logger = logging.getLogger(__name__)

HISTORY_LENGTH = 10
# Meta keys of the sizes and of the catalog, which a history entry repeats.
SIZE_KEYS = ("state_shape", "embedding_dim")
CATALOG_KEYS = ("catalog", "catalog_items")
# Hex digits of a catalog hash in messages: enough to tell catalogs apart.
CATALOG_HEX_DIGITS = 12


def bundle_meta_updates(
    config: StoreConfig, meta: Mapping[str, Any], users: int, path: Path
) -> dict[str, object]:
    """Raise when the `users` stored states do not fit the bundle of `config`; return the meta
    updates that record that bundle.

    Raises `StoreConfigError` for other sizes and `CatalogMismatchError` for another catalog.
    The caller writes the updates only after every check passed, so a rejected bundle leaves the
    meta unchanged.
    """
    history = read_history(meta)
    # Only stored users carry GRU states and session rows, so a store whose users were all
    # evicted keeps no states of the old bundle, only its metadata and positions.
    if users > 0:
        _check_sizes(config, meta, history, path)
        _check_catalog(config, meta, history, path)
        _warn_about_bundle_change(config, meta, path)
    recorded = {
        "bundle_version": config.bundle_version,
        "state_shape": None if config.state_shape is None else list(config.state_shape),
        "embedding_dim": config.embedding_dim,
        "catalog": config.catalog,
    }
    updates: dict[str, object] = {
        name: value
        for name, value in recorded.items()
        if value is not None and meta.get(name) != value
    }
    if config.catalog is not None and meta.get("catalog_items") != config.catalog_items:
        # Written with the catalog even when unknown, so no count of an older catalog remains.
        updates["catalog_items"] = config.catalog_items
    if config.bundle_version is not None:
        extended = extend_history(history, config)
        if extended != meta.get("bundle_history"):
            updates["bundle_history"] = extended
    return updates


def read_history(meta: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Return the bundle history of `meta`, oldest first.

    A store written before the history existed gets one entry from its `bundle_version`, with
    `since` None, or none when it has no bundle version either.
    """
    stored = meta.get("bundle_history")
    if isinstance(stored, list):
        return [dict(entry) for entry in stored if isinstance(entry, dict)]
    version = meta.get("bundle_version")
    if version is None:
        return []
    entry = {"bundle_version": version, "since": None}
    entry.update({key: meta.get(key) for key in (*SIZE_KEYS, *CATALOG_KEYS)})
    return [entry]


def extend_history(history: list[dict[str, Any]], config: StoreConfig) -> list[dict[str, Any]]:
    """Return `history` with the bundle of `config` as its newest entry, at most
    `HISTORY_LENGTH` entries.

    The same bundle as the newest entry adds no entry. It only fills that entry's unknown sizes
    and catalog, and keeps its `since`: the time at which the bundle first opened the store, or
    None for an entry from before the history existed.
    """
    if config.bundle_version is None:
        return history
    entry = _entry_of(config)
    if history and history[-1].get("bundle_version") == config.bundle_version:
        newest = dict(history[-1])
        for key in (*SIZE_KEYS, *CATALOG_KEYS):
            if newest.get(key) is None:
                newest[key] = entry[key]
        return [*history[:-1], newest]
    return [*history, entry][-HISTORY_LENGTH:]


def writers_phrase(
    history: list[dict[str, Any]], meta: Mapping[str, Any], keys: tuple[str, ...], what: str
) -> str:
    """Name the bundles that may have written the stored states, for a message.

    Those are the newest entries of `history` whose values of `keys` match the stored ones (or
    are unknown): the bundles that opened the store since it recorded those values, its `what`.
    """
    versions: list[str] = []
    for entry in reversed(history):
        if any(entry.get(key) not in (None, meta.get(key)) for key in keys):
            break
        versions.append(str(entry.get("bundle_version")))
    names = list(dict.fromkeys(reversed(versions)))
    if not names:
        stored = meta.get("bundle_version")
        return "an unrecorded bundle" if stored is None else f"bundle {stored}"
    if len(names) == 1:
        return f"bundle {names[0]}"
    return f"bundles {', '.join(names)} (those that opened the store since it recorded its {what})"


def describe_catalog(catalog: object, items: object) -> str:
    """Return `catalog of N items (item_ids.json sha256 1a2b…)`.

    A catalog that is not a string, or a count that is not an int (missing, or invalid in the
    stored meta), reads as unknown.
    """
    count = str(items) if isinstance(items, int) else "an unknown number of"
    digest = f"{catalog[:CATALOG_HEX_DIGITS]}…" if isinstance(catalog, str) else "unknown"
    return f"catalog of {count} items (item_ids.json sha256 {digest})"


def _entry_of(config: StoreConfig) -> dict[str, Any]:
    return {
        "bundle_version": config.bundle_version,
        "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "state_shape": None if config.state_shape is None else list(config.state_shape),
        "embedding_dim": config.embedding_dim,
        "catalog": config.catalog,
        "catalog_items": config.catalog_items if config.catalog is not None else None,
    }


def _evict_all_fix(path: Path) -> str:
    return (
        f"delete the stored users with `hiertcn-stream state --state-dir {path} evict "
        "--inactive-days 0 --now` (run `export FILE` first to keep a copy)"
    )


def _check_sizes(
    config: StoreConfig, meta: Mapping[str, Any], history: list[dict[str, Any]], path: Path
) -> None:
    stored_shape = meta.get("state_shape")
    stored_dim = meta.get("embedding_dim")
    shape_differs = (
        config.state_shape is not None
        and stored_shape is not None
        and list(config.state_shape) != list(stored_shape)
    )
    dim_differs = (
        config.embedding_dim is not None
        and stored_dim is not None
        and config.embedding_dim != stored_dim
    )
    if not (shape_differs or dim_differs):
        return
    writers = writers_phrase(history, meta, SIZE_KEYS, "sizes")
    raise StoreConfigError(
        f"state store {path} contains states with [G, H] = {stored_shape} and D = {stored_dim} "
        f"of {writers}, but bundle {config.bundle_version} has [G, H] = "
        f"{list(config.state_shape or [])} and D = {config.embedding_dim}: pass a new "
        f"--state-dir, or {_evict_all_fix(path)}"
    )


def _check_catalog(
    config: StoreConfig, meta: Mapping[str, Any], history: list[dict[str, Any]], path: Path
) -> None:
    stored = meta.get("catalog")
    if config.catalog is None or stored is None or stored == config.catalog:
        return
    stored_catalog = describe_catalog(stored, meta.get("catalog_items"))
    new_catalog = describe_catalog(config.catalog, config.catalog_items)
    writers = writers_phrase(history, meta, CATALOG_KEYS, "catalog")
    raise CatalogMismatchError(
        f"state store {path} contains open sessions stored as item rows of the {stored_catalog} "
        f"of {writers}, but bundle {config.bundle_version} has another {new_catalog}, where the "
        "same rows name other items, so the stored sessions would continue with the wrong "
        "items. Pass a new --state-dir (a worker needs --rebuild-state there to read the topic "
        f"from its earliest offset again), or {_evict_all_fix(path)}"
    )


def _warn_about_bundle_change(config: StoreConfig, meta: Mapping[str, Any], path: Path) -> None:
    stored_version = meta.get("bundle_version")
    if config.bundle_version is None or stored_version in (None, config.bundle_version):
        return
    logger.warning(
        "state store %s was written with bundle %s and is now used with bundle %s: "
        "the stored GRU states come from that bundle, which may hold another model or "
        "another export of the same one",
        path,
        stored_version,
        config.bundle_version,
    )
