"""The output and input contract as docs/architecture.md states it.

The tests cover the field types of the msgpack outputs, the unit of `ts`, ids, candidates, cold
start and session-close keys. Two of them check that tables of the docs list exactly what the
code has."""

from __future__ import annotations

import re
from pathlib import Path

import msgpack
import pytest

from stream.events import REASONS, Event, EventConfig, Position, decode_event
from stream.pipeline import Pipeline, PipelineConfig, Recommendation
from tests.stream.fake_bundle import FakeBundle
from tests.stream.test_pipeline import GAP, make_event

ARCHITECTURE = Path(__file__).resolve().parents[2] / "docs" / "architecture.md"
POSITION = Position("interactions", 2, 77)
# The example time of the docs, 2026-11-05T19:20:36Z.
TS_SECONDS = 1_793_906_436.0


def table_after(heading: str) -> list[list[str]]:
    """Return the body rows of the first Markdown table after `heading` in architecture.md."""
    lines = ARCHITECTURE.read_text(encoding="utf-8").splitlines()
    start = lines.index(heading)
    rows: list[list[str]] = []
    for line in lines[start + 1 :]:
        if line.startswith("#"):
            break
        if line.startswith("|"):
            rows.append([cell.strip() for cell in line.strip("|").split("|")])
        elif rows:
            break
    assert len(rows) > 2, f"no table after {heading!r} in {ARCHITECTURE}"
    return rows[2:]  # without the header and the |---| line


def first_column_codes(heading: str) -> list[str]:
    """Return the backquoted names in the first column of the table after `heading`."""
    codes = []
    for row in table_after(heading):
        match = re.fullmatch(r"`([a-z_]+)`", row[0])
        assert match is not None, f"first cell {row[0]!r} is not one `code`"
        codes.append(match.group(1))
    return codes


def decode_one(fields: dict, key: bytes | None, bundle: FakeBundle, unit: str = "s") -> Event:
    value = msgpack.packb(fields, use_bin_type=True)
    config = EventConfig(ts_unit=unit)
    result = decode_event(key, value, POSITION, bundle.row_of, config, now=TS_SECONDS)
    assert isinstance(result, Event), result
    return result


def as_published(output: Recommendation) -> dict:
    """Return the output map as a consumer of the output topic unpacks it."""
    return msgpack.unpackb(msgpack.packb(output.to_dict(), use_bin_type=True), raw=False)


@pytest.fixture
def bundle() -> FakeBundle:
    return FakeBundle(num_items=8)


@pytest.fixture
def pipeline(bundle: FakeBundle) -> Pipeline:
    config = PipelineConfig(session_gap=GAP, top_k=5, session_close_outputs=True)
    return Pipeline(bundle, config)


# -- the tables of docs/architecture.md --------------------------------------------------------


def test_reason_table_lists_reasons() -> None:
    codes = first_column_codes("#### Dead-letter reasons")

    assert len(codes) == len(set(codes))
    assert sorted(codes) == sorted(REASONS)


def test_output_field_table_lists_fields(pipeline: Pipeline) -> None:
    first = pipeline.process([make_event("u1", 1, 0.0)], {})
    close_output = pipeline.close_idle(first.states).outputs[0]

    fields = first_column_codes("#### Output fields")

    assert fields == list(close_output.to_dict())
    assert set(first.outputs[0].to_dict()) == set(fields) - {"trigger"}


# -- event outputs -----------------------------------------------------------------------------


def test_ms_input_gives_float_seconds(bundle: FakeBundle, pipeline: Pipeline) -> None:
    fields = {"user": "u1", "item": "i3", "ts": 1_793_906_436_000}
    event = decode_one(fields, b"u1", bundle, unit="ms")

    output = as_published(pipeline.process([event], {}).outputs[0])

    assert isinstance(output["ts"], float)
    assert output["ts"] == TS_SECONDS


def test_output_field_types(bundle: FakeBundle, pipeline: Pipeline) -> None:
    event = decode_one({"user": 7, "item": "i3", "ts": TS_SECONDS}, b"7", bundle)

    output = as_published(pipeline.process([event], {}).outputs[0])

    assert output["user"] == "7"
    assert output["event_id"] == "interactions[2]@77"
    assert isinstance(output["ts"], float)
    assert len(output["items"]) == 5
    assert all(isinstance(item, str) for item in output["items"])
    assert len(output["scores"]) == 5
    assert all(isinstance(score, float) for score in output["scores"])
    assert output["scores"] == sorted(output["scores"], reverse=True)
    assert isinstance(output["model"], str)
    assert output["session"] == 1
    assert "trigger" not in output


def test_first_event_gets_session_one(pipeline: Pipeline) -> None:
    result = pipeline.process([make_event("new", 2, 0.0)], {})

    assert result.outputs[0].session == 1
    assert len(result.outputs[0].items) == 5
    assert result.states["new"].session_count == 1


def test_own_item_not_filtered(bundle: FakeBundle) -> None:
    # K equals the catalog size, so a list that left out any item would be shorter.
    pipeline = Pipeline(bundle, PipelineConfig(session_gap=GAP, top_k=8))
    events = [make_event("u1", 4, 0.0), make_event("u1", 6, 10.0)]

    outputs = pipeline.process(events, {}).outputs

    assert len(outputs[1].items) == 8
    assert "i4" in outputs[1].items
    assert "i6" in outputs[1].items


def test_candidates_shorten_the_list(bundle: FakeBundle, pipeline: Pipeline) -> None:
    candidates = ["i5", "ghost", "i2", "i5", "i2", "i3"]
    fields = {"user": "u1", "item": "i3", "ts": TS_SECONDS, "candidates": candidates}
    event = decode_one(fields, b"u1", bundle)

    output = pipeline.process([event], {}).outputs[0]

    assert sorted(output.items) == ["i2", "i3", "i5"]
    assert event.dropped_candidates == 1


@pytest.mark.parametrize(
    ("impressions", "rows"),
    [([], None), (["ghost"], None), (["ghost", "i1", "i1"], (1,))],
    ids=["empty", "all_unknown", "one_known"],
)
def test_unknown_or_empty_impressions_accepted(
    bundle: FakeBundle, impressions: list[str], rows: tuple[int, ...] | None
) -> None:
    fields = {"user": "u1", "item": "i3", "ts": TS_SECONDS, "impressions": impressions}

    event = decode_one(fields, b"u1", bundle)

    assert event.impressions == rows


# -- session-close outputs ---------------------------------------------------------------------


def test_session_close_keys_differ(pipeline: Pipeline) -> None:
    first = pipeline.process([make_event("u1", 1, 0.0)], {})
    first_close = pipeline.close_idle(first.states)
    second = pipeline.process([make_event("u1", 2, 5000.0)], first_close.states)
    second_close = pipeline.close_idle(second.states)

    keys = [
        (output.user, output.session, output.ts)
        for output in (*first_close.outputs, *second_close.outputs)
    ]

    assert keys == [("u1", 2, GAP), ("u1", 3, 5000.0 + GAP)]
    assert all(output.event_id is None for output in first_close.outputs)
    assert second.outputs[0].session == 2
