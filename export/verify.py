"""Check that a bundle's ONNX graphs compute what the torch model computes.

Shape letters: `B` rows, `L` events in a session prefix, `N` items, `D` item-embedding size,
`G` GRU layers, `H` GRU hidden size, `K` list length.

There are two kinds of input. "random" inputs are Gaussian prefixes and states drawn uniformly
from (-1, 1). "real" inputs are the item embeddings of real (or catalog-sampled) sessions, with
states reached by closing such sessions from the start state. For each kind and batch size, the
session step runs on both sides at prefix widths L. Row 0 has length L and the other rows random
lengths in 0..L, so left padding is exercised in every batch. A batch narrower than the receptive
field runs every width in 0..receptive field. A batch with more rows than there are lengths runs
only the widths 0, 1, half and full receptive field. In those calls rows 1..L carry every length
0..L-1, so every prefix length is still checked, in 4 calls instead of one per width. The
session close runs once per kind and batch size. A check passes when:

- the max absolute difference of user embeddings and of GRU states is at most `atol`, and
- the top-K item ids over the whole catalog (scored with numpy, as the worker does) agree,
  except where scores tie. Two torch scores count as tied when they differ by at most
  `tie_rtol * max(1, |score|)`, a float32 rounding margin. A swap of two items whose scores
  differ by more is a mismatch even when the embeddings are within `atol`.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import torch
from torch import nn

from export.bundle import ModelBundle
from export.errors import VerificationError

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class VerifyConfig:
    """Batch sizes, prefix widths and tolerances of one verification."""

    batch_sizes: tuple[int, ...] = (1, 7, 256)
    atol: float = 1e-4
    top_k: int = 20
    tie_rtol: float = 1e-5  # relative margin under which two scores count as tied
    max_length: int | None = None  # widest prefix checked; None: the receptive field
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class CheckResult:
    """The outcome of one graph on one kind of input at one batch size, over all widths."""

    graph: str  # "session_step" or "session_close"
    inputs: str  # "random" or "real"
    batch_size: int
    widths: int  # prefix widths checked (1 for the session close)
    max_abs_diff: float
    topk_mismatches: int  # rows whose top-K ids differ beyond ties (0 for the session close)
    passed: bool


@dataclasses.dataclass(frozen=True)
class VerifyReport:
    """All checks of one verification."""

    results: tuple[CheckResult, ...]
    atol: float
    top_k: int

    @property
    def passed(self) -> bool:
        """Whether every check passed."""
        return all(result.passed for result in self.results)

    def format(self) -> str:
        """Return the report as a small text table with a PASS or FAIL last line."""
        lines = [
            f"{'graph':<14} {'inputs':<7} {'batch':>5} {'widths':>6} {'max|diff|':>10} "
            f"{'top-K diff':>10}  result"
        ]
        for result in self.results:
            lines.append(
                f"{result.graph:<14} {result.inputs:<7} {result.batch_size:>5} "
                f"{result.widths:>6} {result.max_abs_diff:>10.2e} {result.topk_mismatches:>10}  "
                f"{'ok' if result.passed else 'FAIL'}"
            )
        verdict = "PASS" if self.passed else "FAIL"
        lines.append(
            f"{verdict}: tolerance {self.atol:g} on embeddings and states, top-{self.top_k}"
        )
        return "\n".join(lines)


def topk_rows(scores: np.ndarray, k: int) -> np.ndarray:
    """Return the ids of the K highest scores of each row, best first: [B, N] -> [B, K]."""
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def count_topk_mismatches(
    reference: np.ndarray, candidate: np.ndarray, table: np.ndarray, k: int, tie_rtol: float = 1e-5
) -> int:
    """Count rows whose top-K under `candidate` embeddings differs from `reference` beyond ties.

    reference, candidate: user embeddings [B, D]; table: float32 item table [N, D]. A row
    passes when, at every rank, the reference score of the candidate's item ties with the
    reference score at that rank (within `tie_rtol * max(1, |score|)`).
    """
    reference_scores = reference @ table.T  # [B, N]
    candidate_ids = topk_rows(candidate @ table.T, k)  # [B, K]
    reference_ids = topk_rows(reference_scores, k)
    best = np.take_along_axis(reference_scores, reference_ids, axis=1)
    chosen = np.take_along_axis(reference_scores, candidate_ids, axis=1)
    margin = tie_rtol * np.maximum(1.0, np.abs(best))
    wrong = np.abs(best - chosen) > margin
    return int(wrong.any(axis=1).sum())


def _random_prefix(
    rng: np.random.Generator,
    batch: int,
    width: int,
    dim: int,
    kind: str,
    table: np.ndarray,
    sessions: list[np.ndarray],
) -> tuple[np.ndarray, np.ndarray]:
    """Return a left-padded prefix float32 [B, L, D] and its lengths int64 [B]."""
    lengths = rng.integers(0, width + 1, size=batch).astype(np.int64)
    if batch > width:
        lengths[1 : width + 1] = np.arange(width)  # every shorter length once
    lengths[0] = width
    prefix = np.zeros((batch, width, dim), dtype=np.float32)
    for row, length in enumerate(lengths):
        if length == 0:
            continue
        if kind == "random":
            values = rng.standard_normal((length, dim)).astype(np.float32)
        else:
            values = table[_session_rows(rng, sessions, length, table.shape[0])]
        prefix[row, width - length :] = values
    return prefix, lengths


def _session_rows(
    rng: np.random.Generator, sessions: list[np.ndarray], length: int, num_items: int
) -> np.ndarray:
    """Return `length` item rows: the tail of a real session when one is long enough."""
    long_enough = [session for session in sessions if len(session) >= length]
    if long_enough:
        session = long_enough[rng.integers(len(long_enough))]
        start = rng.integers(0, len(session) - length + 1)
        return np.asarray(session[start : start + length], dtype=np.int64)
    return rng.integers(0, num_items, size=length)


def _states(
    rng: np.random.Generator,
    model: nn.Module,
    batch: int,
    kind: str,
    table: np.ndarray,
    sessions: list[np.ndarray],
) -> np.ndarray:
    """Return GRU states float32 [B, G, H] of the given kind."""
    start = model.start_state.detach().numpy()  # [G, H]
    if kind == "random":
        return rng.uniform(-1.0, 1.0, size=(batch, *start.shape)).astype(np.float32)
    state = torch.from_numpy(np.repeat(start[None], batch, axis=0))
    with torch.no_grad():
        for _ in range(int(rng.integers(0, 4))):
            means = np.stack(
                [
                    table[_session_rows(rng, sessions, int(rng.integers(1, 8)), len(table))].mean(0)
                    for _ in range(batch)
                ]
            )
            state = model.close_session(state, torch.from_numpy(means.astype(np.float32)))
    return state.numpy().astype(np.float32)


def _check_step(
    model: nn.Module,
    bundle: ModelBundle,
    config: VerifyConfig,
    kind: str,
    batch: int,
    sessions: list[np.ndarray],
    rng: np.random.Generator,
) -> CheckResult:
    table = np.asarray(bundle.item_table, dtype=np.float32)
    max_length = config.max_length if config.max_length is not None else model.receptive_field
    worst, mismatches = 0.0, 0
    widths = _widths(batch, max_length)
    for width in widths:
        prefix, lengths = _random_prefix(rng, batch, width, table.shape[1], kind, table, sessions)
        state = _states(rng, model, batch, kind, table, sessions)
        with torch.no_grad():
            expected = model.session_user_embedding(
                torch.from_numpy(prefix), torch.from_numpy(lengths), torch.from_numpy(state)
            ).numpy()
        actual = bundle.session_step(prefix, lengths, state)
        worst = max(worst, float(np.abs(actual - expected).max()))
        mismatches += count_topk_mismatches(expected, actual, table, config.top_k, config.tie_rtol)
    passed = worst <= config.atol and mismatches == 0
    return CheckResult("session_step", kind, batch, len(widths), worst, mismatches, passed)


def _widths(batch: int, max_length: int) -> list[int]:
    """Return the prefix widths to run at this batch size (see the module docstring)."""
    if batch <= max_length:
        return list(range(max_length + 1))
    return sorted({0, 1, max_length // 2, max_length})


def _check_close(
    model: nn.Module,
    bundle: ModelBundle,
    config: VerifyConfig,
    kind: str,
    batch: int,
    sessions: list[np.ndarray],
    rng: np.random.Generator,
) -> CheckResult:
    table = np.asarray(bundle.item_table, dtype=np.float32)
    state = _states(rng, model, batch, kind, table, sessions)
    if kind == "random":
        means = rng.standard_normal((batch, table.shape[1])).astype(np.float32)
    else:
        means = np.stack(
            [
                table[_session_rows(rng, sessions, int(rng.integers(1, 8)), len(table))].mean(0)
                for _ in range(batch)
            ]
        ).astype(np.float32)
    with torch.no_grad():
        expected = model.close_session(torch.from_numpy(state), torch.from_numpy(means)).numpy()
    worst = float(np.abs(bundle.session_close(state, means) - expected).max())
    return CheckResult("session_close", kind, batch, 1, worst, 0, worst <= config.atol)


def verify_bundle(
    model: nn.Module,
    bundle: ModelBundle,
    config: VerifyConfig | None = None,
    sessions: list[np.ndarray] | None = None,
) -> VerifyReport:
    """Compare ONNX Runtime with torch on `bundle`; `sessions` are real item-row sequences.

    Without `sessions` the "real" inputs sample item rows uniformly from the catalog. The torch
    side uses `model` in eval mode; the report's `passed` is true when every check held.
    """
    config = config or VerifyConfig()
    sessions = [np.asarray(session) for session in (sessions or []) if len(session)]
    rng = np.random.default_rng(config.seed)
    model.eval()
    results = []
    for kind in ("random", "real"):
        for batch in config.batch_sizes:
            for check in (_check_step, _check_close):
                result = check(model, bundle, config, kind, batch, sessions, rng)
                logger.info(
                    "verified %s on %s inputs at batch %d: max |difference| %.2e, %s",
                    result.graph,
                    kind,
                    batch,
                    result.max_abs_diff,
                    "ok" if result.passed else "FAILED",
                )
                results.append(result)
    return VerifyReport(tuple(results), config.atol, config.top_k)


def require_passed(report: VerifyReport) -> None:
    """Raise `VerificationError` with the report when a check failed."""
    if not report.passed:
        raise VerificationError(
            "ONNX Runtime and torch disagree beyond the tolerance; do not deploy this bundle:\n"
            + report.format()
        )
