"""One Kafka consumer process of the pool: consume, update user states, publish recommendations.

Each batch runs these steps, and their order is the correctness argument:

1. consume up to `max_batch_size` messages, or what arrives within `max_batch_delay_ms` of the
   first one. Decode and validate each, and route bad ones to the dead-letter topic
2. read the states of the batch's users: pending ones from the committer, the rest in one LMDB
   read transaction
3. close sessions on a gap and score every event in one batched model call
   (`Pipeline.process`): a user's event that comes more than the session gap after the user's
   last one first closes the old session
4. close idle sessions by timers (`stream.timers`): a session closes once its partition's
   event-time watermark has passed `last_ts + session_gap`
5. produce the outputs and dead letters. With `publish_on_session_close`, every timer close
   also gives a session-start output, after the batch's event outputs. With a changelog topic,
   the batch's new states and partition positions follow them (`stream.changelog`)
6. hand the new states and each partition's next offset and watermark to the committer thread
   (`stream.committer`), which waits until the broker has acknowledged the batch's messages,
   writes states and offsets in one LMDB transaction, and reports the offsets, which this
   thread then commits to Kafka so that lag shows in the usual tools

Outputs are delivered before the LMDB commit that covers them, so a process killed in between
reprocesses those batches from the stored offset after a restart: outputs may repeat (at most
the pending batches and the one in progress), but none is lost. Every assignment seeks to the
offset stored in LMDB with the states it produced, so the Kafka commit makes lag visible. With a
changelog topic it also shows an assignment that another host has processed a partition since,
which the worker then restores from the changelog first (`stream.changelog`).

Timer passes that run while no events arrive (`Worker._idle`), and with
`idle_partition_seconds` those over partitions that receive no events while others do, hand
their closed states and session-close outputs to the same producer and committer, so those
outputs are delivered before the states that produced them are committed, too.

Before a batch or a timer pass runs the model, the worker compares the stat stamps of its
bundle's files with those taken at load, at most once a second (`BundleWatch`), and stops with
exit code 2 when a file has changed, because its ONNX sessions and its memory-mapped item table
could then come from different bundles.

When the pool process that started the worker exits (killed by SIGKILL, say), the kernel sends
the worker `POOL_EXIT_SIGNAL`, and each main-loop turn also compares `os.getppid()` with the
pool's pid. The worker then stops as on SIGTERM, because nothing would serve its metrics or stop
it any more, and logs that cause once.

Back-pressure: at most `max_pending_batches` batches wait for their commit, so the producer
queue contains a bounded number of batches. A partition whose timers find more idle sessions than
one pass closes is paused until they are closed, and resumed then.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

import msgpack
from confluent_kafka import Consumer, KafkaException, Message, Producer, TopicPartition

from statestore import PartitionPosition, UserState
from stream.bundle_watch import BundleWatch, load_watched_bundle
from stream.changelog import Changelog
from stream.committer import Committer, CommitterConfig
from stream.config import WorkerConfig, check_bundle_settings
from stream.consume import ConsumeStep
from stream.dead_letters import DeadLetterRecords
from stream.delivery import Deliverer, DeliveryConfig, OutputRecord
from stream.events import Event, EventConfig
from stream.health import WorkerHeartbeat
from stream.interval import Interval
from stream.kafka_settings import (
    KafkaErrorLog,
    close_consumer,
    consumer_settings,
    open_clients,
    partition_count_seconds,
)
from stream.metric_updates import (
    MetricUpdates,
    PartitionCountReader,
    TimedBundle,
)
from stream.metrics import WorkerMetrics
from stream.pipeline import BatchResult, IdleResult, Pipeline, Recommendation
from stream.pool import POOL_EXIT_SIGNAL, PendingStop
from stream.rebalance import RebalanceCallbacks
from stream.timers import QUIET_PASS_SECONDS, SessionTimers

if TYPE_CHECKING:
    from export.bundle import ModelBundle
    from statestore import StateStore

logger = logging.getLogger(__name__)

WORKER_HEADER = "hiertcn.worker"
# The input position `topic[partition]@offset` of the event that an output was made for.
SOURCE_HEADER = "hiertcn.source"

# Seconds that a worker whose commit thread failed waits for its consumer to close.
FAILED_CLOSE_SECONDS = 5.0
# Seconds without any assigned partition after which the worker logs that it waits.
UNASSIGNED_NOTICE_SECONDS = 10.0
# Seconds between checks that the state directory's data.mdb is still the file the store opened;
# one stat call each.
STATE_FILES_CHECK_SECONDS = 1.0


def event_config(config: WorkerConfig) -> EventConfig:
    """Return the event validation settings of `config`."""
    return EventConfig(ts_unit=config.ts_unit, max_future_seconds=config.max_future_seconds)


class Worker(ConsumeStep, RebalanceCallbacks, SessionTimers, MetricUpdates):
    """The consume-process-produce loop of one pool process.

    The collaborators are passed in so that tests can build them; `run_worker` builds the real
    ones inside the pool process. The base classes hold step 1 (`stream.consume`), the rebalance
    callbacks (`stream.rebalance`), the timer closes of step 4 (`stream.timers`) and the metric
    updates (`stream.metric_updates`).
    """

    def __init__(
        self,
        config: WorkerConfig,
        pipeline: Pipeline,
        store: StateStore,
        metrics: WorkerMetrics,
        consumer: Consumer,
        producer: Producer,
        row_of: dict[str, int],
        *,
        label: str | None = None,
        heartbeat: WorkerHeartbeat | None = None,
        index: int = 0,
        bundle_watch: BundleWatch | None = None,
        pool_pid: int | None = None,
    ) -> None:
        # The pool's index of this process, which a static group.instance.id gets appended.
        self.index = index
        # The name of this process in log lines, as the pool writes it: "worker 0 (pid 123)".
        self.label = label or f"worker (pid {os.getpid()})"
        self.config = config
        self.pipeline = pipeline
        self.store = store
        self.metrics = metrics
        self.consumer = consumer
        self.producer = producer
        self.row_of = row_of
        # The pool's /healthz and /readyz read this worker's main-loop turns and group join.
        self.heartbeat = heartbeat if heartbeat is not None else WorkerHeartbeat()
        self.event_config = event_config(config)
        self.session_gap = pipeline.config.session_gap
        self.top_k = pipeline.config.top_k
        self.pid = str(os.getpid()).encode()
        self.dead_letters = DeadLetterRecords(
            config.dead_letter_topic,
            config.kafka_settings,
            metrics.dead_letters,
            (WORKER_HEADER, self.pid),
        )
        self._create_consume_logs()
        self._create_metric_updates()
        # The error callback of the Kafka clients, whose summary lines `_idle` flushes.
        self.client_errors: KafkaErrorLog | None = None
        # Stops the worker when a file of its bundle changes. None in tests without a bundle.
        self.bundle_watch = bundle_watch
        # The pool process that started this worker, whose exit stops it. None without a pool.
        self.pool_pid = pool_pid
        # Set by `POOL_EXIT_SIGNAL`, which the kernel sends when the pool's thread exits.
        self._pool_exit_signalled = False
        self._pool_exit_logged = False
        # The thread of the partition count gauge, which `run` starts.
        self.partition_counter: PartitionCountReader | None = None
        self.state_dir = Path(config.state_dir).resolve()
        # A deleted or replaced data.mdb stops the worker within this many seconds.
        self._state_files_check = Interval(STATE_FILES_CHECK_SECONDS)
        # Set by `request_stop`; the main loop and the changelog restores end when it is set.
        self._stopping = False
        # Partitions of the group's assignment that the worker never assigned, because a stop
        # request came first (`stream.rebalance`).
        self._never_assigned: set[int] = set()
        # Messages consumed for the batch that is being collected; on_revoke finishes them.
        self._pending: list[Message] = []
        # When the worker last had no partition, and whether it has logged that since.
        self._unassigned_since = time.monotonic()
        self._unassigned_noticed = False
        # Next offset and watermark of every assigned partition.
        self._positions: dict[int, PartitionPosition] = {}
        # Partitions whose timers need a pass while no events arrive, and those paused because
        # their timers have a backlog of idle sessions.
        self._timers_due: set[int] = set()
        self._paused: set[int] = set()
        # With --idle-partition-seconds: when each partition last received events, and the
        # partitions whose timers follow the clock (`stream.timers`).
        self._last_events: dict[int, tuple[float, float]] = {}
        self._on_clock: set[int] = set()
        self._clock_logged: dict[int, float] = {}
        self._quiet_pass = Interval(QUIET_PASS_SECONDS)
        # The topic that receives every state and position this worker writes, if any.
        self.changelog = Changelog(config) if config.changelog_topic else None
        self.deliverer, self.committer = start_committer(config, store, producer, metrics)

    # -- lifecycle ---------------------------------------------------------------------------

    def request_stop(self, signum: int | None = None, frame: FrameType | None = None) -> None:
        """Finish the batch in flight, then stop (the SIGTERM and SIGINT handler).

        A changelog restore in progress ends at its next consume call, and the restores still
        due do not start. Requests after the first change nothing: one Ctrl-C gives a worker
        the terminal's SIGINT and the SIGTERM that the pool forwards.
        """
        if self._stopping:
            return
        # Set first, because a second signal can run this handler again while it logs.
        self._stopping = True
        restores = "" if self.changelog is None else " or ending the changelog restores"
        if self.pool_exited():
            self._log_pool_exit(f"finishing the batch in flight{restores}, then stopping")
            return
        cause = f"received {signal.Signals(signum).name}" if signum else "stop requested"
        logger.info(
            "%s %s: finishing the batch in flight%s, then stopping", self.label, cause, restores
        )

    def stop_on_pool_exit(self, signum: int | None = None, frame: FrameType | None = None) -> None:
        """Stop because the pool process has exited (the handler of `POOL_EXIT_SIGNAL`).

        A worker that is stopping already logs the pool's exit too, once.
        """
        self._pool_exit_signalled = True
        if not self._stopping:
            self.request_stop()
        elif not self._pool_exit_logged:
            self._log_pool_exit("stopping")

    def pool_exited(self) -> bool:
        """Return whether the pool process that started this worker has exited.

        Either the kernel has sent `POOL_EXIT_SIGNAL`, or it has made another process the
        worker's parent (pid 1, or a subreaper), which one getppid call per main-loop turn
        finds where prctl is missing.
        """
        if self._pool_exit_signalled:
            return True
        return self.pool_pid is not None and os.getppid() != self.pool_pid

    def _log_pool_exit(self, action: str) -> None:
        self._pool_exit_logged = True
        logger.error(
            "%s: its pool process (pid %d) has exited, so nothing serves its metrics or stops "
            "it any more: %s",
            self.label,
            self.pool_pid,
            action,
        )

    def run(self) -> None:
        """Consume and process batches until `request_stop`; then commit and leave the group.

        A worker asked to stop before this call closes its clients without joining the group.
        """
        if self._stopping:
            # A stop signal came during the start (`PendingStop`). A join now would only make
            # the group rebalance twice.
            self._shutdown(joined=False)
            return
        topic = self.config.input_topic
        self.consumer.subscribe(
            [topic], on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
        )
        logger.info(
            "%s started on %s, group %s, state dir %s",
            self.label,
            topic,
            self.config.group_id,
            self.state_dir,
        )
        self.metrics.workers_running.set(1)
        self._start_partition_counter()
        try:
            while not self._stopping:
                if self.pool_exited():
                    self.request_stop()
                    break
                self.heartbeat.beat()
                self.committer.check()
                if self._state_files_check.due():
                    self.store.check_files()
                messages = self._collect()
                # Before the batch or the timers run the model, so that no output computed
                # after a change of the bundle was noticed is published.
                if self.bundle_watch is not None:
                    self.bundle_watch.check()
                if messages:
                    self._process(messages)
                else:
                    self._idle()
                if self.config.idle_partition_seconds is not None and self._quiet_pass.due():
                    for idle in self._close_quiet_partitions(time.monotonic()):
                        self._publish_timer_closes(idle)
                self._refresh_gauges()
                self._commit_offsets(wait=False)
        finally:
            self._shutdown()

    def _start_partition_counter(self) -> None:
        """Start the thread of the partition count gauge.

        Its metadata requests can wait for a slow broker, and the main loop must not.
        """
        seconds = partition_count_seconds(consumer_settings(self.config, self.index))
        self.partition_counter = PartitionCountReader(
            self.consumer, self.config.input_topic, self.metrics.input_partitions, seconds
        )
        self.partition_counter.start()

    def _shutdown(self, joined: bool = True) -> None:
        if not self._pool_exit_logged and self.pool_exited():
            # The pool exited after a SIGTERM had started the stop.
            self._log_pool_exit("stopping")
        # close() revokes the assignment, and on_revoke finishes what was collected and commits.
        instance = self.consumer_instance_id()
        if not joined:
            logger.info("%s stopping before it joined the group", self.label)
        elif instance:
            logger.info(
                "%s stopping: keeping the static membership of %s (the broker removes it after "
                "session.timeout.ms)",
                self.label,
                instance,
            )
        else:
            logger.info("%s stopping: leaving the group", self.label)
        self.heartbeat.set_ready(False)
        self.metrics.workers_running.set(0)
        if self.partition_counter is not None:
            # Its thread must not use the consumer once the consumer closes.
            self.partition_counter.stop()
        # A failed commit thread leaves nothing to commit. It fails mostly on an unreachable
        # broker, and then the consumer's close can wait until the broker returns.
        failed = self.committer.failed
        try:
            if failed:
                self._close_consumer_within(FAILED_CLOSE_SECONDS)
            else:
                close_consumer(self.consumer, static_member=bool(instance))
        finally:
            try:
                # Commits what is pending; a failure of the thread is raised here, if the run
                # loop has not raised it already.
                self.committer.close()
            finally:
                self._flush_producer(0.0 if failed else self.config.delivery_timeout)

    def _close_consumer_within(self, seconds: float) -> None:
        """Close the consumer in a thread and stop waiting for it after `seconds`.

        librdkafka's close has no timeout. It waits for the group coordinator, for instance
        for offset commits in flight, which while the broker is down can last until the broker
        returns.
        """
        closer = threading.Thread(
            target=self.consumer.close, name="hiertcn-consumer-close", daemon=True
        )
        closer.start()
        closer.join(seconds)
        if closer.is_alive():
            logger.warning(
                "%s: the Kafka consumer did not close within %.0f s, so the worker exits without "
                "leaving the group; the group moves its partitions after session.timeout.ms",
                self.label,
                seconds,
            )

    def consumer_instance_id(self) -> str | None:
        """Return the group.instance.id this worker joins with, or None without static membership.

        A static member does not leave the group when its consumer closes.
        """
        return consumer_settings(self.config, self.index).get("group.instance.id") or None

    def _flush_producer(self, timeout: float) -> None:
        # A batch whose outputs are undelivered here was not committed, so a restart
        # reprocesses it and publishes them again.
        remaining = self.producer.flush(timeout)
        if remaining:
            logger.error("%s: %d messages still undelivered at shutdown", self.label, remaining)
        logger.info("%s stopped", self.label)

    # -- one batch: steps 1 to 6 -------------------------------------------------------------

    def _process(self, messages: Sequence[Message]) -> None:
        """Run steps 1 to 6 of the module docstring over one batch of consumed messages."""
        started = time.perf_counter()

        # (1) Decode and validate; bad messages become dead letters.
        decoded = self._decode(messages)
        events = decoded.events

        # (2) Read the states of the batch's users in one read transaction.
        read_started = time.perf_counter()
        states = self.committer.read(sorted({event.user for event in events}))
        self.metrics.state_read_seconds.observe(time.perf_counter() - read_started)

        # (3) Close sessions on a gap, score every event, update the states.
        result = self.pipeline.process(events, states)
        changed = dict(result.states)

        # (4) Timers: close idle sessions behind each partition's new watermark.
        idle = self._close_idle(decoded.positions, changed)
        changed.update(idle.states)

        # (5) Produce the event outputs, the session-close outputs and the dead letters. A
        # user's session-close output follows the outputs of that user's events in this batch.
        # The changelog records come last. The committer's delivery wait produces them once the
        # others are delivered, and waits for them before the LMDB commit.
        records = [
            *self._output_records(events, result),
            *self._session_close_records(idle.outputs),
            *self.dead_letters.records(decoded.dead_letters),
            *self._changelog_records(changed, decoded.positions),
        ]
        self.deliverer.produce(records)

        # (6) Hand states, offsets and records to the committer, which commits them once the
        # broker has the records. The next batch reads these states from the committer.
        self.committer.submit(changed, decoded.positions, records)
        for partition, position in decoded.positions.items():
            if partition in self._positions:
                self._positions[partition] = position
        if self.config.idle_partition_seconds is not None:
            self._note_events({event.partition for event in events}, decoded.positions)

        self._observe(messages, result, idle, time.perf_counter() - started)

    def _idle(self) -> None:
        """Run the timer passes that are due, then refresh the lag gauges."""
        for partition in sorted(self._timers_due & set(self._positions)):
            idle = self._close_idle({partition: self._positions[partition]}, {})
            self._publish_timer_closes(idle)
        self.dead_letters.log.flush()
        self.keyless_log.flush()
        self.late_log.flush()
        if self.client_errors is not None:
            self.client_errors.flush()
        self._update_lag(self._positions)
        self._notice_unassigned()

    def _publish_timer_closes(self, idle: IdleResult) -> None:
        """Produce the outputs and changelog records of a timer pass run while no events
        arrive, and hand its closed states to the committer."""
        self.metrics.states_reset.inc(idle.reset)
        if not idle.states:
            return
        # Delivered before the commit of the closed states, as in a batch.
        records = [
            *self._session_close_records(idle.outputs),
            *self._changelog_records(idle.states, {}),
        ]
        self.deliverer.produce(records)
        self.committer.submit(idle.states, {}, records)
        self.metrics.sessions_closed.labels("timer").inc(len(idle.states) - idle.reset)
        self._count_session_close_outputs(len(idle.outputs))

    def _notice_unassigned(self) -> None:
        """Say once per wait when the worker has had no partition for a while."""
        if self._positions:
            self._unassigned_since = time.monotonic()
            self._unassigned_noticed = False
            return
        waited = time.monotonic() - self._unassigned_since
        if self._unassigned_noticed or waited < UNASSIGNED_NOTICE_SECONDS:
            return
        self._unassigned_noticed = True
        logger.info(
            "%s has had no partition of %s for %.0f s: the group is still rebalancing (after a "
            "member was killed, the broker waits for its session timeout, -X "
            "session.timeout.ms), or the pool has more workers than partitions",
            self.label,
            self.config.input_topic,
            waited,
        )

    # -- step 5: the records to produce ------------------------------------------------------

    def _output_records(self, events: Sequence[Event], result: BatchResult) -> list[OutputRecord]:
        return [
            self._recommendation_record(output, event.append_ts, str(event.position))
            for event, output in zip(events, result.outputs, strict=True)
        ]

    def _session_close_records(self, outputs: Sequence[Recommendation]) -> list[OutputRecord]:
        # No input message has a Kafka time for these, so the end-to-end latency skips them.
        return [self._recommendation_record(output, None, None) for output in outputs]

    def _recommendation_record(
        self, output: Recommendation, append_ts: float | None, source: str | None
    ) -> OutputRecord:
        # The input position lets a consumer drop the outputs that a restart repeats, also
        # when producers give events ids that are not unique.
        headers: list[tuple[str, bytes | None]] = [(WORKER_HEADER, self.pid)]
        if source is not None:
            headers.append((SOURCE_HEADER, source.encode()))
        return OutputRecord(
            topic=self.config.output_topic,
            key=output.user.encode("utf-8"),
            value=msgpack.packb(output.to_dict(), use_bin_type=True),
            headers=headers,
            append_ts=append_ts,
        )

    def _changelog_records(
        self, states: Mapping[str, UserState], positions: Mapping[int, PartitionPosition]
    ) -> list[OutputRecord]:
        return [] if self.changelog is None else self.changelog.records(states, positions)

    # -- step 6: Kafka offsets ---------------------------------------------------------------

    def _commit_offsets(self, wait: bool) -> None:
        """Commit to Kafka the offsets that the committer has stored in LMDB since the last call.

        Only a revocation waits for the commit. Otherwise it does not, because LMDB stores the
        position that counts and the Kafka offsets only show lag.
        """
        topic = self.config.input_topic
        committed = self.committer.take_committed()
        offsets = [
            TopicPartition(topic, partition, position.next_offset)
            for partition, position in sorted(committed.items())
            if partition in self._positions  # a lost or revoked partition has a new owner
        ]
        if not offsets:
            return
        try:
            self.consumer.commit(offsets=offsets, asynchronous=not wait)
        except KafkaException as error:
            logger.warning("Kafka offset commit failed (LMDB has the position): %s", error)


def install_signal_handlers(worker: Worker, pending_stop: PendingStop | None = None) -> None:
    """Make SIGTERM and SIGINT finish the batch in flight and stop the worker, and
    `POOL_EXIT_SIGNAL` stop it as after its pool's exit.

    A stop signal that `pending_stop` kept during the worker's start stops it now.
    """
    signal.signal(signal.SIGTERM, worker.request_stop)
    signal.signal(signal.SIGINT, worker.request_stop)
    signal.signal(POOL_EXIT_SIGNAL, worker.stop_on_pool_exit)
    if pending_stop is not None and pending_stop.signum is not None:
        worker.request_stop(pending_stop.signum)


def start_committer(
    config: WorkerConfig, store: StateStore, producer: Producer, metrics: WorkerMetrics
) -> tuple[Deliverer, Committer]:
    """Create the deliverer of a worker's records and start the thread that commits them."""
    deliverer = Deliverer(
        producer,
        DeliveryConfig(config.brokers, config.delivery_timeout, config.delivery_attempts),
        on_latency=metrics.end_to_end_latency.observe,
        on_retries=metrics.delivery_retries.inc,
    )
    committer = Committer(
        store,
        deliverer,
        CommitterConfig(config.input_topic, config.max_pending_batches),
        observe_commit=metrics.state_write_seconds.observe,
    )
    return deliverer, committer


