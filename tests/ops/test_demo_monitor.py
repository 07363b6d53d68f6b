"""Live-line arithmetic of the demo: parsing a scrape, quantiles from buckets, rates."""

from __future__ import annotations

import dataclasses
import math
import time

from ops.demo import monitor as demo_monitor
from ops.demo import run as demo_run
from ops.demo.monitor import Scrape, histogram_quantile, parse_scrape, sample_between
from ops.demo.run import parse_args

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


# The live lines and the plot of a short run.


class _Running:
    """A child process that keeps running."""

    def poll(self) -> None:
        return None


class _Reader:
    count = 400


def _short_run_scrape() -> Scrape:
    """The pool's endpoint after a 400-event run that ended before its first scrape."""
    buckets = {0.01: 100.0, 0.1: 400.0, math.inf: 400.0}
    return Scrape(at=time.monotonic() + 2.0, outputs=400.0, latency_buckets=buckets)


def test_short_run_live_line_counts_outputs(tmp_path, monkeypatch, capsys) -> None:
    scrapes = iter([None, _short_run_scrape(), _short_run_scrape()])
    monkeypatch.setattr(demo_monitor, "scrape", lambda url: next(scrapes))
    monkeypatch.setattr(demo_run.time, "sleep", lambda seconds: None)
    config = parse_args(["--out", str(tmp_path), "--max-events", "400", "--rate", "400"])

    samples = demo_run.monitor(config, _Reader(), 400, _Running(), _Running())

    assert len(samples) == 1
    assert samples[0].events_per_second > 0
    assert not math.isnan(samples[0].latency_p50)
    line = capsys.readouterr().out.strip()
    assert "outputs 400" in line
    assert "latency p50 -" not in line


def test_one_sample_gives_no_plot(tmp_path) -> None:
    path = tmp_path / "throughput_latency.png"
    sample = sample_between(Scrape(at=0.0), _short_run_scrape())

    message = demo_run.plot_samples([sample], path, "short run")

    assert message.startswith("no plot: the run gave 1 live sample(s)")
    assert "--max-events" in message
    assert not path.exists()


def test_two_samples_give_plot(tmp_path) -> None:
    path = tmp_path / "throughput_latency.png"
    first = sample_between(Scrape(at=0.0), _short_run_scrape())
    samples = [first, dataclasses.replace(first, at=first.at + 2.0)]

    assert demo_run.plot_samples(samples, path, "run") == str(path)
    assert path.stat().st_size > 0
