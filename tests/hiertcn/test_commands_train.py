"""The `hiertcn train` command: flag checks before the data is read, --out, --force, help."""

from __future__ import annotations

import json

import pytest
import torch

from hiertcn.checkpoint import load_checkpoint
from hiertcn.cli import build_parser, main
from hiertcn.models import list_models


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


def write_log(path) -> None:
    lines = ["user,item,timestamp"]
    for user in range(8):
        for event in range(6):
            lines.append(f"u{user},i{(user + event) % 5},{1_600_000_000 + 60 * event}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def train_argv(log, out, *extra: str) -> list[str]:
    data = [str(log), "--format", "csv", "--min-item-count", "1", "--min-user-events", "1"]
    return ["train", *data, "--model", "most_popular", "--out", str(out), "--device", "cpu", *extra]


def test_flags_the_model_ignores_are_named(tmp_path, caplog):
    log = tmp_path / "log.csv"
    write_log(log)
    argv = train_argv(log, tmp_path / "run", "--epochs", "1", "--no-progress")
    with caplog.at_level("WARNING", logger="hiertcn.commands.train"):
        assert main([*argv, "--bptt-sessions", "8", "--batch-norm", "--dilations", "1,2"]) == 0
    warnings = [record.getMessage() for record in caplog.records if record.levelname == "WARNING"]
    assert warnings == [
        "--dilations 1,2 has no effect on --model most_popular, which does not read it",
        "--batch-norm has no effect on --model most_popular, which does not read it",
        "--bptt-sessions 8 has no effect on --model most_popular, which does not read it",
    ]


def test_out_with_run_rejected(tmp_path, capsys):
    log = tmp_path / "log.csv"
    write_log(log)
    out = tmp_path / "run"
    out.mkdir()
    (out / "best.pt").write_bytes(b"earlier run")
    assert main(train_argv(log, out)) == 2
    error = capsys.readouterr().err
    assert f"--out {out} already contains a run (best.pt)" in error
    assert "--force" in error
    assert (out / "best.pt").read_bytes() == b"earlier run"


def test_force_replaces_run(tmp_path):
    log = tmp_path / "log.csv"
    write_log(log)
    out = tmp_path / "run"
    out.mkdir()
    (out / "best.pt").write_bytes(b"earlier run")
    (out / "last.pt").write_bytes(b"earlier run")
    assert main(train_argv(log, out, "--force")) == 0
    assert load_checkpoint(out / "best.pt").model_config["name"] == "most_popular"
    assert load_checkpoint(out / "last.pt").model_config["name"] == "most_popular"


def test_resume_and_force_exclusive(tmp_path):
    with pytest.raises(SystemExit):
        build_parser().parse_args(train_argv(tmp_path / "log.csv", tmp_path, "--resume", "--force"))


def test_resume_without_last_rejected_before_data(tmp_path, capsys):
    assert main(train_argv(tmp_path / "absent.csv", tmp_path / "run", "--resume")) == 2
    assert f"nothing to resume in {tmp_path / 'run'}" in capsys.readouterr().err


def test_resume_with_other_model_rejected_before_data(tmp_path, capsys):
    log = tmp_path / "log.csv"
    write_log(log)
    out = tmp_path / "run"
    assert main(train_argv(log, out)) == 0
    capsys.readouterr()

    argv = train_argv(tmp_path / "absent.csv", out, "--resume")
    argv[argv.index("most_popular")] = "gru"
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert "was trained with name=most_popular, not name=gru" in error
    assert "absent.csv" not in error


def test_unknown_model_rejected_before_data(tmp_path, capsys):
    argv = train_argv(tmp_path / "absent.csv", tmp_path / "run")
    argv[argv.index("most_popular")] = "nosuchmodel"
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert "unknown model 'nosuchmodel'" in error
    assert "absent.csv" not in error


def test_cuda_without_gpu_rejected_before_data(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    argv = train_argv(tmp_path / "absent.csv", tmp_path / "run")
    argv[argv.index("cpu")] = "cuda"
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert "device 'cuda' requested, but " in error
    assert "use --device cpu" in error
    assert "absent.csv" not in error


@pytest.mark.parametrize(
    ("cuda_version", "reason"),
    [(None, "has no CUDA support"), ("12.4", "(CUDA 12.4) finds no GPU")],
)
def test_cuda_message_gives_reason(tmp_path, capsys, monkeypatch, cuda_version, reason):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", cuda_version)
    argv = train_argv(tmp_path / "absent.csv", tmp_path / "run")
    argv[argv.index("cpu")] = "cuda"
    assert main(argv) == 2
    assert reason in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--bptt-sessions", "0"], "--bptt-sessions 0 is invalid: use a positive integer"),
        (["--dropout", "1.5"], "--dropout 1.5 is invalid: use a rate in [0, 1)"),
        (["--kernel-size", "-2"], "--kernel-size -2 is invalid: use a positive integer"),
    ],
)
def test_invalid_model_flag_named(tmp_path, capsys, flags, message):
    assert main([*train_argv(tmp_path / "absent.csv", tmp_path / "run"), *flags]) == 2
    error = capsys.readouterr().err
    assert message in error
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--batch-size", "0"], "--batch-size 0 is invalid: use an integer >= 1"),
        (["--epochs", "0"], "--epochs 0 is invalid: use an integer >= 1"),
        (["--patience", "0"], "--patience 0 is invalid: use an integer >= 1"),
        (["--negatives", "0", "--loss", "bpr"], "--negatives 0 is invalid: use an integer >= 1"),
        (["--margin", "-1", "--loss", "hinge"], "--margin -1 is invalid: use a finite margin"),
        (["--margin", "nan", "--loss", "hinge"], "--margin nan is invalid: use a finite margin"),
        (["--margin", "inf", "--loss", "hinge"], "--margin inf is invalid: use a finite margin"),
        (["--lr", "0"], "--lr 0 is invalid: use a finite learning rate > 0"),
        (["--lr", "inf"], "--lr inf is invalid: use a finite learning rate > 0"),
        (["--lr", "nan"], "--lr nan is invalid: use a finite learning rate > 0"),
        (["--grad-clip", "0"], "--grad-clip 0 is invalid: use a finite norm > 0"),
        (["--grad-clip", "inf"], "--grad-clip inf is invalid: use a finite norm > 0"),
        (["--grad-clip", "nan"], "--grad-clip nan is invalid: use a finite norm > 0"),
        (["--dropout", "inf"], "--dropout inf is invalid: use a rate in [0, 1)"),
        (["--dropout", "nan"], "--dropout nan is invalid: use a rate in [0, 1)"),
        (["--gru-candidate-dropout", "inf"], "--gru-candidate-dropout inf is invalid"),
        (["--train-fraction", "inf"], "split fractions must lie strictly between 0 and 1"),
        (["--valid-fraction", "nan"], "split fractions must lie strictly between 0 and 1"),
        (["--max-batches", "0"], "--max-batches 0 is invalid: use 1 or more"),
        (["--threads", "0"], "--threads 0 is invalid: use 1 to 1024"),
        (["--threads", "9999"], "--threads 9999 is invalid: use 1 to 1024"),
        (["--dilations", "0"], "--dilations '0' is invalid: give one positive integer per"),
        (["--dilations", ""], "--dilations '' is invalid: give one positive integer per"),
        (["--dilations", "1,,2"], "--dilations '1,,2' is invalid"),
        (["--dilations", "1,-2"], "--dilations '1,-2' is invalid"),
    ],
)
def test_invalid_training_flag_named(tmp_path, capsys, flags, message):
    assert main([*train_argv(tmp_path / "absent.csv", tmp_path / "run"), *flags]) == 2
    error = capsys.readouterr().err
    assert message in error
    assert "_" not in error.split(" is invalid")[0]
    assert "(1, 2, 4, 8)" not in error
    assert not (tmp_path / "run").exists()


