"""The three analyses of the HierTCN paper (You et al., WWW 2019), one line per model: MRP
against a user's past interactions, against the position in the session, and against the time
since the previous session.

Each event scored in evaluation carries that context (`hiertcn.metrics.EventRanks`). The events
are grouped into bins, and the plot shows the mean MRP (rank / pool size, lower is better) of
each bin.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # Servers and CI have no display; only files are written.
import matplotlib.pyplot as plt
import numpy as np

from hiertcn.metrics import EventRanks

HOUR = 3600
DAY = 24 * HOUR


@dataclass(frozen=True)
class Binning:
    """Bins of one context variable: `edges[i] <= value < edges[i + 1]` is bin i."""

    name: str
    field: str  # the EventRanks field that contains the variable
    axis_label: str
    edges: tuple[float, ...]
    labels: tuple[str, ...]


BINNINGS = (
    Binning(
        name="past_interactions",
        field="past_events",
        axis_label="user's past interactions",
        edges=(1, 2, 5, 10, 20, 50, 100, 200, 500, np.inf),
        labels=("1", "2-4", "5-9", "10-19", "20-49", "50-99", "100-199", "200-499", "500+"),
    ),
    Binning(
        name="session_position",
        field="session_position",
        axis_label="position in the session (0 = first event)",
        edges=(0, 1, 2, 3, 4, 5, 10, 20, np.inf),
        labels=("0", "1", "2", "3", "4", "5-9", "10-19", "20+"),
    ),
    Binning(
        name="time_since_previous_session",
        field="session_gap",
        axis_label="time since the previous session (first session: none)",
        edges=(-1, 0, HOUR, 3 * HOUR, 12 * HOUR, DAY, 3 * DAY, 7 * DAY, np.inf),
        labels=("none", "<1h", "1-3h", "3-12h", "12-24h", "1-3d", "3-7d", "7d+"),
    ),
)


def binned_mrp(ranks: EventRanks, binning: Binning) -> list[dict[str, float | str | int]]:
    """Return the mean MRP and the event count of every bin (NaN MRP for an empty bin)."""
    values = np.asarray(getattr(ranks, binning.field), dtype=np.float64)
    mrp = np.asarray(ranks.ranks, dtype=np.float64) / np.asarray(ranks.pool_sizes)
    rows = []
    for index, label in enumerate(binning.labels):
        low, high = binning.edges[index], binning.edges[index + 1]
        inside = (values >= low) & (values < high)
        count = int(inside.sum())
        rows.append(
            {
                "bin": label,
                "events": count,
                "mrp": float(mrp[inside].mean()) if count else float("nan"),
            }
        )
    return rows


def plot_binned(
    series: Mapping[str, Sequence[dict[str, float | str | int]]],
    binning: Binning,
    path: Path,
    title: str,
) -> Path:
    """Plot one line of mean MRP per model over the bins of `binning` into a PNG file."""
    figure, axis = plt.subplots(figsize=(8, 4.5))
    positions = np.arange(len(binning.labels))
    for model, rows in series.items():
        axis.plot(positions, [row["mrp"] for row in rows], marker="o", label=model)
    axis.set_xticks(positions, binning.labels)
    axis.set_xlabel(binning.axis_label)
    axis.set_ylabel("mean MRP (rank / pool size, lower is better)")
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
