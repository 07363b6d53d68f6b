"""The model contract, checked for every registered model.

Each test runs once per name in `list_models()`, so a new model is checked as soon as its module
is imported in hiertcn/models/__init__.py. docs/architecture.md, section "Models", defines the
contract: the members that training, evaluation and checkpoints read, and the serving members
that export reads.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hiertcn.checkpoint import load_model
from hiertcn.losses import LossConfig, build_loss, catalog_scores
from hiertcn.models import ModelConfig, build_model, list_models
from hiertcn.models.base import Carry
from hiertcn.train import seed_everything, train_model
from tests.hiertcn.test_train import tiny_config, tiny_dataset

NUM_ITEMS = 12  # the catalog of `tiny_dataset`
# Small sizes for every model field. HierTCN's receptive field is then 1 + 2 * 1 * (1 + 2) = 7
# positions, shorter than the sessions of the serving test.
CONFIG = {
    "embedding_dim": 8,
    "hidden_size": 6,
    "gru_layers": 2,
    "tcn_channels": 4,
    "kernel_size": 2,
    "dilations": (1, 2),
    "recent_items": 2,
}
SERVING_MEMBERS = ("session_user_embedding", "close_session", "start_state", "receptive_field")
ATOL = 1e-5

pytestmark = pytest.mark.parametrize("name", list_models())


@pytest.fixture(autouse=True)
def single_thread() -> None:
    torch.set_num_threads(1)


def tiny(name: str, seed: int = 0) -> torch.nn.Module:
    """Build model `name` with random weights (and random counts where it fits counts)."""
    seed_everything(seed)
    model = build_model(ModelConfig(name=name, **CONFIG), NUM_ITEMS)
    if hasattr(model, "fit_counts"):
        model.fit_counts(torch.randint(0, 50, (NUM_ITEMS,)).numpy())
    start_state = getattr(model, "start_state", None)
    if isinstance(start_state, torch.Tensor):
        with torch.no_grad():
            # A non-zero start state, so a test notices code that ignores it.
            start_state.normal_(0.0, 0.3)
    return model.eval()


def items_of(seed: int, rows: int, width: int) -> torch.Tensor:
    return torch.randint(0, NUM_ITEMS, (rows, width), generator=torch.Generator().manual_seed(seed))


def carry_tensors(carry: Carry) -> list[torch.Tensor]:
    return [carry] if isinstance(carry, torch.Tensor) else list(carry)


def run_sessions(
    model: torch.nn.Module, sessions: list[tuple[torch.Tensor, torch.Tensor]], rows: int
) -> list[torch.Tensor]:
    """Run sessions (items [B, L], lengths [B]) one after another and return their queries."""
    carry = model.initial_carry(rows, "cpu")
    outputs = []
    with torch.no_grad():
        for items, lengths in sessions:
            queries, carry = model(items, lengths, carry)
            outputs.append(queries)
    return outputs


def test_forward_and_score_shapes(name: str) -> None:
    model = tiny(name)
    items = items_of(1, 3, 5)
    lengths = torch.tensor([5, 2, 0])
    carry = model.initial_carry(3, "cpu")
    carry = model.reset_carry(carry, torch.tensor([True, False, True]))

    queries, carry = model(items, lengths, model.detach_carry(carry))
    table = model.item_embeddings()
    scores = model.score(queries, table)

    assert table.shape[0] == NUM_ITEMS
    assert table.dim() == 2
    assert queries.shape[:2] == (3, 5)
    assert queries.shape[-1] == table.shape[1]
    assert scores.shape == (3, 5, NUM_ITEMS)
    assert torch.isfinite(scores).all()
    for part in carry_tensors(carry):
        assert part.shape[0] == 3


def test_queries_ignore_later_items(name: str) -> None:
    model = tiny(name)
    history = (items_of(2, 2, 4), torch.tensor([4, 3]))
    items, lengths = items_of(3, 2, 6), torch.tensor([6, 6])
    expected = run_sessions(model, [history, (items, lengths)], rows=2)[1]

    for position in range(6):
        changed = items.clone()
        changed[:, position:] = (items[:, position:] + 1) % NUM_ITEMS
        queries = run_sessions(model, [history, (changed, lengths)], rows=2)[1]
        torch.testing.assert_close(queries[:, : position + 1], expected[:, : position + 1])


def test_row_ignores_padding_and_other_rows(name: str) -> None:
    model = tiny(name)
    first, second = items_of(4, 1, 3), items_of(5, 1, 2)
    alone = run_sessions(model, [(first, torch.tensor([3])), (second, torch.tensor([2]))], rows=1)

    other_first, other_second = items_of(6, 1, 7), items_of(7, 1, 5)
    padded_first = torch.cat([torch.nn.functional.pad(first, (0, 4)), other_first])
    padded_second = torch.cat([torch.nn.functional.pad(second, (0, 3)), other_second])
    batched = run_sessions(
        model,
        [(padded_first, torch.tensor([3, 7])), (padded_second, torch.tensor([2, 5]))],
        rows=2,
    )

    # The second session's queries also compare the carries after the first.
    torch.testing.assert_close(batched[0][0, :3], alone[0][0], atol=ATOL, rtol=0)
    torch.testing.assert_close(batched[1][0, :2], alone[1][0], atol=ATOL, rtol=0)


def test_empty_row_keeps_carry(name: str) -> None:
    model = tiny(name)
    history = (items_of(8, 2, 4), torch.tensor([4, 2]))
    empty = (items_of(9, 2, 3), torch.tensor([3, 0]))
    following = (items_of(10, 2, 3), torch.tensor([3, 3]))

    direct = run_sessions(model, [history, following], rows=2)[1]
    with_empty = run_sessions(model, [history, empty, following], rows=2)[2]

    torch.testing.assert_close(with_empty[1], direct[1], atol=ATOL, rtol=0)


def test_loss_finite_with_gradients(name: str) -> None:
    model = tiny(name)
    if not model.trainable:
        pytest.skip(f"{name} is not trained by gradient")
    model.train()
    items, lengths = items_of(11, 3, 5), torch.tensor([5, 3, 1])
    queries, _ = model(items, lengths, model.initial_carry(3, "cpu"))
    valid = torch.arange(5).unsqueeze(0) < lengths.unsqueeze(1)
    table = model.item_embeddings()

    loss = build_loss(LossConfig(), NUM_ITEMS)(queries[valid], items[valid], table)
    loss.backward()

    # The losses score with `catalog_scores` and evaluation with `model.score`, so they must
    # agree.
    with torch.no_grad():
        torch.testing.assert_close(
            catalog_scores(queries[valid], table), model.score(queries[valid], table)
        )
    assert torch.isfinite(loss)
    gradients = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
    assert gradients, "no parameter received a gradient"
    assert all(torch.isfinite(gradient).all() for gradient in gradients)
    assert any(gradient.abs().sum() > 0 for gradient in gradients)


def test_checkpoint_reload_gives_same_queries(name: str, tmp_path: Path) -> None:
    seed_everything(0)
    model = build_model(ModelConfig(name=name, **CONFIG), NUM_ITEMS)
    result = train_model(model, tiny_dataset(), tiny_config(), out_dir=tmp_path)
    rebuilt, _ = load_model(tmp_path / "best.pt")
    sessions = [
        (items_of(12, 2, 4), torch.tensor([4, 2])),
        (items_of(13, 2, 3), torch.tensor([1, 3])),
    ]

    expected = run_sessions(result.model.eval(), sessions, rows=2)
    reloaded = run_sessions(rebuilt, sessions, rows=2)

    for before, after in zip(expected, reloaded, strict=True):
        assert torch.equal(before, after)


def test_serving_functions_match_forward(name: str) -> None:
    model = tiny(name)
    if not all(hasattr(model, member) for member in SERVING_MEMBERS):
        pytest.skip(f"{name} has no serving members")
    table = model.item_embeddings().detach()
    history, session = items_of(14, 1, 3), items_of(15, 1, 9)
    queries = run_sessions(model, [(history, torch.tensor([3])), (session, torch.tensor([9]))], 1)

    field = model.receptive_field
    # The worker passes the last `receptive_field` items of the open session, or all of them
    # for a model without one. Each row here is one prefix length of the session.
    windows = [length if field is None else min(length, field) for length in range(9)]
    width = max(windows) + 2  # two columns of left padding even in the widest row
    prefix = torch.zeros(len(windows), width, table.shape[1])
    for length, window in enumerate(windows):
        if window:
            prefix[length, width - window :] = table[session[0, length - window : length]]
    with torch.no_grad():
        state = model.start_state.detach().unsqueeze(0)  # [1, G, H]
        state = model.close_session(state, table[history[0]].mean(dim=0, keepdim=True))
        state = state.expand(len(windows), -1, -1)
        served = model.session_user_embedding(prefix, torch.tensor(windows), state)

    torch.testing.assert_close(served, queries[1][0], atol=ATOL, rtol=0)
