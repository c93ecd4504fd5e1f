r"""The matching problem: a batch of square cost matrices, solved by a registered solver.

:math:`\max_{\pi \in \mathfrak{S}_S} \sum_k M_{k\pi(k)}` for each cost matrix
``(..., S, S)``. :func:`solve` returns a :class:`Matching` (the permutations with each
solver's diagnostics); :func:`match` only the permutations. Both are compiled once per
shape, matcher and options (module-level ``jax.jit`` with static arguments).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from repsim_jax._checks import InputError, unknown_name
from repsim_jax._results import result
from repsim_jax.semantic import host
from repsim_jax.semantic.geometry import matched_score
from repsim_jax.semantic.solvers import get_solver
from repsim_jax.semantic.solvers.exact import hungarian_matching

__all__ = ["Matching", "solve", "match", "exact_matching", "plan_subproblems",
           "assemble_permutation", "row_bound"]


@result(meta=("matcher",))
class Matching:
    """Permutations of a batch of problems with diagnostics (leading axes = the batch).

    ``perm`` (..., S) int32 (row k -> column perm[k]); ``score`` the matched sum;
    ``gap`` a certified upper bound on OPT - score (0 for ``exact``, the dual bound of the
    solver's own potentials for ``auction``/``sinkhorn``, the row/column-maxima bound for
    the others); ``converged`` (bool), ``iterations`` (bidding steps / Sinkhorn iterations,
    0 where not iterative), ``marginal_error`` (Sinkhorn's max |row/column sum - 1|, 0 else).
    """
    perm: np.ndarray
    score: np.ndarray
    gap: np.ndarray
    converged: np.ndarray
    iterations: np.ndarray
    marginal_error: np.ndarray
    matcher: str = ""

    @property
    def quality_bound(self):
        """Certified lower bound on score / OPT (for non-negative optima)."""
        return np.where(self.score + self.gap > 0,
                        self.score / np.maximum(self.score + self.gap, 1e-300), 1.0)


def row_bound(cost, score):
    """The dual bound with zero prices: min(sum of row maxima, sum of column maxima) - score
    (valid for any matching; jit/vmap-able)."""
    return jnp.maximum(jnp.minimum(cost.max(-1).sum(-1), cost.max(-2).sum(-1)) - score, 0.0)


def plan_subproblems(matcher: str, cost, norms_a, norms_b, **options):
    """In-graph part of a matcher for ONE pair: ``(subproblems, aux)`` (see
    :mod:`repsim_jax.semantic.solvers.base`). Jit/vmap-able."""
    return get_solver(matcher).plan(cost, norms_a, norms_b, **options)


def assemble_permutation(matcher: str, s: int, sub_perms, aux, **options):
    """Permutation (S,) of ONE pair from the exact solutions of its sub-problems."""
    return get_solver(matcher).assemble(s, sub_perms, aux, **options)


def _solver_opts(matcher, opts):
    """The options a solver's per-pair functions take (scheduler-only ones removed)."""
    drop = {"lanes", "cost_dtype", "tol", "rounds"}
    return {k: v for k, v in opts if k not in drop}


@functools.partial(jax.jit, static_argnames=("matcher", "opts"))
def _plan_batch(cost, na, nb, *, matcher, opts):
    fn = functools.partial(plan_subproblems, matcher, **_solver_opts(matcher, opts))
    return jax.vmap(fn)(cost, na, nb)


@functools.partial(jax.jit, static_argnames=("s", "matcher", "opts"))
def _assemble_batch(sub_perms, aux, *, s, matcher, opts):
    fn = functools.partial(assemble_permutation, matcher, s, **_solver_opts(matcher, opts))
    return jax.vmap(fn)(sub_perms, aux)


@functools.partial(jax.jit, static_argnames=("matcher", "opts"))
def _diagnose_batch(cost, na, nb, *, matcher, opts):
    solver = get_solver(matcher)
    fn = functools.partial(solver.solve_one, **_solver_opts(matcher, opts))
    return jax.vmap(fn)(cost, na, nb)


def _prepare(cost, matcher, norms_a, norms_b, options):
    cost = jnp.asarray(cost)
    if cost.ndim < 2 or cost.shape[-1] != cost.shape[-2]:
        raise InputError(f"cost: expected square (..., S, S) matrices, got {cost.shape}")
    opts = tuple(sorted(get_solver(matcher).check(options).items()))
    lead, s = cost.shape[:-2], cost.shape[-1]
    flat = cost.reshape(-1, s, s)
    na = (jnp.zeros(flat.shape[:-1], cost.dtype) if norms_a is None
          else jnp.broadcast_to(jnp.asarray(norms_a), lead + (s,)).reshape(-1, s))
    nb = (jnp.zeros(flat.shape[:-1], cost.dtype) if norms_b is None
          else jnp.broadcast_to(jnp.asarray(norms_b), lead + (s,)).reshape(-1, s))
    return flat, na, nb, opts, lead, s


def _permutations(flat, na, nb, matcher, opts, s, solver):
    subs, aux = _plan_batch(flat, na, nb, matcher=matcher, opts=opts)
    if solver == "host":
        sub_perms = tuple(jnp.asarray(host.solve_exact_host(np.asarray(x))) for x in subs)
    elif solver == "hungarian":
        sub_perms = tuple(jax.vmap(hungarian_matching)(x.reshape(-1, *x.shape[-2:])
                                                       ).reshape(x.shape[:-1]) for x in subs)
    else:
        raise unknown_name("solver", solver, ("host", "hungarian"))
    return _assemble_batch(sub_perms, aux, s=s, matcher=matcher, opts=opts)


def match(cost, matcher: str = "exact", *, solver: str = "host", norms_a=None,
          norms_b=None, **options):
    """Permutations for a batch of cost matrices ``(..., S, S)`` -> ``(..., S)`` (maximise).

    ``norms_a``/``norms_b`` (``(..., S)``, the L2 norms of the rows of ``X_a`` and ``X_b``)
    are needed by ``window`` and ``topk_greedy``. ``solver``: ``"host"`` (exact parts on
    the CPU, :func:`repsim_jax.semantic.host.solve_exact_host`) or ``"hungarian"``
    (in-graph). Options: the matcher's (:func:`repsim_jax.semantic.matcher_options`).
    """
    flat, na, nb, opts, lead, s = _prepare(cost, matcher, norms_a, norms_b, options)
    return _permutations(flat, na, nb, matcher, opts, s, solver).reshape(*lead, s)


def solve(cost, matcher: str = "exact", *, solver: str = "host", norms_a=None,
          norms_b=None, **options) -> Matching:
    """:func:`match` with diagnostics: a :class:`Matching` of the batch ``(..., S, S)``."""
    flat, na, nb, opts, lead, s = _prepare(cost, matcher, norms_a, norms_b, options)
    slv = get_solver(matcher)
    if slv.ingraph:
        perm, diag = _diagnose_batch(flat, na, nb, matcher=matcher, opts=opts)
    else:
        perm, diag = _permutations(flat, na, nb, matcher, opts, s, solver), {}
    perm = jnp.asarray(perm)
    score = matched_score(flat.astype(jnp.float32), perm)
    nb_ = flat.shape[0]
    gap = diag.get("gap")
    if gap is None:
        gap = (jnp.zeros(nb_) if slv.optimal
               else row_bound(flat.astype(jnp.float32), score))
    rs = lambda a: np.asarray(a).reshape(lead + np.shape(a)[1:])  # noqa: E731
    return Matching(perm=rs(perm), score=rs(score), gap=rs(gap),
                    converged=rs(diag.get("converged", jnp.ones(nb_, bool))),
                    iterations=rs(diag.get("iterations", jnp.zeros(nb_, jnp.int32))),
                    marginal_error=rs(diag.get("marginal_error", jnp.zeros(nb_))),
                    matcher=matcher)


def exact_matching(cost, *, solver: str = "host"):
    """Exact maximum matchings ``(..., S)`` of cost matrices ``(..., S, S)``."""
    return match(cost, "exact", solver=solver)
