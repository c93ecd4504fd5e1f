"""``topk_greedy``: exact matching of the k largest-norm rows of each side, greedy on the
remaining S - k of each side. Exact when S <= k (the official code crashes there)."""
from __future__ import annotations

import jax.numpy as jnp

from repsim_jax.semantic.solvers.base import Option, Solver, register
from repsim_jax.semantic.solvers.greedy import greedy_matching

__all__ = ["TOPK_GREEDY"]


class _TopK(Solver):
    def plan(self, cost, norms_a, norms_b, *, k):
        s = cost.shape[-1]
        if s <= k:
            return (cost,), None
        ia = jnp.argsort(-norms_a, stable=True)
        ib = jnp.argsort(-norms_b, stable=True)
        top = cost[ia[:k]][:, ib[:k]]
        rest = greedy_matching(cost[ia[k:]][:, ib[k:]])
        return (top,), (ia, ib, rest)

    def assemble(self, s, sub_perms, aux, *, k):
        if aux is None:
            return sub_perms[0].astype(jnp.int32)
        ia, ib, rest = aux
        cols = jnp.concatenate([ib[:k][sub_perms[0]], ib[k:][rest]])
        return jnp.zeros(s, jnp.int32).at[ia].set(cols.astype(jnp.int32))


TOPK_GREEDY = register(_TopK(name="topk_greedy", ingraph=False, options={
    "k": Option(64, "int", doc="rows solved exactly")}))
