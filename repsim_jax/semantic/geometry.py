r"""Cost geometry of semantic RSMs: pair cost matrices, matched statistics, kernels, and
the conversion of a bound on the matched score into a bound on each kernel's entry.

For representations :math:`X_i \in \mathbb{R}^{S \times C}` the cost matrix of a pair is
:math:`M = X_i X_j^\top` (S x S); a matching :math:`\pi` gives the score
:math:`s = \sum_k M_{k\pi(k)}` and the squared distance
:math:`d = \|X_i\|^2 + \|X_j\|^2 - 2s` (clipped at 0; float32 rounding of identical sets,
:math:`d \le 10^{-6}(\|X_i\|^2 + \|X_j\|^2)`, is set to exactly 0 as the official
aligned-vector difference gives). Kernels (one matching serves all):

* ``inner``:  :math:`K_{ij} = s(i, j)`
* ``cosine``: :math:`K_{ij} = s(i, j) / (\|X_i\|_F \|X_j\|_F)` (0 when a norm is 0)
* ``rbf``:    :math:`K_{ij} = \exp(-d_{ij} / (2\sigma^2))`, by default the official
  :math:`\sigma = \sqrt{\operatorname{lower\,median}\{d_{ij} \neq 0 : i > j\}} + 10^{-3}`.

**Bounds** (:func:`kernel_bounds`): a certified matcher gives, per pair, ``gap`` >=
:math:`s_{exact} - s \ge 0`. Then :math:`0 \le K^{exact} - K \le` ``gap / (||X_i|| ||X_j||)``
for cosine; for inner the same relative bound (``tol`` is relative to
:math:`\sqrt{K_{ii}K_{jj}}`); for rbf :math:`d_{exact} \in [d - 2\,gap, d]` and sigma's own
dependence on the matching is bounded too: each exact distance lies in its interval, so the
exact lower median lies between the lower medians of the interval ends (an order statistic
is monotone in every element); the rbf bound is the largest deviation over both intervals
(same set of non-zero distances assumed: pairs whose sets are identical up to rounding have
d = 0 under any matching).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from repsim_jax._checks import InputError, unknown_name

__all__ = ["KERNELS", "SIGMA_RULES", "tile_costs", "item_costs", "distance", "matched_score",
           "pair_stats", "sigma_of", "kernel_from_statistics", "kernel_bounds",
           "relative_gap", "ROUNDING"]

KERNELS = ("inner", "cosine", "rbf")
SIGMA_RULES = ("lower_median", "median", "mean")
ROUNDING = 4e-6   # float32 rounding allowance of a certificate, x (||X_i||^2 + ||X_j||^2)


def tile_costs(x, i0, j0, li, lj, t):
    """Cost matrices (L, B, S, S) and squared row norms (L, B, S) x2 of one tile's pairs.

    The N x N pair grid is cut into t x t tiles (I, J), I >= J; the cost matrices of a tile
    are ONE matmul (t*S, C) x (C, t*S) of its row and column inputs (a GEMM, no per-pair
    gathers), from which the tile's pairs (rows ``li``, columns ``lj``) are picked.
    """
    xi = jax.lax.dynamic_slice_in_dim(x, i0, t, axis=1)           # (L, t, S, C)
    xj = jax.lax.dynamic_slice_in_dim(x, j0, t, axis=1)
    L, _, s, c = xi.shape
    full = jnp.einsum("lsc,ltc->lst", xi.reshape(L, t * s, c), xj.reshape(L, t * s, c),
                      precision=jax.lax.Precision.HIGHEST).reshape(L, t, s, t, s)
    cost = full[:, li, :, lj, :]                                   # (B, L, S, S)
    cost = jnp.moveaxis(cost, 0, 1)
    sqi, sqj = jnp.sum(xi * xi, -1), jnp.sum(xj * xj, -1)          # (L, t, S)
    return cost, sqi[:, li], sqj[:, lj]


def item_costs(xa, xb, cost_dtype="float32"):
    """Cost matrices (P, S, S) of pairs (P, S, C) x (P, S, C) and whether they are centred.

    ``cost_dtype`` float32: :math:`X_a X_b^\\top` at full precision. Lower precision:
    :math:`(X_a - \\bar x_a)(X_b - \\bar x_b)^\\top` from centred low-precision inputs,
    which is M less its column means and a constant per row (same optimum); centred inputs
    keep the rounding relative to what varies between positions, not to shared offsets.
    """
    low = jnp.dtype(cost_dtype)
    if low == jnp.float32:
        return jnp.einsum("psc,ptc->pst", xa, xb, precision=jax.lax.Precision.HIGHEST), False
    ca = (xa - xa.mean(1, keepdims=True)).astype(low)
    cb = (xb - xb.mean(1, keepdims=True)).astype(low)
    return jnp.einsum("psc,ptc->pst", ca, cb, preferred_element_type=jnp.float32), True


def distance(sim, tot, xp=jnp):
    """d = ||X_a||^2 + ||X_b||^2 - 2 s from s and tot = ||X_a||^2 + ||X_b||^2 (>= 0; float32
    rounding of identical sets, d <= 1e-6 tot, is set to exactly 0). ``xp``: jnp or np."""
    dist = xp.maximum(tot - 2.0 * sim, 0.0)
    return xp.where(dist <= 1e-6 * tot, 0.0, dist)


def matched_score(cost, perm):
    """Sum of the matched entries, :math:`\\sum_k M_{k, \\pi(k)}` (batched over leading axes)."""
    return jnp.take_along_axis(cost, perm[..., None], axis=-1)[..., 0].sum(-1)


def pair_stats(cost, sq_a, sq_b, perm):
    """s = sum_k M[k, pi(k)] and d (:func:`distance`)."""
    sim = matched_score(cost, perm)
    return sim, distance(sim, sq_a + sq_b)


def score_host_kernel(x, items, perm, out):  # pragma: no cover - compiled by numba
    """out[b] = sum_k <x[l, i, k], x[l, j, perm[b, k]]> for work items b = (l, i, j):
    float32 dot products per position, summed in float64."""
    for b in range(items.shape[0]):
        l, i, j = items[b, 0], items[b, 1], items[b, 2]
        acc = 0.0
        for k in range(perm.shape[1]):
            q = perm[b, k]
            t = np.float32(0.0)
            for c in range(x.shape[3]):
                t += x[l, i, k, c] * x[l, j, q, c]
            acc += t
        out[b] = acc


def _order_stat(d: np.ndarray, rule: str):
    nz = np.sort(d.astype(np.float64))
    if nz.size == 0:
        return 0.0
    if rule == "lower_median":
        return nz[(nz.size - 1) // 2]
    if rule == "median":
        return float(np.median(nz))
    return float(nz.mean())


def sigma_of(dist: np.ndarray, rule) -> np.ndarray:
    """Per-layer sigma from the off-diagonal squared distances (L, P)."""
    if not isinstance(rule, str):
        val = float(rule)
        if not np.isfinite(val) or val <= 0:
            raise InputError(f"sigma must be positive and finite, got {rule!r}")
        return np.full(dist.shape[0], val)
    if rule not in SIGMA_RULES:
        raise unknown_name("sigma rule", rule, SIGMA_RULES)
    return np.array([np.sqrt(_order_stat(d[d != 0], rule)) + 1e-3 for d in dist])


def kernel_from_statistics(kernel: str, n: int, ii, jj, sim, dist, sqnorm, *,
                           sigma="lower_median") -> np.ndarray:
    """Assembles (L, N, N) RSMs from matched pair statistics (see the module docstring)."""
    L = sim.shape[0]
    sim = sim.astype(np.float64)
    sqnorm = np.asarray(sqnorm, np.float64)
    out = np.zeros((L, n, n))
    if kernel == "inner":
        off, diag = sim, sqnorm
    elif kernel == "cosine":
        nrm = np.sqrt(sqnorm)
        den = nrm[:, ii] * nrm[:, jj]
        off = np.where(den > 0, sim / np.where(den > 0, den, 1.0), 0.0)
        diag = np.where(sqnorm > 0, sqnorm / np.where(sqnorm > 0, nrm * nrm, 1.0), 0.0)
    elif kernel == "rbf":
        sig = sigma_of(dist, sigma)[:, None]
        off = np.exp(-dist.astype(np.float64) / (2.0 * sig ** 2))
        diag = np.ones((L, n))
    else:
        raise unknown_name("kernel", kernel, KERNELS)
    out[:, ii, jj] = off
    out[:, jj, ii] = off
    out[:, np.arange(n), np.arange(n)] = diag
    return out


def relative_gap(gap, sqnorm, ii, jj):
    """gap / (||X_i|| ||X_j||): the certified bound of the cosine entry (and of the inner
    entry relative to sqrt(K_ii K_jj)); 0 where a norm is 0 (the entry is 0 exactly)."""
    den = np.sqrt(np.asarray(sqnorm, np.float64)[:, ii] * np.asarray(sqnorm, np.float64)[:, jj])
    return np.where(den > 0, np.asarray(gap, np.float64) / np.where(den > 0, den, 1.0), 0.0)


def kernel_bounds(kernel: str, ii, jj, sim, dist, gap, sqnorm, *, sigma="lower_median"):
    """Certified bound (L, P) on |K - K_exact| of each off-diagonal entry (module docstring)
    from the per-pair ``gap`` (L, P) >= s_exact - s. The diagonal is exact (identity)."""
    gap = np.asarray(gap, np.float64)
    if kernel in ("inner", "cosine"):
        rel = relative_gap(gap, sqnorm, ii, jj)
        if kernel == "cosine":
            return rel
        return gap        # inner: absolute bound (tol is applied to rel)
    if kernel != "rbf":
        raise unknown_name("kernel", kernel, KERNELS)
    dist = np.asarray(dist, np.float64)
    sig_hi = sigma_of(dist, sigma)[:, None]
    d_lo = np.maximum(dist - 2.0 * gap, 0.0)
    if isinstance(sigma, str):       # sigma's interval from the distances' intervals
        lo = np.where(dist != 0, d_lo, 0.0)
        sig_lo = np.array([np.sqrt(_order_stat(lo[l][dist[l] != 0], sigma)) + 1e-3
                           for l in range(dist.shape[0])])[:, None]
    else:
        sig_lo = sig_hi
    k = np.exp(-dist / (2 * sig_hi ** 2))
    up = np.exp(-d_lo / (2 * sig_hi ** 2)) - k            # exact d smaller: K larger
    down = k - np.exp(-dist / (2 * sig_lo ** 2))          # exact sigma smaller: K smaller
    return np.maximum(np.maximum(up, down), 0.0)
