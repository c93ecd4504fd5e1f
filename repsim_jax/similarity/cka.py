r"""Centred kernel alignment (CKA): biased, debiased, and minibatch.

For representations :math:`X \in \mathbb{R}^{N \times D_x}`, :math:`Y \in \mathbb{R}^{N
\times D_y}` of the same N inputs, Gram matrices :math:`K = k(X, X)`, :math:`L = l(Y, Y)`
and the centring matrix :math:`H = I - \frac1N \mathbf 1 \mathbf 1^\top`:

* **biased HSIC** (Gretton et al. 2005): :math:`\mathrm{HSIC}_b(K, L) =
  \operatorname{tr}(KHLH) / (N-1)^2`;
* **unbiased HSIC** (Song et al. 2012, eq. 5), with :math:`\tilde K, \tilde L` the Gram
  matrices with zeroed diagonals:

  .. math:: \mathrm{HSIC}_u(K, L) = \frac{1}{N(N-3)}\Big[\operatorname{tr}(\tilde K\tilde L)
     + \frac{\mathbf 1^\top\tilde K\mathbf 1\;\mathbf 1^\top\tilde L\mathbf 1}{(N-1)(N-2)}
     - \frac{2}{N-2}\mathbf 1^\top\tilde K\tilde L\mathbf 1\Big];

* **CKA** (Kornblith et al. 2019): :math:`\mathrm{HSIC}(K, L) /
  \sqrt{\mathrm{HSIC}(K, K)\,\mathrm{HSIC}(L, L)}`, with the biased estimator
  (``debiased=False``, the estimator of Kornblith et al.) or the unbiased one
  (``debiased=True``, as used by Nguyen et al. 2021, "Do wide and deep networks learn the
  same things?").

Why debiased: the biased estimator is far from 0 for *independent* features when the number
of features is not small against N. Independent Gaussian features with 500 dimensions
each give biased linear CKA 0.96 at N = 20, 0.72 at N = 200, 0.20 at N = 2000, while
debiased CKA stays near 0 (tests/similarity/test_cka.py checks |debiased| < 0.05 at N=200).
Debiased CKA can be slightly negative; it is a ratio of unbiased estimators, not itself
unbiased.

Kernels: ``"linear"`` (:math:`K = XX^\top`) and ``"rbf"``
(:math:`K_{ij} = \exp(-\|x_i - x_j\|^2 / (2\sigma^2 m))` with :math:`m` the median of all
:math:`N^2` squared distances, diagonal included, and :math:`\sigma` = ``sigma``, as in
Kornblith et al.'s reference code). Linear CKA is computed in feature space when
:math:`D \le N` (:math:`\operatorname{tr}(KL) = \|X^\top Y\|_F^2`, all HSIC terms are sums
over inputs; no :math:`N \times N` matrix) and from Gram matrices otherwise; both routes
are exact. Features are centred first (CKA is invariant to it; it avoids cancellation).

:func:`minibatch_cka` (Nguyen et al. 2021, sec. 3.1) averages :math:`\mathrm{HSIC}_u` over
minibatches and normalises the sums: it never forms more than a batch x batch matrix and
can stream from an iterator of ``(X_batch, Y_batch)``. It estimates the same population
quantity as full debiased CKA but is a different estimator (only within-batch pairs of
inputs enter), so it equals :func:`cka` exactly only for a single batch. For the linear
kernel, ``estimator="full"`` instead accumulates the sufficient statistics of full-N
debiased CKA (:math:`X^\top Y`, :math:`X^\top X`, :math:`Y^\top Y` and per-input norms):
streamed in one pass with :math:`O(D_xD_y)` memory, equal to ``cka(X, Y, debiased=True)``
up to float rounding.
"""
from __future__ import annotations

import functools
from typing import Iterable

import jax
import jax.numpy as jnp
import numpy as np

from repsim_jax._checks import InputError, as_float_array, check_same_length
from repsim_jax.similarity import _measure as M

__all__ = ["cka", "minibatch_cka", "hsic_biased", "hsic_unbiased", "rbf_gram", "u_centre"]


# ----------------------------------------------------------------- Gram-matrix kernels
def hsic_biased(K, L):
    """:math:`\\operatorname{tr}(KHLH)/(N-1)^2` of two (N, N) Gram matrices."""
    n = K.shape[-1]
    return jnp.sum(_centre_gram(K) * _centre_gram(L).T) / (n - 1) ** 2