def test_dilations_message_shows_flag_syntax(tmp_path, capsys):
    argv = [*train_argv(tmp_path / "absent.csv", tmp_path / "run"), "--dilations", "0"]
    assert main(argv) == 2
    assert "e.g. 1,2,4,8" in capsys.readouterr().err


def test_session_gap_zero_rejected(tmp_path, capsys):
    log = tmp_path / "log.csv"
    write_log(log)
    assert main(train_argv(log, tmp_path / "run", "--session-gap", "0")) == 2
    error = capsys.readouterr().err
    assert "--session-gap 0 is invalid: give a positive number of seconds" in error
    assert not (tmp_path / "run").exists()


def test_warm_split_table_explains_history(tmp_path, capsys):
    log = tmp_path / "log.csv"
    write_log(log)
    assert main(train_argv(log, tmp_path / "run", "--split", "warm")) == 0
    output = capsys.readouterr().out
    assert "| log | users | items | events | scored events |" in output
    assert "warm split: the valid and test events include each user's earlier events" in output


def test_model_help_lists_registered_models(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    for name in list_models():
        assert name in help_text
    assert "any other registered model" not in help_text


def test_out_help_mentions_force(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "rejected unless --resume or --force is given" in help_text


@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_description_is_plain_sentence(capsys, command):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    lines = capsys.readouterr().out.splitlines()
    description = lines[lines.index("") + 1]
    assert not description.startswith("`")
    assert description.endswith(".")


def test_filter_report_shown_once(tmp_path, capsys, caplog):
    log = tmp_path / "log.csv"
    write_log(log)
    caplog.set_level("INFO")

    assert main(train_argv(log, tmp_path / "run")) == 0

    assert "filters kept" not in capsys.readouterr().out
    assert caplog.text.count("filters kept") == 1


def test_resume_with_nothing_to_train_keeps_recorded_settings(tmp_path):
    log = tmp_path / "log.csv"
    write_log(log)
    out = tmp_path / "run"
    argv = train_argv(log, out, "--epochs", "1", "--no-progress")
    argv[argv.index("most_popular")] = "gru"
    assert main([*argv, "--lr", "0.01"]) == 0

    assert main([*argv, "--lr", "0.5", "--resume"]) == 0

    summary = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert summary["training"]["learning_rate"] == 0.01


def test_thread_count_set_and_recorded(tmp_path):
    log = tmp_path / "log.csv"
    write_log(log)
    out = tmp_path / "run"
    argv = train_argv(log, out, "--epochs", "1", "--no-progress", "--threads", "2")
    argv[argv.index("most_popular")] = "gru"
    assert main(argv) == 0

    assert torch.get_num_threads() == 2
    summary = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert summary["training"]["threads"] == 2
    assert summary["environment"]["threads"] == 2
    assert summary["environment"]["torch"] == torch.__version__
    assert summary["environment"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert load_checkpoint(out / "best.pt").train_config["threads"] == 2
    assert [epoch["threads"] for epoch in summary["history"]] == [2]
    assert [epoch["threads"] for epoch in summary["history"]] == [2]


def test_thread_count_default_left_to_torch(tmp_path):
    log = tmp_path / "log.csv"
    write_log(log)
    out = tmp_path / "run"
    assert main(train_argv(log, out, "--no-progress")) == 0

    summary = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert summary["training"]["threads"] is None
    assert summary["environment"]["threads"] == 1  # the fixture's count, left as it was


def test_threads_above_cores_warned(tmp_path, caplog, monkeypatch):
    log = tmp_path / "log.csv"
    write_log(log)
    monkeypatch.setattr("os.cpu_count", lambda: 1)
    argv = train_argv(log, tmp_path / "run", "--no-progress", "--threads", "2")
    assert main(argv) == 0
    assert "--threads 2 is above this machine's core count (1)" in caplog.text


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ["--sampler", "impressions"],
            "--sampler impressions has no effect with --loss cross_entropy, because only the "
            "losses hinge, bpr and nce read it: pass --loss hinge (or bpr or nce), or drop "
            "--sampler",
        ),
        (
            ["--negatives", "100"],
            "--negatives 100 has no effect with --loss cross_entropy",
        ),
        (
            ["--margin", "1.0"],
            "--margin 1.0 has no effect with --loss cross_entropy, because only --loss hinge "
            "reads it: pass --loss hinge, or drop --margin",
        ),
        (["--loss", "bpr", "--margin", "0.5"], "--margin 0.5 has no effect with --loss bpr"),
        (["--loss", "l2", "--negatives", "5"], "--negatives 5 has no effect with --loss l2"),
    ],
)
def test_loss_flag_without_effect_rejected(tmp_path, capsys, flags, message):
    assert main([*train_argv(tmp_path / "absent.csv", tmp_path / "run"), *flags]) == 2
    error = capsys.readouterr().err
    assert message in error
    assert len(error.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_loss_flags_read_by_loss_accepted(tmp_path):
    log = tmp_path / "log.csv"
    write_log(log)
    flags = ["--loss", "hinge", "--margin", "0.5", "--negatives", "5", "--sampler", "popularity"]
    assert main([*train_argv(log, tmp_path / "run"), *flags]) == 0


def test_impression_sampler_on_log_without_impressions(tmp_path, capsys):
    log = tmp_path / "log.csv"
    write_log(log)
    argv = train_argv(log, tmp_path / "run", "--epochs", "1", "--no-progress")
    argv[argv.index("most_popular")] = "gru"
    tiny = ["--embedding-dim", "4", "--hidden-size", "4", "--gru-layers", "1"]
    assert main([*argv, *tiny, "--loss", "hinge", "--sampler", "impressions"]) == 2
    error = capsys.readouterr().err
    assert "--sampler impressions needs the events' impressions, and this log has none" in error
    assert not (tmp_path / "run" / "last.pt").exists()
