"""Draw the demo's throughput and latency over the run into a PNG file."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # No display on servers and CI; write files only.
import matplotlib.pyplot as plt

from ops.demo.monitor import Sample


def plot_run(samples: Sequence[Sample], path: Path, title: str) -> Path:
    """Plot events per second (top) and p50/p99 end-to-end latency in ms (bottom)."""
    if not samples:
        raise ValueError("no samples to plot: the worker pool produced no metrics")
    start = samples[0].at
    seconds = [sample.at - start for sample in samples]
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    top.plot(seconds, [sample.events_per_second for sample in samples], color="tab:blue")
    top.set_ylabel("outputs per second")
    top.set_title(title)
    top.grid(alpha=0.3)
    bottom.plot(seconds, [sample.latency_p50 * 1000 for sample in samples], label="p50")
    bottom.plot(seconds, [sample.latency_p99 * 1000 for sample in samples], label="p99")
    bottom.set_ylabel("end-to-end latency (ms)")
    bottom.set_xlabel("seconds since the first event")
    bottom.legend()
    bottom.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