def hsic_unbiased(K, L):
    """Song et al. (2012)'s unbiased HSIC of two (N, N) Gram matrices (N >= 4)."""
    n = K.shape[-1]
    Kt = K * (1.0 - jnp.eye(n, dtype=K.dtype))
    Lt = L * (1.0 - jnp.eye(n, dtype=L.dtype))
    return _hsic_u_terms(jnp.sum(Kt * Lt.T), Kt.sum(), Lt.sum(),
                         jnp.dot(Kt.sum(0), Lt.sum(1)), n)


def _hsic_u_terms(tr, tot_k, tot_l, cross, n):
    return (tr + tot_k * tot_l / ((n - 1) * (n - 2)) - 2.0 * cross / (n - 2)) / (n * (n - 3))


def _centre_gram(K):
    return K - K.mean(0, keepdims=True) - K.mean(1, keepdims=True) + K.mean()


def rbf_gram(X, sigma: float = 1.0):
    """RBF Gram matrix with the median heuristic (module docstring)."""
    sq = jnp.sum(X * X, 1)
    d2 = jnp.maximum(sq[:, None] + sq[None, :] - 2.0 * X @ X.T, 0.0)
    med = jnp.median(d2)
    med = jnp.where(med > 0, med, 1.0)
    return jnp.exp(-d2 / (2.0 * sigma ** 2 * med))


def _safe_ratio(num, a, b):
    den = jnp.sqrt(jnp.maximum(a * b, 0.0))
    return jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), 0.0)


# ------------------------------------------------------------ prepared statistics
def u_centre(K):
    """U-centring (Szekely & Rizzo 2014): zero diagonal, and off the diagonal
    :math:`K_{ij} - \frac{r_i + r_j}{N-2} + \frac{\sum K}{(N-1)(N-2)}` with :math:`r` the row
    sums of the zero-diagonal K; then :math:`\mathrm{HSIC}_u(K, L) = \langle \tilde K_u,
    \tilde L_u\rangle / (N(N-3))` (algebraically Song et al.'s formula, with far less
    cancellation in float32)."""
    n = K.shape[-1]
    off = 1.0 - jnp.eye(n, dtype=K.dtype)
    K = K * off
    r = K.sum(1)
    c = r.sum() / ((n - 1) * (n - 2))
    return (K - (r[:, None] + r[None, :]) / (n - 2) + c) * off


def _gram_stats(K, debiased):
    n = K.shape[0]
    if not debiased:
        Kc = _centre_gram(K)
        return {"gram": Kc, "self": jnp.sum(Kc * Kc)}
    Ku = u_centre(K)
    return {"gram": Ku, "self": jnp.sum(Ku * Ku) / (n * (n - 3))}


def _feature_stats(Xc, debiased):
    if not debiased:
        G = Xc.T @ Xc
        return {"x": Xc, "self": jnp.sum(G * G)}
    n = Xc.shape[0]
    kd = jnp.sum(Xc * Xc, 1)
    s = Xc.sum(0)
    u = Xc @ s - kd
    tot = jnp.dot(s, s) - kd.sum()
    G = Xc.T @ Xc
    self_ = _hsic_u_terms(jnp.sum(G * G) - jnp.dot(kd, kd), tot, tot, jnp.dot(u, u), n)
    return {"x": Xc, "kd": kd, "rows": u, "tot": tot, "self": self_}


def _as_gram(st, debiased):
    """Feature stats -> Gram stats (for a feature-space layer paired with a Gram one)."""
    if "gram" in st:
        return st
    X = st["x"]
    if not debiased:
        return {"gram": X @ X.T, "self": st["self"]}        # X centred: HKH = XX^T
    return {"gram": u_centre(X @ X.T), "self": st["self"]}


def _prepare(X, o):
    debiased = bool(o["debiased"])
    Xc = X - X.mean(0)
    if o["kernel"] == "rbf":
        return _gram_stats(rbf_gram(Xc, float(o["sigma"])), debiased)
    n, d = Xc.shape
    if d > n:
        return _gram_stats(Xc @ Xc.T, debiased)
    return _feature_stats(Xc, debiased)


