r"""Non-negative matrix factorisation in JAX and ICE concept vectors built on it.

NMF (Frobenius loss)
--------------------
For a non-negative matrix :math:`X \in \mathbb{R}_{\ge 0}^{M \times C}` and a rank
:math:`k \le \min(M, C)`, find :math:`W \in \mathbb{R}_{\ge 0}^{M \times k}` and
:math:`H \in \mathbb{R}_{\ge 0}^{k \times C}` minimising

.. math:: \tfrac12 \lVert X - W H \rVert_F^2 .

``solver="cd"`` (default) is HALS / cyclic coordinate descent (Cichocki & Phan 2009), the
algorithm of scikit-learn's ``NMF(solver="cd")``: one iteration updates every column
:math:`t` of :math:`W` in turn (all rows at once, they are independent given the others)

.. math:: W_{:,t} \leftarrow \max\Big(0,\; W_{:,t} -
          \frac{W (H H^\top)_{:,t} - (X H^\top)_{:,t}}{(H H^\top)_{tt}}\Big),

then the same for :math:`H^\top` with :math:`X^\top` and :math:`W`. The stopping rule is
scikit-learn's: the summed absolute projected gradient of an iteration, divided by that of
the first iteration, falls below ``tol``. ``solver="mu"`` is Lee & Seung's multiplicative
update :math:`H \leftarrow H \odot W^\top X / (W^\top W H)`,
:math:`W \leftarrow W \odot X H^\top / (W H H^\top)`.

Initialisation ``"nndsvd"`` / ``"nndsvda"`` (Boutsidis & Gallopoulos 2008): from the top
:math:`k` singular triplets :math:`(\sigma_j, u_j, v_j)` of :math:`X`, component 0 is
:math:`\sqrt{\sigma_0}\,(|u_0|, |v_0|)`; component :math:`j \ge 1` keeps whichever of the
positive or negative parts :math:`(u_j^\pm, v_j^\pm)` has the larger product of norms
:math:`m`, scaled to :math:`\sqrt{\sigma_j m}`. ``"nndsvda"`` replaces the zeros by
:math:`\bar X`. The SVD is taken as QR of :math:`X` then SVD of the small :math:`R`.

Transform (NNLS): for new rows :math:`X'`, the code is
:math:`\arg\min_{W' \ge 0} \lVert X' - W' H \rVert_F`, a convex problem solved by the same
HALS sweeps on :math:`W'` alone from zeros (as scikit-learn's ``transform``).

ICE (Zhang et al., AAAI 2021)
-----------------------------
Non-negative activations :math:`A \in \mathbb{R}^{N \times h \times w \times C}` of a layer
are flattened to :math:`(N h w, C)` and factorised, :math:`A \approx S V`; the rows of
:math:`V \in \mathbb{R}^{k \times C}` are the concept activation vectors (NCAVs) and
:math:`S`, reshaped to :math:`(N, h, w, k)`, the concept maps. The explanation is judged
by the relative reconstruction error :math:`\lVert A - SV\rVert_F / \lVert A \rVert_F` and
by fidelity: how much of the network's output survives when the layer is replaced by
:math:`SV` (accuracy of the approximated network, and the per-class relative logit error
:math:`|f(A) - f(SV)| / (|f(A)| + 10^{-4})`).
"""
from __future__ import annotations

import dataclasses

from repsim_jax._results import result
import functools
import warnings
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from repsim_jax._checks import InputError, as_float_array

__all__ = ["NMFResult", "nmf", "nmf_transform", "nndsvd", "reconstruction_error", "ICEConcepts",
           "ice_fit", "ice_transform", "ice_reconstruct", "fidelity"]

_INITS = ("nndsvd", "nndsvda")
_SOLVERS = ("cd", "mu")


# ----------------------------------------------------------------------------- checks
def _check_nonnegative_matrix(X, name: str = "X", ndim: int = 2):
    X = as_float_array(X, name, ndim=ndim)
    xmin = float(jnp.min(X))
    if xmin < 0:
        n_neg = int(jnp.sum(jnp.asarray(X) < 0))
        raise InputError(f"{name}: NMF needs non-negative values, found {n_neg} negative "
                         f"value(s) (min {xmin:.4g}); apply a ReLU or shift the activations")
    return jnp.asarray(X, jnp.float32)


