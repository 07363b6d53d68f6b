"""Model configuration: one frozen dataclass that names the model and contains every hyperparameter.

Checkpoints and model bundles store `ModelConfig.to_dict()`, and `ModelConfig.from_dict` rebuilds
the same configuration, so a saved model can always be rebuilt with `build_model`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hiertcn.command_line import format_number
from hiertcn.errors import ConfigError, InvalidFieldError

HIERTCN_DILATIONS = (1, 2, 4, 8)
# Upper bound of `bptt_sessions`. HRNN runs that many GRU steps in every batch, and HierTCN up to
# that many, so a larger value costs time without a sign that it helps.
MAX_BPTT_SESSIONS = 256


# Fields whose command-line flag is not `--` plus the field name with dashes.
_FIELD_FLAGS = {"name": "--model", "item_vectors_path": "--item-vectors"}


def field_flag(field: str) -> str:
    """Return the `hiertcn train` flag that sets the model configuration field `field`."""
    return _FIELD_FLAGS.get(field, "--" + field.replace("_", "-"))


def flag_for(field: str, value: Any) -> str:
    """Return the `hiertcn train` flag, with its value, that sets `field` to `value`."""
    flag = field_flag(field)
    if value is None or value is False:
        return f"(no {flag})"
    if value is True:
        return flag
    if isinstance(value, (list, tuple)):
        return f"{flag} {','.join(str(part) for part in value)}"
    if isinstance(value, float):
        return f"{flag} {format_number(value)}"
    return f"{flag} {value}"


@dataclass(frozen=True)
class ModelConfig:
    """Hyperparameters of every registered model; each model reads the fields it needs.

    `dilations` of `None` means the model's own default: (1, 2, 4, 8) for HierTCN and
    (1, 2, 4, 8, 16, 32) for the single-level TCN baseline.
    """

    name: str = "hiertcn"
    embedding_dim: int = 128  # D
    hidden_size: int = 128  # H, of every GRU
    gru_layers: int = 4  # G, of the high-level (session) GRU
    tcn_channels: int = 128  # filters of every TCN convolution
    kernel_size: int = 5
    dilations: tuple[int, ...] | None = None  # one residual block per dilation
    dropout: float = 0.0  # on TCN activations
    gru_candidate_dropout: float = 0.0  # on the candidate activation of the high-level GRU
    batch_norm: bool = False  # masked batch norm with statistics per time step in the TCN
    batch_norm_steps: int = 256  # time steps with their own statistics; later ones share the last
    item_vectors_path: str | None = None  # fixed pre-trained item vectors, float `.npy` [N, D]
    recent_items: int = 5  # k: items that moving_average averages and maxitem compares
    bptt_sessions: int = 4  # high-level GRU updates that a training batch backpropagates into

    def __post_init__(self) -> None:
        if self.dilations is not None:
            object.__setattr__(self, "dilations", tuple(int(d) for d in self.dilations))
        for field in (
            "embedding_dim",
            "hidden_size",
            "gru_layers",
            "tcn_channels",
            "kernel_size",
            "batch_norm_steps",
            "recent_items",
            "bptt_sessions",
        ):
            value = getattr(self, field)
            if not isinstance(value, int) or value < 1:
                raise InvalidFieldError("model", field, value, "use a positive integer")
        if self.dilations is not None and (
            not self.dilations or any(d < 1 for d in self.dilations)
        ):
            raise ConfigError(
                f"model dilations={self.dilations!r} is invalid: "
                "give one positive integer per residual block, e.g. (1, 2, 4, 8)"
            )
        if self.bptt_sessions > MAX_BPTT_SESSIONS:
            raise InvalidFieldError(
                "model",
                "bptt_sessions",
                self.bptt_sessions,
                f"use at most {MAX_BPTT_SESSIONS}, because each carried session costs a GRU step "
                "in every batch",
            )
        for field in ("dropout", "gru_candidate_dropout"):
            value = getattr(self, field)
            if not 0.0 <= value < 1.0:
                raise InvalidFieldError("model", field, value, "use a rate in [0, 1)")

    def dilations_or(self, default: tuple[int, ...]) -> tuple[int, ...]:
        """Return the configured dilations, or `default` when none are set."""
        return self.dilations if self.dilations is not None else default

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict of every field (tuples become lists)."""
        values = dataclasses.asdict(self)
        if values["dilations"] is not None:
            values["dilations"] = list(values["dilations"])
        return values

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> ModelConfig:
        """Rebuild a configuration from `to_dict` output; unknown keys raise `ConfigError`."""
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(
                f"unknown model configuration keys {unknown}: "
                f"the known keys are {sorted(known)}; was this saved by a newer version?"
            )
        # Configurations saved before `bptt_sessions` existed were trained with one step.
        return cls(**{"bptt_sessions": 1, **dict(values)})
