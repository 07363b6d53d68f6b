"""The `hiertcn-stream state` commands and the maintenance functions behind them."""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import msgpack
import numpy as np
import pytest

from statestore import (
    PartitionPosition,
    StateCodecError,
    StateStore,
    StoreConfig,
    StoreConfigError,
    UserNotFoundError,
    command,
    maintenance,
)
from statestore.codec import SCHEMA_VERSION, encode_state
from statestore.store import GIB, format_size
from tests.statestore.helpers import make_read_only, make_state

DAY = 86_400.0
MIB = 1 << 20
NEWEST = 1_700_000_000.0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hiertcn-stream")
    command.register(parser.add_subparsers(dest="command", required=True))
    return parser


def _run(*argv: str) -> int:
    args = _parser().parse_args(["state", *argv])
    return args.func(args)


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    """A store with three users of different ages and two partition positions."""
    path = tmp_path / "state"
    with StateStore(StoreConfig(path=path, sync=False)) as store:
        store.commit(
            {
                "fresh": make_state(seed=1, last_ts=NEWEST, partition=0),
                "week-old": make_state(seed=2, last_ts=NEWEST - 7 * DAY, partition=1),
                "year-old": make_state(
                    seed=3, last_ts=NEWEST - 365 * DAY, session_length=0, with_embedding=False
                ),
            },
            {
                ("interactions", 0): PartitionPosition(42, NEWEST),
                ("interactions", 1): PartitionPosition(7, NEWEST - DAY),
            },
        )
    return path


def _read_all(path: Path, users: list[str]) -> dict:
    with StateStore(StoreConfig(path=path)) as store:
        return store.read(users)


