"""The check of what a bundle graph may contain beyond its signature: its own weights and
standard operators only.

ONNX lets a tensor keep its data in an external file (`data_location` EXTERNAL, with a path
relative to the model). ONNX Runtime reads such a file from the process's working directory when
the model is opened from bytes, as `load_bundle` does. No sha256 of the manifest covers that
file, so a graph with external data could take its weights from outside the bundle. A node of a
custom operator domain needs a library that ONNX Runtime loads from elsewhere, which the hashes do
not cover either. The TorchScript exporter writes neither for the bundle's graphs, so the export
and the loader both reject them. This module never imports torch.
"""

from __future__ import annotations

from collections.abc import Iterator

import onnx
from google.protobuf.message import DecodeError
from onnx import AttributeProto, FunctionProto, GraphProto, ModelProto, TensorProto
from onnx.external_data_helper import uses_external_data

# The default ONNX domain under both of its names, and the ONNX-ML domain. ONNX Runtime implements
# all three without a custom operator library. A bundle exported with torch 2.15 at opset 17 uses
# the default domain alone.
STANDARD_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml"})


def graph_content_problems(model: bytes | ModelProto) -> list[str]:
    """Return one clause per tensor with external data and per non-standard operator domain.

    `model` is the serialized graph or the parsed one. Parsing the bytes never reads the
    external data files. Bytes that do not parse as an ONNX model give one clause with the
    parse error.
    """
    if isinstance(model, bytes):
        try:
            model = onnx.load_model_from_string(model)
        except DecodeError as error:
            return [f"the file does not parse as an ONNX model ({error})"]
    problems = [
        f"tensor {tensor.name!r} reads its data from the external file "
        f"{_external_location(tensor)!r}"
        for tensor in _tensors(model)
        if uses_external_data(tensor)
    ]
    domains = sorted(
        {node.domain for body in _bodies(model) for node in body.node} - STANDARD_DOMAINS
    )
    problems += [
        f"operators of the custom domain {domain!r} ({_op_types(model, domain)}) are not "
        "standard ONNX operators"
        for domain in domains
    ]
    return problems


def _external_location(tensor: TensorProto) -> str:
    locations = [entry.value for entry in tensor.external_data if entry.key == "location"]
    return locations[0] if locations else ""


def _op_types(model: ModelProto, domain: str) -> str:
    names = sorted(
        {node.op_type for body in _bodies(model) for node in body.node if node.domain == domain}
    )
    return ", ".join(names)


def _bodies(model: ModelProto) -> Iterator[GraphProto | FunctionProto]:
    """Yield the main graph, every subgraph of a node attribute, and every model-local function
    with its subgraphs."""
    yield from _with_subgraphs(model.graph)
    for function in model.functions:
        yield from _with_subgraphs(function)


def _with_subgraphs(body: GraphProto | FunctionProto) -> Iterator[GraphProto | FunctionProto]:
    yield body
    for node in body.node:
        for attribute in node.attribute:
            for subgraph in _attribute_graphs(attribute):
                yield from _with_subgraphs(subgraph)


def _attribute_graphs(attribute: AttributeProto) -> list[GraphProto]:
    graphs = list(attribute.graphs)
    if attribute.HasField("g"):
        graphs.append(attribute.g)
    return graphs


def _tensors(model: ModelProto) -> Iterator[TensorProto]:
    """Yield every tensor that can carry data: initializers, sparse initializers and the tensors
    of node attributes (`Constant` values among them), in every graph and function."""
    for body in _bodies(model):
        if isinstance(body, GraphProto):
            yield from body.initializer
            for sparse in body.sparse_initializer:
                yield from (sparse.values, sparse.indices)
        for node in body.node:
            for attribute in node.attribute:
                yield from _attribute_tensors(attribute)


def _attribute_tensors(attribute: AttributeProto) -> Iterator[TensorProto]:
    if attribute.HasField("t"):
        yield attribute.t
    yield from attribute.tensors
    sparse_tensors = list(attribute.sparse_tensors)
    if attribute.HasField("sparse_tensor"):
        sparse_tensors.append(attribute.sparse_tensor)
    for sparse in sparse_tensors:
        yield from (sparse.values, sparse.indices)
