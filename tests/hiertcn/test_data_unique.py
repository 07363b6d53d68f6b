"""hiertcn.data.unique: hashing equivalents of np.unique for arrays of string ids."""

from __future__ import annotations

import numpy as np
import pytest

from hiertcn.data.unique import factorize, unique_inverse


def object_array(values: list[str]) -> np.ndarray:
    array = np.empty(len(values), dtype=object)
    array[:] = values
    return array


CASES = [
    [],
    ["a"],
    ["b", "a", "b", "c", "a"],
    ["10", "9", "100", "9", "é", "e", "Z", ""],
    [str(value) for value in np.random.default_rng(0).integers(0, 50, 1000)],
]


@pytest.mark.parametrize("values", CASES, ids=range(len(CASES)))
def test_unique_inverse_matches_numpy(values: list[str]) -> None:
    array = object_array(values)
    expected_unique, expected_inverse = np.unique(array, return_inverse=True)

    unique, inverse = unique_inverse(array)

    assert unique.tolist() == expected_unique.tolist()
    assert inverse.tolist() == expected_inverse.reshape(-1).tolist()
    assert inverse.dtype == np.int64


def test_factorize_keeps_first_appearance() -> None:
    distinct, codes = factorize(object_array(["b", "a", "b", "c", "a"]))

    assert distinct.tolist() == ["b", "a", "c"]
    assert codes.tolist() == [0, 1, 0, 2, 1]
    assert distinct.dtype == object