def open_state_store(config: WorkerConfig, bundle: ModelBundle) -> StateStore:
    """Open the state store of `config`, creating it when missing, checked against `bundle`.

    The open raises when the recorded state shapes or bundle version do not fit the bundle.
    """
    from statestore import StateStore, StoreConfig

    return StateStore(
        StoreConfig(
            path=config.state_dir,
            map_size=config.state_map_size,
            sync=config.state_sync,
            bundle_version=bundle.version,
            state_shape=bundle.state_shape,
            embedding_dim=bundle.embedding_dim,
            catalog=bundle.catalog,
            catalog_items=bundle.num_items,
        )
    )


def run_worker(
    config: WorkerConfig,
    index: int,
    threads: int | None = None,
    heartbeat: WorkerHeartbeat | None = None,
    pool_pid: int | None = None,
    pending_stop: PendingStop | None = None,
) -> int:
    """Run one pool process until SIGTERM, SIGINT or the exit of the pool process `pool_pid`;
    return its exit code. A stop signal that `pending_stop` kept during the start stops the
    worker before its first batch.

    The bundle, the LMDB environment and the Kafka clients are opened here, after the process
    has started, because none of them may be shared across processes.
    """
    from stream.metrics import create_metrics
    from stream.pipeline import PipelineConfig
    from stream.pool import stop_with_pool

    logger.info("worker %d (pid %d) starting", index, os.getpid())
    bundle, watch = load_watched_bundle(config, threads)
    # `run` checked the bundle it loaded before it started the workers, but each worker loads
    # the directory again, and a symlink swapped in between gives it another bundle.
    check_bundle_settings(config, bundle)
    # The pool serves the aggregate of every process, so these metrics join no registry here.
    metrics = create_metrics(None)
    metrics.bundle_info.labels(bundle.version).set(1)
    pipeline = Pipeline(
        TimedBundle(bundle, metrics),
        PipelineConfig(
            session_gap=config.session_gap,
            top_k=config.k,
            session_close_outputs=config.publish_on_session_close,
        ),
    )
    store = open_state_store(config, bundle)
    client_errors = KafkaErrorLog(metrics.kafka_errors)
    consumer, producer = open_clients(config, index, client_errors)
    label = f"worker {index} (pid {os.getpid()})"
    worker = Worker(
        config,
        pipeline,
        store,
        metrics,
        consumer,
        producer,
        bundle.row_of,
        label=label,
        heartbeat=heartbeat,
        index=index,
        bundle_watch=watch,
        pool_pid=pool_pid,
    )
    worker.client_errors = client_errors
    install_signal_handlers(worker, pending_stop)
    if pool_pid is not None:
        stop_with_pool(pool_pid)
    try:
        worker.run()
    finally:
        store.close()
    return 0
