"""ONNX Runtime session options and execution providers for the bundle's graphs.

ONNX Runtime falls back to the CPU provider with only a log line when the CUDA provider cannot
start (no GPU, or a missing CUDA or cuDNN library). So `open_session` reads back the providers
that the session really uses and raises `ProviderError` when CUDA was required and is not among
them. Before a session requests CUDA, `probe_cuda_driver` checks that the NVIDIA driver loads
and finds a GPU, because on a host without one the CUDA provider prints several raw error lines
of its own before it falls back. This module never imports torch.
"""

from __future__ import annotations

import ctypes
import dataclasses
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

# ONNX Runtime starts its telemetry when the module is imported. It writes a device id and an
# event database under $HOME/.cache, and prints a warning with colour codes when HOME is
# read-only. ORT_DISABLE_TELEMETRY=1, read only at import, turns all of it off. Spawned workers
# inherit it. `onnxruntime.disable_telemetry_events()` comes too late to stop the write (both
# checked with onnxruntime 1.31.1). A value the user has set is kept.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

import onnxruntime as ort

from export.errors import BundleError, CudaUnavailableError, ProviderError

logger = logging.getLogger(__name__)

CPU_PROVIDER = "CPUExecutionProvider"
CUDA_PROVIDER = "CUDAExecutionProvider"
DEVICES = ("cpu", "cuda", "auto")
# The CUDA driver API library that the NVIDIA driver installs (the CUDA toolkit is not needed).
CUDA_DRIVER_LIBRARY = "nvcuda.dll" if sys.platform == "win32" else "libcuda.so.1"


@dataclasses.dataclass(frozen=True)
class RuntimeConfig:
    """Execution settings of the bundle's ONNX Runtime sessions.

    `intra_op_threads` is the thread pool of one operator (None: ONNX Runtime's default, one
    thread per physical core). Set it to 1 when several worker processes share a host.
    `inter_op_threads` only matters with `parallel=True`, which runs independent graph
    branches at the same time. The bundle's graphs are mostly one chain, so sequential is the
    default. `allow_spinning` lets idle pool threads busy-wait for the next operator. That lowers
    latency on cores that nothing else uses. On a host shared by a pool of workers, though, the
    spinning threads take the cores that the other processes need, so it is off by default.
    """

    device: str = "cpu"
    intra_op_threads: int | None = None
    inter_op_threads: int | None = None
    parallel: bool = False
    allow_spinning: bool = False

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise ProviderError(f"device {self.device!r} is invalid: use one of {DEVICES}")
        for name in ("intra_op_threads", "inter_op_threads"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or value < 1):
                raise ProviderError(f"{name}={value!r} is invalid: use a positive count or None")


def session_options(config: RuntimeConfig) -> ort.SessionOptions:
    """Build the SessionOptions shared by both graphs."""
    options = ort.SessionOptions()
    # Constant folding, node fusions and layout changes; the graphs are small, so the one-time
    # optimization cost at load is a few milliseconds.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = (
        ort.ExecutionMode.ORT_PARALLEL if config.parallel else ort.ExecutionMode.ORT_SEQUENTIAL
    )
    if config.intra_op_threads is not None:
        options.intra_op_num_threads = config.intra_op_threads
    if config.inter_op_threads is not None:
        options.inter_op_num_threads = config.inter_op_threads
    spinning = "1" if config.allow_spinning else "0"
    options.add_session_config_entry("session.intra_op.allow_spinning", spinning)
    options.add_session_config_entry("session.inter_op.allow_spinning", spinning)
    options.log_severity_level = 3  # errors only; provider fallbacks are checked in code
    return options


