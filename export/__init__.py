"""Model bundles: export a trained HierTCN to ONNX graphs, and load them without torch.

`export.bundle.load_bundle` is what the serving side uses. Importing this package, `bundle`,
`manifest`, `providers` or `errors` never imports torch; only `onnx_export`, `verify` and the
command handlers of `command` do.
"""

from export.bundle import ModelBundle, load_bundle
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
