"""Fixtures for tests that talk to a real Kafka broker.

`kafka_bootstrap` picks the broker once per test session, in this order:

1. `KAFKA_BOOTSTRAP_SERVERS` when set (a broker that CI or a developer already started; its log is
   printed on failure when `KAFKA_BROKER_LOG` names the file);
2. a testcontainers KafkaContainer when a Docker engine responds;
3. the local broker of ops/kafka/kafka.sh, started here and stopped at the end of the session.

Every test in this folder gets the `integration` marker, so `pytest -m "not integration"` skips
them all. Topics are created with `ops.kafka.admin.create_topics`, named with `unique_topic`.
"""

from __future__ import annotations

import logging
import os
import re
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import pytest

from ops.kafka.broker import BrokerConfig, LocalBroker

logger = logging.getLogger(__name__)

INTEGRATION_DIR = Path(__file__).resolve().parent
LOG_TAIL_LINES = 60

# The broker log file of the current session, for the failure report; None when unknown.
broker_log_key = pytest.StashKey[Path | None]()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Add the `integration` marker to every test collected from this folder."""
    for item in items:
        if INTEGRATION_DIR in item.path.parents:
            item.add_marker(pytest.mark.integration)


def docker_engine_answers() -> bool:
    """Return whether a Docker engine responds to a ping through the Docker SDK."""
    try:
        import docker
    except ImportError:
        return False
    try:
        client = docker.from_env(timeout=3)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:  # docker.errors.DockerException wraps every kind of connection failure
        return False


def start_docker_kafka() -> AbstractContextManager[str]:
    """Start a KafkaContainer (KRaft) with testcontainers. The context yields its bootstrap address.

    NOTE: not run on the project's machines, because no Docker engine runs there. CI and the
    developers exercise the local broker path of `kafka_bootstrap` instead.
    """
    from contextlib import contextmanager

    from testcontainers.kafka import KafkaContainer

    @contextmanager
    def running() -> Iterator[str]:
        with KafkaContainer().with_kraft() as container:
            yield container.get_bootstrap_server()

    return running()


@pytest.fixture(scope="session")
def kafka_bootstrap(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """The bootstrap address HOST:PORT of a running Kafka broker for this test session."""
    configured = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if configured:
        log_file = os.environ.get("KAFKA_BROKER_LOG")
        request.config.stash[broker_log_key] = Path(log_file) if log_file else None
        logger.info("using the Kafka broker at %s from KAFKA_BOOTSTRAP_SERVERS", configured)
        yield configured
        return

    if docker_engine_answers():
        request.config.stash[broker_log_key] = None
        with start_docker_kafka() as bootstrap:
            yield bootstrap
        return

    broker = LocalBroker(BrokerConfig(state_dir=tmp_path_factory.mktemp("kafka")))
    request.config.stash[broker_log_key] = broker.log_path
    broker.fetch()
    bootstrap = broker.start()
    try:
        yield bootstrap
    finally:
        broker.stop()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    """Attach the end of the broker log to the report of a failed test that used the broker."""
    report = yield
    uses_broker = "kafka_bootstrap" in getattr(item, "fixturenames", ())
    log_path = item.config.stash.get(broker_log_key, None)
    if report.failed and uses_broker and log_path is not None and log_path.is_file():
        with log_path.open(encoding="utf-8", errors="replace") as log:
            tail = "".join(log.readlines()[-LOG_TAIL_LINES:])
        report.sections.append((f"Kafka broker log (last {LOG_TAIL_LINES} lines)", tail))
    return report


@pytest.fixture
def unique_topic(request: pytest.FixtureRequest) -> Callable[[str], str]:
    """A function that returns a topic name unique to this test and call, from a short base name.

    Names read like `interactions-test-round-trip-3f9c2a1b`, so topics of one test are easy to find
    in the broker log and never collide with another test's on a shared broker.
    """
    test_slug = re.sub(r"[^a-zA-Z0-9]+", "-", request.node.name).strip("-")[:60]

    def make(base: str) -> str:
        return f"{base}-{test_slug}-{uuid.uuid4().hex[:8]}"

    return make
