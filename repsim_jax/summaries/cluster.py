r"""Stage 2b of visual summaries: affinity propagation, SSIM, cluster cleaning.

**Affinity propagation** (Frey & Dueck, Science 2007) on a similarity matrix :math:`S`
(the paper: region similarities shifted so that :math:`\max S = 0`, preference
:math:`p = 1.3 \cdot \mathrm{median}(S)` on the diagonal). With damping :math:`\lambda`
the responsibilities :math:`R` and availabilities :math:`A` iterate

.. math::

    R_{ik} &\leftarrow \lambda R_{ik} + (1 - \lambda)
             \big(S_{ik} - \max_{k' \ne k} (A_{ik'} + S_{ik'})\big), \\
    A_{ik} &\leftarrow \lambda A_{ik} + (1 - \lambda)
             \min\big(0,\ R_{kk} + \textstyle\sum_{i' \notin \{i, k\}} \max(0, R_{i'k})\big)
             \quad (i \ne k), \\
    A_{kk} &\leftarrow \lambda A_{kk} + (1 - \lambda)
             \textstyle\sum_{i' \ne k} \max(0, R_{i'k}).

Exemplars are the :math:`k` with :math:`A_{kk} + R_{kk} > 0`; the run stops once the set
of exemplars has not changed for ``convergence_iter`` iterations (paper: damping 0.9, at
most 1000 iterations, 100 stable ones). The loop is one :func:`jax.lax.while_loop`; the
final assignment (each point to its most similar exemplar, then each cluster's exemplar
re-chosen as the member maximising the within-cluster similarity sum, then re-assignment)
follows scikit-learn's ``AffinityPropagation`` so the two agree (tested).

**SSIM** (Wang et al. 2004) between grey images :math:`x, y` with local means, variances
and covariance over a 7 x 7 uniform window (sample covariance, ``N / (N - 1)``):

.. math::  \mathrm{SSIM} = \mathrm{mean}\,
           \frac{(2\mu_x\mu_y + C_1)(2\sigma_{xy} + C_2)}
                {(\mu_x^2 + \mu_y^2 + C_1)(\sigma_x^2 + \sigma_y^2 + C_2)},\quad
           C_1 = (0.01 L)^2,\ C_2 = (0.03 L)^2,

averaged over the windows that lie fully inside the image, which is exactly
``skimage.metrics.structural_similarity`` with its defaults (tested).

**Cleaning** (the official MATLAB code): each cluster keeps at most 10 members, one per
image (the member most similar to the exemplar), each crop resampled onto the exemplar's
box size; the median of the off-diagonal pairwise grey SSIMs is the cluster's coherence;
a cluster survives when its median is >= 0.9 x the median over clusters of these medians.
"""
from __future__ import annotations

import dataclasses

from repsim_jax._results import result
import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from repsim_jax._checks import InputError, as_float_array

__all__ = ["APResult", "affinity_propagation", "ssim", "pairwise_ssim", "cluster_members",
           "coherent_clusters", "shifted_similarity"]


@result(meta=("n_iter", "converged"), eq=False)
class APResult:
    """Affinity-propagation clustering: ``labels`` (n,) in ``[0, K)``, ``exemplars`` (K,)
    sample indices (``labels[exemplars[k]] == k``), ``n_iter``, ``converged``."""

    labels: np.ndarray
    exemplars: np.ndarray
    n_iter: int
    converged: bool


def shifted_similarity(similarity, preference_factor: float = 1.3):
    """``S - max S`` (all entries <= 0) and the preference ``factor * median`` of the
    off-diagonal entries (the paper's choice; the diagonal is replaced by AP anyway)."""
    s = np.asarray(similarity, np.float64)
    s = s - s.max()
    n = s.shape[0]
    off = s[~np.eye(n, dtype=bool)] if n > 1 else s.ravel()
    return s, float(preference_factor * np.median(off))


