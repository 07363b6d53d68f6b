"""Replay of an event-log file through the serving pipeline, without a broker.

Records go through the same validation (`decode_event`) and the same `Pipeline` as in the live
worker, in micro-batches, with user states in memory or in a real `StateStore`. After each batch
the idle sessions are closed by timer as the worker does, against the event-time watermark (the
largest event time seen so far). For the same events and bundle the recommendations equal the
worker's, except the default `event_id`, which names the file in place of the Kafka position.

The report gives Recall@K, MRR and MRP of each event's item under the user's previous
recommendation: over the event's impressions when it has them, else over the whole catalog,
with pessimistic ties. A user's first event has no previous recommendation and is not counted,
and neither is an event whose `type` is one of the configured context types (the history events
of a warm split's test part). With the pipeline's
`session_close_outputs`, each timer close also writes a session-start recommendation after the
batch's event outputs, and the first event of the next session is ranked against it, as
`hiertcn evaluate` ranks it.

Each batch writes its recommendations to the output file before it commits its states and its
position to the backend, and a stored position records the output file's length. A resumed
replay cuts the file back to that length, so an interrupt at any point loses no
recommendation and writes none twice.
"""

from __future__ import annotations

import heapq
import json
import logging
import os
import stat
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Protocol

from statestore import REPLAY_PARTITION, PartitionPosition, ReplayProgress, StateStore, UserState
from stream.errors import ConfigError
from stream.events import DeadLetter, Event, EventConfig, Position, decode_event
from stream.pipeline import BatchResult, Pipeline, Recommendation
from stream.records import Record, encode_fields

logger = logging.getLogger(__name__)

# Reason code of a record that the file reader could not parse (not JSON, a broken row).
INVALID_RECORD = "invalid_record"
# The `type` that `hiertcn data events` gives the history events of a warm split's test part
# (hiertcn.data.event_export writes the same string; stream does not import hiertcn).
CONTEXT_TYPE = "context"
# Seconds between two progress lines on stderr.
_PROGRESS_SECONDS = 5.0


@dataclass(frozen=True)
class ReplayConfig:
    """How to replay: micro-batch size, K for Recall@K, event validation limits, the record
    order ("file" or "time") that a stored position counts in, and the event types that update
    states and get outputs but stay out of the metrics (`context_types`)."""

    batch_size: int = 256
    recall_k: int = 10
    timers: bool = True
    event_config: EventConfig = field(default_factory=EventConfig)
    order: str = "file"
    context_types: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"batch size {self.batch_size} is invalid: use an integer >= 1")
        if self.recall_k < 1:
            raise ConfigError(f"K {self.recall_k} for Recall@K is invalid: use an integer >= 1")


@dataclass
class ReplayReport:
    """Counts and live metrics of one replay."""

    records: int = 0
    accepted: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    closed: Counter[str] = field(default_factory=Counter)
    dropped_impressions: int = 0
    out_of_order: int = 0  # events older than an earlier event of the same user
    # Events older than the watermark minus the session gap when their batch started, so that
    # timers may have closed their users' sessions before them (counted with timers only).
    behind_watermark: int = 0
    session_close_outputs: int = 0  # session-start outputs of timer closes
    context: int = 0  # events of a context type, which the metrics leave out
    counted: int = 0  # events with a previous recommendation
    session_starts: int = 0  # counted events that start a session after the user's first
    # Counted session starts ranked against the output of a timer close, as evaluate ranks
    # them. The others are ranked against the output of the previous session's last event.
    starts_after_close: int = 0
    hits: int = 0  # counted events whose item ranked within K
    reciprocal_rank_sum: float = 0.0
    percentile_rank_sum: float = 0.0  # sum of rank / pool size
    seconds: float = 0.0

    @property
    def recall(self) -> float:
        return self.hits / self.counted if self.counted else float("nan")

    @property
    def mrr(self) -> float:
        return self.reciprocal_rank_sum / self.counted if self.counted else float("nan")

    @property
    def mrp(self) -> float:
        return self.percentile_rank_sum / self.counted if self.counted else float("nan")

    def add_live(self, live: Iterable[tuple[int, int] | None], k: int) -> None:
        """Count the (rank, pool size) of each event that had a previous recommendation."""
        for entry in live:
            if entry is None:
                continue
            rank, pool_size = entry
            self.counted += 1
            self.hits += rank <= k
            self.reciprocal_rank_sum += 1.0 / rank
            self.percentile_rank_sum += rank / pool_size


