"""A rate limit for log lines that can repeat many times a second.

librdkafka logs a failed connection attempt many times a second, and its default sink is the
process's stderr. A client created with `"logger": librdkafka_logger(name)` sends those lines
to a Python logger that passes a few per interval, which is enough to tell the cause. The
pipeline puts the same filter on its warnings about non-finite scores.

NOTE: `RateLimitFilter` drops the lines over its limit without counting them. The worker's
`RateLimitedLog` (stream/worker.py), which counts them and logs a summary, belongs here too.
"""

from __future__ import annotations

import logging
import math
import time

# Lines passed per interval, and the interval in seconds.
LINES_PER_INTERVAL = 3
INTERVAL_SECONDS = 10.0


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
