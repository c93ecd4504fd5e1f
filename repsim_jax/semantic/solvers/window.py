"""``window`` ("batch-optimal", the official ``sw_k``): sort each side's rows by L2 norm
(ascending), cut both orders into consecutive blocks of ``size`` and solve each block pair
exactly. Exact when S <= size."""
from __future__ import annotations

import jax.numpy as jnp

from repsim_jax.semantic.solvers.base import Option, Solver, register

__all__ = ["WINDOW"]


class _Window(Solver):
    def plan(self, cost, norms_a, norms_b, *, size):
        s = cost.shape[-1]
        if s <= size:
            return (cost,), None
        ia = jnp.argsort(norms_a, stable=True)
        ib = jnp.argsort(norms_b, stable=True)
        sorted_cost = cost[ia][:, ib]
        nfull, tail = divmod(s, size)
        full = sorted_cost[:nfull * size, :nfull * size].reshape(nfull, size, nfull, size)
        full = full[jnp.arange(nfull), :, jnp.arange(nfull), :]          # (nfull, size, size)
        subs = (full,)
        if tail:
            subs = subs + (sorted_cost[nfull * size:, nfull * size:],)
        return subs, (ia, ib)

    def assemble(self, s, sub_perms, aux, *, size):
        if aux is None:
            return sub_perms[0].astype(jnp.int32)
        ia, ib = aux
        nfull, tail = divmod(s, size)
        local = sub_perms[0] + (jnp.arange(nfull) * size)[:, None]   # sorted-order columns
        local = local.reshape(-1)
        if tail:
            local = jnp.concatenate([local, sub_perms[1] + nfull * size])
        return jnp.zeros(s, jnp.int32).at[ia].set(ib[local].astype(jnp.int32))


WINDOW = register(_Window(name="window", ingraph=False, options={
    "size": Option(128, "int", doc="block size")}))
