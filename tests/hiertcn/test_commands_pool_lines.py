"""The `pool:` line under the test tables of `hiertcn train` and `hiertcn experiment`, which must
match the line of `hiertcn evaluate`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from hiertcn.cli import main
from hiertcn.evaluate import PoolCounts, describe_pools
from tests.hiertcn.test_commands_evaluate import write_impressions_log
from tests.hiertcn.test_commands_train import train_argv, write_log

DATA_FLAGS = ("--format", "csv", "--min-item-count", "1", "--min-user-events", "1")
NO_IMPRESSIONS_LINE = "pool: the whole catalog of 5 items for every event (no ranked event has"


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


@pytest.fixture
def impressions_log(tmp_path: Path) -> Path:
    log = tmp_path / "impressions.csv"
    write_impressions_log(log)
    return log


def pool_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("pool")]


def evaluate_pool_line(capsys, checkpoint: Path, log: Path) -> str:
    """Run `hiertcn evaluate` on `checkpoint` and return its one `pool:` line."""
    assert main(["evaluate", str(checkpoint), str(log), "--device", "cpu"]) == 0
    (line,) = pool_lines(capsys.readouterr().out)
    return line


def test_describe_pools_names_split() -> None:
    counts = PoolCounts(use_impressions=True, catalog_items=40, catalog_events=7)

    assert describe_pools(counts).startswith("pool: the whole catalog of 40 items")
    assert describe_pools(counts, "warm").startswith("pool (warm split): the whole catalog of 40")


def test_train_prints_evaluate_pool_line(tmp_path, capsys, caplog, impressions_log):
    out = tmp_path / "run"

    with caplog.at_level("WARNING", logger="hiertcn.evaluate"):
        assert main(train_argv(impressions_log, out, "--impressions-col", "impressions")) == 0

    (warning,) = [r.getMessage() for r in caplog.records if r.name == "hiertcn.evaluate"]
    assert "have an impression pool of only the clicked item" in warning
    lines = capsys.readouterr().out.splitlines()
    (line,) = pool_lines("\n".join(lines))
    assert line.startswith("pool: impressions for ")
    assert lines[lines.index(line) - 1].startswith("| most_popular |")
    assert line == evaluate_pool_line(capsys, out / "best.pt", impressions_log)


def test_train_without_impressions_names_catalog(tmp_path, capsys):
    log = tmp_path / "log.csv"
    write_log(log)

    assert main(train_argv(log, tmp_path / "run")) == 0

    (line,) = pool_lines(capsys.readouterr().out)
    assert line.startswith(NO_IMPRESSIONS_LINE)


def experiment_argv(log: Path, out: Path, *extra: str) -> list[str]:
    data = [str(log), *DATA_FLAGS, "--impressions-col", "impressions"]
    return ["experiment", "compare", *data, "--device", "cpu", "--out", str(out), *extra]


def test_compare_names_split_of_each_pool_line(tmp_path, capsys, impressions_log):
    out = tmp_path / "experiment"

    assert main(experiment_argv(impressions_log, out, "--models", "most_popular")) == 0

    printed = pool_lines(capsys.readouterr().out)
    assert [line.split(":")[0] for line in printed] == ["pool (cold split)", "pool (warm split)"]
    markdown = (out / "compare.md").read_text(encoding="utf-8")
    for line in printed:
        assert f"\n\n{line}\n\n" in markdown
    for split, line in zip(("cold", "warm"), printed, strict=True):
        evaluated = evaluate_pool_line(
            capsys, out / "runs" / f"{split}-most_popular" / "best.pt", impressions_log
        )
        assert line == evaluated.replace("pool:", f"pool ({split} split):", 1)


def test_compare_one_split_line_matches_evaluate(tmp_path, capsys, impressions_log):
    out = tmp_path / "experiment"
    extra = ("--models", "most_popular,moving_average", "--splits", "cold")

    assert main(experiment_argv(impressions_log, out, *extra)) == 0

    (line,) = pool_lines(capsys.readouterr().out)
    checkpoint = out / "runs" / "cold-moving_average" / "best.pt"
    assert line == evaluate_pool_line(capsys, checkpoint, impressions_log)
    rows = json.loads((out / "compare.json").read_text(encoding="utf-8"))["rows"]
    assert [row["pool"]["kind"] for row in rows] == ["mixed", "mixed"]
    assert rows[0]["pool"] == rows[1]["pool"]
