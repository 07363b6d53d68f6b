"""Tests of replay and the pipeline on a real ONNX bundle whose session step returns NaN.

Such a bundle comes from a training run that diverged: the export succeeds, and every score the
pipeline computes is NaN.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from stream.cli import main
from stream.pipeline import Pipeline
from tests.stream.conftest import write_event_log
from tests.stream.test_pipeline import make_event


@pytest.fixture(scope="module")
def nan_bundle_dir(onnx_bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the tiny bundle whose session-step weights are all NaN, with a manifest that
    lists the new file hash, so the bundle loads."""
    from export.manifest import compute_version, read_manifest, sha256_file, write_manifest

    out = tmp_path_factory.mktemp("nan-bundle") / "bundle"
    shutil.copytree(onnx_bundle_dir, out)
    graph_path = out / "session_step.onnx"
    graph = onnx.load(str(graph_path))
    for initializer in graph.graph.initializer:
        weights = numpy_helper.to_array(initializer)
        if weights.dtype == np.float32:
            nan = np.full_like(weights, np.nan)
            initializer.CopyFrom(numpy_helper.from_array(nan, initializer.name))
    onnx.save(graph, str(graph_path))

    manifest = read_manifest(out)
    files = {**manifest.files, graph_path.name: sha256_file(graph_path)}
    manifest = dataclasses.replace(manifest, files=files)
    write_manifest(out, dataclasses.replace(manifest, version=compute_version(manifest)))
    return out


def test_replay_on_nan_bundle_ranks_nan_lowest(
    nan_bundle_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    events = tmp_path / "events.jsonl"
    logged = write_event_log(events, 40, seed=31)
    output = tmp_path / "recs.jsonl"
    argv = ["--events", str(events), "--bundle", str(nan_bundle_dir), "--output", str(output)]

    with caplog.at_level(logging.WARNING, logger="stream.pipeline"):
        code = main(["replay", *argv, "--batch-size", "16"])

    printed = capsys.readouterr().out
    lines = [json.loads(line) for line in output.read_text().splitlines()]
    warnings = [r.getMessage() for r in caplog.records if "non-finite scores" in r.getMessage()]
    assert code == 0
    assert len(lines) == len(logged)
    assert lines[0]["items"] == ["0", "1", "2", "3", "4"]
    assert all(math.isnan(score) for score in lines[0]["scores"])
    # Three batches of 16, 16 and 8 events: one warning each.
    assert len(warnings) == 3
    assert warnings[0].startswith("16 of 16 events in this batch have non-finite scores")
    assert f"under bundle {lines[0]['model']}" in warnings[0]
    # Every counted event ranks last among its pool, so MRP is 1.
    assert "MRP              1.0000" in printed


def test_pipeline_on_nan_bundle_gives_full_lists(nan_bundle_dir: Path) -> None:
    from export.bundle import load_bundle

    pipeline = Pipeline(load_bundle(nan_bundle_dir, intra_op_threads=1))
    events = [
        make_event("u1", 3, 1000.0),
        make_event("u1", 4, 1001.0),
        make_event("u1", 5, 1002.0, candidates=(7, 2, 9)),
        make_event("u1", 6, 1003.0, impressions=(6, 1, 2)),
    ]

    result = pipeline.process(events, {})

    assert [len(output.items) for output in result.outputs] == [5, 5, 3, 5]
    assert result.outputs[2].items == ("2", "7", "9")
    assert result.live[1] == (120, 120)
    assert result.live[3] == (3, 3)