def _check_rank(k, M: int, C: int, what: str = "X"):
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise InputError(f"k: expected a positive integer number of components, got {k!r}")
    if k > C:
        raise InputError(f"k={k} is larger than the number of channels C={C} of {what}; "
                         f"NMF with nndsvd init needs k <= C")
    if k > M:
        raise InputError(f"k={k} is larger than the number of rows M={M} of {what}")


# ----------------------------------------------------------------------------- init
@functools.partial(jax.jit, static_argnames=("k", "fill_mean"))
def _nndsvd(X, k: int, fill_mean: bool, eps: float = 1e-6):
    q, r = jnp.linalg.qr(X, mode="reduced")
    ur, s, vt = jnp.linalg.svd(r, full_matrices=False)
    U = (q @ ur)[:, :k]
    S, V = s[:k], vt[:k]
    xp, yp = jnp.maximum(U, 0), jnp.maximum(V, 0).T          # (M, k), (C, k)
    xn, yn = jnp.maximum(-U, 0), jnp.maximum(-V, 0).T
    xpn, ypn = jnp.linalg.norm(xp, axis=0), jnp.linalg.norm(yp, axis=0)
    xnn, ynn = jnp.linalg.norm(xn, axis=0), jnp.linalg.norm(yn, axis=0)
    mp, mn = xpn * ypn, xnn * ynn
    use_p = mp > mn
    u = jnp.where(use_p, xp / jnp.maximum(xpn, 1e-30), xn / jnp.maximum(xnn, 1e-30))
    v = jnp.where(use_p, yp / jnp.maximum(ypn, 1e-30), yn / jnp.maximum(ynn, 1e-30))
    lbd = jnp.sqrt(S * jnp.where(use_p, mp, mn))
    W = lbd * u
    Ht = lbd * v
    # the leading singular pair is non-negative up to sign
    W = W.at[:, 0].set(jnp.sqrt(S[0]) * jnp.abs(U[:, 0]))
    Ht = Ht.at[:, 0].set(jnp.sqrt(S[0]) * jnp.abs(V[0]))
    W = jnp.where(W < eps, 0.0, W)
    Ht = jnp.where(Ht < eps, 0.0, Ht)
    if fill_mean:
        avg = jnp.mean(X)
        W = jnp.where(W == 0, avg, W)
        Ht = jnp.where(Ht == 0, avg, Ht)
    return W, Ht.T


def nndsvd(X, k: int, *, fill: str = "nndsvda"):
    """NNDSVD initialisation ``(W (M, k), H (k, C))`` of a non-negative ``X`` (see module
    docstring); ``fill="nndsvda"`` fills zeros with the mean of ``X``, ``"nndsvd"`` keeps
    them."""
    X = _check_nonnegative_matrix(X)
    _check_rank(k, *X.shape)
    if fill not in _INITS:
        raise InputError(f"init: unknown NMF initialisation {fill!r}; valid: {', '.join(_INITS)}")
    return _nndsvd(X, int(k), fill == "nndsvda")


# ----------------------------------------------------------------------------- HALS
def _hals_sweep(Z, G, B):
    """One cyclic coordinate-descent sweep over the rows of ``Z`` (k, n) — the columns of
    scikit-learn's ``W`` — with ``G = H H^T`` (k, k) and ``B = H X^T`` (k, n), as in
    scikit-learn's ``_update_cdnmf_fast``. Rows are contiguous, so each update is one
    vector operation. Returns the new ``Z`` and the summed |projected gradient|."""
    k = Z.shape[0]

    def body(t, carry):
        Z, viol = carry
        z_t = jax.lax.dynamic_index_in_dim(Z, t, axis=0, keepdims=False)
        g_t = jax.lax.dynamic_index_in_dim(G, t, axis=0, keepdims=False)
        grad = g_t @ Z - jax.lax.dynamic_index_in_dim(B, t, axis=0, keepdims=False)
        pg = jnp.where(z_t == 0, jnp.minimum(grad, 0.0), grad)
        hess = g_t[t]
        safe = jnp.where(hess != 0, hess, 1.0)
        new = jnp.where(hess != 0, jnp.maximum(z_t - grad / safe, 0.0), z_t)
        Z = jax.lax.dynamic_update_index_in_dim(Z, new, t, axis=0)
        return Z, viol + jnp.sum(jnp.abs(pg))

    return jax.lax.fori_loop(0, k, body, (Z, jnp.zeros((), Z.dtype)))


