"""Offline evaluation: run a model over every session of a log and rank each target event.

The model reads the log through the same queue-based generator as training (users in log order,
no shuffling), so each user's carry flows through all of their sessions. How ranks, ties, pools
and the user's first event are counted is stated in `hiertcn.metrics`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from hiertcn.batching import Batch, BatchConfig, BatchGenerator
from hiertcn.data.counts import count_noun
from hiertcn.metrics import (
    RECALL_CUTOFFS,
    EventRanks,
    event_context,
    pessimistic_ranks,
    pool_rank,
    summarize_ranks,
)
from hiertcn.progress import ProgressBar

if TYPE_CHECKING:
    from hiertcn.data.log import EventLog

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvaluationConfig:
    """Configuration of one evaluation pass.

    `chunk_size` is the number of events scored against the whole catalog at once, which bounds
    the score matrix to `chunk_size` x N floats. `use_impressions` ranks among the event's
    impressions when the log has them, else among the whole catalog.
    """

    batch_size: int = 32
    cutoffs: tuple[int, ...] = RECALL_CUTOFFS
    use_impressions: bool = True
    chunk_size: int = 1024
    progress: bool = False


@dataclass(frozen=True)
class PoolCounts:
    """Counts of the pools that the scored events of one evaluation were ranked among.

    `impressions_events` were ranked among their impressions and `catalog_events` among the
    whole catalog of `catalog_items` items. `single_item_pools` counts the impressions events
    whose pool is the target alone, because every other shown item is outside the vocabulary or
    none was shown, so they rank 1 whatever the model scores. `unknown_only_lists` counts the
    catalog events whose impression list contains only ids outside the vocabulary, and
    `unknown_impression_ids` the ids outside the vocabulary in the lists of scored events,
    repeats included. Without `use_impressions` every count but `catalog_events` is 0.
    """

    use_impressions: bool
    catalog_items: int
    impressions_events: int = 0
    catalog_events: int = 0
    single_item_pools: int = 0
    unknown_only_lists: int = 0
    unknown_impression_ids: int = 0

    @property
    def kind(self) -> str:
        """Pool kind of the scored events: `impressions` when every one was ranked among its
        impressions, `catalog` when none was (or no event was scored), else `mixed`."""
        if self.impressions_events == 0:
            return "catalog"
        return "impressions" if self.catalog_events == 0 else "mixed"

    @property
    def events(self) -> int:
        """Number of scored events."""
        return self.impressions_events + self.catalog_events

    def __add__(self, other: PoolCounts) -> PoolCounts:
        return PoolCounts(
            use_impressions=self.use_impressions,
            catalog_items=self.catalog_items,
            impressions_events=self.impressions_events + other.impressions_events,
            catalog_events=self.catalog_events + other.catalog_events,
            single_item_pools=self.single_item_pools + other.single_item_pools,
            unknown_only_lists=self.unknown_only_lists + other.unknown_only_lists,
            unknown_impression_ids=self.unknown_impression_ids + other.unknown_impression_ids,
        )

    def to_dict(self) -> dict[str, Any]:
        """Return the counts and `kind` as a JSON-ready dict."""
        return {"kind": self.kind, **dataclasses.asdict(self)}


@dataclass(frozen=True)
class EvaluationResult:
    """Summary metrics (see `summarize_ranks`), the rank of every scored event and the pools."""

    metrics: dict[str, float]
    ranks: EventRanks = field(repr=False)
    pools: PoolCounts


@torch.no_grad()
def evaluate_model(
    model: torch.nn.Module,
    log,
    config: EvaluationConfig | None = None,
    device: str | torch.device = "cpu",
) -> EvaluationResult:
    """Rank every target event of `log` except each user's first one, and summarize the ranks."""
    config = config or EvaluationConfig()
    device = torch.device(device)
    was_training = model.training
    model.eval()
    batch_size = capped_batch_size(config.batch_size, log.num_users)
    generator = BatchGenerator(log, BatchConfig(batch_size=batch_size, shuffle=False))
    table = model.item_embeddings()  # [N, D]
    carry = model.initial_carry(batch_size, device)
    parts: list[EventRanks] = []
    pools = PoolCounts(use_impressions=config.use_impressions, catalog_items=table.shape[0])
    progress = ProgressBar(generator.num_batches(), "evaluate", enabled=config.progress)
    for batch in generator.epoch(0):
        new_user = torch.as_tensor(batch.new_user, device=device)
        carry = model.reset_carry(carry, new_user)
        items = torch.as_tensor(batch.items, device=device)
        lengths = torch.as_tensor(batch.lengths, device=device)
        queries, carry = model(items, lengths, carry)  # [B, L, D]
        batch_ranks, batch_pools = _rank_batch(model, log, batch, queries, table, config)
        parts.append(batch_ranks)
        pools = pools + batch_pools
        progress.update(1, events=batch.num_events)
    progress.close()
    model.train(was_training)

    ranks = EventRanks.concatenate(parts)
    metrics = summarize_ranks(ranks.ranks, ranks.pool_sizes, config.cutoffs)
    return EvaluationResult(metrics=metrics, ranks=ranks, pools=pools)


