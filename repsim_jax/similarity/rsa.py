r"""Representational similarity analysis (RSA; Kriegeskorte et al. 2008).

Each representation gives an input x input representational dissimilarity matrix (RDM):

* ``"correlation"``: :math:`1 - r(x_i, x_j)`, the Pearson correlation of two inputs'
  feature vectors;
* ``"cosine"``: :math:`1 - \cos(x_i, x_j)`;
* ``"euclidean"``: :math:`\|x_i - x_j\|_2`;
* ``"sqeuclidean"``: :math:`\|x_i - x_j\|_2^2 / D` (what rsatoolbox calls "euclidean").

Two RDMs are compared over their strict upper triangles (:math:`M = N(N-1)/2` entries):
``"pearson"``, ``"spearman"`` (Pearson of average ranks), ``"kendall_tau_a"``
(:math:`\tau_a = \sum_{a<b} \operatorname{sgn}(u_a-u_b)\operatorname{sgn}(v_a-v_b) /
\binom{M}{2}`, no tie correction; Nili et al. 2014 recommend it when models predict ties;
:math:`O(M^2)` work in blocks, so meant for N up to a few hundred) or ``"cosine"``
(uncentred). Defaults: correlation RDMs compared by Spearman.

Implementation: every RDM is kept as a full symmetric N x N matrix with a zero diagonal,
already standardised for the chosen comparison (centred and scaled over the off-diagonal
entries, after ranking for Spearman; ranks of the full off-diagonal set are an affine
function of the upper-triangle ranks, so Pearson on them is unchanged). The comparison of
two RDMs is then one inner product, and permuting the inputs permutes rows and columns.
Memory: one N x N matrix per representation.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import scipy.stats

from repsim_jax._checks import InputError
from repsim_jax.similarity import _measure as M

__all__ = ["rsa", "rdm", "RDMS", "RSA_COMPARES"]

RDMS = ("correlation", "cosine", "euclidean", "sqeuclidean")
RSA_COMPARES = ("pearson", "spearman", "kendall_tau_a", "cosine")


def _unit_rows(X):
    nrm = jnp.sqrt(jnp.sum(X * X, 1, keepdims=True))
    return X / jnp.where(nrm > 0, nrm, 1.0)


def rdm_matrix(X, kind: str):
    """The (N, N) RDM of ``X (N, D)`` (jit-able; ``kind`` static)."""
    if kind in ("correlation", "cosine"):
        Z = X - X.mean(1, keepdims=True) if kind == "correlation" else X
        Z = _unit_rows(Z)
        R = 1.0 - Z @ Z.T
    else:
        sq = jnp.sum(X * X, 1)
        R = jnp.maximum(sq[:, None] + sq[None, :] - 2.0 * X @ X.T, 0.0)
        R = jnp.sqrt(R) if kind == "euclidean" else R / X.shape[1]
    return R * (1.0 - jnp.eye(X.shape[0], dtype=R.dtype))


def _ranks_offdiag(R):
    """Average ranks of the off-diagonal entries (diagonal ranked last, then zeroed)."""
    n = R.shape[0]
    off = ~jnp.eye(n, dtype=bool)
    v = jnp.where(off, R, jnp.inf).reshape(-1)
    s = jnp.sort(v)
    lo = jnp.searchsorted(s, v, side="left")
    hi = jnp.searchsorted(s, v, side="right")
    return ((lo + hi + 1) / 2.0).reshape(n, n).astype(R.dtype)


def _standardise(R, centre: bool):
    n = R.shape[0]
    off = 1.0 - jnp.eye(n, dtype=R.dtype)
    if centre:
        R = R - jnp.sum(R * off) / (n * (n - 1))
    R = R * off
    nrm = jnp.sqrt(jnp.sum(R * R))
    return R / jnp.where(nrm > 0, nrm, 1.0)


def _prepare(X, o):
    R = rdm_matrix(X, o["rdm"])
    c = o["compare"]
    if c == "kendall_tau_a":
        return {"rdm": R}
    if c == "spearman":
        R = _ranks_offdiag(R)
    return {"s": _standardise(R, centre=c != "cosine")}


def _tau_a(u, v, block: int):
    m = u.shape[0]
    pad = (-m) % block
    up = jnp.concatenate([u, jnp.full((pad,), jnp.nan, u.dtype)]).reshape(-1, block)
    vp = jnp.concatenate([v, jnp.full((pad,), jnp.nan, v.dtype)]).reshape(-1, block)

    def one(args):
        ub, vb = args
        s = jnp.sign(ub[:, None] - u[None, :]) * jnp.sign(vb[:, None] - v[None, :])
        return jnp.sum(jnp.where(jnp.isnan(s), 0.0, s))
    total = jnp.sum(jax.lax.map(one, (up, vp)))
    return total / (m * (m - 1.0))      # every unordered pair counted twice


def _pair(px, py, o):
    if o["compare"] == "kendall_tau_a":
        n = px["rdm"].shape[0]
        iu, ju = np.triu_indices(n, 1)
        u, v = px["rdm"][iu, ju], py["rdm"][iu, ju]
        return _tau_a(u, v, max(1, min(len(iu), (1 << 22) // max(1, len(iu)))))
    return jnp.sum(px["s"] * py["s"])


# ------------------------------------------------------- all-pairs route (compare_layers)
# Per layer the strict upper triangle of its RDM, ranked on the host for Spearman (numpy's
# sort is much faster than XLA:CPU's for N^2 values) and standardised in float64 (centred
# unless compare="cosine", unit norm); all La x Lb comparisons are then one matmul.
@functools.partial(jax.jit, static_argnames=("kind",))
def _rdm_stack(X, *, kind):
    return jax.lax.map(lambda x: rdm_matrix(x, kind), X)


@functools.lru_cache(maxsize=2)
def _upper_mask(n: int) -> np.ndarray:
    return np.triu(np.ones((n, n), bool), 1)


def _fast_prepare(X, o, plan):
    R = np.asarray(_rdm_stack(X, kind=o["rdm"]))
    mask = _upper_mask(R.shape[1])
    out = np.empty((R.shape[0], int(mask.sum())), np.float32)
    for l in range(R.shape[0]):
        v = R[l][mask]
        if o["compare"] == "spearman":
            v = scipy.stats.rankdata(v, method="average")
        v = np.asarray(v, np.float64)
        if o["compare"] != "cosine":
            v = v - v.mean()
        nrm = np.sqrt(np.dot(v, v))
        out[l] = v / (nrm if nrm > 0 else 1.0)
    return jnp.asarray(out)


@jax.jit
def _grid_upper(SA, SB):
    return SA @ SB.T


def _fast(o):
    if o["compare"] == "kendall_tau_a":
        return None
    return M.FastPath(_fast_prepare, lambda a, b, o, plan: _grid_upper(a, b),
                      lambda n, d, o, plan: 4 * n * (n - 1) // 2)


def _permute(st, perm):
    return {k: M.permute_gram(v, perm) for k, v in st.items()}


def _check(o):
    if o["rdm"] not in RDMS:
        raise M.unknown_name("RDM", o["rdm"], RDMS)
    if o["compare"] not in RSA_COMPARES:
        raise M.unknown_name("RDM comparison", o["compare"], RSA_COMPARES)


M.register(M.Measure("rsa", _prepare, _pair, _permute,
                     {"rdm": "correlation", "compare": "spearman"}, check=_check, min_n=3,
                     fast=_fast))


def rsa(X, Y, rdm: str = "correlation", compare: str = "spearman"):
    """RSA of ``X (N, Dx)`` and ``Y (N, Dy)``: the RDMs' agreement (module docstring)."""
    return M.run("rsa", X, Y, {"rdm": rdm, "compare": compare})


_rdm = jax.jit(rdm_matrix, static_argnames=("kind",))


def rdm(X, kind: str = "correlation") -> np.ndarray:
    """The (N, N) RDM of one representation (numpy), as :func:`rsa` uses it."""
    if kind not in RDMS:
        raise M.unknown_name("RDM", kind, RDMS)
    return np.asarray(_rdm(M.as_array(X, "X"), kind=kind))