@functools.partial(jax.jit, static_argnames=("max_iter", "update_H"))
def _nmf_cd(X, W, H, max_iter: int, tol: float, update_H: bool = True):
    def cond(state):
        it, _, _, viol_init, viol = state
        done = (it >= 1) & ((viol_init == 0) | (viol / jnp.where(viol_init == 0, 1.0, viol_init)
                                                <= tol))
        return (it < max_iter) & ~done

    def step(state):
        it, Wt, H, viol_init, _ = state
        Wt, viol = _hals_sweep(Wt, H @ H.T, H @ X.T)
        if update_H:
            H, viol_h = _hals_sweep(H, Wt @ Wt.T, Wt @ X)
            viol = viol + viol_h
        viol_init = jnp.where(it == 0, viol, viol_init)
        return it + 1, Wt, H, viol_init, viol

    zero = jnp.zeros((), X.dtype)
    it, Wt, H, _, _ = jax.lax.while_loop(cond, step, (0, W.T, H, zero, zero))
    return Wt.T, H, it


@functools.partial(jax.jit, static_argnames=("max_iter",))
def _nmf_mu(X, W, H, max_iter: int, tol: float):
    eps = jnp.finfo(X.dtype).eps
    xnorm2 = jnp.sum(X * X)

    def err(W, H):  # ||X - WH||_F^2 without forming the residual
        return jnp.maximum(xnorm2 - 2 * jnp.sum((W.T @ X) * H)
                           + jnp.sum((W.T @ W) * (H @ H.T)), 0.0)

    def cond(state):
        it, _, _, prev, cur = state
        return (it < max_iter) & ((it < 2) | ((prev - cur) / jnp.maximum(prev, eps) > tol))

    def step(state):
        it, W, H, _, cur = state
        W = W * (X @ H.T) / jnp.maximum(W @ (H @ H.T), eps)
        H = H * (W.T @ X) / jnp.maximum((W.T @ W) @ H, eps)
        return it + 1, W, H, cur, err(W, H)

    e0 = err(W, H)
    it, W, H, _, _ = jax.lax.while_loop(cond, step, (0, W, H, e0, e0))
    return W, H, it


@result(meta=("n_iter", "max_iter", "solver"))
class NMFResult:
    """What :func:`nmf` returns: ``X ~= W @ H``.

    Attributes:
      W: (M, k) non-negative codes (scikit-learn's ``fit_transform``).
      H: (k, C) non-negative components (scikit-learn's ``components_``).
      n_iter: iterations run; max_iter: the cap (``n_iter < max_iter``: the tolerance was
        reached); solver: ``"cd"`` or ``"mu"``.

    Unpacking ``W, H = nmf(...)`` (the 2-tuple this function returned before; 3-tuple
    ``W, H, n_iter`` with the deprecated ``return_n_iter=True``) still works through
    ``__iter__`` for one release.
    """
    W: jax.Array
    H: jax.Array
    n_iter: int
    max_iter: int = 0
    solver: str = "cd"

    @property
    def converged(self) -> bool:
        """True when the stopping tolerance was reached before ``max_iter``."""
        return self.n_iter < self.max_iter

    def __iter__(self):          # the old tuple; deprecated
        legacy = self.__dict__.get("_legacy_n_iter", False)
        return iter((self.W, self.H, self.n_iter) if legacy else (self.W, self.H))


def nmf(X, k: int, *, max_iter: int = 200, init: str = "nndsvda", tol: float = 1e-4,
        solver: str = "cd", return_n_iter: bool = False) -> NMFResult:
    """Non-negative matrix factorisation ``X ~= W @ H`` (jit-compiled; see module docstring).

    Args:
      X: (M, C) non-negative array (e.g. activations flattened to ``(N*h*w, C)``).
      k: number of components, ``1 <= k <= min(M, C)``.
      max_iter: maximum number of iterations (one iteration updates W then H).
      init: ``"nndsvda"`` (scikit-learn's default for k <= min(M, C)) or ``"nndsvd"``.
      tol: stopping tolerance (scikit-learn's projected-gradient rule for ``"cd"``; relative
        decrease of the loss for ``"mu"``).
      solver: ``"cd"`` (HALS coordinate descent, as scikit-learn) or ``"mu"``.
      return_n_iter: deprecated (``n_iter`` is always a field); only makes the old
        tuple unpacking yield ``(W, H, n_iter)``.

    Returns:
      :class:`NMFResult` with ``W (M, k)``, ``H (k, C)`` float32 — scikit-learn's
      ``fit_transform`` / ``components_`` — and ``n_iter``.

    Raises:
      InputError: negative / non-finite values, k larger than C or M, unknown init/solver.
    """
    X = _check_nonnegative_matrix(X)
    _check_rank(k, *X.shape)
    if init not in _INITS:
        raise InputError(f"init: unknown NMF initialisation {init!r}; valid: {', '.join(_INITS)}")
    if solver not in _SOLVERS:
        raise InputError(f"solver: unknown NMF solver {solver!r}; valid: {', '.join(_SOLVERS)}")
    if max_iter < 1:
        raise InputError(f"max_iter: expected >= 1, got {max_iter}")
    W, H = _nndsvd(X, int(k), init == "nndsvda")
    if solver == "cd":
        W, H, n_iter = _nmf_cd(X, W, H, int(max_iter), float(tol))
    else:
        W, H, n_iter = _nmf_mu(X, W, H, int(max_iter), float(tol))
    res = NMFResult(W, H, int(n_iter), int(max_iter), solver)
    if return_n_iter:
        warnings.warn("nmf(return_n_iter=True) is deprecated: nmf returns an NMFResult whose "
                      "n_iter field is always set", DeprecationWarning, stacklevel=2)
        object.__setattr__(res, "_legacy_n_iter", True)    # not a field: unpacking only
    return res


