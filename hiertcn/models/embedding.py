"""Item embeddings: a learned table, or fixed pre-trained vectors from a `.npy` file."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

from hiertcn.errors import ConfigError

logger = logging.getLogger(__name__)

# The first bytes of every .npy file (numpy.lib.format.MAGIC_PREFIX).
_NPY_MAGIC = b"\x93NUMPY"


class ItemEmbedding(nn.Module):
    """The item table [N, D] and the lookup of item rows in it.

    Without `vectors_path` the table is a learned `nn.Embedding(N, D)`. With it, the table is
    read from that float `.npy` file of shape [N, D]. The file is opened memory-mapped and copied
    once into a float32 buffer, which is not a parameter, so no optimizer updates it. The buffer
    is not persistent, so checkpoints store only the path (in the model configuration), and
    loading a checkpoint reads the file again.
    """

    def __init__(self, num_items: int, dim: int, vectors_path: str | None = None) -> None:
        super().__init__()
        self.vectors_path = vectors_path
        self.embedding: nn.Embedding | None = None
        if vectors_path is None:
            self.embedding = nn.Embedding(num_items, dim)
            # Scores are dot products of D-vectors. Unit-variance entries would give scores with a
            # standard deviation near sqrt(D), and std D**-0.5 keeps it near 1 at the start.
            nn.init.normal_(self.embedding.weight, std=dim**-0.5)
        else:
            self.register_buffer(
                "vectors", load_item_vectors(vectors_path, num_items, dim), persistent=False
            )

    @property
    def trainable(self) -> bool:
        """Whether the table is learned (False for pre-trained vectors)."""
        return self.embedding is not None

    def table(self) -> torch.Tensor:
        """Return the item table [N, D]."""
        if self.embedding is not None:
            return self.embedding.weight
        return self.vectors

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        """Look up item rows (int64, any shape) and return their vectors [..., D]."""
        return nn.functional.embedding(items, self.table())


def load_item_vectors(path: str, num_items: int, dim: int) -> torch.Tensor:
    """Read a float `.npy` file of shape [N, D] into a float32 tensor, checking its shape.

    Raises ConfigError, naming the `--item-vectors` flag that sets `path`, when the file is
    missing, a folder, not a `.npy` array, or an array of another shape or dtype.
    """
    file = Path(path)
    if file.is_dir():
        raise ConfigError(f"--item-vectors {file} is a folder: pass the .npy file inside it")
    if not file.is_file():
        raise ConfigError(f"--item-vectors {file} not found: pass an existing .npy file")
    vectors = _read_npy(file)
    if vectors.shape != (num_items, dim):
        width = vectors.shape[-1] if vectors.ndim == 2 else "its width"
        raise ConfigError(
            f"--item-vectors {file} has shape {vectors.shape}, expected ({num_items}, {dim}): "
            f"write one row per item row of the vocabulary and pass --embedding-dim {width}"
        )
    if not np.issubdtype(vectors.dtype, np.floating):
        raise ConfigError(f"--item-vectors {file} has dtype {vectors.dtype}: save a float array")
    logger.info("read %d fixed item vectors of size %d from %s", num_items, dim, file)
    return torch.from_numpy(np.array(vectors, dtype=np.float32))


def _read_npy(file: Path) -> np.ndarray:
    """Open a `.npy` file memory-mapped, or raise ConfigError when it is not one."""
    fix = "save the vectors with numpy.save(path, array) as a float array [N, D]"
    try:
        size = file.stat().st_size
        with file.open("rb") as stream:
            magic = stream.read(len(_NPY_MAGIC))
    except OSError as error:
        raise ConfigError(
            f"--item-vectors {file} cannot be read ({error}): pass a file you can read"
        ) from error
    if magic != _NPY_MAGIC:
        # np.load would try to unpickle such a file, and its message advises allow_pickle=True,
        # which would run code from the file.
        raise ConfigError(
            f"--item-vectors {file} ({size} bytes) is not a .npy array because it lacks the "
            f".npy header: {fix}"
        )
    try:
        vectors = np.load(file, mmap_mode="r", allow_pickle=False)
    except (ValueError, EOFError, OSError) as error:
        # A truncated file or an object array raises ValueError, EOFError or OSError.
        raise ConfigError(
            f"--item-vectors {file} ({size} bytes) is truncated or not a numeric array "
            f"({error}): {fix}"
        ) from error
    return vectors
