"""A one-line progress bar on stderr, with a rate in events per second and free-form fields."""

from __future__ import annotations

import sys
import time
from typing import TextIO

# Seconds between two redraws, so that a fast loop does not spend its time writing to stderr.
_REDRAW_INTERVAL = 0.2
_BAR_WIDTH = 24


class ProgressBar:
    """Progress of `total` steps, redrawn in place on `stream` (stderr by default).

    `update(steps, events=n, **fields)` advances the bar, adds `n` to the event count that
    the rate is computed from, and shows the latest `fields` (for example the loss). When
    `enabled` is False, or the stream is not a terminal and `force` is False, nothing is
    written, so logs of batch jobs stay clean.
    """

    def __init__(
        self,
        total: int,
        description: str,
        enabled: bool = True,
        stream: TextIO | None = None,
        force: bool = False,
    ) -> None:
        self.total = max(int(total), 0)
        self.description = description
        self.stream = stream if stream is not None else sys.stderr
        is_terminal = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.enabled = enabled and (is_terminal or force)
        self.steps = 0
        self.events = 0
        self.fields: dict[str, float] = {}
        self.started = time.perf_counter()
        self._last_draw = 0.0

    @property
    def events_per_second(self) -> float:
        """Events counted so far divided by the seconds since the bar started."""
        elapsed = time.perf_counter() - self.started
        return self.events / elapsed if elapsed > 0 else 0.0

    def update(self, steps: int = 1, events: int = 0, **fields: float) -> None:
        """Advance by `steps`, count `events`, and show the given fields."""
        self.steps += steps
        self.events += events
        self.fields.update(fields)
        now = time.perf_counter()
        if self.enabled and (now - self._last_draw >= _REDRAW_INTERVAL or self.steps >= self.total):
            self._last_draw = now
            self.stream.write("\r" + self.render())
            self.stream.flush()

    def render(self) -> str:
        """Return the bar as one line of text, without a line break."""
        fraction = self.steps / self.total if self.total else 1.0
        filled = round(fraction * _BAR_WIDTH)
        bar = "#" * filled + "-" * (_BAR_WIDTH - filled)
        field_text = " ".join(f"{name} {value:.4g}" for name, value in self.fields.items())
        return (
            f"{self.description} [{bar}] {self.steps}/{self.total} "
            f"{self.events_per_second:,.0f} events/s {field_text}".rstrip()
        )

    def close(self) -> None:
        """End the line of the bar, so that later output starts on a fresh line."""
        if self.enabled:
            self.stream.write("\r" + self.render() + "\n")
            self.stream.flush()
