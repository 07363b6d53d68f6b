"""Session-close outputs (`--publish-on-session-close`): the pipeline, a real ONNX bundle
against the torch model, and replay against `hiertcn evaluate` on a small log."""

from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pytest

from statestore import UserState
from stream.events import Event
from stream.pipeline import SESSION_CLOSE_TRIGGER, BatchResult, Pipeline, PipelineConfig
from stream.records import read_records
from stream.replay import MemoryStates, OutputFile, Replay, ReplayConfig
from stream.scoring import rank_of, top_k_catalog
from tests.stream.conftest import NUM_ITEMS
from tests.stream.fake_bundle import FakeBundle
from tests.stream.test_pipeline import GAP, make_event


@pytest.fixture
def bundle() -> FakeBundle:
    return FakeBundle()


@pytest.fixture
def pipeline(bundle: FakeBundle) -> Pipeline:
    config = PipelineConfig(session_gap=GAP, top_k=5, session_close_outputs=True)
    return Pipeline(bundle, config)


def session_start_embedding(bundle: FakeBundle, gru_state: np.ndarray) -> np.ndarray:
    """Return the fake bundle's user embedding [D] for an empty prefix after `gru_state`."""
    prefix = np.zeros((1, 1, bundle.item_table.shape[1]), dtype=np.float32)
    lengths = np.zeros(1, dtype=np.int64)
    return bundle.session_step(prefix, lengths, gru_state[None])[0]


# -- the pipeline on a fake bundle ------------------------------------------------------------


def test_close_outputs_off_by_default(bundle: FakeBundle) -> None:
    pipeline = Pipeline(bundle, PipelineConfig(session_gap=GAP, top_k=5))
    first = pipeline.process([make_event("u1", 1, 0.0)], {})

    idle = pipeline.close_idle(first.states)

    assert idle.outputs == []
    assert idle.states["u1"].session_length == 0
    np.testing.assert_array_equal(
        idle.states["u1"].last_embedding, first.states["u1"].last_embedding
    )


def test_close_output_fields(pipeline: Pipeline) -> None:
    first = pipeline.process([make_event("u1", 1, 100.0), make_event("u1", 2, 160.0)], {})

    (output,) = pipeline.close_idle(first.states).outputs

    assert output.user == "u1"
    assert output.event_id is None
    assert output.ts == 160.0 + GAP
    assert output.session == 2
    assert output.trigger == SESSION_CLOSE_TRIGGER
    assert output.model == "fake00000000"
    assert len(output.items) == 5
    assert len(output.scores) == 5
    assert output.to_dict() == {
        "user": "u1",
        "event_id": None,
        "ts": 160.0 + GAP,
        "items": list(output.items),
        "scores": list(output.scores),
        "model": "fake00000000",
        "session": 2,
        "trigger": "session_close",
    }


def test_event_outputs_have_no_trigger(pipeline: Pipeline) -> None:
    result = pipeline.process([make_event("u1", 1, 100.0)], {})

    output = result.outputs[0].to_dict()

    assert "trigger" not in output
    assert sorted(output) == ["event_id", "items", "model", "scores", "session", "ts", "user"]


def test_close_output_ranks_session_start(pipeline: Pipeline, bundle: FakeBundle) -> None:
    first = pipeline.process([make_event("u1", 1, 0.0), make_event("u2", 7, 0.0)], {})
    bundle.step_calls.clear()

    idle = pipeline.close_idle(first.states)

    assert bundle.step_calls == [2]  # one batched session step for every close
    for output in idle.outputs:
        state = idle.states[output.user]
        expected = session_start_embedding(bundle, state.gru_state)
        np.testing.assert_array_equal(state.last_embedding, expected)
        rows, scores = top_k_catalog(expected[None], bundle.item_table, 5)
        assert list(output.items) == [f"i{row}" for row in rows[0]]
        np.testing.assert_allclose(output.scores, scores[0], rtol=0, atol=1e-6)


