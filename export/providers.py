"""ONNX Runtime session options and execution providers for the bundle's graphs.

ONNX Runtime falls back to the CPU provider with only a log line when the CUDA provider cannot
start (no GPU, or a missing CUDA or cuDNN library). So `open_session` reads back the providers
that the session really uses and raises `ProviderError` when CUDA was required and is not among
them. This module never imports torch.
"""

from __future__ import annotations

import dataclasses
import logging

import onnxruntime as ort

from export.errors import ProviderError

logger = logging.getLogger(__name__)

CPU_PROVIDER = "CPUExecutionProvider"
CUDA_PROVIDER = "CUDAExecutionProvider"
DEVICES = ("cpu", "cuda", "auto")


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


def requested_providers(device: str) -> list[str]:
    """Return the provider list to ask ONNX Runtime for, most preferred first."""
    if device == "cpu":
        return [CPU_PROVIDER]
    available = ort.get_available_providers()
    if device == "cuda" and CUDA_PROVIDER not in available:
        raise ProviderError(
            f"device 'cuda' requested, but this onnxruntime build offers only {available}: "
            "install onnxruntime-gpu, or load the bundle with device='cpu' or 'auto'"
        )
    if CUDA_PROVIDER in available:
        return [CUDA_PROVIDER, CPU_PROVIDER]
    return [CPU_PROVIDER]


def open_session(
    model_bytes: bytes, name: str, config: RuntimeConfig, options: ort.SessionOptions
) -> ort.InferenceSession:
    """Open one graph from its serialized bytes and check the providers it really uses."""
    providers = requested_providers(config.device)
    session = ort.InferenceSession(model_bytes, sess_options=options, providers=providers)
    in_use = session.get_providers()
    if config.device == "cuda" and CUDA_PROVIDER not in in_use:
        raise ProviderError(
            f"{name}: device 'cuda' requested, but ONNX Runtime runs it on {in_use} (the CUDA "
            "provider failed to start: no GPU visible, or CUDA or cuDNN libraries missing); "
            "fix the CUDA setup, or load the bundle with device='cpu' or 'auto'"
        )
    if config.device == "auto" and CUDA_PROVIDER in providers and CUDA_PROVIDER not in in_use:
        logger.warning("%s: CUDA provider did not start, running on %s", name, in_use)
    logger.info("%s: ONNX Runtime providers in use: %s", name, in_use)
    return session
