r"""``sinkhorn``: log-domain entropic OT with epsilon-scaling, rounded to a permutation, with
a certificate.

Maximises :math:`\langle P, R\rangle + \varepsilon H(P)` over doubly-stochastic P (all row
and column sums 1), R the column-centred costs in units of r, the largest row range (as for
the auction: invariant to constants shared by all positions). Potentials f, g:
:math:`\log P_{ij} = (R_{ij} + f_i + g_j) / \varepsilon`; each iteration sets f so that the
row sums are 1, then g so that the column sums are 1, so after it the column sums are exact
and the *marginal error* is :math:`\max_i |\sum_j P_{ij} - 1|`. Epsilon decreases
geometrically from ``eps_start`` to ``eps_end`` over ``n_stages`` stages (potentials
warm-started); a stage stops when the marginal error is below ``marginal_tol`` or after
``max_iters`` iterations (``converged`` reports whether the last stage met it).

Rounding: greedy on :math:`\log P` (largest plan entries first:
:func:`~repsim_jax.semantic.solvers.greedy.greedy_matching`), a valid permutation always.
Certificate: the column potentials are prices, :math:`q_j = -\varepsilon\text{-scaled } g_j`,
so :math:`\mathrm{gap} = \sum_i \max_j (R_{ij} + g_j) - (R_{i\pi(i)} + g_{\pi(i)})` (times
r) bounds OPT - score (LP duality, as for the auction), computed on the full matrix.

Where it pays off: every iteration is two dense log-sum-exp passes over S x S (no
data-dependent control flow, a good fit for accelerators and vmap); on a 2-core CPU the exact
host solver (lapjvh) is faster at S <= 256 (see the README's matcher table).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from repsim_jax.semantic.solvers.auction import full_gap
from repsim_jax.semantic.solvers.base import Option, Solver, register
from repsim_jax.semantic.solvers.greedy import greedy_matching

__all__ = ["sinkhorn_matching", "sinkhorn_solve", "SINKHORN"]


def sinkhorn_solve(cost, *, eps_start: float = 0.05, eps_end: float = 2e-3, n_stages: int = 4,
                   max_iters: int = 50, marginal_tol: float = 1e-2):
    """``(perm, diagnostics)`` of one (S, S) problem (module docstring); diagnostics:
    ``gap`` (units of the costs), ``converged``, ``iterations`` (total), ``marginal_error``.
    Jit/vmap-able."""
    cost = jnp.asarray(cost, jnp.float32)
    s = cost.shape[-1]
    m = cost - cost.mean(0, keepdims=True)
    r = jnp.maximum(jnp.max(m.max(1) - m.min(1)), jnp.finfo(jnp.float32).tiny)
    m = m / r
    lse = jax.nn.logsumexp
    eps_list = jnp.geomspace(eps_start, eps_end, n_stages).astype(jnp.float32)

    def row_err(f, g, eps):
        return jnp.max(jnp.abs(jnp.exp(lse((m + f[:, None] + g[None, :]) / eps, 1)) - 1.0))

    def stage(carry, eps):
        f, g, it = carry

        def body(c):
            f, g, n, _ = c
            f = -eps * lse((m + g[None, :]) / eps, axis=1)
            g = -eps * lse((m + f[:, None]) / eps, axis=0)
            return f, g, n + 1, row_err(f, g, eps)

        f, g, n, err = jax.lax.while_loop(
            lambda c: (c[3] > marginal_tol) & (c[2] < max_iters), body,
            (f, g, jnp.int32(0), jnp.float32(jnp.inf)))
        return (f, g, it + n), err

    (f, g, iters), errs = jax.lax.scan(stage, (jnp.zeros(s), jnp.zeros(s), jnp.int32(0)),
                                       eps_list)
    perm = greedy_matching((m + f[:, None] + g[None, :]) / eps_list[-1])
    gap = full_gap(m, -g, perm) * r
    return perm, {"gap": gap, "converged": errs[-1] <= marginal_tol, "iterations": iters,
                  "marginal_error": errs[-1]}


def sinkhorn_matching(cost, **options):
    """The permutation (S,) of :func:`sinkhorn_solve`."""
    return sinkhorn_solve(cost, **options)[0]


class _Sinkhorn(Solver):
    def plan(self, cost, norms_a, norms_b, **opts):
        return (), sinkhorn_matching(cost, **opts)

    def solve_one(self, cost, norms_a, norms_b, **opts):
        return sinkhorn_solve(cost, **opts)


SINKHORN = register(_Sinkhorn(name="sinkhorn", options={
    "eps_start": Option(0.05, "pos", doc="first epsilon, a fraction of the row range"),
    "eps_end": Option(2e-3, "pos"), "n_stages": Option(4, "int"),
    "max_iters": Option(50, "int", doc="iterations per stage at most"),
    "marginal_tol": Option(1e-2, "pos", doc="stage ends below this marginal error")}))
