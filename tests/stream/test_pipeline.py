"""Tests of stream.pipeline on a numpy fake bundle: sessions, prefixes, batching and scoring."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from statestore import UserState
from stream.events import Event
from stream.pipeline import Pipeline, PipelineConfig
from stream.scoring import rank_of
from tests.stream.fake_bundle import FakeBundle, FakeManifest

GAP = 1800.0
_offsets = itertools.count()


def make_event(
    user: str,
    row: int,
    ts: float,
    impressions: tuple[int, ...] | None = None,
    candidates: tuple[int, ...] | None = None,
) -> Event:
    offset = next(_offsets)
    return Event(
        user=user,
        item=f"i{row}",
        row=row,
        ts=ts,
        impressions=impressions,
        candidates=candidates,
        event_type=None,
        event_id=f"test[0]@{offset}",
        topic="test",
        partition=0,
        offset=offset,
    )


def embedding_of(bundle: FakeBundle, rows: list[int], state: np.ndarray) -> np.ndarray:
    """Return the fake session step's user embedding [D] for one prefix of item rows."""
    prefix = np.asarray(bundle.item_table[rows], dtype=np.float32)[None]
    lengths = np.array([len(rows)], dtype=np.int64)
    return bundle.session_step(prefix, lengths, state[None].astype(np.float32))[0]


@pytest.fixture
def bundle() -> FakeBundle:
    return FakeBundle()


@pytest.fixture
def pipeline(bundle: FakeBundle) -> Pipeline:
    return Pipeline(bundle, PipelineConfig(session_gap=GAP, top_k=5, max_session_items=4))


def test_new_user_starts_from_start_state(pipeline: Pipeline, bundle: FakeBundle) -> None:
    result = pipeline.process([make_event("u1", 3, 1000.0)], {})

    state = result.states["u1"]
    np.testing.assert_array_equal(state.gru_state, bundle.start_state)
    assert state.session_count == 1
    assert state.session_length == 1
    assert state.session_start == 1000.0
    assert state.last_ts == 1000.0
    assert state.session_items.tolist() == [3]
    np.testing.assert_array_equal(state.session_sum, bundle.item_table[3])
    expected = embedding_of(bundle, [3], bundle.start_state)
    np.testing.assert_array_equal(state.last_embedding, expected)
    output = result.outputs[0]
    assert output.session == 1
    assert output.model == "fake00000000"
    assert output.user == "u1"
    assert result.live == [None]


def test_output_lists_catalog_top_k(pipeline: Pipeline, bundle: FakeBundle) -> None:
    result = pipeline.process([make_event("u1", 3, 1000.0)], {})

    embedding = result.states["u1"].last_embedding
    scores = bundle.item_table @ embedding
    expected_rows = sorted(range(len(scores)), key=lambda row: (-scores[row], row))[:5]
    output = result.outputs[0]
    assert output.items == tuple(f"i{row}" for row in expected_rows)
    np.testing.assert_allclose(output.scores, scores[expected_rows], rtol=1e-6)
    assert list(output.scores) == sorted(output.scores, reverse=True)


def test_gap_closes_session_first(pipeline: Pipeline, bundle: FakeBundle) -> None:
    events = [make_event("u1", 1, 0.0), make_event("u1", 2, 100.0), make_event("u1", 7, 2000.0)]

    result = pipeline.process(events, {})

    assert result.closed["gap"] == 1
    assert bundle.close_calls == [1]
    assert bundle.step_calls == [3]
    session_mean = ((bundle.item_table[1] + bundle.item_table[2]) / np.float32(2))[None]
    closed_state = bundle.session_close(bundle.start_state[None], session_mean)[0]
    state = result.states["u1"]
    np.testing.assert_array_equal(state.gru_state, closed_state)
    assert state.session_count == 2
    assert state.session_length == 1
    assert state.session_start == 2000.0
    assert state.session_items.tolist() == [7]
    assert [output.session for output in result.outputs] == [1, 1, 2]
    expected = embedding_of(bundle, [7], closed_state)
    np.testing.assert_array_equal(state.last_embedding, expected)


