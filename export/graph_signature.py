"""The input and output signatures of the bundle's two graphs, and their check.

The export checks each graph that torch wrote, and `load_bundle` checks each graph that it
opens, so a graph that the worker cannot feed fails with a message instead of an ONNX Runtime
error at the first call. The TorchScript exporter drops a graph input that the output does not
depend on, so a model function that ignores an argument gives a graph without that input.

Shape letters as in `export.manifest`: `B` rows, `L` prefix width, `D` item-embedding size,
`G` GRU layers, `H` GRU hidden size. This module imports neither torch, onnx nor onnxruntime.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from export.manifest import (
    CLOSE_INPUTS,
    CLOSE_OUTPUT,
    SESSION_CLOSE_FILE,
    SESSION_STEP_FILE,
    STEP_INPUTS,
    STEP_OUTPUT,
)

# Axes whose size the worker chooses per call, so a graph must not fix them.
FREE_AXES = ("B", "L")
# The manifest key of each axis whose size the bundle fixes.
AXIS_KEYS = {"D": "embedding_dim", "G": "gru_layers", "H": "hidden_size"}

# ONNX Runtime's type names (`NodeArg.type`) of the numpy dtypes a graph may declare.
_RUNTIME_DTYPES = {
    "tensor(float)": "float32",
    "tensor(double)": "float64",
    "tensor(float16)": "float16",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(bool)": "bool",
}


@dataclasses.dataclass(frozen=True)
class TensorSignature:
    """A named tensor of the bundle format: numpy dtype name and shape letters."""

    name: str
    dtype: str
    axes: tuple[str, ...]

    def describe(self) -> str:
        """Return the dtype and shape as the docs write them, for example `float32 [B, D]`."""
        return f"{self.dtype} [{', '.join(self.axes)}]"


@dataclasses.dataclass(frozen=True)
class GraphSignature:
    """The inputs and outputs of one bundle graph, and the model member it is exported from."""

    file: str
    function: str
    inputs: tuple[TensorSignature, ...]
    outputs: tuple[TensorSignature, ...]


@dataclasses.dataclass(frozen=True)
class DeclaredTensor:
    """A tensor as a graph declares it.

    `dtype` is the numpy dtype name, or the graph's own type name where numpy has none. `dims`
    is None for an unknown rank. A dim is an int when the graph fixes it, else a name or None.
    """

    name: str
    dtype: str
    dims: tuple[int | str | None, ...] | None


STEP_SIGNATURE = GraphSignature(
    file=SESSION_STEP_FILE,
    function="session_user_embedding",
    inputs=tuple(
        TensorSignature(name, dtype, axes)
        for name, dtype, axes in zip(
            STEP_INPUTS,
            ("float32", "int64", "float32"),
            (("B", "L", "D"), ("B",), ("B", "G", "H")),
            strict=True,
        )
    ),
    outputs=(TensorSignature(STEP_OUTPUT, "float32", ("B", "D")),),
)

CLOSE_SIGNATURE = GraphSignature(
    file=SESSION_CLOSE_FILE,
    function="close_session",
    inputs=tuple(
        TensorSignature(name, "float32", axes)
        for name, axes in zip(CLOSE_INPUTS, (("B", "G", "H"), ("B", "D")), strict=True)
    ),
    outputs=(TensorSignature(CLOSE_OUTPUT, "float32", ("B", "G", "H")),),
)


def signature_problems(
    signature: GraphSignature,
    inputs: Sequence[DeclaredTensor],
    outputs: Sequence[DeclaredTensor],
    sizes: Mapping[str, int],
) -> list[str]:
    """Return one clause per way the declared tensors differ from `signature`.

    `sizes` contains the bundle's sizes under their manifest keys (`AXIS_KEYS`). A graph passes
    with every expected input, no other input, and every expected output. Extra outputs are
    allowed, because the worker requests its outputs by name.
    """
    problems = _missing_or_extra("input", signature.inputs, inputs, extra_allowed=False)
    problems += _missing_or_extra("output", signature.outputs, outputs, extra_allowed=True)
    declared = {tensor.name: tensor for tensor in (*inputs, *outputs)}
    for expected in (*signature.inputs, *signature.outputs):
        if expected.name in declared:
            problems += _tensor_problems(expected, declared[expected.name], sizes)
    return problems


def missing_inputs(signature: GraphSignature, inputs: Sequence[DeclaredTensor]) -> list[str]:
    """Return the names of the inputs of `signature` that `inputs` lacks, in signature order."""
    names = {tensor.name for tensor in inputs}
    return [tensor.name for tensor in signature.inputs if tensor.name not in names]


def _missing_or_extra(
    kind: str,
    expected: Sequence[TensorSignature],
    declared: Sequence[DeclaredTensor],
    extra_allowed: bool,
) -> list[str]:
    names = {tensor.name for tensor in declared}
    problems = [
        f"the {kind} {tensor.name!r} ({tensor.describe()}) is missing"
        for tensor in expected
        if tensor.name not in names
    ]
    if not extra_allowed:
        known = {tensor.name for tensor in expected}
        problems += [
            f"the {kind} {name!r} is not in the bundle format, so the worker does not feed it"
            for name in sorted(names - known)
        ]
    return problems


def _tensor_problems(
    expected: TensorSignature, declared: DeclaredTensor, sizes: Mapping[str, int]
) -> list[str]:
    name = f"{expected.name!r}"
    if declared.dtype != expected.dtype:
        return [f"{name} has dtype {declared.dtype}, expected {expected.describe()}"]
    if declared.dims is None:
        return []
    if len(declared.dims) != len(expected.axes):
        return [f"{name} has rank {len(declared.dims)}, expected {expected.describe()}"]
    problems = []
    for axis, dim in zip(expected.axes, declared.dims, strict=True):
        if not isinstance(dim, int):
            continue
        if axis in FREE_AXES:
            problems.append(
                f"{name} fixes axis {axis} at {dim}, expected {expected.describe()} with any "
                f"size on {axis}"
            )
        elif axis in AXIS_KEYS and dim != sizes[AXIS_KEYS[axis]]:
            problems.append(
                f"{name} has {axis}={dim} on axis {expected.axes.index(axis)}, but the bundle "
                f"has {axis}={sizes[AXIS_KEYS[axis]]}"
            )
    return problems


def declared_from_onnx(values: Iterable[Any]) -> list[DeclaredTensor]:
    """Read the tensors that `onnx.ValueInfoProto`s (a graph's `input` or `output`) declare."""
    from onnx import TensorProto, helper

    tensors = []
    for value in values:
        kind = value.type.WhichOneof("value")
        if kind != "tensor_type":
            tensors.append(DeclaredTensor(value.name, str(kind), None))
            continue
        tensor_type = value.type.tensor_type
        try:
            dtype = helper.tensor_dtype_to_np_dtype(tensor_type.elem_type).name
        except KeyError:
            dtype = TensorProto.DataType.Name(tensor_type.elem_type)
        dims = None
        if tensor_type.HasField("shape"):
            dims = tuple(
                dim.dim_value if dim.HasField("dim_value") else (dim.dim_param or None)
                for dim in tensor_type.shape.dim
            )
        tensors.append(DeclaredTensor(value.name, dtype, dims))
    return tensors


def declared_from_runtime(node_args: Iterable[Any]) -> list[DeclaredTensor]:
    """Read the tensors that ONNX Runtime's `NodeArg`s (`get_inputs()`, `get_outputs()`) declare."""
    tensors = []
    for arg in node_args:
        # NOTE: ONNX Runtime (1.31) reports both a scalar and a tensor of unknown shape as [],
        # so an empty shape counts as an unknown rank and a scalar passes the rank check.
        dims = tuple(arg.shape) if arg.shape else None
        tensors.append(DeclaredTensor(arg.name, _RUNTIME_DTYPES.get(arg.type, arg.type), dims))
    return tensors
