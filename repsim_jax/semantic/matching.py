r"""Matchers: one-to-one matchings of the spatial positions of two representations.

For two representations :math:`X_a, X_b \in \mathbb{R}^{S \times C}` (S positions / tokens,
C channels) the cost matrix is :math:`M = X_a X_b^\top \in \mathbb{R}^{S \times S}` and a
matcher returns a permutation :math:`\pi` (``perm[k] = pi(k)``: row k of ``X_a`` is paired
with row ``perm[k]`` of ``X_b``) that (approximately) solves the linear assignment problem

.. math::  \max_{\pi \in \mathfrak{S}_S} \; \sum_k M_{k, \pi(k)}
           = \max_P \langle X_a, P X_b \rangle_F .

This module is the stable entry point; the code lives in :mod:`.problem` (``match``,
``solve`` -> :class:`~repsim_jax.semantic.problem.Matching`), :mod:`.solvers` (one matcher
per module: identity, exact, greedy, topk, window, sinkhorn, auction, and the registry) and
:mod:`.host` (thread pool, numba, batched exact solves).
"""
from __future__ import annotations

from repsim_jax.semantic.geometry import matched_score
from repsim_jax.semantic.host import numba_kernel, solve_exact_host
from repsim_jax.semantic.problem import (Matching, assemble_permutation, exact_matching, match,
                                         plan_subproblems, solve)
from repsim_jax.semantic.schedule import _vmapn  # noqa: F401
from repsim_jax.semantic.solvers import SOLVERS, check_options, get_solver, matcher_options
from repsim_jax.semantic.solvers.auction import (_auction_defaults, _complete,  # noqa: F401
                                                 auction_candidates, auction_cost_dtype,
                                                 auction_graph, auction_host, auction_lanes,
                                                 auction_matching, auction_prices,
                                                 host_auction_available)
from repsim_jax.semantic.solvers.exact import host_solver as _host_solver  # noqa: F401
from repsim_jax.semantic.solvers.exact import host_solver_name, hungarian_matching
from repsim_jax.semantic.solvers.greedy import greedy_matching
from repsim_jax.semantic.solvers.identity import identity_matching
from repsim_jax.semantic.solvers.sinkhorn import sinkhorn_matching

__all__ = [
    "MATCHERS", "INGRAPH", "identity_matching", "greedy_matching", "sinkhorn_matching",
    "hungarian_matching", "auction_matching", "auction_candidates", "auction_graph",
    "auction_prices", "auction_lanes", "auction_host", "host_auction_available",
    "auction_cost_dtype", "solve_exact_host", "host_solver_name", "exact_matching",
    "matched_score", "plan_subproblems", "assemble_permutation", "match", "solve", "Matching",
    "matcher_options", "check_options", "get_solver", "numba_kernel",
]

MATCHERS = tuple(SOLVERS)
INGRAPH = tuple(n for n, s in SOLVERS.items() if s.ingraph)
