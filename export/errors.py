"""Exceptions of the `export` package. Each message names the bad value and the fix.

This module imports nothing from `hiertcn` or torch, because the serving side imports it through
`export.bundle`.
"""

from __future__ import annotations


class ExportError(Exception):
    """Base class of every error that `export` raises on purpose."""

    exit_code = 1


class BundleError(ExportError):
    """A model bundle cannot be used: bad manifest, missing or changed file, wrong version."""

    exit_code = 2


class BundleIntegrityError(BundleError):
    """A file of the bundle is missing or changed: its sha256 differs from the manifest, or the
    manifest's version differs from the digest of its hashes and settings."""


class BundleVersionError(BundleError):
    """The bundle was written in a format version that this hiertcn does not read."""


class ProviderError(BundleError):
    """The requested ONNX Runtime execution provider is not in use."""


class CudaUnavailableError(ProviderError):
    """Device "cuda" was requested, but the CUDA provider cannot run on this host.

    `reason` is the cause, and `remedy` the fix on the host. The message advises the Python API
    (device='cpu'), so a command line tool builds its own message from these two attributes.
    """

    def __init__(self, reason: str, remedy: str) -> None:
        super().__init__(
            f"device 'cuda' requested, but {reason}. Load the bundle with device='cpu' or "
            f"'auto', or {remedy}"
        )
        self.reason = reason
        self.remedy = remedy


class InvalidInputError(ExportError, ValueError):
    """An array passed to a bundle method has the wrong dtype, shape or values."""


class VerificationError(ExportError):
    """ONNX Runtime and torch disagree beyond the tolerance on a bundle."""


class ExportFailedError(ExportError):
    """A checkpoint could not be turned into a bundle."""

    exit_code = 2