def probe_cuda_driver(load_library: Callable[[str], Any] | None = None) -> str | None:
    """Check that the CUDA driver loads and finds a GPU. Return the reason when it does not.

    Loads `CUDA_DRIVER_LIBRARY` with ctypes (or `load_library`, for tests), then calls the
    driver API's `cuInit(0)` and `cuDeviceGetCount`, and returns None when they find at least
    one device. This takes milliseconds and prints nothing. It cannot see a missing CUDA
    runtime or cuDNN library, which only the CUDA provider's start finds.
    """
    load = load_library or ctypes.CDLL
    try:
        driver = load(CUDA_DRIVER_LIBRARY)
    except OSError as error:
        return f"the NVIDIA driver library {CUDA_DRIVER_LIBRARY} could not be loaded ({error})"
    driver.cuInit.argtypes = [ctypes.c_uint]
    driver.cuInit.restype = ctypes.c_int
    result = driver.cuInit(0)
    if result != 0:
        return f"cuInit failed with {_driver_error_name(driver, result)}"
    count = ctypes.c_int(0)
    driver.cuDeviceGetCount.argtypes = [ctypes.POINTER(ctypes.c_int)]
    driver.cuDeviceGetCount.restype = ctypes.c_int
    result = driver.cuDeviceGetCount(ctypes.byref(count))
    if result != 0:
        return f"cuDeviceGetCount failed with {_driver_error_name(driver, result)}"
    if count.value < 1:
        return "the NVIDIA driver found no CUDA device"
    return None


def _driver_error_name(driver: Any, result: int) -> str:
    """Return the name of a CUresult code from the driver's `cuGetErrorName`, with the code."""
    name = ctypes.c_char_p()
    try:
        found = driver.cuGetErrorName(result, ctypes.byref(name)) == 0 and name.value
    except AttributeError:  # a driver older than CUDA 6.0 lacks the function
        found = False
    return f"{name.value.decode()} ({result})" if found else f"CUDA driver error {result}"


def requested_providers(device: str) -> list[str]:
    """Return the provider list to ask ONNX Runtime for, most preferred first.

    CUDA is requested only when this onnxruntime build has the CUDA provider and
    `probe_cuda_driver` finds a GPU. Otherwise "cuda" raises `ProviderError` and "auto" gets
    the CPU provider alone, so that ONNX Runtime never tries to start CUDA on a host without it.
    """
    if device == "cpu":
        return [CPU_PROVIDER]
    available = ort.get_available_providers()
    if device == "cuda" and CUDA_PROVIDER not in available:
        raise CudaUnavailableError(
            f"this onnxruntime build offers only {available}", "install onnxruntime-gpu"
        )
    if CUDA_PROVIDER not in available:
        return [CPU_PROVIDER]
    problem = probe_cuda_driver()
    if problem is None:
        return [CUDA_PROVIDER, CPU_PROVIDER]
    if device == "cuda":
        raise CudaUnavailableError(
            f"no CUDA GPU is usable on this host: {problem}", "install the NVIDIA driver"
        )
    logger.warning("device 'auto': %s, so the bundle runs on the CPU", problem)
    return [CPU_PROVIDER]


def open_session(
    model_bytes: bytes,
    file: Path,
    config: RuntimeConfig,
    options: ort.SessionOptions,
    providers: list[str],
) -> ort.InferenceSession:
    """Open one graph from its serialized bytes with `providers` (from `requested_providers`)
    and check the providers it really uses.

    `file` is the graph's path, for messages. Any error of ONNX Runtime while it opens the graph
    raises `BundleError` with ONNX Runtime's message.
    """
    try:
        session = ort.InferenceSession(model_bytes, sess_options=options, providers=providers)
    except Exception as error:
        # ONNX Runtime's own exception types (Fail, InvalidGraph, NoSuchFile, ...) derive from
        # Exception alone (onnxruntime 1.31), so no narrower class catches all of them.
        raise BundleError(
            f"ONNX Runtime {ort.__version__} cannot open {file}: {error}. The graph is damaged "
            "or needs what this ONNX Runtime lacks: export the bundle again with `hiertcn "
            "export`, or install the onnxruntime version that the exporting host used"
        ) from error
    in_use = session.get_providers()
    if config.device == "cuda" and CUDA_PROVIDER not in in_use:
        raise CudaUnavailableError(
            f"ONNX Runtime runs {file} on {in_use} (the CUDA provider failed to start: no GPU "
            "visible, or CUDA or cuDNN libraries missing)",
            "fix the CUDA setup",
        )
    if config.device == "auto" and CUDA_PROVIDER in providers and CUDA_PROVIDER not in in_use:
        logger.warning("%s: CUDA provider did not start, running on %s", file, in_use)
    logger.info("%s: ONNX Runtime providers in use: %s", file, in_use)
    return session
