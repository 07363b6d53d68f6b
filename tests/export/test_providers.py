"""Tests of the CUDA driver probe and of the provider list it decides.

The probe's driver library is replaced by ctypes function pointers around Python functions, so
the calls go through the same ctypes argument conversion as a real `libcuda.so.1`.
"""

from __future__ import annotations

import ctypes
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from export import providers
from export.bundle import load_bundle
from export.errors import ProviderError
from export.providers import (
    CPU_PROVIDER,
    CUDA_DRIVER_LIBRARY,
    CUDA_PROVIDER,
    probe_cuda_driver,
    requested_providers,
)

_CU_INIT = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_uint)
_CU_DEVICE_GET_COUNT = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_int))
_CU_GET_ERROR_NAME = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.POINTER(ctypes.c_char_p))
# Kept alive for the whole test run, because the driver returns a pointer into static memory.
_NO_DEVICE_NAME = ctypes.c_char_p(b"CUDA_ERROR_NO_DEVICE")
CUDA_ERROR_NO_DEVICE = 100


class FakeDriver:
    """A CUDA driver whose cuInit result and device count are chosen by the test."""

    def __init__(
        self, init_result: int = 0, devices: int = 1, count_result: int = 0, names: bool = True
    ) -> None:
        self.init_flags: list[int] = []

        def cu_init(flags: int) -> int:
            self.init_flags.append(flags)
            return init_result

        def cu_device_get_count(count: ctypes._Pointer) -> int:
            count[0] = devices
            return count_result

        def cu_get_error_name(result: int, name: ctypes._Pointer) -> int:
            if result != CUDA_ERROR_NO_DEVICE:
                return 1  # CUDA_ERROR_INVALID_VALUE: unknown code
            name[0] = _NO_DEVICE_NAME
            return 0

        self.cuInit = _CU_INIT(cu_init)
        self.cuDeviceGetCount = _CU_DEVICE_GET_COUNT(cu_device_get_count)
        if names:
            self.cuGetErrorName = _CU_GET_ERROR_NAME(cu_get_error_name)


def loader_of(driver: FakeDriver, loaded: list[str] | None = None):
    def load(name: str) -> FakeDriver:
        if loaded is not None:
            loaded.append(name)
        return driver

    return load


def test_probe_missing_driver_library() -> None:
    def load(name: str) -> FakeDriver:
        raise OSError(f"{name}: cannot open shared object file: No such file or directory")

    problem = probe_cuda_driver(load)

    assert problem is not None
    assert f"NVIDIA driver library {CUDA_DRIVER_LIBRARY} could not be loaded" in problem
    assert "cannot open shared object file" in problem


def test_probe_cuinit_error_named() -> None:
    driver = FakeDriver(init_result=CUDA_ERROR_NO_DEVICE)

    problem = probe_cuda_driver(loader_of(driver))

    assert problem == "cuInit failed with CUDA_ERROR_NO_DEVICE (100)"
    assert driver.init_flags == [0]


def test_probe_cuinit_error_without_names() -> None:
    for driver in (FakeDriver(init_result=35), FakeDriver(init_result=35, names=False)):
        problem = probe_cuda_driver(loader_of(driver))

        assert problem == "cuInit failed with CUDA driver error 35"


def test_probe_device_count_error() -> None:
    driver = FakeDriver(count_result=CUDA_ERROR_NO_DEVICE)

    problem = probe_cuda_driver(loader_of(driver))

    assert problem == "cuDeviceGetCount failed with CUDA_ERROR_NO_DEVICE (100)"


def test_probe_zero_devices() -> None:
    problem = probe_cuda_driver(loader_of(FakeDriver(devices=0)))

    assert problem == "the NVIDIA driver found no CUDA device"


def test_probe_one_device_passes() -> None:
    loaded: list[str] = []

    problem = probe_cuda_driver(loader_of(FakeDriver(devices=1), loaded))

    assert problem is None
    assert loaded == [CUDA_DRIVER_LIBRARY]


