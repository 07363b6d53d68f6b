"""A gate that lets periodic work run at most once per interval of a monotonic clock."""

from __future__ import annotations

import math
import time
from collections.abc import Callable


class Interval:
    """A gate that opens at most once per `seconds` of `clock`, the first time at once."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds = seconds
        self.clock = clock
        self._next = -math.inf

    def due(self) -> bool:
        """Return whether `seconds` have passed since the last True, and if so restart."""
        now = self.clock()
        if now < self._next:
            return False
        self._next = now + self.seconds
        return True
