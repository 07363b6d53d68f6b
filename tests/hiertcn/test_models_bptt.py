"""Tests of `bptt_sessions`: how far back a training batch's gradient reaches in the session GRU.

Training detaches the carry at every batch edge, and each batch contains one session per row. The
hierarchical models carry their last `bptt_sessions` sessions open, so the loss of a session
reaches the GRU steps of that many earlier sessions and no further.
"""

from __future__ import annotations

import pytest
import torch

from hiertcn.errors import ConfigError
from hiertcn.models import ModelConfig, build_model

NUM_ITEMS = 40
TINY = {"embedding_dim": 8, "hidden_size": 6, "gru_layers": 2, "tcn_channels": 8}
HIERARCHICAL = ["hiertcn", "hiergru", "hrnn"]
# Four sessions of one user, each with its own items.
SESSIONS = [
    torch.tensor([[1, 2, 3]]),
    torch.tensor([[4, 5]]),
    torch.tensor([[6, 7, 8, 9]]),
    torch.tensor([[10, 11]]),
]


@pytest.fixture(autouse=True)
def single_thread() -> None:
    torch.set_num_threads(1)


def tiny(name: str, bptt_sessions: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(ModelConfig(name=name, bptt_sessions=bptt_sessions, **TINY), NUM_ITEMS)


def run_sessions(model: torch.nn.Module, sessions: list[torch.Tensor]):
    """Run the sessions one batch each, detaching at every edge as training does."""
    carry = model.initial_carry(1, "cpu")
    queries = None
    for items in sessions:
        queries, carry = model(items, torch.tensor([items.shape[1]]), carry)
        if items is not sessions[-1]:
            carry = model.detach_carry(carry)
    return queries, carry


@pytest.mark.parametrize("bptt_sessions", [1, 3])
@pytest.mark.parametrize("name", ["hiertcn", "hiergru"])
def test_item_gradient_stops_at_last_session(name: str, bptt_sessions: int) -> None:
    model = tiny(name, bptt_sessions)
    queries, _ = run_sessions(model, SESSIONS)

    queries.sum().backward()

    table_grad = model.items.embedding.weight.grad
    reached = {i for i, items in enumerate(SESSIONS) if table_grad[items[0]].abs().sum() > 0}
    assert reached == {2, 3}


@pytest.mark.parametrize("name", ["hiertcn", "hiergru"])
def test_window_keeps_last_sessions(name: str) -> None:
    short, long = tiny(name, 1).eval(), tiny(name, 3).eval()
    long.load_state_dict(short.state_dict())

    with torch.no_grad():
        _, carry = run_sessions(long, SESSIONS)
        _, after_first = run_sessions(short, SESSIONS[:1])

    torch.testing.assert_close(carry.state, short.user_state(after_first))
    assert carry.closed.tolist() == [[True, True]]
    assert carry.items.tolist() == SESSIONS[3].tolist()


@pytest.mark.parametrize("name", ["hiertcn", "hiergru"])
def test_gradient_reaches_every_window_slot(name: str) -> None:
    model = tiny(name, 3)
    with torch.no_grad():
        _, carry = run_sessions(model, SESSIONS[:3])
    means = carry.means.clone().requires_grad_()

    queries, _ = model(SESSIONS[3], torch.tensor([2]), carry._replace(means=means))
    queries.sum().backward()

    assert (means.grad.abs().sum(dim=-1) > 0).tolist() == [[True, True]]


@pytest.mark.parametrize("name", HIERARCHICAL)
def test_window_keeps_predictions_and_state(name: str) -> None:
    short, long = tiny(name, 1).eval(), tiny(name, 3).eval()
    long.load_state_dict(short.state_dict())

    with torch.no_grad():
        short_queries, short_carry = run_sessions(short, SESSIONS)
        long_queries, long_carry = run_sessions(long, SESSIONS)

    torch.testing.assert_close(long_queries, short_queries)
    torch.testing.assert_close(long.user_state(long_carry), short.user_state(short_carry))


def test_hrnn_gradient_reaches_window_summaries() -> None:
    model = tiny("hrnn", 2)
    carry = model.initial_carry(1, "cpu")
    for items in SESSIONS[:3]:
        _, carry = model(items, torch.tensor([items.shape[1]]), carry)
        carry = model.detach_carry(carry)
    summary = carry.summary.clone().requires_grad_()
    carry = carry._replace(summary=summary)

    queries, _ = model(SESSIONS[3], torch.tensor([2]), carry)
    queries.sum().backward()

    assert carry.pending.tolist() == [[True, True]]
    assert (summary.grad.abs().sum(dim=-1) > 0).tolist() == [[True, True]]


@pytest.mark.parametrize("name", HIERARCHICAL)
def test_new_user_clears_window(name: str) -> None:
    model = tiny(name, 3).eval()
    with torch.no_grad():
        _, carry = run_sessions(model, SESSIONS)
        reset = model.reset_carry(carry, torch.tensor([True]))
        fresh = model.initial_carry(1, "cpu")
        torch.testing.assert_close(model.user_state(reset), model.user_state(fresh))


def test_huge_bptt_sessions_rejected() -> None:
    with pytest.raises(ConfigError, match="bptt_sessions=100000 is invalid: use at most 256"):
        ModelConfig(bptt_sessions=100000)


def test_zero_bptt_sessions_rejected() -> None:
    with pytest.raises(ConfigError, match="bptt_sessions=0"):
        ModelConfig(bptt_sessions=0)