def _pair(px, py, o):
    debiased = bool(o["debiased"])
    if "gram" in px or "gram" in py:
        gx, gy = _as_gram(px, debiased), _as_gram(py, debiased)
        n = gx["gram"].shape[0]
        tr = jnp.sum(gx["gram"] * gy["gram"])
        if not debiased:
            return _safe_ratio(tr, gx["self"], gy["self"])
        return _safe_ratio(tr / (n * (n - 3)), gx["self"], gy["self"])
    C = px["x"].T @ py["x"]
    if not debiased:
        return _safe_ratio(jnp.sum(C * C), px["self"], py["self"])
    n = px["x"].shape[0]
    h = _hsic_u_terms(jnp.sum(C * C) - jnp.dot(px["kd"], py["kd"]), px["tot"], py["tot"],
                      jnp.dot(px["rows"], py["rows"]), n)
    return _safe_ratio(h, px["self"], py["self"])


def _permute(st, perm):
    out = dict(st)
    for k in ("x", "kd", "rows"):
        if k in st and "gram" not in st:
            out[k] = st[k][perm]
    if "gram" in st:
        out["gram"] = M.permute_gram(st["gram"], perm)
    return out


# ------------------------------------------------------- all-pairs route (compare_layers)
def _fast_plan(n, dims_a, dims_b, o):
    """``"gram"`` or ``"feature"``: RBF and any layer wider than N need Gram matrices;
    otherwise the cheaper route in multiply-adds for the whole sweep (features: N Dx Dy per
    pair; Gram: N^2 D / 2 per layer plus N^2 per pair)."""
    if o["kernel"] == "rbf" or max(dims_a + dims_b) > n:
        return "gram"
    feature = float(n) * sum(dims_a) * sum(dims_b)
    gram = n * n / 2.0 * (sum(dims_a) + sum(dims_b)) + float(n) * n * len(dims_a) * len(dims_b)
    return "gram" if gram < feature else "feature"


@functools.partial(jax.jit, static_argnames=("debiased",))
def _feature_stack(X, *, debiased):
    return jax.vmap(lambda x: _feature_stats(x - x.mean(0), debiased))(X)


@jax.jit
def _sq_dist_stack(X):
    def one(x):
        x = x - x.mean(0)
        sq = jnp.sum(x * x, 1)
        return jnp.maximum(sq[:, None] + sq[None, :] - 2.0 * x @ x.T, 0.0)
    return jax.lax.map(one, X)


@functools.partial(jax.jit, static_argnames=("debiased", "kernel", "sigma"))
def _gram_stack(X, scale, *, debiased, kernel, sigma):
    """Flattened (u-)centred Gram matrices and self-HSIC, one layer at a time (``lax.map``:
    one N x N transient). ``X``: features (linear) or squared distances (rbf); ``scale``:
    the rbf median per layer (host-computed)."""
    def one(args):
        x, med = args
        if kernel == "rbf":
            med = jnp.where(med > 0, med, 1.0)
            K = jnp.exp(-x / (2.0 * sigma ** 2 * med))
        else:
            x = x - x.mean(0)
            K = x @ x.T
        st = _gram_stats(K, debiased)
        return {"g": st["gram"].reshape(-1), "self": st["self"]}
    return jax.lax.map(one, (X, scale))


def _fast_prepare(X, o, plan):
    debiased = bool(o["debiased"])
    if plan == "feature":
        return {"feat": _feature_stack(X, debiased=debiased)}
    if o["kernel"] == "rbf":
        X = _sq_dist_stack(X)
        # the median of all N^2 squared distances: numpy's selection on the host (XLA:CPU
        # sorts N^2 values per layer much more slowly); equals jnp.median up to rounding
        scale = jnp.asarray(np.median(np.asarray(X).reshape(X.shape[0], -1), axis=1),
                            X.dtype)
    else:
        scale = jnp.zeros(X.shape[0], X.dtype)
    return _gram_stack(X, scale, debiased=debiased, kernel=o["kernel"],
                       sigma=float(o["sigma"]))


@functools.partial(jax.jit, static_argnames=("debiased",))
def _grid_gram(GA, GB, *, debiased):
    tr = GA["g"] @ GB["g"].T                        # all pairs: one (La, N^2) x (N^2, Lb)
    if debiased:
        n = int(round(GA["g"].shape[1] ** 0.5))
        tr = tr / (n * (n - 3.0))
    return _safe_ratio(tr, GA["self"][:, None], GB["self"][None, :])