def test_gap_of_exactly_session_gap_stays(pipeline: Pipeline) -> None:
    events = [make_event("u1", 1, 0.0), make_event("u1", 2, GAP)]

    result = pipeline.process(events, {})

    assert result.closed["gap"] == 0
    assert result.states["u1"].session_length == 2
    assert [output.session for output in result.outputs] == [1, 1]


def test_events_of_one_user_run_in_order(pipeline: Pipeline, bundle: FakeBundle) -> None:
    events = [make_event("u1", row, 10.0 * index) for index, row in enumerate([4, 9, 2])]

    result = pipeline.process(events, {})

    assert bundle.step_calls == [3]
    prefixes = [[4], [4, 9], [4, 9, 2]]
    for output, prefix in zip(result.outputs, prefixes, strict=True):
        embedding = embedding_of(bundle, prefix, bundle.start_state)
        scores = bundle.item_table @ embedding
        assert output.items[0] == f"i{int(np.argmax(scores))}"
    assert result.states["u1"].session_items.tolist() == [4, 9, 2]


def test_prefix_capped_to_max_session_items(pipeline: Pipeline, bundle: FakeBundle) -> None:
    rows = [1, 2, 3, 4, 5, 6]
    events = [make_event("u1", row, float(index)) for index, row in enumerate(rows)]

    result = pipeline.process(events, {})

    state = result.states["u1"]
    assert state.session_items.tolist() == [3, 4, 5, 6]
    assert state.session_length == 6
    expected_sum = np.zeros(bundle.item_table.shape[1], dtype=np.float32)
    for row in rows:
        expected_sum = expected_sum + bundle.item_table[row]
    np.testing.assert_array_equal(state.session_sum, expected_sum)
    expected = embedding_of(bundle, [3, 4, 5, 6], bundle.start_state)
    np.testing.assert_array_equal(state.last_embedding, expected)


def test_closes_batched_in_rounds(pipeline: Pipeline, bundle: FakeBundle) -> None:
    events = [
        make_event("a", 1, 0.0),
        make_event("b", 2, 0.0),
        make_event("a", 3, 5000.0),
        make_event("b", 4, 5000.0),
        make_event("a", 5, 10000.0),
        make_event("c", 6, 10000.0),
    ]

    result = pipeline.process(events, {})

    assert bundle.close_calls == [2, 1]
    assert bundle.step_calls == [6]
    assert result.closed["gap"] == 3
    assert result.states["a"].session_count == 3
    assert result.states["b"].session_count == 2
    assert result.states["c"].session_count == 1


def test_states_argument_not_mutated(pipeline: Pipeline) -> None:
    first = pipeline.process([make_event("u1", 1, 0.0)], {})
    before = first.states["u1"]
    snapshot = UserState(
        gru_state=before.gru_state.copy(),
        session_items=before.session_items.copy(),
        session_sum=before.session_sum.copy(),
        session_length=before.session_length,
        session_start=before.session_start,
        last_ts=before.last_ts,
        session_count=before.session_count,
        last_embedding=before.last_embedding.copy(),
        partition=before.partition,
    )

    pipeline.process([make_event("u1", 2, 10.0), make_event("u1", 3, 9000.0)], first.states)

    assert before.same_as(snapshot)


def random_log(bundle: FakeBundle, count: int, seed: int) -> list[Event]:
    rng = np.random.default_rng(seed)
    clocks = {f"u{index}": float(rng.integers(0, 1000)) for index in range(9)}
    users = list(clocks)
    events = []
    for _ in range(count):
        user = users[int(rng.integers(len(users)))]
        clocks[user] += float(rng.choice([5.0, 60.0, GAP, GAP + 1.0, 4 * GAP]))
        row = int(rng.integers(len(bundle.item_ids)))
        impressions = None
        candidates = None
        if rng.random() < 0.3:
            impressions = tuple(int(x) for x in rng.choice(50, size=6, replace=False))
        if rng.random() < 0.2:
            candidates = tuple(int(x) for x in rng.choice(50, size=8, replace=False))
        events.append(make_event(user, row, clocks[user], impressions, candidates))
    return events


