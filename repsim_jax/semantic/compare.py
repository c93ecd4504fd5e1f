r"""RSM-to-RSM comparison: CKA (biased and debiased) and correlation of upper triangles.

For two RSMs :math:`K, L \in \mathbb{R}^{N \times N}` (treated as Gram matrices; the
estimators are those of :mod:`repsim_jax.similarity.cka`):

* ``cka_debiased`` (default): CKA from the unbiased HSIC estimator (Song et al. 2012;
  Nguyen et al. 2021). Near 0 for unrelated representations at any N.
* ``linear_cka``: :math:`\langle HKH, HLH\rangle_F / (\|HKH\|_F\|HLH\|_F)` (Kornblith et al.
  2019), the biased estimator: large for unrelated representations when N is small
  against their dimension (0.72 at N = 200 for independent 500-d features). For
  K = XX^T, L = YY^T this is the linear CKA of the features X, Y.
* ``rbf_cka`` / ``rbf_cka_debiased``: the same on RBF kernels built from each RSM read as
  a Gram matrix: squared distances :math:`D_{ij} = K_{ii} + K_{jj} - 2K_{ij}` (clipped at
  0), :math:`K^{rbf} = \exp(-D / (2\sigma^2))`, :math:`\sigma^2 = \text{sigma\_scale}^2
  \cdot \operatorname{median}\{D_{ij} : i < j\}` (the median heuristic).
* ``pearson`` / ``spearman``: correlation of the strict upper triangles (i < j);
  Spearman uses average ranks for ties.

:func:`compare` takes two stacks ``(A, N, N)`` and ``(B, N, N)`` (or dicts of RSMs, e.g.
the layers of two models) and returns the labelled ``(A, B)`` matrix
(:class:`RSMComparison`, usable as an array) in one vmapped call, compiled once per shape
and method.
"""
from __future__ import annotations

import functools
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from repsim_jax._checks import InputError, as_float_array, unknown_name
from repsim_jax._results import result
from repsim_jax.similarity.cka import _gram_stats, _pair as _cka_pair

__all__ = ["compare", "cka", "upper_triangle", "COMPARISONS", "RSMComparison"]

COMPARISONS = ("cka_debiased", "linear_cka", "rbf_cka", "rbf_cka_debiased", "pearson",
               "spearman")


@result(meta=("method", "rows", "cols"))
class RSMComparison:
    """``values[i, j]`` = comparison of RSM ``rows[i]`` with RSM ``cols[j]`` (names of dict
    inputs, else indices). Behaves as the (A, B) array for indexing and ``np.asarray``."""
    values: Any
    method: str = ""
    rows: tuple = ()
    cols: tuple = ()

    def __array__(self, dtype=None, copy=None):
        v = np.asarray(self.values)
        return v.astype(dtype) if dtype is not None else v

    def __getitem__(self, idx):
        return np.asarray(self.values)[idx]

    @property
    def shape(self):
        return tuple(np.shape(self.values))

    def __len__(self):
        return len(self.rows)


def upper_triangle(k):
    """Strict upper triangle (i < j) of (..., N, N) matrices as (..., N(N-1)/2)."""
    n = k.shape[-1]
    iu, ju = np.triu_indices(n, 1)
    return k[..., iu, ju]


def _rbf_of_gram(k, sigma_scale):
    diag = jnp.diagonal(k, axis1=-2, axis2=-1)
    d = jnp.maximum(diag[..., :, None] + diag[..., None, :] - 2.0 * k, 0.0)
    med = jnp.median(upper_triangle(d), axis=-1)
    sig2 = jnp.where(med > 0, med, 1.0) * sigma_scale ** 2
    return jnp.exp(-d / (2.0 * sig2[..., None, None]))


def cka(k, l, debiased: bool = False):
    """CKA of two Gram matrices (batched over leading axes; biased unless ``debiased``)."""
    def one(a, b):
        pa, pb = _gram_stats(a, debiased), _gram_stats(b, debiased)
        return _cka_pair(pa, pb, {"debiased": debiased})
    f = one
    for _ in range(k.ndim - 2):
        f = jax.vmap(f)
    return f(k, l)


def _ranks(v):
    srt = jnp.sort(v)
    lo = jnp.searchsorted(srt, v, side="left")
    hi = jnp.searchsorted(srt, v, side="right")
    return (lo + hi + 1) / 2.0


