r"""Semantic (permutation-invariant) representational similarity matrices.

Wald et al., "Decoupling Semantic Similarity from Spatial Alignment for Neural Networks",
NeurIPS 2024. For N inputs with representations :math:`X_i \in \mathbb{R}^{S \times C}`
(S = H*W positions or tokens, C channels), the semantic similarity of a pair is

.. math::  s(i, j) = \max_{P \in \mathfrak{S}_S} \langle X_i, P X_j \rangle_F
                   = \max_\pi \sum_k \langle x_{ik}, x_{j \pi(k)} \rangle ,

a linear assignment problem on the cost matrix :math:`M_{ij} = X_i X_j^\top`. Permutations
keep norms, so the same :math:`\pi` maximises the cosine and minimises
:math:`\|X_i - P X_j\|_F`; one matching serves every kernel:

* ``inner``:  :math:`K_{ij} = s(i, j)`
* ``cosine``: :math:`K_{ij} = s(i, j) / (\|X_i\|_F \|X_j\|_F)` (0 when a norm is 0)
* ``rbf``:    :math:`K_{ij} = \exp(-d_{ij} / (2\sigma^2))` with
  :math:`d_{ij} = \|X_i - P^* X_j\|_F^2` and, by default, the official convention
  :math:`\sigma = \sqrt{\operatorname{lower\,median}\{d_{ij} \neq 0 : i > j\}} + 10^{-3}`
  (``sigma="lower_median"``; also ``"median"``, ``"mean"`` of the non-zero d, or a number).

The diagonal uses the identity matching (provably optimal: Cauchy-Schwarz); the
spatio-semantic baseline is ``matcher="identity"`` for every pair.

Layout of the package: :mod:`.geometry` (cost matrices, kernels, bounds), :mod:`.problem`
(the matching problem and its result type), :mod:`.solvers` (one matcher per module, a
registry), :mod:`.schedule` (tiles, work items, host threads, devices), :mod:`.host`
(thread pool, numba, batched exact solves), and this module (the public ``rsm``).

**Certified matchers** (``auction``, ``tol``): every off-diagonal entry is within ``tol``
of the exact matcher's entry (cosine and rbf: absolute; inner: relative to
:math:`\sqrt{K_{ii}K_{jj}}`), from a dual bound the solver computes itself
(:mod:`.solvers.auction`); pairs whose bound is over ``tol`` are solved exactly, and counted
(``return_info=True``: :class:`SemanticRSM` with ``bound``, ``exact_fraction``).
For rbf, the per-pair bound includes sigma's own dependence on the matching
(:func:`.geometry.kernel_bounds`); pairs whose rbf bound is still over ``tol`` are solved
exactly in a second pass.
"""
from __future__ import annotations

import warnings
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from repsim_jax._checks import InputError, as_float_array, unknown_name
from repsim_jax._devices import as_mesh
from repsim_jax._results import result
from repsim_jax.semantic import geometry as geo
from repsim_jax.semantic import schedule
from repsim_jax.semantic.geometry import KERNELS, SIGMA_RULES, kernel_from_statistics  # noqa: F401
from repsim_jax.semantic.schedule import default_block_bytes  # noqa: F401
from repsim_jax.semantic.solvers import SOLVERS, get_solver

__all__ = ["rsm", "SemanticRSM", "KERNELS", "pair_statistics", "kernel_from_statistics"]


@result(meta=("matcher", "tol", "layers", "kernels"))
class SemanticRSM:
    """``rsm(..., return_info=True)``: the RSM(s) with everything else ``rsm`` computed.

    ``rsm``: exactly what ``rsm`` returns without ``return_info`` (an (N, N) array, an
    (L, N, N) array when ``stacked``, ``{layer: ...}`` for a dict of layers, and inside
    that ``{kernel: ...}`` for a kernel sequence); ``bound``: the same structure, a
    certified bound on ``|K - K_exact|`` per entry (None for matchers without a certificate:
    identity, greedy, topk_greedy, window; 0 for exact); ``quality``: with
    ``quality=True`` the (N, N) ratio matched score / exact score, structured like the input
    (per layer for a dict; not per kernel: one matching serves all kernels), else None;
    ``exact_fraction``: the fraction of pairs i > j a certified matcher had to solve exactly
    (its stronger step), ``fallback_pairs`` / ``pairs`` the counts (over all layers);
    ``matcher``, ``tol``; ``layers``: the names of a dict input, in its order (None for an
    array); ``kernels``: the kernel(s) computed.
    """
    rsm: object
    bound: object
    quality: object
    exact_fraction: float
    fallback_pairs: int
    pairs: int
    matcher: str = ""
    tol: float | None = None
    layers: tuple | None = None
    kernels: tuple = ()


