"""Tests of stream.scoring: deterministic top-K and pessimistic ranks."""

from __future__ import annotations

import numpy as np
import pytest

from stream.scoring import (
    rank_of,
    ranks_over_catalog,
    top_k,
    top_k_candidates,
    top_k_catalog,
    top_k_rows,
)


def reference_top_k(scores: np.ndarray, k: int) -> list[int]:
    return sorted(range(len(scores)), key=lambda row: (-scores[row], row))[:k]


def test_top_k_orders_by_score_then_row() -> None:
    scores = np.array([0.5, 2.0, 2.0, -1.0, 2.0, 0.5], dtype=np.float32)

    assert top_k(scores, 4).tolist() == [1, 2, 4, 0]


def test_top_k_ties_at_kth_place_take_lowest_rows() -> None:
    scores = np.zeros(1000, dtype=np.float32)
    scores[[700, 900]] = 1.0

    assert top_k(scores, 4).tolist() == [700, 900, 0, 1]


@pytest.mark.parametrize("k", [1, 3, 10, 49, 50, 80])
def test_top_k_matches_full_sort(k: int) -> None:
    rng = np.random.default_rng(k)
    # Few distinct values, so ties are common.
    scores = rng.integers(0, 6, size=50).astype(np.float32)

    assert top_k(scores, k).tolist() == reference_top_k(scores, k)


def test_top_k_of_empty_pool() -> None:
    assert top_k(np.empty(0, dtype=np.float32), 5).tolist() == []
    assert top_k(np.ones(3, dtype=np.float32), 0).tolist() == []


def test_catalog_top_k_per_embedding() -> None:
    rng = np.random.default_rng(0)
    table = rng.normal(size=(40, 4)).astype(np.float32)
    embeddings = rng.normal(size=(3, 4)).astype(np.float32)

    rows, scores = top_k_catalog(embeddings, table, 5)

    for index in range(3):
        full = table @ embeddings[index]
        assert rows[index].tolist() == reference_top_k(full, 5)
        np.testing.assert_allclose(scores[index], full[rows[index]], rtol=1e-6)


def test_catalog_top_k_from_float16_table() -> None:
    table = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]], dtype=np.float16)
    embedding = np.array([[1.0, 0.2]], dtype=np.float32)

    rows, scores = top_k_catalog(embedding, table, 2)

    assert rows[0].tolist() == [0, 2]
    assert scores[0].dtype == np.float32


def test_candidates_ties_broken_by_row() -> None:
    table = np.array([[1.0], [1.0], [3.0], [1.0], [0.0]], dtype=np.float32)
    embedding = np.array([1.0], dtype=np.float32)

    rows, scores = top_k_candidates(embedding, table, np.array([3, 1, 4, 2]), 3)

    assert rows.tolist() == [2, 1, 3]
    assert scores.tolist() == [3.0, 1.0, 1.0]


def test_rank_pessimistic_over_catalog() -> None:
    table = np.array([[2.0], [1.0], [1.0], [1.0], [0.0]], dtype=np.float32)
    embedding = np.array([1.0], dtype=np.float32)

    assert rank_of(0, embedding, table) == (1, 5)
    assert rank_of(2, embedding, table) == (4, 5)
    assert rank_of(4, embedding, table) == (5, 5)


def test_rank_over_pool_adds_missing_target() -> None:
    table = np.array([[2.0], [1.0], [3.0], [0.0]], dtype=np.float32)
    embedding = np.array([1.0], dtype=np.float32)

    assert rank_of(1, embedding, table, np.array([0, 3])) == (2, 3)
    assert rank_of(1, embedding, table, np.array([0, 3, 3, 1])) == (2, 3)


def test_batched_ranks_match_single() -> None:
    rng = np.random.default_rng(3)
    table = rng.normal(size=(30, 5)).astype(np.float32)
    embeddings = rng.normal(size=(6, 5)).astype(np.float32)
    targets = rng.integers(0, 30, size=6)

    ranks = ranks_over_catalog(targets, embeddings, table)

    expected = [rank_of(int(t), e, table) for t, e in zip(targets, embeddings, strict=True)]
    assert ranks == expected


