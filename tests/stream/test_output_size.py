"""The bound of an output message's size, and the start checks of `run` and `replay` on it."""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import msgpack
import pytest
from confluent_kafka import Producer

from export.manifest import ITEM_IDS_FILE
from stream.cli import main
from stream.config import (
    OUTPUT_MESSAGE_MARGIN_BYTES,
    WorkerConfig,
    build_config,
    check_output_size,
    max_output_bytes,
)
from stream.dead_letters import DEFAULT_MESSAGE_MAX_BYTES
from stream.errors import ConfigError
from stream.events import EventConfig
from stream.pipeline import SESSION_CLOSE_TRIGGER, Recommendation
from tests.export.test_graph_signature import rehash
from tests.stream.fake_bundle import FakeBundle, FakeManifest
from tests.stream.test_run_command import no_pool, run_args  # noqa: F401 (fixture)

MAX_ID_LENGTH = EventConfig().max_id_length
# A catalog whose ids all have the maximum length, in 2-byte UTF-8 characters.
LONG_IDS = [f"{row:04d}" + "é" * (MAX_ID_LENGTH - 4) for row in range(5000)]


def largest_output(item_ids: list[str], version: str) -> Recommendation:
    longest_id = "\U0001f600" * MAX_ID_LENGTH  # 4 bytes in UTF-8, the most a character takes
    return Recommendation(
        user=longest_id,
        event_id=longest_id,
        ts=1.7e9,
        items=tuple(item_ids),
        scores=tuple(float(row) for row in range(len(item_ids))),
        model=version,
        session=2**40,
        trigger=SESSION_CLOSE_TRIGGER,
    )


def long_id_bundle(k: int) -> FakeBundle:
    bundle = FakeBundle(num_items=len(LONG_IDS), manifest=FakeManifest(top_k=k))
    bundle.item_ids = LONG_IDS
    return bundle


def config_with(k: int | None, *kafka: str) -> WorkerConfig:
    options = {"brokers": "127.0.0.1:1", "bundle": Path("bundle"), "k": k}
    return build_config(options, {}, list(kafka))


# The bound.


@pytest.mark.parametrize("k", [1, 15, 16, 100, 3000])
def test_bound_covers_largest_output(k: int) -> None:
    output = largest_output(LONG_IDS[:k], "abcdef012345")
    key = output.user.encode("utf-8")
    value = msgpack.packb(output.to_dict(), use_bin_type=True)

    bound = max_output_bytes(LONG_IDS, k, "abcdef012345")

    assert len(key) + len(value) <= bound - OUTPUT_MESSAGE_MARGIN_BYTES
    # The bound is tight: it allows only the margin and a few bytes of msgpack headers more.
    assert bound - OUTPUT_MESSAGE_MARGIN_BYTES - len(key) - len(value) < 16


def test_bound_takes_longest_ids_in_bytes() -> None:
    # One 4-byte character is longer in UTF-8 than three ASCII characters.
    item_ids = ["abc", "\U0001f600", "a", "bb"]

    one_item = max_output_bytes(item_ids, 1, "abcdef012345")
    two_items = max_output_bytes(item_ids, 2, "abcdef012345")

    assert two_items - one_item == len(msgpack.packb("abc")) + len(msgpack.packb(0.0))
    assert one_item - max_output_bytes(["a"], 1, "abcdef012345") == 3


def test_bound_accepted_by_librdkafka() -> None:
    # librdkafka checks the size in produce(), before it connects to any broker.
    k = 300
    output = largest_output(LONG_IDS[:k], "abcdef012345")
    bound = max_output_bytes(LONG_IDS, k, "abcdef012345")
    source = "t" * 249 + f"[{2**31 - 1}]@{2**63 - 1}"
    headers = [("hiertcn.worker", b"4194304"), ("hiertcn.source", source.encode())]
    producer = Producer(
        {"bootstrap.servers": "127.0.0.1:1", "message.max.bytes": bound, "log_level": 0}
    )

    producer.produce(
        "recommendations",
        key=output.user.encode("utf-8"),
        value=msgpack.packb(output.to_dict(), use_bin_type=True),
        headers=headers,
    )

    # The purged message leaves the queue once its delivery report is served, which flush()
    # does. A timeout of 0 can return before that, so the count then still reads 1.
    producer.purge()
    assert producer.flush(5) == 0


# The check of `run`.


def test_k_within_limit_passes() -> None:
    check_output_size(config_with(1500), long_id_bundle(5))


def test_k_above_limit_names_k_bound_and_fix() -> None:
    bundle = long_id_bundle(5)
    bound = max_output_bytes(LONG_IDS, 4000, "fake00000000")

    with pytest.raises(ConfigError) as raised:
        check_output_size(config_with(4000), bundle)

    message = str(raised.value)
    assert bound > DEFAULT_MESSAGE_MAX_BYTES
    assert f"with --k 4000, an output message can reach {bound} bytes" in message
    assert "above the producer's message.max.bytes of 1000000" in message
    assert f"set -X message.max.bytes={bound} or more" in message
    fitting = int(re.search(r"lower --k to (\d+) or less", message).group(1))
    assert max_output_bytes(LONG_IDS, fitting, "fake00000000") <= DEFAULT_MESSAGE_MAX_BYTES
    assert max_output_bytes(LONG_IDS, fitting + 1, "fake00000000") > DEFAULT_MESSAGE_MAX_BYTES