def run_in_batches(pipeline: Pipeline, events: list[Event], size: int):
    states: dict[str, UserState] = {}
    outputs, live, closed = [], [], 0
    for start in range(0, len(events), size):
        result = pipeline.process(events[start : start + size], states)
        states.update(result.states)
        outputs.extend(result.outputs)
        live.extend(result.live)
        closed += result.closed["gap"]
    return outputs, states, live, closed


def test_batch_split_gives_same_results(pipeline: Pipeline, bundle: FakeBundle) -> None:
    events = random_log(bundle, 150, seed=1)

    runs = [run_in_batches(pipeline, events, size) for size in (1, 7, 64)]

    reference_outputs, reference_states, reference_live, reference_closed = runs[0]
    assert reference_closed > 5
    for outputs, states, live, closed in runs[1:]:
        assert closed == reference_closed
        assert live == reference_live
        assert [o.items for o in outputs] == [o.items for o in reference_outputs]
        assert [o.session for o in outputs] == [o.session for o in reference_outputs]
        for output, reference in zip(outputs, reference_outputs, strict=True):
            np.testing.assert_allclose(output.scores, reference.scores, rtol=1e-6, atol=1e-6)
        assert states.keys() == reference_states.keys()
        for user, state in states.items():
            assert state.same_as(reference_states[user]), user


def test_candidates_ranked_instead_of_catalog(pipeline: Pipeline, bundle: FakeBundle) -> None:
    candidates = (40, 3, 17, 8, 22, 31, 5)

    result = pipeline.process([make_event("u1", 1, 0.0, candidates=candidates)], {})

    embedding = result.states["u1"].last_embedding
    scores = {row: float(bundle.item_table[row] @ embedding) for row in candidates}
    expected = sorted(candidates, key=lambda row: (-scores[row], row))[:5]
    assert result.outputs[0].items == tuple(f"i{row}" for row in expected)


def test_fewer_candidates_than_k(pipeline: Pipeline) -> None:
    result = pipeline.process([make_event("u1", 1, 0.0, candidates=(4, 9))], {})

    assert sorted(result.outputs[0].items) == ["i4", "i9"]


def test_live_rank_uses_previous_embedding(pipeline: Pipeline, bundle: FakeBundle) -> None:
    impressions = (11, 12, 13)
    events = [
        make_event("u1", 1, 0.0),
        make_event("u1", 2, 10.0),
        make_event("u1", 12, 20.0, impressions=impressions),
    ]

    result = pipeline.process(events, {})

    first = embedding_of(bundle, [1], bundle.start_state)
    second = embedding_of(bundle, [1, 2], bundle.start_state)
    table = bundle.item_table
    assert result.live[0] is None
    assert result.live[1] == rank_of(2, first, table)
    assert result.live[1][1] == 50
    assert result.live[2] == rank_of(12, second, table, np.array(impressions))
    assert result.live[2][1] == 3


def test_rank_counts_ties_pessimistically() -> None:
    table = np.array([[1.0], [1.0], [0.5], [2.0]], dtype=np.float32)
    embedding = np.array([1.0], dtype=np.float32)

    assert rank_of(0, embedding, table) == (3, 4)
    assert rank_of(1, embedding, table) == (3, 4)
    assert rank_of(2, embedding, table, np.array([0, 2])) == (2, 2)


def test_close_idle_closes_open_sessions(pipeline: Pipeline, bundle: FakeBundle) -> None:
    first = pipeline.process([make_event("u1", 1, 0.0), make_event("u2", 2, 0.0)], {})
    bundle.close_calls.clear()

    closed = pipeline.close_idle(first.states).states

    assert bundle.close_calls == [2]
    state = closed["u1"]
    assert state.session_length == 0
    assert state.session_items.tolist() == []
    assert not state.session_sum.any()
    assert state.session_count == 1
    expected = bundle.session_close(bundle.start_state[None], bundle.item_table[1][None])[0]
    np.testing.assert_array_equal(state.gru_state, expected)
    assert first.states["u1"].session_length == 1


def test_event_after_timer_close_opens_session(pipeline: Pipeline, bundle: FakeBundle) -> None:
    first = pipeline.process([make_event("u1", 1, 0.0)], {})
    closed = pipeline.close_idle(first.states).states
    bundle.close_calls.clear()

    result = pipeline.process([make_event("u1", 2, 5000.0)], closed)

    assert bundle.close_calls == []
    assert result.closed["gap"] == 0
    assert result.states["u1"].session_count == 2
    assert result.outputs[0].session == 2
    np.testing.assert_array_equal(result.states["u1"].gru_state, closed["u1"].gru_state)


