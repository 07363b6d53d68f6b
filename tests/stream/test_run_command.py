"""`hiertcn-stream run` start-up checks that need no broker: bundle, state dir, -X, metrics port.

Every check runs in the parent before a worker starts, so each bad input gives one error line and
exit status 2. The tests that reach the broker check use 127.0.0.1:1, where nothing listens.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from export import providers
from export.bundle import load_bundle
from statestore import StateStore, StoreConfig
from stream import kafka_admin
from stream import pool as pool_module
from stream.cli import main
from stream.commands import run as run_command
from stream.config import WorkerConfig
from stream.errors import ConfigError
from stream.metrics_server import serve_aggregate
from tests.statestore.helpers import make_read_only, make_state
from tests.stream.conftest import (
    NUM_ITEMS,
    ORT_OUTPUT_MARKERS,
    require_cuda_build_without_gpu,
    run_stream_command,
)

# The providers of an onnxruntime build with CUDA, as onnxruntime-gpu offers them.
CUDA_AND_CPU = [providers.CUDA_PROVIDER, providers.CPU_PROVIDER]


def run_args(bundle: Path, state_dir: Path, *extra: str) -> list[str]:
    return [
        "run",
        "--brokers",
        "127.0.0.1:1",
        "--bundle",
        str(bundle),
        "--state-dir",
        str(state_dir),
        "--metrics-port",
        "0",
        *extra,
    ]


@pytest.fixture
def no_pool(monkeypatch: pytest.MonkeyPatch) -> list[WorkerConfig]:
    """Replace the broker check and the pool, and record the configs that reached the pool."""
    started: list[WorkerConfig] = []
    monkeypatch.setattr(run_command, "check_topics", lambda config: None)

    def fake_run_pool(config: WorkerConfig, log_level: int) -> int:
        started.append(config)
        return 0

    monkeypatch.setattr(run_command, "run_pool", fake_run_pool)
    return started


@pytest.fixture
def busy_port() -> Iterator[int]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    yield listener.getsockname()[1]
    listener.close()


def error_lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if "error" in line]


def test_run_changed_bundle_file_exits_2(
    onnx_bundle_dir: Path, tmp_path: Path, no_pool: list, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(onnx_bundle_dir, bundle)
    graph = bundle / "session_step.onnx"
    data = bytearray(graph.read_bytes())
    data[-1] ^= 0xFF
    graph.write_bytes(bytes(data))

    code = main(run_args(bundle, tmp_path / "state"))

    assert code == 2
    assert no_pool == []
    lines = error_lines(capsys)
    assert len(lines) == 1
    assert lines[0].startswith("hiertcn-stream: error: ")
    assert "session_step.onnx" in lines[0]


def test_run_state_dir_under_file_exits_2(
    onnx_bundle_dir: Path, tmp_path: Path, no_pool: list, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "file").write_text("x")

    code = main(run_args(onnx_bundle_dir, tmp_path / "file" / "state"))

    assert code == 2
    assert no_pool == []
    (line,) = error_lines(capsys)
    assert "cannot create state directory" in line
    assert f"{tmp_path / 'file'} is a file, not a directory" in line


def test_run_state_of_other_bundle_exits_2(
    onnx_bundle, onnx_bundle_dir: Path, tmp_path: Path, no_pool: list, capsys
) -> None:
    layers, hidden = onnx_bundle.state_shape
    other = StoreConfig(
        path=tmp_path / "state",
        bundle_version="0123456789ab",
        state_shape=(layers + 1, hidden * 2),
        embedding_dim=onnx_bundle.embedding_dim * 2,
        sync=False,
    )
    with StateStore(other) as store:
        store.commit({"u1": make_state()})

    code = main(run_args(onnx_bundle_dir, tmp_path / "state"))

    assert code == 2
    assert no_pool == []
    (line,) = error_lines(capsys)
    assert "0123456789ab" in line
    assert onnx_bundle.version in line
    assert f"[{layers + 1}, {hidden * 2}]" in line
    assert f"[{layers}, {hidden}]" in line


def test_run_good_bundle_reaches_pool(
    onnx_bundle_dir: Path, tmp_path: Path, no_pool: list[WorkerConfig]
) -> None:
    assert main(run_args(onnx_bundle_dir, tmp_path / "state")) == 0
    assert len(no_pool) == 1
    with StateStore(StoreConfig(path=tmp_path / "state")) as store:
        assert store.meta()["state_shape"] is not None


@pytest.mark.parametrize(
    ("setting", "name"),
    [("nosuch.setting=1", "nosuch.setting"), ("security.protocol=BOGUS", "security.protocol")],
)
def test_run_invalid_kafka_setting_exits_2(
    onnx_bundle_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    setting: str,
    name: str,
) -> None:
    monkeypatch.setattr(run_command, "run_pool", lambda config, level: 0)

    code = main(run_args(onnx_bundle_dir, tmp_path / "state", "-X", setting))

    assert code == 2
    (line,) = error_lines(capsys)
    assert line.startswith(f"hiertcn-stream: error: librdkafka setting {name} is invalid: ")
    assert "Traceback" not in capsys.readouterr().err


def test_unreachable_broker_logs_few_librdkafka_lines(
    onnx_bundle_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(kafka_admin, "BROKER_TIMEOUT_SECONDS", 2.0)
    config = WorkerConfig(brokers="127.0.0.1:1", bundle=onnx_bundle_dir)

    with caplog.at_level(logging.DEBUG), pytest.raises(kafka_admin.BrokerUnavailableError):
        run_command.check_topics(config)

    librdkafka = [r for r in caplog.records if r.name.endswith(".librdkafka")]
    assert 1 <= len(librdkafka) <= 3
    assert "%3|" not in capfd.readouterr().err


def test_metrics_port_in_use_raises_config_error(
    busy_port: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    with pytest.raises(ConfigError, match=f"127.0.0.1:{busy_port} is already in use"):
        serve_aggregate("127.0.0.1", busy_port)


def test_pool_busy_metrics_port_starts_nothing(
    onnx_bundle_dir: Path, busy_port: int, tmp_path: Path
) -> None:
    config = WorkerConfig(
        brokers="127.0.0.1:1",
        bundle=onnx_bundle_dir,
        metrics_port=busy_port,
        state_dir=tmp_path / "state",
    )
    pool = pool_module.Pool(config)

    with pytest.raises(ConfigError, match="--metrics-port"):
        pool.run()

    assert pool.children == []


def test_busy_metrics_port_rejected_before_side_effects(
    onnx_bundle_dir: Path,
    busy_port: int,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    no_pool: list[WorkerConfig],
    capsys: pytest.CaptureFixture[str],
) -> None:
    checked_topics: list[WorkerConfig] = []
    monkeypatch.setattr(run_command, "check_topics", checked_topics.append)
    state_dir = tmp_path / "state"

    code = main(run_args(onnx_bundle_dir, state_dir, "--metrics-port", str(busy_port)))

    assert code == 2
    (line,) = error_lines(capsys)
    assert f"metrics port 127.0.0.1:{busy_port} is already in use" in line
    # The port is checked before `run` creates topics or the state directory.
    assert checked_topics == []
    assert not state_dir.exists()
    assert no_pool == []


def test_metrics_port_check_names_bad_address(tmp_path: Path) -> None:
    config = WorkerConfig(
        brokers="127.0.0.1:1",
        bundle=tmp_path,
        metrics_address="192.0.2.1",  # TEST-NET-1: no interface of this machine has it
        metrics_port=9100,
    )

    with pytest.raises(ConfigError, match=r"--metrics-address '192\.0\.2\.1' is invalid"):
        pool_module.check_metrics_port(config)


def test_worker_bundle_error_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr("hiertcn.command_line.configure_logging", lambda verbosity: None)
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    config = WorkerConfig(brokers="127.0.0.1:1", bundle=bundle, state_dir=tmp_path / "state")

    with caplog.at_level(logging.ERROR, logger="stream.pool"), pytest.raises(SystemExit) as exit:
        pool_module._worker_main(config, 0, 1, logging.INFO)

    assert exit.value.code == 2
    (record,) = caplog.records
    assert record.getMessage().startswith("worker 0 failed: ")
    assert record.exc_info is None


def test_unreachable_broker_creates_no_state(
    onnx_bundle_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(kafka_admin, "BROKER_TIMEOUT_SECONDS", 1.0)
    monkeypatch.setattr(run_command, "run_pool", lambda config, level: 0)
    state_dir = tmp_path / "state"

    code = main(run_args(onnx_bundle_dir, state_dir))

    assert code != 0
    (line,) = error_lines(capsys)
    assert "did not respond within 1 s (" in line
    assert "KafkaError{" not in line
    assert not state_dir.exists()


def test_run_missing_bundle_exits_2_as_replay(
    tmp_path: Path, no_pool: list[WorkerConfig], capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nobundle"
    events = tmp_path / "events.jsonl"
    events.write_text('{"user": "u", "item": "1", "ts": 1700000000}\n')

    run_code = main(run_args(missing, tmp_path / "state"))
    run_error = capsys.readouterr().err
    replay_code = main(["replay", "--events", str(events), "--bundle", str(missing)])
    replay_error = capsys.readouterr().err

    assert run_code == 2
    assert replay_code == 2
    assert run_error == replay_error
    assert f"cannot load the model bundle {missing}: {missing / 'manifest.json'} not found" in (
        run_error
    )
    assert not no_pool


def test_run_k_above_catalog_exits_2(
    onnx_bundle_dir: Path,
    tmp_path: Path,
    no_pool: list[WorkerConfig],
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = main(run_args(onnx_bundle_dir, tmp_path / "state", "--k", "100000"))

    assert code == 2
    assert (
        f"--k 100000 is invalid because the bundle has only {NUM_ITEMS} items: pass --k "
        f"{NUM_ITEMS} or less" in capsys.readouterr().err
    )
    assert not no_pool
    assert not (tmp_path / "state").exists()


def test_run_state_dir_help_says_relative(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["run", "--help"])

    printed = " ".join(capsys.readouterr().out.split())
    assert "a relative path is relative to the working directory" in printed


def test_run_cuda_without_gpu_exits_2_quietly(onnx_bundle_dir: Path, tmp_path: Path) -> None:
    require_cuda_build_without_gpu()

    result = run_stream_command(
        *run_args(onnx_bundle_dir, tmp_path / "state", "--device", "cuda"), cwd=tmp_path
    )

    assert result.returncode == 2
    assert "device 'cuda' requested, but no CUDA GPU is usable on this host" in result.stderr
    assert "Pass --device cpu" in result.stderr
    assert "install the NVIDIA driver" in result.stderr
    assert "in Python" not in result.stderr
    assert "device='cpu'" not in result.stderr
    for marker in ORT_OUTPUT_MARKERS:
        assert marker not in result.stderr
    assert not (tmp_path / "state").exists()


def test_run_cuda_from_environment_names_variable(
    onnx_bundle_dir: Path,
    tmp_path: Path,
    no_pool: list,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(providers.ort, "get_available_providers", lambda: CUDA_AND_CPU)
    monkeypatch.setattr(providers, "probe_cuda_driver", lambda: "no driver here")
    monkeypatch.setenv("HIERTCN_DEVICE", "cuda")

    code = main(run_args(onnx_bundle_dir, tmp_path / "state"))

    assert code == 2
    (line,) = error_lines(capsys)
    assert "device 'cuda' requested, but no CUDA GPU is usable on this host: no driver here" in line
    assert line.endswith("Set HIERTCN_DEVICE=cpu or auto, or install the NVIDIA driver")
    assert "device='cpu'" not in line


def test_run_invalid_device_variable_exits_2(
    onnx_bundle_dir: Path,
    tmp_path: Path,
    no_pool: list,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("HIERTCN_DEVICE", "gpu")

    code = main(run_args(onnx_bundle_dir, tmp_path / "state"))

    assert code == 2
    assert error_lines(capsys) == [
        "hiertcn-stream: error: HIERTCN_DEVICE='gpu' is invalid: use cpu, cuda or auto"
    ]


def test_run_auto_device_warns_once_per_pool(
    onnx_bundle_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(run_command, "check_topics", lambda config: None)
    monkeypatch.setattr(providers.ort, "get_available_providers", lambda: CUDA_AND_CPU)
    monkeypatch.setattr(providers, "probe_cuda_driver", lambda: "no driver here")
    workers: list[WorkerConfig] = []

    def run_pool_of_two(config: WorkerConfig, log_level: int) -> int:
        # Each worker process loads the bundle with the pool's config, as `run_worker` does.
        for _ in range(2):
            workers.append(config)
            load_bundle(config.bundle, device=config.device)
        return 0

    monkeypatch.setattr(run_command, "run_pool", run_pool_of_two)

    with caplog.at_level(logging.WARNING, logger="export.providers"):
        code = main(run_args(onnx_bundle_dir, tmp_path / "state", "--device", "auto"))

    assert code == 0
    assert [config.device for config in workers] == ["cpu", "cpu"]
    warnings = [r for r in caplog.records if "runs on the CPU" in r.getMessage()]
    assert len(warnings) == 1


def test_run_read_only_state_dir_exits_2(
    onnx_bundle_dir: Path,
    tmp_path: Path,
    no_pool: list,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    state_dir = tmp_path / "state"
    StateStore(StoreConfig(path=state_dir, sync=False)).close()
    make_read_only(state_dir, monkeypatch)

    code = main(run_args(onnx_bundle_dir, state_dir))

    assert code == 2
    assert no_pool == []
    (line,) = error_lines(capsys)
    assert line.startswith(f"hiertcn-stream: error: LMDB open failed in state store {state_dir}")
    assert "pass a writable --state-dir" in line


@pytest.mark.parametrize(
    ("extra", "linger", "timeout", "raise_above"),
    [
        (["-X", "linger.ms=20000"], "20000", "--delivery-timeout 10 sets (10000 ms)", "20 s"),
        # Also beyond the worker's whole wait of 6 tries 10 s apart.
        (["-X", "linger.ms=100000"], "100000", "--delivery-timeout 10 sets (10000 ms)", "100 s"),
        (
            ["--delivery-timeout", "2.5", "-X", "linger.ms=10000"],
            "10000",
            "--delivery-timeout 2.5 sets (2500 ms)",
            "10 s",
        ),
    ],
)
def test_run_linger_above_delivery_timeout_exits_2(
    onnx_bundle_dir: Path,
    tmp_path: Path,
    no_pool: list,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    linger: str,
    timeout: str,
    raise_above: str,
) -> None:
    monkeypatch.setenv("HIERTCN_DELIVERY_ATTEMPTS", "4")

    code = main(run_args(onnx_bundle_dir, tmp_path / "state", *extra))

    assert code == 2
    assert no_pool == []
    (line,) = error_lines(capsys)
    timeout_ms = timeout.split("(")[1].rstrip(")")
    assert line == (
        f"hiertcn-stream: error: -X linger.ms={linger} is not below the message timeout that "
        f"{timeout}, and librdkafka requires message.timeout.ms above linger.ms: lower -X "
        f"linger.ms below {timeout_ms}, or raise --delivery-timeout above {raise_above}"
    )
    assert not (tmp_path / "state").exists()


def test_run_linger_names_delivery_timeout_variable(
    onnx_bundle_dir: Path,
    tmp_path: Path,
    no_pool: list,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("HIERTCN_DELIVERY_TIMEOUT", "5")
    monkeypatch.setenv("HIERTCN_KAFKA_QUEUE_BUFFERING_MAX_MS", "5000")

    code = main(run_args(onnx_bundle_dir, tmp_path / "state"))

    assert code == 2
    (line,) = error_lines(capsys)
    assert line.startswith(
        "hiertcn-stream: error: HIERTCN_KAFKA_QUEUE_BUFFERING_MAX_MS=5000 is not below the "
        "message timeout that HIERTCN_DELIVERY_TIMEOUT=5 sets (5000 ms)"
    )
    assert line.endswith("or raise HIERTCN_DELIVERY_TIMEOUT above 5 s")


@pytest.mark.parametrize("key", ["delivery.timeout.ms", "message.timeout.ms"])
def test_run_delivery_timeout_setting_exits_2(
    key: str,
    onnx_bundle_dir: Path,
    tmp_path: Path,
    no_pool: list,
    capsys: pytest.CaptureFixture[str],
) -> None:
    extra = ["--delivery-timeout", "10", "-X", f"{key}=5000"]

    code = main(run_args(onnx_bundle_dir, tmp_path / "state", *extra))

    assert code == 2
    assert no_pool == []
    (line,) = error_lines(capsys)
    assert line.startswith(f"hiertcn-stream: error: -X {key}")
    assert line.endswith("would replace the value of --delivery-timeout: remove it and use "
                         "--delivery-timeout")  # fmt: skip


def test_run_help_lists_delivery_timeout_keys(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["run", "--help"])

    printed = " ".join(capsys.readouterr().out.split())
    assert "delivery.timeout.ms or message.timeout.ms (use --delivery-timeout)" in printed
    assert "bootstrap.servers or metadata.broker.list (use --brokers)" in printed


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        (["acks=0"], "-X acks=0"),
        (["enable.idempotence=false"], "-X enable.idempotence=false"),
        (["group.protocol=consumer"], "-X group.protocol"),
        (["transactional.id=abc"], "-X transactional.id"),
        (["max.in.flight=10"], "max.in.flight"),
    ],
)
def test_run_client_setting_conflict_exits_2(
    onnx_bundle_dir: Path,
    tmp_path: Path,
    no_pool: list[WorkerConfig],
    capsys: pytest.CaptureFixture[str],
    settings: list[str],
    named: str,
) -> None:
    flags = [part for setting in settings for part in ("-X", setting)]

    code = main(run_args(onnx_bundle_dir, tmp_path / "state", *flags))

    assert code == 2
    assert no_pool == []
    (line,) = error_lines(capsys)
    assert named in line


def test_client_check_creates_real_clients() -> None:
    config = WorkerConfig(
        brokers="127.0.0.1:1", bundle=Path("."), kafka_settings={"max.in.flight": "10"}
    )

    with pytest.raises(ConfigError) as raised:
        run_command.check_client_settings(config)

    assert str(raised.value).startswith("librdkafka setting max.in.flight is invalid: ")
    assert "`max.in.flight` must be set <= 5" in str(raised.value)


def test_client_check_accepts_worker_values() -> None:
    config = WorkerConfig(
        brokers="127.0.0.1:1",
        bundle=Path("."),
        kafka_settings={"acks": "all", "enable.idempotence": "true", "group.instance.id": "p"},
    )

    run_command.check_client_settings(config)


def test_sigterm_during_broker_check_stops_promptly(
    onnx_bundle_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(run_command, "run_pool", lambda config, level: 0)
    previous = signal.getsignal(signal.SIGTERM)
    timer = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGTERM))
    started = time.monotonic()
    timer.start()

    with caplog.at_level(logging.INFO, logger="stream.commands.run"):
        code = main(run_args(onnx_bundle_dir, tmp_path / "state"))

    timer.join()
    assert code == 128 + signal.SIGTERM
    assert time.monotonic() - started < 5.0
    assert signal.getsignal(signal.SIGTERM) is previous
    assert caplog.records[-1].getMessage() == (
        "pool exits with 143: SIGTERM received during the start checks, before any worker started"
    )
    assert "error" not in capsys.readouterr().err


def test_run_epilog_lists_rebuild_state(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["run", "--help"])

    # argparse wraps the help at hyphens, so the check ignores white space.
    help_text = "".join(capsys.readouterr().out.split())
    assert "--rebuild-stateand--publish-on-session-closehavenovariable" in help_text
    assert "(HTTP503),from1to86400" in help_text


@pytest.mark.parametrize("value", ["abc", ""])
def test_run_bad_stall_seconds_exits_2(
    onnx_bundle_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str
) -> None:
    with pytest.raises(SystemExit) as exit:
        main(run_args(onnx_bundle_dir, tmp_path / "state", "--health-stall-seconds", value))

    assert exit.value.code == 2
    err = capsys.readouterr().err
    assert f"argument --health-stall-seconds: {value!r} is invalid: use a number" in err
    assert "could not convert" not in err


def test_run_delivery_flags_reach_pool(
    onnx_bundle_dir: Path, tmp_path: Path, no_pool: list[WorkerConfig]
) -> None:
    extra = ["--delivery-timeout", "1.5", "--delivery-attempts", "3"]

    assert main(run_args(onnx_bundle_dir, tmp_path / "state", *extra)) == 0

    (config,) = no_pool
    assert config.delivery_timeout == 1.5
    assert config.delivery_attempts == 3


def test_run_delivery_variables_reach_pool(
    onnx_bundle_dir: Path,
    tmp_path: Path,
    no_pool: list[WorkerConfig],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HIERTCN_DELIVERY_TIMEOUT", "2")
    monkeypatch.setenv("HIERTCN_DELIVERY_ATTEMPTS", "5")

    assert main(run_args(onnx_bundle_dir, tmp_path / "state", "--delivery-attempts", "4")) == 0

    (config,) = no_pool
    assert config.delivery_timeout == 2.0
    assert config.delivery_attempts == 4


def test_run_logs_outage_tolerance(
    onnx_bundle_dir: Path,
    tmp_path: Path,
    no_pool: list[WorkerConfig],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("HIERTCN_DELIVERY_ATTEMPTS", "3")
    extra = ["--delivery-timeout", "0.5"]

    with caplog.at_level(logging.INFO, logger=run_command.__name__):
        assert main(run_args(onnx_bundle_dir, tmp_path / "state", *extra)) == 0

    (line,) = [r.getMessage() for r in caplog.records if "failed outputs get" in r.getMessage()]
    assert line == (
        "failed outputs get 3 tries at least 0.5 s apart (HIERTCN_DELIVERY_ATTEMPTS=3, "
        "--delivery-timeout 0.5). A worker whose outputs are still undelivered 1.5 s after its "
        "wait began stops with exit status 1, so the pool rides out a broker outage of up to "
        "1.5 s"
    )


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--delivery-attempts", "2.5"], "'2.5' is invalid: use a whole number"),
        (["--delivery-timeout", "soon"], "'soon' is invalid: use a number"),
    ],
)
def test_run_unparsable_delivery_flag_exits_2(
    onnx_bundle_dir: Path,
    tmp_path: Path,
    no_pool: list[WorkerConfig],
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    message: str,
) -> None:
    with pytest.raises(SystemExit) as exit:
        main(run_args(onnx_bundle_dir, tmp_path / "state", *extra))

    assert exit.value.code == 2
    assert no_pool == []
    err = capsys.readouterr().err
    assert f"argument {extra[0]}: {message}" in err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            ["--delivery-timeout", "0.05"],
            "--delivery-timeout 0.05 is invalid: use a value from 0.1 to 600",
        ),
        (
            ["--delivery-attempts", "101"],
            "--delivery-attempts 101 is invalid: use a value from 1 to 100",
        ),
        (
            ["--delivery-timeout", "60", "--delivery-attempts", "3"],
            "delivery retries can wait 180 s (--delivery-timeout 60 x --delivery-attempts 3), "
            "more than half of max.poll.interval.ms (300 s): raise -X max.poll.interval.ms or "
            "lower --delivery-timeout or --delivery-attempts",
        ),
    ],
)
def test_run_delivery_flag_out_of_range_exits_2(
    onnx_bundle_dir: Path,
    tmp_path: Path,
    no_pool: list[WorkerConfig],
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    message: str,
) -> None:
    code = main(run_args(onnx_bundle_dir, tmp_path / "state", *extra))

    assert code == 2
    assert no_pool == []
    assert error_lines(capsys) == [f"hiertcn-stream: error: {message}"]


def test_run_help_lists_delivery_flags(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["run", "--help"])

    # argparse wraps the help at hyphens, so the check ignores white space.
    help_text = "".join(capsys.readouterr().out.split())
    assert "--delivery-timeoutSECONDS" in help_text
    assert "(envHIERTCN_DELIVERY_TIMEOUT;default10.0)" in help_text
    assert "--delivery-attemptsN" in help_text
    assert "(envHIERTCN_DELIVERY_ATTEMPTS;default6)" in help_text
    assert "thebrokeroutagethepoolridesout(60sbydefault)" in help_text


def test_idle_partition_flag_wins_over_variable(
    onnx_bundle_dir: Path,
    tmp_path: Path,
    no_pool: list[WorkerConfig],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HIERTCN_IDLE_PARTITION_SECONDS", "abc")
    state = tmp_path / "state"

    assert main(run_args(onnx_bundle_dir, state, "--idle-partition-seconds", "off")) == 0
    assert main(run_args(onnx_bundle_dir, state, "--idle-partition-seconds", "30")) == 0

    assert [config.idle_partition_seconds for config in no_pool] == [None, 30.0]
