r"""RSM-to-RSM comparison: CKA and correlation of upper triangles, batched.

For two RSMs :math:`K, L \in \mathbb{R}^{N \times N}` (treated as Gram matrices) and the
centring matrix :math:`H = I - \tfrac1N \mathbf{1}\mathbf{1}^\top`:

* ``linear_cka``: :math:`\mathrm{CKA}(K, L) = \dfrac{\langle HKH, HLH\rangle_F}
  {\|HKH\|_F\,\|HLH\|_F}` (Kornblith et al., 2019). For K = XX^T, L = YY^T this is the
  linear CKA of the features X, Y.
* ``rbf_cka``: the same on RBF kernels built from each RSM read as a Gram matrix:
  squared distances :math:`D_{ij} = K_{ii} + K_{jj} - 2K_{ij}` (clipped at 0),
  :math:`K^{rbf} = \exp(-D / (2\sigma^2))`, :math:`\sigma^2 = \text{sigma\_scale}^2 \cdot
  \operatorname{median}\{D_{ij} : i \ne j\}` (the median heuristic of Kornblith et al.).
* ``pearson`` / ``spearman``: correlation of the strict upper triangles (i < j);
  Spearman uses average ranks for ties.

:func:`compare` takes two stacks ``(A, N, N)`` and ``(B, N, N)`` (or dicts of RSMs, e.g.
the layers of two models) and returns the full ``(A, B)`` matrix in one vmapped call:
layer x layer within a model (``b=None``) or model x model across models.
"""
from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from repsim_jax._checks import InputError, as_float_array, unknown_name

__all__ = ["compare", "cka", "upper_triangle", "COMPARISONS"]

COMPARISONS = ("linear_cka", "rbf_cka", "pearson", "spearman")


def upper_triangle(k):
    """Strict upper triangle (i < j) of (..., N, N) matrices as (..., N(N-1)/2)."""
    n = k.shape[-1]
    iu, ju = np.triu_indices(n, 1)
    return k[..., iu, ju]


def _center(k):
    return k - k.mean(-1, keepdims=True) - k.mean(-2, keepdims=True) + k.mean((-2, -1),
                                                                               keepdims=True)


def _rbf_of_gram(k, sigma_scale):
    diag = jnp.diagonal(k, axis1=-2, axis2=-1)
    d = jnp.maximum(diag[..., :, None] + diag[..., None, :] - 2.0 * k, 0.0)
    med = jnp.median(upper_triangle(d), axis=-1)
    sig2 = jnp.where(med > 0, med, 1.0) * sigma_scale ** 2
    return jnp.exp(-d / (2.0 * sig2[..., None, None]))


def cka(k, l):
    """Linear CKA of two Gram matrices (batched over leading axes)."""
    kc, lc = _center(k), _center(l)
    num = jnp.sum(kc * lc, axis=(-2, -1))
    den = jnp.sqrt(jnp.sum(kc * kc, axis=(-2, -1)) * jnp.sum(lc * lc, axis=(-2, -1)))
    return jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), 0.0)


def _ranks(v):
    srt = jnp.sort(v)
    lo = jnp.searchsorted(srt, v, side="left")
    hi = jnp.searchsorted(srt, v, side="right")
    return (lo + hi + 1) / 2.0


def _pearson(u, v):
    u = u - u.mean()
    v = v - v.mean()
    den = jnp.sqrt(jnp.sum(u * u) * jnp.sum(v * v))
    return jnp.where(den > 0, jnp.sum(u * v) / jnp.where(den > 0, den, 1.0), 0.0)


def _pair_fn(method, sigma_scale):
    if method == "linear_cka":
        return cka
    if method == "rbf_cka":
        return lambda k, l: cka(_rbf_of_gram(k, sigma_scale), _rbf_of_gram(l, sigma_scale))
    if method == "pearson":
        return lambda k, l: _pearson(upper_triangle(k), upper_triangle(l))
    if method == "spearman":
        return lambda k, l: _pearson(_ranks(upper_triangle(k)), _ranks(upper_triangle(l)))
    raise unknown_name("comparison", method, COMPARISONS)


def _stack(x, name):
    if isinstance(x, Mapping):
        if not x:
            raise InputError(f"{name}: empty dict of RSMs")
        names = list(x)
        arrs = [as_float_array(v, f"{name}[{k!r}]", ndim=2) for k, v in x.items()]
        shapes = {k: tuple(a.shape) for k, a in zip(names, arrs)}
        if len(set(shapes.values())) > 1:
            raise InputError(f"{name}: RSMs of different shapes {shapes}")
        x = np.stack([np.asarray(a) for a in arrs])
    else:
        names = None
        as_float_array(x, name, ndim=(2, 3))
        x = np.asarray(x)
        if x.ndim == 2:
            x = x[None]
    if x.shape[-1] != x.shape[-2]:
        raise InputError(f"{name}: RSMs must be square, got shape {x.shape[-2:]}")
    if x.shape[-1] < 3:
        raise InputError(f"{name}: need N >= 3 inputs to compare RSMs, got N={x.shape[-1]}")
    return jnp.asarray(x, jnp.float32), names


def compare(a, b=None, *, method: str = "linear_cka", sigma_scale: float = 1.0):
    """Similarity of every RSM of ``a`` with every RSM of ``b`` in one batched call.

    Args:
      a: (N, N), (A, N, N) or a dict ``{name: (N, N)}``.
      b: the same for the second set (default: ``a``, i.e. layer x layer).
      method: ``"linear_cka"``, ``"rbf_cka"``, ``"pearson"`` or ``"spearman"``.
      sigma_scale: multiplies the median-heuristic bandwidth of ``rbf_cka``.

    Returns:
      (A, B) numpy array (float64 view of float32 results).
    """
    if method not in COMPARISONS:
        raise unknown_name("comparison", method, COMPARISONS)
    ka, _ = _stack(a, "a")
    kb, _ = (ka, None) if b is None else _stack(b, "b")
    if ka.shape[-1] != kb.shape[-1]:
        raise InputError(f"a and b are RSMs over different numbers of inputs: "
                         f"{ka.shape[-1]} vs {kb.shape[-1]}")
    fn = _pair_fn(method, float(sigma_scale))
    out = jax.jit(jax.vmap(jax.vmap(fn, (None, 0)), (0, None)))(ka, kb)
    return np.asarray(out, np.float64)
