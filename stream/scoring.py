"""Scoring with numpy on the memory-mapped item table: top-K lists and ranks.

The score of an item is the dot product of its embedding with the user embedding. Top-K order
is deterministic: score descending, then item row ascending, also where scores tie at the K-th
place. Ranks are pessimistic: the rank of a target is the number of pool items that score at
least as high as the target, the target included, so a tie never flatters the model.

A NaN score (from a bundle whose graphs return NaN user embeddings) ranks below every other
score, -inf included, ties with other NaN scores, and is returned unchanged in top-K scores.
"""

from __future__ import annotations

import numpy as np

# Upper bound on the float32 scores held at once when scoring a batch against the whole
# catalog ([rows, N] per chunk); 2**24 floats are 64 MiB.
_MAX_SCORES_PER_CHUNK = 1 << 24


def score_rows(embeddings: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Return float32 scores [B, C] of embeddings [B, D] against table rows [C, D]."""
    return (
        np.asarray(embeddings, dtype=np.float32)
        @ np.asarray(table).astype(np.float32, copy=False).T
    )


def nan_as_lowest(scores: np.ndarray) -> np.ndarray:
    """Return `scores` with every NaN replaced by -inf, or `scores` itself when it has none.

    Comparisons with NaN are false, so without this a NaN score would drop out of top-K
    candidate sets and rank counts. NaN propagates through max, so the check is one pass.
    """
    if scores.size == 0 or not np.isnan(scores.max()):
        return scores
    return np.where(np.isnan(scores), scores.dtype.type(-np.inf), scores)


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Return the positions of the `k` best of scores [C], by score descending, then position.

    Fewer than `k` positions come back when the pool is smaller.
    """
    scores = nan_as_lowest(scores)
    count = scores.shape[0]
    if k <= 0 or count == 0:
        return np.empty(0, dtype=np.int64)
    if k < count:
        # argpartition picks an arbitrary subset among ties at the K-th score, so every
        # position that ties with the K-th best is taken back in before the final sort.
        kth = np.argpartition(-scores, k - 1)[k - 1]
        selected = np.flatnonzero(scores >= scores[kth])
    else:
        selected = np.arange(count)
    order = np.lexsort((selected, -scores[selected]))
    return selected[order[:k]]


def top_k_rows(scores: np.ndarray, k: int) -> np.ndarray:
    """Return the positions [B, min(k, C)] of the best of each row of scores [B, C].

    Same order as `top_k` on each row: score descending, then position ascending.
    """
    scores = nan_as_lowest(scores)
    batch, count = scores.shape
    if k >= count or batch == 0:
        return np.stack([top_k(row, k) for row in scores]) if batch else np.empty((0, 0), int)
    bound = _kth_best_bound(scores, k)  # [B]
    if bound is None:
        return np.stack([top_k(row, k) for row in scores])
    # (2) Every position at or above the bound is a candidate; at least K per row are.
    rows, positions = np.nonzero(scores >= bound[:, None])
    values = scores[rows, positions]
    # (3) Sort the candidates by row, then score descending, then position, and keep K per row.
    order = np.lexsort((positions, -values, rows))
    rows, positions = rows[order], positions[order]
    starts = np.searchsorted(rows, np.arange(batch))  # [B]
    return positions[starts[:, None] + np.arange(k)]


def _kth_best_bound(scores: np.ndarray, k: int) -> np.ndarray | None:
    """Return a score [B] per row that at least K positions of the row reach, close to the K-th
    best, or None when the rows are too short to cut into K blocks.

    (1) The rows are cut into blocks of equal width. At least K blocks have a maximum at or
    above the K-th best block maximum, so at least K positions reach it. With about 4K blocks,
    few positions beyond the true top K reach it, and finding it reads the scores only once.
    """
    batch, count = scores.shape
    width = max(1, count // (4 * k))
    full = count // width
    if full < k:
        return None
    maxima = scores[:, : full * width].reshape(batch, full, width).max(axis=2)  # [B, full]
    return np.partition(maxima, full - k, axis=1)[:, full - k]


def top_k_catalog(
    embeddings: np.ndarray, table: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Return the top-K item rows [B, K] and their scores [B, K] for embeddings [B, D] over
    table [N, D] (K is min(k, N)).

    The catalog is scored in row chunks so that at most about 64 MiB of scores exist at once.
    """
    rows: list[np.ndarray] = []
    scores: list[np.ndarray] = []
    chunk = max(1, _MAX_SCORES_PER_CHUNK // max(1, table.shape[0]))
    for start in range(0, embeddings.shape[0], chunk):
        block = score_rows(embeddings[start : start + chunk], table)  # [chunk, N]
        best = top_k_rows(block, k)  # [chunk, K]
        rows.append(best)
        scores.append(np.take_along_axis(block, best, axis=1))
    width = min(k, table.shape[0])
    if not rows:
        return np.empty((0, width), np.int64), np.empty((0, width), np.float32)
    return np.concatenate(rows), np.concatenate(scores)


def top_k_candidates(
    embedding: np.ndarray, table: np.ndarray, candidates: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Return the top-K of the candidate item rows [C] for one embedding [D], and their scores.

    Ties are broken by candidate row ascending, the same rule as over the whole catalog.
    """
    candidates = np.asarray(candidates, dtype=np.int64)
    order = np.argsort(candidates, kind="stable")
    sorted_rows = candidates[order]
    row_scores = score_rows(embedding[None, :], table[sorted_rows])[0]  # [C]
    best = top_k(row_scores, k)
    return sorted_rows[best], row_scores[best]


def rank_of(
    target_row: int, embedding: np.ndarray, table: np.ndarray, pool: np.ndarray | None = None
) -> tuple[int, int]:
    """Return (rank, pool_size) of `target_row` under embedding [D], pessimistic on ties.

    pool: item rows [C] to rank among, or None for the whole catalog. The target counts as a
    member of the pool even when `pool` lacks it.
    """
    if pool is None:
        row_scores = nan_as_lowest(score_rows(embedding[None, :], table)[0])  # [N]
        return int(np.count_nonzero(row_scores >= row_scores[target_row])), table.shape[0]
    members = np.unique(np.append(np.asarray(pool, dtype=np.int64), target_row))
    row_scores = nan_as_lowest(score_rows(embedding[None, :], table[members])[0])  # [C]
    # The target's score comes from the same product as the others, so rounding is identical.
    target_score = row_scores[np.searchsorted(members, target_row)]
    return int(np.count_nonzero(row_scores >= target_score)), int(members.shape[0])


def ranks_over_catalog(
    target_rows: np.ndarray, embeddings: np.ndarray, table: np.ndarray
) -> list[tuple[int, int]]:
    """Return (rank, N) of each target row [B] under its embedding [B, D] over the catalog."""
    ranks: list[tuple[int, int]] = []
    chunk = max(1, _MAX_SCORES_PER_CHUNK // max(1, table.shape[0]))
    for start in range(0, embeddings.shape[0], chunk):
        block = nan_as_lowest(score_rows(embeddings[start : start + chunk], table))  # [chunk, N]
        targets = np.asarray(target_rows[start : start + chunk], dtype=np.int64)  # [chunk]
        target_scores = block[np.arange(len(targets)), targets]  # [chunk]
        counts = np.count_nonzero(block >= target_scores[:, None], axis=1)  # [chunk]
        ranks.extend((int(count), table.shape[0]) for count in counts)
    return ranks