def test_close_output_after_updated_gru(pipeline: Pipeline, bundle: FakeBundle) -> None:
    first = pipeline.process([make_event("u1", 1, 0.0)], {})

    idle = pipeline.close_idle(first.states)

    state = idle.states["u1"]
    assert not np.array_equal(state.gru_state, first.states["u1"].gru_state)
    stale = session_start_embedding(bundle, first.states["u1"].gru_state)
    assert not np.allclose(state.last_embedding, stale)


def test_next_event_ranked_against_close_output(pipeline: Pipeline, bundle: FakeBundle) -> None:
    first = pipeline.process([make_event("u1", 1, 0.0)], {})
    idle = pipeline.close_idle(first.states)

    result = pipeline.process([make_event("u1", 9, 5000.0)], idle.states)

    expected = rank_of(9, idle.states["u1"].last_embedding, bundle.item_table)
    assert result.live == [expected]
    assert result.outputs[0].session == idle.outputs[0].session
    assert result.closed["gap"] == 0


def test_no_close_output_without_open_session(pipeline: Pipeline) -> None:
    first = pipeline.process([make_event("u1", 1, 0.0)], {})
    closed = pipeline.close_idle(first.states).states

    idle = pipeline.close_idle(closed)

    assert idle.states == {}
    assert idle.outputs == []


def test_no_close_output_for_reset_state(pipeline: Pipeline) -> None:
    other = FakeBundle(dim=16, layers=1, hidden=16, seed=1)
    stored = Pipeline(other, PipelineConfig(session_gap=GAP)).process(
        [make_event("u1", 3, 1000.0)], {}
    )

    idle = pipeline.close_idle(stored.states)

    assert idle.states["u1"].session_count == 0
    assert idle.outputs == []


# -- a real ONNX bundle against the torch model -----------------------------------------------


def test_onnx_session_start_equals_torch(tiny_model, onnx_bundle) -> None:
    """The session-close output's embedding is the torch model's prediction for the first
    event of the next session, which `hiertcn evaluate` ranks."""
    import torch

    sessions = {
        "a": ([3, 17, 42, 5], [8, 9]),
        "b": ([60], [1, 2, 3]),
        "c": ([11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25], [4]),
    }
    pipeline = Pipeline(onnx_bundle, PipelineConfig(session_close_outputs=True))
    events = [
        make_event(user, row, 1_700_000_000.0 + 10.0 * index)
        for user, (first, _second) in sessions.items()
        for index, row in enumerate(first)
    ]
    idle = pipeline.close_idle(pipeline.process(events, {}).states)

    for user, (first, second) in sessions.items():
        model_input = torch.tensor([first])
        carry = tiny_model.initial_carry(1, "cpu")
        with torch.no_grad():
            _queries, carry = tiny_model(model_input, torch.tensor([len(first)]), carry)
            queries, _carry = tiny_model(torch.tensor([second]), torch.tensor([len(second)]), carry)
        expected = queries[0, 0].numpy()  # the prediction for the second session's first event
        np.testing.assert_allclose(idle.states[user].last_embedding, expected, rtol=0, atol=1e-4)
        (output,) = [output for output in idle.outputs if output.user == user]
        scores = expected @ tiny_model.item_embeddings().detach().numpy().T
        np.testing.assert_allclose(output.scores, np.sort(scores)[::-1][:5], rtol=0, atol=1e-4)


# -- replay against `hiertcn evaluate` --------------------------------------------------------


