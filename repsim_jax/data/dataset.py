"""The one record every data source returns: :class:`Dataset`, and :class:`LazyArray`, the
array-like view of images (or masks) that are decoded only when read.

``Dataset.images`` is either an (N, H, W, 3) float32 numpy array in [0, 1] or a
:class:`LazyArray` with the same shape and dtype: indexing it (an int, a slice, an index
array) decodes just those items, ``np.asarray(view)`` decodes all of them, and
:meth:`LazyArray.batches` streams it in batches decoded by background workers
(:mod:`repsim_jax.data.stream`). A data set larger than memory is only ever seen through
such a view, batch by batch.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import numpy as np

from repsim_jax._results import result

__all__ = ["Dataset", "LazyArray", "materialize"]


class LazyArray:
    """``n`` items of shape ``item_shape`` and ``dtype``, item ``i`` made by ``load(i)``.

    ``load`` must be a picklable callable (a module-level function or a
    ``functools.partial`` of one) so that process workers can run it. ``workers`` is the
    default number of decoding threads used by ``__getitem__`` for several items.
    """

    def __init__(self, n: int, item_shape: Sequence[int], dtype, load: Callable[[int], Any],
                 *, workers: int = 4, name: str = "images"):
        self.n = int(n)
        self.item_shape = tuple(int(s) for s in item_shape)
        self.dtype = np.dtype(dtype)
        self.load = load
        self.workers = int(workers)
        self.name = name

    # numpy-like surface ------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, ...]:
        return (self.n, *self.item_shape)

    @property
    def ndim(self) -> int:
        return 1 + len(self.item_shape)

    @property
    def nbytes(self) -> int:
        return int(self.n * np.prod(self.item_shape) * self.dtype.itemsize)

    def __len__(self) -> int:
        return self.n

    def __repr__(self) -> str:
        return (f"LazyArray({self.name}, shape={self.shape}, dtype={self.dtype}, "
                f"{self.nbytes / 2**30:.2f} GiB if materialised)")

    def _indices(self, key) -> np.ndarray:
        if isinstance(key, slice):
            return np.arange(self.n)[key]
        idx = np.asarray(key)
        if idx.dtype == bool:
            if idx.shape != (self.n,):
                raise IndexError(f"boolean index of shape {idx.shape} for {self.n} items")
            return np.flatnonzero(idx)
        idx = idx.astype(np.int64)
        if idx.size and (idx.max() >= self.n or idx.min() < -self.n):
            raise IndexError(f"index out of range for {self.n} items")
        return np.where(idx < 0, idx + self.n, idx)

    def __getitem__(self, key):
        if isinstance(key, tuple):          # view[idx, ...]: items first, then the rest
            return self[key[0]][(slice(None), *key[1:])]
        if isinstance(key, (int, np.integer)):
            i = int(key) + (self.n if int(key) < 0 else 0)
            if not 0 <= i < self.n:
                raise IndexError(f"index {key} out of range for {self.n} items")
            return np.asarray(self.load(i), self.dtype)
        from repsim_jax.data.stream import load_items
        return load_items(self.load, self._indices(key), self.item_shape, self.dtype,
                          workers=self.workers)

    def __array__(self, dtype=None, copy=None):
        out = self[:]
        return out if dtype is None else out.astype(dtype)

    def take(self, indices) -> "LazyArray":
        """A lazy view of the items ``indices`` (nothing is decoded)."""
        idx = self._indices(indices)
        return LazyArray(len(idx), self.item_shape, self.dtype, _Taken(self.load, idx),
                         workers=self.workers, name=self.name)

    def batches(self, batch_size: int, **kwargs):
        """``(start, batch)`` pairs over all items in order, decoded ahead by background
        workers (:func:`repsim_jax.data.stream.iter_batches`)."""
        from repsim_jax.data.stream import iter_batches
        return iter_batches(self, batch_size, **kwargs)


class _Taken:
    """Picklable ``load`` of a subset: item ``j`` is ``load(indices[j])``."""

    def __init__(self, load, indices):
        self.base, self.indices = load, np.asarray(indices, np.int64)

    def __call__(self, j: int):
        return self.base(int(self.indices[j]))


def materialize(x) -> np.ndarray | None:
    """A numpy array from an array or a :class:`LazyArray` (None stays None)."""
    if x is None or isinstance(x, np.ndarray):
        return x
    return np.asarray(x)


def _take(x, idx):
    if x is None:
        return None
    if isinstance(x, LazyArray):
        return x.take(idx)
    return np.asarray(x)[idx]


@result(meta=("name", "class_names", "concept_names", "files", "info"))
class Dataset:
    """Images and whatever annotations their source has.

    Attributes:
      images: (N, H, W, 3) float32 in [0, 1] — a numpy array or a :class:`LazyArray`.
      labels: (N,) int32 class indices, or None (a flat folder, bare arrays).
      concept_labels: (N, C) bool image-level concept tags, or None.
      concept_masks: (N, H, W, C) bool per-pixel concept masks (same geometry as
        ``images``; numpy or lazy), or None.
      name: the source as given; class_names: index -> name; concept_names: C names;
      files: the image files used, in order (relative to the folder), for file sources;
      info: what loading did — sizes in/out and the resize rule, counts of skipped /
        ignored files, the annotation report (see :func:`repsim_jax.data.load`).
    """
    images: Any
    labels: Any = None
    concept_labels: Any = None
    concept_masks: Any = None
    name: str = ""
    class_names: tuple = ()
    concept_names: tuple = ()
    files: tuple = ()
    info: Any = dataclasses.field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def lazy(self) -> bool:
        """True when the images are a :class:`LazyArray` (decoded when read)."""
        return isinstance(self.images, LazyArray)

    def take(self, indices) -> "Dataset":
        """The sub-data set of ``indices`` (lazy views stay lazy)."""
        idx = np.arange(len(self))[indices] if isinstance(indices, slice) else \
            np.asarray(indices, np.int64)
        files = tuple(self.files[i] for i in idx) if self.files else ()
        return dataclasses.replace(
            self, images=_take(self.images, idx), labels=_take(self.labels, idx),
            concept_labels=_take(self.concept_labels, idx),
            concept_masks=_take(self.concept_masks, idx), files=files)

    def materialized(self) -> "Dataset":
        """The same data set with every lazy array decoded into memory."""
        return dataclasses.replace(self, images=materialize(self.images),
                                   concept_masks=materialize(self.concept_masks))
