"""Streaming: decode and resize in background workers, hand out batches in order.

Two back ends, both keeping at most ``prefetch`` batches ahead of the consumer (memory is
bounded by ``batch_size * prefetch`` items, never by N):

* ``backend="threads"`` (default): a thread pool decodes the items of the next batches
  while the consumer (the device) works on the current one. Pillow releases the GIL while
  it decodes and resamples, so threads run in parallel without copying pixels between
  processes. Measured in ``benchmarks/bench_data.py`` against Grain and a plain loop.
* ``backend="grain"``: ``grain.MapDataset.source(...).map(load).batch(...)
  .to_iter_dataset().mp_prefetch(...)`` with ``workers`` processes (Grain, the JAX
  ecosystem's data loader). Its multiprocessing path needs absl flags to be parsed even
  outside an ``absl.app.run`` main; :func:`_grain_ready` does that here, not in users'
  scripts. ``load`` must be picklable.

Measured (``benchmarks/bench_data.py``, 2 shared cores): threads stream at the rate of a
plain Pillow loop and let a busy consumer wait 0.38 s instead of 1.42 s for its batches;
Grain's worker processes start slowly (16 img/s on 256 images), so threads are the default.

Items come out in index order for both, so results never depend on the back end.
"""
from __future__ import annotations

import collections
import concurrent.futures as cf
import os
from typing import Callable, Iterator, Sequence

import numpy as np

from repsim_jax._checks import InputError

__all__ = ["load_items", "iter_batches", "default_workers", "BACKENDS"]

BACKENDS = ("threads", "grain", "serial")


def default_workers() -> int:
    """Decoding workers: the CPU count (at least 1, at most 16)."""
    return max(1, min(16, os.cpu_count() or 1))


def load_items(load: Callable, indices: Sequence[int], item_shape, dtype, *,
               workers: int = 4) -> np.ndarray:
    """``np.stack([load(i) for i in indices])`` decoded by ``workers`` threads."""
    indices = [int(i) for i in indices]
    out = np.empty((len(indices), *item_shape), dtype)
    if not indices:
        return out

    def put(j):
        out[j] = load(indices[j])
    if workers <= 1 or len(indices) == 1:
        for j in range(len(indices)):
            put(j)
    else:
        with cf.ThreadPoolExecutor(min(workers, len(indices))) as pool:
            list(pool.map(put, range(len(indices))))
    return out


def _thread_batches(view, starts, batch_size, workers, prefetch):
    n = len(view)
    pool = cf.ThreadPoolExecutor(max(1, workers))
    pending: collections.deque = collections.deque()
    try:
        it = iter(starts)

        def submit():
            s = next(it, None)
            if s is None:
                return False
            idx = range(s, min(s + batch_size, n))
            pending.append((s, [pool.submit(view.load, i) for i in idx]))
            return True
        for _ in range(max(1, prefetch)):
            if not submit():
                break
        while pending:
            s, futs = pending.popleft()
            batch = np.empty((len(futs), *view.item_shape), view.dtype)
            for j, f in enumerate(futs):
                batch[j] = f.result()
            submit()
            yield s, batch
    finally:
        for _, futs in pending:
            for f in futs:
                f.cancel()
        pool.shutdown(wait=True, cancel_futures=True)


def _grain_ready() -> None:
    """Grain's multiprocessing reads absl flags: mark them parsed outside ``app.run``."""
    try:
        from absl import flags
        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
    except ImportError:   # pragma: no cover - grain depends on absl
        pass


class _Source:
    """Random-access grain source over item indices."""

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return int(i)


class _Load:
    def __init__(self, load, dtype):
        self.load, self.dtype = load, np.dtype(dtype)

    def __call__(self, i):
        return np.asarray(self.load(i), self.dtype)


def _grain_batches(view, batch_size, workers, prefetch):
    import grain
    _grain_ready()
    ds = (grain.MapDataset.source(_Source(len(view))).map(_Load(view.load, view.dtype))
          .batch(batch_size))
    it = ds.to_iter_dataset()
    if workers > 0:
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=int(workers),
                                                         per_worker_buffer_size=max(1, prefetch)))
    for b, batch in enumerate(it):
        yield b * batch_size, np.asarray(batch)


def iter_batches(view, batch_size: int, *, backend: str = "threads",
                 workers: int | None = None, prefetch: int = 2,
                 progress: bool = False, desc: str = "decoding") -> Iterator:
    """``(start, batch)`` over all items of ``view`` (a :class:`LazyArray` or an array), in
    order, ``batch_size`` items at a time, decoded ``prefetch`` batches ahead.

    An in-memory array is sliced (nothing to decode). ``progress`` shows a tqdm bar.
    """
    if backend not in BACKENDS:
        raise InputError(f"stream backend {backend!r}: valid {', '.join(BACKENDS)}")
    batch_size = int(batch_size)
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    n = len(view)
    starts = range(0, n, batch_size)
    workers = default_workers() if workers is None else int(workers)
    if not hasattr(view, "load"):
        gen = ((s, np.asarray(view[s:s + batch_size])) for s in starts)
    elif backend == "grain":
        gen = _grain_batches(view, batch_size, workers, prefetch)
    elif backend == "serial" or workers <= 1:
        gen = ((s, load_items(view.load, range(s, min(s + batch_size, n)), view.item_shape,
                              view.dtype, workers=1)) for s in starts)
    else:
        gen = _thread_batches(view, starts, batch_size, workers, prefetch)
    if not progress:
        yield from gen
        return
    from tqdm.auto import tqdm
    with tqdm(total=n, desc=desc, unit="img") as bar:
        for s, batch in gen:
            bar.update(len(batch))
            yield s, batch
