"""Messages of `train_model(resume=True)` on a run of another model or a damaged checkpoint."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from hiertcn.checkpoint import load_checkpoint, save_checkpoint
from hiertcn.errors import CheckpointError
from hiertcn.models import build_model
from hiertcn.train import seed_everything, train_model
from tests.hiertcn.test_checkpoint import CallOnLoad
from tests.hiertcn.test_train import TINY_HIERTCN, tiny_config, tiny_dataset


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


def model_of(config):
    seed_everything(0)
    return build_model(config, 12)


@pytest.fixture
def run_dir(tmp_path):
    train_model(model_of(TINY_HIERTCN), tiny_dataset(), tiny_config(), out_dir=tmp_path)
    return tmp_path


def resume(run_dir, config=TINY_HIERTCN):
    train_model(model_of(config), tiny_dataset(), tiny_config(epochs=2), run_dir, resume=True)


def test_resume_other_model_names_field(run_dir):
    with pytest.raises(CheckpointError) as error:
        resume(run_dir, dataclasses.replace(TINY_HIERTCN, name="hrnn"))
    message = str(error.value)
    assert f"{run_dir / 'last.pt'} was trained with name=hiertcn, not name=hrnn" in message
    assert "resume with --model hiertcn" in message
    assert "--force" in message
    assert "embedding_dim" not in message


def test_resume_other_sizes_names_each_flag(run_dir):
    other = dataclasses.replace(TINY_HIERTCN, hidden_size=16, dilations=None, batch_norm=True)
    with pytest.raises(CheckpointError) as error:
        resume(run_dir, other)
    message = str(error.value)
    assert "hidden_size=8, dilations=[1, 2], batch_norm=False, not" in message
    assert "resume with --hidden-size 8 --dilations 1,2 (no --batch-norm)" in message


def test_resume_counts_unset_dilations_as_the_default(tmp_path):
    unset = dataclasses.replace(TINY_HIERTCN, dilations=None)
    train_model(model_of(unset), tiny_dataset(), tiny_config(), out_dir=tmp_path)

    resume(tmp_path, dataclasses.replace(unset, dilations=(1, 2, 4, 8)))
    with pytest.raises(CheckpointError, match=r"dilations=\[1, 2, 4, 8\], not dilations=\[1, 2\]"):
        resume(tmp_path, dataclasses.replace(unset, dilations=(1, 2)))


def test_resume_run_saved_before_bptt_sessions(tmp_path):
    one_step = dataclasses.replace(TINY_HIERTCN, bptt_sessions=1)
    train_model(model_of(one_step), tiny_dataset(), tiny_config(), out_dir=tmp_path)
    last = tmp_path / "last.pt"
    checkpoint = load_checkpoint(last)
    del checkpoint.model_config["bptt_sessions"]  # as written before the field existed
    save_checkpoint(last, checkpoint)

    with pytest.raises(CheckpointError, match="resume with --bptt-sessions 1"):
        resume(tmp_path, dataclasses.replace(TINY_HIERTCN, bptt_sessions=4))
    resume(tmp_path, one_step)


def test_resume_compares_only_read_fields(tmp_path):
    gru = dataclasses.replace(TINY_HIERTCN, name="gru", bptt_sessions=4)
    train_model(model_of(gru), tiny_dataset(), tiny_config(), out_dir=tmp_path)

    resume(tmp_path, dataclasses.replace(gru, bptt_sessions=8, kernel_size=3))
    with pytest.raises(CheckpointError, match="resume with --hidden-size 8"):
        resume(tmp_path, dataclasses.replace(gru, hidden_size=16))


def test_resume_other_model_lists_both_fields(run_dir):
    gru = dataclasses.replace(TINY_HIERTCN, name="gru", hidden_size=16, tcn_channels=4)
    with pytest.raises(CheckpointError) as error:
        resume(run_dir, gru)
    message = str(error.value)
    assert "resume with --model hiertcn --hidden-size 8 --tcn-channels 8" in message


def test_resume_untrained_model_checks_run(run_dir):
    before = (run_dir / "last.pt").read_bytes()
    with pytest.raises(CheckpointError, match="resume with --model hiertcn"):
        resume(run_dir, dataclasses.replace(TINY_HIERTCN, name="most_popular"))
    assert (run_dir / "last.pt").read_bytes() == before


def test_resume_untrained_model_refits(tmp_path):
    popular = dataclasses.replace(TINY_HIERTCN, name="most_popular")
    train_model(model_of(popular), tiny_dataset(), tiny_config(), out_dir=tmp_path)
    resume(tmp_path, popular)
    assert load_checkpoint(tmp_path / "last.pt").model_config["name"] == "most_popular"


def test_resume_ignores_steps_without_batch_norm(run_dir):
    resume(run_dir, dataclasses.replace(TINY_HIERTCN, batch_norm_steps=16))
    with pytest.raises(CheckpointError) as error:
        resume(run_dir, dataclasses.replace(TINY_HIERTCN, batch_norm=True, batch_norm_steps=32))
    assert "resume with (no --batch-norm) --batch-norm-steps 16," in str(error.value)


@pytest.mark.parametrize("name", ["last.pt", "best.pt"])
def test_resume_random_bytes_named_damaged(run_dir, name):
    (run_dir / name).write_bytes(bytes(range(256)) * 4)
    with pytest.raises(CheckpointError) as error:
        resume(run_dir)
    message = str(error.value)
    assert f"cannot resume, because {run_dir / name} is damaged" in message
    assert "start over with --force in place of --resume" in message
    assert "pass the best.pt of a run" not in message


@pytest.mark.parametrize("name", ["last.pt", "best.pt"])
def test_resume_hostile_file_not_called_damaged(run_dir, capsys, name):
    content = {
        **load_checkpoint(run_dir / "last.pt").to_dict(),
        "model": CallOnLoad(print, ("ran",)),
    }
    torch.save(content, run_dir / name)

    with pytest.raises(CheckpointError) as error:
        resume(run_dir)

    message = str(error.value)
    assert f"cannot resume, because {run_dir / name} is not a hiertcn checkpoint" in message
    assert "may come from an untrusted source" in message
    assert "check who changed --out" in message
    assert "damaged" not in message
    assert "ran" not in capsys.readouterr().out


def test_resume_truncated_last_named_damaged(run_dir):
    last = run_dir / "last.pt"
    last.write_bytes(last.read_bytes()[:200])
    with pytest.raises(CheckpointError, match=r"last.pt is truncated or damaged \(200 bytes\): "):
        resume(run_dir)


def test_resume_warns_about_changed_training_settings(run_dir, caplog):
    changed = dataclasses.replace(tiny_config(epochs=2), learning_rate=0.5, batch_size=3)
    with caplog.at_level("WARNING", logger="hiertcn.resume"):
        train_model(model_of(TINY_HIERTCN), tiny_dataset(), changed, run_dir, resume=True)
    trained = tiny_config()
    warnings = [record.getMessage() for record in caplog.records]
    assert warnings == [
        f"{run_dir / 'last.pt'} was trained with --batch-size {trained.batch_size}; "
        "the run continues with --batch-size 3",
        f"{run_dir / 'last.pt'} was trained with --lr {trained.learning_rate}; "
        "the run continues with --lr 0.5",
    ]


def test_resume_at_epoch_limit_warns(run_dir, caplog):
    with caplog.at_level("WARNING", logger="hiertcn.resume"):
        train_model(model_of(TINY_HIERTCN), tiny_dataset(), tiny_config(), run_dir, resume=True)
    assert "nothing to train" in caplog.text
    assert "pass a larger --epochs to continue" in caplog.text


def test_resume_skips_unread_loss_flags(run_dir, caplog):
    base = tiny_config(epochs=2)
    changed = dataclasses.replace(
        base, grad_clip=1.0, loss=dataclasses.replace(base.loss, margin=0.3, negatives=7)
    )
    with caplog.at_level("WARNING", logger="hiertcn.resume"):
        train_model(model_of(TINY_HIERTCN), tiny_dataset(), changed, run_dir, resume=True)
    warnings = [record.getMessage() for record in caplog.records]
    assert warnings == [
        f"{run_dir / 'last.pt'} was trained with no --grad-clip; "
        "the run continues with --grad-clip 1.0",
    ]


def test_resume_warns_about_changed_thread_count(run_dir, caplog):
    changed = dataclasses.replace(tiny_config(epochs=2), threads=1)
    with caplog.at_level("WARNING", logger="hiertcn.resume"):
        train_model(model_of(TINY_HIERTCN), tiny_dataset(), changed, run_dir, resume=True)
    warnings = [record.getMessage() for record in caplog.records]
    assert warnings == [
        f"{run_dir / 'last.pt'} was trained with no --threads; "
        "the run continues with --threads 1, so the run no longer repeats a run made in one go "
        "to the last digit (metrics.json lists the threads of each epoch)",
    ]
