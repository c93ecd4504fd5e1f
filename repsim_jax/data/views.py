"""Array-like image sources that the training/evaluation loops read in chunks.

A *source* is anything with ``shape`` (leading axis = items), ``dtype`` and numpy-style
indexing by an int, a slice or an int index array, returning a numpy array: a numpy
array (already in memory), a :class:`~repsim_jax.data.dataset.LazyArray` (decoded when
read), or a :class:`MappedView` below. Code that takes a source reads it only through
:func:`gather` (items by index, at most ``chunk`` per request) and :func:`chunks` (in
order, ``chunk`` items at a time), so its memory is bounded by the chunk size, not by N.

* :class:`MappedView` — ``fn`` applied to a base source batch by batch when read (the
  sweep's images adapted to a model, ClaDec's reconstructions): nothing is computed or
  held until items are asked for.
* :func:`in_memory` — True for numpy / jax arrays (the paths that keep today's numbers).
"""
from __future__ import annotations

from typing import Callable, Iterator, Sequence

import numpy as np

from repsim_jax._checks import InputError

__all__ = ["MappedView", "in_memory", "is_source", "gather", "subset", "chunks",
           "check_range"]


def in_memory(x) -> bool:
    """True for numpy and jax arrays (the whole set already in memory)."""
    if isinstance(x, np.ndarray):
        return True
    try:
        import jax
        return isinstance(x, jax.Array)
    except ImportError:   # pragma: no cover - jax is a dependency
        return False


def is_source(x) -> bool:
    """True for an array-like source that is not in memory (lazy, mapped)."""
    return (not in_memory(x) and hasattr(x, "shape") and hasattr(x, "__getitem__")
            and hasattr(x, "dtype"))


def _indices(n: int, key) -> np.ndarray:
    if isinstance(key, slice):
        return np.arange(n)[key]
    idx = np.asarray(key)
    if idx.dtype == bool:
        return np.flatnonzero(idx)
    idx = idx.astype(np.int64).reshape(-1)
    if idx.size and (idx.max() >= n or idx.min() < -n):
        raise IndexError(f"index out of range for {n} items")
    return np.where(idx < 0, idx + n, idx)


def gather(source, indices, chunk: int | None = None) -> np.ndarray:
    """``source[indices]`` as a numpy array, read ``chunk`` items per request (all at once
    when None or for an in-memory array)."""
    idx = np.asarray(indices, np.int64).reshape(-1)
    if in_memory(source) or chunk is None or len(idx) <= chunk:
        return np.asarray(source[idx])
    return np.concatenate([np.asarray(source[idx[i:i + chunk]])
                           for i in range(0, len(idx), chunk)])


def subset(source, indices):
    """Items ``indices`` of ``source``: indexed now for an in-memory array, else a view read
    on demand (nothing is decoded until its items are asked for)."""
    idx = np.asarray(indices, np.int64).reshape(-1)
    return source[idx] if in_memory(source) else _Subset(source, idx)


def chunks(source, chunk: int, start: int = 0, stop: int | None = None) -> Iterator:
    """``(offset, block)`` over items ``start:stop`` of ``source``, ``chunk`` at a time."""
    chunk = int(chunk)
    if chunk < 1:
        raise InputError(f"chunk size must be >= 1, got {chunk}")
    stop = int(source.shape[0]) if stop is None else int(stop)
    for s in range(int(start), stop, chunk):
        yield s, np.asarray(source[s:min(s + chunk, stop)])


def check_range(block, name: str, low: float, high: float) -> None:
    """Raises when ``block``'s values leave ``[low, high]`` (a streamed batch's check)."""
    lo, hi = float(np.min(block)), float(np.max(block))
    if lo < low - 1e-6 or hi > high + 1e-6:
        raise InputError(f"{name}: values must lie in [{low}, {high}] (the classifier's input "
                         f"range; decoders end in a sigmoid), got min {lo:.4g}, max {hi:.4g}")


class MappedView:
    """``fn(base[idx])`` for the items asked for, computed ``batch_size`` items at a time.

    ``fn`` maps a batch ``(B, *base item shape)`` to ``(B, *item_shape)`` item by item
    (no mixing across the batch), so any chunking gives the same items. ``item_shape`` and
    ``dtype`` are found by applying ``fn`` to the first item when not given. ``take``
    returns a view of a subset (nothing computed).
    """

    def __init__(self, base, fn: Callable[[np.ndarray], np.ndarray], *,
                 item_shape: Sequence[int] | None = None, dtype=None,
                 batch_size: int = 64, name: str = "view"):
        self.base, self.fn, self.name = base, fn, name
        self.batch_size = max(1, int(batch_size))
        if item_shape is None or dtype is None:
            first = np.asarray(fn(np.asarray(base[0:1])))
            item_shape = first.shape[1:] if item_shape is None else item_shape
            dtype = first.dtype if dtype is None else dtype
        self.item_shape = tuple(int(s) for s in item_shape)
        self.dtype = np.dtype(dtype)

    @property
    def shape(self) -> tuple[int, ...]:
        return (int(self.base.shape[0]), *self.item_shape)

    @property
    def ndim(self) -> int:
        return 1 + len(self.item_shape)

    def __len__(self) -> int:
        return int(self.base.shape[0])

    def __repr__(self) -> str:
        return f"MappedView({self.name}, shape={self.shape}, dtype={self.dtype})"

    def __getitem__(self, key):
        if isinstance(key, tuple):
            return self[key[0]][(slice(None), *key[1:])]
        if isinstance(key, (int, np.integer)):
            i = int(key)
            return self[np.asarray([i])][0]
        idx = _indices(len(self), key)
        out = np.empty((len(idx), *self.item_shape), self.dtype)
        for s in range(0, len(idx), self.batch_size):
            part = idx[s:s + self.batch_size]
            # a contiguous run is read as a slice (lazy sources decode just those items)
            sel = slice(int(part[0]), int(part[-1]) + 1) \
                if len(part) and np.all(np.diff(part) == 1) else part
            out[s:s + len(part)] = np.asarray(self.fn(np.asarray(self.base[sel])), self.dtype)
        return out

    def __array__(self, dtype=None, copy=None):
        out = self[:]
        return out if dtype is None else out.astype(dtype)

    def take(self, indices) -> "MappedView":
        """The view of the items ``indices`` (nothing is computed)."""
        idx = _indices(len(self), indices)
        base = self.base.take(idx) if hasattr(self.base, "take") and not in_memory(self.base) \
            else _Subset(self.base, idx)
        return MappedView(base, self.fn, item_shape=self.item_shape, dtype=self.dtype,
                          batch_size=self.batch_size, name=self.name)


class _Subset:
    """Items ``indices`` of a source, read on demand (no copy of an in-memory base)."""

    def __init__(self, base, indices):
        self.base, self.indices = base, np.asarray(indices, np.int64)
        self.dtype = base.dtype

    @property
    def shape(self):
        return (len(self.indices), *tuple(self.base.shape[1:]))

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)):
            return np.asarray(self.base[int(self.indices[int(key)])])
        return np.asarray(self.base[self.indices[_indices(len(self), key)]])

    def take(self, indices):
        return _Subset(self.base, self.indices[_indices(len(self), indices)])