@functools.partial(jax.jit, static_argnames=("max_iter", "convergence_iter"))
def _ap_messages(s, valid, damping, max_iter: int, convergence_iter: int):
    n = s.shape[0]
    diag = jnp.arange(n)

    def body(state):
        it, a, r, e_prev, same, _ = state
        t = a + s
        best = jnp.argmax(t, axis=1)
        y1 = t[diag, best]
        y2 = jnp.max(t.at[diag, best].set(-jnp.inf), axis=1)
        r_new = s - y1[:, None]
        r_new = r_new.at[diag, best].set(s[diag, best] - y2)
        r = damping * r + (1.0 - damping) * r_new
        rp = jnp.maximum(r, 0.0).at[diag, diag].set(r[diag, diag])
        a_new = jnp.sum(rp, axis=0)[None, :] - rp
        da = a_new[diag, diag]
        a_new = jnp.minimum(a_new, 0.0).at[diag, diag].set(da)
        a = damping * a + (1.0 - damping) * a_new
        e = ((a[diag, diag] + r[diag, diag]) > 0) & valid
        same = jnp.where(jnp.all(e == e_prev), same + 1, 1)
        done = (it >= convergence_iter) & (same >= convergence_iter) & jnp.any(e)
        return it + 1, a, r, e, same, done

    def cond(state):
        it, *_, done = state
        return (it < max_iter) & ~done

    z = jnp.zeros_like(s)
    init = (jnp.int32(0), z, z, jnp.zeros(n, bool), jnp.int32(0), jnp.bool_(False))
    it, a, r, e, _, done = jax.lax.while_loop(cond, body, init)
    return e, it, done


def affinity_propagation(similarity, preference=None, *, damping: float = 0.9,
                         max_iter: int = 1000, convergence_iter: int = 100) -> APResult:
    """Affinity propagation of an (n, n) similarity matrix (see the module docstring).

    ``preference``: scalar or (n,) diagonal (default: the median of ``similarity``, as
    scikit-learn). Returns :class:`APResult`. When all similarities equal the preference
    structure is degenerate; like scikit-learn it returns every point as its own exemplar
    if the preference exceeds the similarities, one cluster otherwise (with a warning).
    If no exemplar emerges, every point becomes its own cluster (with a warning).
    """
    as_float_array(similarity, "similarity", ndim=2)
    s = np.array(similarity, np.float64)
    n = s.shape[0]
    if s.shape[1] != n:
        raise InputError(f"similarity: expected a square matrix, got shape {s.shape}")
    if not 0.5 <= damping < 1.0:
        raise InputError(f"damping: must lie in [0.5, 1), got {damping}")
    pref = np.median(s) if preference is None else preference
    pref = np.broadcast_to(np.asarray(pref, np.float64), (n,))
    if n == 1:
        return APResult(np.zeros(1, np.int64), np.zeros(1, np.int64), 0, True)
    off = s[~np.eye(n, dtype=bool)]
    if np.all(off == off[0]) and np.all(pref == pref[0]):
        warnings.warn("affinity_propagation: all similarities are equal; returning "
                      "arbitrary exemplars", stacklevel=2)
        if pref[0] > off[0]:
            return APResult(np.arange(n), np.arange(n), 0, True)
        return APResult(np.zeros(n, np.int64), np.zeros(1, np.int64), 0, True)
    np.fill_diagonal(s, pref)
    # pad to a multiple of 32 with isolated points (similarity -1e9 to everything): their
    # messages never reach the real points, and one compiled loop serves many sizes
    size = -(-n // 32) * 32
    padded = np.full((size, size), -1e9)
    padded[:n, :n] = s
    np.fill_diagonal(padded[n:, n:], 0.0)
    valid = np.arange(size) < n
    e, it, done = jax.device_get(_ap_messages(jnp.asarray(padded, jnp.float32),
                                              jnp.asarray(valid), float(damping),
                                              int(max_iter), int(convergence_iter)))
    ex = np.flatnonzero(e[:n])
    if ex.size == 0:
        warnings.warn("affinity_propagation: no exemplar emerged; every point is its own "
                      "cluster", stacklevel=2)
        return APResult(np.arange(n), np.arange(n), int(it), bool(done))
    if not done:
        warnings.warn(f"affinity_propagation: did not converge in {max_iter} iterations",
                      stacklevel=2)
    c = np.argmax(s[:, ex], axis=1)
    c[ex] = np.arange(ex.size)
    for k in range(ex.size):                      # refine each exemplar (sklearn)
        members = np.flatnonzero(c == k)
        ex[k] = members[np.argmax(s[np.ix_(members, members)].sum(0))]
    c = np.argmax(s[:, ex], axis=1)
    c[ex] = np.arange(ex.size)
    centres = np.unique(ex[c])
    labels = np.searchsorted(centres, ex[c])
    return APResult(labels.astype(np.int64), centres.astype(np.int64), int(it), bool(done))


# ------------------------------------------------------------------------------- SSIM
def _window_mean(x, win: int):
    """Mean over every full ``win x win`` window of (..., H, W) (valid positions only)."""
    c = jnp.cumsum(jnp.cumsum(x, axis=-2), axis=-1)
    c = jnp.pad(c, [(0, 0)] * (x.ndim - 2) + [(1, 0), (1, 0)])
    s = (c[..., win:, win:] - c[..., :-win, win:] - c[..., win:, :-win]
         + c[..., :-win, :-win])
    return s / (win * win)


def _ssim(x, y, data_range, win):
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    norm = win * win / (win * win - 1.0)
    # centre by the image means first: SSIM is shift-invariant up to C1 via mu terms, so
    # compute moments of centred data for float32 accuracy and add the means back.
    mx = jnp.mean(x, axis=(-2, -1), keepdims=True)
    my = jnp.mean(y, axis=(-2, -1), keepdims=True)
    xc, yc = x - mx, y - my
    ux, uy = _window_mean(xc, win), _window_mean(yc, win)
    vx = norm * (_window_mean(xc * xc, win) - ux * ux)
    vy = norm * (_window_mean(yc * yc, win) - uy * uy)
    vxy = norm * (_window_mean(xc * yc, win) - ux * uy)
    ux, uy = ux + mx, uy + my
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return jnp.mean(s, axis=(-2, -1))


def ssim(x, y, *, data_range: float = 1.0, win_size: int = 7):
    """Mean structural similarity of grey images (..., H, W) (skimage defaults)."""
    x, y = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)
    if x.shape[-2] < win_size or x.shape[-1] < win_size:
        raise InputError(f"ssim: images of {x.shape[-2:]} px are smaller than the "
                         f"{win_size} x {win_size} window")
    return _ssim(x, y, float(data_range), int(win_size))


