"""Host-side execution: the thread pool, numba kernels' compilation and batched exact
solves. No maths lives here; the solvers (:mod:`repsim_jax.semantic.solvers`) define what
is computed, the scheduler (:mod:`repsim_jax.semantic.schedule`) decides where and when."""
from __future__ import annotations

import functools
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

__all__ = ["numba_kernel", "solve_exact_host", "host_threads", "pool"]

_POOL: ThreadPoolExecutor | None = None


def host_threads() -> int:
    """Threads for host solves: ``os.cpu_count()``, at most 8."""
    return min(os.cpu_count() or 1, 8)


def pool(threads: int) -> ThreadPoolExecutor:
    """One process-wide pool of ``threads`` workers (recreated when the count changes)."""
    global _POOL
    if _POOL is None or _POOL._max_workers != threads:
        _POOL = ThreadPoolExecutor(max_workers=threads)
    return _POOL


@functools.lru_cache(maxsize=None)
def numba_kernel(kernel, fastmath: bool | frozenset = False):
    """``kernel`` compiled by numba (no GIL, cached on disk), or None without numba (the
    ``[fast]`` extra). ``fastmath``: a bool or a frozenset of LLVM flags. Shared by the host
    auction and the host scores."""
    try:
        import numba
    except ImportError:
        return None
    flags = set(fastmath) if isinstance(fastmath, frozenset) else fastmath
    return numba.njit(nogil=True, cache=True, fastmath=flags)(kernel)


def solve_exact_host(costs, *, threads: int | None = None) -> np.ndarray:
    """Exact maximum matchings of a batch of square cost matrices ``(..., m, m)`` on the host.

    Returns ``perm`` of shape ``(..., m)`` (int32). The problems are solved in float64 by
    :func:`~repsim_jax.semantic.solvers.exact.host_solver_name`'s solver, spread over
    ``threads`` threads (the solvers release the GIL; default :func:`host_threads`).
    """
    from repsim_jax.semantic.solvers.exact import host_solver
    costs = np.asarray(costs, dtype=np.float64)
    lead, m = costs.shape[:-2], costs.shape[-1]
    flat = costs.reshape(-1, m, m)
    _, solve = host_solver()
    out = np.empty((flat.shape[0], m), np.int32)
    if m == 1:
        out[:] = 0
        return out.reshape(*lead, m)
    threads = threads or host_threads()
    if threads <= 1 or flat.shape[0] < 2 * threads:
        for b in range(flat.shape[0]):
            out[b] = solve(flat[b])
    else:
        chunks = np.array_split(np.arange(flat.shape[0]), threads)

        def work(idx):
            for b in idx:
                out[b] = solve(flat[b])
        list(pool(threads).map(work, chunks))
    return out.reshape(*lead, m)