# ------------------------------------------------------------------------ validation
def _as_sets(x, name: str, drop_first_token: bool, stacked: bool):
    lead = 1 if stacked else 0
    as_float_array(x, name, ndim=(3 + lead, 4 + lead))
    x = jnp.asarray(x, jnp.float32)
    if x.ndim == 4 + lead:                                   # (..., N, H, W, C)
        x = x.reshape(*x.shape[:-3], x.shape[-3] * x.shape[-2], x.shape[-1])
    if drop_first_token:
        if x.shape[-2] < 2:
            raise InputError(f"{name}: drop_first_token needs at least 2 tokens, got "
                             f"{x.shape[-2]}")
        x = x[..., 1:, :]
    if x.shape[-3] < 2:
        raise InputError(f"{name}: an RSM needs at least 2 inputs, got N={x.shape[-3]}")
    return x if stacked else x[None]


_UNSET = object()


def pair_statistics(x, *, matcher: str = "exact", mesh="all", devices=_UNSET, **options):
    """:func:`repsim_jax.semantic.schedule.pair_statistics` with the ``mesh=`` convention
    (``devices=`` a deprecated alias with the same values; ``devices=None`` = one device)."""
    if devices is not _UNSET:
        warnings.warn("semantic.rsm(devices=...) is deprecated; use mesh=... (same values)",
                      DeprecationWarning, stacklevel=3)
        mesh = devices
    return schedule.pair_statistics(x, matcher=matcher, mesh=as_mesh(mesh), **options)


def _certify_rbf(x, st, tol, sigma, sqnorm, max_rounds: int = 3):
    """Second pass of a certified matcher for rbf: pairs whose rbf bound (with sigma's own
    uncertainty) is over ``tol`` are solved exactly until every bound holds."""
    for rnd in range(max_rounds + 1):
        b = geo.kernel_bounds("rbf", st.ii, st.jj, st.sim, st.dist, st.gap, sqnorm,
                              sigma=sigma)
        over = b > tol
        if not over.any():
            return
        if rnd == max_rounds:              # sigma's interval too wide: every inexact pair
            over = np.ones_like(over)
        over &= ~st.fallback
        if not over.any():
            return
        l, p = np.nonzero(over)
        items = np.stack([l, st.ii[p], st.jj[p]], 1)
        ex = schedule.exact_items(x, items)
        tot = sqnorm[l, st.ii[p]] + sqnorm[l, st.jj[p]]
        st.sim[l, p] = ex
        st.dist[l, p] = geo.distance(ex, tot, np)
        st.gap[l, p] = geo.ROUNDING * tot
        st.fallback[l, p] = True


def _rsm_stack(x, kernels, matcher, want_quality, sigma, options):
    st = pair_statistics(x, matcher=matcher, return_quality=want_quality, **options)
    n, L = x.shape[1], x.shape[0]
    sqnorm = np.asarray(jnp.sum(jnp.square(x), axis=(-2, -1)), np.float64)
    slv = get_solver(matcher)
    tol = slv.check({k: v for k, v in options.items() if k in slv.options}).get("tol")
    if st.gap is not None and tol is not None and "rbf" in kernels:
        _certify_rbf(x, st, tol, sigma, sqnorm)
    ii, jj = st.ii, st.jj
    mats = {k: kernel_from_statistics(k, n, ii, jj, st.sim, st.dist, sqnorm, sigma=sigma)
            for k in kernels}
    bounds = None
    if slv.optimal:                              # the optimum: a zero bound
        bounds = {k: np.zeros((L, n, n)) for k in kernels}
    elif st.gap is not None:
        bounds = {}
        for k in kernels:
            b = np.zeros((L, n, n))
            val = geo.kernel_bounds(k, ii, jj, st.sim, st.dist, st.gap, sqnorm, sigma=sigma)
            b[:, ii, jj] = val
            b[:, jj, ii] = val
            bounds[k] = b
    qual = None
    if want_quality:
        if st.exact_sim is not None:
            exact = st.exact_sim
        elif st.gap is not None:                 # certified: no extra solve
            exact = st.sim + st.gap
        else:                                    # e.g. the auction with tol=None
            l, p = np.nonzero(np.ones_like(st.sim, bool))
            exact = schedule.exact_items(x, np.stack([l, ii[p], jj[p]], 1)).reshape(
                st.sim.shape)
        ratio = np.where(exact != 0, st.sim / np.where(exact != 0, exact, 1.0), 1.0)
        qual = np.ones((L, n, n))
        qual[:, ii, jj] = ratio
        qual[:, jj, ii] = ratio
    nfb = int(st.fallback.sum()) if st.fallback is not None else 0
    return mats, qual, bounds, (nfb, int(st.sim.size))


