"""Host (numpy/LAPACK) helpers of the all-pairs routes of the SVD-based measures
(Procrustes, CCA, SVCCA, PWCCA).

XLA:CPU's SVD is much slower than LAPACK's, and a pair of these measures only needs the
spectrum of a small cross matrix, so :func:`compare_layers
<repsim_jax.similarity.compare_layers>` prepares a per-layer basis once (``host_basis``),
forms the cross matrices of all pairs of two layer stacks in one matrix product
(``cross``) and takes their singular values from the eigenvalues of the smaller Gram
matrix in float64 (``singular_values``: exact up to rounding, since the float64 Gram of a
float32 matrix has exactly its squared singular values; about 15x cheaper than an SVD).
"""
from __future__ import annotations

import numpy as np

__all__ = ["host_basis", "cross", "singular_values"]


def host_basis(X: np.ndarray):
    """Centred ``X`` (N, D) and its thin SVD with the rank mask of ``procrustes._basis``:
    ``(Xc, U, s, keep)``."""
    Xc = X - X.mean(0)
    U, s, _ = np.linalg.svd(Xc, full_matrices=False)
    tol = (s[0] if s.size else 0.0) * max(Xc.shape) * np.finfo(Xc.dtype).eps
    return Xc, U, s, s > tol


def cross(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """``A (La, N, ra)``, ``B (Lb, N, rb)`` -> ``(La, Lb, ra, rb)`` of all ``A_i^T B_j``
    (one matrix product)."""
    La, n, ra = A.shape
    Lb, _, rb = B.shape
    a = np.ascontiguousarray(A.transpose(1, 0, 2)).reshape(n, La * ra)
    b = np.ascontiguousarray(B.transpose(1, 0, 2)).reshape(n, Lb * rb)
    return (a.T @ b).reshape(La, ra, Lb, rb).transpose(0, 2, 1, 3)


def singular_values(M: np.ndarray) -> np.ndarray:
    """Singular values (float64, descending) of a stack ``M (..., r, c)``: square roots
    of the eigenvalues of the smaller float64 Gram matrix."""
    M = np.asarray(M, np.float64)
    G = (np.swapaxes(M, -1, -2) @ M if M.shape[-1] <= M.shape[-2]
         else M @ np.swapaxes(M, -1, -2))
    lam = np.linalg.eigvalsh(G)[..., ::-1]
    return np.sqrt(np.maximum(lam, 0.0))
