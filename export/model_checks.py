"""Checks that a trained model can become a model bundle, run before anything is exported.

Export is duck-typed: any model with the serving members below exports, whatever its class.
docs/architecture.md defines them in the section "Models".
"""

from __future__ import annotations

import operator
from typing import Any

import torch
from torch import nn

from export.bundle import MAX_SESSION_ITEMS
from export.errors import ExportFailedError

# Serving members that `export` needs on a model.
REQUIRED_MEMBERS = ("session_user_embedding", "close_session", "start_state", "receptive_field")
# The docs section that defines these members, named in the error messages.
MEMBERS_DOC = 'docs/architecture.md, section "Models"'


def check_exportable(model: nn.Module) -> None:
    """Raise `ExportFailedError` unless `model` has the serving members with valid values.

    `start_state` must be a [G, H] tensor, and `receptive_field` a whole number of session items
    from 1 to `MAX_SESSION_ITEMS`, the bound that `load_bundle` applies.
    """
    name = model_name(model)
    missing = [member for member in REQUIRED_MEMBERS if not hasattr(model, member)]
    if missing:
        raise ExportFailedError(
            f"model {name!r} cannot be exported because it lacks {_join(missing)}. A bundle "
            f"needs the serving members {_join(REQUIRED_MEMBERS)} ({MEMBERS_DOC}): export the "
            "checkpoint of a model that provides them, such as hiertcn"
        )
    _check_start_state(name, model.start_state)
    receptive_field(model)


def receptive_field(model: nn.Module) -> int:
    """Return `model.receptive_field`, or raise `ExportFailedError` unless it is in
    1..`MAX_SESSION_ITEMS`."""
    value = model.receptive_field
    try:
        items = None if isinstance(value, bool) else operator.index(value)
    except TypeError:
        items = None
    if items is None or not 1 <= items <= MAX_SESSION_ITEMS:
        reason = ", so the model reads the whole session" if value is None else ""
        raise ExportFailedError(
            f"model {model_name(model)!r} cannot be exported because its receptive_field is "
            f"{value!r}{reason}. A bundle needs a whole number of session items from 1 to "
            f"{MAX_SESSION_ITEMS}, because the stream worker passes the session step only the "
            f"last receptive_field items of a session ({MEMBERS_DOC}): export the checkpoint "
            "of a model with a finite receptive field, such as hiertcn"
        )
    return items


def _check_start_state(name: str, start_state: Any) -> None:
    if isinstance(start_state, torch.Tensor) and start_state.dim() == 2:
        return
    if isinstance(start_state, torch.Tensor):
        found = f"a tensor of shape {list(start_state.shape)}"
    else:
        found = f"a {type(start_state).__name__}"
    raise ExportFailedError(
        f"model {name!r} cannot be exported because its start_state is {found}, expected a "
        f"tensor [G, H] (GRU layers by hidden size), the state of a new user ({MEMBERS_DOC})"
    )


def model_name(model: nn.Module) -> str:
    """Return the registered name of `model`, or its class name when it has no configuration."""
    return str(getattr(getattr(model, "config", None), "name", type(model).__name__))


def _join(names: tuple[str, ...] | list[str]) -> str:
    if len(names) == 1:
        return names[0]
    return f"{', '.join(names[:-1])} and {names[-1]}"


def check_finite_weights(model: nn.Module) -> None:
    """Raise `ExportFailedError` naming the first weight tensor with a NaN or infinite value."""
    for name, tensor in model.state_dict().items():
        if not tensor.is_floating_point():
            continue
        bad = int((~torch.isfinite(tensor)).sum())
        if bad:
            raise ExportFailedError(
                f"weight tensor {name!r} of the checkpoint contains {bad} NaN or infinite "
                f"value{'' if bad == 1 else 's'} of {tensor.numel()}: the training diverged, so "
                "retrain with a lower --lr or with --grad-clip"
            )