def nmf_transform(X, H, *, max_iter: int = 200, tol: float = 1e-4):
    """Non-negative least-squares codes ``W (M, k) = argmin_{W>=0} ||X - W H||_F`` of new
    rows ``X (M, C)`` against fixed components ``H (k, C)`` (HALS from zeros)."""
    X = _check_nonnegative_matrix(X)
    H = as_float_array(H, "H", ndim=2)
    if H.shape[1] != X.shape[1]:
        raise InputError(f"H has {H.shape[1]} channels but X has {X.shape[1]}")
    H = jnp.asarray(H, jnp.float32)
    W0 = jnp.zeros((X.shape[0], H.shape[0]), jnp.float32)
    W, _, _ = _nmf_cd(X, W0, H, int(max_iter), float(tol), update_H=False)
    return W


@jax.jit
def _frobenius_residual(X, W, H):
    return jnp.sqrt(jnp.maximum(jnp.sum(X * X) - 2 * jnp.sum((W.T @ X) * H)
                                + jnp.sum((W.T @ W) * (H @ H.T)), 0.0))


def reconstruction_error(X, W, H, *, relative: bool = False) -> float:
    """``||X - W H||_F`` (scikit-learn's ``reconstruction_err_``), or divided by
    ``||X||_F`` when ``relative``."""
    X = jnp.asarray(as_float_array(X, "X", ndim=2), jnp.float32)
    W, H = jnp.asarray(W, jnp.float32), jnp.asarray(H, jnp.float32)
    # the expanded form loses precision when the residual is tiny; use it only for big X
    if X.size <= 50_000_000:
        err = jnp.linalg.norm(X - W @ H)
    else:
        err = _frobenius_residual(X, W, H)
    if relative:
        err = err / jnp.maximum(jnp.linalg.norm(X), 1e-30)
    return float(err)


# ----------------------------------------------------------------------------- ICE
@result(meta=("n_iter", "layer"))
class ICEConcepts:
    """Unsupervised concept vectors of one layer.

    Attributes:
      components: (k, C) non-negative concept activation vectors (NCAVs), rows of V.
      maps: (N, h, w, k) concept maps S of the fitting inputs.
      reconstruction_error: ``||A - S V||_F`` on the fitting inputs.
      relative_error: the same divided by ``||A||_F``.
      n_iter: NMF iterations run.
      layer: optional layer name.
    """
    components: jax.Array
    maps: jax.Array
    reconstruction_error: float
    relative_error: float
    n_iter: int
    layer: str | None = None


def _flatten_acts(acts, name="activations"):
    acts = as_float_array(acts, name, ndim=(2, 4))
    if acts.ndim == 2:  # (N, C): a pooled layer is a 1x1 map
        acts = acts[:, None, None, :]
    return acts


def ice_fit(acts, k: int = 10, *, layer: str | None = None, **nmf_kwargs) -> ICEConcepts:
    """ICE concept vectors of a layer: NMF of its (N, h, w, C) non-negative activations
    flattened to (N*h*w, C). ``nmf_kwargs`` go to :func:`nmf`."""
    acts = _flatten_acts(acts)
    N, h, w, C = acts.shape
    X = _check_nonnegative_matrix(jnp.reshape(jnp.asarray(acts), (N * h * w, C)),
                                  f"activations of layer {layer!r}" if layer else "activations")
    _check_rank(k, N * h * w, C, what=f"layer {layer!r}" if layer else "the activations")
    fit = nmf(X, k, **nmf_kwargs)
    S, V, n_iter = fit.W, fit.H, fit.n_iter
    err = reconstruction_error(X, S, V)
    rel = err / max(float(jnp.linalg.norm(X)), 1e-30)
    return ICEConcepts(V, S.reshape(N, h, w, k), err, rel, n_iter, layer)


