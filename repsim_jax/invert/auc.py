r"""Exact rank AUC, Mann-Whitney U tests and Benjamini-Hochberg, vectorised over neurons.

For a neuron with activations :math:`a \in \mathbb{R}^N` and a binary concept indicator
:math:`y \in \{0, 1\}^N` with :math:`n = \sum_i y_i` positives, let :math:`r_i` be the
1-based *average* rank of :math:`a_i` among all :math:`N` activations (tied values share
the mean of the ranks they occupy). The rank sum of the positives is
:math:`R = \sum_i r_i y_i` and the Mann-Whitney statistic of the positives is

.. math::
    U = R - \frac{n(n+1)}{2}, \qquad
    \mathrm{AUC} = \frac{U}{n (N - n)}
         = P(a_+ > a_-) + \tfrac12 P(a_+ = a_-),

the area under the ROC curve of ``a`` as a score for ``y`` (ties counted one half). It
depends on ``a`` only through its ranks, so it is invariant to any strictly increasing
transformation of the activations (scale, shift, sigmoid...).

Exactness. We work with *twice* the average ranks, :math:`\rho_i = 2 r_i = f_i + l_i + 2`
(:math:`f_i, l_i` the 0-based first and last sorted position of :math:`a_i`'s tie group),
which are integers. Sums of :math:`\rho` over any subset are integers below
:math:`N(N+1) < 2^{53}` (for :math:`N < 9 \cdot 10^7`), so they are exact in float64 in
any summation order, and :math:`2U = \sum \rho y - n(n+1)` is an exact integer; the only
rounding is the final division. Because the rank sum of any formula is linear in its
indicator, the AUC of *every* candidate of the beam search comes from one rank-weighted
reduction over the inputs (:mod:`repsim_jax.invert.search`).

Mann-Whitney p-values use the normal approximation with tie and continuity correction,
exactly as ``scipy.stats.mannwhitneyu(x, y, method="asymptotic")`` with ``x`` the positives:

.. math::
    \mu = \frac{n m}{2}, \quad
    \sigma^2 = \frac{n m}{12}\Big(N + 1 - \frac{\sum_t (t^3 - t)}{N (N-1)}\Big), \quad
    z = \frac{U' - \mu - \tfrac12}{\sigma},

with :math:`m = N - n`, :math:`t` the sizes of the tie groups of all activations and
:math:`U' = U` ("greater": positives larger), :math:`U' = nm - U` ("less") or
:math:`U' = \max(U, nm - U)` ("two-sided", p doubled). We return :math:`\log p` too, from
``log_ndtr(-z)``, so that strong neurons do not underflow to :math:`p = 0`.

Benjamini-Hochberg: with :math:`p_{(1)} \le \dots \le p_{(m)}`,
:math:`q_{(k)} = \min_{j \ge k} \min(1, p_{(j)} m / j)`, computed in log space.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import log_ndtr

from repsim_jax._checks import InputError, as_float_array, check_same_length

__all__ = ["twice_average_ranks", "auc_from_rank_sums", "rank_auc", "mann_whitney",
           "mann_whitney_from_rank_sums", "benjamini_hochberg", "ALTERNATIVES"]

ALTERNATIVES = ("two-sided", "greater", "less")


def twice_average_ranks(a: jax.Array, dtype=None) -> tuple[jax.Array, jax.Array]:
    """Twice the 1-based average ranks along the last axis, and the tie term.

    Args:
      a: (..., N) activations.
      dtype: of ``rho``; default float64 under x64, else float32. An integer dtype
        (int32 / uint32) gives the exact integers for any N < 2^30.
    Returns:
      ``rho``: (..., N) integers :math:`2 r_i`;
      ``tie_term``: (...,) :math:`\\sum_{\\text{groups}} (t^3 - t)` of the tie groups
      (float64 under x64, else float32: then rounded for large tie groups).
    """
    n = a.shape[-1]
    order = jnp.argsort(a, axis=-1, stable=True)
    s = jnp.take_along_axis(a, order, axis=-1)
    idx = jnp.broadcast_to(jnp.arange(n), s.shape)
    change = s[..., 1:] != s[..., :-1]
    starts = jnp.concatenate([jnp.ones(s.shape[:-1] + (1,), bool), change], axis=-1)
    ends = jnp.concatenate([change, jnp.ones(s.shape[:-1] + (1,), bool)], axis=-1)
    first = jax.lax.cummax(jnp.where(starts, idx, 0), axis=a.ndim - 1)
    last = jax.lax.cummin(jnp.where(ends, idx, n - 1), axis=a.ndim - 1, reverse=True)
    ftype = jnp.float64 if jax.config.jax_enable_x64 else jnp.float32
    rho_sorted = (first + last + 2).astype(ftype if dtype is None else dtype)
    t = (last - first + 1).astype(ftype)
    tie_term = jnp.sum(t * t - 1.0, axis=-1)  # sum over elements of t^2-1 = sum_groups t^3-t
    inv = jnp.argsort(order, axis=-1)
    rho = jnp.take_along_axis(rho_sorted, inv, axis=-1)
    return rho, tie_term


def auc_from_rank_sums(rank_sum2, n_pos, n_total):
    """AUC from twice the rank sum of the positives: ``(R2 - n(n+1)) / (2 n (N - n))``.

    NaN where ``n_pos`` is 0 or ``n_total`` (the AUC is undefined there).
    """
    n_pos = jnp.asarray(n_pos, rank_sum2.dtype)
    n_neg = n_total - n_pos
    u2 = rank_sum2 - n_pos * (n_pos + 1)
    den = 2.0 * n_pos * n_neg
    return jnp.where(den > 0, u2 / jnp.where(den > 0, den, 1.0), jnp.nan)


def _check_pair(activations, labels):
    a = as_float_array(activations, "activations", ndim=(1, 2))
    lab = np.asarray(labels)
    if lab.dtype != np.bool_:
        if lab.dtype.kind not in "iu" or not np.isin(lab, (0, 1)).all():
            raise InputError(f"labels: expected a boolean (or 0/1) array, got dtype {lab.dtype}")
        lab = lab.astype(bool)
    if lab.ndim not in (1, 2):
        raise InputError(f"labels: expected 1 or 2 dimensions, got shape {lab.shape}")
    check_same_length("activations", a, "labels", lab)
    return np.asarray(a), lab


@jax.jit
def _rank_auc_kernel(a, lab):
    rho, tie = twice_average_ranks(a.T)  # (U, N)
    r2 = rho @ lab.astype(rho.dtype)  # (U, K)
    n_pos = jnp.sum(lab, axis=0).astype(rho.dtype)
    return auc_from_rank_sums(r2, n_pos[None, :], a.shape[0]), r2, n_pos, tie


def rank_auc(activations, labels) -> np.ndarray:
    """Exact, scale-invariant AUC of each neuron for each binary label column.

    Args:
      activations: (N,) or (N, U) real array.
      labels: (N,) or (N, K) boolean array.
    Returns:
      float64 array of shape (), (U,), (K,) or (U, K) (the leading axes of the inputs);
      NaN for a label column with no positive or no negative input.
    """
    a, lab = _check_pair(activations, labels)
    a2 = a.reshape(a.shape[0], -1)
    l2 = lab.reshape(lab.shape[0], -1)
    with jax.enable_x64(True):
        auc, *_ = _rank_auc_kernel(jnp.asarray(a2, jnp.float64), jnp.asarray(l2))
        auc = np.asarray(auc)
    out_shape = a.shape[1:] + lab.shape[1:]
    return auc.reshape(out_shape)


def mann_whitney_from_rank_sums(rank_sum2, n_pos, n_total, tie_term,
                                alternative: str = "two-sided"):
    """Mann-Whitney U (of the positives), p-value and log p-value from rank sums.

    Args:
      rank_sum2: twice the rank sum of the positives (exact integers).
      n_pos: number of positives; ``n_total``: N; ``tie_term``: sum over tie groups of
        ``t^3 - t`` of all N activations (broadcastable).
      alternative: "two-sided", "greater" (positives larger) or "less".
    Returns:
      ``(U, p, log_p)``; NaN where ``n_pos`` is 0 or N.
    """
    if alternative not in ALTERNATIVES:
        raise InputError(f"alternative must be one of {ALTERNATIVES}, got {alternative!r}")
    dt = rank_sum2.dtype
    n1 = jnp.asarray(n_pos, dt)
    n2 = n_total - n1
    u1 = (rank_sum2 - n1 * (n1 + 1)) / 2.0
    nm = n1 * n2
    if alternative == "greater":
        u, log_f = u1, 0.0
    elif alternative == "less":
        u, log_f = nm - u1, 0.0
    else:
        u, log_f = jnp.maximum(u1, nm - u1), jnp.log(2.0)
    big_n = jnp.asarray(n_total, dt)
    var = nm / 12.0 * ((big_n + 1.0) - tie_term / (big_n * (big_n - 1.0)))
    sd = jnp.sqrt(jnp.maximum(var, 0.0))
    num = u - nm / 2.0 - 0.5
    z = jnp.where(sd > 0, num / jnp.where(sd > 0, sd, 1.0), jnp.where(num > 0, jnp.inf, -jnp.inf))
    z = jnp.where((sd > 0) | (num != 0), z, jnp.nan)
    log_p = jnp.minimum(log_f + log_ndtr(-z), 0.0)
    undefined = (n1 <= 0) | (n2 <= 0)
    log_p = jnp.where(undefined, jnp.nan, log_p)
    return jnp.where(undefined, jnp.nan, u1), jnp.exp(log_p), log_p


def mann_whitney(activations, labels, alternative: str = "two-sided"):
    """Tie-corrected asymptotic Mann-Whitney U test, positives vs negatives of each label.

    Equals ``scipy.stats.mannwhitneyu(a[y], a[~y], alternative=..., method="asymptotic")``
    (``U`` is the statistic of the positives), vectorised over neurons and labels, with
    ``log_p`` that does not underflow.

    Args:
      activations: (N,) or (N, U); labels: (N,) or (N, K) boolean.
    Returns:
      ``(U, p, log_p)`` float64 arrays shaped like :func:`rank_auc`'s result.
    """
    if alternative not in ALTERNATIVES:
        raise InputError(f"alternative must be one of {ALTERNATIVES}, got {alternative!r}")
    a, lab = _check_pair(activations, labels)
    a2 = a.reshape(a.shape[0], -1)
    l2 = lab.reshape(lab.shape[0], -1)
    with jax.enable_x64(True):
        _, r2, n_pos, tie = _rank_auc_kernel(jnp.asarray(a2, jnp.float64), jnp.asarray(l2))
        u, p, log_p = mann_whitney_from_rank_sums(r2, n_pos[None, :], a.shape[0],
                                                  tie[:, None], alternative)
        u, p, log_p = (np.asarray(x) for x in (u, p, log_p))
    out_shape = a.shape[1:] + lab.shape[1:]
    return u.reshape(out_shape), p.reshape(out_shape), log_p.reshape(out_shape)


def benjamini_hochberg(p_values=None, *, log_p=None):
    """Benjamini-Hochberg adjusted p-values (q-values) of a flat family of tests.

    Give either ``p_values`` or ``log_p`` (any shape; NaN entries are left out of the
    family and stay NaN). Returns ``(q, log_q)`` of the same shape.
    """
    if (p_values is None) == (log_p is None):
        raise InputError("give exactly one of p_values or log_p")
    if log_p is None:
        p = np.asarray(p_values, np.float64)
        if np.any(p[~np.isnan(p)] < 0) or np.any(p[~np.isnan(p)] > 1):
            raise InputError("p_values must lie in [0, 1]")
        with np.errstate(divide="ignore"):
            lp = np.log(p)
    else:
        lp = np.asarray(log_p, np.float64)
    flat = lp.ravel()
    ok = ~np.isnan(flat)
    vals = flat[ok]
    m = vals.size
    out = np.full(flat.shape, np.nan)
    if m:
        order = np.argsort(vals, kind="stable")
        ranks = np.arange(1, m + 1)
        adj = vals[order] + np.log(m) - np.log(ranks)
        adj = np.minimum.accumulate(adj[::-1])[::-1]
        adj = np.minimum(adj, 0.0)
        res = np.empty(m)
        res[order] = adj
        out[ok] = res
    log_q = out.reshape(lp.shape)
    return np.exp(log_q), log_q
