"""The per-batch serving logic that the Kafka worker and `replay` share.

`Pipeline.process(events, states)` takes validated events in input order and the states of
their users, and returns one recommendation per event, the changed states, the sessions closed
by a gap and the rank of each event's item under the user's previous recommendation.
`Pipeline.close_idle(states)` closes the sessions that the timers found idle and, with
`session_close_outputs`, returns one session-start recommendation per closed session. The
pipeline does no I/O, so replaying a log through it gives what the live worker publishes.

Shape letters: B events in a batch, L events in a session prefix, N items in the catalog,
D item-embedding size, G GRU layers, H GRU hidden size.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np

from hiertcn.command_line import format_number
from statestore import UserState
from stream.errors import ConfigError
from stream.events import Event
from stream.logs import INTERVAL_SECONDS, LINES_PER_INTERVAL, RateLimitFilter
from stream.scoring import rank_of, ranks_over_catalog, top_k_candidates, top_k_catalog

logger = logging.getLogger(__name__)
# A bundle that returns NaN embeddings warns on every batch, so these warnings are rate-limited.
non_finite_logger = logging.getLogger(f"{__name__}.non_finite")
non_finite_logger.addFilter(RateLimitFilter(LINES_PER_INTERVAL, INTERVAL_SECONDS))


class Bundle(Protocol):
    """The part of `export.bundle.ModelBundle` that the pipeline uses."""

    manifest: Any
    item_table: np.ndarray  # [N, D] float32 or float16
    item_ids: Sequence[str]
    start_state: np.ndarray  # [G, H] float32

    def session_step(
        self, prefix: np.ndarray, lengths: np.ndarray, state: np.ndarray
    ) -> np.ndarray: ...

    def session_close(self, state: np.ndarray, session_mean: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class PipelineConfig:
    """Serving settings; None takes the value from the bundle manifest.

    session_gap: idle seconds after which a user's next event starts a new session (a gap of
        exactly session_gap stays in the session).
    top_k: length of each recommendation list.
    max_session_items: the maximum number of recent items of the open session that the session
        step receives.
    model_version: the `model` field of every output.
    session_close_outputs: whether `close_idle` also returns, for each session it closes, the
        recommendation for the first event of the user's next session.
    """

    session_gap: float | None = None
    top_k: int | None = None
    max_session_items: int | None = None
    model_version: str | None = None
    session_close_outputs: bool = False

    def resolve(self, manifest: Any) -> PipelineConfig:
        """Return a copy with every None replaced by the bundle manifest's value, checked."""
        resolved = PipelineConfig(
            session_gap=float(
                manifest.session_gap if self.session_gap is None else self.session_gap
            ),
            top_k=int(manifest.top_k if self.top_k is None else self.top_k),
            max_session_items=int(
                manifest.max_session_items
                if self.max_session_items is None
                else self.max_session_items
            ),
            model_version=str(
                manifest.version if self.model_version is None else self.model_version
            ),
            session_close_outputs=self.session_close_outputs,
        )
        # `load_bundle` checks the manifest's values, so these checks catch values set in code.
        if not resolved.session_gap > 0:
            raise ConfigError(
                f"session_gap {format_number(resolved.session_gap)} is invalid: use a number of "
                "seconds > 0"
            )
        if resolved.top_k < 1:
            raise ConfigError(f"top_k {resolved.top_k} is invalid: use an integer >= 1")
        if resolved.max_session_items < 1:
            raise ConfigError(
                f"max_session_items {resolved.max_session_items} is invalid: use an integer >= 1"
            )
        return resolved


# The `trigger` of the output that a timer close of a session produces.
SESSION_CLOSE_TRIGGER = "session_close"


