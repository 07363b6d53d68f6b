"""Tests of the ONNX Runtime against torch parity check."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from export.bundle import ModelBundle
from export.errors import VerificationError
from export.verify import (
    VerifyConfig,
    _random_prefix,
    _widths,
    count_topk_mismatches,
    require_passed,
    topk_rows,
    verify_bundle,
)
from tests.export.conftest import make_model


def test_verify_passes_on_exported_bundle(tiny_model: torch.nn.Module, bundle: ModelBundle) -> None:
    sessions = [np.array([1, 5, 7, 9, 11, 2, 3]), np.arange(20) % 50]
    report = verify_bundle(tiny_model, bundle, VerifyConfig(top_k=5), sessions)
    assert report.passed, report.format()
    assert {(r.graph, r.inputs, r.batch_size) for r in report.results} == {
        (graph, kind, batch)
        for graph in ("session_step", "session_close")
        for kind in ("random", "real")
        for batch in (1, 7, 256)
    }
    steps = [r for r in report.results if r.graph == "session_step"]
    assert all(r.widths == 14 for r in steps if r.batch_size < 14)
    assert all(r.widths == 4 for r in steps if r.batch_size == 256)
    assert report.format().endswith("top-5")
    require_passed(report)


def test_verify_fails_for_other_weights(bundle: ModelBundle) -> None:
    other = make_model(seed=7)
    report = verify_bundle(other, bundle, VerifyConfig(batch_sizes=(7,), max_length=3))
    assert not report.passed
    assert "FAIL" in report.format()
    with pytest.raises(VerificationError, match="do not deploy this bundle"):
        require_passed(report)


def test_topk_rows_orders_best_first() -> None:
    scores = np.array([[0.1, 0.9, 0.5, 0.7]])
    np.testing.assert_array_equal(topk_rows(scores, 3), [[1, 3, 2]])


def test_topk_mismatch_ignores_ties() -> None:
    table = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], np.float32)  # rows 0 and 1 tie
    reference = np.array([[1.0, 0.5]], np.float32)
    candidate = reference + np.float32(1e-6)
    assert count_topk_mismatches(reference, candidate, table, k=1) == 0


def test_topk_mismatch_counts_real_swap() -> None:
    table = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    reference = np.array([[1.0, 0.999]], np.float32)  # scores 1.0 and 0.999: no tie
    candidate = np.array([[0.999, 1.0]], np.float32)
    assert count_topk_mismatches(reference, candidate, table, k=1) == 1


def test_wide_batch_covers_every_prefix_length() -> None:
    rng = np.random.default_rng(0)
    table = np.zeros((5, 3), dtype=np.float32)
    prefix, lengths = _random_prefix(rng, 256, 13, 3, "random", table, [])
    assert set(lengths.tolist()) == set(range(14))
    assert prefix.shape == (256, 13, 3)
    assert _widths(256, 13) == [0, 1, 6, 13]
    assert _widths(7, 13) == list(range(14))