def _pearson(u, v):
    """Pearson correlation of two vectors (0 when one is constant)."""
    u = u - u.mean()
    v = v - v.mean()
    den = jnp.sqrt(jnp.sum(u * u) * jnp.sum(v * v))
    return jnp.where(den > 0, jnp.sum(u * v) / jnp.where(den > 0, den, 1.0), 0.0)


def _unit(v):
    v = v - v.mean()
    n = jnp.sqrt(jnp.sum(v * v))
    return v / jnp.where(n > 0, n, 1.0)


def _prepare(k, method, sigma_scale):
    """Per-RSM statistics (vmapped over the stack)."""
    if method in ("linear_cka", "cka_debiased"):
        return _gram_stats(k, method == "cka_debiased")
    if method in ("rbf_cka", "rbf_cka_debiased"):
        return _gram_stats(_rbf_of_gram(k, sigma_scale), method == "rbf_cka_debiased")
    u = upper_triangle(k)
    return {"u": _unit(_ranks(u) if method == "spearman" else u)}


def _pair(pa, pb, method):
    if "u" in pa:
        return jnp.sum(pa["u"] * pb["u"])
    return _cka_pair(pa, pb, {"debiased": method.endswith("debiased")})


@functools.partial(jax.jit, static_argnames=("method", "sigma_scale"))
def _compare_jit(ka, kb, *, method, sigma_scale):
    pa = jax.vmap(lambda k: _prepare(k, method, sigma_scale))(ka)
    pb = jax.vmap(lambda k: _prepare(k, method, sigma_scale))(kb)
    return jax.vmap(lambda a: jax.vmap(lambda b: _pair(a, b, method))(pb))(pa)


def _stack(x, name):
    if isinstance(x, Mapping):
        if not x:
            raise InputError(f"{name}: empty dict of RSMs")
        names = [str(k) for k in x]
        arrs = [as_float_array(v, f"{name}[{k!r}]", ndim=2) for k, v in x.items()]
        shapes = {k: tuple(a.shape) for k, a in zip(names, arrs)}
        if len(set(shapes.values())) > 1:
            raise InputError(f"{name}: RSMs of different shapes {shapes}")
        x = np.stack([np.asarray(a) for a in arrs])
    else:
        as_float_array(x, name, ndim=(2, 3))
        x = np.asarray(x)
        if x.ndim == 2:
            x = x[None]
        names = [str(i) for i in range(x.shape[0])]
    if x.shape[-1] != x.shape[-2]:
        raise InputError(f"{name}: RSMs must be square, got shape {x.shape[-2:]}")
    if x.shape[-1] < 4:
        raise InputError(f"{name}: need N >= 4 inputs to compare RSMs, got N={x.shape[-1]}")
    return jnp.asarray(x, jnp.float32), tuple(names)


def compare(a, b=None, *, method: str = "cka_debiased",
            sigma_scale: float = 1.0) -> RSMComparison:
    """Similarity of every RSM of ``a`` with every RSM of ``b`` in one batched call.

    Args:
      a: (N, N), (A, N, N) or a dict ``{name: (N, N)}``.
      b: the same for the second set (default: ``a``, i.e. layer x layer).
      method: one of :data:`COMPARISONS` (module docstring); default ``"cka_debiased"``.
      sigma_scale: multiplies the median-heuristic bandwidth of the RBF methods.

    Returns:
      :class:`RSMComparison`: the (A, B) values (float64) with the row / column names
      (dict keys, else indices) and the method; ``np.asarray(result)`` is the matrix.
    """
    if method not in COMPARISONS:
        raise unknown_name("comparison", method, COMPARISONS)
    ka, rows = _stack(a, "a")
    kb, cols = (ka, rows) if b is None else _stack(b, "b")
    if ka.shape[-1] != kb.shape[-1]:
        raise InputError(f"a and b are RSMs over different numbers of inputs: "
                         f"{ka.shape[-1]} vs {kb.shape[-1]}")
    out = _compare_jit(ka, kb, method=method, sigma_scale=float(sigma_scale))
    return RSMComparison(values=np.asarray(out, np.float64), method=method, rows=rows,
                         cols=cols)