@dataclass(frozen=True)
class Recommendation:
    """One output: the top-K external item ids for a user, best first.

    An event output has the event's id and time. A session-close output (`trigger` is
    "session_close") has no event id, the time at which the session expired, and the number of
    the session it predicts the first event of.
    """

    user: str
    event_id: str | None
    ts: float
    items: tuple[str, ...]
    scores: tuple[float, ...]
    model: str
    session: int
    trigger: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return the output map of the recommendations topic (msgpack- and JSON-ready).

        The map has a `trigger` entry only when the output has a trigger, so event outputs
        keep their seven fields.
        """
        output: dict[str, Any] = {
            "user": self.user,
            "event_id": self.event_id,
            "ts": self.ts,
            "items": list(self.items),
            "scores": list(self.scores),
            "model": self.model,
            "session": self.session,
        }
        if self.trigger is not None:
            output["trigger"] = self.trigger
        return output


@dataclass
class BatchResult:
    """Result of `Pipeline.process` for one batch.

    live: per event, (rank, pool_size) of its item under the user's previous recommendation,
        pessimistic on ties; None where the user had no previous recommendation.
    """

    outputs: list[Recommendation]
    states: dict[str, UserState]
    closed: Counter[str]
    live: list[tuple[int, int] | None]
    reset: int = 0  # users whose stored state did not fit the bundle and started anew


@dataclass
class IdleResult:
    """Result of `Pipeline.close_idle`.

    states: every state that changed, the closed sessions and the states that did not fit the
        bundle and started anew.
    outputs: with `session_close_outputs`, one session-start recommendation per closed session,
        in the order of `states`; empty otherwise.
    reset: how many of `states` did not fit the bundle and started anew.
    """

    states: dict[str, UserState]
    outputs: list[Recommendation] = field(default_factory=list)
    reset: int = 0


@dataclass
class _UserWork:
    """One user's state while a batch is planned; the GRU states after each close."""

    grus: list[np.ndarray]  # [G, H] each: before the batch, then after each close
    session_items: list[int]
    session_sum: np.ndarray  # [D] float32
    session_length: int
    session_start: float
    last_ts: float
    session_count: int
    last_embedding: np.ndarray | None
    partition: int
    closes: list[np.ndarray] = field(default_factory=list)  # [D] session means to close


@dataclass
class _Plan:
    """Step (a) of `Pipeline.process`: each event's prefix and GRU state, and the closes."""

    work: dict[str, _UserWork]
    prefixes: list[list[int]]  # item rows per event, oldest first
    gru_round: list[int]  # per event, how many of its user's closes of this batch precede it
    session: list[int]  # per event, the user's session number


