"""Tests of `hiertcn experiment`: analysis bins, the report writer, the variant builders, the
run cache, and one run of every experiment on a tiny synthetic log."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from hiertcn.checkpoint import load_checkpoint
from hiertcn.cli import build_parser, main
from hiertcn.commands.train import model_config_from_args
from hiertcn.data.options import DataConfig
from hiertcn.data.synthetic import SyntheticConfig, generate_synthetic_log
from hiertcn.errors import ConfigError
from hiertcn.experiments import runner
from hiertcn.experiments.analyses import BINNINGS, Binning, binned_mrp
from hiertcn.experiments.report import markdown_table, write_report
from hiertcn.experiments.runner import (
    LOSSES,
    RunCache,
    Variant,
    epoch_time_rows,
    loss_variants,
    model_variants,
    regularization_variants,
)
from hiertcn.metrics import EventRanks
from hiertcn.models import ModelConfig
from hiertcn.train import TrainConfig

TINY_FLAGS = (
    "--format",
    "csv",
    "--min-item-count",
    "1",
    "--min-user-events",
    "2",
    "--embedding-dim",
    "8",
    "--hidden-size",
    "8",
    "--gru-layers",
    "1",
    "--tcn-channels",
    "8",
    "--kernel-size",
    "2",
    "--dilations",
    "1,2",
    "--epochs",
    "1",
    "--max-batches",
    "2",
    "--batch-size",
    "8",
    "--device",
    "cpu",
    "--no-progress",
)
# The loss flags of the losses experiment, which `compare` and the others reject.
LOSS_FLAGS = ("--negatives", "5")


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny_log(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("experiment") / "log.csv"
    config = SyntheticConfig(num_clusters=4, mean_sessions_per_user=4.0, mean_session_length=3.0)
    return generate_synthetic_log(num_users=30, num_items=40, seed=5, path=path, config=config)


def _ranks(ranks, pool_sizes, past_events, positions, gaps) -> EventRanks:
    count = len(ranks)
    return EventRanks(
        events=np.arange(count, dtype=np.int64),
        users=np.zeros(count, dtype=np.int64),
        ranks=np.asarray(ranks, dtype=np.int64),
        pool_sizes=np.asarray(pool_sizes, dtype=np.int64),
        past_events=np.asarray(past_events, dtype=np.int64),
        session_position=np.asarray(positions, dtype=np.int64),
        session_gap=np.asarray(gaps, dtype=np.int64),
    )


def _binning(name: str) -> Binning:
    return next(binning for binning in BINNINGS if binning.name == name)


# Analysis bins.


def test_binned_mrp_past_interactions():
    ranks = _ranks(
        ranks=[1, 3, 5, 10, 2],
        pool_sizes=[10, 10, 10, 10, 4],
        past_events=[1, 2, 4, 600, 7],
        positions=[0, 0, 0, 0, 0],
        gaps=[-1, -1, -1, -1, -1],
    )
    rows = {row["bin"]: row for row in binned_mrp(ranks, _binning("past_interactions"))}

    assert rows["1"]["events"] == 1
    assert rows["1"]["mrp"] == pytest.approx(0.1)
    assert rows["2-4"]["events"] == 2
    assert rows["2-4"]["mrp"] == pytest.approx((0.3 + 0.5) / 2)
    assert rows["5-9"]["events"] == 1
    assert rows["5-9"]["mrp"] == pytest.approx(0.5)
    assert rows["500+"]["events"] == 1
    assert rows["500+"]["mrp"] == pytest.approx(1.0)


def test_binned_mrp_empty_bin_is_nan():
    ranks = _ranks([1], [2], [1], [0], [-1])
    rows = {row["bin"]: row for row in binned_mrp(ranks, _binning("past_interactions"))}

    assert rows["10-19"]["events"] == 0
    assert math.isnan(rows["10-19"]["mrp"])


def test_binned_mrp_session_position_edges():
    ranks = _ranks(
        ranks=[2, 4, 6, 8],
        pool_sizes=[8, 8, 8, 8],
        past_events=[1, 1, 1, 1],
        positions=[0, 5, 9, 25],
        gaps=[-1, -1, -1, -1],
    )
    rows = {row["bin"]: row for row in binned_mrp(ranks, _binning("session_position"))}

    assert rows["0"]["events"] == 1
    assert rows["0"]["mrp"] == pytest.approx(0.25)
    assert rows["5-9"]["events"] == 2
    assert rows["5-9"]["mrp"] == pytest.approx((0.5 + 0.75) / 2)
    assert rows["20+"]["events"] == 1
    assert rows["20+"]["mrp"] == pytest.approx(1.0)


def test_binned_mrp_first_session_gap():
    hour = 3600
    ranks = _ranks(
        ranks=[1, 2, 3, 4],
        pool_sizes=[4, 4, 4, 4],
        past_events=[1, 1, 1, 1],
        positions=[0, 0, 0, 0],
        gaps=[-1, 0, 2 * hour, 10 * 24 * hour],
    )
    rows = {row["bin"]: row for row in binned_mrp(ranks, _binning("time_since_previous_session"))}

    assert rows["none"]["events"] == 1
    assert rows["none"]["mrp"] == pytest.approx(0.25)
    assert rows["<1h"]["events"] == 1
    assert rows["<1h"]["mrp"] == pytest.approx(0.5)
    assert rows["1-3h"]["events"] == 1
    assert rows["1-3h"]["mrp"] == pytest.approx(0.75)
    assert rows["7d+"]["events"] == 1
    assert rows["7d+"]["mrp"] == pytest.approx(1.0)


# Report writer.


def test_markdown_table_number_formats():
    rows = [{"model": "hiertcn", "mrr": 0.12345, "events": 1234, "seconds": float("nan")}]
    lines = markdown_table(rows, ("model", "mrr", "events", "seconds")).splitlines()

    assert lines[0] == "| model | mrr | events | seconds |"
    assert lines[1] == "|---|---|---|---|"
    assert lines[2] == "| hiertcn | 0.1235 | 1,234 | - |"


def test_write_report_markdown_and_json(tmp_path):
    rows = [{"model": "gru", "mrr": 0.5}, {"model": "tcn", "mrr": 0.25}]
    setup = {"data": "log.csv", "epochs": 2}
    path = write_report(
        tmp_path / "out", "compare", "Model comparison", rows, ("model", "mrr"), setup
    )

    markdown = path.read_text(encoding="utf-8")
    assert path == tmp_path / "out" / "compare.md"
    assert markdown.startswith("## Model comparison\n")
    assert "| gru | 0.5000 |" in markdown
    assert "| tcn | 0.2500 |" in markdown
    assert '"epochs": 2' in markdown
    payload = json.loads((tmp_path / "out" / "compare.json").read_text(encoding="utf-8"))
    assert payload["title"] == "Model comparison"
    assert payload["rows"] == rows
    assert payload["setup"] == setup


# Variant builders.


def _changed_fields(before, after) -> set[str]:
    return {
        field.name
        for field in dataclasses.fields(before)
        if getattr(before, field.name) != getattr(after, field.name)
    }


def test_regularization_variants_change_one_field():
    base = ModelConfig(name="hiertcn", dropout=0.1)
    train = TrainConfig()
    variants = {variant.label: variant for variant in regularization_variants(base, train, 0.3)}
    plain = variants["none"].model

    assert list(variants) == [
        "none",
        "tcn_dropout_0.3",
        "gru_candidate_dropout_0.3",
        "batch_norm",
        "all",
    ]
    assert (plain.dropout, plain.gru_candidate_dropout, plain.batch_norm) == (0.0, 0.0, False)
    assert _changed_fields(plain, variants["tcn_dropout_0.3"].model) == {"dropout"}
    assert variants["tcn_dropout_0.3"].model.dropout == 0.3
    gru_dropout = variants["gru_candidate_dropout_0.3"].model
    assert _changed_fields(plain, gru_dropout) == {"gru_candidate_dropout"}
    assert gru_dropout.gru_candidate_dropout == 0.3
    assert _changed_fields(plain, variants["batch_norm"].model) == {"batch_norm"}
    assert _changed_fields(plain, variants["all"].model) == {
        "dropout",
        "gru_candidate_dropout",
        "batch_norm",
    }
    assert all(variant.train == train for variant in variants.values())


def test_loss_variants_change_loss_name():
    base = ModelConfig(name="hiertcn")
    train = TrainConfig(epochs=2)
    variants = loss_variants(base, train, LOSSES)

    assert [variant.label for variant in variants] == list(LOSSES)
    for variant in variants:
        assert variant.model == base
        assert variant.train.loss.name == variant.label
        assert _changed_fields(train, variant.train) <= {"loss"}
        assert _changed_fields(train.loss, variant.train.loss) <= {"name"}


def test_model_variants_change_model_name():
    base = ModelConfig(name="hiertcn", embedding_dim=16, hidden_size=16)
    variants = model_variants(base, TrainConfig(), ("gru", "tcn"))

    assert [variant.label for variant in variants] == ["gru", "tcn"]
    for variant in variants:
        assert _changed_fields(base, variant.model) == {"name"}
        assert variant.model.name == variant.label


def test_regularization_flags_reach_model_config():
    # `all` reads them for compare; `regularization` rejects them, because it sets them itself.
    argv = ["experiment", "all", "log.csv", "--out", "out"]
    flags = ["--gru-candidate-dropout", "0.3", "--batch-norm", "--batch-norm-steps", "16"]
    default = model_config_from_args(build_parser().parse_args([*argv, "--model", "hiertcn"]))
    config = model_config_from_args(
        build_parser().parse_args([*argv, "--model", "hiertcn", *flags])
    )

    assert (default.gru_candidate_dropout, default.batch_norm) == (0.0, False)
    assert default.batch_norm_steps == ModelConfig().batch_norm_steps
    assert config.gru_candidate_dropout == 0.3
    assert config.batch_norm is True
    assert config.batch_norm_steps == 16


# Epoch-time ratios and the run cache.


def _result(label: str, seconds: float, cpu_seconds: float, input_bytes: float):
    return runner.VariantResult(
        variant=Variant(label, ModelConfig(name=label), TrainConfig()),
        split="cold",
        metrics={},
        best_epoch=1,
        epochs=2,
        epoch_seconds=seconds,
        epoch_cpu_seconds=cpu_seconds,
        input_bytes_per_batch=input_bytes,
        parameters=0,
        evaluation=None,
    )


def test_epoch_time_rows_ratio_to_hiertcn():
    results = [
        _result("gru", 6.0, 3.0, 100.0),
        _result("hiertcn", 2.0, 1.5, 400.0),
        _result("most_popular", math.nan, math.nan, math.nan),
    ]
    rows = {row["model"]: row for row in epoch_time_rows(results)}

    assert rows["gru"]["reference"] == "hiertcn"
    assert rows["gru"]["time_ratio"] == pytest.approx(3.0)
    assert rows["gru"]["cpu_time_ratio"] == pytest.approx(2.0)
    assert rows["gru"]["input_bytes_ratio"] == pytest.approx(0.25)
    assert rows["hiertcn"]["time_ratio"] == pytest.approx(1.0)
    assert math.isnan(rows["most_popular"]["time_ratio"])


def test_run_cache_trains_equal_variants_once(monkeypatch, tmp_path):
    calls = []

    def fake_run_variant(variant, dataset, split, out_dir):
        calls.append((variant.label, split))
        return _result(variant.label, 1.0, 1.0, 1.0)

    monkeypatch.setattr(runner, "run_variant", fake_run_variant)
    monkeypatch.setattr(runner, "load_split", lambda data, split: object())
    cache = RunCache(DataConfig(path=tmp_path / "log.csv"), tmp_path)
    base = ModelConfig(name="hiertcn")
    train = TrainConfig()

    first = cache.run(Variant("hiertcn", base, train), "cold")
    again = cache.run(Variant("cross_entropy", base, train), "cold")
    cache.run(Variant("hiertcn", base, train), "warm")

    assert calls == [("hiertcn", "cold"), ("hiertcn", "warm")]
    assert first.variant.label == "hiertcn"
    assert again.variant.label == "cross_entropy"


# One run of every experiment through the command line.


def _run_experiment(tiny_log: Path, out: Path, name: str, *extra: str) -> None:
    # Only the losses experiment reads --negatives; the others reject it under cross-entropy.
    negatives = LOSS_FLAGS if name in ("losses", "all") else ()
    argv = ["experiment", name, str(tiny_log), *TINY_FLAGS, *negatives, *extra]
    code = main([*argv, "--out", str(out)])
    assert code == 0


def _rows(path: Path) -> list[dict]:
    return json.loads(path.read_text(encoding="utf-8"))["rows"]


def test_compare_row_per_model_and_split(tiny_log, tmp_path):
    _run_experiment(tiny_log, tmp_path, "compare", "--models", "hiertcn,most_popular")

    rows = _rows(tmp_path / "compare.json")
    assert [(row["model"], row["split"]) for row in rows] == [
        ("hiertcn", "cold"),
        ("most_popular", "cold"),
        ("hiertcn", "warm"),
        ("most_popular", "warm"),
    ]
    assert all(row["events"] > 0 for row in rows)
    assert (tmp_path / "compare.md").read_text(encoding="utf-8").count("| hiertcn |") == 2


def test_compare_markdown_has_epochs_column(tiny_log, tmp_path):
    _run_experiment(tiny_log, tmp_path, "compare", "--models", "hiertcn", "--splits", "cold")

    rows = _rows(tmp_path / "compare.json")
    lines = (tmp_path / "compare.md").read_text(encoding="utf-8").splitlines()
    header = [cell.strip() for cell in lines[2].strip("|").split("|")]
    cells = [cell.strip() for cell in lines[4].strip("|").split("|")]
    assert header[header.index("best_epoch") + 1] == "epochs"
    assert cells[header.index("epochs")] == str(rows[0]["epochs"])
    assert rows[0]["epochs"] == 1


def test_run_folder_metrics_match_train_command(tiny_log, tmp_path):
    experiment = tmp_path / "experiment"
    _run_experiment(tiny_log, experiment, "compare", "--models", "hiertcn", "--splits", "cold")
    train_out = tmp_path / "train"
    argv = ["train", str(tiny_log), *TINY_FLAGS, "--model", "hiertcn", "--out", str(train_out)]
    assert main(argv) == 0

    from_experiment = json.loads(
        (experiment / "runs" / "cold-hiertcn" / "metrics.json").read_text()
    )
    from_train = json.loads((train_out / "metrics.json").read_text())
    assert list(from_experiment) == list(from_train)
    for key in ("model", "training", "best_epoch", "valid", "test", "environment"):
        assert from_experiment[key] == from_train[key], key
    timings = ("seconds", "events_per_second")
    assert [_without(epoch, timings) for epoch in from_experiment["history"]] == [
        _without(epoch, timings) for epoch in from_train["history"]
    ]
    best = load_checkpoint(experiment / "runs" / "cold-hiertcn" / "best.pt")
    assert best.metrics["test"] == from_train["test"]


def _without(values: dict, keys: tuple[str, ...]) -> dict:
    return {key: value for key, value in values.items() if key not in keys}


def test_untrained_run_folder_has_metrics(tiny_log, tmp_path):
    _run_experiment(tiny_log, tmp_path, "compare", "--models", "most_popular", "--splits", "cold")

    metrics = json.loads((tmp_path / "runs" / "cold-most_popular" / "metrics.json").read_text())
    assert metrics["best_epoch"] == 0
    assert metrics["test"] == {
        key: value
        for key, value in _rows(tmp_path / "compare.json")[0].items()
        if key in metrics["test"]
    }


def test_epoch_times_experiment_ratios(tiny_log, tmp_path):
    _run_experiment(tiny_log, tmp_path, "epoch-times", "--models", "hiertcn,gru")

    rows = _rows(tmp_path / "epoch_times.json")
    assert [row["model"] for row in rows] == ["hiertcn", "gru"]
    assert rows[0]["time_ratio"] == pytest.approx(1.0)
    assert rows[1]["epoch_seconds"] > 0
    assert (tmp_path / "epoch_times.md").is_file()


def test_losses_experiment_row_per_loss(tiny_log, tmp_path):
    _run_experiment(tiny_log, tmp_path, "losses")

    rows = _rows(tmp_path / "losses.json")
    assert [row["loss"] for row in rows] == list(LOSSES)
    assert (tmp_path / "losses.md").is_file()


def test_regularization_experiment_row_per_variant(tiny_log, tmp_path):
    _run_experiment(tiny_log, tmp_path, "regularization", "--regularization-rate", "0.5")

    rows = _rows(tmp_path / "regularization.json")
    assert [row["variant"] for row in rows] == [
        "none",
        "tcn_dropout_0.5",
        "gru_candidate_dropout_0.5",
        "batch_norm",
        "all",
    ]
    assert (tmp_path / "regularization.md").is_file()


def test_analyses_experiment_three_plots(tiny_log, tmp_path):
    _run_experiment(tiny_log, tmp_path, "analyses", "--models", "hiertcn,gru")

    for binning in BINNINGS:
        plot = tmp_path / f"mrp_vs_{binning.name}.png"
        assert plot.is_file()
        assert plot.stat().st_size > 0
        rows = _rows(tmp_path / f"mrp_vs_{binning.name}.json")
        assert len(rows) == 2 * len(binning.labels)
        assert {row["model"] for row in rows} == {"hiertcn", "gru"}


def _setup_of(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))["setup"]


def test_losses_setup_lists_loss_per_variant(tiny_log, tmp_path):
    _run_experiment(tiny_log, tmp_path, "losses")

    setup = _setup_of(tmp_path / "losses.json")
    assert "name" not in setup["training"]["loss"]
    assert setup["training"]["loss"]["negatives"] == 5
    assert {
        label: change["training"]["loss"]["name"] for label, change in setup["variants"].items()
    } == {loss: loss for loss in LOSSES}
    assert setup["model"]["name"] == "hiertcn"
    assert setup["splits"] == ["cold"]
    markdown = (tmp_path / "losses.md").read_text(encoding="utf-8")
    assert json.loads(markdown.split("Set-up: `")[1].rstrip("`\n")) == setup


def test_setup_records_threads_and_versions(tiny_log, tmp_path):
    _run_experiment(tiny_log, tmp_path, "losses", "--threads", "2")

    setup = _setup_of(tmp_path / "losses.json")
    assert setup["training"]["threads"] == 2
    assert setup["environment"]["threads"] == 2
    assert setup["environment"]["torch"] == torch.__version__
    assert setup["environment"]["device"] in ("cpu", "cuda")


def test_regularization_setup_lists_variant_settings(tiny_log, tmp_path):
    _run_experiment(tiny_log, tmp_path, "regularization", "--regularization-rate", "0.5")

    setup = _setup_of(tmp_path / "regularization.json")
    for field in ("dropout", "gru_candidate_dropout", "batch_norm"):
        assert field not in setup["model"]
    variants = setup["variants"]
    assert variants["none"]["model"] == {
        "dropout": 0.0,
        "gru_candidate_dropout": 0.0,
        "batch_norm": False,
    }
    assert variants["all"]["model"] == {
        "dropout": 0.5,
        "gru_candidate_dropout": 0.5,
        "batch_norm": True,
    }
    assert variants["batch_norm"]["model"]["batch_norm"] is True


def test_compare_setup_lists_model_per_variant(tiny_log, tmp_path):
    _run_experiment(tiny_log, tmp_path, "compare", "--models", "gru,most_popular")

    setup = _setup_of(tmp_path / "compare.json")
    assert "name" not in setup["model"]
    assert setup["variants"] == {
        "gru": {"model": {"name": "gru"}},
        "most_popular": {"model": {"name": "most_popular"}},
    }
    assert setup["splits"] == ["cold", "warm"]


# A second run into the same --out.


def _compare_argv(tiny_log: Path, out: Path, models: str, *extra: str) -> list[str]:
    return [
        "experiment", "compare", str(tiny_log), *TINY_FLAGS, "--models", models,
        "--splits", "cold", *extra, "--out", str(out),
    ]  # fmt: skip


def test_second_run_in_same_out_rejected(tiny_log, tmp_path, capsys):
    assert main(_compare_argv(tiny_log, tmp_path, "most_popular")) == 0
    table = (tmp_path / "compare.md").read_text(encoding="utf-8")
    capsys.readouterr()

    code = main(_compare_argv(tiny_log, tmp_path, "gru", "--max-batches", "1"))

    error = capsys.readouterr().err
    assert code == 2
    assert f"--out {tmp_path} already contains an experiment run (compare.json, compare.md" in error
    assert "--force to replace it, or another --out folder" in error
    assert (tmp_path / "compare.md").read_text(encoding="utf-8") == table
    assert not (tmp_path / "runs" / "cold-gru").exists()


def test_force_replaces_earlier_run(tiny_log, tmp_path):
    assert main(_compare_argv(tiny_log, tmp_path, "hiertcn,most_popular")) == 0
    (tmp_path / "notes.txt").write_text("mine\n", encoding="utf-8")

    assert main(_compare_argv(tiny_log, tmp_path, "most_popular", "--force")) == 0

    assert [row["model"] for row in _rows(tmp_path / "compare.json")] == ["most_popular"]
    assert not (tmp_path / "runs" / "cold-hiertcn").exists()
    assert (tmp_path / "runs" / "cold-most_popular" / "best.pt").is_file()
    assert (tmp_path / "notes.txt").read_text(encoding="utf-8") == "mine\n"


def test_all_trains_shared_variants_once(tiny_log, tmp_path, monkeypatch):
    trained = []
    run_variant = runner.run_variant

    def counting_run_variant(variant, dataset, split, out_dir):
        trained.append((variant.label, split))
        return run_variant(variant, dataset, split, out_dir)

    monkeypatch.setattr(runner, "run_variant", counting_run_variant)
    _run_experiment(
        tiny_log,
        tmp_path,
        "all",
        "--models",
        "hiertcn,most_popular",
        "--splits",
        "cold",
        "--skip",
        "losses,regularization",
    )

    assert trained == [("hiertcn", "cold"), ("most_popular", "cold")]
    assert (tmp_path / "epoch_times.json").is_file()
    assert (tmp_path / "mrp_vs_session_position.png").is_file()


def test_experiment_all_rejects_unknown_skip(tiny_log, tmp_path, capsys):
    argv = ["experiment", "all", str(tiny_log), *TINY_FLAGS, *LOSS_FLAGS, "--skip", "plots"]
    code = main([*argv, "--out", str(tmp_path)])

    assert code == ConfigError.exit_code
    assert "--skip plots names no experiment" in capsys.readouterr().err
    assert not (tmp_path / "compare.json").exists()


@pytest.mark.parametrize("rate", ["1.5", "0"])
def test_invalid_regularization_rate_rejected(tmp_path, capsys, rate):
    argv = ["experiment", "regularization", str(tmp_path / "absent.csv")]
    code = main([*argv, "--regularization-rate", rate, "--out", str(tmp_path / "out")])
    assert code == 2
    error = capsys.readouterr().err
    assert f"--regularization-rate {rate} is invalid: use a rate in (0, 1)" in error
    assert not (tmp_path / "out").exists()