class RecordingPipeline(Pipeline):
    """A pipeline that records, per event, its live rank and whether a timer closed the
    user's previous session just before it."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.events: list[tuple[str, float, tuple[int, int] | None, bool]] = []

    def process(self, events: Sequence[Event], states: Mapping[str, UserState]) -> BatchResult:
        result = super().process(events, states)
        seen: set[str] = set()
        for event, live in zip(events, result.live, strict=True):
            state = states.get(event.user)
            # Only the user's first event of a batch can follow a timer close: later ones
            # follow that event, so a gap closes their session.
            after_timer = (
                event.user not in seen
                and state is not None
                and state.session_length == 0
                and state.session_count > 0
            )
            seen.add(event.user)
            self.events.append((event.user, event.ts, live, after_timer))
        return result


def write_session_log(path: Path, users: int, seed: int) -> None:
    """Write a JSONL log of `users` users with 3 to 6 sessions each, sorted by time.

    Events within a session are 10 to 600 s apart; sessions are 2000 to 20000 s apart, above
    the 1800 s gap. Times are whole seconds, as `hiertcn data` stores them.
    """
    rng = random.Random(seed)
    events = []
    for user in range(users):
        clock = 1_700_000_000 + rng.randrange(3600)
        for _session in range(rng.randint(3, 6)):
            for _event in range(rng.randint(1, 6)):
                events.append({"user": f"u{user}", "item": rng.randrange(NUM_ITEMS), "ts": clock})
                clock += rng.randint(10, 600)
            clock += rng.randint(2000, 20000)
    events.sort(key=lambda event: event["ts"])
    path.write_text("".join(json.dumps(event) + "\n" for event in events))


def count_later_sessions(path: Path) -> int:
    """Count the sessions of the log after each user's first, by the 1800 s gap."""
    last_ts: dict[str, int] = {}
    count = 0
    for line in path.read_text().splitlines():
        event = json.loads(line)
        previous = last_ts.get(event["user"])
        count += previous is not None and event["ts"] - previous > 1800
        last_ts[event["user"]] = event["ts"]
    return count


def evaluate_ranks(model, path: Path) -> dict[tuple[str, int], int]:
    """Return `hiertcn evaluate`'s rank of each ranked event, keyed by (user, index of the
    event among the user's events)."""
    from hiertcn.data.log import build_event_log
    from hiertcn.data.readers import ReaderConfig, read_log
    from hiertcn.data.vocab import ItemVocab
    from hiertcn.evaluate import EvaluationConfig, evaluate_model

    vocab = ItemVocab(tuple(str(row) for row in range(NUM_ITEMS)))
    log = build_event_log(read_log(path, ReaderConfig(format="jsonl")), gap=1800, vocab=vocab)
    ranks = evaluate_model(model, log, EvaluationConfig(batch_size=8)).ranks
    return {
        (str(log.user_ids[user]), int(event - log.user_offsets[user])): int(rank)
        for event, user, rank in zip(ranks.events, ranks.users, ranks.ranks, strict=True)
    }


def test_replay_ranks_session_starts_as_evaluate(tiny_model, onnx_bundle, tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    write_session_log(path, users=16, seed=3)
    pipeline = RecordingPipeline(onnx_bundle, PipelineConfig(session_close_outputs=True))
    output = OutputFile(tmp_path / "out.jsonl")
    replay = Replay(
        pipeline, MemoryStates(), ReplayConfig(batch_size=8, order="time"), "log", output
    )

    report = replay.run(read_records(path, "jsonl", "time"))
    output.close()

    expected = evaluate_ranks(tiny_model, path)
    index_of_user: dict[str, int] = {}
    starts = differing = 0
    for user, _ts, live, after_timer in pipeline.events:
        index = index_of_user.get(user, 0)
        index_of_user[user] = index + 1
        if not after_timer:
            continue
        starts += 1
        assert live is not None, (user, index)
        differing += live[0] != expected[(user, index)]
    # Ranks come from float32 scores of two runtimes, so an exact tie may break differently.
    assert starts >= 30
    assert differing <= 1, f"{differing} of {starts} session starts ranked differently"
    assert report.starts_after_close == starts
    assert report.session_starts == count_later_sessions(path)
    assert report.session_close_outputs == report.closed["timer"]
    lines = [json.loads(line) for line in output.path.read_text().splitlines()]
    assert sum(line.get("trigger") == "session_close" for line in lines) == report.closed["timer"]
