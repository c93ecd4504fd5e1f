r"""Canonical correlation analysis: mean CCA, SVCCA (Raghu et al. 2017), PWCCA (Morcos et al.
2018).

With :math:`X, Y` centred (columns) and :math:`\Sigma` their (cross-)covariances, the
canonical correlations :math:`\rho_1 \ge \rho_2 \ge \dots` are the singular values of
:math:`(\Sigma_{xx} + \epsilon I)^{-1/2}\Sigma_{xy}(\Sigma_{yy} + \epsilon I)^{-1/2}`
(``ridge`` = :math:`\epsilon`, in units of the covariance; 0 by default = plain CCA). With
the thin SVD :math:`X = U S V^\top` the whitened representation is
:math:`U\operatorname{diag}(s / \sqrt{s^2 + \epsilon (N-1)})`, so the correlations are the
singular values of a small :math:`r_x \times r_y` matrix (:math:`r = \min(N, D)`).

* ``cca``: :math:`\frac{1}{\min(D_x, D_y)}\sum_i \rho_i` (directions the data do not span
  count as 0). Unregularised CCA is 1 for *any* data once :math:`D \ge N - 1` (a warning
  says so): use ``svcca``, a ``ridge``, or more inputs.
* ``svcca`` (Raghu et al.): keep the top singular directions of each representation that
  explain a fraction ``keep`` (0.99) of its variance, then the mean canonical correlation
  of the two reduced representations (over :math:`\min(k_x, k_y)` directions).
* ``pwcca`` (Morcos et al.): :math:`\sum_i w_i\rho_i / \sum_i w_i` with
  :math:`w_i = \sum_j |\langle h_i, x_j\rangle|`, :math:`h_i` the orthonormalised
  canonical variates of X and :math:`x_j` the centred neurons (columns) of X: directions
  weighted by how much of X they account for. Not symmetric: ``pwcca(X, Y)`` weights by X
  (Morcos et al.'s code weights by the side with fewer neurons; call ``pwcca(Y, X)`` for
  the other side). ``ridge`` as above.
"""
from __future__ import annotations

import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from repsim_jax._checks import InputError
from repsim_jax.similarity import _measure as M
from repsim_jax.similarity import _spectral as H
from repsim_jax.similarity.procrustes import _basis

__all__ = ["cca", "svcca", "pwcca", "canonical_correlations"]


def _whitened(X, ridge: float, keep: float | None):
    Xc = X - X.mean(0)
    n = X.shape[0]
    U, s, rank = _basis(Xc)
    if keep is not None:
        var = s * s
        before = (jnp.cumsum(var) - var) / jnp.maximum(var.sum(), jnp.finfo(var.dtype).tiny)
        rank = rank & (before < keep)
    f = jnp.where(rank, s / jnp.sqrt(s * s + ridge * (n - 1)), 0.0)
    return Xc, U, s, f, rank


def _prepare_cca(X, o):
    _, U, _, f, rank = _whitened(X, float(o["ridge"]), None)
    return {"b": U * f, "d": jnp.asarray(X.shape[1], U.dtype)}


def _prepare_svcca(X, o):
    _, U, _, f, rank = _whitened(X, float(o["ridge"]), float(o["keep"]))
    return {"b": U * f, "k": jnp.sum(rank).astype(U.dtype)}


def _prepare_pwcca(X, o):
    Xc, U, s, f, rank = _whitened(X, float(o["ridge"]), None)
    return {"b": U * f, "t": (U.T @ Xc), "f": f}


def _rho(px, py):
    return jnp.linalg.svd(px["b"].T @ py["b"], compute_uv=False)


def _pair_cca(px, py, o):
    return jnp.sum(_rho(px, py)) / jnp.minimum(px["d"], py["d"])


def _pair_svcca(px, py, o):
    return jnp.sum(_rho(px, py)) / jnp.maximum(jnp.minimum(px["k"], py["k"]), 1.0)


def _pair_pwcca(px, py, o):
    P, rho, _ = jnp.linalg.svd(px["b"].T @ py["b"], full_matrices=False)
    # canonical variates of X: U diag(f) P; orthonormalise in U's coordinates (QR of
    # diag(f) P), weights against the centred neurons U^T X_c
    Q, _ = jnp.linalg.qr(px["f"][:, None] * P)
    w = jnp.sum(jnp.abs(Q.T @ px["t"]), axis=1)
    w = jnp.where(rho > 0, w, 0.0)
    return jnp.sum(w * rho) / jnp.maximum(jnp.sum(w), jnp.finfo(w.dtype).tiny)


def _check_ridge(o):
    r = o["ridge"]
    if not (isinstance(r, (int, float)) and r >= 0):
        raise InputError(f"cca: ridge must be a number >= 0, got {r!r}")
    if "keep" in o and not (isinstance(o["keep"], (int, float)) and 0 < o["keep"] <= 1):
        raise InputError(f"svcca: keep must be in (0, 1], got {o['keep']!r}")


def _permute_b(st, perm):
    return {**st, "b": st["b"][perm]}


