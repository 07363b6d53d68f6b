"""Turn a failed memory allocation in training or evaluation into a message with the fix."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from hiertcn.errors import OutOfMemoryError

logger = logging.getLogger(__name__)


def is_out_of_memory(error: BaseException) -> bool:
    """Return whether `error` is a failed allocation of numpy or torch, on the CPU or CUDA.

    torch 2.x reports a failed CPU allocation as a plain RuntimeError whose message names its
    `DefaultCPUAllocator`, so only the message text identifies it.
    """
    if isinstance(error, (MemoryError, torch.OutOfMemoryError)):
        return True
    return isinstance(error, RuntimeError) and "DefaultCPUAllocator" in str(error)


@contextmanager
def report_out_of_memory(step: str, fix: str) -> Iterator[None]:
    """Raise OutOfMemoryError naming `step` and `fix` when the body fails to allocate memory.

    `fix` names the flags to lower, e.g. "lower --batch-size (now 32)".
    """
    try:
        yield
    except (MemoryError, RuntimeError) as error:
        if not is_out_of_memory(error):
            raise
        logger.debug("allocation failed in %s", step, exc_info=True)
        raise OutOfMemoryError(
            f"{step} ran out of memory ({type(error).__name__}: {_first_line(error)}): {fix}"
        ) from error


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else "no details"
