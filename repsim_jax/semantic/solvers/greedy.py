"""``greedy``: repeatedly take the largest remaining entry whose row and column are free.

Implemented as rounds of *mutual best* pairs: all free entries that are the maximum of both
their row and their column are fixed simultaneously. A mutual best pair is never blocked by
a larger entry (such an entry would lie in row r or column c and contradict the mutual
maximum), so each round fixes exactly entries that sequential greedy fixes, in a different
order: the result equals sequential greedy. ~10 rounds at S=49, ~16 at S=196 on
ReLU-Gaussian costs. (The official ``breadth_first_match`` mixes row and column indices and
scores 0.67-0.79 of the optimum; a correct greedy reaches ~0.96.)
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from repsim_jax.semantic.solvers.base import Solver, register

__all__ = ["greedy_matching", "GREEDY"]


def greedy_matching(cost):
    """Greedy maximum matching of one (S, S) cost matrix, as rounds of mutual best pairs.

    Each round, among free rows/columns, an entry is a candidate when it is the maximum of
    both its row and its column; per row the first candidate column and per column the first
    candidate row are taken, and the pairs that agree are fixed. With distinct values these
    are exactly the mutual best pairs, so the result equals the sequential greedy (module
    docstring); with ties, the lexicographically first entry of the global maximum always
    qualifies, so every round fixes at least one pair. Only max/min reductions (no argmax,
    which XLA:CPU runs several times slower). Jit/vmap-able; returns ``perm`` (S,) int32.
    """
    cost = jnp.asarray(cost)
    s = cost.shape[-1]
    neg = jnp.array(-jnp.inf, cost.dtype)
    col_id = jax.lax.broadcasted_iota(jnp.int32, (s, s), 1)
    row_id = jax.lax.broadcasted_iota(jnp.int32, (s, s), 0)

    def body(state):
        perm, row_free, col_free = state
        free = row_free[:, None] & col_free[None, :]
        masked = jnp.where(free, cost, neg)
        cand = (free & (masked == masked.max(1, keepdims=True))
                & (masked == masked.max(0, keepdims=True)))
        first_col = jnp.min(jnp.where(cand, col_id, s), axis=1)
        first_row = jnp.min(jnp.where(cand, row_id, s), axis=0)
        accept = cand & (col_id == first_col[:, None]) & (row_id == first_row[None, :])
        row_acc, col_acc = accept.any(1), accept.any(0)
        perm = jnp.where(row_acc, first_col, perm)
        return perm, row_free & ~row_acc, col_free & ~col_acc

    init = (jnp.zeros(s, jnp.int32), jnp.ones(s, bool), jnp.ones(s, bool))
    perm, _, _ = jax.lax.while_loop(lambda st: st[1].any(), body, init)
    return perm


class _Greedy(Solver):
    def plan(self, cost, norms_a, norms_b, **opts):
        return (), greedy_matching(cost)


GREEDY = register(_Greedy(name="greedy"))
