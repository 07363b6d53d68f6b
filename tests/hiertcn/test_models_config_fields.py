"""Tests of `config_fields`: each model declares the configuration fields that it reads.

`hiertcn train` warns about flags outside a model's fields, and resuming a run compares only
those fields. So a declaration must be right both ways. A declared field changes the model. Any
other field leaves its weights, queries and gradients exactly as they were.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from hiertcn.models import (
    ModelConfig,
    build_model,
    ignored_fields,
    list_models,
    model_class,
    read_fields,
)

NUM_ITEMS = 30
ROWS = 9  # enough rows per time step for masked batch norm to use batch statistics
TINY = ModelConfig(embedding_dim=8, hidden_size=6, gru_layers=2, tcn_channels=8, kernel_size=3)
OTHER_VALUES = {
    "embedding_dim": 12,
    "hidden_size": 10,
    "gru_layers": 1,
    "tcn_channels": 12,
    "kernel_size": 2,
    "dilations": (1, 2),
    "dropout": 0.5,
    "gru_candidate_dropout": 0.5,
    "batch_norm": True,
    "batch_norm_steps": 1,
    "item_vectors_path": None,  # set per test to a file in tmp_path
    "recent_items": 2,
    "bptt_sessions": 1,
}


@pytest.fixture(autouse=True)
def single_thread() -> None:
    torch.set_num_threads(1)


def test_every_field_has_an_other_value() -> None:
    fields = {field.name for field in dataclasses.fields(ModelConfig)} - {"name"}
    assert fields == set(OTHER_VALUES)


def sessions() -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Four batches of one session per row, of different lengths, for the same ROWS users."""
    generator = torch.Generator().manual_seed(1)
    batches = []
    for length in (3, 5, 2, 4):
        items = torch.randint(0, NUM_ITEMS, (ROWS, length), generator=generator)
        lengths = torch.randint(1, length + 1, (ROWS,), generator=generator)
        batches.append((items, lengths))
    return batches


def run(config: ModelConfig) -> dict[str, object]:
    """Run `sessions()` in train mode as the loop does, and return shapes, queries and gradients."""
    torch.manual_seed(0)
    model = build_model(config, NUM_ITEMS)
    if hasattr(model, "fit_counts"):
        model.fit_counts(np.arange(NUM_ITEMS))
    model.train()
    carry = model.initial_carry(ROWS, "cpu")
    batches = sessions()
    queries = None
    for index, (items, lengths) in enumerate(batches):
        queries, carry = model(items, lengths, carry)
        if index < len(batches) - 1:
            carry = model.detach_carry(carry)
    scores = model.score(queries, model.item_embeddings())
    if scores.requires_grad:
        scores.square().mean().backward()
    parameters = dict(model.named_parameters())
    return {
        "shapes": {name: tuple(value.shape) for name, value in parameters.items()},
        "queries": queries.detach(),
        "grads": {name: value.grad for name, value in parameters.items()},
    }


def same_run(first: dict[str, object], second: dict[str, object]) -> bool:
    if first["shapes"] != second["shapes"]:
        return False
    if not torch.equal(first["queries"], second["queries"]):
        return False
    for name, grad in first["grads"].items():
        other = second["grads"][name]
        if (grad is None) != (other is None):
            return False
        if grad is not None and not torch.equal(grad, other):
            return False
    return True


def other_config(base: ModelConfig, field: str, tmp_path) -> ModelConfig:
    value = OTHER_VALUES[field]
    if field == "item_vectors_path":
        path = tmp_path / "vectors.npy"
        np.save(path, np.random.default_rng(2).normal(size=(NUM_ITEMS, base.embedding_dim)))
        value = str(path)
    return dataclasses.replace(base, **{field: value})


@pytest.mark.parametrize("name", list_models())
def test_fields_outside_declaration_change_nothing(name: str, tmp_path) -> None:
    base = dataclasses.replace(TINY, name=name)
    unread = set(OTHER_VALUES) - model_class(name).config_fields
    baseline = run(base)
    changed = [
        f for f in sorted(unread) if not same_run(baseline, run(other_config(base, f, tmp_path)))
    ]
    assert changed == [], f"{name} reads {changed} but does not declare them"


@pytest.mark.parametrize("name", list_models())
def test_declared_fields_change_the_model(name: str, tmp_path) -> None:
    declared = model_class(name).config_fields
    assert declared <= set(OTHER_VALUES)
    unchanged = []
    for field in sorted(declared):
        # Batch-norm steps only matter while batch norm is on.
        base = dataclasses.replace(TINY, name=name, batch_norm=field == "batch_norm_steps")
        if same_run(run(base), run(other_config(base, field, tmp_path))):
            unchanged.append(field)
    assert unchanged == [], f"{name} declares {unchanged} but does not read them"


def test_batch_norm_steps_read_only_with_batch_norm() -> None:
    config = dataclasses.replace(TINY, name="hiertcn", batch_norm_steps=16)
    assert "batch_norm_steps" not in read_fields(config)
    assert ignored_fields(config) == ["batch_norm_steps"]
    assert "batch_norm_steps" in read_fields(dataclasses.replace(config, batch_norm=True))


def test_ignored_fields_changed_and_unread() -> None:
    config = dataclasses.replace(TINY, name="gru", bptt_sessions=8, dropout=0.2)
    assert ignored_fields(config) == ["tcn_channels", "kernel_size", "dropout", "bptt_sessions"]
    assert ignored_fields(ModelConfig(name="hiertcn", bptt_sessions=8)) == []