@functools.partial(jax.jit, static_argnames=("debiased",))
def _grid_feature(FA, FB, *, debiased):
    o = {"debiased": debiased}
    return jax.lax.map(lambda fa: jax.vmap(lambda fb: _pair(fa, fb, o))(FB), FA)


def _fast_grid(SA, SB, o, plan):
    debiased = bool(o["debiased"])
    if plan == "feature":
        return _grid_feature(SA["feat"], SB["feat"], debiased=debiased)
    return _grid_gram(SA, SB, debiased=debiased)


def _fast_nbytes(n, d, o, plan):
    return 4 * (n * d + 3 * n) if plan == "feature" else 4 * n * n


def _fast(o):
    return M.FastPath(_fast_prepare, _fast_grid, _fast_nbytes, _fast_plan)


def _check(o):
    if o["kernel"] not in ("linear", "rbf"):
        raise InputError(f"cka: kernel must be 'linear' or 'rbf', got {o['kernel']!r}")
    if not (isinstance(o["sigma"], (int, float)) and o["sigma"] > 0):
        raise InputError(f"cka: sigma must be a positive number, got {o['sigma']!r}")


M.register(M.Measure("cka", _prepare, _pair, _permute,
                     {"kernel": "linear", "debiased": False, "sigma": 1.0},
                     check=_check, min_n=4, fast=_fast),
           {"cka_debiased": {"debiased": True},
            "cka_linear": {"kernel": "linear", "debiased": False},
            "rbf_cka": {"kernel": "rbf", "debiased": False},
            "rbf_cka_debiased": {"kernel": "rbf", "debiased": True}})


def cka(X, Y, kernel: str = "linear", debiased: bool = False, sigma: float = 1.0):
    """CKA of ``X (N, Dx)`` and ``Y (N, Dy)`` (module docstring): a scalar jax array.

    Args:
      kernel: ``"linear"`` or ``"rbf"`` (median heuristic, bandwidth multiplier ``sigma``).
      debiased: use the unbiased HSIC estimator (Song et al. 2012); needs N >= 4.
    """
    return M.run("cka", X, Y, {"kernel": kernel, "debiased": bool(debiased),
                               "sigma": float(sigma)})


# ------------------------------------------------------------------- minibatch CKA
@functools.partial(jax.jit, static_argnames=("kernel", "sigma"))
def _batch_hsic(X, Y, *, kernel, sigma):
    o = {"kernel": kernel, "debiased": True, "sigma": sigma}
    px, py = _prepare(X, o), _prepare(Y, o)
    # HSIC_u(K, L) of the batch = the numerator of the pair value; recompute it from
    # the Gram route so every term is explicit
    gx, gy = _as_gram(px, True), _as_gram(py, True)
    n = X.shape[0]
    h = jnp.sum(gx["gram"] * gy["gram"]) / (n * (n - 3))
    return jnp.stack([h, px["self"], py["self"]])


@jax.jit
def _full_stats(X, Y, shift_x, shift_y):
    X = X - shift_x
    Y = Y - shift_y
    kd, ld = jnp.sum(X * X, 1), jnp.sum(Y * Y, 1)
    return {"n": jnp.asarray(X.shape[0], X.dtype), "Sxy": X.T @ Y, "Sxx": X.T @ X,
            "Syy": Y.T @ Y, "sx": X.sum(0), "sy": Y.sum(0), "kd": kd.sum(), "ld": ld.sum(),
            "kk": jnp.dot(kd, kd), "ll": jnp.dot(ld, ld), "kl": jnp.dot(kd, ld),
            "x_ld": X.T @ ld, "y_kd": Y.T @ kd, "x_kd": X.T @ kd, "y_ld": Y.T @ ld}


@jax.jit
def _full_from_stats(s):
    n = s["n"]
    sx, sy = s["sx"], s["sy"]
    tot_x, tot_y = jnp.dot(sx, sx) - s["kd"], jnp.dot(sy, sy) - s["ld"]
    hxy = _hsic_u_terms(jnp.sum(s["Sxy"] ** 2) - s["kl"], tot_x, tot_y,
                        sx @ s["Sxy"] @ sy - jnp.dot(sx, s["x_ld"]) - jnp.dot(sy, s["y_kd"])
                        + s["kl"], n)
    hxx = _hsic_u_terms(jnp.sum(s["Sxx"] ** 2) - s["kk"], tot_x, tot_x,
                        sx @ s["Sxx"] @ sx - 2.0 * jnp.dot(sx, s["x_kd"]) + s["kk"], n)
    hyy = _hsic_u_terms(jnp.sum(s["Syy"] ** 2) - s["ll"], tot_y, tot_y,
                        sy @ s["Syy"] @ sy - 2.0 * jnp.dot(sy, s["y_ld"]) + s["ll"], n)
    return _safe_ratio(hxy, hxx, hyy)


