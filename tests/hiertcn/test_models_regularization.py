"""Tests of the regularizers: GRU candidate dropout, masked per-step batch norm, TCN dropout."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hiertcn.errors import ConfigError
from hiertcn.models import ModelConfig, build_model
from hiertcn.models.hiertcn import HierTCN
from hiertcn.models.regularization import MaskedTimeBatchNorm, gru_step
from hiertcn.models.tcn import TemporalConvNet


@pytest.fixture(autouse=True)
def single_thread() -> None:
    torch.set_num_threads(1)


def gru_gates(
    gru: nn.GRU, inputs: torch.Tensor, previous: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the update gate z and candidate n of layer 0 of `gru` ([B, H] each)."""
    input_gates = nn.functional.linear(inputs, gru.weight_ih_l0, gru.bias_ih_l0)
    hidden_gates = nn.functional.linear(previous, gru.weight_hh_l0, gru.bias_hh_l0)
    input_reset, input_update, input_new = input_gates.chunk(3, dim=-1)
    hidden_reset, hidden_update, hidden_new = hidden_gates.chunk(3, dim=-1)
    reset = torch.sigmoid(input_reset + hidden_reset)
    update = torch.sigmoid(input_update + hidden_update)
    return update, torch.tanh(input_new + reset * hidden_new)


def test_candidate_dropout_is_identity_at_eval() -> None:
    torch.manual_seed(0)
    gru = nn.GRU(3, 4, num_layers=2, batch_first=True).eval()
    inputs, state = torch.randn(5, 3), torch.randn(5, 2, 4)

    with_dropout = gru_step(gru, inputs, state, candidate_dropout=0.5)
    _, expected = gru(inputs.unsqueeze(1), state.transpose(0, 1).contiguous())

    torch.testing.assert_close(with_dropout, expected.transpose(0, 1), atol=1e-6, rtol=0)


def test_candidate_dropout_keeps_carried_term() -> None:
    torch.manual_seed(0)
    rate = 0.5
    gru = nn.GRU(3, 4, num_layers=1, batch_first=True).train()
    inputs, state = torch.randn(64, 3), torch.randn(64, 1, 4)
    update, candidate = gru_gates(gru, inputs, state[:, 0])

    new_state = gru_step(gru, inputs, state, candidate_dropout=rate)[:, 0]

    carried = update * state[:, 0]
    fresh = new_state - carried
    kept = (1 - update) * candidate / (1 - rate)
    dropped = fresh.abs() < 1e-6
    # Every unit either keeps its scaled candidate or loses it, and keeps z * s_prev either way.
    assert bool(dropped.any())
    assert bool((~dropped).any())
    torch.testing.assert_close(new_state[dropped], carried[dropped], atol=1e-6, rtol=0)
    torch.testing.assert_close(fresh[~dropped], kept[~dropped], atol=1e-5, rtol=0)


def test_hiertcn_close_session_uses_candidate_dropout() -> None:
    torch.manual_seed(0)
    config = ModelConfig(embedding_dim=4, hidden_size=3, gru_layers=1, gru_candidate_dropout=0.5)
    model = build_model(config, 10)
    assert isinstance(model, HierTCN)
    state, mean = torch.randn(32, 1, 3), torch.randn(32, 4)

    model.train()
    training = model.close_session(state, mean)
    model.eval()
    evaluation = model.close_session(state, mean)
    _, expected = model.session_gru(mean.unsqueeze(1), state.transpose(0, 1).contiguous())

    torch.testing.assert_close(evaluation, expected.transpose(0, 1), atol=1e-6, rtol=0)
    assert not torch.allclose(training, evaluation)


def masked_batch(values: torch.Tensor, lengths: list[int], width: int, left: bool) -> tuple:
    """Pad rows of values [B, C, T] to `width` positions with noise; return (x, mask)."""
    generator = torch.Generator().manual_seed(7)
    batch, channels, _ = values.shape
    x = torch.randn(batch, channels, width, generator=generator) * 100.0
    mask = torch.zeros(batch, 1, width)
    for row, length in enumerate(lengths):
        start = width - length if left else 0
        x[row, :, start : start + length] = values[row, :, :length]
        mask[row, :, start : start + length] = 1.0
    return x, mask