def test_close_idle_skips_closed_sessions(pipeline: Pipeline) -> None:
    first = pipeline.process([make_event("u1", 1, 0.0)], {})
    closed = pipeline.close_idle(first.states).states

    assert pipeline.close_idle(closed).states == {}


def test_empty_batch(pipeline: Pipeline, bundle: FakeBundle) -> None:
    result = pipeline.process([], {})

    assert result.outputs == []
    assert result.states == {}
    assert bundle.step_calls == []


def test_float16_table_accepted() -> None:
    bundle = FakeBundle(table_dtype=np.float16)
    pipeline = Pipeline(bundle)

    result = pipeline.process([make_event("u1", 1, 0.0), make_event("u1", 2, 1.0)], {})

    assert len(result.outputs[1].items) == 5
    assert result.states["u1"].session_sum.dtype == np.float32


def test_config_defaults_from_manifest() -> None:
    manifest = FakeManifest(session_gap=60.0, top_k=3, max_session_items=2, version="v1")
    pipeline = Pipeline(FakeBundle(manifest=manifest))

    assert pipeline.config == PipelineConfig(60.0, 3, 2, "v1")


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (
            PipelineConfig(session_gap=0.0),
            "^session_gap 0 is invalid: use a number of seconds > 0$",
        ),
        (PipelineConfig(top_k=0), "^top_k 0 is invalid: use an integer >= 1$"),
        (
            PipelineConfig(max_session_items=0),
            "^max_session_items 0 is invalid: use an integer >= 1$",
        ),
    ],
)
def test_invalid_config_rejected(config: PipelineConfig, message: str) -> None:
    from stream.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        Pipeline(FakeBundle(), config)


def torch_embedding(model, rows: list[int], state: np.ndarray) -> np.ndarray:
    """Return the torch model's user embedding [D] after the session prefix `rows`."""
    import torch

    with torch.no_grad():
        table = model.item_embeddings()
        prefix = table[torch.tensor(rows)].unsqueeze(0)  # [1, L, D]
        lengths = torch.tensor([len(rows)])
        embedding = model.session_user_embedding(prefix, lengths, torch.from_numpy(state)[None])
    return embedding[0].numpy()


def torch_close(model, state: np.ndarray, rows: list[int]) -> np.ndarray:
    """Return the torch model's GRU state [G, H] after closing a session of `rows`."""
    import torch

    with torch.no_grad():
        mean = model.item_embeddings()[torch.tensor(rows)].mean(dim=0, keepdim=True)
        return model.close_session(torch.from_numpy(state)[None], mean)[0].numpy()


def test_onnx_pipeline_matches_torch_model(onnx_bundle, tiny_model) -> None:
    pipeline = Pipeline(onnx_bundle)
    rows = [3, 17, 42, 8, 99]
    times = [0.0, 60.0, 120.0, 5000.0, 5030.0]
    events = [make_event("u1", row, ts) for row, ts in zip(rows, times, strict=True)]
    start = np.asarray(onnx_bundle.start_state, dtype=np.float32)

    result = pipeline.process(events, {})

    closed = torch_close(tiny_model, start, [3, 17, 42])
    state = result.states["u1"]
    np.testing.assert_allclose(state.gru_state, closed, atol=1e-5)
    expected = torch_embedding(tiny_model, [8, 99], closed)
    np.testing.assert_allclose(state.last_embedding, expected, atol=1e-5)
    assert result.outputs[0].model == onnx_bundle.version
    assert result.closed["gap"] == 1


def test_onnx_prefix_capped_at_receptive_field(onnx_bundle, tiny_model) -> None:
    pipeline = Pipeline(onnx_bundle)
    cap = pipeline.config.max_session_items
    rows = [(7 * index) % 120 for index in range(cap + 6)]
    events = [make_event("u1", row, float(index)) for index, row in enumerate(rows)]
    start = np.asarray(onnx_bundle.start_state, dtype=np.float32)

    result = pipeline.process(events, {})

    # The receptive field makes the capped prefix give the whole session's embedding.
    expected = torch_embedding(tiny_model, rows, start)
    np.testing.assert_allclose(result.states["u1"].last_embedding, expected, atol=1e-5)
    assert len(result.states["u1"].session_items) == cap


