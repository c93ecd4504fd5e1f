r"""``sinkhorn``: entropic OT in the log domain, rounded to a permutation (placeholder:
rewritten below)."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from repsim_jax.semantic.solvers.base import Option, Solver, register
from repsim_jax.semantic.solvers.greedy import greedy_matching

__all__ = ["sinkhorn_matching", "SINKHORN"]


def sinkhorn_matching(cost, *, eps_start: float = 0.3, eps_end: float = 3e-3,
                      n_stages: int = 8, iters_per_stage: int = 25):
    r"""Log-domain Sinkhorn with an epsilon schedule, rounded greedily to a permutation."""
    cost = jnp.asarray(cost, jnp.float32)
    scale = jnp.maximum(jnp.max(jnp.abs(cost)), 1e-30)
    m = cost / scale
    s = cost.shape[-1]
    eps_list = jnp.geomspace(eps_start, eps_end, n_stages).astype(jnp.float32)
    lse = jax.nn.logsumexp

    def stage(fg, eps):
        def it(fg, _):
            f, g = fg
            f = -eps * lse((m + g[None, :]) / eps, axis=1)
            g = -eps * lse((m + f[:, None]) / eps, axis=0)
            return (f, g), None
        fg, _ = jax.lax.scan(it, fg, None, length=iters_per_stage)
        return fg, None

    (f, g), _ = jax.lax.scan(stage, (jnp.zeros(s), jnp.zeros(s)), eps_list)
    return greedy_matching((m + f[:, None] + g[None, :]) / eps_list[-1])


class _Sinkhorn(Solver):
    def plan(self, cost, norms_a, norms_b, **opts):
        return (), sinkhorn_matching(cost, **opts)


SINKHORN = register(_Sinkhorn(name="sinkhorn", options={
    "eps_start": Option(0.3, "pos"), "eps_end": Option(3e-3, "pos"),
    "n_stages": Option(8, "int"), "iters_per_stage": Option(25, "int")}))