@pytest.mark.parametrize("min_count", [1, 8])
def test_batch_norm_padding_does_not_change_running_statistics(min_count: int) -> None:
    torch.manual_seed(0)
    values = torch.randn(3, 2, 4)
    lengths = [4, 2, 3]
    norms, outputs = [], []
    for width, left in [(4, False), (7, False), (7, True)]:
        norm = MaskedTimeBatchNorm(2, steps=3, min_count=min_count).train()
        x, mask = masked_batch(values, lengths, width, left)
        norms.append(norm)
        outputs.append(norm(x, mask))

    for norm in norms[1:]:
        torch.testing.assert_close(norm.running_mean, norms[0].running_mean)
        torch.testing.assert_close(norm.running_var, norms[0].running_var)
    # The real positions of the first row get the same output with any padding.
    torch.testing.assert_close(outputs[1][0, :, :4], outputs[0][0, :, :4])
    torch.testing.assert_close(outputs[2][0, :, 3:], outputs[0][0, :, :4])


def test_batch_norm_statistics_per_time_step() -> None:
    values = torch.tensor([[[1.0, 10.0, 5.0]], [[3.0, 30.0, 0.0]]])  # [B=2, C=1, L=3]
    mask = torch.tensor([[[1.0, 1.0, 1.0]], [[1.0, 1.0, 0.0]]])
    norm = MaskedTimeBatchNorm(1, steps=4, momentum=1.0, min_count=1).train()

    output = norm(values, mask)

    # Step 0 has values 1 and 3, step 1 has 10 and 30, step 2 has 5 alone.
    assert norm.running_mean[:3, 0].tolist() == pytest.approx([2.0, 20.0, 5.0])
    # Unbiased variances; step 2, seen once, keeps its initial variance 1.
    assert norm.running_var[:3, 0].tolist() == pytest.approx([2.0, 200.0, 1.0])
    assert norm.running_mean[3, 0].item() == 0.0  # unseen step keeps its statistics
    assert output[0, 0, 0].item() == pytest.approx(-1.0, abs=1e-4)
    assert output[1, 0, 1].item() == pytest.approx(1.0, abs=1e-4)
    assert output[1, 0, 2].item() == 0.0  # padded position


def test_batch_norm_rare_step_uses_pooled_statistics() -> None:
    values = torch.tensor([[[1.0, 10.0, 5.0]], [[3.0, 30.0, 0.0]]])  # [B=2, C=1, L=3]
    mask = torch.tensor([[[1.0, 1.0, 1.0]], [[1.0, 1.0, 0.0]]])
    norm = MaskedTimeBatchNorm(1, steps=4, momentum=1.0, min_count=2).train()

    output = norm(values, mask)

    # Step 2 has one real position (5), below min_count, so it takes the statistics of all
    # five real positions 1, 10, 5, 3, 30: mean 9.8, biased variance 110.96, unbiased 138.7.
    assert norm.running_mean[:3, 0].tolist() == pytest.approx([2.0, 20.0, 9.8])
    assert norm.running_var[:3, 0].tolist() == pytest.approx([2.0, 200.0, 138.7])
    assert output[0, 0, 2].item() == pytest.approx((5.0 - 9.8) / 110.96**0.5, abs=1e-4)
    assert output[0, 0, 0].item() == pytest.approx(-1.0, abs=1e-4)  # own statistics


def test_batch_norm_lone_position_keeps_its_value() -> None:
    # Only row 0 reaches steps 3 and 4. Normalizing such a step with its own statistics would
    # map every value there to `bias` and so erase the inputs of long sessions.
    torch.manual_seed(0)
    x = torch.randn(4, 3, 5)
    mask = torch.zeros(4, 1, 5)
    for row, length in enumerate([5, 3, 3, 2]):
        mask[row, :, :length] = 1.0
    changed = x.clone()
    changed[0, :, 4] += 2.0
    norm = MaskedTimeBatchNorm(3, steps=8).train()
    with torch.no_grad():
        norm.bias.fill_(0.5)

    output = norm(x, mask)
    output_changed = norm(changed, mask)

    assert not torch.allclose(output[0, :, 4], torch.full((3,), 0.5))
    assert not torch.allclose(output[0, :, 4], output_changed[0, :, 4])