def rsm(reps, *, kernel: str | Sequence[str] = "cosine", matcher: str = "exact",
        return_info: bool = False, quality: bool = False, stacked: bool = False,
        sigma="lower_median", drop_first_token: bool = False, return_quality: bool = False,
        **options):
    r"""Semantic RSM(s) of one layer, a stack of equal-shaped layers, or a dict of layers.

    The result mirrors the input, and nothing else changes its type: an array in gives an
    (N, N) array ((L, N, N) with ``stacked=True``); a dict of layers gives a dict with the
    same names in the same order; a kernel sequence gives ``{kernel: ...}`` (inside the
    per-layer dict). Every extra output (bounds, quality, exact fraction, names) comes only
    with ``return_info=True``, as one :class:`SemanticRSM` whose ``.rsm`` is that structure.

    Args:
      reps: (N, H, W, C) or (N, S, C) for one layer (channels last, position s = h*W + w);
        with ``stacked=True`` a (L, N, ...) array of L equal-shaped layers; or a dict
        ``{layer: reps}`` (layers of equal shape are vmapped together).
      kernel: ``"inner"``, ``"cosine"``, ``"rbf"``, or a sequence of them (one matching
        serves all; the result is then a dict ``{kernel: rsm}``).
      matcher: a registered matcher (:func:`repsim_jax.semantic.matcher_options` lists them
        with their options and defaults): ``"identity"``, ``"exact"``, ``"greedy"``,
        ``"topk_greedy"`` (``k``, default 64), ``"window"`` (``size``, default 128),
        ``"sinkhorn"`` or ``"auction"`` (``tol``, default 1e-3: certified, see the module
        docstring; ``tol=None`` uncertified; ``k`` candidate groups per row, default 32,
        ``eps`` default 1e-2 of the costs' row range (the first epsilon of the scaling),
        ``rounds`` dense re-bidding rounds, ``dual_eps``, ``init_iters``, ``init_eps``,
        ``bidders``, ``max_bids``, ``lanes``: pairs stepping together in-graph;
        ``cost_dtype``: ``"float32"`` (default), ``"bfloat16"`` or ``"auto"``, only with
        ``tol=None``). See :mod:`repsim_jax.semantic.solvers`.
      return_info: return a :class:`SemanticRSM` (RSMs, per-entry bounds, exact_fraction,
        quality when asked, layer names).
      quality: with ``return_info``, compute ``SemanticRSM.quality``: the (N, N) ratio
        matched score / exact score (1 on the diagonal and for ``exact``; <= 1 otherwise).
        For certified matchers it is the certified lower bound score / (score + bound),
        from no extra solve; for the others the exact matcher is run too.
      return_quality: deprecated (one release; DeprecationWarning): returns the old tuple
        ``(rsm, quality)``; use ``return_info=True, quality=True``.
      sigma: rbf bandwidth rule (``"lower_median"`` = official, ``"median"``, ``"mean"``)
        or a positive number.
      drop_first_token: drop token 0 (e.g. a transformer's CLS token) from every set.
      **options: matcher options, and ``solver`` (``"auto"``, ``"host"``, ``"hungarian"``:
        where exact sub-problems are solved; for the auction ``"host"`` = numba bidding,
        ``"hungarian"`` = in-graph lanes),
        ``max_block_bytes`` (cost matrices at once; default
        :func:`~repsim_jax.semantic.schedule.default_block_bytes`), ``block_pairs``
        (pairs per block), ``mesh`` (``"all"`` (default), a list of devices, a Mesh, or
        None; ``devices=`` is a deprecated alias), ``progress``.

    Returns:
      (N, N) float64 array (or (L, N, N) when ``stacked``; a dict per layer for dict input;
      a dict per kernel for a kernel sequence); with ``return_info`` a :class:`SemanticRSM`
      holding that structure as ``.rsm``.

    Raises:
      InputError: bad shapes, an empty dict, layers disagreeing on N, unknown kernel or
        matcher options, ``quality=True`` without ``return_info=True``.
    """
    if return_quality:
        warnings.warn("semantic.rsm(return_quality=True) is deprecated and will be removed: "
                      "use rsm(..., return_info=True, quality=True) and read .rsm and "
                      ".quality of the SemanticRSM", DeprecationWarning, stacklevel=2)
    if quality and not return_info:
        raise InputError("quality=True: the quality comes only as SemanticRSM.quality; "
                         "pass return_info=True as well")
    want_quality = bool(quality or return_quality)
    kernels = (kernel,) if isinstance(kernel, str) else tuple(kernel)
    if not kernels:
        raise InputError("kernel: give at least one kernel")
    for k in kernels:
        if k not in KERNELS:
            raise unknown_name("kernel", k, KERNELS)
    slv = get_solver(matcher)
    sched = {"solver", "max_block_bytes", "block_pairs", "mesh", "devices", "progress"}
    slv.check({k: v for k, v in options.items() if k not in sched})   # early, clear errors
    tol = slv.check({k: v for k, v in options.items() if k in slv.options}).get("tol")

    def pick(mats):
        return mats[kernels[0]] if isinstance(kernel, str) else mats

    counts = [0, 0]

    def run(x):
        mats, qual, bounds, (nfb, npairs) = _rsm_stack(x, kernels, matcher, want_quality,
                                                       sigma, options)
        counts[0] += nfb
        counts[1] += npairs
        return mats, qual, bounds

    if isinstance(reps, Mapping):
        if not reps:
            raise InputError("reps: the dict of layers is empty")
        sets = {name: _as_sets(v, f"reps[{name!r}]", drop_first_token, False)
                for name, v in reps.items()}
        ns = {name: v.shape[1] for name, v in sets.items()}
        if len(set(ns.values())) > 1:
            raise InputError(f"reps: layers disagree on the number of inputs N: {ns}")
        groups: dict[tuple, list] = {}
        for name, v in sets.items():
            groups.setdefault(v.shape, []).append(name)
        out, qout, bout = {}, {}, {}
        for names in groups.values():
            x = jnp.concatenate([sets[nm] for nm in names], axis=0)
            mats, qual, bounds = run(x)
            for li, nm in enumerate(names):
                out[nm] = pick({k: m[li] for k, m in mats.items()})
                if want_quality:
                    qout[nm] = qual[li]
                if bounds is not None:
                    bout[nm] = pick({k: b[li] for k, b in bounds.items()})
        out = {nm: out[nm] for nm in reps}
        qout = {nm: qout[nm] for nm in reps} if want_quality else None
        bout = {nm: bout[nm] for nm in reps} if bout else None
    else:
        x = _as_sets(reps, "reps", drop_first_token, stacked)
        mats, qual, bounds = run(x)
        if not stacked:
            mats = {k: m[0] for k, m in mats.items()}
            qual = None if qual is None else qual[0]
            bounds = None if bounds is None else {k: b[0] for k, b in bounds.items()}
        out, qout = pick(mats), qual
        bout = None if bounds is None else pick(bounds)
    if return_info:
        return SemanticRSM(rsm=out, bound=bout, quality=qout,
                           exact_fraction=counts[0] / max(counts[1], 1),
                           fallback_pairs=counts[0], pairs=counts[1], matcher=matcher,
                           tol=tol, layers=tuple(reps) if isinstance(reps, Mapping) else None,
                           kernels=kernels)
    return (out, qout) if return_quality else out     # the deprecated tuple


MATCHERS = tuple(SOLVERS)
