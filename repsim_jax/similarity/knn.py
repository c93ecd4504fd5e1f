r"""Nearest-neighbour alignment: mutual kNN and CKNNA (Huh et al. 2024, "The Platonic
Representation Hypothesis").

* ``mutual_knn(X, Y, k)``: :math:`\frac1N\sum_i |\mathcal N^X_k(i) \cap \mathcal N^Y_k(i)| /
  k`, with :math:`\mathcal N^X_k(i)` the k nearest other inputs of input i by Euclidean
  distance in X (the input itself excluded; ties broken by the lower index). With
  ``normalize=True`` the rows are scaled to unit norm first (cosine neighbours; Huh et
  al. normalise their features).
* ``cknna(X, Y, k)``: centred kernel nearest-neighbour alignment. With linear kernels
  :math:`K = XX^\top`, :math:`L = YY^\top` and the mask :math:`\alpha_{ij} = 1` when
  :math:`i \ne j`, j is among the k largest :math:`K_{i\cdot}` *and* among the k largest
  :math:`L_{i\cdot}`,

  .. math:: \mathrm{CKNNA} = \frac{\mathrm{HSIC}_u(\alpha\circ K, \alpha\circ L)}
     {\sqrt{\mathrm{HSIC}_u(\alpha^K\circ K, \alpha^K\circ K)\,
     \mathrm{HSIC}_u(\alpha^L\circ L, \alpha^L\circ L)}}

  (:math:`\alpha^K` the kNN mask of K alone; :math:`\mathrm{HSIC}_u` of
  :mod:`~repsim_jax.similarity.cka`). CKA restricted to mutual neighbours; with
  ``k = N - 1`` it is debiased linear CKA. ``normalize=True`` by default (the kernel
  is then cosine similarity, as in Huh et al.).

kNN scores depend on N and k (the chance level of mutual kNN is about k / (N - 1)): compare
them across sizes only against a permutation baseline
(:func:`~repsim_jax.similarity.permutation_test`), as arXiv 2602.14486 points out.
Memory: one N x N matrix per representation (neighbour search), N x k indices kept.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from repsim_jax._checks import InputError
from repsim_jax.similarity import _measure as M
from repsim_jax.similarity.cka import _hsic_u_terms, hsic_unbiased

__all__ = ["mutual_knn", "cknna"]


def _rows(X, normalize):
    if normalize:
        nrm = jnp.sqrt(jnp.sum(X * X, 1, keepdims=True))
        X = X / jnp.where(nrm > 0, nrm, 1.0)
    return X


def _neighbours(score, k):
    """Indices of the k largest entries of each row, the diagonal excluded."""
    n = score.shape[0]
    score = jnp.where(jnp.eye(n, dtype=bool), -jnp.inf, score)
    return jax.lax.top_k(score, k)[1]


def _prepare_knn(X, o):
    X = _rows(X, bool(o["normalize"]))
    sq = jnp.sum(X * X, 1)
    d2 = sq[:, None] + sq[None, :] - 2.0 * X @ X.T
    return {"idx": _neighbours(-d2, int(o["k"]))}


def _pair_knn(px, py, o):
    hits = px["idx"][:, :, None] == py["idx"][:, None, :]
    return jnp.mean(jnp.sum(hits, (1, 2)) / int(o["k"]))


def _permute_idx(idx, perm):
    inv = jnp.argsort(perm)
    return inv[idx[perm]]


def _mask(idx):
    n = idx.shape[0]
    return jnp.zeros((n, n), bool).at[jnp.arange(n)[:, None], idx].set(True)


def _prepare_cknna(X, o):
    X = _rows(X, bool(o["normalize"]))
    K = X @ X.T
    idx = _neighbours(K, int(o["k"]))
    Km = jnp.where(_mask(idx), K, 0.0)
    return {"K": K, "idx": idx, "self": hsic_unbiased(Km, Km)}


def _pair_cknna(px, py, o):
    m = _mask(px["idx"]) & _mask(py["idx"])
    h = hsic_unbiased(jnp.where(m, px["K"], 0.0), jnp.where(m, py["K"], 0.0))
    den = jnp.sqrt(jnp.maximum(px["self"] * py["self"], 0.0))
    return jnp.where(den > 0, h / jnp.where(den > 0, den, 1.0), 0.0)


# ------------------------------------------------------- all-pairs route (compare_layers)
# CKNNA's masked kernels have at most k entries per row, so a pair needs only each layer's
# neighbour lists and kernel values there (N x k): O(N k^2) per pair instead of O(N^2).
# With m the mutual-neighbour mask, Kt = m o K and Lt = m o L (zero diagonals: an input is
# never its own neighbour), the four terms of HSIC_u(Kt, Lt) (cka.hsic_unbiased) are
#   sum Kt, sum Lt, <column sums of Kt, row sums of Lt>, tr(Kt Lt) = sum_ij K_ij L_ij m_ij m_ji
# (K, L symmetric), each a sum over the listed entries (i, idx_x[i, a]).
@functools.partial(jax.jit, static_argnames=("k", "normalize"))
def _cknna_stack(X, *, k, normalize):
    def one(x):
        x = _rows(x, normalize)
        K = x @ x.T
        idx = _neighbours(K, k)
        Km = jnp.where(_mask(idx), K, 0.0)
        return {"idx": idx, "kv": jnp.take_along_axis(K, idx, 1),
                "self": hsic_unbiased(Km, Km)}
    return jax.lax.map(one, X)


def _sparse_pair_cknna(px, py):
    ix, iy = px["idx"], py["idx"]                       # (N, k) neighbour lists
    n = ix.shape[0]
    eq = ix[:, :, None] == iy[:, None, :]               # (N, k, k): same neighbour
    hit = jnp.any(eq, 2)                                # m[i, ix[i, a]]
    kval = jnp.where(hit, px["kv"], 0.0)                # Kt[i, ix[i, a]]
    lval = jnp.sum(jnp.where(eq, py["kv"][:, None, :], 0.0), 2)   # Lt[i, ix[i, a]]
    rows = jnp.arange(n)[:, None, None]
    back = (jnp.any(ix[ix] == rows, 2) & jnp.any(iy[ix] == rows, 2))   # m[ix[i, a], i]
    tr = jnp.sum(kval * lval * back)
    col_k = jax.ops.segment_sum(kval.reshape(-1), ix.reshape(-1), num_segments=n)
    h = _hsic_u_terms(tr, kval.sum(), lval.sum(), jnp.dot(col_k, lval.sum(1)), n)
    den = jnp.sqrt(jnp.maximum(px["self"] * py["self"], 0.0))
    return jnp.where(den > 0, h / jnp.where(den > 0, den, 1.0), 0.0)


@jax.jit
def _cknna_grid(SA, SB):
    return jax.lax.map(lambda pa: jax.vmap(lambda pb: _sparse_pair_cknna(pa, pb))(SB), SA)


def _cknna_fast(o):
    return M.FastPath(
        lambda X, o, plan: _cknna_stack(X, k=int(o["k"]), normalize=bool(o["normalize"])),
        lambda a, b, o, plan: _cknna_grid(a, b),
        lambda n, d, o, plan: 8 * n * int(o["k"]) + 4)


# mutual kNN: per layer its neighbour lists, one N x N distance matrix at a time (lax.map;
# the generic route vmaps a whole shape group); pairs as in _pair_knn, all at once.
@functools.partial(jax.jit, static_argnames=("k", "normalize"))
def _knn_stack(X, *, k, normalize):
    return jax.lax.map(lambda x: _prepare_knn(x, {"k": k, "normalize": normalize}), X)


@functools.partial(jax.jit, static_argnames=("k",))
def _knn_grid(SA, SB, *, k):
    return jax.lax.map(lambda pa: jax.vmap(lambda pb: _pair_knn(pa, pb, {"k": k}))(SB), SA)


def _knn_fast(o):
    return M.FastPath(
        lambda X, o, plan: _knn_stack(X, k=int(o["k"]), normalize=bool(o["normalize"])),
        lambda a, b, o, plan: _knn_grid(a, b, k=int(o["k"])),
        lambda n, d, o, plan: 4 * n * int(o["k"]))


def _check_k(o):
    k = o["k"]
    if not (isinstance(k, int) and not isinstance(k, bool) and k >= 1):
        raise InputError(f"kNN alignment: k must be a positive integer, got {k!r}")


M.register(M.Measure("mutual_knn", _prepare_knn, _pair_knn,
                     lambda st, perm: {"idx": _permute_idx(st["idx"], perm)},
                     {"k": 10, "normalize": False}, check=_check_k, min_n=2,
                     fast=_knn_fast))
M.register(M.Measure("cknna", _prepare_cknna, _pair_cknna,
                     lambda st, perm: {"K": M.permute_gram(st["K"], perm),
                                       "idx": _permute_idx(st["idx"], perm),
                                       "self": st["self"]},
                     {"k": 10, "normalize": True}, check=_check_k, min_n=5,
                     fast=_cknna_fast))


def _check_n(X, k):
    n = X.shape[0] if hasattr(X, "shape") else len(X)
    if k >= n:
        raise InputError(f"kNN alignment: k={k} needs at least k + 1 = {k + 1} inputs, "
                         f"got N={n}")


def mutual_knn(X, Y, k: int = 10, normalize: bool = False):
    """Mean fraction of shared k nearest neighbours (module docstring)."""
    _check_n(X, int(k))
    return M.run("mutual_knn", X, Y, {"k": int(k), "normalize": bool(normalize)})


def cknna(X, Y, k: int = 10, normalize: bool = True):
    """CKNNA of Huh et al. 2024 (module docstring)."""
    _check_n(X, int(k))
    return M.run("cknna", X, Y, {"k": int(k), "normalize": bool(normalize)})
