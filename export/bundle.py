"""Load a model bundle and run its two ONNX graphs: the loader of the serving side.

This module never imports torch or `hiertcn`, directly or indirectly: the worker runs on ONNX
Runtime and numpy alone. Shape letters: `B` rows in a batch, `L` events in a session prefix,
`N` items, `D` item-embedding size, `G` GRU layers, `H` GRU hidden size.

`load_bundle` checks, before it opens anything:

- `manifest.json` is present and its `format_version` is the one this code reads. A newer one
  raises `BundleVersionError` with the fix "upgrade hiertcn", an older one with "export again".
- the manifest's `version` equals `compute_version` of the manifest, so an edited version,
  file hash or serving setting raises `BundleIntegrityError`.
- every file of the bundle is present and its sha256 equals the manifest's entry
  (`BundleIntegrityError` otherwise). Each graph is hashed from the same bytes that ONNX Runtime
  then loads, so a file changed between the check and the load cannot slip through.
- the arrays agree with the manifest's N, D, G and H.
- the item table and the start state contain no NaN or infinite value. The item table is
  read once more for this, in blocks of `_FINITE_CHECK_VALUES`, after the hash check read it.
- `max_session_items` is at most `MAX_SESSION_ITEMS`.
- every item id has 1 to `MAX_ITEM_ID_LENGTH` characters, as an event's item id must.
- neither graph stores tensor data in external files or uses an operator outside the standard
  ONNX domains (`export.graph_content`), because no sha256 of the manifest covers such a file
  or the library that implements such an operator.

ONNX Runtime errors while it opens a graph raise `BundleError` that names the file.

Once ONNX Runtime has opened the graphs, it checks that each graph has the inputs and outputs of
the bundle format (`export.graph_signature`): every input name and no other, the output name,
their dtypes and ranks, and D, G and H where the graph fixes them. Otherwise the first call would
fail inside ONNX Runtime, for example with "Invalid input name: state" when the exporter dropped
an input that the model's function does not use.

Behaviour of the methods for inputs a worker can produce:

- A batch of 0 rows is valid: `session_step` returns float32 [0, D] and `session_close`
  returns float32 [0, G, H], without calling ONNX Runtime.
- An empty prefix is valid: a row with `lengths == 0` gets the prediction for the first item of
  a session, from the model's start token and the state alone. A prefix of width L = 0 is
  widened to one zero column before the graph runs.
- `gather_items(rows)` raises `InvalidInputError` for a row outside 0..N-1 (the worker maps
  unknown external ids to rows with `row_of` first, and must drop what is not there).
- An array of the wrong dtype, rank or size raises `InvalidInputError` that names the array and
  the expected dtype and shape. Nothing is cast silently, so a float64 prefix is an error.
  `lengths` outside 0..L raise it as well.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from export.errors import BundleError, BundleIntegrityError, InvalidInputError
from export.graph_content import graph_content_problems
from export.graph_signature import (
    CLOSE_SIGNATURE,
    STEP_SIGNATURE,
    GraphSignature,
    declared_from_runtime,
    signature_problems,
)
from export.manifest import (
    CLOSE_INPUTS,
    CLOSE_OUTPUT,
    ITEM_IDS_FILE,
    ITEMS_FILE,
    MANIFEST_FILE,
    SESSION_CLOSE_FILE,
    SESSION_STEP_FILE,
    START_STATE_FILE,
    STEP_INPUTS,
    STEP_OUTPUT,
    Manifest,
    compute_version,
    read_manifest,
    sha256_bytes,
    sha256_file,
)
from export.providers import (
    RuntimeConfig,
    open_session,
    requested_providers,
    session_options,
)

if TYPE_CHECKING:
    # Only for annotations: `export.providers` imports onnxruntime after it turns off the
    # runtime's telemetry.
    import onnxruntime as ort

logger = logging.getLogger(__name__)

ITEM_TABLE_DTYPES = (np.dtype(np.float32), np.dtype(np.float16))
# Largest `max_session_items` (the TCN receptive field) a bundle may declare. Every user state
# stores up to that many item rows of the open session, so a damaged or edited value would make
# every state and every session-step batch that large.
# NOTE: the manifest is the only record of the receptive field (the graphs accept any prefix
# width), so the loader can bound the value but cannot compare it with the graph.
MAX_SESSION_ITEMS = 10_000
# Maximum length of an item id in a catalog, in characters. It equals the limit of the event
# check (`stream.events.EventConfig.max_id_length`, which a test compares), so an event can
# request every row, and it bounds the size of each output entry. It is not imported from
# `stream`, because the serving side depends on `export`, not the reverse.
MAX_ITEM_ID_LENGTH = 256


class ModelBundle:
    """A loaded bundle: the item table, the id mapping, the start state and both graphs.

    Attributes: `manifest` (`Manifest`), `item_table` (memory-mapped float32 or float16 [N, D]),
    `item_ids` (external id of each row), `row_of` (external id -> row), `start_state`
    (float32 [G, H]), `providers` (the ONNX Runtime providers in use, most preferred first),
    `version` (the manifest's short id of the bundle, checked against its files and settings).
    """

    def __init__(
        self,
        path: Path,
        manifest: Manifest,
        item_table: np.ndarray,
        item_ids: list[str],
        start_state: np.ndarray,
        step_session: ort.InferenceSession,
        close_session: ort.InferenceSession,
    ) -> None:
        self.path = path
        self.manifest = manifest
        self.item_table = item_table
        self.item_ids = item_ids
        self.row_of = {item: row for row, item in enumerate(item_ids)}
        self.start_state = start_state
        self._step = step_session
        self._close = close_session
        self.providers: list[str] = list(step_session.get_providers())

    @property
    def version(self) -> str:
        """Short id of the bundle: 12 hex digits of a digest over its files and settings."""
        return self.manifest.version

    @property
    def num_items(self) -> int:
        """Items N in the catalog."""
        return self.manifest.num_items

    @property
    def catalog(self) -> str:
        """Identity of the item catalog: the sha256 (hex) of `item_ids.json`, as the manifest
        lists it.

        User states store item rows, and two bundles map rows to the same items exactly when
        this value is equal, so the state store records it and checks it on open.
        """
        return self.manifest.files[ITEM_IDS_FILE]

    @property
    def embedding_dim(self) -> int:
        """Item-embedding size D."""
        return self.manifest.embedding_dim

    @property
    def state_shape(self) -> tuple[int, int]:
        """Shape (G, H) of one user's GRU state."""
        return (self.manifest.gru_layers, self.manifest.hidden_size)

    def gather_items(self, rows: np.ndarray) -> np.ndarray:
        """Return the float32 embeddings [..., D] of item rows of any shape.

        Raises `InvalidInputError` when `rows` is not an integer array or contains a row outside
        0..N-1.
        """
        rows = np.asarray(rows)
        if rows.dtype.kind not in "iu":
            raise InvalidInputError(
                f"item rows have dtype {rows.dtype}, expected an integer array of rows in "
                f"0..{self.num_items - 1}"
            )
        if rows.size:
            low, high = int(rows.min()), int(rows.max())
            if low < 0 or high >= self.num_items:
                bad = low if low < 0 else high
                raise InvalidInputError(
                    f"item row {bad} is outside 0..{self.num_items - 1}: map external ids with "
                    "`row_of` and drop the ids it does not contain"
                )
        return np.asarray(self.item_table[rows], dtype=np.float32)

    def session_step(
        self, prefix: np.ndarray, lengths: np.ndarray, state: np.ndarray
    ) -> np.ndarray:
        """Return the user embeddings float32 [B, D] after the last real item of each prefix.

        `prefix` float32 [B, L, D] is left-padded, `lengths` int64 [B] in 0..L, `state`
        float32 [B, G, H].
        """
        batch = _check_array("prefix", prefix, np.float32, (None, None, self.embedding_dim))[0]
        _check_array("lengths", lengths, np.int64, (batch,))
        _check_array("state", state, np.float32, (batch, *self.state_shape))
        width = prefix.shape[1]
        if batch and (lengths.min() < 0 or lengths.max() > width):
            raise InvalidInputError(
                f"lengths range over {int(lengths.min())}..{int(lengths.max())}, expected values "
                f"in 0..{width} (the prefix width L)"
            )
        if batch == 0:
            return np.zeros((0, self.embedding_dim), dtype=np.float32)
        if width == 0:
            prefix = np.zeros((batch, 1, self.embedding_dim), dtype=np.float32)
        feeds = dict(zip(STEP_INPUTS, (prefix, lengths, state), strict=True))
        return self._step.run([STEP_OUTPUT], feeds)[0]

    def session_close(self, state: np.ndarray, session_mean: np.ndarray) -> np.ndarray:
        """Return the GRU states float32 [B, G, H] after closing one session per row.

        `state` float32 [B, G, H] is the state before the session, `session_mean` float32
        [B, D] the mean embedding of the session's items.
        """
        batch = _check_array("state", state, np.float32, (None, *self.state_shape))[0]
        _check_array("session_mean", session_mean, np.float32, (batch, self.embedding_dim))
        if batch == 0:
            return np.zeros((0, *self.state_shape), dtype=np.float32)
        feeds = dict(zip(CLOSE_INPUTS, (state, session_mean), strict=True))
        return self._close.run([CLOSE_OUTPUT], feeds)[0]


def _check_array(
    name: str, array: object, dtype: type, shape: tuple[int | None, ...]
) -> tuple[int, ...]:
    """Raise `InvalidInputError` unless `array` is an ndarray of `dtype` and `shape`.

    `None` in `shape` accepts any size on that axis. Returns the array's shape.
    """
    expected = "[" + ", ".join("*" if size is None else str(size) for size in shape) + "]"
    if not isinstance(array, np.ndarray):
        raise InvalidInputError(
            f"{name} is a {type(array).__name__}, expected a numpy array "
            f"{np.dtype(dtype).name} {expected}"
        )
    if array.dtype != dtype:
        raise InvalidInputError(
            f"{name} has dtype {array.dtype}, expected {np.dtype(dtype).name} {expected}: "
            f"convert it with .astype(np.{np.dtype(dtype).name})"
        )
    matches = array.ndim == len(shape) and all(
        size is None or size == actual for size, actual in zip(shape, array.shape, strict=False)
    )
    if not matches:
        raise InvalidInputError(
            f"{name} has shape {list(array.shape)}, expected {np.dtype(dtype).name} {expected}"
        )
    return array.shape


def load_bundle(
    path: str | os.PathLike[str],
    device: str = "cpu",
    intra_op_threads: int | None = None,
    inter_op_threads: int | None = None,
) -> ModelBundle:
    """Check the bundle in directory `path` and open it on `device` ("cpu", "cuda" or "auto").

    "cuda" raises `ProviderError` when ONNX Runtime does not really run the graphs with the CUDA
    provider; "auto" uses CUDA when it starts and CPU otherwise. Both check the NVIDIA driver
    first (`export.providers.probe_cuda_driver`), so that on a host without a GPU "cuda" fails
    before any file is read and ONNX Runtime prints nothing. Thread counts of None leave ONNX
    Runtime's defaults.
    """
    path = Path(path)
    config = RuntimeConfig(device, intra_op_threads, inter_op_threads)
    providers = requested_providers(config.device)
    manifest = read_manifest(path)
    _check_session_items(path, manifest)
    _check_version(path, manifest)
    step_bytes = _read_checked(path, SESSION_STEP_FILE, manifest)
    close_bytes = _read_checked(path, SESSION_CLOSE_FILE, manifest)
    _check_graph_content(path, SESSION_STEP_FILE, step_bytes)
    _check_graph_content(path, SESSION_CLOSE_FILE, close_bytes)
    for name in (ITEMS_FILE, ITEM_IDS_FILE, START_STATE_FILE):
        _check_file_hash(path, name, manifest)

    item_table = _load_item_table(path / ITEMS_FILE, manifest)
    item_ids = _load_item_ids(path / ITEM_IDS_FILE, manifest)
    start_state = _load_start_state(path / START_STATE_FILE, manifest)

    options = session_options(config)
    step = open_session(step_bytes, path / SESSION_STEP_FILE, config, options, providers)
    close = open_session(close_bytes, path / SESSION_CLOSE_FILE, config, options, providers)
    _check_graph(path, step, STEP_SIGNATURE, manifest)
    _check_graph(path, close, CLOSE_SIGNATURE, manifest)
    logger.info(
        "loaded bundle %s (version %s, %d items, D=%d, G=%d, H=%d) on %s",
        path,
        manifest.version,
        manifest.num_items,
        manifest.embedding_dim,
        manifest.gru_layers,
        manifest.hidden_size,
        step.get_providers(),
    )
    return ModelBundle(path, manifest, item_table, item_ids, start_state, step, close)


def _check_session_items(path: Path, manifest: Manifest) -> None:
    if manifest.max_session_items > MAX_SESSION_ITEMS:
        raise BundleError(
            f"{path / MANIFEST_FILE} has max_session_items={manifest.max_session_items}, above "
            f"the maximum of {MAX_SESSION_ITEMS} session items (the model's receptive field) "
            "that this loader accepts: the manifest was changed or damaged, export the bundle "
            "again with `hiertcn export`"
        )


def _check_graph_content(path: Path, name: str, model_bytes: bytes) -> None:
    """Raise `BundleError` when a graph reads external data or uses a non-standard operator."""
    problems = graph_content_problems(model_bytes)
    if problems:
        raise BundleError(
            f"{path / name} is rejected: {'; '.join(problems)}. A bundle's graphs must contain "
            "all their weights and only standard ONNX operators, because the manifest's hashes "
            "cover nothing else: export the bundle again with `hiertcn export`"
        )


def _check_graph(
    path: Path, session: ort.InferenceSession, signature: GraphSignature, manifest: Manifest
) -> None:
    """Raise `BundleError` when an opened graph's inputs or outputs differ from the format."""
    problems = signature_problems(
        signature,
        declared_from_runtime(session.get_inputs()),
        declared_from_runtime(session.get_outputs()),
        manifest.to_dict(),
    )
    if problems:
        raise BundleError(
            f"{path / signature.file} does not match the bundle format: {'; '.join(problems)}. "
            "The worker cannot run this graph: export the bundle again with `hiertcn export`, "
            "which names the cause"
        )


def _check_version(path: Path, manifest: Manifest) -> None:
    expected = compute_version(manifest)
    if manifest.version != expected:
        raise BundleIntegrityError(
            f"{path / MANIFEST_FILE} has version {manifest.version!r}, but its file hashes and "
            f"settings give version {expected!r}: the manifest was edited or damaged after "
            "export; export the bundle again with `hiertcn export`"
        )


def _missing_file_error(path: Path, name: str) -> BundleIntegrityError:
    return BundleIntegrityError(
        f"{path / name} not found: the bundle at {path} is incomplete; copy the whole bundle "
        "directory again, or export it again with `hiertcn export`"
    )


def _hash_mismatch_error(path: Path, name: str, actual: str, expected: str) -> BundleIntegrityError:
    return BundleIntegrityError(
        f"{path / name} has sha256 {actual[:12]}…, but the manifest lists {expected[:12]}…: the "
        "file was changed or damaged after export; copy the bundle again, or export it again "
        "with `hiertcn export`"
    )


def _read_checked(path: Path, name: str, manifest: Manifest) -> bytes:
    """Read a file of the bundle and check its sha256 against the manifest."""
    if not (path / name).is_file():
        raise _missing_file_error(path, name)
    data = (path / name).read_bytes()
    actual = sha256_bytes(data)
    if actual != manifest.files[name]:
        raise _hash_mismatch_error(path, name, actual, manifest.files[name])
    return data


def _check_file_hash(path: Path, name: str, manifest: Manifest) -> None:
    if not (path / name).is_file():
        raise _missing_file_error(path, name)
    actual = sha256_file(path / name)
    if actual != manifest.files[name]:
        raise _hash_mismatch_error(path, name, actual, manifest.files[name])


def _load_item_table(file: Path, manifest: Manifest) -> np.ndarray:
    # Memory-mapped read-only, so every worker process on a host shares one copy in the page cache.
    table = np.load(file, mmap_mode="r", allow_pickle=False)
    expected = (manifest.num_items, manifest.embedding_dim)
    if table.dtype not in ITEM_TABLE_DTYPES or table.shape != expected:
        raise BundleError(
            f"{file} contains {table.dtype} {list(table.shape)}, expected float32 or float16 "
            f"{list(expected)} from the manifest: export the bundle again"
        )
    _check_finite_table(file, table)
    return table


# Values of the item table that the finite check reads at once, which bounds its temporary
# arrays to a few MiB however large the memory-mapped table is.
_FINITE_CHECK_VALUES = 1 << 22


def _check_finite_table(file: Path, table: np.ndarray) -> None:
    """Raise `BundleError` naming the first row of `table` with a NaN or infinite value."""
    rows_per_block = max(1, _FINITE_CHECK_VALUES // max(table.shape[1], 1))
    for start in range(0, table.shape[0], rows_per_block):
        finite = np.isfinite(table[start : start + rows_per_block]).all(axis=1)
        if not finite.all():
            row = start + int(np.argmin(finite))
            raise BundleError(
                f"{file} contains a NaN or infinite value in row {row}, so the scores and "
                "states computed from it would be NaN: export the bundle again from a "
                "checkpoint with finite weights, retrained with a lower --lr or with "
                "--grad-clip if the training diverged"
            )


def _load_item_ids(file: Path, manifest: Manifest) -> list[str]:
    item_ids = json.loads(file.read_text())
    valid = isinstance(item_ids, list) and all(isinstance(item, str) for item in item_ids)
    if not valid or len(item_ids) != manifest.num_items:
        raise BundleError(
            f"{file} is not a JSON list of {manifest.num_items} strings: export the bundle again"
        )
    if len(set(item_ids)) != len(item_ids):
        raise BundleError(f"{file} lists an item id twice: export the bundle again")
    _check_item_id_lengths(file, item_ids)
    return item_ids


def _check_item_id_lengths(file: Path, item_ids: list[str]) -> None:
    """Raise `BundleError` naming the first row whose id is empty or too long for an event."""
    for row, item in enumerate(item_ids):
        if not 1 <= len(item) <= MAX_ITEM_ID_LENGTH:
            raise BundleError(
                f"{file} row {row} has an item id of {len(item)} characters, but events carry "
                f"item ids of 1 to {MAX_ITEM_ID_LENGTH} characters, so no event could request "
                "it and the outputs that list it could exceed the message size limit: give the "
                "item a shorter id in the training data and export the bundle again"
            )


def _load_start_state(file: Path, manifest: Manifest) -> np.ndarray:
    start_state = np.load(file, allow_pickle=False)
    expected = (manifest.gru_layers, manifest.hidden_size)
    if start_state.dtype != np.float32 or start_state.shape != expected:
        raise BundleError(
            f"{file} contains {start_state.dtype} {list(start_state.shape)}, expected float32 "
            f"{list(expected)} from the manifest: export the bundle again"
        )
    if not np.isfinite(start_state).all():
        raise BundleError(
            f"{file} contains a NaN or infinite value: export the bundle again from a "
            "checkpoint with finite weights, retrained with a lower --lr or with --grad-clip "
            "if the training diverged"
        )
    return start_state
