"""Models of hiertcn: HierTCN, its baselines, and the registry that builds them by name.

Importing this package registers every model, so `build_model(config, num_items)` finds them.
"""

from hiertcn.models.base import Carry, RecommenderModel
from hiertcn.models.config import ModelConfig
from hiertcn.models.registry import (
    build_model,
    ignored_fields,
    list_models,
    model_class,
    read_fields,
    register_model,
)

# Imported for their registration side effect.
from hiertcn.models import baselines as _baselines  # noqa: F401  # isort: skip
from hiertcn.models import gru as _gru  # noqa: F401  # isort: skip
from hiertcn.models import hiergru as _hiergru  # noqa: F401  # isort: skip
from hiertcn.models import hiertcn as _hiertcn  # noqa: F401  # isort: skip
from hiertcn.models import hrnn as _hrnn  # noqa: F401  # isort: skip
from hiertcn.models import maxitem as _maxitem  # noqa: F401  # isort: skip
from hiertcn.models import tcn_baseline as _tcn_baseline  # noqa: F401  # isort: skip

__all__ = [
    "Carry",
    "ModelConfig",
    "RecommenderModel",
    "build_model",
    "ignored_fields",
    "list_models",
    "model_class",
    "read_fields",
    "register_model",
]
