"""`ops/kafka/kafka.sh stop --keep-data`, `start` on kept data, and `restart`.

Starts the real broker of ops/kafka/kafka.sh on 127.0.0.1; skipped where Java or the jars are
missing (`make test` fetches them).
"""

from __future__ import annotations

import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from ops.kafka.admin import create_topics
from ops.kafka.broker import KAFKA_SCRIPT, BrokerConfig, LocalBroker

JARS_COMPLETE = KAFKA_SCRIPT.parent / "lib" / ".complete"

pytestmark = pytest.mark.skipif(
    shutil.which("java") is None or not JARS_COMPLETE.is_file(),
    reason="Java 17 or the Kafka jars (ops/kafka/kafka.sh fetch) are missing",
)


def _script(state_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = ["bash", str(KAFKA_SCRIPT), *args, "--state-dir", str(state_dir)]
    return subprocess.run(command, capture_output=True, text=True, check=False, timeout=180)


def _produce(bootstrap: str, topic: str, value: bytes) -> None:
    producer = Producer({"bootstrap.servers": bootstrap})
    producer.produce(topic, value=value)
    assert producer.flush(30) == 0


def _end_offset(bootstrap: str, topic: str) -> int:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"reader-{uuid.uuid4()}"})
    try:
        _, high = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=30)
    finally:
        consumer.close()
    return high


def test_stop_keep_data_then_start_resumes(tmp_path: Path) -> None:
    state_dir = tmp_path / "kafka"
    broker = LocalBroker(BrokerConfig(state_dir=state_dir))
    bootstrap = broker.start()
    data_dir = Path((state_dir / "data_dir").read_text().strip())
    try:
        # `--brokers "$(kafka.sh status)"` needs HOST:PORT alone on stdout.
        running = _script(state_dir, "status")
        assert running.returncode == 0, running.stderr
        assert running.stdout == f"{bootstrap}\n"
        assert running.stderr.startswith("running: pid ")

        create_topics(bootstrap, ["drill"], partitions=1)
        _produce(bootstrap, "drill", b"before the outage")

        broker.stop(keep_data=True)
        status = _script(state_dir, "status")
        assert status.returncode == 3
        assert status.stdout == ""
        assert f"'start' resumes it on {bootstrap}" in status.stderr
        assert data_dir.is_dir()

        assert broker.start() == bootstrap
        assert _end_offset(bootstrap, "drill") == 1

        # Restart keeps the port, so another --port is a bad value: exit 2, broker untouched.
        port = int(bootstrap.rsplit(":", 1)[1])
        other = _script(state_dir, "restart", "--port", str(port % 65535 + 1))
        assert other.returncode == 2, other.stderr
        assert "restart keeps its port: omit --port" in other.stderr

        restarted = _script(state_dir, "restart")
        assert restarted.returncode == 0, restarted.stderr
        assert restarted.stdout.strip().splitlines()[-1] == bootstrap
        _produce(bootstrap, "drill", b"after the restart")
        assert _end_offset(bootstrap, "drill") == 2
    finally:
        broker.stop()
    assert not data_dir.exists()
    assert not (state_dir / "kept").exists()


def test_plain_stop_still_deletes_data(tmp_path: Path) -> None:
    state_dir = tmp_path / "kafka"
    broker = LocalBroker(BrokerConfig(state_dir=state_dir))
    broker.start()
    data_dir = Path((state_dir / "data_dir").read_text().strip())

    broker.stop()

    assert not data_dir.exists()
    assert not (state_dir / "data_dir").exists()


def test_linked_state_dir_found_by_status_and_stop(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real)
    started = _script(link, "start")
    assert started.returncode == 0, started.stderr
    data_dir = Path((real / "data_dir").read_text().strip())
    try:
        status = _script(link, "status")
        assert status.returncode == 0, status.stderr
        assert status.stdout == started.stdout.strip().splitlines()[-1] + "\n"
    finally:
        stopped = _script(link, "stop")

    assert stopped.returncode == 0, stopped.stderr
    assert "stopped the broker" in stopped.stdout + stopped.stderr
    assert _script(link, "status").returncode == 3
    assert not data_dir.exists()


def test_restart_without_broker_or_kept_data_fails(tmp_path: Path) -> None:
    completed = _script(tmp_path / "kafka", "restart")

    assert completed.returncode == 1
    assert "no broker running" in completed.stderr
    assert "use " in completed.stderr


def test_status_without_broker_prints_nothing(tmp_path: Path) -> None:
    completed = _script(tmp_path / "kafka", "status")

    assert completed.returncode == 3
    assert completed.stdout == ""
    assert "not running (state folder " in completed.stderr


def test_keep_data_only_with_stop(tmp_path: Path) -> None:
    completed = _script(tmp_path / "kafka", "start", "--keep-data")

    assert completed.returncode == 2
    assert "--keep-data is an option of stop only" in completed.stderr


def test_help_lists_keep_data_and_restart() -> None:
    completed = subprocess.run(
        ["bash", str(KAFKA_SCRIPT), "--help"], capture_output=True, text=True, check=True
    )

    assert "stop [--timeout S] [--keep-data]" in completed.stdout
    assert "restart [--timeout S]" in completed.stdout
    assert "Environment: KAFKA_HEAP_OPTS" in completed.stdout
