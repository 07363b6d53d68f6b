"""Graphs that read data from outside the bundle or need a custom operator: export and load."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from export.bundle import load_bundle
from export.errors import BundleError, ExportFailedError
from export.graph_content import graph_content_problems
from export.graph_signature import CLOSE_SIGNATURE
from export.manifest import SESSION_CLOSE_FILE, SESSION_STEP_FILE
from export.onnx_export import check_graph_signature
from stream.cli import main as stream_main
from tests.export.test_graph_signature import rehash

D, G, H = 8, 2, 6
CLOSE_DIMS = {"embedding_dim": D, "gru_layers": G, "hidden_size": H}


def point_to_external_file(tensor: TensorProto, location: str) -> None:
    """Move `tensor`'s data out of the graph: ONNX's external data entries for `location`."""
    size = int(np.prod(tensor.dims)) * 4
    tensor.ClearField("raw_data")
    tensor.ClearField("float_data")
    tensor.data_location = TensorProto.EXTERNAL
    del tensor.external_data[:]
    for key, value in (("location", location), ("offset", "0"), ("length", str(size))):
        entry = tensor.external_data.add()
        entry.key = key
        entry.value = value


def first_float_initializer(graph: onnx.ModelProto) -> TensorProto:
    return next(init for init in graph.graph.initializer if init.data_type == TensorProto.FLOAT)


def add_custom_operator(graph: onnx.ModelProto, domain: str, op_type: str) -> None:
    """Route the graph's output through one node of `domain`, as a custom-op graph would."""
    output = graph.graph.output[0].name
    for node in graph.graph.node:
        for index, name in enumerate(node.output):
            if name == output:
                node.output[index] = "before_custom"
    graph.graph.node.append(helper.make_node(op_type, ["before_custom"], [output], domain=domain))
    if domain not in {opset.domain for opset in graph.opset_import}:
        graph.opset_import.append(helper.make_opsetid(domain, 1))


def replace_graph(bundle_dir: Path, tmp_path: Path, name: str, graph: onnx.ModelProto) -> Path:
    """Copy the bundle with `graph` as file `name` and a manifest that lists its new hash."""
    copy = Path(shutil.copytree(bundle_dir, tmp_path / "copy"))
    (copy / name).write_bytes(graph.SerializeToString())
    rehash(copy, name)
    return copy


@pytest.fixture
def close_graph(bundle_dir: Path) -> onnx.ModelProto:
    return onnx.load(str(bundle_dir / SESSION_CLOSE_FILE))


# The check itself.


def test_exported_graphs_have_no_problems(bundle_dir: Path) -> None:
    for name in (SESSION_STEP_FILE, SESSION_CLOSE_FILE):
        assert graph_content_problems((bundle_dir / name).read_bytes()) == []


def test_external_initializer_named(close_graph: onnx.ModelProto) -> None:
    tensor = first_float_initializer(close_graph)
    point_to_external_file(tensor, "weights.bin")

    problems = graph_content_problems(close_graph.SerializeToString())

    assert problems == [
        f"tensor {tensor.name!r} reads its data from the external file 'weights.bin'"
    ]


def test_external_constant_attribute_named(close_graph: onnx.ModelProto) -> None:
    constant = next(node for node in close_graph.graph.node if node.op_type == "Constant")
    value = next(attribute for attribute in constant.attribute if attribute.name == "value")
    point_to_external_file(value.t, "../outside.bin")

    problems = graph_content_problems(close_graph)

    assert len(problems) == 1
    assert "reads its data from the external file '../outside.bin'" in problems[0]


