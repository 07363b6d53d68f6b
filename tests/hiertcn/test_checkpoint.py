"""Checkpoint files: reading foreign files and comparing item vocabularies."""

from __future__ import annotations

import json
import os
import pickle

import pytest
import torch

from hiertcn.checkpoint import Checkpoint, check_vocabulary, load_checkpoint, save_checkpoint
from hiertcn.errors import CheckpointError, HierTCNError


def tiny_checkpoint(item_ids: list[str], data_summary: dict | None = None) -> Checkpoint:
    return Checkpoint(
        model_config={"name": "most_popular"},
        model_state={"weight": torch.zeros(len(item_ids))},
        train_config={},
        item_ids=item_ids,
        data_summary=data_summary or {},
        metrics={},
        epoch=1,
    )


def write_text(path, _):
    path.write_text("hello, this is a text file\n", encoding="utf-8")


def write_random_bytes(path, _):
    path.write_bytes(bytes(range(256)) * 4)


def write_json(path, _):
    path.write_text(json.dumps({"model_state": {}}), encoding="utf-8")


def write_plain_pickle(path, _):
    path.write_bytes(pickle.dumps({"format_version": 1}, protocol=4))


def write_torch_without_keys(path, checkpoint):
    content = checkpoint.to_dict()
    del content["model_state"]
    torch.save(content, path)


def write_torch_with_wrong_type(path, checkpoint):
    torch.save({**checkpoint.to_dict(), "item_ids": "abc"}, path)


def write_torch_weights_only(path, _):
    torch.save({"weight": torch.zeros(2)}, path)


@pytest.mark.parametrize(
    "write",
    [
        write_text,
        write_random_bytes,
        write_json,
        write_plain_pickle,
        write_torch_without_keys,
        write_torch_with_wrong_type,
        write_torch_weights_only,
    ],
)
def test_foreign_file_is_not_a_checkpoint(tmp_path, write):
    path = tmp_path / "notackpt.pt"
    write(path, tiny_checkpoint(["a", "b"]))
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(path)
    message = str(error.value)
    assert f"{path} is not a hiertcn checkpoint" in message
    assert "pass the best.pt of a run" in message
    assert "weights_only" not in message


def test_missing_keys_are_named(tmp_path):
    path = tmp_path / "partial.pt"
    write_torch_without_keys(path, tiny_checkpoint(["a"]))
    with pytest.raises(CheckpointError, match="lacks the keys model_state"):
        load_checkpoint(path)


def test_saved_checkpoint_round_trip(tmp_path):
    path = save_checkpoint(tmp_path / "best.pt", tiny_checkpoint(["a", "b"]))
    assert load_checkpoint(path).item_ids == ["a", "b"]


SUMMARY = {
    "source": "data/ratings.csv",
    "format": "movielens",
    "filters": {"min_item_count": 5, "min_user_events": 2, "max_user_events": None},
}


def test_vocabulary_of_other_size_not_called_reordered():
    checkpoint = tiny_checkpoint(["a", "b", "c"], SUMMARY)
    with pytest.raises(CheckpointError) as error:
        check_vocabulary("best.pt", checkpoint, ("a", "b"))
    message = str(error.value)
    assert "trained on 3 items" in message
    assert "a vocabulary of 2 items" in message
    assert "order" not in message


def test_vocabulary_in_other_order_named():
    checkpoint = tiny_checkpoint(["a", "b", "c"], SUMMARY)
    with pytest.raises(CheckpointError, match="the same items in another order"):
        check_vocabulary("best.pt", checkpoint, ("c", "b", "a"))


def test_vocabulary_with_other_ids_named():
    checkpoint = tiny_checkpoint(["a", "b", "c"], SUMMARY)
    with pytest.raises(CheckpointError, match="3 items with other ids"):
        check_vocabulary("best.pt", checkpoint, ("a", "b", "x"))


