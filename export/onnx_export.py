"""Turn a trained HierTCN into a model bundle: two ONNX graphs, the item table and a manifest.

This is the torch side of `export/`. Shape letters: `B` rows, `L` events in a session prefix,
`N` items, `D` item-embedding size, `G` GRU layers, `H` GRU hidden size.

The graphs come from the TorchScript exporter (`torch.onnx.export(..., dynamo=False)`), which
keeps the batch and length axes dynamic through the shape operators it records. The session close
is written with plain tensor operations in `hiertcn.models.regularization.gru_step` (torch's
gate layout: the reset gate multiplies `W_hn h + b_hn`, as ONNX `GRU` with
`linear_before_reset=1` does), so the graph contains no recurrent operator to get wrong.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import math
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from export.errors import ExportFailedError
from export.graph_content import graph_content_problems
from export.graph_signature import (
    CLOSE_SIGNATURE,
    STEP_SIGNATURE,
    GraphSignature,
    declared_from_onnx,
    missing_inputs,
    signature_problems,
)
from export.manifest import (
    BUNDLE_FILES,
    CLOSE_INPUTS,
    CLOSE_OUTPUT,
    FORMAT_VERSION,
    ITEM_IDS_FILE,
    ITEMS_FILE,
    SESSION_CLOSE_FILE,
    SESSION_GAP_RANGE,
    SESSION_STEP_FILE,
    START_STATE_FILE,
    STEP_INPUTS,
    STEP_OUTPUT,
    Manifest,
    compute_version,
    sha256_file,
    valid_session_gap,
    write_manifest,
)
from export.model_checks import (
    MEMBERS_DOC,
    check_exportable,
    check_finite_weights,
    receptive_field,
)
from export.step_graph import build_pruned_step

logger = logging.getLogger(__name__)

DEFAULT_SESSION_GAP = 1800.0  # seconds, the product default when the checkpoint names none
DEFAULT_TOP_K = 20  # list length when --top-k is not given and the catalog has 20 items or more
# Opset 17 is the default because this code was tested with it (torch 2.15, ONNX Runtime 1.31).
# `--opset` raises it.
DEFAULT_OPSET = 17
# Opsets below 14 lack operators that the graphs use.
MIN_OPSET = 14

# Max absolute difference from the model, in torch, up to which the pruned step is exported.
PRUNED_STEP_ATOL = 1e-5


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    """Options of one export."""

    opset: int = DEFAULT_OPSET
    float16_items: bool = False  # store items.npy as float16 (half the memory, ~1e-3 rounding)
    # Default list length written to the manifest, at most the item count. None takes 20, or the
    # item count when the catalog is smaller.
    top_k: int | None = None
    session_gap: float | None = None  # seconds; None takes it from the checkpoint or 1800
    pruned_step: bool = True  # export `step_graph.PrunedSessionStep` when the model allows it

    def __post_init__(self) -> None:
        if not MIN_OPSET <= self.opset <= max_opset():
            raise ExportFailedError(f"opset {self.opset} is invalid: {opset_fix()}")
        if self.top_k is not None and self.top_k < 1:
            raise ExportFailedError(f"top_k={self.top_k} is invalid: use a positive integer")
        if self.session_gap is not None and not valid_session_gap(self.session_gap):
            raise ExportFailedError(
                f"session_gap={self.session_gap} is invalid: use {SESSION_GAP_RANGE}"
            )


def max_opset() -> int:
    """Return the newest ONNX opset that the installed torch exporter writes."""
    # NOTE: torch exposes the maximum only in the private module torch.onnx._constants (torch
    # 2.15), so a torch that moves it falls back to the default opset, which is always accepted.
    try:
        from torch.onnx import _constants
    except ImportError:
        return DEFAULT_OPSET
    return int(getattr(_constants, "ONNX_MAX_OPSET", DEFAULT_OPSET))


def opset_fix() -> str:
    """Return the fix for an opset outside the range that this export supports."""
    return (
        f"use {MIN_OPSET} to {max_opset()}, the range that this export and the installed torch "
        f"{torch.__version__} support"
    )


class SessionStepGraph(nn.Module):
    """The session step as a module: prefix [B, L, D], lengths [B], state [B, G, H] -> [B, D]."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, prefix: torch.Tensor, lengths: torch.Tensor, state: torch.Tensor
    ) -> torch.Tensor:
        """Return the user embedding [B, D] after the last real item of each prefix."""
        return self.model.session_user_embedding(prefix, lengths, state)


