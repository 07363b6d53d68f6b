"""Errors of `load_item_vectors` on files that are not a float .npy array [N, D]."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hiertcn.errors import ConfigError
from hiertcn.models.embedding import load_item_vectors


def write_good(path: Path) -> Path:
    np.save(path, np.zeros((5, 4), dtype=np.float32))
    return path


def write_random_bytes(path: Path) -> None:
    path.write_bytes(np.random.default_rng(0).bytes(300))


def write_empty(path: Path) -> None:
    path.write_bytes(b"")


def write_text(path: Path) -> None:
    path.write_text("item,x,y\n1,0.5,0.5\n")


def write_truncated(path: Path) -> None:
    content = write_good(path).read_bytes()
    path.write_bytes(content[:-10])


def write_object_array(path: Path) -> None:
    np.save(path, np.array([1, "a"], dtype=object), allow_pickle=True)


def write_npz(path: Path) -> None:
    with path.open("wb") as file:
        np.savez(file, vectors=np.zeros((5, 4), dtype=np.float32))


@pytest.mark.parametrize(
    "write",
    [write_random_bytes, write_empty, write_text, write_truncated, write_object_array, write_npz],
)
def test_unreadable_vectors_raise_config_error(tmp_path, write):
    path = tmp_path / "vectors.npy"
    write(path)
    with pytest.raises(ConfigError) as error:
        load_item_vectors(str(path), 5, 4)
    message = str(error.value)
    assert f"--item-vectors {path}" in message
    assert "numpy.save" in message
    assert "allow_pickle" not in message


def test_vectors_folder_is_named_a_folder(tmp_path):
    with pytest.raises(ConfigError, match=f"--item-vectors {tmp_path} is a folder"):
        load_item_vectors(str(tmp_path), 5, 4)


def test_missing_vectors_name_the_flag(tmp_path):
    path = tmp_path / "nope.npy"
    with pytest.raises(ConfigError) as error:
        load_item_vectors(str(path), 5, 4)
    message = str(error.value)
    assert f"--item-vectors {path} not found" in message
    assert "item_vectors_path" not in message


def test_vectors_of_other_width_name_embedding_dim(tmp_path):
    path = write_good(tmp_path / "vectors.npy")
    with pytest.raises(ConfigError, match="pass --embedding-dim 4"):
        load_item_vectors(str(path), 5, 8)


def test_integer_vectors_are_rejected(tmp_path):
    path = tmp_path / "vectors.npy"
    np.save(path, np.zeros((5, 4), dtype=np.int64))
    with pytest.raises(ConfigError, match="has dtype int64"):
        load_item_vectors(str(path), 5, 4)


def test_float_vectors_are_read(tmp_path):
    path = write_good(tmp_path / "vectors.npy")
    assert tuple(load_item_vectors(str(path), 5, 4).shape) == (5, 4)
