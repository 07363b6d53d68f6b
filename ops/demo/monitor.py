"""Scrape the worker pool's Prometheus endpoint and turn two scrapes into one live sample.

The demo prints a live line (events per second, p50 and p99 end-to-end latency, live recall@10,
dead-lettered messages) and plots the samples at the end. Quantiles are estimated from histogram
bucket deltas between two scrapes with linear interpolation inside a bucket, which is what
PromQL's `histogram_quantile` does.
"""

from __future__ import annotations

import logging
import math
import time
import urllib.error
import urllib.request
from collections import defaultdict
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

logger = logging.getLogger(__name__)

LATENCY = "hiertcn_end_to_end_latency_seconds"
OUTPUTS = "hiertcn_outputs_produced_total"
DEAD_LETTERS = "hiertcn_dead_letters_total"
LIVE_PREDICTIONS = "hiertcn_live_predictions_total"
LIVE_HITS = "hiertcn_live_hits_total"


@dataclass(frozen=True)
class Scrape:
    """Counter totals and latency buckets of one scrape of the pool's endpoint."""

    at: float
    outputs: float = 0.0
    dead_letters: float = 0.0
    live_predictions: float = 0.0
    live_hits: dict[str, float] = field(default_factory=dict)
    latency_buckets: dict[float, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Sample:
    """Rates, latency quantiles and live recall of the interval between two scrapes."""

    at: float
    events_per_second: float
    latency_p50: float
    latency_p99: float
    outputs_total: float
    dead_letters_total: float
    live_recall: float


def scrape(url: str, timeout: float = 2.0) -> Scrape | None:
    """Read the endpoint once; return None while it is not up yet."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            text = response.read().decode("utf-8")
    except (urllib.error.URLError, OSError):
        return None
    return parse_scrape(text, at=time.monotonic())


def parse_scrape(text: str, at: float) -> Scrape:
    """Sum every series of the metrics the demo shows, over all labels but `le` and `k`."""
    totals: dict[str, float] = defaultdict(float)
    hits: dict[str, float] = defaultdict(float)
    buckets: dict[float, float] = defaultdict(float)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == f"{LATENCY}_bucket":
                buckets[float(sample.labels["le"])] += sample.value
            elif sample.name == LIVE_HITS:
                hits[sample.labels.get("k", "")] += sample.value
            elif sample.name in (OUTPUTS, DEAD_LETTERS, LIVE_PREDICTIONS):
                totals[sample.name] += sample.value
    return Scrape(
        at=at,
        outputs=totals[OUTPUTS],
        dead_letters=totals[DEAD_LETTERS],
        live_predictions=totals[LIVE_PREDICTIONS],
        live_hits=dict(hits),
        latency_buckets=dict(buckets),
    )


def histogram_quantile(quantile: float, buckets: dict[float, float]) -> float:
    """Estimate a quantile from cumulative bucket counts; NaN when there are no observations."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return math.nan
    rank = quantile * buckets[bounds[-1]]
    lower_bound, lower_count = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            width = count - lower_count
            fraction = (rank - lower_count) / width if width > 0 else 1.0
            return lower_bound + (bound - lower_bound) * fraction
        lower_bound, lower_count = bound, count
    return lower_bound


def sample_between(before: Scrape, after: Scrape, k: str = "10") -> Sample:
    """Rates, latency quantiles and live metrics of the interval between two scrapes."""
    seconds = max(after.at - before.at, 1e-9)
    delta_buckets = {
        bound: count - before.latency_buckets.get(bound, 0.0)
        for bound, count in after.latency_buckets.items()
    }
    predictions = after.live_predictions - before.live_predictions
    hits = after.live_hits.get(k, 0.0) - before.live_hits.get(k, 0.0)
    return Sample(
        at=after.at,
        events_per_second=(after.outputs - before.outputs) / seconds,
        latency_p50=histogram_quantile(0.5, delta_buckets),
        latency_p99=histogram_quantile(0.99, delta_buckets),
        outputs_total=after.outputs,
        dead_letters_total=after.dead_letters,
        live_recall=hits / predictions if predictions > 0 else math.nan,
    )


def format_sample(sample: Sample) -> str:
    """Format one live line of the demo."""

    def milliseconds(value: float) -> str:
        return "-" if math.isnan(value) else f"{value * 1000:.0f} ms"

    recall = "-" if math.isnan(sample.live_recall) else f"{sample.live_recall:.3f}"
    return (
        f"{sample.events_per_second:7.1f} events/s | latency p50 {milliseconds(sample.latency_p50)}"
        f" p99 {milliseconds(sample.latency_p99)} | live recall@10 {recall}"
        f" | outputs {sample.outputs_total:.0f} | dead-lettered {sample.dead_letters_total:.0f}"
    )