def test_bundle_top_k_checked_without_k_flag() -> None:
    with pytest.raises(ConfigError, match="with the bundle's top_k 4000 \\(no --k\\)"):
        check_output_size(config_with(None), long_id_bundle(4000))


def test_kafka_setting_raises_limit() -> None:
    bound = max_output_bytes(LONG_IDS, 4000, "fake00000000")

    check_output_size(config_with(4000, f"message.max.bytes={bound}"), long_id_bundle(5))
    with pytest.raises(ConfigError, match=f"message.max.bytes of {bound - 1}"):
        check_output_size(config_with(4000, f"message.max.bytes={bound - 1}"), long_id_bundle(5))


def test_kafka_setting_lowers_limit() -> None:
    config = config_with(5, "message.max.bytes=6000")
    fitting = max(k for k in range(1, 5) if max_output_bytes(LONG_IDS, k, "x" * 12) <= 6000)

    with pytest.raises(ConfigError) as raised:
        check_output_size(config, long_id_bundle(5))

    message = str(raised.value)
    assert "above the producer's message.max.bytes of 6000" in message
    assert f"lower --k to {fitting} or less" in message
    assert 1 < fitting < 5


def test_limit_below_one_output_suggests_only_setting() -> None:
    with pytest.raises(ConfigError) as raised:
        check_output_size(config_with(1, "message.max.bytes=1000"), long_id_bundle(5))

    message = str(raised.value)
    assert "lower --k" not in message
    assert "set -X message.max.bytes" in message


def write_long_id_bundle(onnx_bundle_dir: Path, copy: Path) -> Path:
    """Copy the stream tests' bundle with item ids of the maximum length."""
    shutil.copytree(onnx_bundle_dir, copy)
    item_ids = json.loads((copy / ITEM_IDS_FILE).read_text())
    long_ids = [f"{row:04d}" + "é" * (MAX_ID_LENGTH - 4) for row in range(len(item_ids))]
    (copy / ITEM_IDS_FILE).write_text(json.dumps(long_ids))
    rehash(copy, ITEM_IDS_FILE)
    return copy


def test_run_output_above_limit_exits_2(
    onnx_bundle_dir: Path,
    tmp_path: Path,
    no_pool: list[WorkerConfig],  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    bundle = write_long_id_bundle(onnx_bundle_dir, tmp_path / "bundle")

    code = main(run_args(bundle, tmp_path / "state", "--k", "100", "-X", "message.max.bytes=20000"))

    error = capsys.readouterr().err
    assert code == 2
    assert "--k 100, an output message can reach" in error
    assert "above the producer's message.max.bytes of 20000" in error
    assert len(error.strip().splitlines()) == 1
    assert not no_pool
    assert not (tmp_path / "state").exists()


@pytest.mark.parametrize(("k", "warned"), [(100, True), (5, False)])
def test_replay_warns_about_output_size(
    onnx_bundle_dir: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    k: int,
    warned: bool,
) -> None:
    bundle = write_long_id_bundle(onnx_bundle_dir, tmp_path / "bundle")
    item = json.loads((bundle / ITEM_IDS_FILE).read_text())[0]
    events = tmp_path / "events.jsonl"
    events.write_text(json.dumps({"user": "u", "item": item, "ts": 1000}) + "\n")
    # With 120 items of 508 bytes, no K reaches the real default of 1,000,000 bytes.
    monkeypatch.setattr("stream.commands.replay.DEFAULT_MESSAGE_MAX_BYTES", 20_000)
    caplog.set_level(logging.WARNING, logger="stream.commands.replay")

    code = main(["replay", "--events", str(events), "--bundle", str(bundle), "--k", str(k)])

    warnings = [
        record.message for record in caplog.records if "message.max.bytes" in record.message
    ]
    assert code == 0
    if warned:
        bound = max_output_bytes(LONG_IDS, k, "x" * 12)
        assert warnings == [
            f"with K={k} an output can reach {bound} bytes, above Kafka's default "
            f"message.max.bytes of 20000: `hiertcn-stream run` with this K needs "
            f"-X message.max.bytes={bound} or more"
        ]
    else:
        assert warnings == []


@pytest.mark.parametrize(
    ("k", "kafka", "message"),
    [
        (500, [], "--k 500 is invalid because the bundle has only 120 items"),
        (5, ["message.max.bytes=1000"], "above the producer's message.max.bytes of 1000"),
    ],
)
def test_worker_checks_bundle_again(
    onnx_bundle_dir: Path, tmp_path: Path, k: int, kafka: list[str], message: str
) -> None:
    from stream.worker import run_worker

    options = {"brokers": "127.0.0.1:1", "bundle": onnx_bundle_dir, "k": k}
    config = build_config(options, {}, kafka, state_dir=tmp_path / "state")

    with pytest.raises(ConfigError, match=re.escape(message)):
        run_worker(config, 0, threads=1)

    assert not (tmp_path / "state").exists()