def test_vocabulary_message_names_data_source():
    checkpoint = tiny_checkpoint(["a", "b"], SUMMARY)
    with pytest.raises(CheckpointError) as error:
        check_vocabulary("best.pt", checkpoint, ("a",))
    message = str(error.value)
    assert "data/ratings.csv (--format movielens --min-item-count 5 --min-user-events 2)" in message
    assert "max-user-events" not in message


def test_same_vocabulary_accepted():
    check_vocabulary("best.pt", tiny_checkpoint(["a", "b"], SUMMARY), ["a", "b"])


@pytest.mark.parametrize("kept", [0, 3, 200, 65536, -30])
def test_truncated_checkpoint_named_truncated(tmp_path, kept):
    path = tmp_path / "best.pt"
    checkpoint = tiny_checkpoint(["a", "b"])
    checkpoint = Checkpoint(**{**vars(checkpoint), "model_state": {"w": torch.zeros(40_000)}})
    content = save_checkpoint(path, checkpoint).read_bytes()
    path.write_bytes(content[:kept])
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(path)
    message = str(error.value)
    assert f"checkpoint {path} is " in message
    assert "truncated or damaged" in message or "empty (0 bytes)" in message
    assert "Errno" not in message


def test_folder_checkpoint_named_folder(tmp_path):
    with pytest.raises(CheckpointError, match=f"checkpoint {tmp_path} is a folder"):
        load_checkpoint(tmp_path)


def test_unwritable_checkpoint_path_named(tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("", encoding="utf-8")
    path = blocker / "run" / "best.pt"
    with pytest.raises(HierTCNError) as caught:
        save_checkpoint(path, tiny_checkpoint(["a"]))
    message = str(caught.value)
    assert f"cannot write checkpoint {path} (Not a directory)" in message
    assert "pass an --out folder that you can write" in message


def test_saved_auto_format_matches_resolved():
    from hiertcn.checkpoint import check_data_settings

    checkpoint = tiny_checkpoint(["a"], {"source": "log.csv", "format": "auto"})

    check_data_settings("best.pt", checkpoint, {"source": "log.csv", "format": "csv"})


def test_other_saved_format_rejected():
    from hiertcn.checkpoint import check_data_settings

    checkpoint = tiny_checkpoint(["a"], {"source": "log.csv", "format": "movielens"})

    with pytest.raises(CheckpointError, match="--format movielens, not --format csv"):
        check_data_settings("best.pt", checkpoint, {"source": "log.csv", "format": "csv"})


class CallOnLoad:
    """Pickles as a call of `function(*args)`, as a malicious checkpoint's objects do."""

    def __init__(self, function, args: tuple) -> None:
        self.function = function
        self.args = args

    def __reduce__(self):
        return (self.function, self.args)


# Harmless functions replace a payload such as os.system, so the test does no harm even if a
# loader ran them. torch names os.getcwd by its module, posix.getcwd on Linux.
@pytest.mark.parametrize(
    ("function", "args", "name"),
    [(print, ("payload ran",), "print"), (os.getcwd, (), f"{os.name}.getcwd")],
)
@pytest.mark.parametrize("zip_format", [True, False])
def test_checkpoint_with_python_object_named_untrusted(
    tmp_path, capsys, function, args, name, zip_format
):
    path = tmp_path / "hostile.pt"
    content = {**tiny_checkpoint(["a", "b"]).to_dict(), "model": CallOnLoad(function, args)}
    torch.save(content, path, _use_new_zipfile_serialization=zip_format)

    with pytest.raises(CheckpointError) as error:
        load_checkpoint(path)

    message = str(error.value)
    assert f"{path} is not a hiertcn checkpoint: it refers to the Python object {name}," in message
    assert "which no hiertcn checkpoint contains" in message
    assert "may come from an untrusted source" in message
    assert "torch.load(weights_only=False) would run that object's code, so do not" in message
    assert "truncated or damaged" not in message
    assert "not a file written by torch.save" not in message
    assert "payload ran" not in capsys.readouterr().out