def capped_batch_size(batch_size: int, num_users: int) -> int:
    """Return `batch_size`, at most `num_users` (and at least 1).

    Users are dealt to the queues with the fewest sessions, so with B >= U every user has a
    queue of its own and the rows past U stay empty in every batch. A wider batch only
    allocates more empty rows.
    """
    return max(1, min(batch_size, num_users))


def _rank_batch(
    model: torch.nn.Module,
    log,
    batch: Batch,
    queries: torch.Tensor,
    table: torch.Tensor,
    config: EvaluationConfig,
) -> tuple[EventRanks, PoolCounts]:
    """Rank the scored events of one batch (targets, except each user's first event) and count
    their pools."""
    rows, columns = np.nonzero(batch.targets)
    events = batch.events[rows, columns]
    sessions = batch.sessions[rows]
    users = batch.users[rows]
    past_events, position, gap = event_context(log, events, sessions, users)

    scored = past_events > 0
    rows, columns, events, sessions, users = (
        array[scored] for array in (rows, columns, events, sessions, users)
    )
    past_events, position, gap = past_events[scored], position[scored], gap[scored]

    selected = queries[torch.as_tensor(rows), torch.as_tensor(columns)]  # [P, D]
    target_items = torch.as_tensor(batch.items[rows, columns], device=queries.device)
    # Events with an impression list are ranked among it. The others are ranked among the whole
    # catalog: events with no list, and events whose shown items are all outside the vocabulary.
    with_pool = np.zeros(len(rows), dtype=bool)
    known: np.ndarray | None = None  # [P], impression ids in the vocabulary
    if config.use_impressions and batch.impressions is not None:
        pools = batch.impressions[rows, columns]  # [P, M]
        known = (pools >= 0).sum(axis=1)
        with_pool = known > 0
    ranks = np.zeros(len(rows), dtype=np.int64)
    pool_sizes = np.full(len(rows), table.shape[0], dtype=np.int64)
    if with_pool.any():
        chosen = torch.as_tensor(np.flatnonzero(with_pool), device=selected.device)
        ranks[with_pool], pool_sizes[with_pool] = _rank_in_impressions(
            model, selected[chosen], table, target_items[chosen], pools[with_pool]
        )
    if (~with_pool).any():
        chosen = torch.as_tensor(np.flatnonzero(~with_pool), device=selected.device)
        ranks[~with_pool] = _rank_in_catalog(
            model, selected[chosen], table, target_items[chosen], config.chunk_size
        )
    event_ranks = EventRanks(
        events=events.astype(np.int64),
        users=users.astype(np.int64),
        ranks=ranks,
        pool_sizes=pool_sizes,
        past_events=past_events,
        session_position=position,
        session_gap=gap,
    )
    counts = _count_pools(
        log, event_ranks, with_pool, known, config.use_impressions, table.shape[0]
    )
    return event_ranks, counts


def _count_pools(
    log: EventLog,
    ranks: EventRanks,
    with_pool: np.ndarray,
    known: np.ndarray | None,
    use_impressions: bool,
    catalog_items: int,
) -> PoolCounts:
    """Count the pools of one batch's scored events.

    `with_pool` [P] flags the events ranked among impressions, and `known` [P] is the number of
    impression ids in the vocabulary of each event, or None when impressions are not used or the
    log has none.
    """
    counts = PoolCounts(
        use_impressions=use_impressions,
        catalog_items=catalog_items,
        impressions_events=int(with_pool.sum()),
        catalog_events=int((~with_pool).sum()),
        single_item_pools=int((with_pool & (ranks.pool_sizes == 1)).sum()),
    )
    if known is None:
        return counts
    # The batch pads each impression list with -1, the row that also marks an id outside the
    # vocabulary, so the list lengths come from the log.
    offsets = np.asarray(log.impression_offsets)
    listed = offsets[ranks.events + 1] - offsets[ranks.events]
    unknown = listed - known
    return dataclasses.replace(
        counts,
        unknown_only_lists=int(((listed > 0) & (unknown == listed)).sum()),
        unknown_impression_ids=int(unknown.sum()),
    )