class Pipeline:
    """Sessions, GRU updates, user embeddings and top-K lists for batches of events."""

    def __init__(self, bundle: Bundle, config: PipelineConfig = PipelineConfig()) -> None:
        self.bundle = bundle
        self.config = config.resolve(bundle.manifest)
        # A plain ndarray view of the memory map: same pages, without np.memmap's per-index cost.
        self.table = np.asarray(bundle.item_table)  # [N, D]
        self.item_ids = np.array(bundle.item_ids, dtype=object)  # [N] external ids
        self.dim = int(self.table.shape[1])
        logger.info(
            "pipeline ready: model %s, %d items, D=%d, session gap %g s, K=%d, "
            "session prefix up to %d items, session-close outputs %s",
            self.config.model_version,
            self.table.shape[0],
            self.dim,
            self.config.session_gap,
            self.config.top_k,
            self.config.max_session_items,
            "on" if self.config.session_close_outputs else "off",
        )

    def new_state(self) -> UserState:
        """Return the state of a user never seen before: the learned start state, no session."""
        return UserState.new(self.bundle.start_state, self.dim)

    def process(self, events: Sequence[Event], states: Mapping[str, UserState]) -> BatchResult:
        """Run one batch; `states` is left unchanged and the new states come back in the result.

        Events of one user are handled in input order; users missing from `states` start from
        the learned start state. The steps carry letters because the worker's numbers 1 to 6
        name other steps. In the worker, this method covers the gap closes and the scoring:

        (a) plan: walk each user's events in order, note a session close at each gap and
            collect each event's session prefix
        (b) close the noted sessions in rounds, one batched GRU update per round
        (c) run one batched session step for every event
        (d) score and pick the top K per event
        (e) rank each event's item under the user's previous recommendation (live metric)
        (f) write the walked sessions and the last embeddings into new states
        """
        if not events:
            return BatchResult([], {}, Counter(), [])
        states, reset = self.usable_states(states)

        # (a) Walk each user's events in order: note a close at each gap, collect prefixes.
        plan = self._plan(events, states)
        closed = Counter({"gap": sum(len(work.closes) for work in plan.work.values())})

        # (b) Close sessions in rounds: round r is the r-th close of every user that has one.
        self._close_rounds(plan.work)

        # (c) One batched session step for every event of the batch.
        embeddings = self._session_step(events, plan)  # [B, D]
        self._warn_non_finite(embeddings)

        # (d) Scores and top-K per event, over its candidates or the whole catalog.
        outputs = self._recommend(events, embeddings, plan.session)

        # (e) Live metric: the rank of each event's item under the previous recommendation.
        live = self._live_ranks(events, embeddings, plan.work, states)

        # (f) Write the walked sessions and the last embeddings into new states.
        new_states = self._finish(events, embeddings, plan.work)
        return BatchResult(outputs, new_states, closed, live, reset)

    def usable_states(self, states: Mapping[str, UserState]) -> tuple[Mapping[str, UserState], int]:
        """Drop the states that do not fit this bundle; return the rest and the number dropped.

        A store written with another bundle can hold GRU states of another [G, H], sums and
        embeddings of another D, or session item rows beyond this catalog (a bundle with fewer
        items). Such a user starts from the learned start state, as a new one. One warning per
        call counts the dropped states by cause.
        """
        causes = {user: self._misfit(state) for user, state in states.items()}
        misfits = {user: cause for user, cause in causes.items() if cause is not None}
        if not misfits:
            return states, 0
        by_cause = Counter(misfits.values())
        logger.warning(
            "%d stored states do not fit the bundle of version %s, so those users start anew "
            "(for example %r): %s",
            len(misfits),
            self.config.model_version,
            next(iter(misfits)),
            "; ".join(f"{count} with {cause}" for cause, count in by_cause.most_common()),
        )
        usable = {user: state for user, state in states.items() if user not in misfits}
        return usable, len(misfits)

    def _misfit(self, state: UserState) -> str | None:
        """Return why `state` does not fit this bundle, or None when it fits."""
        gru_shape = np.shape(state.gru_state)
        expected_gru = self.bundle.start_state.shape
        if gru_shape != expected_gru:
            return f"GRU state [G, H] = {list(gru_shape)} instead of {list(expected_gru)}"
        sum_shape = np.shape(state.session_sum)
        if sum_shape != (self.dim,):
            return f"session sum of shape {list(sum_shape)} instead of [{self.dim}]"
        embedding = state.last_embedding
        if embedding is not None and np.shape(embedding) != (self.dim,):
            return f"last embedding of shape {list(np.shape(embedding))} instead of [{self.dim}]"
        if not _finite_arrays(state):
            return "a NaN or infinite value in its GRU state, session sum or last embedding"
        items = np.asarray(state.session_items)
        if items.size and int(items.max()) >= self.table.shape[0]:
            return (
                f"session item rows beyond this bundle's {self.table.shape[0]} items (the "
                "stored sessions were built with a larger catalog)"
            )
        return None

    def close_idle(self, states: Mapping[str, UserState]) -> IdleResult:
        """Close the open session of each given user (timer closes) in one batched call.

        The caller picks the expired users. States without an open session are skipped. A state
        that does not fit the bundle comes back as a new state. The result contains the changed
        states only and, with `session_close_outputs`, the session-start outputs.
        """
        usable, reset = self.usable_states(states)
        # A state that does not fit the bundle is replaced by a new one with no open session.
        changed: dict[str, UserState] = {
            user: replace(self.new_state(), partition=state.partition, last_ts=state.last_ts)
            for user, state in states.items()
            if user not in usable
        }
        users = [user for user, state in usable.items() if state.session_length > 0]
        if not users:
            return IdleResult(changed, reset=reset)
        gru = np.stack([np.asarray(states[u].gru_state, np.float32) for u in users])  # [B, G, H]
        means = np.stack(
            [
                np.asarray(states[u].session_sum, np.float32) / np.float32(states[u].session_length)
                for u in users
            ]
        )  # [B, D]
        new_gru = self.bundle.session_close(gru, means)
        for index, user in enumerate(users):
            changed[user] = replace(
                states[user],
                gru_state=np.array(new_gru[index], dtype=np.float32),
                session_items=np.empty(0, dtype=np.int32),
                session_sum=np.zeros(self.dim, dtype=np.float32),
                session_length=0,
            )
        outputs: list[Recommendation] = []
        if self.config.session_close_outputs:
            outputs = self._session_start_outputs(users, changed)
        logger.debug("closed %d idle sessions", len(users))
        return IdleResult(changed, outputs, reset)

    def _session_start_outputs(
        self, users: list[str], changed: dict[str, UserState]
    ) -> list[Recommendation]:
        """Recommend the first event of each user's next session, after a timer close.

        Stores each session-start embedding in `changed` as the user's last embedding, so that
        the live metric ranks the user's next event against this list.
        """
        gru = np.stack([changed[user].gru_state for user in users])  # [B, G, H]
        # An empty session prefix: one zero row with length 0, so the session step reads only
        # the start token and the GRU state, as for the first event of a session.
        prefix = np.zeros((len(users), 1, self.dim), dtype=np.float32)  # [B, 1, D]
        lengths = np.zeros(len(users), dtype=np.int64)  # [B]
        embeddings = np.asarray(self.bundle.session_step(prefix, lengths, gru), np.float32)
        self._warn_non_finite(embeddings, "session-close outputs")
        rows, scores = top_k_catalog(embeddings, self.table, self.config.top_k)  # [B, K] each

        outputs = []
        for index, user in enumerate(users):
            state = replace(changed[user], last_embedding=np.array(embeddings[index]))
            changed[user] = state
            outputs.append(
                Recommendation(
                    user=user,
                    event_id=None,
                    ts=state.last_ts + self.config.session_gap,
                    items=tuple(self.item_ids[rows[index]].tolist()),
                    scores=tuple(scores[index].tolist()),
                    model=self.config.model_version,
                    session=state.session_count + 1,
                    trigger=SESSION_CLOSE_TRIGGER,
                )
            )
        return outputs

    def _start_work(self, state: UserState | None) -> _UserWork:
        state = state if state is not None else self.new_state()
        return _UserWork(
            grus=[np.asarray(state.gru_state, dtype=np.float32)],
            session_items=[int(row) for row in state.session_items],
            session_sum=np.array(state.session_sum, dtype=np.float32),
            session_length=int(state.session_length),
            session_start=float(state.session_start),
            last_ts=float(state.last_ts),
            session_count=int(state.session_count),
            last_embedding=state.last_embedding,
            partition=int(state.partition),
        )

    def _plan(self, events: Sequence[Event], states: Mapping[str, UserState]) -> _Plan:
        gap = self.config.session_gap
        cap = self.config.max_session_items
        plan = _Plan(work={}, prefixes=[], gru_round=[], session=[])
        for event in events:
            work = plan.work.get(event.user)
            if work is None:
                work = plan.work[event.user] = self._start_work(states.get(event.user))
            if work.session_length > 0 and event.ts - work.last_ts > gap:
                work.closes.append(work.session_sum / np.float32(work.session_length))
                work.session_items = []
                work.session_sum = np.zeros(self.dim, dtype=np.float32)
                work.session_length = 0
            if work.session_length == 0:
                # NOTE: after a timer close, an event within session_gap of last_ts (only when
                # the input is not in time order across users) still opens a new session,
                # because the closed session's GRU update cannot be undone.
                work.session_count += 1
                work.session_start = event.ts
            work.session_items.append(event.row)
            del work.session_items[:-cap]
            # Summed event by event in float32, so the sum does not depend on batch borders.
            work.session_sum = work.session_sum + np.asarray(self.table[event.row], np.float32)
            work.session_length += 1
            # NOTE: an event older than the user's last one keeps last_ts at the newest time,
            # so a late event never reopens the gap that the timers measure.
            work.last_ts = max(work.last_ts, event.ts)
            work.partition = event.partition
            plan.prefixes.append(list(work.session_items))
            plan.gru_round.append(len(work.closes))
            plan.session.append(work.session_count)
        return plan

    def _close_rounds(self, work: dict[str, _UserWork]) -> None:
        rounds = max(len(user_work.closes) for user_work in work.values())
        for round_index in range(rounds):
            users = [
                user for user, user_work in work.items() if len(user_work.closes) > round_index
            ]
            state = np.stack([work[u].grus[round_index] for u in users])  # [B, G, H]
            means = np.stack([work[u].closes[round_index] for u in users])  # [B, D]
            new_state = self.bundle.session_close(state, means.astype(np.float32))
            for index, user in enumerate(users):
                work[user].grus.append(np.asarray(new_state[index], dtype=np.float32))

    def _session_step(self, events: Sequence[Event], plan: _Plan) -> np.ndarray:
        batch = len(events)
        lengths = np.array([len(prefix) for prefix in plan.prefixes], dtype=np.int64)  # [B]
        longest = int(lengths.max())
        # Left-padded row indices: real items right-aligned, -1 before them.
        rows = np.full((batch, longest), -1, dtype=np.int64)  # [B, L]
        for index, prefix in enumerate(plan.prefixes):
            rows[index, longest - len(prefix) :] = prefix
        prefix = np.asarray(self.table[np.maximum(rows, 0)], dtype=np.float32)  # [B, L, D]
        prefix[rows < 0] = 0.0
        state = np.stack(
            [
                plan.work[event.user].grus[plan.gru_round[index]]
                for index, event in enumerate(events)
            ]
        )  # [B, G, H]
        embeddings = self.bundle.session_step(prefix, lengths, state)
        return np.asarray(embeddings, dtype=np.float32)  # [B, D]

    def _warn_non_finite(self, embeddings: np.ndarray, rows: str = "events") -> None:
        """Log one warning for the rows whose user embedding [B, D] has a NaN or infinity.

        `rows` names what the rows are, in the plural. The bundle loader rejects non-finite
        item embeddings, so such an embedding is the cause of every non-finite score. Scoring
        ranks NaN lowest, so these rows still get a list.
        """
        count = int(np.count_nonzero(~np.isfinite(embeddings).all(axis=1)))
        if count:
            non_finite_logger.warning(
                "%d of %d %s in this batch have non-finite scores under bundle %s, because "
                "its session step returned a NaN or infinite user embedding: NaN scores rank "
                "lowest, so their lists are not model rankings; export the bundle again from a "
                "checkpoint with finite weights",
                count,
                len(embeddings),
                rows,
                self.config.model_version,
            )

    def _recommend(
        self, events: Sequence[Event], embeddings: np.ndarray, sessions: list[int]
    ) -> list[Recommendation]:
        k = self.config.top_k
        best: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # event index -> (rows, scores)
        catalog = [index for index, event in enumerate(events) if event.candidates is None]
        if catalog:
            rows, scores = top_k_catalog(embeddings[catalog], self.table, k)  # [B', K] each
            for position, index in enumerate(catalog):
                best[index] = (rows[position], scores[position])
        for index, event in enumerate(events):
            if event.candidates is not None:
                candidates = np.asarray(event.candidates, dtype=np.int64)
                best[index] = top_k_candidates(embeddings[index], self.table, candidates, k)

        outputs = []
        for index, event in enumerate(events):
            rows, scores = best[index]
            outputs.append(
                Recommendation(
                    user=event.user,
                    event_id=event.event_id,
                    ts=event.ts,
                    items=tuple(self.item_ids[rows].tolist()),
                    scores=tuple(scores.tolist()),
                    model=self.config.model_version,
                    session=sessions[index],
                )
            )
        return outputs

    def _live_ranks(
        self,
        events: Sequence[Event],
        embeddings: np.ndarray,
        work: dict[str, _UserWork],
        states: Mapping[str, UserState],
    ) -> list[tuple[int, int] | None]:
        live: list[tuple[int, int] | None] = [None] * len(events)
        previous: dict[str, np.ndarray | None] = {
            user: (states[user].last_embedding if user in states else None) for user in work
        }
        catalog: list[int] = []
        catalog_embeddings: list[np.ndarray] = []
        for index, event in enumerate(events):
            embedding = previous[event.user]
            previous[event.user] = embeddings[index]
            if embedding is None:
                continue
            embedding = np.asarray(embedding, dtype=np.float32)
            if event.impressions is not None:
                pool = np.asarray(event.impressions, dtype=np.int64)
                live[index] = rank_of(event.row, embedding, self.table, pool)
            else:
                catalog.append(index)
                catalog_embeddings.append(embedding)
        if catalog:
            targets = np.array([events[index].row for index in catalog], dtype=np.int64)
            ranks = ranks_over_catalog(targets, np.stack(catalog_embeddings), self.table)
            for index, rank in zip(catalog, ranks, strict=True):
                live[index] = rank
        return live

    def _finish(
        self, events: Sequence[Event], embeddings: np.ndarray, work: dict[str, _UserWork]
    ) -> dict[str, UserState]:
        last_index = {event.user: index for index, event in enumerate(events)}
        states: dict[str, UserState] = {}
        for user, user_work in work.items():
            states[user] = UserState(
                gru_state=user_work.grus[-1],
                session_items=np.array(user_work.session_items, dtype=np.int32),
                session_sum=user_work.session_sum,
                session_length=user_work.session_length,
                session_start=user_work.session_start,
                last_ts=user_work.last_ts,
                session_count=user_work.session_count,
                last_embedding=np.array(embeddings[last_index[user]], dtype=np.float32),
                partition=user_work.partition,
            )
        return states


def _finite_arrays(state: UserState) -> bool:
    """Return whether every value of the state's float arrays is finite.

    One float64 sum per array: a NaN or an infinity makes it non-finite, and float32 values
    cannot overflow a float64 sum of this size.
    """
    total = float(np.sum(state.gru_state, dtype=np.float64))
    total += float(np.sum(state.session_sum, dtype=np.float64))
    if state.last_embedding is not None:
        total += float(np.sum(state.last_embedding, dtype=np.float64))
    return math.isfinite(total)
