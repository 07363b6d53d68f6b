"""Integer codes for the strings of a log column, collected while the log is read.

A log of millions of events repeats far fewer distinct ids and event types. `Interner` gives each
distinct string a code, 0, 1, 2, ..., in order of first appearance. `CodeColumn` appends the
codes of a column to a C array of 4 bytes per event. A list of strings takes an 8-byte reference
per event and, for each string that the csv module creates, an object of 56 bytes for a
7-character id (CPython 3.11).
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence

import numpy as np


class Interner(dict[str, int]):
    """A dict from each distinct string to its code, the number of strings seen before it.

    A lookup of a new string adds it, so `map(interner.__getitem__, values)` encodes a column in C
    and calls Python code only once per distinct string.
    """

    def __missing__(self, key: str) -> int:
        code = self[key] = len(self)
        return code

    def distinct(self) -> np.ndarray:
        """Return the strings in code order, str objects `[K]`."""
        values = np.empty(len(self), dtype=object)
        values[:] = list(self)
        return values


class CodeColumn:
    """The codes of one column of strings, appended chunk by chunk: `distinct()[codes()]`.

    NOTE: the codes are C ints, int32 on the usual platforms, so a column with more than
    2**31 - 1 distinct strings raises OverflowError. Those strings alone would take about 100 GB.
    """

    def __init__(self) -> None:
        self.interner = Interner()
        self.array = array("i")

    def __len__(self) -> int:
        return len(self.array)

    def append(self, value: str) -> None:
        self.array.append(self.interner[value])

    def extend(self, values: Sequence[str]) -> None:
        # numpy converts the codes to C ints faster than `array.extend` does.
        codes = np.fromiter(map(self.interner.__getitem__, values), np.intc, count=len(values))
        self.array.frombytes(codes.view(np.uint8))

    def codes(self) -> np.ndarray:
        """Return the codes as an int32 array `[E]` that shares the memory of this column.

        While that array exists, the column cannot grow: `append` and `extend` raise BufferError.
        """
        return np.frombuffer(self.array, dtype=np.intc)

    def distinct(self) -> np.ndarray:
        """Return the distinct strings in code order, str objects `[K]`."""
        return self.interner.distinct()