def test_stats_prints_counts(state_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run("--state-dir", str(state_dir), "stats") == 0
    output = capsys.readouterr().out
    assert "users            3" in output
    assert "open sessions    2" in output
    assert "interactions[0]@42" in output
    assert "interactions[1]@7" in output
    assert f"schema_version   {SCHEMA_VERSION}" in output


def test_stats_json_is_parseable(state_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run("--state-dir", str(state_dir), "stats", "--json") == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["users"] == 3
    assert stats["open_sessions"] == 2
    assert stats["map_size"] >= stats["used_bytes"] >= stats["data_bytes"] > 0
    assert stats["positions"][0] == {
        "topic": "interactions",
        "partition": 0,
        "next_offset": 42,
        "watermark": NEWEST,
    }


def test_stats_reports_recorded_map_size(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    # Workers started with a 1 MiB map grew it, and `stats` opens with the 1 GiB default.
    path = tmp_path / "state"
    with StateStore(StoreConfig(path=path, map_size=MIB, sync=False)) as store:
        states = {f"user-{i}": make_state(seed=i, session_length=100_000) for i in range(8)}
        store.commit(states, {})
        grown = store.map_size()
    assert MIB < grown < GIB

    assert _run("--state-dir", str(path), "stats", "--json") == 0
    assert json.loads(capsys.readouterr().out)["map_size"] == grown

    with caplog.at_level(logging.INFO, logger="statestore.store"):
        assert _run("--state-dir", str(path), "stats") == 0
    assert f"map size         {format_size(grown)}\n" in capsys.readouterr().out
    # The open line reports the same size as the output, not the 1 GiB default.
    (opened,) = [r.getMessage() for r in caplog.records if "opened state store" in r.getMessage()]
    assert f"(map {format_size(grown)}, as recorded in data.mdb," in opened


def test_stats_partition_without_event_time(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A partition that has only seen dead letters keeps the watermark -inf.
    path = tmp_path / "state"
    with StateStore(StoreConfig(path=path, sync=False)) as store:
        store.commit({}, {("interactions", 3): PartitionPosition(5, float("-inf"))})

    assert _run("--state-dir", str(path), "stats") == 0
    assert "interactions[3]@5 watermark none (no event time yet)" in capsys.readouterr().out

    assert _run("--state-dir", str(path), "stats", "--json") == 0
    stats = json.loads(capsys.readouterr().out, parse_constant=_reject_constant)
    assert stats["positions"][0]["watermark"] is None


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


def test_get_prints_state_json(state_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run("--state-dir", str(state_dir), "get", "fresh") == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["user"] == "fresh"
    assert printed["last_ts"] == NEWEST
    restored = maintenance.state_from_json(printed)
    assert restored.same_as(make_state(seed=1, last_ts=NEWEST, partition=0))


def test_get_unknown_user_raises(state_dir: Path) -> None:
    with pytest.raises(UserNotFoundError, match="'nobody' not found"):
        _run("--state-dir", str(state_dir), "get", "nobody")


def test_missing_store_is_reported(tmp_path: Path) -> None:
    with pytest.raises(StoreConfigError, match=r"data\.mdb not found"):
        _run("--state-dir", str(tmp_path / "typo"), "stats")
    assert not (tmp_path / "typo").exists()


@pytest.mark.parametrize("name", ["dump.jsonl", "dump.msgpack"])
def test_export_import_round_trip(state_dir: Path, tmp_path: Path, name: str) -> None:
    dump = tmp_path / name
    assert _run("--state-dir", str(state_dir), "export", str(dump)) == 0
    copy_dir = tmp_path / "copy"
    assert _run("--state-dir", str(copy_dir), "import", str(dump)) == 0
    users = ["fresh", "week-old", "year-old"]
    original = _read_all(state_dir, users)
    copied = _read_all(copy_dir, users)
    assert sorted(copied) == users
    for user in users:
        assert copied[user].same_as(original[user]), user
    with StateStore(StoreConfig(path=copy_dir)) as store:
        assert store.positions("interactions") == {
            0: PartitionPosition(42, NEWEST),
            1: PartitionPosition(7, NEWEST - DAY),
        }
        assert store.expired(1, float("inf"), 10) == ["week-old"]


def test_export_format_follows_suffix(state_dir: Path, tmp_path: Path) -> None:
    _run("--state-dir", str(state_dir), "export", str(tmp_path / "a.jsonl"))
    _run("--state-dir", str(state_dir), "export", str(tmp_path / "b.msgpack"))
    _run("--state-dir", str(state_dir), "export", str(tmp_path / "c.bin"), "--format", "msgpack")
    assert (tmp_path / "a.jsonl").read_bytes().startswith(b"{")
    assert not (tmp_path / "b.msgpack").read_bytes().startswith(b"{")
    assert not (tmp_path / "c.bin").read_bytes().startswith(b"{")


def test_import_keeps_old_schema_records(tmp_path: Path) -> None:
    packed = [["<f4", [2, 8], np.zeros(16, "<f4").tobytes()], ["<i4", [0], b""]]
    old = msgpack.packb(
        [0, 5.0, 0, 4.0, 1, *packed, ["<f4", [6], np.ones(6, "<f4").tobytes()]],
        use_bin_type=True,
    )
    dump = tmp_path / "old.msgpack"
    dump.write_bytes(msgpack.packb({"type": "user", "user": "legacy", "record": old}))
    assert _run("--state-dir", str(tmp_path / "s"), "import", str(dump)) == 0
    state = _read_all(tmp_path / "s", ["legacy"])["legacy"]
    assert state.last_embedding is None
    assert state.partition == -1
    assert state.last_ts == 5.0


def test_import_rejects_foreign_file(tmp_path: Path) -> None:
    dump = tmp_path / "bad.jsonl"
    dump.write_text('{"type": "user", "user": "u", "state": {}}\n')
    with pytest.raises(StateCodecError, match="record 1"):
        _run("--state-dir", str(tmp_path / "s"), "import", str(dump))
    dump.write_text('{"kind": "other"}\n')
    with pytest.raises(StateCodecError, match="type None"):
        _run("--state-dir", str(tmp_path / "s"), "import", str(dump))
    dump.write_text("{not json\n")
    with pytest.raises(StateCodecError, match="line 1"):
        _run("--state-dir", str(tmp_path / "s"), "import", str(dump))


def test_import_missing_file_is_reported(tmp_path: Path) -> None:
    with pytest.raises(StoreConfigError, match="not found"):
        _run("--state-dir", str(tmp_path / "s"), "import", str(tmp_path / "none.jsonl"))


def test_compact_writes_a_readable_copy(state_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "compacted"
    assert _run("--state-dir", str(state_dir), "compact", str(out)) == 0
    copied = _read_all(out, ["fresh", "week-old", "year-old"])
    assert len(copied) == 3
    with pytest.raises(StoreConfigError, match="already contains an LMDB store"):
        _run("--state-dir", str(state_dir), "compact", str(out))


def test_compact_rejects_file_and_uncreatable_out(state_dir: Path, tmp_path: Path) -> None:
    existing = tmp_path / "ratings.csv"
    existing.write_text("userId,movieId\n")
    with pytest.raises(StoreConfigError, match="is a file, but a compacted copy is a directory"):
        _run("--state-dir", str(state_dir), "compact", str(existing))
    assert existing.read_text() == "userId,movieId\n"

    blocked = existing / "copy"  # below a file, so the directory cannot be created
    with pytest.raises(
        StoreConfigError, match=r"cannot create the directory .*copy .*ratings\.csv is a file"
    ):
        _run("--state-dir", str(state_dir), "compact", str(blocked))


def test_state_dir_after_action(state_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run("stats", "--state-dir", str(state_dir)) == 0
    assert "users            3" in capsys.readouterr().out
    assert _run("--state-dir", str(state_dir), "stats", "--state-dir", str(state_dir)) == 0


def test_state_dir_twice_or_missing_is_rejected(state_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(StoreConfigError, match="--state-dir is given twice"):
        _run("--state-dir", str(state_dir), "stats", "--state-dir", str(tmp_path / "other"))
    with pytest.raises(StoreConfigError, match="--state-dir is missing") as raised:
        _run("stats")
    assert raised.value.exit_code == 2


def test_state_dir_that_is_a_file(tmp_path: Path) -> None:
    data_file = tmp_path / "ratings.csv"
    data_file.write_text("userId,movieId\n")
    with pytest.raises(StoreConfigError, match=r"ratings\.csv is a file, not a directory"):
        _run("--state-dir", str(data_file), "stats")
    with pytest.raises(StoreConfigError, match=r"ratings\.csv is a file, not a directory"):
        StateStore(StoreConfig(path=data_file))


def test_state_dir_under_a_file_names_the_file(tmp_path: Path) -> None:
    data_file = tmp_path / "ratings.csv"
    data_file.write_text("userId,movieId\n")
    state_dir = data_file / "state"

    with pytest.raises(StoreConfigError) as raised:
        _run("--state-dir", str(state_dir), "stats")

    message = str(raised.value)
    assert message == (
        f"state directory {state_dir} cannot exist, because {data_file} is a file, not a "
        "directory: check --state-dir"
    )
    assert "data.mdb not found" not in message
    assert raised.value.exit_code == 2


def test_store_under_a_file_names_the_file(tmp_path: Path) -> None:
    data_file = tmp_path / "ratings.csv"
    data_file.write_text("userId,movieId\n")
    state_dir = data_file / "a" / "state"

    with pytest.raises(StoreConfigError) as raised:
        StateStore(StoreConfig(path=state_dir))

    assert str(raised.value) == (
        f"cannot create state directory {state_dir}: {data_file} is a file, not a directory; "
        "choose another path"
    )
    assert data_file.read_text() == "userId,movieId\n"


def test_evict_relative_to_newest_event(
    state_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _run("--state-dir", str(state_dir), "evict", "--inactive-days", "30") == 0
    assert "evicted 1 user whose" in capsys.readouterr().out
    assert sorted(_read_all(state_dir, ["fresh", "week-old", "year-old"])) == [
        "fresh",
        "week-old",
    ]
    assert _run("--state-dir", str(state_dir), "evict", "--inactive-days", "3") == 0
    assert "evicted 1 user whose" in capsys.readouterr().out
    with StateStore(StoreConfig(path=state_dir)) as store:
        assert list(store.read(["fresh", "week-old"])) == ["fresh"]
        assert store.expired(1, float("inf"), 10) == []


def test_evict_relative_to_given_time(state_dir: Path) -> None:
    at = str(NEWEST + 400 * DAY)
    assert _run("--state-dir", str(state_dir), "evict", "--inactive-days", "100", "--at", at) == 0
    assert _read_all(state_dir, ["fresh", "week-old", "year-old"]) == {}


def test_evict_now_uses_wall_clock(state_dir: Path) -> None:
    # The fixture's newest event is in 2023, so every user is older than a day by now.
    assert _run("--state-dir", str(state_dir), "evict", "--inactive-days", "1", "--now") == 0
    assert _read_all(state_dir, ["fresh"]) == {}


def test_evict_empty_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    StateStore(StoreConfig(path=tmp_path / "s")).close()
    assert _run("--state-dir", str(tmp_path / "s"), "evict", "--inactive-days", "1") == 0
    assert "store contains no users" in capsys.readouterr().out


@pytest.mark.parametrize("days", ["nan", "inf", "-inf", "-1", "1000001", "1e308"])
def test_evict_rejects_invalid_days_before_deleting(state_dir: Path, days: str) -> None:
    with pytest.raises(StoreConfigError, match=r"--inactive-days .* is invalid"):
        _run("--state-dir", str(state_dir), "evict", f"--inactive-days={days}")
    assert len(_read_all(state_dir, ["fresh", "week-old", "year-old"])) == 3


@pytest.mark.parametrize("at", ["nan", "inf", "-1e300", "-1"])
def test_evict_rejects_invalid_at_before_deleting(state_dir: Path, at: str) -> None:
    with pytest.raises(StoreConfigError, match=r"--at .* is invalid"):
        _run("--state-dir", str(state_dir), "evict", "--inactive-days", "1", f"--at={at}")
    assert len(_read_all(state_dir, ["fresh", "week-old", "year-old"])) == 3


@pytest.mark.parametrize(("flag", "text"), [("--inactive-days", "1e-400"), ("--at", "1e400")])
def test_evict_rejects_numbers_beyond_floats(
    state_dir: Path, capsys: pytest.CaptureFixture[str], flag: str, text: str
) -> None:
    # A float reads 1e-400 as 0, which would evict every user but the newest.
    with pytest.raises(SystemExit) as raised:
        _run("--state-dir", str(state_dir), "evict", "--inactive-days", "1", f"{flag}={text}")
    assert raised.value.code == 2
    assert f"{text} is invalid: a 64-bit float reads it as " in capsys.readouterr().err
    assert len(_read_all(state_dir, ["fresh", "week-old", "year-old"])) == 3


def test_evict_rejects_at_too_large_even_for_milliseconds(state_dir: Path) -> None:
    with pytest.raises(StoreConfigError) as raised:
        _run("--state-dir", str(state_dir), "evict", "--inactive-days", "1", "--at", "1e300")

    assert str(raised.value) == (
        "--at 1e+300 is too large: pass seconds since the Unix epoch up to 100000000000"
    )


def test_evict_rejects_milliseconds_at(state_dir: Path) -> None:
    at = str(int(NEWEST * 1000))
    with pytest.raises(StoreConfigError, match="looks like milliseconds: divide it by 1000"):
        _run("--state-dir", str(state_dir), "evict", "--inactive-days", "30", "--at", at)
    assert len(_read_all(state_dir, ["fresh", "week-old", "year-old"])) == 3


def test_evict_time_bound_matches_event_decoder() -> None:
    from stream.events import MAX_TS_SECONDS

    assert maintenance.MAX_TIME_SECONDS == MAX_TS_SECONDS


def test_evict_dry_run_deletes_nothing(state_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--state-dir", str(state_dir), "evict", "--inactive-days", "3", "--dry-run"]
    assert _run(*argv) == 0
    assert "would evict 2 users" in capsys.readouterr().out
    assert len(_read_all(state_dir, ["fresh", "week-old", "year-old"])) == 3


def test_evict_cutoff_before_year_one_prints(
    state_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _run("--state-dir", str(state_dir), "evict", "--inactive-days", "1000000") == 0
    output = capsys.readouterr().out
    assert "evicted 0 users whose last event is before -715-12-17T22:13:20Z" in output


def test_evict_rejects_future_newest_event(state_dir: Path) -> None:
    with StateStore(StoreConfig(path=state_dir, sync=False)) as store:
        store.commit({"future": make_state(seed=4, last_ts=4e9, partition=0)})

    with pytest.raises(StoreConfigError, match=r"2096-10-02.*pass --now") as raised:
        _run("--state-dir", str(state_dir), "evict", "--inactive-days", "30")

    assert raised.value.exit_code == 2
    assert len(_read_all(state_dir, ["fresh", "week-old", "year-old", "future"])) == 4


def test_evict_future_newest_event_with_now(state_dir: Path) -> None:
    with StateStore(StoreConfig(path=state_dir, sync=False)) as store:
        store.commit({"future": make_state(seed=4, last_ts=4e9, partition=0)})

    assert _run("--state-dir", str(state_dir), "evict", "--inactive-days", "30", "--now") == 0
    assert list(_read_all(state_dir, ["fresh", "week-old", "year-old", "future"])) == ["future"]


def test_evict_rejects_future_at(state_dir: Path) -> None:
    at = str(time.time() + 3 * DAY)
    with pytest.raises(
        StoreConfigError, match=r"--at .* is 3 days after .* --allow-future"
    ) as raised:
        _run("--state-dir", str(state_dir), "evict", "--inactive-days", "1", "--at", at)

    assert raised.value.exit_code == 2
    assert len(_read_all(state_dir, ["fresh", "week-old", "year-old"])) == 3


def test_evict_future_at_with_allow_future(
    state_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["evict", "--inactive-days", "1", "--at", "99999999999", "--allow-future", "--dry-run"]

    assert _run("--state-dir", str(state_dir), *argv) == 0
    assert "would evict 3 users whose last event is before 5138-" in capsys.readouterr().out


def test_evict_future_newest_event_with_allow_future(state_dir: Path) -> None:
    with StateStore(StoreConfig(path=state_dir, sync=False)) as store:
        store.commit({"future": make_state(seed=4, last_ts=4e9, partition=0)})

    argv = ["evict", "--inactive-days", "30", "--allow-future"]
    assert _run("--state-dir", str(state_dir), *argv) == 0
    assert list(_read_all(state_dir, ["fresh", "week-old", "year-old", "future"])) == ["future"]


def test_evicted_store_opens_for_replay_quietly(
    state_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from stream.replay import open_store_states

    with StateStore(StoreConfig(path=state_dir, bundle_version="old", sync=False)):
        pass
    assert _run("--state-dir", str(state_dir), "evict", "--inactive-days", "0", "--now") == 0

    with caplog.at_level(logging.WARNING):
        states = open_store_states(state_dir, "/data/other.csv", "new", (1, 16), 16)
        states.store.close()

    assert caplog.records == []


def test_evict_help_names_default_reference(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        _parser().parse_args(["state", "--state-dir", "s", "evict", "--help"])

    output = " ".join(capsys.readouterr().out.split())
    assert "Without --now or --at, the reference time is the newest event time" in output
    assert "not the current time" in output


def test_iter_records_crosses_chunks(tmp_path: Path) -> None:
    with StateStore(StoreConfig(path=tmp_path / "s", sync=False)) as store:
        states = {f"u{i:03d}": make_state(seed=i) for i in range(25)}
        store.commit(states)
        records = list(maintenance.iter_records(store, chunk_size=4))
    assert [user for user, _ in records] == sorted(states)
    assert records[3][1] == encode_state(states["u003"])


def test_state_help_lists_every_action(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        _parser().parse_args(["state", "--help"])
    output = capsys.readouterr().out
    for action in ("stats", "get", "export", "import", "compact", "evict"):
        assert action in output


def test_state_subcommands_have_descriptions() -> None:
    state_parser = next(a for a in _parser()._actions if a.choices).choices["state"]
    actions = next(a for a in state_parser._actions if a.choices)
    for name, parser in actions.choices.items():
        assert parser.description, f"state {name} has no description"


def test_read_only_state_dir_exits_2(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from stream.cli import main

    make_read_only(state_dir, monkeypatch)

    code = main(["state", "--state-dir", str(state_dir), "stats"])

    err = capsys.readouterr().err
    assert code == 2
    assert f"hiertcn-stream: error: LMDB open failed in state store {state_dir}" in err
    assert "pass a writable --state-dir" in err


def test_state_help_marks_state_dir_required(capsys: pytest.CaptureFixture[str]) -> None:
    from stream.cli import main

    for argv in (["state", "--help"], ["state", "get", "--help"]):
        with pytest.raises(SystemExit):
            main(argv)
        printed = " ".join(capsys.readouterr().out.split())
        assert "required, before or after ACTION" in printed, argv
    assert "exit status: 0 when the state was printed; 1 when USER is not in the store" in printed


def _listing(state_dir: Path) -> dict[str, tuple[int, int, int]]:
    """Return the size, mtime and inode of every file in `state_dir`, by name."""
    return {
        path.name: (path.stat().st_size, path.stat().st_mtime_ns, path.stat().st_ino)
        for path in state_dir.iterdir()
    }


READ_ACTIONS = [
    ["stats"],
    ["stats", "--json"],
    ["get", "fresh"],
    ["export", "EXPORT"],
    ["compact", "COPY"],
    ["evict", "--inactive-days", "1", "--dry-run"],
]


@pytest.mark.parametrize("action", READ_ACTIONS, ids=lambda action: " ".join(action))
def test_read_action_writes_nothing(state_dir: Path, tmp_path: Path, action: list[str]) -> None:
    # Without lock.mdb, as in a copied directory that no writer has opened since.
    for name in ("lock.mdb", "writers.lock"):
        (state_dir / name).unlink(missing_ok=True)
    before = _listing(state_dir)
    data_before = (state_dir / "data.mdb").read_bytes()
    argv = [str(tmp_path / arg) if arg in ("EXPORT", "COPY") else arg for arg in action]

    assert _run("--state-dir", str(state_dir), *argv) == 0

    assert _listing(state_dir) == before
    assert (state_dir / "data.mdb").read_bytes() == data_before


@pytest.mark.parametrize("action", READ_ACTIONS, ids=lambda action: " ".join(action))
def test_empty_data_file_rejected(tmp_path: Path, action: list[str]) -> None:
    state_dir = tmp_path / "zero"
    state_dir.mkdir()
    (state_dir / "data.mdb").touch()
    argv = [str(tmp_path / arg) if arg in ("EXPORT", "COPY") else arg for arg in action]

    with pytest.raises(StoreConfigError) as raised:
        _run("--state-dir", str(state_dir), *argv)

    assert str(raised.value).startswith(
        f"{state_dir / 'data.mdb'} is empty (0 bytes), so it contains no LMDB store: "
        "check --state-dir"
    )
    assert raised.value.exit_code == 2
    assert [path.name for path in state_dir.iterdir()] == ["data.mdb"]
    assert (state_dir / "data.mdb").stat().st_size == 0


def test_stats_rejects_non_lmdb_file(tmp_path: Path) -> None:
    state_dir = tmp_path / "random"
    state_dir.mkdir()
    content = np.random.default_rng(7).bytes(65536)
    (state_dir / "data.mdb").write_bytes(content)

    with pytest.raises(StoreConfigError) as raised:
        _run("--state-dir", str(state_dir), "stats")

    assert str(raised.value).startswith(f"{state_dir / 'data.mdb'} is not an LMDB file (")
    assert str(raised.value).endswith("): check --state-dir")
    assert [path.name for path in state_dir.iterdir()] == ["data.mdb"]
    assert (state_dir / "data.mdb").read_bytes() == content


def test_stats_names_missing_state_dir(tmp_path: Path) -> None:
    missing = tmp_path / "missing"

    with pytest.raises(StoreConfigError) as raised:
        _run("--state-dir", str(missing), "stats")

    assert str(raised.value) == (
        f"state directory {missing} does not exist, so it contains no LMDB store "
        "(data.mdb not found): check --state-dir"
    )
    assert not missing.exists()


def test_read_only_store_rejects_missing_dir(tmp_path: Path) -> None:
    missing = tmp_path / "missing"

    with pytest.raises(StoreConfigError, match="does not exist: check --state-dir"):
        StateStore(StoreConfig(path=missing, writer_lock="none", read_only=True))

    assert not missing.exists()


def test_read_only_store_needs_no_writer_lock(tmp_path: Path) -> None:
    with pytest.raises(StoreConfigError, match="writer_lock 'shared' is invalid with read_only"):
        StoreConfig(path=tmp_path, read_only=True)


def test_read_only_store_rejects_foreign_environment(tmp_path: Path) -> None:
    import lmdb

    lmdb.open(str(tmp_path), max_dbs=1).close()

    with pytest.raises(StoreConfigError, match="has no 'users' database"):
        StateStore(StoreConfig(path=tmp_path, writer_lock="none", read_only=True))