def test_onnx_batch_split_gives_same_results(onnx_bundle) -> None:
    pipeline = Pipeline(onnx_bundle, PipelineConfig(session_gap=GAP, top_k=5))
    events = random_log(FakeBundle(num_items=120), 120, seed=9)

    runs = [run_in_batches(pipeline, events, size) for size in (1, 7, 64)]

    reference_outputs, reference_states, _, reference_closed = runs[0]
    for outputs, states, _, closed in runs[1:]:
        assert closed == reference_closed
        assert [o.items for o in outputs] == [o.items for o in reference_outputs]
        for output, reference in zip(outputs, reference_outputs, strict=True):
            np.testing.assert_allclose(output.scores, reference.scores, atol=1e-5)
        for user, state in states.items():
            reference = reference_states[user]
            np.testing.assert_allclose(state.gru_state, reference.gru_state, atol=1e-5)
            np.testing.assert_allclose(state.last_embedding, reference.last_embedding, atol=1e-5)
            assert state.session_items.tolist() == reference.session_items.tolist()


def _state_of_other_bundle(other: FakeBundle, pipeline_of_other: Pipeline) -> UserState:
    """Return a user's state after one event of `other` (another G, H and D), session open."""
    result = pipeline_of_other.process([make_event("u1", 3, 1000.0)], {})
    return result.states["u1"]


def test_state_of_other_shape_starts_anew(pipeline: Pipeline, bundle: FakeBundle) -> None:
    other = FakeBundle(dim=16, layers=1, hidden=16, seed=1)
    stored = _state_of_other_bundle(other, Pipeline(other, PipelineConfig(session_gap=GAP)))
    event = make_event("u1", 4, 1000.0 + 2 * GAP)

    result = pipeline.process([event], {"u1": stored})
    fresh = pipeline.process([event], {})

    assert result.reset == 1
    assert result.live == [None]
    assert result.outputs[0].items == fresh.outputs[0].items
    assert result.states["u1"].gru_state.shape == bundle.start_state.shape
    assert result.states["u1"].session_count == 1


def test_state_of_other_shape_is_logged_per_batch(
    pipeline: Pipeline, caplog: pytest.LogCaptureFixture
) -> None:
    other = FakeBundle(dim=16, layers=1, hidden=16, seed=1)
    other_pipeline = Pipeline(other, PipelineConfig(session_gap=GAP))
    stored = {user: _state_of_other_bundle(other, other_pipeline) for user in ("u1", "u2")}
    events = [make_event("u1", 4, 5000.0), make_event("u2", 5, 5000.0)]

    with caplog.at_level("WARNING", logger="stream.pipeline"):
        result = pipeline.process(events, stored)

    assert result.reset == 2
    warnings = [r for r in caplog.records if "do not fit the bundle" in r.getMessage()]
    assert len(warnings) == 1
    assert warnings[0].getMessage().startswith("2 stored states")


def test_state_with_rows_beyond_catalog_starts_anew(pipeline: Pipeline) -> None:
    big = FakeBundle(num_items=500)
    stored = Pipeline(big, PipelineConfig(session_gap=GAP)).process(
        [make_event("u1", 400, 1000.0)], {}
    )
    result = pipeline.process([make_event("u1", 4, 1010.0)], stored.states)
    assert result.reset == 1
    assert result.states["u1"].session_items.tolist() == [4]


def test_close_idle_resets_state_of_other_shape(pipeline: Pipeline, bundle: FakeBundle) -> None:
    other = FakeBundle(dim=16, layers=1, hidden=16, seed=1)
    stored = _state_of_other_bundle(other, Pipeline(other, PipelineConfig(session_gap=GAP)))

    closed = pipeline.close_idle({"u1": stored}).states

    assert closed["u1"].session_length == 0
    assert closed["u1"].gru_state.shape == bundle.start_state.shape
    assert closed["u1"].last_ts == stored.last_ts


