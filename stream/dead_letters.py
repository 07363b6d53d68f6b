"""Dead letters: the records that carry a rejected message to the dead-letter topic.

Each dead letter keeps the raw key and value of the rejected message and its own headers, and
adds headers that name the error (`hiertcn.error`), its reason (`hiertcn.reason`), the source
position (`hiertcn.source`) and the worker. A message too large to produce again is truncated,
and an oversized set of headers is replaced, each with a header that gives the original size.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

from stream.delivery import OutputRecord
from stream.events import REASONS, DeadLetter
from stream.logs import DEAD_LETTER_SUMMARY_SECONDS, DEAD_LETTERS_LOGGED_PER_REASON, RateLimitedLog

if TYPE_CHECKING:
    from prometheus_client import Counter as PrometheusCounter

logger = logging.getLogger(__name__)

# librdkafka's default producer message.max.bytes; -X message.max.bytes=N overrides it.
DEFAULT_MESSAGE_MAX_BYTES = 1_000_000
# Bytes of each produced message kept free for the headers and the protocol's record overhead.
MESSAGE_OVERHEAD_BYTES = 16_384
# Bytes of a rejected message's own headers that its dead letter keeps. A larger set is left out,
# and the header `hiertcn.headers_dropped` gives its size.
MAX_ORIGINAL_HEADER_BYTES = 8_192


class DeadLetterLog(RateLimitedLog):
    """Log the first dead letters of each reason, then one summary line per interval."""

    def __init__(
        self,
        per_reason: int = DEAD_LETTERS_LOGGED_PER_REASON,
        interval: float = DEAD_LETTER_SUMMARY_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(
            "dead letters",
            "reason",
            per_reason,
            interval,
            clock,
            logger=logger,
            singular="dead letter",
        )

    def add_letter(self, letter: DeadLetter) -> None:
        """Log `letter` while its reason has had fewer than `per_kind` lines, else count it."""
        self.add(
            letter.reason,
            "dead letter %s: %s (%s)",
            letter.position,
            letter.reason,
            letter.message,
        )


def original_headers(
    headers: Sequence[tuple[str, bytes | None]],
) -> list[tuple[str, bytes | None]]:
    """Return the headers of a rejected message for its dead letter, in their order.

    A set larger than MAX_ORIGINAL_HEADER_BYTES is replaced by the one header
    `hiertcn.headers_dropped` with its size, so that the dead letter can still be produced.
    """
    size = sum(len(name.encode()) + len(value or b"") for name, value in headers)
    if size > MAX_ORIGINAL_HEADER_BYTES:
        return [("hiertcn.headers_dropped", str(size).encode())]
    return list(headers)


class DeadLetterRecords:
    """The builder of the dead-letter records of a worker's rejected messages.

    It counts every dead letter in `counter`, `hiertcn_dead_letters_total`, whose series of
    every reason in `stream.events.REASONS` start at 0 here, when the worker starts. So rate()
    and increase() also count the first dead letter of a reason that comes after the first
    scrape. `worker_header` is added to every record.
    """

    def __init__(
        self,
        topic: str,
        kafka_settings: Mapping[str, str],
        counter: PrometheusCounter,
        worker_header: tuple[str, bytes],
        log: DeadLetterLog | None = None,
    ) -> None:
        self.topic = topic
        # A dead letter carries the raw input, which can be larger than the producer accepts.
        max_bytes = int(kafka_settings.get("message.max.bytes", DEFAULT_MESSAGE_MAX_BYTES))
        self.max_bytes = max(max_bytes - MESSAGE_OVERHEAD_BYTES, 1024)
        self.counter = counter
        self.worker_header = worker_header
        self.log = log or DeadLetterLog()
        for reason in REASONS:
            counter.labels(reason)

    def records(self, dead_letters: Iterable[DeadLetter]) -> list[OutputRecord]:
        """Build the records of `dead_letters`, in their order, and count and log each one."""
        records = []
        for letter in dead_letters:
            self.log.add_letter(letter)
            self.counter.labels(letter.reason).inc()
            headers = [
                *original_headers(letter.headers),
                ("hiertcn.error", letter.message.encode("utf-8", "replace")),
                ("hiertcn.reason", letter.reason.encode()),
                ("hiertcn.source", letter.position.encode()),
                self.worker_header,
            ]
            key, value = letter.key, letter.value
            size = len(key or b"") + len(value or b"")
            if size > self.max_bytes:
                # Cut the raw message so that it can be produced; the header keeps its size.
                headers.append(("hiertcn.truncated", str(size).encode()))
                key = key[: self.max_bytes // 2] if key else key
                value = value[: self.max_bytes - len(key or b"")] if value else value
            records.append(OutputRecord(self.topic, key, value, headers))
        self.log.flush()
        return records