class SessionCloseGraph(nn.Module):
    """The session close as a module: state [B, G, H], session_mean [B, D] -> [B, G, H]."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, state: torch.Tensor, session_mean: torch.Tensor) -> torch.Tensor:
        """Return the GRU state [B, G, H] after the session."""
        return self.model.close_session(state, session_mean)


def model_dimensions(model: nn.Module) -> dict[str, int]:
    """Return N, D, G, H and the receptive field of `model` as manifest keys."""
    table = model.item_embeddings()
    layers, hidden = model.start_state.shape
    return {
        "num_items": int(table.shape[0]),
        "embedding_dim": int(table.shape[1]),
        "gru_layers": int(layers),
        "hidden_size": int(hidden),
        "max_session_items": receptive_field(model),
    }


def export_session_step(model: nn.Module, opset: int, pruned: bool = True) -> bytes:
    """Export the session step graph and return the serialized ONNX model."""
    dims = model_dimensions(model)
    # Example sizes of 3 rows and 4 positions, so no axis is traced at a size of 1, which the
    # TorchScript exporter could fold into a constant.
    example = (
        torch.zeros(3, 4, dims["embedding_dim"]),
        torch.tensor([4, 1, 0], dtype=torch.int64),
        torch.zeros(3, dims["gru_layers"], dims["hidden_size"]),
    )
    axes = {
        "prefix": {0: "B", 1: "L"},
        "lengths": {0: "B"},
        "state": {0: "B"},
        STEP_OUTPUT: {0: "B"},
    }
    step = _fastest_step(model) if pruned else SessionStepGraph(model)
    graph = _export(step, example, STEP_INPUTS, STEP_OUTPUT, axes, opset)
    check_graph_signature(graph, STEP_SIGNATURE, dims)
    return _finish(graph, ["B", dims["embedding_dim"]])


def _fastest_step(model: nn.Module) -> nn.Module:
    """Return the pruned session step when it matches the model in torch, else the full one."""
    full = SessionStepGraph(model)
    pruned = build_pruned_step(model)
    if pruned is None:
        return full
    dims = model_dimensions(model)
    generator = torch.Generator().manual_seed(0)
    worst = 0.0
    # Widths around each multiple of the largest dilation and past the receptive field.
    for width in (0, 1, 2, 7, 8, 9, 16, 17, dims["max_session_items"] + 3):
        prefix = torch.randn(4, width, dims["embedding_dim"], generator=generator)
        lengths = torch.tensor([width, width // 2, 0, max(width - 1, 0)])
        prefix[1, : width - width // 2] = 0.0
        prefix[2] = 0.0
        prefix[3, :1] = 0.0
        state = torch.rand(4, dims["gru_layers"], dims["hidden_size"], generator=generator) * 2 - 1
        with torch.no_grad():
            difference = (full(prefix, lengths, state) - pruned(prefix, lengths, state)).abs()
        worst = max(worst, float(difference.max()))
    if worst > PRUNED_STEP_ATOL:
        logger.warning(
            "pruned session step differs from the model by %.2e: exporting the full one", worst
        )
        return full
    logger.info("exporting the pruned session step (max difference %.2e in torch)", worst)
    return pruned


def export_session_close(model: nn.Module, opset: int) -> bytes:
    """Export the session close graph and return the serialized ONNX model."""
    dims = model_dimensions(model)
    example = (
        torch.zeros(3, dims["gru_layers"], dims["hidden_size"]),
        torch.zeros(3, dims["embedding_dim"]),
    )
    axes = {"state": {0: "B"}, "session_mean": {0: "B"}, CLOSE_OUTPUT: {0: "B"}}
    graph = _export(SessionCloseGraph(model), example, CLOSE_INPUTS, CLOSE_OUTPUT, axes, opset)
    check_graph_signature(graph, CLOSE_SIGNATURE, dims)
    return _finish(graph, ["B", dims["gru_layers"], dims["hidden_size"]])


def check_graph_signature(
    graph: onnx.ModelProto, signature: GraphSignature, dims: dict[str, int]
) -> None:
    """Raise `ExportFailedError` when the inputs or outputs of an exported graph differ from the
    bundle format, or when the graph contains what `load_bundle` rejects (external data, custom
    operators), before any bundle file is written."""
    content = graph_content_problems(graph)
    if content:
        raise ExportFailedError(
            f"the {signature.file} graph exported from the model's {signature.function} cannot "
            f"be served: {'; '.join(content)}. The loader accepts only graphs that contain all "
            "their weights and only standard ONNX operators, so export a model built from "
            "standard torch operations"
        )

    weights = {initializer.name for initializer in graph.graph.initializer}
    inputs = declared_from_onnx(value for value in graph.graph.input if value.name not in weights)
    outputs = declared_from_onnx(graph.graph.output)
    problems = signature_problems(signature, inputs, outputs, dims)
    if not problems:
        return
    message = (
        f"the {signature.file} graph exported from the model's {signature.function} does not "
        f"match the bundle format: {'; '.join(problems)}"
    )
    missing = missing_inputs(signature, inputs)
    if missing:
        message += (
            f". The ONNX exporter drops every input that the output does not depend on, so "
            f"{signature.function} probably does not use its argument {', '.join(missing)}. The "
            "worker feeds every input, so make the output depend on it, for example by adding "
            f"the argument times 0.0 ({MEMBERS_DOC})"
        )
    raise ExportFailedError(message)


def _export(
    graph: nn.Module,
    example: tuple[torch.Tensor, ...],
    input_names: tuple[str, ...],
    output_name: str,
    dynamic_axes: dict[str, dict[int, str]],
    opset: int,
) -> onnx.ModelProto:
    buffer = io.BytesIO()
    graph.eval()
    with torch.no_grad(), warnings.catch_warnings():
        # The TorchScript exporter warns that it is deprecated in favour of dynamo. It is used
        # here because it exports these graphs with dynamic axes in under a second, where the
        # dynamo exporter took about 7 s for the close graph alone (torch 2.15).
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.simplefilter("ignore", category=FutureWarning)
        # The exporter warns when it cannot fold a Slice whose step is not 1. That is harmless,
        # because ONNX Runtime optimizes the graph again at load.
        warnings.filterwarnings("ignore", message="Constant folding - Only steps=1")
        torch.onnx.export(
            graph,
            example,
            buffer,
            input_names=list(input_names),
            output_names=[output_name],
            dynamic_axes=dynamic_axes,
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
    return onnx.load_from_string(buffer.getvalue())


def _finish(graph: onnx.ModelProto, output_dims: list[str | int]) -> bytes:
    """Write the output's shape into the graph, run the ONNX checker and serialize the graph.

    Shape inference of the TorchScript exporter can leave a fixed axis symbolic (the close
    graph's H came out as "Concatnew_state_dim_2"), so the contract's shape is set explicitly.
    """
    output = graph.graph.output[0]
    dims = output.type.tensor_type.shape.dim
    del dims[:]
    for size in output_dims:
        dim = dims.add()
        if isinstance(size, str):
            dim.dim_param = size
        else:
            dim.dim_value = size
    try:
        onnx.checker.check_model(graph, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as error:
        raise ExportFailedError(
            f"ONNX checker rejected the {output.name} graph: {error}"
        ) from error
    return graph.SerializeToString()


def session_gap_of(checkpoint: Any, configured: float | None) -> float:
    """Return the session gap in seconds: `configured`, else the checkpoint's, else 1800.

    Raises `ExportFailedError` when the checkpoint's gap is outside `SESSION_GAP_RANGE`
    (training accepts a gap of 0, the worker does not) and `configured` is None.
    """
    if configured is not None:
        return float(configured)
    for source in (checkpoint.train_config, checkpoint.data_summary):
        if isinstance(source, dict) and source.get("session_gap") is not None:
            return _checked_checkpoint_gap(source["session_gap"])
    logger.warning(
        "the checkpoint names no session_gap: writing the default %.0f s; pass --session-gap "
        "if the model was trained with another",
        DEFAULT_SESSION_GAP,
    )
    return DEFAULT_SESSION_GAP


def _checked_checkpoint_gap(value: Any) -> float:
    try:
        gap = float(value)
    except (TypeError, ValueError):
        gap = math.nan
    if not valid_session_gap(gap):
        raise ExportFailedError(
            f"the checkpoint was trained with session gap {value!r} s, but the stream worker "
            f"needs {SESSION_GAP_RANGE}: pass --session-gap SECONDS"
        )
    return gap


def top_k_of(configured: int | None, num_items: int) -> int:
    """Return the manifest's list length: `configured`, else 20 capped at the item count.

    Raises `ExportFailedError` when `configured` is larger than the item count.
    """
    if configured is None:
        return min(DEFAULT_TOP_K, num_items)
    if configured > num_items:
        raise ExportFailedError(
            f"--top-k {configured} is larger than the catalog of {num_items} items: pass "
            f"--top-k {num_items} or less"
        )
    return configured


def write_bundle(
    model: nn.Module,
    checkpoint: Any,
    out: str | os.PathLike[str],
    config: ExportConfig,
    check: Callable[[Path], None] | None = None,
) -> Manifest:
    """Write the bundle of `model` (with the vocabulary and metrics of `checkpoint`) to `out`.

    The files go to a temporary directory next to `out` that is renamed to `out` at the end, so
    an interrupted export leaves no half-written bundle. `out` must not exist yet, or be an empty
    directory. A symlink `out` is followed: the bundle replaces the folder it points to, and the
    link stays. The output folder, the top K and the session gap are checked before the export.
    `check` receives the temporary directory once the bundle is complete there. When it raises,
    the directory is deleted and nothing is written to `out`.
    """
    out = _resolve_out(Path(out))
    _check_out(out)
    check_exportable(model)
    check_finite_weights(model)
    model.eval()
    dims = model_dimensions(model)
    if len(checkpoint.item_ids) != dims["num_items"]:
        raise ExportFailedError(
            f"the checkpoint lists {len(checkpoint.item_ids)} item ids but the model has "
            f"{dims['num_items']} items: the checkpoint is inconsistent, retrain it"
        )
    top_k = top_k_of(config.top_k, dims["num_items"])
    session_gap = session_gap_of(checkpoint, config.session_gap)

    staging = _make_staging_dir(out)
    try:
        # mkdtemp creates mode 0700; a bundle is read by workers that may run under another
        # account, so it gets the usual mode of a shared folder.
        staging.chmod(0o755)
        _write_arrays_and_graphs(model, checkpoint, staging, config)
        manifest = _write_manifest(model, checkpoint, staging, top_k, session_gap)
        if check is not None:
            check(staging)
        if out.exists():
            out.rmdir()
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("wrote bundle %s (version %s)", out, manifest.version)
    return manifest


def _resolve_out(out: Path) -> Path:
    """Return the path that a symlink `out` points to (following every link), else `out`.

    The final rename cannot replace a symlink with a folder, so the export writes to the target.
    """
    if not out.is_symlink():
        return out
    try:
        target = out.resolve(strict=False)
    except (OSError, RuntimeError) as error:  # RuntimeError: a symlink loop, before Python 3.13
        raise ExportFailedError(
            f"--out {out} is a symlink that cannot be followed ({error}): pass a folder path"
        ) from error
    logger.info("--out %s is a symlink: writing the bundle to %s", out, target)
    return target


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ExportFailedError(f"--out {out} is a file: pass a folder for the bundle")
    if out.is_dir() and any(out.iterdir()):
        raise ExportFailedError(
            f"{out} already exists and is not empty: remove it or pass another --out"
        )
    for parent in out.parents:
        if parent.exists() and not parent.is_dir():
            raise ExportFailedError(
                f"--out {out} is invalid because {parent} is a file: pass a path in a folder"
            )


def _make_staging_dir(out: Path) -> Path:
    """Create the parent folders of `out` and a temporary directory in its parent."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    except OSError as error:
        raise ExportFailedError(
            f"cannot create the bundle folder {out} ({error.strerror}: {error.filename}): pass "
            "an --out in a writable folder"
        ) from error


def _write_arrays_and_graphs(
    model: nn.Module, checkpoint: Any, directory: Path, config: ExportConfig
) -> None:
    (directory / SESSION_STEP_FILE).write_bytes(
        export_session_step(model, config.opset, config.pruned_step)
    )
    (directory / SESSION_CLOSE_FILE).write_bytes(export_session_close(model, config.opset))

    with torch.no_grad():
        table = model.item_embeddings().detach().cpu().numpy().astype(np.float32)  # [N, D]
        start_state = model.start_state.detach().cpu().numpy().astype(np.float32)  # [G, H]
    if config.float16_items:
        table = _to_float16(table)
    np.save(directory / ITEMS_FILE, table)
    np.save(directory / START_STATE_FILE, start_state)
    (directory / ITEM_IDS_FILE).write_text(json.dumps([str(item) for item in checkpoint.item_ids]))


def _to_float16(table: np.ndarray) -> np.ndarray:
    """Cast the item table to float16, or raise `ExportFailedError` where a value overflows."""
    largest = float(np.abs(table).max(initial=0.0))
    float16_max = float(np.finfo(np.float16).max)
    if largest > float16_max:
        raise ExportFailedError(
            f"the item embeddings reach |value| {largest:.3g}, above the float16 maximum of "
            f"{float16_max:g}: export without --float16"
        )
    return table.astype(np.float16)


def _write_manifest(
    model: nn.Module, checkpoint: Any, directory: Path, top_k: int, session_gap: float
) -> Manifest:
    """Hash the files in `directory`, write `manifest.json` next to them and return it."""
    manifest = Manifest(
        format_version=FORMAT_VERSION,
        model=model.config.to_dict(),
        session_gap=session_gap,
        top_k=top_k,
        files={name: sha256_file(directory / name) for name in BUNDLE_FILES},
        training={
            "data": checkpoint.data_summary,
            "metrics": checkpoint.metrics,
            "epoch": checkpoint.epoch,
        },
        version="",
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **model_dimensions(model),
    )
    manifest = dataclasses.replace(manifest, version=compute_version(manifest))
    write_manifest(directory, manifest)
    return manifest