def test_close_idle_counts_reset_states(pipeline: Pipeline, bundle: FakeBundle) -> None:
    other = FakeBundle(dim=16, layers=1, hidden=16, seed=1)
    stale = _state_of_other_bundle(other, Pipeline(other, PipelineConfig(session_gap=GAP)))
    fitting = pipeline.process([make_event("u2", 3, 1000.0)], {}).states["u2"]

    idle = pipeline.close_idle({"u1": stale, "u2": fitting})

    assert idle.reset == 1
    assert set(idle.states) == {"u1", "u2"}


def test_close_idle_without_resets_counts_zero(pipeline: Pipeline) -> None:
    fitting = pipeline.process([make_event("u2", 3, 1000.0)], {}).states

    assert pipeline.close_idle(fitting).reset == 0
    assert pipeline.close_idle({}).reset == 0


def _reset_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "do not fit the bundle" in r.getMessage()]


def test_reset_log_names_rows_beyond_catalog(
    pipeline: Pipeline, caplog: pytest.LogCaptureFixture
) -> None:
    # Same G, H and D, but a larger catalog: only the item rows are out of range.
    big = FakeBundle(num_items=500)
    stored = Pipeline(big, PipelineConfig(session_gap=GAP)).process(
        [make_event("u1", 400, 1000.0)], {}
    )

    with caplog.at_level("WARNING", logger="stream.pipeline"):
        pipeline.close_idle(stored.states)

    (line,) = _reset_warnings(caplog)
    assert line.startswith("1 stored states do not fit the bundle of version fake00000000")
    assert "1 with session item rows beyond this bundle's 50 items" in line
    assert "GRU state" not in line


def test_non_finite_state_reset(pipeline: Pipeline, caplog: pytest.LogCaptureFixture) -> None:
    from dataclasses import replace

    stored = pipeline.process([make_event("u1", 4, 1000.0)], {}).states["u1"]
    gru = stored.gru_state.copy()
    gru[0, 0] = np.nan
    broken = replace(stored, gru_state=gru)

    with caplog.at_level("WARNING", logger="stream.pipeline"):
        result = pipeline.process([make_event("u1", 5, 1060.0)], {"u1": broken})

    (line,) = _reset_warnings(caplog)
    assert "1 with a NaN or infinite value in its GRU state" in line
    assert result.reset == 1
    assert np.isfinite(result.states["u1"].gru_state).all()
    assert all(np.isfinite(result.outputs[0].scores))


def test_reset_log_names_gru_shape(pipeline: Pipeline, caplog: pytest.LogCaptureFixture) -> None:
    other = FakeBundle(dim=8, layers=1, hidden=16, seed=1)
    stored = _state_of_other_bundle(other, Pipeline(other, PipelineConfig(session_gap=GAP)))

    with caplog.at_level("WARNING", logger="stream.pipeline"):
        pipeline.process([make_event("u1", 4, 5000.0)], {"u1": stored})

    (line,) = _reset_warnings(caplog)
    assert "1 with GRU state [G, H] = [1, 16] instead of [2, 6]" in line
    assert "items" not in line


def test_reset_log_counts_each_cause(pipeline: Pipeline, caplog: pytest.LogCaptureFixture) -> None:
    wide = FakeBundle(dim=16, seed=1)
    big = FakeBundle(num_items=500)
    stored = {
        "u1": _state_of_other_bundle(wide, Pipeline(wide, PipelineConfig(session_gap=GAP))),
        "u2": Pipeline(big, PipelineConfig(session_gap=GAP))
        .process([make_event("u2", 400, 1000.0)], {})
        .states["u2"],
        "u3": Pipeline(big, PipelineConfig(session_gap=GAP))
        .process([make_event("u3", 300, 1000.0)], {})
        .states["u3"],
    }

    with caplog.at_level("WARNING", logger="stream.pipeline"):
        result = pipeline.process([make_event(user, 4, 5000.0) for user in stored], stored)

    assert result.reset == 3
    (line,) = _reset_warnings(caplog)
    assert "2 with session item rows beyond this bundle's 50 items" in line
    assert "1 with session sum of shape [16] instead of [8]" in line
