"""Tests of replay's --output file: input paths rejected, and exactly-once output on resume.

Every test runs the `replay` command on the real ONNX bundle of `conftest.py`, and the resume
tests keep their states in a real LMDB store.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from statestore import REPLAY_PARTITION, PartitionPosition, StateStore, StoreConfig
from stream.cli import main
from stream.commands.replay import REPLAY_LOCK_FILE
from stream.replay import OutputFile, Replay, StoreStates
from tests.stream.conftest import write_event_log

BATCH = "16"


def replay(events: Path, bundle: Path, *flags: str) -> int:
    return main(["replay", "--events", str(events), "--bundle", str(bundle), *flags])


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def folder_digests(folder: Path) -> dict[str, str]:
    return {str(path): digest(path) for path in sorted(folder.rglob("*")) if path.is_file()}


@pytest.fixture
def events(tmp_path: Path) -> Path:
    path = tmp_path / "events.jsonl"
    write_event_log(path, 150, seed=21)
    return path


# --output that is one of the inputs ---------------------------------------------------------


def test_output_equal_to_events_rejected(
    onnx_bundle_dir: Path, events: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = digest(events)
    spellings = [events, events.parent / ".." / events.parent.name / events.name]

    for spelling in spellings:
        code = replay(events, onnx_bundle_dir, "--output", str(spelling))

        err = capsys.readouterr().err
        assert code == 2
        assert f"--output {spelling} is the --events file" in err
        assert "pass a new file path to --output" in err
        assert digest(events) == before


def test_output_symlink_to_events_replaced_with_force(
    onnx_bundle_dir: Path, events: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    link = tmp_path / "link.jsonl"
    link.symlink_to(events)
    before = digest(events)

    code = replay(events, onnx_bundle_dir, "--output", str(link), "--force")

    assert code == 0
    assert "is the --events file" not in capsys.readouterr().err
    assert not link.is_symlink()
    assert json.loads(link.read_text().splitlines()[0])["user"]
    assert digest(events) == before


def test_output_same_link_as_events_rejected(
    onnx_bundle_dir: Path, events: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    link = tmp_path / "events-link.jsonl"
    link.symlink_to(events)

    code = replay(link, onnx_bundle_dir, "--output", str(link), "--force")

    assert code == 2
    assert f"--output {link} is the --events file {link}" in capsys.readouterr().err
    assert link.is_symlink()


def test_output_hard_link_to_events_rejected(
    onnx_bundle_dir: Path, events: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hard_link = tmp_path / "hard.jsonl"
    os.link(events, hard_link)
    before = digest(events)

    code = replay(events, onnx_bundle_dir, "--output", str(hard_link), "--force")

    err = capsys.readouterr().err
    assert code == 2
    assert f"--output {hard_link} is a hard link to the --events file {events}" in err
    assert digest(events) == before
    assert events.stat().st_nlink == 2


def test_output_inside_bundle_rejected(
    onnx_bundle_dir: Path, events: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = folder_digests(onnx_bundle_dir)

    code = replay(events, onnx_bundle_dir, "--output", str(onnx_bundle_dir / "items.npy"))

    err = capsys.readouterr().err
    assert code == 2
    assert f"lies inside the --bundle folder {onnx_bundle_dir}" in err
    assert "pass a file path outside" in err
    assert folder_digests(onnx_bundle_dir) == before


def test_output_inside_state_dir_rejected(
    onnx_bundle_dir: Path, events: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state_dir = tmp_path / "state"
    assert replay(events, onnx_bundle_dir, "--state-dir", str(state_dir)) == 0
    before = folder_digests(state_dir)
    capsys.readouterr()

    code = replay(
        events,
        onnx_bundle_dir,
        "--state-dir",
        str(state_dir),
        "--output",
        str(state_dir / "data.mdb"),
    )

    err = capsys.readouterr().err
    assert code == 2
    assert f"lies inside the --state-dir folder {state_dir}" in err
    assert folder_digests(state_dir) == before


def test_link_in_state_dir_to_outside_rejected(
    onnx_bundle_dir: Path, events: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    outside = tmp_path / "outside.jsonl"
    outside.write_text("outside\n")
    link = state_dir / "out.jsonl"
    link.symlink_to(outside)

    code = replay(events, onnx_bundle_dir, "--state-dir", str(state_dir), "--output", str(link),
                  "--force")  # fmt: skip

    err = capsys.readouterr().err
    assert code == 2
    assert f"--output {link} lies inside the --state-dir folder {state_dir}" in err
    # replay would have replaced the link with a file inside the state directory.
    assert link.is_symlink()
    assert outside.read_text() == "outside\n"


def test_link_outside_into_bundle_accepted(
    onnx_bundle_dir: Path, events: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = folder_digests(onnx_bundle_dir)
    link = tmp_path / "to-bundle.jsonl"
    link.symlink_to(onnx_bundle_dir / "manifest.json")

    code = replay(events, onnx_bundle_dir, "--output", str(link), "--force")

    assert code == 0
    assert "lies inside" not in capsys.readouterr().err
    assert not link.is_symlink()
    assert json.loads(link.read_text().splitlines()[0])["user"]
    assert folder_digests(onnx_bundle_dir) == before


def test_link_outside_into_state_dir_accepted(
    onnx_bundle_dir: Path, events: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    lock_file = state_dir / REPLAY_LOCK_FILE
    lock_file.touch()
    link = tmp_path / "to-state.jsonl"
    link.symlink_to(lock_file)

    code = replay(events, onnx_bundle_dir, "--state-dir", str(state_dir), "--output", str(link),
                  "--force")  # fmt: skip

    assert code == 0
    assert "lies inside" not in capsys.readouterr().err
    assert not link.is_symlink()
    assert json.loads(link.read_text().splitlines()[0])["user"]
    assert lock_file.stat().st_size == 0


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("bad.csv", "user,thing,ts\nu1,5,10\n"),  # no item column
        ("bad.jsonl", "not json\n[1]\n"),  # no valid record
    ],
)
def test_input_error_keeps_existing_output(
    onnx_bundle_dir: Path, tmp_path: Path, name: str, text: str
) -> None:
    bad = tmp_path / name
    bad.write_text(text)
    output = tmp_path / "recs.jsonl"
    output.write_text('{"earlier": "run"}\n')

    code = replay(bad, onnx_bundle_dir, "--output", str(output))

    assert code == 2
    assert output.read_text() == '{"earlier": "run"}\n'


# Exactly-once output across an interrupt ----------------------------------------------------


def uninterrupted_output(events: Path, bundle: Path, tmp_path: Path) -> list[str]:
    output = tmp_path / "uninterrupted.jsonl"
    assert replay(events, bundle, "--batch-size", BATCH, "--output", str(output)) == 0
    return output.read_text().splitlines()


def interrupt_on_call(monkeypatch: pytest.MonkeyPatch, owner: type, name: str, call: int) -> None:
    """Make the `call`-th call of `owner.name` raise KeyboardInterrupt, the others run."""
    original = getattr(owner, name)
    calls = 0

    def patched(self, *args, **kwargs):
        nonlocal calls
        calls += 1
        if calls == call:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(owner, name, patched)


def test_interrupt_before_state_commit_loses_no_output(
    onnx_bundle_dir: Path, events: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = uninterrupted_output(events, onnx_bundle_dir, tmp_path)
    output, state_dir = tmp_path / "recs.jsonl", tmp_path / "state"
    flags = ["--batch-size", BATCH, "--state-dir", str(state_dir), "--output", str(output)]

    # The 4th commit of states fails after its batch's outputs are in the file.
    with monkeypatch.context() as patch:
        interrupt_on_call(patch, StoreStates, "write", 4)
        assert replay(events, onnx_bundle_dir, *flags) == 130
    written = output.read_text().splitlines()
    assert replay(events, onnx_bundle_dir, *flags) == 0

    assert len(written) > 0
    assert output.read_text().splitlines() == expected


def test_interrupt_inside_output_write_loses_no_output(
    onnx_bundle_dir: Path, events: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = uninterrupted_output(events, onnx_bundle_dir, tmp_path)
    output, state_dir = tmp_path / "recs.jsonl", tmp_path / "state"
    flags = ["--batch-size", BATCH, "--state-dir", str(state_dir), "--output", str(output)]

    def write_half_then_stop(self: OutputFile, outputs) -> None:
        self._file.write(b'{"user": "cut in the mid')
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        original = OutputFile.write_batch
        calls = []

        def patched(self: OutputFile, outputs) -> None:
            calls.append(1)
            if len(calls) == 3:
                write_half_then_stop(self, outputs)
            original(self, outputs)

        patch.setattr(OutputFile, "write_batch", patched)
        assert replay(events, onnx_bundle_dir, *flags) == 130
    assert replay(events, onnx_bundle_dir, *flags) == 0

    assert output.read_text().splitlines() == expected


def test_resume_after_log_grew_appends_each_output_once(
    onnx_bundle_dir: Path, tmp_path: Path
) -> None:
    whole = tmp_path / "whole-log.jsonl"
    write_event_log(whole, 90, seed=22)
    lines = whole.read_text().splitlines(keepends=True)
    events = tmp_path / "events.jsonl"
    events.write_text("".join(lines[:50]))
    expected = uninterrupted_output(whole, onnx_bundle_dir, tmp_path)
    output, state_dir = tmp_path / "recs.jsonl", tmp_path / "state"
    flags = ["--batch-size", BATCH, "--state-dir", str(state_dir), "--output", str(output)]

    assert replay(events, onnx_bundle_dir, *flags) == 0
    first_run_file = tmp_path / "first-run.jsonl"
    os.link(output, first_run_file)
    events.write_text("".join(lines))
    assert replay(events, onnx_bundle_dir, *flags) == 0

    # A resume continues its own file, which a new file must not replace.
    assert os.path.samefile(output, first_run_file)

    # The event ids name the file, so they are the same in both runs.
    assert output.read_text().splitlines() == [
        line.replace('"whole-log.jsonl[', '"events.jsonl[') for line in expected
    ]


def test_resume_rejects_shorter_output(
    onnx_bundle_dir: Path, events: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output, state_dir = tmp_path / "recs.jsonl", tmp_path / "state"
    flags = ["--state-dir", str(state_dir), "--output", str(output)]
    assert replay(events, onnx_bundle_dir, *flags) == 0
    stored = output.stat().st_size
    output.write_text("cut\n")
    capsys.readouterr()

    code = replay(events, onnx_bundle_dir, *flags)

    err = capsys.readouterr().err
    assert code == 2
    assert f"has 4 bytes, fewer than the {stored} bytes that the stored replay" in err
    assert "pass a new --state-dir" in err
    assert output.read_text() == "cut\n"


def test_resume_rejects_other_output(
    onnx_bundle_dir: Path, events: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output, state_dir = tmp_path / "recs.jsonl", tmp_path / "state"
    assert (
        replay(events, onnx_bundle_dir, "--state-dir", str(state_dir), "--output", str(output)) == 0
    )
    other = tmp_path / "other.jsonl"
    capsys.readouterr()

    code = replay(events, onnx_bundle_dir, "--state-dir", str(state_dir), "--output", str(other))
    missing = replay(events, onnx_bundle_dir, "--state-dir", str(state_dir))

    err = capsys.readouterr().err
    assert code == 2
    assert missing == 2
    assert err.count(f"pass --output {output.resolve()}") == 2
    assert not other.exists()


def test_resume_rejects_output_added_later(
    onnx_bundle_dir: Path, events: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state_dir = tmp_path / "state"
    assert replay(events, onnx_bundle_dir, "--state-dir", str(state_dir)) == 0
    capsys.readouterr()

    code = replay(
        events, onnx_bundle_dir, "--state-dir", str(state_dir), "--output", str(tmp_path / "r")
    )

    assert code == 2
    assert "wrote no --output" in capsys.readouterr().err


def test_resume_of_legacy_position_warns_once(
    onnx_bundle_dir: Path,
    events: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    whole = uninterrupted_output(events, onnx_bundle_dir, tmp_path)
    lines = events.read_text().splitlines(keepends=True)
    first = tmp_path / "first.jsonl"
    first.write_text("".join(lines[:64]))
    output, state_dir = tmp_path / "recs.jsonl", tmp_path / "state"
    flags = ["--batch-size", BATCH, "--state-dir", str(state_dir), "--output", str(output)]
    # A run of the earlier version: states and a position of two fields, after 64 records.
    assert replay(first, onnx_bundle_dir, *flags) == 0
    topic = f"replay:{events.resolve()}"
    with StateStore(StoreConfig(path=state_dir)) as store:
        (stored,) = store.positions(f"replay:{first.resolve()}").values()
        store.commit({}, {(topic, REPLAY_PARTITION): PartitionPosition(64, stored.watermark)})

    with caplog.at_level(logging.WARNING, logger="stream.replay"):
        code = replay(events, onnx_bundle_dir, *flags)

    warnings = [r.getMessage() for r in caplog.records if "earlier version" in r.getMessage()]
    assert code == 0
    assert len(warnings) == 1
    assert "appends to --output" in warnings[0]
    assert len(output.read_text().splitlines()) == len(whole)
    with StateStore(StoreConfig(path=state_dir)) as store:
        (resumed,) = store.positions(topic).values()
    assert resumed.replay is not None
    assert resumed.replay.output_bytes == output.stat().st_size


@pytest.mark.parametrize(("first", "second"), [("time", "file"), ("file", "time")])
def test_resume_in_other_order_rejected(
    onnx_bundle_dir: Path,
    events: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    first: str,
    second: str,
) -> None:
    output, state_dir = tmp_path / "recs.jsonl", tmp_path / "state"
    flags = ["--state-dir", str(state_dir), "--output", str(output)]
    assert replay(events, onnx_bundle_dir, *flags, "--order", first) == 0
    before = output.read_bytes()
    capsys.readouterr()

    code = replay(events, onnx_bundle_dir, *flags, "--order", second)

    err = capsys.readouterr().err
    assert code == 2
    assert f"contains a replay of {events} in --order {first}" in err
    assert f"cannot continue in --order {second}: pass --order {first}" in err
    assert output.read_bytes() == before


@pytest.mark.parametrize("first_with_flag", [True, False])
def test_resume_with_other_close_flag_rejected(
    onnx_bundle_dir: Path,
    events: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    first_with_flag: bool,
) -> None:
    output, state_dir = tmp_path / "recs.jsonl", tmp_path / "state"
    flags = ["--state-dir", str(state_dir), "--output", str(output)]
    close_flag = ["--publish-on-session-close"]
    first, second = (close_flag, []) if first_with_flag else ([], close_flag)
    assert replay(events, onnx_bundle_dir, *flags, *first) == 0
    before = output.read_bytes()
    capsys.readouterr()

    code = replay(events, onnx_bundle_dir, *flags, *second)

    err = capsys.readouterr().err
    stored = "with" if first_with_flag else "without"
    assert code == 2
    assert f"ran {stored} --publish-on-session-close" in err
    assert output.read_bytes() == before


def test_resume_with_other_batch_size_rejected(
    onnx_bundle_dir: Path,
    events: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    output, state_dir = tmp_path / "recs.jsonl", tmp_path / "state"
    flags = ["--state-dir", str(state_dir), "--output", str(output)]
    assert replay(events, onnx_bundle_dir, *flags, "--batch-size", "8") == 0
    before = output.read_bytes()
    capsys.readouterr()

    code = replay(events, onnx_bundle_dir, *flags, "--batch-size", "16")

    err = capsys.readouterr().err
    assert code == 2
    assert "ran with --batch-size 8" in err
    assert "pass --batch-size 8" in err
    assert output.read_bytes() == before
    # The same size continues.
    assert replay(events, onnx_bundle_dir, *flags, "--batch-size", "8") == 0


def test_second_replay_on_state_dir_rejected(
    onnx_bundle_dir: Path,
    events: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    output, state_dir = tmp_path / "recs.jsonl", tmp_path / "state"
    flags = ["--state-dir", str(state_dir), "--output", str(output)]
    assert replay(events, onnx_bundle_dir, *flags) == 0  # releases its lock when it ends
    before = output.read_bytes()
    capsys.readouterr()

    # Another process holds the lock, as a replay still running would.
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(state_dir / REPLAY_LOCK_FILE)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        code = replay(events, onnx_bundle_dir, *flags)
    finally:
        holder.kill()
        holder.wait()

    assert code == 2
    assert f"another replay is using --state-dir {state_dir}" in capsys.readouterr().err
    assert output.read_bytes() == before


# Takes the lock of the file argv[1], prints "locked", and keeps the lock until killed.
HOLD_LOCK = """
import fcntl, sys, time
lock = open(sys.argv[1], "a")
fcntl.flock(lock, fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(600)
"""


# Messages of an interrupted and of a resumed replay -----------------------------------------


def send_signal_on_batch(monkeypatch: pytest.MonkeyPatch, signum: int, batch: int) -> None:
    """Send `signum` to this process when replay starts its `batch`-th batch."""
    original = Replay._run_batch
    calls = 0

    def patched(self: Replay, *args, **kwargs) -> None:
        nonlocal calls
        calls += 1
        if calls == batch:
            os.kill(os.getpid(), signum)
        original(self, *args, **kwargs)

    monkeypatch.setattr(Replay, "_run_batch", patched)


@pytest.fixture
def default_sigint() -> Iterator[None]:
    """Install Python's KeyboardInterrupt handler for SIGINT during the test, then restore it.

    A process started with SIGINT ignored (a background job of a non-interactive shell, as CI
    may run) keeps it ignored, and a SIGINT would then not stop replay.
    """
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
@pytest.mark.usefixtures("default_sigint")
def test_signal_stops_replay_with_resume_message(
    onnx_bundle_dir: Path,
    events: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    signum: int,
    code: int,
) -> None:
    expected = uninterrupted_output(events, onnx_bundle_dir, tmp_path)
    output, state_dir = tmp_path / "recs.jsonl", tmp_path / "state"
    flags = ["--batch-size", BATCH, "--state-dir", str(state_dir), "--output", str(output)]
    capsys.readouterr()

    with monkeypatch.context() as patch:
        send_signal_on_batch(patch, signum, 3)
        assert replay(events, onnx_bundle_dir, *flags) == code
    err = capsys.readouterr().err
    with StateStore(StoreConfig(path=state_dir)) as store:
        (stored,) = store.positions(f"replay:{events.resolve()}").values()
    assert replay(events, onnx_bundle_dir, *flags) == 0
    printed = capsys.readouterr().out

    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    assert stored.next_offset == 32
    assert "hiertcn-stream: interrupted after reading " in err
    assert f"--state-dir {state_dir} stores the states after the first 32 records" in err
    assert "Rerun the same command to resume after them" in err
    assert "resumed          after the first 32 records" in printed
    assert f"records          {150 - 32}" in printed
    assert output.read_text().splitlines() == expected


def test_interrupt_without_state_dir_says_nothing_saved(
    onnx_bundle_dir: Path,
    events: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    send_signal_on_batch(monkeypatch, signal.SIGTERM, 2)

    code = replay(events, onnx_bundle_dir, "--batch-size", BATCH)

    err = capsys.readouterr().err
    assert code == 143
    assert "nothing was saved" in err
    assert "a rerun replays the file from its first record" in err


def test_second_sigterm_ends_interrupted_replay(
    onnx_bundle_dir: Path, events: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from stream.commands import replay as replay_command

    handlers = []
    message = replay_command.interrupted_message

    def record_handler(*args: object) -> str:
        handlers.append(signal.getsignal(signal.SIGTERM))
        return message(*args)

    monkeypatch.setattr(replay_command, "interrupted_message", record_handler)
    send_signal_on_batch(monkeypatch, signal.SIGTERM, 2)

    assert replay(events, onnx_bundle_dir, "--batch-size", BATCH) == 143
    # While replay reports what it stored, a second SIGTERM takes the default action.
    assert handlers == [signal.SIG_DFL]


def test_report_of_first_run_has_no_resume_line(
    onnx_bundle_dir: Path, events: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert replay(events, onnx_bundle_dir, "--state-dir", str(tmp_path / "state")) == 0

    assert "resumed" not in capsys.readouterr().out


def test_replay_lock_link_rejected(
    onnx_bundle_dir: Path, events: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (state_dir / REPLAY_LOCK_FILE).symlink_to(victim)

    code = replay(events, onnx_bundle_dir, "--state-dir", str(state_dir))

    assert code == 2
    assert "is a symbolic link" in capsys.readouterr().err
    assert victim.read_text() == "precious\n"