class StateBackend(Protocol):
    """Storage of user states for replay: a dict in memory or a `StateStore`."""

    def read(self, users: Iterable[str]) -> dict[str, UserState]: ...

    def write(self, states: Mapping[str, UserState], position: PartitionPosition) -> None: ...

    def expired(self, before_ts: float) -> dict[str, UserState]: ...

    def position(self) -> PartitionPosition | None:
        """Return where an earlier replay into this backend stopped, or None."""
        ...


class MemoryStates:
    """User states in a dict, with a heap of open sessions ordered by last event time."""

    def __init__(self) -> None:
        self.states: dict[str, UserState] = {}
        self._timers: list[tuple[float, str]] = []

    def read(self, users: Iterable[str]) -> dict[str, UserState]:
        return {user: self.states[user] for user in users if user in self.states}

    def write(self, states: Mapping[str, UserState], position: PartitionPosition) -> None:
        self.states.update(states)
        for user, state in states.items():
            if state.session_length > 0:
                heapq.heappush(self._timers, (state.last_ts, user))

    def expired(self, before_ts: float) -> dict[str, UserState]:
        found: dict[str, UserState] = {}
        while self._timers and self._timers[0][0] < before_ts:
            last_ts, user = heapq.heappop(self._timers)
            state = self.states[user]
            # A heap entry is stale when the user had a later event or a close since.
            if state.session_length > 0 and state.last_ts == last_ts:
                found[user] = state
        return found

    def position(self) -> PartitionPosition | None:
        return None  # a dict starts empty with every replay


class StoreStates:
    """User states in a `StateStore`, positions under the replayed file's name."""

    def __init__(self, store: StateStore, topic: str, expire_limit: int = 4096) -> None:
        self.store = store
        self.topic = topic
        self.expire_limit = expire_limit

    def read(self, users: Iterable[str]) -> dict[str, UserState]:
        return self.store.read(users)

    def write(self, states: Mapping[str, UserState], position: PartitionPosition) -> None:
        self.store.commit(states, {(self.topic, REPLAY_PARTITION): position})

    def expired(self, before_ts: float) -> dict[str, UserState]:
        users = self.store.expired(REPLAY_PARTITION, before_ts, self.expire_limit)
        return self.store.read(users)

    def position(self) -> PartitionPosition | None:
        return self.store.positions(self.topic).get(REPLAY_PARTITION)


class OutputFile:
    """The JSON Lines file of recommendations, written one batch at a time.

    `size` is the file's length in bytes after the outputs written so far. A new file is
    created at the first batch, so a run that accepts no event leaves the path as it was. An
    existing file or symbolic link at the path is removed first, so the other names of an old
    file (hard links) and the target of a link keep their content. `start` continues an
    existing file from that length, writing through a link, and cuts off what lies beyond it.
    With `durable`, each batch is flushed and fsynced before `write_batch` returns, so that a
    position committed after it never counts outputs that a crash can lose.
    """

    def __init__(self, path: Path, start: int | None = None, durable: bool = False) -> None:
        self.path = path
        self.durable = durable
        self.size = 0
        self._file: BinaryIO | None = None
        if start is not None:
            self._file = self._open("r+b" if path.exists() else "w+b")
            self._file.truncate(start)
            self._file.seek(start)
            self.size = start

    def write_batch(self, outputs: Iterable[Recommendation]) -> None:
        """Append one JSON line per output."""
        if self._file is None:
            self._remove_existing()
            self._file = self._open("xb")
        data = "".join(json.dumps(output.to_dict()) + "\n" for output in outputs)
        encoded = data.encode("utf-8")
        self._file.write(encoded)
        self.size += len(encoded)
        if self.durable:
            self._file.flush()
            os.fsync(self._file.fileno())

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def _remove_existing(self) -> None:
        """Remove an existing file or symbolic link at the path, so that a new file takes its name.

        Writing into the old file would overwrite the file a link points to, or every other
        name of a hard-linked file, which may be a data set or another run's output that the
        user never named.
        """
        try:
            old = self.path.lstat()
        except FileNotFoundError:
            return
        except OSError as error:
            raise self._write_error(error) from error
        try:
            self.path.unlink()
        except OSError as error:
            raise self._write_error(error) from error
        if stat.S_ISLNK(old.st_mode):
            logger.info("replaced the symbolic link --output %s with a new file", self.path)
        elif old.st_nlink > 1:
            logger.info(
                "replaced --output %s with a new file, and the old file keeps its content under "
                "its other names (%d)",
                self.path,
                old.st_nlink - 1,
            )

    def _open(self, mode: str) -> BinaryIO:
        try:
            return self.path.open(mode)
        except OSError as error:
            raise self._write_error(error) from error

    def _write_error(self, error: OSError) -> ConfigError:
        return ConfigError(
            f"cannot write --output {self.path} ({error.strerror or error}): pass another path"
        )


