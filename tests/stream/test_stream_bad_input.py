"""Tests of `replay` and `produce` on bad input: unreadable event files, an existing --output,
misspelled column keys, mostly rejected logs, range errors and interrupts.

The replay tests run the command on the real ONNX bundle of `conftest.py`. The produce tests
replace the Kafka producer with a fake one.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
from pathlib import Path

import pytest

from stream.cli import main
from stream.errors import ConfigError
from stream.produce import EventProducer, ProduceConfig
from stream.records import EventFileError, read_records
from stream.replay import ReplayReport
from stream.replay_report import format_report, mostly_rejected_warning
from tests.stream.conftest import write_event_log
from tests.stream.test_produce import FakeProducer


def replay(events: Path, bundle: Path, *flags: str) -> int:
    return main(["replay", "--events", str(events), "--bundle", str(bundle), *flags])


@pytest.fixture
def events(tmp_path: Path) -> Path:
    path = tmp_path / "events.jsonl"
    write_event_log(path, 40, seed=5)
    return path


class QueueingProducer(FakeProducer):
    """A fake producer whose `len` is the count of queued messages, as librdkafka's is."""

    def __len__(self) -> int:
        return len(self.pending)


def produce(
    monkeypatch: pytest.MonkeyPatch, events: Path, *extra: str, producer: FakeProducer | None = None
) -> int:
    from stream.commands import produce as produce_command

    def fake_producer(config: ProduceConfig) -> EventProducer:
        return EventProducer(config, producer if producer is not None else QueueingProducer())

    monkeypatch.setattr(produce_command, "EventProducer", fake_producer)
    argv = ["produce", "--events", str(events), "--brokers", "127.0.0.1:1", "--topic", "t"]
    return main([*argv, *extra])


# Unreadable event files ----------------------------------------------------------------------