def test_batch_norm_eval_matches_training_on_rare_steps() -> None:
    torch.manual_seed(0)
    lengths = [12, 4, 3, 3, 2, 2, 2, 1]
    x, mask = masked_batch(torch.randn(8, 3, 12), lengths, 12, left=False)
    norm = MaskedTimeBatchNorm(3, steps=16, momentum=0.5, min_count=4).train()
    for _ in range(60):
        training = norm(x, mask)
    norm.eval()

    evaluation = norm(x, mask)

    # The steps that only the first row reaches were normalized with the pooled statistics in
    # training, and their running statistics converged to the same numbers (the variance up to
    # the unbiased factor n / (n - 1) of the n = 29 real positions).
    scale = (29 / 28) ** 0.5
    torch.testing.assert_close(evaluation[0, :, 4:] * scale, training[0, :, 4:], atol=1e-3, rtol=0)


def test_batch_norm_rejects_zero_min_count() -> None:
    with pytest.raises(ConfigError, match="min_count=0"):
        MaskedTimeBatchNorm(2, steps=3, min_count=0)


def test_batch_norm_eval_left_and_right_padding_agree() -> None:
    torch.manual_seed(0)
    norm = MaskedTimeBatchNorm(2, steps=3)
    norm(*masked_batch(torch.randn(4, 2, 5), [5, 5, 3, 2], 5, left=False))
    norm.eval()
    values = torch.randn(2, 2, 4)

    right = norm(*masked_batch(values, [4, 2], 6, left=False))
    left = norm(*masked_batch(values, [4, 2], 6, left=True))

    torch.testing.assert_close(right[0, :, :4], left[0, :, 2:])
    torch.testing.assert_close(right[1, :, :2], left[1, :, 4:])


def test_hiertcn_with_batch_norm_serving_parity() -> None:
    torch.manual_seed(0)
    config = ModelConfig(
        embedding_dim=4,
        hidden_size=3,
        gru_layers=1,
        tcn_channels=5,
        kernel_size=2,
        dilations=(1, 2),
        batch_norm=True,
        batch_norm_steps=8,
    )
    model = build_model(config, 10)
    assert isinstance(model, HierTCN)
    model.train()
    model(torch.randint(0, 10, (4, 6)), torch.tensor([6, 5, 3, 1]), model.initial_carry(4, "cpu"))
    model.eval()
    items = torch.tensor([[1, 2, 3, 4, 5]])
    state = torch.randn(1, 1, 3)
    queries, _ = model(items, torch.tensor([5]), model.carry_from_state(state))
    table = model.item_embeddings().detach()

    for prefix_length in range(5):
        prefix = torch.zeros(1, prefix_length + 2, 4)
        if prefix_length:
            prefix[0, 2:] = table[items[0, :prefix_length]]
        served = model.session_user_embedding(prefix, torch.tensor([prefix_length]), state)
        torch.testing.assert_close(served[0], queries[0, prefix_length], atol=1e-5, rtol=0)


def test_tcn_dropout_only_in_training() -> None:
    torch.manual_seed(0)
    tcn = TemporalConvNet(3, 4, kernel_size=2, dilations=(1, 2), dropout=0.5)
    plain = TemporalConvNet(3, 4, kernel_size=2, dilations=(1, 2), dropout=0.0)
    plain.load_state_dict(tcn.state_dict())
    inputs = torch.randn(2, 6, 3)
    valid = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])

    tcn.eval()
    evaluation = tcn(inputs, valid)
    tcn.train()
    training = tcn(inputs, valid)

    torch.testing.assert_close(evaluation, plain.eval()(inputs, valid))
    assert not torch.allclose(training, evaluation)
    assert training[1, 4:].abs().sum().item() == 0  # padded positions stay zero