@pytest.fixture
def cuda_build(monkeypatch: pytest.MonkeyPatch) -> None:
    """An onnxruntime build that offers the CUDA provider, as onnxruntime-gpu does."""
    monkeypatch.setattr(
        providers.ort, "get_available_providers", lambda: [CUDA_PROVIDER, CPU_PROVIDER]
    )


def no_driver(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        providers, "probe_cuda_driver", lambda: "the NVIDIA driver library could not be loaded"
    )


def test_cuda_without_driver_rejected(cuda_build: None, monkeypatch: pytest.MonkeyPatch) -> None:
    no_driver(monkeypatch)

    with pytest.raises(ProviderError) as caught:
        requested_providers("cuda")

    message = str(caught.value)
    assert "device 'cuda' requested, but no CUDA GPU is usable on this host" in message
    assert "the NVIDIA driver library could not be loaded" in message
    assert "Load the bundle with device='cpu' or 'auto', or install the NVIDIA driver" in message
    assert "--device" not in message
    assert caught.value.exit_code == 2


def test_auto_without_driver_uses_cpu(
    cuda_build: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    no_driver(monkeypatch)

    with caplog.at_level(logging.WARNING, logger="export.providers"):
        requested = requested_providers("auto")

    assert requested == [CPU_PROVIDER]
    assert "device 'auto': the NVIDIA driver library could not be loaded" in caplog.text


@pytest.mark.parametrize("device", ["cuda", "auto"])
def test_working_driver_requests_cuda_first(
    device: str, cuda_build: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(providers, "probe_cuda_driver", lambda: None)

    assert requested_providers(device) == [CUDA_PROVIDER, CPU_PROVIDER]


def test_cpu_device_skips_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    def probe() -> str | None:
        raise AssertionError("the CUDA driver was probed for device 'cpu'")

    monkeypatch.setattr(providers, "probe_cuda_driver", probe)

    assert requested_providers("cpu") == [CPU_PROVIDER]


def test_load_bundle_cuda_without_driver_opens_no_session(
    bundle_dir: Path, cuda_build: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    sessions: list[object] = []
    no_driver(monkeypatch)
    monkeypatch.setattr(
        providers.ort, "InferenceSession", lambda *args, **kwargs: sessions.append(args)
    )

    with pytest.raises(ProviderError, match="no CUDA GPU is usable on this host"):
        load_bundle(bundle_dir, device="cuda")

    assert sessions == []


def _run_graph_with_home(home: Path) -> subprocess.CompletedProcess[str]:
    """Run `_LOAD_ONE_GRAPH` in a fresh interpreter with this HOME and no telemetry setting."""
    env = {k: v for k, v in os.environ.items() if k != "ORT_DISABLE_TELEMETRY"}
    env["HOME"] = str(home)
    return subprocess.run(
        [sys.executable, "-c", _LOAD_ONE_GRAPH],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


# Imports the loader, then runs one session on an Identity graph, so that telemetry written at
# session start shows up too.
_LOAD_ONE_GRAPH = """
import os
import export.bundle
import onnxruntime as ort
from onnx import TensorProto, helper
value = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
output = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [value], [output])
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
print(os.environ["ORT_DISABLE_TELEMETRY"])
"""


def test_bundle_loader_writes_nothing_under_home(tmp_path: Path) -> None:
    result = _run_graph_with_home(tmp_path)

    assert result.returncode == 0, result.stderr
    assert result.stdout == "1\n"
    assert list(tmp_path.iterdir()) == []


def test_bundle_loader_quiet_on_read_only_home(tmp_path: Path) -> None:
    regular_file = tmp_path / "file"
    regular_file.write_text("")

    # A HOME under a regular file cannot be written, even by root.
    result = _run_graph_with_home(regular_file / "home")

    assert result.returncode == 0, result.stderr
    assert "telemetry" not in result.stderr
