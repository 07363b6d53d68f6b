"""Live-line arithmetic of the demo: parsing a scrape, quantiles from buckets, rates."""

from __future__ import annotations

import math

from ops.demo.monitor import Scrape, histogram_quantile, parse_scrape, sample_between

EXPOSITION = """\
# HELP hiertcn_outputs_produced_total Outputs produced.
# TYPE hiertcn_outputs_produced_total counter
hiertcn_outputs_produced_total 40.0
# HELP hiertcn_end_to_end_latency_seconds Latency.
# TYPE hiertcn_end_to_end_latency_seconds histogram
hiertcn_end_to_end_latency_seconds_bucket{le="0.01"} 10.0
hiertcn_end_to_end_latency_seconds_bucket{le="0.1"} 30.0
hiertcn_end_to_end_latency_seconds_bucket{le="+Inf"} 40.0
hiertcn_end_to_end_latency_seconds_count 40.0
hiertcn_end_to_end_latency_seconds_sum 2.0
# HELP hiertcn_live_hits_total Hits.
# TYPE hiertcn_live_hits_total counter
hiertcn_live_hits_total{k="10"} 3.0
hiertcn_live_hits_total{k="1"} 1.0
# HELP hiertcn_live_predictions_total Predictions.
# TYPE hiertcn_live_predictions_total counter
hiertcn_live_predictions_total 12.0
# HELP hiertcn_dead_letters_total Dead letters.
# TYPE hiertcn_dead_letters_total counter
hiertcn_dead_letters_total{reason="unknown_item"} 2.0
hiertcn_dead_letters_total{reason="not_msgpack"} 1.0
"""


def test_parse_scrape_sums_labels() -> None:
    scraped = parse_scrape(EXPOSITION, at=5.0)
    assert scraped.outputs == 40.0
    assert scraped.dead_letters == 3.0
    assert scraped.live_hits == {"10": 3.0, "1": 1.0}
    assert scraped.latency_buckets[0.1] == 30.0


def test_quantile_interpolates_inside_bucket() -> None:
    buckets = {0.01: 10.0, 0.1: 30.0, math.inf: 40.0}
    # The median is the 20th of 40 observations: halfway through the (0.01, 0.1] bucket.
    assert math.isclose(histogram_quantile(0.5, buckets), 0.055)
    assert math.isclose(histogram_quantile(0.25, buckets), 0.01)


def test_quantile_of_no_observations_is_nan() -> None:
    assert math.isnan(histogram_quantile(0.5, {0.1: 0.0, math.inf: 0.0}))


def test_sample_between_uses_deltas() -> None:
    before = Scrape(at=0.0, outputs=10.0, live_predictions=2.0, live_hits={"10": 1.0})
    after = parse_scrape(EXPOSITION, at=2.0)
    sample = sample_between(before, after)
    assert sample.events_per_second == 15.0
    assert sample.live_recall == 0.2
    assert sample.dead_letters_total == 3.0