@functools.partial(jax.jit, static_argnames=("win_size",))
def _pairwise(crops, data_range, win_size):
    return jax.vmap(lambda a: jax.vmap(lambda b: _ssim(a, b, data_range, win_size))(crops))(
        crops)


def pairwise_ssim(crops, *, data_range: float = 1.0, win_size: int = 7):
    """(..., M, M) SSIM between all pairs of (..., M, H, W) grey crops (vmapped)."""
    crops = jnp.asarray(crops, jnp.float32)
    if crops.shape[-2] < win_size or crops.shape[-1] < win_size:
        raise InputError(f"pairwise_ssim: crops of {crops.shape[-2:]} px are smaller than "
                         f"the {win_size} x {win_size} window")
    fn = functools.partial(_pairwise, data_range=float(data_range), win_size=int(win_size))
    for _ in range(crops.ndim - 3):
        fn = jax.vmap(fn)
    return fn(crops)


# --------------------------------------------------------------------------- cleaning
def cluster_members(labels, exemplars, similarity, image_ids, max_members: int = 10):
    """Members of each cluster: the exemplar first, then one region per other image (the
    one most similar to the exemplar), by decreasing similarity, at most ``max_members``.

    Returns a list of int arrays of region indices, one per cluster.
    """
    labels, image_ids = np.asarray(labels), np.asarray(image_ids)
    s = np.asarray(similarity)
    out = []
    for k, e in enumerate(np.asarray(exemplars)):
        idx = np.flatnonzero(labels == k)
        idx = idx[(image_ids[idx] != image_ids[e]) | (idx == e)]
        idx = idx[np.argsort(-s[e, idx], kind="stable")]
        idx = np.concatenate([[e], idx[idx != e]])
        _, first = np.unique(image_ids[idx], return_index=True)
        idx = idx[np.sort(first)]
        out.append(idx[:max_members].astype(np.int64))
    return out


def coherent_clusters(pairwise, sizes, threshold: float = 0.9):
    """SSIM cleaning: (keep (K,) bool, medians (K,)) from padded (K, M, M) pairwise SSIMs.

    ``sizes`` (K,) says how many leading members of each cluster are real. A cluster's
    coherence is the median of its off-diagonal SSIMs; clusters with fewer than two members
    have none (NaN) and are not kept (a summary must recur across images). Kept: coherence
    >= ``threshold`` x the median of the clusters' coherences.
    """
    pw = np.asarray(pairwise, np.float64)
    sizes = np.asarray(sizes)
    med = np.full(len(sizes), np.nan)
    for k, m in enumerate(sizes):
        if m >= 2:
            block = pw[k, :m, :m]
            med[k] = np.median(block[~np.eye(m, dtype=bool)])
    finite = np.isfinite(med)
    if not finite.any():
        return np.zeros(len(sizes), bool), med
    ref = np.median(med[finite])
    keep = finite & (med >= threshold * ref)
    return keep, med