def ice_transform(ice: ICEConcepts, acts, *, max_iter: int = 200, tol: float = 1e-4):
    """Concept maps (N, h, w, k) of new inputs: NNLS codes of their activations against the
    fitted NCAVs."""
    acts = _flatten_acts(acts)
    N, h, w, C = acts.shape
    if C != ice.components.shape[1]:
        raise InputError(f"activations have {C} channels but the concepts were fitted on "
                         f"{ice.components.shape[1]}")
    S = nmf_transform(jnp.reshape(jnp.asarray(acts, jnp.float32), (N * h * w, C)),
                      ice.components, max_iter=max_iter, tol=tol)
    return S.reshape(N, h, w, -1)


def ice_reconstruct(ice: ICEConcepts, maps):
    """Activations reconstructed from concept maps: ``S V``, shape (N, h, w, C)."""
    return jnp.einsum("nhwk,kc->nhwc", jnp.asarray(maps, jnp.float32), ice.components)


@functools.partial(jax.jit, static_argnums=0)
def _apply_head(head, x):
    """``head(x)`` under one module-level jit keyed on the head (not a fresh jax.jit per
    call): the same head with equal shapes compiles once."""
    return head(x)


def fidelity(head, acts, reconstructed, labels=None, *, layer: str | None = None,
             images=None, batch_size: int = 256):
    """Fidelity of a layer's reconstruction.

    The rest of the network after the layer is given either as

    * a model plus ``layer`` and ``images`` (recommended): the network runs on ``images``
      with ``layer``'s output replaced by ``acts`` and by ``reconstructed``
      (:func:`repsim_jax.models.forward` with ``replace=``; paths that bypass the layer,
      e.g. a residual branch, still see the images), or
    * a callable ``head`` mapping the layer's activations to logits.

    Returns a dict with ``relative_logit_error`` (C,) = mean over inputs of
    ``|f(A) - f(SV)| / (|f(A)| + 1e-4)`` per class, ``agreement`` (fraction of inputs whose
    arg-max class is unchanged) and, when ``labels`` are given, ``accuracy_original`` /
    ``accuracy_reconstructed``.
    """
    acts = jnp.asarray(acts, jnp.float32)
    reconstructed = jnp.asarray(reconstructed, jnp.float32)
    if acts.shape != reconstructed.shape:
        raise InputError(f"acts {tuple(acts.shape)} and reconstructed "
                         f"{tuple(reconstructed.shape)} differ in shape")
    if layer is not None:
        from repsim_jax.models.capture import forward
        if images is None:
            raise InputError("fidelity: layer= needs the images the activations came from")
        if len(images) != len(acts):
            raise InputError(f"images has {len(images)} inputs but acts has {len(acts)}")
        fa = forward(head, images, replace={layer: acts}, batch_size=batch_size)
        fr = forward(head, images, replace={layer: reconstructed}, batch_size=batch_size)
    else:
        if not callable(head):
            raise InputError("fidelity: head must be callable (or pass layer= and images=)")
        try:
            hash(head)
            f = functools.partial(_apply_head, head)
        except TypeError:           # an unhashable callable: jit it for this call
            f = jax.jit(head)
        fa = jnp.concatenate([f(acts[i:i + batch_size])
                              for i in range(0, len(acts), batch_size)])
        fr = jnp.concatenate([f(reconstructed[i:i + batch_size])
                              for i in range(0, len(acts), batch_size)])
    rel = jnp.mean(jnp.abs(fa - fr) / (jnp.abs(fa) + 1e-4), axis=0)
    out = {"relative_logit_error": np.asarray(rel),
           "agreement": float(jnp.mean(jnp.argmax(fa, -1) == jnp.argmax(fr, -1)))}
    if labels is not None:
        labels = jnp.asarray(labels)
        out["accuracy_original"] = float(jnp.mean(jnp.argmax(fa, -1) == labels))
        out["accuracy_reconstructed"] = float(jnp.mean(jnp.argmax(fr, -1) == labels))
    return out