def test_fifo_events_rejected(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fifo = tmp_path / "events.jsonl"
    os.mkfifo(fifo)

    with pytest.raises(EventFileError, match="is not a regular file") as error:
        read_records(fifo)

    assert str(fifo) in str(error.value)
    assert "pass that file to --events" in str(error.value)


def test_permission_denied_events_exit_2(
    onnx_bundle_dir: Path,
    events: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    original_open = pathlib.Path.open

    def denying_open(self: Path, *args, **kwargs):
        if self == events:
            raise PermissionError(13, "Permission denied", str(self))
        return original_open(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "open", denying_open)

    replay_flags = ["replay", "--bundle", str(onnx_bundle_dir)]
    for command in (replay_flags, ["produce", "--brokers", "b", "--topic", "t"]):
        code = main([command[0], "--events", str(events), *command[1:]])

        err = capsys.readouterr().err
        assert code == 2, command
        assert f"event file {events} cannot be read (Permission denied)" in err
        assert "pass a file you can read to --events" in err
        assert "Traceback" not in err


def test_folder_events_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["produce", "--events", str(tmp_path), "--brokers", "b", "--topic", "t"])

    assert code == 2
    assert f"event file {tmp_path} is a folder" in capsys.readouterr().err


# An existing --output ------------------------------------------------------------------------


def test_existing_output_rejected_without_force(
    onnx_bundle_dir: Path, events: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    precious = tmp_path / "precious.txt"
    precious.write_text("precious\n")

    code = replay(events, onnx_bundle_dir, "--output", str(precious))

    assert code == 2
    err = capsys.readouterr().err
    assert f"--output {precious} already exists: pass --force to replace it" in err
    assert precious.read_text() == "precious\n"


def test_output_symlink_rejected_without_force(
    onnx_bundle_dir: Path, events: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "shared.csv"
    target.write_text("user,item\n")
    link = tmp_path / "link.csv"
    link.symlink_to(target)
    dangling = tmp_path / "dangling.jsonl"
    dangling.symlink_to(tmp_path / "missing" / "x.jsonl")

    for output in (link, dangling):
        code = replay(events, onnx_bundle_dir, "--output", str(output), "--state-dir",
                      str(tmp_path / f"state-{output.name}"))  # fmt: skip

        assert code == 2, output
        assert "already exists" in capsys.readouterr().err
    assert target.read_text() == "user,item\n"


def test_existing_output_replaced_with_force(
    onnx_bundle_dir: Path, events: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "recs.jsonl"
    output.write_text("old\n")

    code = replay(events, onnx_bundle_dir, "--output", str(output), "--force")

    assert code == 0
    lines = output.read_text().splitlines()
    assert "old" not in lines
    assert json.loads(lines[0])["user"]


def test_force_replaces_a_symlink_not_its_target(
    onnx_bundle_dir: Path, events: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "shared.csv"
    target.write_text("user,item\n")
    link = tmp_path / "link.jsonl"
    link.symlink_to(target)

    code = replay(events, onnx_bundle_dir, "--output", str(link), "--force")

    assert code == 0
    assert not link.is_symlink()
    assert json.loads(link.read_text().splitlines()[0])["user"]
    assert target.read_text() == "user,item\n"


def test_force_replaces_a_hard_link_not_its_file(
    onnx_bundle_dir: Path, events: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("".join(f"{n}\n" for n in range(1, 1001)))
    before = victim.read_text()
    hard_link = tmp_path / "hard.jsonl"
    os.link(victim, hard_link)

    with caplog.at_level("INFO", logger="stream.replay"):
        code = replay(events, onnx_bundle_dir, "--output", str(hard_link), "--force")

    assert code == 0
    assert victim.read_text() == before
    assert victim.stat().st_nlink == 1
    assert json.loads(hard_link.read_text().splitlines()[0])["user"]
    assert (
        f"replaced --output {hard_link} with a new file, and the old file keeps its content "
        "under its other names (1)"
    ) in caplog.text


def test_force_on_link_to_directory_rejected(
    onnx_bundle_dir: Path, events: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "folder"
    folder.mkdir()
    link = tmp_path / "folder-link"
    link.symlink_to(folder)

    code = replay(events, onnx_bundle_dir, "--output", str(link), "--force")

    assert code == 2
    assert f"--output {link} is a directory: pass a file path" in capsys.readouterr().err
    assert link.is_symlink()
    assert list(folder.iterdir()) == []


def test_force_help_names_directory_rejection(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["replay", "--help"])

    help_text = " ".join(capsys.readouterr().out.split())
    assert "an existing file or link at --output is replaced by a new file" in help_text
    assert "the file a link points to is left as it is" in help_text
    assert "A directory, or a link to one, is rejected" in help_text


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0", "--session-gap 0 is invalid: use a value from 0.001 to 31536000"),
        ("1e12", "--session-gap 1000000000000 is invalid: use a value from 0.001 to 31536000"),
        ("-5", "--session-gap -5 is invalid: use a value from 0.001 to 31536000"),
        ("nan", "--session-gap nan is invalid: use a finite number"),
        ("inf", "--session-gap inf is invalid: use a finite number"),
    ],
)
def test_replay_session_gap_range_matches_run(
    onnx_bundle_dir: Path,
    events: Path,
    capsys: pytest.CaptureFixture[str],
    value: str,
    message: str,
) -> None:
    code = replay(events, onnx_bundle_dir, "--session-gap", value)

    err = capsys.readouterr().err
    assert code == 2
    assert f"hiertcn-stream: error: {message}\n" in err


def test_run_session_gap_message_matches_replay() -> None:
    from stream.config import WorkerConfig

    with pytest.raises(ConfigError) as raised:
        WorkerConfig(brokers="127.0.0.1:1", bundle=Path("b"), session_gap=0.0)

    assert str(raised.value) == "--session-gap 0 is invalid: use a value from 0.001 to 31536000"


def test_resume_continues_output_without_force(
    onnx_bundle_dir: Path, events: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "recs.jsonl"
    state = ["--state-dir", str(tmp_path / "state"), "--output", str(output)]
    assert replay(events, onnx_bundle_dir, *state) == 0
    written = output.read_bytes()

    code = replay(events, onnx_bundle_dir, *state)

    assert code == 0
    assert "already exists" not in capsys.readouterr().err
    assert output.read_bytes() == written


# Misspelled column flags and mostly rejected logs --------------------------------------------


def test_misspelled_user_key_stops_replay(
    onnx_bundle_dir: Path, events: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = replay(events, onnx_bundle_dir, "--user-col", "nosuch")

    captured = capsys.readouterr()
    assert code == 2
    assert "key 'nosuch', which --user-col names, is missing from each of the first 40" in (
        captured.err
    )
    assert "whose keys are 'user', 'item', 'ts'" in captured.err
    assert "pass the key that holds the user id to --user-col" in captured.err
    assert "Recall@" not in captured.out


def test_key_missing_in_some_records_not_stopped(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    lines = [{"uid": "u1", "item": "1", "ts": 10}, {"user": "u2", "item": "2", "ts": 11}]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))

    records = list(read_records(path, user_col="uid"))

    assert records[0].fields is not None
    assert records[1].fields is None
    assert "which --user-col names, is missing" in str(records[1].error)


def test_mostly_rejected_report_warns() -> None:
    report = ReplayReport()
    report.records = 100
    report.accepted = 10
    report.rejected.update({"unknown_item": 80, "invalid_ts": 10})

    text = format_report(report, 10, "m")

    warning = text.splitlines()[-1]
    assert warning.startswith("WARNING: 90 of 100 records (90%) were rejected")
    assert "most often: unknown_item 80, invalid_ts 10" in warning
    assert "trained on another data set" in warning


def test_half_rejected_report_silent() -> None:
    report = ReplayReport()
    report.records = 100
    report.accepted = 50
    report.rejected.update({"missing_user": 50})

    assert mostly_rejected_warning(report) is None
    report.rejected.update({"missing_user": 1})
    assert "check --format and the column flags" in str(mostly_rejected_warning(report))


def test_replay_of_foreign_catalog_warns(
    onnx_bundle_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "foreign.jsonl"
    lines = [{"user": f"u{n % 3}", "item": "1" if n < 2 else f"x{n}", "ts": 1000 + n}
             for n in range(20)]  # fmt: skip
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))

    code = replay(path, onnx_bundle_dir)

    out = capsys.readouterr().out
    assert code == 0
    assert "WARNING: 18 of 20 records (90%) were rejected (most often: unknown_item 18)" in out


# produce: range errors and interrupts --------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"rate": 0.0},
            "--rate 0 is invalid: use at least 1e-6 events per second (one event per 1000000 "
            "s), or leave --rate out to publish as fast as possible",
        ),
        ({"limit": -1}, "--limit -1 is invalid: use an integer >= 0"),
    ],
)
def test_produce_range_errors_name_flag(changes: dict, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        ProduceConfig(brokers="b", topic="t", **changes)

    assert str(error.value) == message


class InterruptingProducer(QueueingProducer):
    """Raises KeyboardInterrupt, or `Terminated`, at the third produce; delivers at flush."""

    def __init__(self, interrupt: type[BaseException]) -> None:
        super().__init__()
        self.interrupt = interrupt
        self.flush_timeouts: list[float] = []

    def produce(self, topic, value, key, on_delivery) -> None:
        if len(self.sent) == 3:
            raise self.interrupt
        self.sent.append((topic, key, value))
        self.pending.append(on_delivery)

    def poll(self, timeout: float) -> int:
        return 0  # messages stay queued until the flush

    def flush(self, timeout: float) -> int:
        self.flush_timeouts.append(timeout)
        delivered = self.pending[:2]
        self.pending = self.pending[2:]
        for callback in delivered:
            callback(None, _Message())
        return len(self.pending)


class _Message:
    def partition(self) -> int:
        return 0

    def topic(self) -> str:
        return "t"


@pytest.mark.parametrize(("signal_number", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_produce_interrupt_flushes_and_counts(
    events: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    signal_number: int,
    code: int,
) -> None:
    from hiertcn.errors import Terminated

    interrupt = Terminated if signal_number == signal.SIGTERM else KeyboardInterrupt
    producer = InterruptingProducer(interrupt)

    result = produce(monkeypatch, events, producer=producer)

    captured = capsys.readouterr()
    assert result == code
    assert producer.flush_timeouts == [10.0]
    assert "produced 3, delivered 2, failed 0" in captured.out
    assert f"interrupted after producing the events of {events} up to its line 3" in captured.err
    assert "0 failed and 1 still queued" in captured.err
    assert "publish a file of the events after line 3" in captured.err


def test_produce_sigterm_handler_restored(events: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = signal.getsignal(signal.SIGTERM)

    assert produce(monkeypatch, events) == 0

    assert signal.getsignal(signal.SIGTERM) == before
