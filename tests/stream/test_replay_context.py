"""Replay's `--context-type` and its count of session starts: events left out of the metrics,
and the warm split's test part that `hiertcn data events` writes, replayed against a real
ONNX bundle."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from hiertcn.data.event_export import CONTEXT_TYPE as EXPORTED_CONTEXT_TYPE
from stream.cli import main as stream_main
from stream.events import Event
from stream.pipeline import Pipeline, PipelineConfig
from stream.replay import CONTEXT_TYPE, count_session_starts
from tests.stream.conftest import NUM_ITEMS
from tests.stream.fake_bundle import FakeBundle
from tests.stream.test_pipeline import GAP, make_event


def typed(event: Event, event_type: str | None) -> Event:
    from dataclasses import replace

    return replace(event, event_type=event_type)


def test_context_type_shared() -> None:
    assert CONTEXT_TYPE == EXPORTED_CONTEXT_TYPE


# -- counting session starts on a fake bundle --------------------------------------------------


def test_session_starts_within_batch() -> None:
    pipeline = Pipeline(FakeBundle(), PipelineConfig(session_gap=GAP))
    events = [
        make_event("u1", 1, 0.0),
        make_event("u1", 2, 60.0),
        make_event("u1", 3, 60.0 + GAP + 1),  # a gap close: a session start
        make_event("u2", 4, 0.0),
    ]
    result = pipeline.process(events, {})

    starts, after_close = count_session_starts(events, {}, result.outputs, result.live)

    assert (starts, after_close) == (1, 0)


def test_session_start_after_timer_close() -> None:
    pipeline = Pipeline(FakeBundle(), PipelineConfig(session_gap=GAP, session_close_outputs=True))
    first = pipeline.process([make_event("u1", 1, 0.0), make_event("u2", 2, 0.0)], {})
    closed = pipeline.close_idle({"u1": first.states["u1"]}).states
    states = {"u1": closed["u1"], "u2": first.states["u2"]}
    events = [make_event("u1", 5, 5000.0), make_event("u2", 6, 30.0), make_event("u1", 7, 5060.0)]
    result = pipeline.process(events, states)

    starts, after_close = count_session_starts(events, states, result.outputs, result.live)

    # u1's first event follows the timer close; u2's continues its session, and u1's second
    # event continues the session that its first started.
    assert (starts, after_close) == (1, 1)


def test_uncounted_event_no_start() -> None:
    pipeline = Pipeline(FakeBundle(), PipelineConfig(session_gap=GAP))
    events = [make_event("u1", 1, 0.0), make_event("u1", 2, GAP + 10.0)]
    result = pipeline.process(events, {})

    starts, _ = count_session_starts(events, {}, result.outputs, [None, None])

    assert starts == 0


# -- `hiertcn data events --split warm` replayed with --context-type ------------------------------


def write_warm_log(path: Path, users: int = 12, seed: int = 5) -> None:
    """Write a CSV log whose users each have 3 to 5 sessions spread over the whole time range."""
    rng = random.Random(seed)
    lines = ["user,item,timestamp"]
    for user in range(users):
        clock = 1_700_000_000 + rng.randrange(600)
        for _session in range(rng.randint(3, 5)):
            for _event in range(rng.randint(2, 5)):
                lines.append(f"u{user},{rng.randrange(NUM_ITEMS)},{clock}")
                clock += rng.randint(10, 300)
            clock += rng.randint(4000, 9000)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.fixture
def warm_test_part(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    from hiertcn.cli import main as hiertcn_main

    log, out = tmp_path / "log.csv", tmp_path / "test.jsonl"
    write_warm_log(log)
    flags = ("--format", "csv", "--min-item-count", "1", "--min-user-events", "1")
    assert (
        hiertcn_main(["data", "events", str(log), *flags, "--split", "warm", "--out", str(out)])
        == 0
    )
    printed = capsys.readouterr().out
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    context = sum(line.get("type") == CONTEXT_TYPE for line in lines)
    assert 0 < context < len(lines)
    assert f"{context} of them are earlier events of the same users" in printed
    return out


def replay_report(events: Path, bundle: Path, *flags: str) -> dict[str, str]:
    """Run replay and return its report lines keyed by their first words."""
    import contextlib
    import io

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        assert (
            stream_main(["replay", "--events", str(events), "--bundle", str(bundle), *flags]) == 0
        )
    report = {}
    for line in buffer.getvalue().splitlines():
        key, _, value = line.partition("  ")
        report[key.strip()] = value.strip()
    return report


def test_context_events_not_counted(warm_test_part: Path, onnx_bundle_dir: Path) -> None:
    lines = [json.loads(line) for line in warm_test_part.read_text(encoding="utf-8").splitlines()]
    targets = sum("type" not in line for line in lines)
    users = len({line["user"] for line in lines})

    every = replay_report(warm_test_part, onnx_bundle_dir)
    targets_only = replay_report(warm_test_part, onnx_bundle_dir, "--context-type", CONTEXT_TYPE)

    assert every["counted events"].split()[0] == str(len(lines) - users)
    # Every user has history before the first target, so each target is counted.
    assert targets_only["counted events"].split()[0] == str(targets)
    assert targets_only["context events"].split()[0] == str(len(lines) - targets)
    assert "context events" not in every
    assert every["MRR"] != targets_only["MRR"]


# -- --context-type values that match no event, and metrics without a counted event ------------


def write_typed_log(path: Path, types: list[str | None], users: int = 3) -> None:
    """Write one event per entry of `types`, for `users` users in turn, one minute apart."""
    lines = []
    for number, event_type in enumerate(types):
        event = {"user": f"u{number % users}", "item": number % NUM_ITEMS}
        event["ts"] = 1_700_000_000 + 60 * number
        if event_type is not None:
            event["type"] = event_type
        lines.append(json.dumps(event))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def context_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "stream.replay_report" and "--context-type" in r.getMessage()
    ]


def test_unmatched_context_type_warned(
    tmp_path: Path, onnx_bundle_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "events.jsonl"
    write_typed_log(path, ["click", "view", None] * 4)

    report = replay_report(path, onnx_bundle_dir, "--context-type", "nosuch", "--context-type", "")

    (warning,) = context_warnings(caplog)
    assert f"no accepted event in {path} has a type that --context-type names ('', 'nosuch')" in (
        warning
    )
    assert "the types in the file are 'click', 'view'" in warning
    assert report["context events"].split()[0] == "0"


def test_matched_context_type_not_warned(
    tmp_path: Path, onnx_bundle_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "events.jsonl"
    write_typed_log(path, ["click", "view", None] * 4)

    report = replay_report(path, onnx_bundle_dir, "--context-type", "view")

    assert context_warnings(caplog) == []
    assert report["context events"].split()[0] == "4"


def test_context_type_without_type_field_warned(
    tmp_path: Path, onnx_bundle_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "events.jsonl"
    write_typed_log(path, [None] * 6)

    replay_report(path, onnx_bundle_dir, "--context-type", "click")

    (warning,) = context_warnings(caplog)
    assert "no record in the file has a type field" in warning


def test_context_type_warning_lists_at_most_20_types(
    tmp_path: Path, onnx_bundle_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "events.jsonl"
    write_typed_log(path, [f"t{number:02d}" for number in range(30)])

    replay_report(path, onnx_bundle_dir, "--context-type", "click")

    (warning,) = context_warnings(caplog)
    assert "'t19' and more" in warning
    assert "'t20'" not in warning


def test_metrics_reason_when_every_event_is_context(tmp_path: Path, onnx_bundle_dir: Path) -> None:
    path = tmp_path / "events.jsonl"
    write_typed_log(path, ["click"] * 9)

    report = replay_report(path, onnx_bundle_dir, "--context-type", "click")

    assert report["counted events"].split()[0] == "0"
    assert report["Recall@5"] == (
        "n/a (no counted event: no user has a valid event after their first that is not a "
        "context event)"
    )


def test_metrics_reason_when_every_user_has_one_event(
    tmp_path: Path, onnx_bundle_dir: Path
) -> None:
    path = tmp_path / "events.jsonl"
    write_typed_log(path, [None] * 3)

    report = replay_report(path, onnx_bundle_dir)

    assert report["Recall@5"] == (
        "n/a (no counted event: no user has a valid event after their first)"
    )