class Replay:
    """Runs records through decoding, the pipeline, timers and the report, batch by batch."""

    def __init__(
        self,
        pipeline: Pipeline,
        backend: StateBackend,
        config: ReplayConfig,
        source: str,
        output: OutputFile | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.backend = backend
        self.config = config
        self.source = source
        self.output = output
        self.report = ReplayReport()
        self.watermark = float("-inf")
        self._row_of = pipeline.bundle.row_of

    def run(self, records: Iterable[Record]) -> ReplayReport:
        """Replay every record and return the report.

        A backend that already contains a replay of this source resumes it: the records it counted
        are skipped, in the same order, and the report covers the rest.
        """
        started = time.perf_counter()
        last_progress = started
        batch: list[Event] = []
        skip = self._resume_point()
        if skip and self.config.timers:
            # A stop between a batch's commit and its timer closes left them undone.
            self._close_expired(skip)
        consumed = 0  # records read in this order, the skipped ones included
        for record in records:
            consumed += 1
            if consumed <= skip:
                continue
            self.report.records += 1
            event = self._decode(record)
            if event is not None:
                batch.append(event)
            if len(batch) >= self.config.batch_size:
                self._run_batch(batch, consumed)
                batch = []
            now = time.perf_counter()
            if now - last_progress >= _PROGRESS_SECONDS:
                last_progress = now
                logger.info(
                    "replayed %d records so far, %d events, %.0f events/s",
                    self.report.records,
                    self.report.accepted,
                    self.report.accepted / (now - started),
                )
        if batch:
            self._run_batch(batch, consumed)
        if consumed < skip:
            logger.warning(
                "%s has %d records, fewer than the %d that the stored replay counted: it is not "
                "the log that was replayed into this state directory; use a new --state-dir",
                self.source,
                consumed,
                skip,
            )
        self.report.seconds = time.perf_counter() - started
        return self.report

    def _resume_point(self) -> int:
        """Return the records to skip, and take the stored watermark, of an earlier replay."""
        stored = self.backend.position()
        if stored is None:
            return 0
        self.watermark = stored.watermark
        logger.info(
            "resuming the replay of %s after its first %d records (stored in the state "
            "directory); use a new --state-dir to replay from the start",
            self.source,
            stored.next_offset,
        )
        return stored.next_offset

    def _decode(self, record: Record) -> Event | None:
        if record.fields is None:
            self._reject(record, INVALID_RECORD, record.error or "unreadable")
            return None
        position = Position(self.source, REPLAY_PARTITION, record.number)
        value = encode_fields(record.fields)
        result = decode_event(None, value, position, self._row_of, self.config.event_config)
        if isinstance(result, DeadLetter):
            self._reject(record, result.reason, result.message)
            return None
        self.report.accepted += 1
        self.report.dropped_impressions += result.dropped_impressions
        return result

    def _reject(self, record: Record, reason: str, message: str) -> None:
        self.report.rejected[reason] += 1
        logger.debug("%s %s rejected (%s): %s", self.source, record.location, reason, message)

    def _run_batch(self, events: list[Event], consumed: int) -> None:
        # (1) Read the states of the batch's users.
        states = self.backend.read({event.user for event in events})
        self.report.out_of_order += count_out_of_order(events, states)
        if self.config.timers:
            timer_cutoff = self.watermark - self.pipeline.config.session_gap
            self.report.behind_watermark += sum(event.ts < timer_cutoff for event in events)

        # (2) Sessions, session step and scores for every event, in input order.
        result: BatchResult = self.pipeline.process(events, states)
        self.report.closed.update(result.closed)
        live = self._without_context(events, result.live)
        self.report.add_live(live, self.config.recall_k)
        starts, after_close = count_session_starts(events, states, result.outputs, live)
        self.report.session_starts += starts
        if self.pipeline.config.session_close_outputs:
            self.report.starts_after_close += after_close
        self.watermark = max(self.watermark, max(event.ts for event in events))

        # (3) Write the recommendations before the position that counts them is committed.
        if self.output is not None:
            self.output.write_batch(result.outputs)

        # (4) Write the states with the count of records consumed, where a resume starts.
        position = self._position(consumed)
        self.backend.write(result.states, position)

        # (5) Close the sessions that the watermark has left idle for longer than the gap, and
        # write their session-close outputs before the commit that covers them.
        if self.config.timers:
            self._close_expired(consumed)

    def _without_context(
        self, events: list[Event], live: list[tuple[int, int] | None]
    ) -> list[tuple[int, int] | None]:
        """Return `live` with None for the events of a context type, counting them."""
        context_types = self.config.context_types
        if not context_types:
            return live
        context = [event.event_type in context_types for event in events]
        self.report.context += sum(context)
        return [None if skip else entry for skip, entry in zip(context, live, strict=True)]

    def _position(self, consumed: int) -> PartitionPosition:
        output = self.output
        progress = ReplayProgress(
            order=self.config.order,
            output=None if output is None else str(output.path.resolve()),
            output_bytes=0 if output is None else output.size,
            session_close_outputs=self.pipeline.config.session_close_outputs,
            batch_size=self.config.batch_size,
        )
        return PartitionPosition(consumed, self.watermark, progress)

    def _close_expired(self, consumed: int) -> None:
        """Close every session idle behind the watermark, writing the outputs of the closes
        before the states and the position of `consumed` records are committed."""
        before_ts = self.watermark - self.pipeline.config.session_gap
        while True:
            expired = self.backend.expired(before_ts)
            if not expired:
                return
            idle = self.pipeline.close_idle(expired)
            if not idle.states:
                return
            self.report.closed["timer"] += len(idle.states)
            if idle.outputs:
                self.report.session_close_outputs += len(idle.outputs)
                if self.output is not None:
                    self.output.write_batch(idle.outputs)
            self.backend.write(idle.states, self._position(consumed))


def count_out_of_order(events: Iterable[Event], states: Mapping[str, UserState]) -> int:
    """Count the events older than an earlier event of the same user.

    `states` contains each user's state before `events`, whose `last_ts` is the newest event time
    of that user so far.
    """
    newest = {user: state.last_ts for user, state in states.items()}
    count = 0
    for event in events:
        previous = newest.get(event.user)
        if previous is not None and event.ts < previous:
            count += 1
        else:
            newest[event.user] = event.ts
    return count


def count_session_starts(
    events: Iterable[Event],
    states: Mapping[str, UserState],
    outputs: Iterable[Recommendation],
    live: Iterable[tuple[int, int] | None],
) -> tuple[int, int]:
    """Return how many counted events start a session, and how many of those follow a timer close.

    `states` contains each user's state before `events`, and `outputs` the event outputs in the
    same order. An event starts a session when its session number differs from the user's open
    one. A stored state without an open session (`session_length` 0) had it closed by a timer.
    With session-close outputs, the event after such a close is ranked against the close's output.
    """
    open_session: dict[str, int | None] = {}
    starts = after_close = 0
    for event, output, entry in zip(events, outputs, live, strict=True):
        state = states.get(event.user)
        first_in_batch = event.user not in open_session
        if first_in_batch:
            has_open = state is not None and state.session_length > 0
            open_session[event.user] = state.session_count if has_open else None
        previous = open_session[event.user]
        open_session[event.user] = output.session
        if entry is None or output.session == previous:
            continue
        starts += 1
        after_close += first_in_batch and state is not None and state.session_length == 0
    return starts, after_close


def check_resume(
    stored: PartitionPosition | None,
    order: str,
    output: Path | None,
    source: Path,
    session_close_outputs: bool = False,
    batch_size: int | None = None,
) -> int | None:
    """Check that this replay continues the stored replay of `source`.

    Returns the byte length at which --output continues, or None for a replay from the start.
    Raises `ConfigError` when the stored replay read the records in another order, wrote
    another --output file, or differs in --publish-on-session-close or --batch-size. It raises
    too when that file is now shorter than what it wrote.
    """
    if stored is None:
        return None
    if stored.replay is None:
        logger.warning(
            "the stored replay of %s was written by an earlier version, which stored neither the "
            "record order nor the length of --output: this run continues in --order %s and "
            "appends to --output, and if the earlier run was interrupted, the recommendations of "
            "its last batch may be missing from --output",
            source,
            order,
        )
        return output.stat().st_size if output is not None and output.exists() else None
    progress = stored.replay
    redo = "or pass a new --state-dir to replay from the start"
    if progress.order != order:
        raise ConfigError(
            f"the state directory contains a replay of {source} in --order {progress.order}, "
            f"stopped after {stored.next_offset} records in that order, so it cannot continue "
            f"in --order {order}: pass --order {progress.order}, {redo}"
        )
    if progress.session_close_outputs != session_close_outputs:
        stored_flag = "with" if progress.session_close_outputs else "without"
        raise ConfigError(
            f"the stored replay of {source} ran {stored_flag} --publish-on-session-close, so "
            f"its --output and live metrics would mix two settings: pass the same setting, "
            f"{redo}"
        )
    if None not in (progress.batch_size, batch_size) and progress.batch_size != batch_size:
        raise ConfigError(
            f"the stored replay of {source} ran with --batch-size {progress.batch_size}, and "
            "timers close idle sessions after each batch, so another size would change its "
            f"session-close outputs: pass --batch-size {progress.batch_size}, {redo}"
        )
    target = None if output is None else str(output.resolve())
    if target != progress.output:
        if progress.output is None:
            raise ConfigError(
                f"the stored replay of {source} wrote no --output, so --output {output} would "
                f"lack the recommendations of its first {stored.next_offset} records: drop "
                f"--output, {redo}"
            )
        raise ConfigError(
            f"the stored replay of {source} wrote its recommendations to --output "
            f"{progress.output}, and a resume continues that file: pass --output "
            f"{progress.output}, {redo}"
        )
    if output is None:
        return None
    size = output.stat().st_size if output.exists() else 0
    if size < progress.output_bytes:
        raise ConfigError(
            f"--output {output} has {size} bytes, fewer than the {progress.output_bytes} bytes "
            f"that the stored replay of {source} wrote to it, so the file was changed or "
            f"replaced: restore it, {redo}"
        )
    return progress.output_bytes


def open_store_states(
    state_dir: Path,
    source: str,
    bundle_version: str,
    state_shape: tuple[int, int] | None = None,
    embedding_dim: int | None = None,
    catalog: str | None = None,
    catalog_items: int | None = None,
) -> StoreStates:
    """Open (or create) a state store for replay under `state_dir`.

    With `state_shape` and `embedding_dim`, a store written for a bundle of other sizes is
    rejected at open, as the worker does, and with `catalog` (the bundle's `catalog`, with its
    item count `catalog_items`) a store whose states hold item rows of another catalog. The
    store holds the writers lock exclusively until it closes, so the open raises
    `StoreInUseError` while a pool, an import or another replay uses `state_dir`, and a pool or
    an import that starts during the replay is rejected in turn.
    """
    from statestore import StoreConfig

    config = StoreConfig(
        path=state_dir,
        bundle_version=bundle_version,
        state_shape=state_shape,
        embedding_dim=embedding_dim,
        catalog=catalog,
        catalog_items=catalog_items,
        # Exclusive: this replay would rewrite the states of the users that a live pool serves.
        writer_lock="exclusive",
    )
    store = StateStore(config)
    topic = f"replay:{source}"
    _warn_about_other_sources(store, state_dir, topic)
    # NOTE: a resume counts records in reading order, so it is right for a log that only grew
    # at its end (later event times, with --order time) and wrong for one edited in between.
    return StoreStates(store, topic=topic)


def _warn_about_other_sources(store: StateStore, state_dir: Path, topic: str) -> None:
    """Log a warning when the store has users and positions of other logs or topics than `topic`.

    A store whose users were all evicted keeps only positions, so no states lie under this replay.
    """
    from statestore.maintenance import all_positions

    others = sorted({name for name, _partition in all_positions(store) if name != topic})
    if others and store.user_count() > 0:
        logger.warning(
            "state directory %s already contains states written from %s: this replay applies "
            "its events on top of them; use a new --state-dir to start from empty states",
            state_dir,
            ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else ""),
        )