def _batches(X, Y, batch_size):
    if Y is None:
        yield from X
        return
    X = as_float_array(X, "X", ndim=2)
    Y = as_float_array(Y, "Y", ndim=2)
    check_same_length("X", X, "Y", Y)
    n = X.shape[0]
    stops = list(range(batch_size, n + 1, batch_size)) or [n]
    if stops[-1] != n:
        if n - stops[-1] >= 4:
            stops.append(n)
        else:
            stops[-1] = n           # a remainder of < 4 inputs joins the last batch
    start = 0
    for stop in stops:
        yield X[start:stop], Y[start:stop]
        start = stop


def minibatch_cka(X, Y=None, *, batch_size: int = 256, kernel: str = "linear",
                  sigma: float = 1.0, estimator: str = "minibatch", progress: bool = False):
    """CKA accumulated over minibatches, never forming the full N x N Gram matrices.

    Args:
      X, Y: two (N, D) arrays (split into consecutive batches of ``batch_size``; a
        remainder of fewer than 4 inputs joins the last batch), or ``X`` an iterable of
        ``(X_batch, Y_batch)`` and ``Y=None`` (streaming; e.g. a sweep's activation
        chunks).
      estimator: ``"minibatch"``: Nguyen et al. (2021): the sums over batches of
        HSIC_u(K_b, L_b), HSIC_u(K_b, K_b), HSIC_u(L_b, L_b), then
        sum_xy / sqrt(sum_xx sum_yy) (every batch needs >= 4 inputs; batches of equal
        size compile once). ``"full"`` (linear kernel only): exact full-N debiased CKA
        from streamed sufficient statistics (module docstring).
      progress: a tqdm bar over batches.

    Returns: a scalar (float).
    """
    if estimator not in ("minibatch", "full"):
        raise InputError(f"minibatch_cka: estimator must be 'minibatch' or 'full', got "
                         f"{estimator!r}")
    if kernel not in ("linear", "rbf"):
        raise InputError(f"minibatch_cka: kernel must be 'linear' or 'rbf', got {kernel!r}")
    if estimator == "full" and kernel != "linear":
        raise InputError("minibatch_cka: estimator='full' needs kernel='linear' (the RBF "
                         "Gram matrix has no finite sufficient statistics)")
    if int(batch_size) < 4:
        raise InputError(f"minibatch_cka: batch_size must be >= 4, got {batch_size}")
    it = _batches(X, Y, int(batch_size))
    if progress:
        from tqdm.auto import tqdm
        it = tqdm(it, desc="minibatch CKA", unit="batch")
    acc, shift, n_batches, dims = None, None, 0, None
    for i, (xb, yb) in enumerate(it):
        xb, yb = M.check_pair(xb, yb, 4 if estimator == "minibatch" else 1)
        if dims is None:
            dims = (xb.shape[1], yb.shape[1])
        elif (xb.shape[1], yb.shape[1]) != dims:
            raise InputError(f"minibatch_cka: batch {i} has feature dimensions "
                             f"{(xb.shape[1], yb.shape[1])}, the first had {dims}")
        if estimator == "minibatch":
            part = _batch_hsic(xb, yb, kernel=kernel, sigma=float(sigma))
        else:
            if shift is None:       # HSIC_u is translation invariant: shift by batch 0's
                shift = (xb.mean(0), yb.mean(0))     # mean to avoid cancellation
            part = _full_stats(xb, yb, *shift)
        acc = part if acc is None else jax.tree_util.tree_map(jnp.add, acc, part)
        n_batches += 1
    if acc is None:
        raise InputError("minibatch_cka: no batches")
    if estimator == "full":
        if float(acc["n"]) < 4:
            raise InputError("minibatch_cka: need at least 4 inputs in all")
        return float(_full_from_stats(acc))
    acc = np.asarray(acc, np.float64)
    return float(M.np_float(_safe_ratio(acc[0], acc[1], acc[2])))
