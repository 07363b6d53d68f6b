"""Distinct values of id arrays by hashing, for logs of millions of string ids.

`np.unique` sorts the whole array, and sorting an object array of `str` compares Python objects
one pair at a time. A dict pass and a sort of the distinct ids alone cost much less. One timing
ran on a 2-core VM under load, on the 2 million events of 24 copies of the Taobao head log.
There `np.unique(return_inverse=True)` took 2.5 s for the user ids and 4.3 s for the item ids,
and `unique_inverse` took 0.4 s and 0.7 s.
"""

from __future__ import annotations

import numpy as np

from hiertcn.data.interning import Interner


def factorize(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return the distinct values of `values` `[E]` in order of first appearance (object
    `[U]`), and the code of each value `[E]` (int64), its index in that order."""
    index = Interner()
    codes = np.fromiter(map(index.__getitem__, values.tolist()), dtype=np.int64, count=len(values))
    return index.distinct(), codes


def unique_inverse(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return what `np.unique(values, return_inverse=True)` returns for a 1-D array of
    strings: the sorted distinct values and the index of each value among them (int64)."""
    distinct, codes = factorize(values)
    order = np.argsort(distinct, kind="stable")
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order), dtype=np.int64)
    return distinct[order], rank[codes]