def test_external_tensor_in_subgraph_named() -> None:
    weight = numpy_helper.from_array(np.ones(2, dtype=np.float32), "inner_weight")
    point_to_external_file(weight, "/etc/inner.bin")
    branch = helper.make_graph(
        [helper.make_node("Identity", ["inner_weight"], ["y"])],
        "branch",
        [],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
        initializer=[weight],
    )
    node = helper.make_node("If", ["flag"], ["y"], then_branch=branch, else_branch=branch)
    graph = helper.make_model(
        helper.make_graph(
            [node],
            "main",
            [helper.make_tensor_value_info("flag", TensorProto.BOOL, [])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
        )
    )

    problems = graph_content_problems(graph)

    assert (
        problems
        == ["tensor 'inner_weight' reads its data from the external file '/etc/inner.bin'"] * 2
    )


def test_custom_domain_named(close_graph: onnx.ModelProto) -> None:
    add_custom_operator(close_graph, "com.example", "MadeUpOp")

    problems = graph_content_problems(close_graph.SerializeToString())

    assert problems == [
        "operators of the custom domain 'com.example' (MadeUpOp) are not standard ONNX operators"
    ]


@pytest.mark.parametrize("domain", ["", "ai.onnx", "ai.onnx.ml"])
def test_standard_domains_pass(domain: str) -> None:
    node = helper.make_node("Identity", ["x"], ["y"], domain=domain)
    graph = helper.make_model(
        helper.make_graph(
            [node],
            "main",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        )
    )

    assert graph_content_problems(graph) == []


def test_unparsable_bytes_named() -> None:
    problems = graph_content_problems(b"\xff\xff\xff not a model")

    assert len(problems) == 1
    assert problems[0].startswith("the file does not parse as an ONNX model")


# The export.


def test_export_check_rejects_external_data(close_graph: onnx.ModelProto) -> None:
    point_to_external_file(first_float_initializer(close_graph), "weights.bin")

    with pytest.raises(ExportFailedError) as caught:
        check_graph_signature(close_graph, CLOSE_SIGNATURE, CLOSE_DIMS)

    message = str(caught.value)
    assert "the session_close.onnx graph exported from the model's close_session" in message
    assert "reads its data from the external file 'weights.bin'" in message


def test_export_check_rejects_custom_domain(close_graph: onnx.ModelProto) -> None:
    add_custom_operator(close_graph, "com.example", "MadeUpOp")

    with pytest.raises(ExportFailedError, match=r"custom domain 'com.example' \(MadeUpOp\)"):
        check_graph_signature(close_graph, CLOSE_SIGNATURE, CLOSE_DIMS)


# The loader, with graphs whose hashes the manifest lists, as an edited bundle would have.


@pytest.mark.parametrize("location", ["weights.bin", "../weights.bin", "/tmp/weights.bin"])
def test_load_rejects_external_data(
    bundle_dir: Path,
    close_graph: onnx.ModelProto,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    location: str,
) -> None:
    tensor = first_float_initializer(close_graph)
    point_to_external_file(tensor, location)
    copy = replace_graph(bundle_dir, tmp_path, SESSION_CLOSE_FILE, close_graph)
    # The relative file exists in the working directory, where ONNX Runtime would read it.
    (tmp_path / "weights.bin").write_bytes(np.full(10_000, 0.5, np.float32).tobytes())
    monkeypatch.chdir(tmp_path)

    with pytest.raises(BundleError) as caught:
        load_bundle(copy)

    message = str(caught.value)
    assert f"{copy / SESSION_CLOSE_FILE} is rejected: tensor {tensor.name!r}" in message
    assert f"reads its data from the external file {location!r}" in message
    assert "export the bundle again with `hiertcn export`" in message


def test_load_rejects_custom_domain(
    bundle_dir: Path, close_graph: onnx.ModelProto, tmp_path: Path
) -> None:
    add_custom_operator(close_graph, "com.example", "MadeUpOp")
    copy = replace_graph(bundle_dir, tmp_path, SESSION_CLOSE_FILE, close_graph)

    with pytest.raises(BundleError, match=r"custom domain 'com.example' \(MadeUpOp\)"):
        load_bundle(copy)


def test_load_wraps_runtime_error(
    bundle_dir: Path, close_graph: onnx.ModelProto, tmp_path: Path
) -> None:
    # An operator name that the default domain lacks passes the domain check, and only ONNX
    # Runtime rejects it.
    add_custom_operator(close_graph, "", "NoSuchOperator")
    copy = replace_graph(bundle_dir, tmp_path, SESSION_CLOSE_FILE, close_graph)

    with pytest.raises(BundleError) as caught:
        load_bundle(copy)

    message = str(caught.value)
    assert f"cannot open {copy / SESSION_CLOSE_FILE}: " in message
    assert "NoSuchOperator" in message
    assert "export the bundle again with `hiertcn export`" in message
    assert isinstance(caught.value.__cause__, Exception)


def test_replay_on_custom_domain_exits_2(
    bundle_dir: Path,
    close_graph: onnx.ModelProto,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    add_custom_operator(close_graph, "com.example", "MadeUpOp")
    copy = replace_graph(bundle_dir, tmp_path, SESSION_CLOSE_FILE, close_graph)
    events = tmp_path / "events.jsonl"
    events.write_text('{"user": "u", "item": "item1", "ts": 1000}\n')

    code = stream_main(["replay", "--events", str(events), "--bundle", str(copy)])

    error = capsys.readouterr().err
    assert code == 2
    assert "cannot load the model bundle" in error
    assert "custom domain 'com.example'" in error
    assert "Traceback" not in error
