"""The item vocabulary: external item ids (str) <-> contiguous item rows `0..N-1`."""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hiertcn.errors import DataError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ItemVocab:
    """External id (str) of each item row, and the reverse map.

    Ids are always strings, so the items `42` and `"42"` are the same item.
    """

    ids: tuple[str, ...]
    row_of: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        ids = tuple(str(item) for item in self.ids)
        row_of = {item: row for row, item in enumerate(ids)}
        if len(row_of) != len(ids):
            counts = Counter(ids)
            duplicates = sorted(item for item, count in counts.items() if count > 1)[:5]
            raise DataError(f"item vocabulary has duplicate ids {duplicates}: ids must be unique")
        object.__setattr__(self, "ids", ids)
        object.__setattr__(self, "row_of", row_of)

    @classmethod
    def from_ids(cls, items: Iterable[object]) -> ItemVocab:
        """Build a vocabulary whose rows follow the order of first appearance in `items`."""
        return cls(tuple(dict.fromkeys(str(item) for item in items)))

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, item: object) -> bool:
        return str(item) in self.row_of

    def row(self, item: object) -> int:
        """Return the row of one external id; raises DataError when it is not in the vocabulary."""
        try:
            return self.row_of[str(item)]
        except KeyError:
            raise DataError(
                f"item {item!r} is not in the vocabulary of {len(self)} items: drop the events "
                "of items outside the vocabulary first, or build the vocabulary with "
                "`ItemVocab.from_ids` over every item"
            ) from None

    def rows(self, items: Iterable[object], missing: int | None = None) -> np.ndarray:
        """Map external ids to rows, int32 `[n]`.

        An id outside the vocabulary raises DataError, or gets the row `missing` when it is given
        (the impressions use `-1`).
        """
        if missing is None:
            return np.fromiter((self.row(item) for item in items), dtype=np.int32)
        get = self.row_of.get
        return np.fromiter((get(str(item), missing) for item in items), dtype=np.int32)

    def save(self, path: str | Path) -> None:
        """Write the vocabulary as a JSON list of external ids, in row order."""
        Path(path).write_text(json.dumps(list(self.ids)), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> ItemVocab:
        """Read a vocabulary written by `save`."""
        path = Path(path)
        try:
            ids = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise DataError(
                f"item vocabulary {path} not found (`EventLog.save` writes one into the folder "
                "of each saved event log)"
            ) from None
        except json.JSONDecodeError as error:
            raise DataError(f"item vocabulary {path} is not valid JSON: {error}") from None
        if not isinstance(ids, list):
            raise DataError(f"item vocabulary {path} must contain a JSON list of item ids")
        return cls(tuple(str(item) for item in ids))
