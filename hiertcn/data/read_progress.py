"""Progress lines of a long log read.

By an estimate from a 5M-row read, a read of 100M rows takes minutes, so the delimited and JSON
Lines readers log the rows read so far at most once every `PROGRESS_INTERVAL_S` seconds. A read
that ends sooner logs none.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

logger = logging.getLogger(__name__)

# Seconds between two progress lines, and before the first.
PROGRESS_INTERVAL_S = 10.0


class ReadProgress:
    """Logs the rows read from one file, at most once per `PROGRESS_INTERVAL_S` seconds."""

    def __init__(self, path: Path, noun: str = "row"):
        self.path = path
        self.noun = noun
        self.start = time.monotonic()
        self.next_report = self.start + PROGRESS_INTERVAL_S

    def update(self, rows: int) -> None:
        """Log a progress line when the interval has passed, with `rows` read so far."""
        now = time.monotonic()
        if now < self.next_report:
            return
        self.next_report = now + PROGRESS_INTERVAL_S
        logger.info(
            "%s: read %s %ss so far (%.0f s)", self.path, f"{rows:,}", self.noun, now - self.start
        )