@pytest.mark.parametrize("k", [1, 5, 20, 100])
def test_batched_top_k_on_long_rows_matches_single(k: int) -> None:
    rng = np.random.default_rng(k)
    # Ties at the K-th place in the first rows, a constant row, and 1,003 positions, which the
    # blocks do not divide evenly.
    tied = rng.integers(0, 50, size=(10, 1003)).astype(np.float32)
    constant = np.zeros((1, 1003), dtype=np.float32)
    distinct = rng.normal(size=(10, 1003)).astype(np.float32)
    scores = np.concatenate([tied, constant, distinct])

    best = top_k_rows(scores, k)

    assert best.shape == (21, k)
    for row, expected in zip(best, scores, strict=True):
        assert row.tolist() == reference_top_k(expected, k)


@pytest.mark.parametrize("k", [1, 4, 12, 30, 40])
def test_batched_top_k_matches_single(k: int) -> None:
    rng = np.random.default_rng(k)
    # Rows with many ties and rows without any. With 30 positions, K of 8 and more is too
    # many for the block bound, so the per-row path runs too.
    tied = rng.integers(0, 4, size=(20, 30)).astype(np.float32)
    distinct = rng.normal(size=(20, 30)).astype(np.float32)
    scores = np.concatenate([tied, distinct])

    best = top_k_rows(scores, k)

    assert best.shape == (40, min(k, 30))
    for row, expected in zip(best, scores, strict=True):
        assert row.tolist() == reference_top_k(expected, k)


def test_nan_scores_rank_lowest_in_top_k() -> None:
    scores = np.array([np.nan, 1.0, -np.inf, np.nan, 0.5], dtype=np.float32)

    assert top_k(scores, 5).tolist() == [1, 4, 0, 2, 3]


@pytest.mark.parametrize("k", [1, 3, 50])
def test_top_k_rows_with_nan_rows(k: int) -> None:
    rng = np.random.default_rng(k)
    scores = rng.normal(size=(4, 400)).astype(np.float32)
    scores[0] = np.nan  # a NaN user embedding makes the whole row NaN
    scores[1, ::2] = np.nan

    best = top_k_rows(scores, k)

    assert best.shape == (4, k)
    assert best[0].tolist() == list(range(k))
    assert best[1].tolist() == reference_top_k(np.nan_to_num(scores[1], nan=-np.inf), k)
    assert best[2].tolist() == reference_top_k(scores[2], k)


def test_catalog_top_k_returns_nan_scores_unchanged() -> None:
    table = np.eye(6, 3, dtype=np.float32)
    embeddings = np.full((1, 3), np.nan, dtype=np.float32)

    rows, scores = top_k_catalog(embeddings, table, 4)

    assert rows.tolist() == [[0, 1, 2, 3]]
    assert np.isnan(scores).all()


def test_nan_target_ranks_last_pessimistically() -> None:
    table = np.eye(6, 3, dtype=np.float32)
    nan_embedding = np.full(3, np.nan, dtype=np.float32)

    assert rank_of(2, nan_embedding, table) == (6, 6)
    assert rank_of(2, nan_embedding, table, np.array([0, 1, 4])) == (4, 4)
    assert ranks_over_catalog(np.array([2, 5]), np.stack([nan_embedding] * 2), table) == [
        (6, 6),
        (6, 6),
    ]


def test_finite_target_outranks_nan_scores() -> None:
    table = np.array([[1.0, 0.0], [np.nan, 0.0], [0.5, 0.0], [2.0, 0.0]], dtype=np.float32)
    embedding = np.array([1.0, 0.0], dtype=np.float32)

    assert rank_of(2, embedding, table) == (3, 4)
    assert ranks_over_catalog(np.array([2]), embedding[None, :], table) == [(3, 4)]
