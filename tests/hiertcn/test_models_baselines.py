"""Tests of the baselines: GRU, TCN, moving average and most popular, and the registry."""

from __future__ import annotations

import pytest
import torch

from hiertcn.errors import ConfigError
from hiertcn.models import ModelConfig, build_model, list_models
from hiertcn.models.baselines import MostPopular, MovingAverage
from hiertcn.models.gru import GRUBaseline
from hiertcn.models.sequence import previous_item_inputs
from hiertcn.models.tcn_baseline import TCNBaseline

NUM_ITEMS = 25
TINY = {
    "embedding_dim": 6,
    "hidden_size": 5,
    "gru_layers": 2,
    "tcn_channels": 4,
    "kernel_size": 2,
    "dilations": (1, 2),  # receptive field 1 + 2 * 1 * 3 = 7, so 6 carried steps
    "recent_items": 2,
}


@pytest.fixture(autouse=True)
def single_thread() -> None:
    torch.set_num_threads(1)


def tiny(name: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(ModelConfig(name=name, **TINY), NUM_ITEMS).eval()


def test_registry_lists_baselines() -> None:
    names = list_models()

    for name in ("hiertcn", "gru", "tcn", "moving_average", "most_popular"):
        assert name in names


def test_tcn_baseline_default_dilations() -> None:
    model = build_model(ModelConfig(name="tcn"), NUM_ITEMS)

    assert isinstance(model, TCNBaseline)
    assert model.tcn.dilations == (1, 2, 4, 8, 16, 32)
    assert model.receptive_field == 1 + 2 * 4 * 63


@pytest.mark.parametrize("name", ["gru", "tcn", "moving_average", "most_popular"])
def test_baseline_shapes(name: str) -> None:
    model = tiny(name)
    items = torch.randint(0, NUM_ITEMS, (3, 5))
    lengths = torch.tensor([5, 2, 0])
    carry = model.reset_carry(model.initial_carry(3, "cpu"), torch.tensor([True, False, True]))

    queries, carry = model(items, lengths, model.detach_carry(carry))
    scores = model.score(queries, model.item_embeddings())

    assert queries.shape[:2] == (3, 5)
    assert scores.shape == (3, 5, NUM_ITEMS)
    assert model.last_input_bytes > 0


@pytest.mark.parametrize("name", ["gru", "tcn", "moving_average"])
def test_baseline_ignores_later_items(name: str) -> None:
    model = tiny(name)
    items = torch.randint(0, NUM_ITEMS, (2, 6))
    lengths = torch.tensor([6, 6])
    carry = model.initial_carry(2, "cpu")
    queries, _ = model(items, lengths, carry)

    for t in range(6):
        changed = items.clone()
        changed[:, t:] = (items[:, t:] + 1) % NUM_ITEMS
        changed_queries, _ = model(changed, lengths, carry)
        torch.testing.assert_close(changed_queries[:, : t + 1], queries[:, : t + 1])


@pytest.mark.parametrize("name", ["gru", "tcn", "moving_average"])
def test_baseline_padding_does_not_change_row(name: str) -> None:
    model = tiny(name)
    generator = torch.Generator().manual_seed(1)
    history = torch.randint(0, NUM_ITEMS, (1, 4), generator=generator)
    session = torch.randint(0, NUM_ITEMS, (1, 3), generator=generator)
    _, carry = model(history, torch.tensor([4]), model.initial_carry(1, "cpu"))

    alone, alone_carry = model(session, torch.tensor([3]), carry)
    batch = torch.cat(
        [torch.nn.functional.pad(session, (0, 5)), torch.ones(1, 8, dtype=torch.int64)]
    )
    both_carry = tuple(torch.cat([part, part]) for part in carry)
    padded, padded_carry = model(batch, torch.tensor([3, 8]), both_carry)

    torch.testing.assert_close(padded[0, :3], alone[0], atol=1e-6, rtol=0)
    for part, alone_part in zip(padded_carry, alone_carry, strict=True):
        torch.testing.assert_close(part[0], alone_part[0], atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", ["gru", "tcn", "moving_average"])
def test_baseline_empty_rows_keep_carry(name: str) -> None:
    model = tiny(name)
    items = torch.randint(0, NUM_ITEMS, (2, 3))
    _, carry = model(items, torch.tensor([3, 3]), model.initial_carry(2, "cpu"))

    _, new_carry = model(items, torch.tensor([3, 0]), carry)

    for part, old in zip(new_carry, carry, strict=True):
        torch.testing.assert_close(part[1], old[1])


def test_tcn_baseline_sessions_match_whole_history() -> None:
    model = tiny("tcn")
    assert isinstance(model, TCNBaseline)
    generator = torch.Generator().manual_seed(2)
    sessions = [torch.randint(0, NUM_ITEMS, (1, 5), generator=generator) for _ in range(3)]

    carry = model.initial_carry(1, "cpu")
    per_session = []
    for items in sessions:
        queries, carry = model(items, torch.tensor([5]), carry)
        per_session.append(queries)

    # The same history as one sequence: 15 steps, the history (12) longer than the window (6).
    table = model.item_embeddings().detach()
    previous = torch.zeros(1, 6)
    steps = []
    for items in sessions:
        embedded = table[items]
        steps.append(previous_item_inputs(embedded, previous))
        previous = embedded[:, -1]
    sequence = torch.cat(steps, dim=1)
    whole = model.output(model.tcn(sequence, torch.ones(1, 15, dtype=torch.bool)))

    torch.testing.assert_close(torch.cat(per_session, dim=1), whole, atol=1e-5, rtol=0)


def test_gru_baseline_sessions_match_whole_history() -> None:
    model = tiny("gru")
    assert isinstance(model, GRUBaseline)
    generator = torch.Generator().manual_seed(3)
    sessions = [torch.randint(0, NUM_ITEMS, (1, 4), generator=generator) for _ in range(3)]

    carry = model.initial_carry(1, "cpu")
    per_session = []
    for items in sessions:
        queries, carry = model(items, torch.tensor([4]), carry)
        per_session.append(queries)

    table = model.item_embeddings().detach()
    previous = torch.zeros(1, 6)
    steps = []
    for items in sessions:
        embedded = table[items]
        steps.append(previous_item_inputs(embedded, previous))
        previous = embedded[:, -1]
    start = model.start_state.detach().unsqueeze(1).contiguous()  # [G, 1, H]
    outputs, _ = model.gru(torch.cat(steps, dim=1), start)
    whole = model.output(outputs)

    torch.testing.assert_close(torch.cat(per_session, dim=1), whole, atol=1e-5, rtol=0)


def test_session_start_indicator_marks_first_step() -> None:
    inputs = previous_item_inputs(torch.ones(2, 3, 4), torch.zeros(2, 4))

    assert inputs[:, :, -1].tolist() == [[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]
    assert inputs[:, 0, :-1].abs().sum().item() == 0


def test_tcn_baseline_input_larger_than_hiertcn() -> None:
    items = torch.randint(0, NUM_ITEMS, (4, 10))
    lengths = torch.full((4,), 10)
    hiertcn = build_model(ModelConfig(name="hiertcn"), NUM_ITEMS)
    tcn = build_model(ModelConfig(name="tcn"), NUM_ITEMS)

    with torch.no_grad():
        hiertcn(items, lengths, hiertcn.initial_carry(4, "cpu"))
        tcn(items, lengths, tcn.initial_carry(4, "cpu"))

    assert tcn.last_input_bytes > 10 * hiertcn.last_input_bytes


def test_moving_average_hand_case() -> None:
    model = tiny("moving_average")
    assert isinstance(model, MovingAverage)
    table = model.item_embeddings().detach()
    carry = model.initial_carry(1, "cpu")

    first, carry = model(torch.tensor([[3, 4, 5]]), torch.tensor([3]), carry)
    second, _ = model(torch.tensor([[6, 7]]), torch.tensor([2]), carry)

    torch.testing.assert_close(first[0, 0], torch.zeros(6))  # nothing seen yet
    torch.testing.assert_close(first[0, 1], table[3])
    torch.testing.assert_close(first[0, 2], (table[3] + table[4]) / 2)
    # The window of two items reaches back into the previous session.
    torch.testing.assert_close(second[0, 0], (table[4] + table[5]) / 2)
    torch.testing.assert_close(second[0, 1], (table[5] + table[6]) / 2)


def test_most_popular_scores_are_counts() -> None:
    model = tiny("most_popular")
    assert isinstance(model, MostPopular)
    counts = torch.arange(NUM_ITEMS, dtype=torch.float32)
    model.fit_counts(counts)
    items = torch.randint(0, NUM_ITEMS, (2, 3))
    carry = model.initial_carry(2, "cpu")

    queries, _ = model(items, torch.tensor([3, 1]), carry)
    scores = model.score(queries, model.item_embeddings())

    assert model.trainable is False
    assert list(model.parameters()) == []
    torch.testing.assert_close(scores[1, 2], counts)
    assert "counts" in model.state_dict()


def test_most_popular_rejects_wrong_count_shape() -> None:
    model = tiny("most_popular")
    assert isinstance(model, MostPopular)

    with pytest.raises(ConfigError, match=r"expected \(25,\)"):
        model.fit_counts([1.0, 2.0])
