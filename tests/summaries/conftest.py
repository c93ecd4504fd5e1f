"""A lazy source that records every read, for the streaming tests."""
from __future__ import annotations

import functools

import numpy as np
import pytest

from repsim_jax.data import LazyArray


def _item(array, i):
    return array[i]


class RecordingSource(LazyArray):
    """``array`` seen as a lazy source; ``requests`` lists the items of every read
    (``__getitem__``: its item count; single-item decodes by the stream workers count 1).
    Reading it as a whole (``np.asarray``) fails the test."""

    def __init__(self, array):
        array = np.asarray(array)
        super().__init__(len(array), array.shape[1:], array.dtype,
                         functools.partial(_item, array), workers=1, name="recorded")
        self.requests: list[int] = []

    def __getitem__(self, key):
        k = key[0] if isinstance(key, tuple) else key
        self.requests.append(1 if isinstance(k, (int, np.integer)) else len(self._indices(k)))
        return super().__getitem__(key)

    def __array__(self, dtype=None, copy=None):
        raise AssertionError("the whole source was materialised")

    def check_bounded(self, limit: int) -> None:
        """Every read asked for at most ``limit`` items, none for the whole set."""
        assert self.requests, "the source was never read"
        assert max(self.requests) <= limit, (max(self.requests), limit)
        assert max(self.requests) < self.n


@pytest.fixture
def recording():
    return RecordingSource