# ------------------------------------------------------- all-pairs route (compare_layers)
# Per layer its whitened basis U diag(f) (N, r) once, on the host (LAPACK's SVD); the cross
# matrices of all pairs in one product; canonical correlations from the float64 spectrum
# of each (r_x, r_y) cross matrix (values only for CCA/SVCCA, with vectors for PWCCA).
def _host_whitened(x, ridge, keep):
    Xc, U, s, rank = H.host_basis(x)
    if keep is not None:
        var = s.astype(np.float64) ** 2
        before = (np.cumsum(var) - var) / max(var.sum(), np.finfo(np.float64).tiny)
        rank = rank & (before < keep)
    f = np.where(rank, s / np.sqrt(s * s + ridge * (x.shape[0] - 1)), 0.0).astype(x.dtype)
    return Xc, U, f, rank


def _fast_prepare(X, o, plan, kind):
    X = np.asarray(X)
    keep = float(o["keep"]) if kind == "svcca" else None
    b, k, t, fs = [], [], [], []
    for x in X:
        Xc, U, f, rank = _host_whitened(x, float(o["ridge"]), keep)
        b.append(U * f)
        k.append(rank.sum())
        if kind == "pwcca":
            t.append(U.T @ Xc)
            fs.append(f)
    out = {"b": np.stack(b), "k": np.asarray(k, np.float64),
           "d": np.full(len(X), X.shape[2], np.float64)}
    if kind == "pwcca":
        out.update(t=np.stack(t), f=np.stack(fs))
    return out


def _fast_grid(SA, SB, o, plan, kind):
    C = H.cross(SA["b"], SB["b"])
    La, Lb = C.shape[:2]
    if kind == "cca":
        rho = H.singular_values(C.reshape((-1,) + C.shape[2:])).reshape(La, Lb, -1)
        return rho.sum(-1) / np.minimum(SA["d"][:, None], SB["d"][None, :])
    if kind == "svcca":
        rho = H.singular_values(C.reshape((-1,) + C.shape[2:])).reshape(La, Lb, -1)
        return rho.sum(-1) / np.maximum(np.minimum(SA["k"][:, None], SB["k"][None, :]), 1.0)
    P, rho, _ = np.linalg.svd(np.asarray(C, np.float64), full_matrices=False)
    # (La, Lb, ra, m), (La, Lb, m): orthonormalised canonical variates, weights (_pair_pwcca)
    Q, _ = np.linalg.qr(SA["f"][:, None, :, None].astype(np.float64) * P)
    w = np.abs(np.swapaxes(Q, -1, -2) @ SA["t"].astype(np.float64)[:, None]).sum(-1)
    w = np.where(rho > 0, w, 0.0)
    return (w * rho).sum(-1) / np.maximum(w.sum(-1), np.finfo(np.float64).tiny)


def _fast(kind):
    return lambda o: M.FastPath(
        lambda X, o, plan: _fast_prepare(X, o, plan, kind),
        lambda a, b, o, plan: _fast_grid(a, b, o, plan, kind),
        lambda n, d, o, plan: 4 * n * min(n, d) + (8 * min(n, d) * d if kind == "pwcca"
                                                   else 0))


M.register(M.Measure("cca", _prepare_cca, _pair_cca, _permute_b, {"ridge": 0.0},
                     check=_check_ridge, min_n=3, fast=_fast("cca")))
M.register(M.Measure("svcca", _prepare_svcca, _pair_svcca, _permute_b,
                     {"keep": 0.99, "ridge": 0.0}, check=_check_ridge, min_n=3,
                     fast=_fast("svcca")))
M.register(M.Measure("pwcca", _prepare_pwcca, _pair_pwcca, _permute_b, {"ridge": 0.0},
                     check=_check_ridge, min_n=3, fast=_fast("pwcca")))


def _warn_degenerate(X, Y, ridge, what):
    n, d = X.shape[0], max(X.shape[1], Y.shape[1])
    if ridge == 0 and d >= n - 1:
        warnings.warn(f"{what}: unregularised CCA with D={d} >= N-1={n - 1} finds perfect "
                      f"canonical correlations for any data; use svcca, ridge > 0, or more "
                      f"inputs", RuntimeWarning, stacklevel=3)


def cca(X, Y, ridge: float = 0.0):
    """Mean canonical correlation of ``X (N, Dx)``, ``Y (N, Dy)`` (module docstring)."""
    _warn_degenerate(X, Y, ridge, "cca")
    return M.run("cca", X, Y, {"ridge": float(ridge)})


def svcca(X, Y, keep: float = 0.99, ridge: float = 0.0):
    """SVCCA (Raghu et al. 2017): CCA of the directions explaining ``keep`` of the variance."""
    return M.run("svcca", X, Y, {"keep": float(keep), "ridge": float(ridge)})


def pwcca(X, Y, ridge: float = 0.0):
    """Projection-weighted CCA (Morcos et al. 2018), weighted by X's canonical variates."""
    _warn_degenerate(X, Y, ridge, "pwcca")
    return M.run("pwcca", X, Y, {"ridge": float(ridge)})


def canonical_correlations(X, Y, ridge: float = 0.0):
    """All min(N, Dx, Dy) canonical correlations, descending (numpy)."""
    X, Y = M.check_pair(X, Y, 3)
    o = {"ridge": float(ridge)}
    return np.asarray(_rho_jit(X, Y, o["ridge"]))


@functools.partial(jax.jit, static_argnames=("ridge",))
def _rho_jit(X, Y, ridge):
    o = {"ridge": ridge}
    return _rho(_prepare_cca(X, o), _prepare_cca(Y, o))
