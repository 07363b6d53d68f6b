"""Rate limits for log lines that can repeat many times a second.

The package has two of them:

- `RateLimitFilter`, a logging filter, passes a few lines per interval and drops the rest
  without counting them. librdkafka logs a failed connection attempt many times a second, and
  its default sink is the process's stderr. A client created with
  `"logger": librdkafka_logger(name)` sends those lines to a Python logger with this filter,
  which passes enough of them to tell the cause. The pipeline puts the same filter on its
  warnings about non-finite scores.
- `RateLimitedLog` logs the first warnings of each kind (a dead letter's reason, an error code)
  one by one, counts the rest, and logs their counts in one summary line per interval. The
  worker uses it for dead letters, Kafka errors, and events without a key or behind the
  watermark.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Callable

logger = logging.getLogger(__name__)

# Lines passed per interval, and the interval in seconds.
LINES_PER_INTERVAL = 3
INTERVAL_SECONDS = 10.0
# The default of `RateLimitedLog`: lines logged one by one per kind (per rejection reason for
# dead letters), and the seconds between the summary lines that count the rest.
DEAD_LETTERS_LOGGED_PER_REASON = 5
DEAD_LETTER_SUMMARY_SECONDS = 10.0


class RateLimitFilter(logging.Filter):
    """Pass at most `limit` records per `interval` seconds and drop the rest.

    The filter keeps no count of the records it drops, so nothing reports how many were lost.
    """

    def __init__(self, limit: int, interval: float) -> None:
        super().__init__()
        self.limit = limit
        self.interval = interval
        self.window_start = -math.inf
        self.passed = 0

    def filter(self, record: logging.LogRecord) -> bool:
        now = time.monotonic()
        if now - self.window_start >= self.interval:
            self.window_start = now
            self.passed = 0
        self.passed += 1
        return self.passed <= self.limit


def librdkafka_logger(name: str) -> logging.Logger:
    """Return the logger `name`, with one rate limit however often it is requested."""
    log = logging.getLogger(name)
    if not any(isinstance(item, RateLimitFilter) for item in log.filters):
        log.addFilter(RateLimitFilter(LINES_PER_INTERVAL, INTERVAL_SECONDS))
    return log


class RateLimitedLog:
    """Log the first warnings of each kind one by one, then count the rest in summary lines.

    `noun` names what is counted, in the plural ("dead letters"). `singular` is the same in
    the singular, for a count of 1 (default: `noun`). `kind_name` names the kinds in log lines
    ("reason"). A summary line with the counts by kind follows at most once per
    `interval` seconds, when `flush` is called. The lines go to `logger`, by default the
    logger of this module, so that a caller can log them under its own module's name.
    """

    def __init__(
        self,
        noun: str,
        kind_name: str,
        per_kind: int = DEAD_LETTERS_LOGGED_PER_REASON,
        interval: float = DEAD_LETTER_SUMMARY_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        *,
        logger: logging.Logger = logger,
        singular: str | None = None,
    ) -> None:
        self.logger = logger
        self.noun = noun
        self.singular = noun if singular is None else singular
        self.kind_name = kind_name
        self.per_kind = per_kind
        self.interval = interval
        self.clock = clock
        self.logged: Counter[str] = Counter()
        self.unlogged: Counter[str] = Counter()  # since the last summary line
        self.last_summary = clock()

    def add(self, kind: str, message: str, *args: object) -> None:
        """Log `message % args` while `kind` has had fewer than `per_kind` lines, else count it."""
        if self.logged[kind] >= self.per_kind:
            self.unlogged[kind] += 1
            return
        self.logged[kind] += 1
        self.logger.warning(message, *args)
        if self.logged[kind] == self.per_kind:
            self.logger.warning(
                "logged %d %s with %s %s: further ones are counted in one line every %.0f s",
                self.per_kind,
                self.noun_for(self.per_kind),
                self.kind_name,
                kind,
                self.interval,
            )

    def noun_for(self, count: int) -> str:
        """Return the noun in the number that `count` needs: `late event` for 1, else plural."""
        return self.singular if count == 1 else self.noun

    def flush(self) -> None:
        """Log the counts of the unlogged warnings when the interval has passed."""
        now = self.clock()
        if not self.unlogged or now - self.last_summary < self.interval:
            return
        by_kind = ", ".join(f"{kind} {count}" for kind, count in sorted(self.unlogged.items()))
        unlogged = sum(self.unlogged.values())
        self.logger.warning(
            "%d more %s in the last %.0f s, by %s: %s",
            unlogged,
            self.noun_for(unlogged),
            now - self.last_summary,
            self.kind_name,
            by_kind,
        )
        self.unlogged.clear()
        self.last_summary = now
