"""`hiertcn-stream replay --publish-on-session-close` on the real ONNX bundle of `conftest.py`:
the extra outputs in --output, the report, and a resume that loses none of them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stream.cli import main
from stream.replay import StoreStates
from tests.stream.conftest import SESSION_GAP, write_event_log
from tests.stream.test_replay_output import interrupt_on_call

FLAG = "--publish-on-session-close"


def replay(events: Path, bundle: Path, *flags: str) -> int:
    return main(
        ["replay", "--events", str(events), "--bundle", str(bundle), "--batch-size", "16", *flags]
    )


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def events(tmp_path: Path) -> Path:
    path = tmp_path / "events.jsonl"
    write_event_log(path, 150, seed=21)
    return path


def test_replay_writes_session_close_outputs(
    onnx_bundle_dir: Path, events: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "recs.jsonl"

    assert replay(events, onnx_bundle_dir, "--order", "time", FLAG, "--output", str(output)) == 0

    report = capsys.readouterr().out
    lines = read_lines(output)
    closes = [line for line in lines if "trigger" in line]
    assert len(lines) - len(closes) == 150
    assert len(closes) > 10
    assert f"session-close outputs  {len(closes)}\n" in report
    assert f"timer {len(closes)}\n" in report
    for close in closes:
        assert close["trigger"] == "session_close"
        assert close["event_id"] is None
        assert len(close["items"]) == len(close["scores"]) == 5

    # Each close output follows the user's last event output of the closed session, and the
    # user's next output, if any, is the first event of the session that it predicts.
    previous: dict[str, dict] = {}
    for line in lines:
        before = previous.get(line["user"])
        if "trigger" in line:
            assert before is not None and "trigger" not in before
            assert line["ts"] == before["ts"] + SESSION_GAP
            assert line["session"] == before["session"] + 1
        elif before is not None and "trigger" in before:
            assert line["session"] == before["session"]
            assert line["ts"] > before["ts"]
        previous[line["user"]] = line


def test_replay_without_flag_unchanged(
    onnx_bundle_dir: Path, events: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plain, flagged = tmp_path / "plain.jsonl", tmp_path / "flagged.jsonl"

    assert replay(events, onnx_bundle_dir, "--order", "time", "--output", str(plain)) == 0
    report = capsys.readouterr().out
    assert replay(events, onnx_bundle_dir, "--order", "time", FLAG, "--output", str(flagged)) == 0

    assert "session-close outputs" not in report
    event_lines = [line for line in read_lines(flagged) if "trigger" not in line]
    assert read_lines(plain) == event_lines


def test_replay_flag_with_no_timers_rejected(
    onnx_bundle_dir: Path, events: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = replay(events, onnx_bundle_dir, FLAG, "--no-timers")

    assert code == 2
    assert "drop one of the two flags" in capsys.readouterr().err


@pytest.mark.parametrize("call", [2, 3, 5])
def test_interrupted_replay_keeps_close_outputs(
    onnx_bundle_dir: Path,
    events: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    call: int,
) -> None:
    expected = tmp_path / "uninterrupted.jsonl"
    assert replay(events, onnx_bundle_dir, "--order", "time", FLAG, "--output", str(expected)) == 0
    output, state_dir = tmp_path / "recs.jsonl", tmp_path / "state"
    flags = ["--order", "time", FLAG, "--state-dir", str(state_dir), "--output", str(output)]

    # Commits alternate between a batch's states and its timer closes, so some of these calls
    # stop the replay after a batch's commit and before its closes are committed.
    with monkeypatch.context() as patch:
        interrupt_on_call(patch, StoreStates, "write", call)
        assert replay(events, onnx_bundle_dir, *flags) == 130
    assert replay(events, onnx_bundle_dir, *flags) == 0

    assert output.read_text() == expected.read_text()
