r"""Procrustes shape distance (Williams et al. 2021, "Generalized shape metrics on neural
representations"; netrep's ``LinearMetric`` with the angular score).

Each representation is centred (columns), optionally *partially whitened* and scaled to unit
Frobenius norm; the distance is the angle

.. math:: \theta(X, Y) = \arccos \max_{Q \in O} \langle \phi_\alpha(X) Q, \phi_\alpha(Y)
   \rangle_F = \arccos \|\phi_\alpha(X)^\top \phi_\alpha(Y)\|_*,

a metric in :math:`[0, \pi/2]` (0: equal up to rotation, translation and scale). Partial
whitening: :math:`\phi_\alpha(X) \propto X(\alpha I + (1-\alpha)(X^\top X)^{-1/2})`;
``alpha = 1`` (default) is plain Procrustes, ``alpha = 0`` whitens fully (the metric then
reduces to a function of the canonical correlations). In the SVD :math:`X = U S V^\top` this
is :math:`U \operatorname{diag}(\alpha s + (1 - \alpha)) V^\top` over the non-zero singular
values, so rank-deficient layers (D > N) need no regulariser. Different widths are handled
as zero padding (the nuclear norm of the :math:`D_x \times D_y` cross matrix).

The angle is computed from the chord :math:`\|\phi(X) Q^* - \phi(Y)\|_F = 2\sin(\theta/2)`
with the optimal :math:`Q^*`, not from :math:`\arccos` of the nuclear norm, which loses
half the digits near 0 (a rotated copy gives ~1e-6, not ~5e-4, in float32).
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from repsim_jax._checks import InputError
from repsim_jax.similarity import _measure as M
from repsim_jax.similarity import _spectral as H

__all__ = ["procrustes"]


def _basis(Xc):
    """Thin SVD with a rank mask: (U, s, mask)."""
    U, s, _ = jnp.linalg.svd(Xc, full_matrices=False)
    tol = s[0] * max(Xc.shape) * jnp.finfo(Xc.dtype).eps
    return U, s, s > tol


def _prepare(X, o):
    alpha = float(o["alpha"])
    U, s, keep = _basis(X - X.mean(0))
    a = jnp.where(keep, alpha * s + (1.0 - alpha), 0.0)
    a = a / jnp.sqrt(jnp.maximum(jnp.sum(a * a), jnp.finfo(a.dtype).tiny))
    return {"a": U * a}


def _pair(px, py, o):
    A, B = px["a"], py["a"]
    P, _, Qt = jnp.linalg.svd(A.T @ B, full_matrices=False)
    AP = A @ P
    # |A Q - B_pad|^2 for the optimal orthogonal Q of the zero-padded problem: the part of
    # A outside P's span enters as its own residual (both terms computed directly)
    chord = jnp.sqrt(jnp.sum((AP @ Qt - B) ** 2) + jnp.sum((A - AP @ P.T) ** 2))
    return 2.0 * jnp.arcsin(jnp.minimum(chord / 2.0, 1.0))


# ------------------------------------------------------- all-pairs route (compare_layers)
# Per layer phi(X) as an (N, r) matrix on the host: X_c / |X_c|_F itself when alpha = 1 and
# D <= N (no SVD), else U diag(a) of its thin SVD (r = min(N, D)); a pair is the nuclear
# norm of the (r_x, r_y) cross matrix (one product for all pairs, float64 spectrum). Near
# 0 arccos loses digits (d theta = d cos / theta), so pairs closer than NEAR radians are
# recomputed with the chord formula of the single-pair function.
NEAR = 0.1


def _fast_prepare(X, o, plan):
    alpha = float(o["alpha"])
    X = np.asarray(X)
    out = []
    for x in X:
        if alpha == 1.0 and x.shape[1] <= x.shape[0]:
            a = x - x.mean(0)
        else:
            _, U, s, keep = H.host_basis(x)
            a = U * np.where(keep, alpha * s + (1.0 - alpha), 0.0)
        nrm = np.sqrt(np.sum(np.asarray(a, np.float64) ** 2))
        out.append(a / (nrm if nrm > 0 else 1.0))
    return {"a": np.stack(out).astype(X.dtype)}


def _chord(a, b):
    """The single-pair chord formula (``_pair``) in float64 on the host."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    P, _, Qt = np.linalg.svd(a.T @ b, full_matrices=False)
    aP = a @ P
    chord = np.sqrt(np.sum((aP @ Qt - b) ** 2) + np.sum((a - aP @ P.T) ** 2))
    return 2.0 * np.arcsin(min(chord / 2.0, 1.0))


def _fast_grid(SA, SB, o, plan):
    A, B = SA["a"], SB["a"]
    C = H.cross(A, B)
    nuc = H.singular_values(C.reshape((-1,) + C.shape[2:])).sum(-1).reshape(C.shape[:2])
    na = np.sqrt(np.sum(np.asarray(A, np.float64) ** 2, (1, 2)))
    nb = np.sqrt(np.sum(np.asarray(B, np.float64) ** 2, (1, 2)))
    den = na[:, None] * nb[None, :]
    theta = np.arccos(np.clip(nuc / np.where(den > 0, den, 1.0), -1.0, 1.0))
    for i, j in zip(*np.nonzero(theta < NEAR)):
        theta[i, j] = _chord(A[i], B[j])
    return theta


def _fast(o):
    return M.FastPath(_fast_prepare, _fast_grid,
                      lambda n, d, o, plan: 4 * n * min(n, d))


def _check(o):
    a = o["alpha"]
    if not (isinstance(a, (int, float)) and 0.0 <= a <= 1.0):
        raise InputError(f"procrustes: alpha must be in [0, 1], got {a!r}")


M.register(M.Measure("procrustes", _prepare, _pair, M.permute_rows, {"alpha": 1.0},
                     similarity=False, check=_check, min_n=2, fast=_fast))


def procrustes(X, Y, alpha: float = 1.0):
    """Angular Procrustes shape distance of ``X (N, Dx)``, ``Y (N, Dy)`` in radians
    (module docstring); ``alpha`` in [0, 1] is the partial-whitening parameter."""
    return M.run("procrustes", X, Y, {"alpha": float(alpha)})