def _catalog_scores(model: torch.nn.Module, queries: torch.Tensor, table: torch.Tensor):
    """Score queries [P, D] against the catalog [N, D]; NaN scores count as the lowest."""
    scores = model.score(queries, table)  # [P, N]
    return torch.nan_to_num(scores.float(), nan=-math.inf)


def _rank_in_catalog(
    model: torch.nn.Module,
    queries: torch.Tensor,
    table: torch.Tensor,
    targets: torch.Tensor,
    chunk_size: int,
) -> np.ndarray:
    ranks = [
        pessimistic_ranks(
            _catalog_scores(model, queries[start : start + chunk_size], table),
            targets[start : start + chunk_size],
        )
        for start in range(0, len(targets), chunk_size)
    ]
    if not ranks:
        return np.zeros(0, dtype=np.int64)
    return torch.cat(ranks).cpu().numpy().astype(np.int64)


def _rank_in_impressions(
    model: torch.nn.Module,
    queries: torch.Tensor,
    table: torch.Tensor,
    targets: torch.Tensor,
    pools: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    ranks = np.zeros(len(targets), dtype=np.int64)
    pool_sizes = np.zeros(len(targets), dtype=np.int64)
    for index in range(len(targets)):
        scores = _catalog_scores(model, queries[index : index + 1], table)[0]  # [N]
        ranks[index], pool_sizes[index] = pool_rank(scores, pools[index], int(targets[index]))
    return ranks, pool_sizes


def describe_pools(pools: PoolCounts, split: str | None = None) -> str:
    """Describe in one line which pools the scored events were ranked among, for the table.

    `split` names the split of the events, as in `pool (cold split): ...`, for a table whose rows
    come from several splits.
    """
    prefix = "pool: " if split is None else f"pool ({split} split): "
    catalog = f"the whole catalog of {count_noun(pools.catalog_items, 'item')}"
    if not pools.use_impressions:
        return f"{prefix}{catalog} for every event (--no-impressions)"
    if pools.impressions_events == 0 and pools.unknown_only_lists == 0:
        return f"{prefix}{catalog} for every event (no ranked event has impressions)"

    parts = []
    if pools.impressions_events:
        part = f"impressions for {count_noun(pools.impressions_events, 'event')}"
        if pools.single_item_pools:
            part += f" ({pools.single_item_pools} with only the clicked item, ranked 1)"
        parts.append(part)
    if pools.catalog_events:
        part = f"{catalog} for {count_noun(pools.catalog_events, 'event')}"
        if pools.unknown_only_lists:
            part += (
                f" ({pools.unknown_only_lists} whose shown items are all outside the vocabulary)"
            )
        parts.append(part)
    line = prefix + ", ".join(parts)
    if pools.unknown_impression_ids == 1:
        line += "; 1 impression id outside the vocabulary was dropped"
    elif pools.unknown_impression_ids:
        line += (
            f"; {pools.unknown_impression_ids} impression ids outside the vocabulary were dropped"
        )
    return line


def warn_single_item_pools(pools: PoolCounts) -> None:
    """Log a warning when some events were ranked among a pool of only their target item."""
    if pools.single_item_pools == 0:
        return
    logger.warning(
        "%d of %d ranked events (%.1f%%) have an impression pool of only the clicked item, "
        "because their other shown items are outside the vocabulary or none were shown, so they "
        "rank 1 whatever the model scores. Compare with --no-impressions, which ranks every "
        "event among the whole catalog. Lower filters (--min-item-count, --min-user-events) "
        "add a shown item to the vocabulary only when it has events of its own",
        pools.single_item_pools,
        pools.events,
        100 * pools.single_item_pools / pools.events,
    )


METRIC_COLUMNS = ("recall@1", "recall@5", "recall@10", "recall@20", "mrr", "mrp", "events")


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] = METRIC_COLUMNS) -> str:
    """Format evaluation rows (each with a `model` name and metric keys) as a Markdown table."""
    header = ["model", *(_column_title(name) for name in columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [str(row["model"])]
        for name in columns:
            value = row.get(name, float("nan"))
            cells.append(str(int(value)) if name == "events" else f"{value:.4f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _column_title(name: str) -> str:
    if name.startswith("recall@"):
        return "Recall@" + name.split("@", 1)[1]
    return name.upper() if name in ("mrr", "mrp") else name
