"""Model bundles: export a trained HierTCN to ONNX graphs, and load them without torch.

`export.bundle.load_bundle` is what the serving side uses. Importing this package, `bundle`,
`manifest`, `providers` or `errors` never imports torch; only `onnx_export`, `verify` and the
command handlers of `command` do. Importing this package, `manifest` or `errors` does not import
ONNX Runtime either: `ModelBundle` and `load_bundle` import `bundle` on first use, so that
`stream.config` can read the manifest's limits while `hiertcn-stream state` stays light.
"""

from typing import Any

from export.errors import (
    BundleError,
    BundleIntegrityError,
    BundleVersionError,
    CudaUnavailableError,
    ExportError,
    InvalidInputError,
    ProviderError,
    VerificationError,
)
from export.manifest import FORMAT_VERSION, Manifest


def __getattr__(name: str) -> Any:
    """Return `ModelBundle` or `load_bundle` from `export.bundle`, imported on first use."""
    if name in ("ModelBundle", "load_bundle"):
        from export import bundle

        return getattr(bundle, name)
    raise AttributeError(f"module 'export' has no attribute {name!r}")


__all__ = [
    "FORMAT_VERSION",
    "BundleError",
    "BundleIntegrityError",
    "BundleVersionError",
    "CudaUnavailableError",
    "ExportError",
    "InvalidInputError",
    "Manifest",
    "ModelBundle",
    "ProviderError",
    "VerificationError",
    "load_bundle",
]
