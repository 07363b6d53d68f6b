"""--state-map-size: its limits in binary units, in the error and in `run --help`."""

from __future__ import annotations

from pathlib import Path

import pytest

from statestore import StoreConfig
from stream.cli import main
from stream.config import build_config, parse_size
from stream.errors import ConfigError

REQUIRED = {"brokers": "127.0.0.1:9092", "bundle": Path("bundle")}


@pytest.mark.parametrize(
    ("size", "shown"),
    [((1 << 20) - 1, "1024KiB"), (64 << 10, "64KiB"), ((1 << 40) + 1, "1TiB")],
)
def test_map_size_limits_in_units(size: int, shown: str) -> None:
    with pytest.raises(ConfigError) as raised:
        build_config({**REQUIRED, "state_map_size": size}, {})

    assert str(raised.value) == (
        f"--state-map-size {size} ({shown}) is invalid: use a size from 1MiB to 1TiB, "
        "for example 512MiB"
    )


def test_map_size_limit_names_variable() -> None:
    with pytest.raises(ConfigError, match=r"^HIERTCN_STATE_MAP_SIZE=65536 \(64KiB\) is invalid"):
        build_config(REQUIRED, {"HIERTCN_STATE_MAP_SIZE": "64KiB"})


def test_map_size_maximum_opens_store_config() -> None:
    # The maximum of the flag must be a map size that the state store accepts.
    config = build_config({**REQUIRED, "state_map_size": parse_size("1TiB")}, {})

    store_config = StoreConfig(path="unused", map_size=config.state_map_size)

    assert store_config.map_size == 1 << 40


def test_run_help_states_map_size_limits(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["run", "--help"])

    help_text = " ".join(capsys.readouterr().out.split())
    assert "initial LMDB map size in bytes, from 1MiB to 1TiB;" in help_text
    assert "HIERTCN_STATE_MAP_SIZE; default 1GiB)" in help_text
