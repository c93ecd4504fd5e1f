r"""RSVC-style concept similarity: which concepts of model A does model B also encode?

After Kondapaneni, Mac Aodha & Perona, "Representational Similarity via Interpretable Visual
Concepts" (ICLR 2025, nkondapa/RSVC). Concepts of a layer of model A are extracted by NMF
(:func:`repsim_jax.concepts.ice_fit`): coefficients :math:`S_A \in \mathbb{R}^{T \times k}`
over the :math:`T = N h_A w_A` (input, position) rows. Model B's activations on the same
inputs, resized to A's resolution, :math:`X_B \in \mathbb{R}^{T \times C_B}`, are regressed
onto them with ridge regression (intercept, penalty :math:`\lambda` relative to the mean
eigenvalue of the Gram matrix)

.. math:: \hat\beta = (\tilde X_B^\top \tilde X_B + \lambda I)^{-1} \tilde X_B^\top S_A,

fitted on a split of the INPUTS (never of pixels of one input) and evaluated on the rest:
the similarity of concept :math:`j` is the Pearson correlation of predicted and actual
coefficients on held-out inputs, :math:`\rho_j = \mathrm{corr}(\tilde X_B^{test}\hat\beta_{:,j},
S_{A,:,j}^{test})`. The same regression from A's own activations gives the ceiling
:math:`\rho^{self}_j` (how linearly decodable the concept is at all). A concept is *shared*
when :math:`\rho_j \ge` ``shared_threshold`` and *unique to A* otherwise; running both
directions gives the concepts unique to each model.
"""
from __future__ import annotations

import dataclasses

from repsim_jax._results import result

import jax
import jax.numpy as jnp
import numpy as np

from repsim_jax._checks import InputError, as_float_array, check_same_length
from repsim_jax.concepts.nmf import ICEConcepts, ice_fit
from repsim_jax.concepts.similarity import resize_maps

__all__ = ["RSVCResult", "RSVCComparison", "ridge_concept_prediction", "rsvc_similarity",
           "rsvc_compare"]


@result
class RSVCResult:
    """Per-concept similarity of model A's concepts in model B.

    Attributes:
      similarity: (k,) Pearson of predicted vs actual held-out coefficients from B.
      self_similarity: (k,) the same from A's own activations (ceiling).
      shared: (k,) bool, ``similarity >= shared_threshold``.
      concepts: the :class:`~repsim_jax.concepts.ICEConcepts` of A's layer.
    """
    similarity: np.ndarray
    self_similarity: np.ndarray
    shared: np.ndarray
    concepts: ICEConcepts

    @property
    def unique(self) -> np.ndarray:
        """(k,) bool: concepts of A that B does not linearly encode."""
        return ~self.shared


def _pearson_columns(y, yhat):
    y = y - jnp.mean(y, axis=0)
    yhat = yhat - jnp.mean(yhat, axis=0)
    den = jnp.sqrt(jnp.sum(y * y, 0) * jnp.sum(yhat * yhat, 0))
    return jnp.where(den > 0, jnp.sum(y * yhat, 0) / jnp.where(den > 0, den, 1.0), 0.0)


@jax.jit
def _ridge_fit_predict(x_tr, y_tr, x_te, y_te, ridge):
    mu_x, mu_y = jnp.mean(x_tr, 0), jnp.mean(y_tr, 0)
    xc = x_tr - mu_x
    G = xc.T @ xc
    lam = ridge * jnp.trace(G) / G.shape[0]
    beta = jnp.linalg.solve(G + (lam + 1e-8) * jnp.eye(G.shape[0], dtype=G.dtype),
                            xc.T @ (y_tr - mu_y))
    pred = (x_te - mu_x) @ beta + mu_y
    return _pearson_columns(y_te, pred)


def ridge_concept_prediction(features, coefficients, train_inputs, *, ridge: float = 1e-3):
    """Held-out Pearson (k,) of ridge predictions of ``coefficients`` (N, h, w, k) from
    ``features`` (N, h, w, C) on the same grid; ``train_inputs`` (N,) bool selects the
    inputs used for fitting, the others are evaluated."""
    f = jnp.asarray(features, jnp.float32)
    c = jnp.asarray(coefficients, jnp.float32)
    tr = np.asarray(train_inputs, bool)
    if tr.all() or not tr.any():
        raise InputError("train_inputs: need both training and held-out inputs")
    C, k = f.shape[-1], c.shape[-1]
    x_tr, x_te = f[tr].reshape(-1, C), f[~tr].reshape(-1, C)
    y_tr, y_te = c[tr].reshape(-1, k), c[~tr].reshape(-1, k)
    return np.asarray(_ridge_fit_predict(x_tr, y_tr, x_te, y_te, float(ridge)))


def _as_maps(acts, name):
    acts = as_float_array(acts, name, ndim=(2, 4))
    acts = jnp.asarray(acts, jnp.float32)
    return acts[:, None, None, :] if acts.ndim == 2 else acts


def rsvc_similarity(acts_a, acts_b, k: int = 10, *, ridge: float = 1e-3,
                    test_fraction: float = 0.3, shared_threshold: float = 0.5, seed: int = 0,
                    concepts: ICEConcepts | None = None, **nmf_kwargs) -> RSVCResult:
    """How well model B's layer ``acts_b`` encodes each NMF concept of model A's layer
    ``acts_a`` (same inputs; B is resized to A's resolution). See the module docstring."""
    a = _as_maps(acts_a, "acts_a")
    b = _as_maps(acts_b, "acts_b")
    check_same_length("acts_a", a, "acts_b", b)
    N = a.shape[0]
    if N < 4:
        raise InputError(f"rsvc needs at least 4 inputs to split into train/test, got {N}")
    if not 0 < test_fraction < 1:
        raise InputError(f"test_fraction: expected a value in (0, 1), got {test_fraction}")
    if concepts is None:
        concepts = ice_fit(a, k, **nmf_kwargs)
    S = concepts.maps
    if S.shape[:3] != a.shape[:3]:
        raise InputError("concepts: maps do not match acts_a's (N, h, w)")
    b = resize_maps(b, a.shape[1:3])
    n_test = max(1, int(round(test_fraction * N)))
    train = np.ones(N, bool)
    train[np.random.default_rng(seed).permutation(N)[:n_test]] = False
    sim = ridge_concept_prediction(b, S, train, ridge=ridge)
    self_sim = ridge_concept_prediction(a, S, train, ridge=ridge)
    return RSVCResult(sim, self_sim, sim >= shared_threshold, concepts)


@result
class RSVCComparison:
    """What :func:`rsvc_compare` returns: both directions of :func:`rsvc_similarity`.

    Attributes:
      a_in_b: :class:`RSVCResult` of A's concepts as seen by B.
      b_in_a: :class:`RSVCResult` of B's concepts as seen by A.

    Unpacking ``a_in_b, b_in_a = rsvc_compare(...)`` (the 2-tuple this function returned
    before) still works through ``__iter__``; deprecated.
    """
    a_in_b: RSVCResult
    b_in_a: RSVCResult

    def __iter__(self):          # the old 2-tuple; deprecated
        return iter((self.a_in_b, self.b_in_a))

    @property
    def unique_to_a(self) -> np.ndarray:
        """(k,) bool over A's concepts: not linearly encoded by B."""
        return self.a_in_b.unique

    @property
    def unique_to_b(self) -> np.ndarray:
        """(k,) bool over B's concepts: not linearly encoded by A."""
        return self.b_in_a.unique


def rsvc_compare(acts_a, acts_b, k: int = 10, **kwargs) -> RSVCComparison:
    """Both directions: an :class:`RSVCComparison` with ``a_in_b`` (A's concepts as seen by
    B) and ``b_in_a`` (B's concepts as seen by A); ``unique_to_a`` / ``unique_to_b`` are the
    concepts unique to each model. Still unpacks as the old ``(a_in_b, b_in_a)``."""
    return RSVCComparison(rsvc_similarity(acts_a, acts_b, k, **kwargs),
                          rsvc_similarity(acts_b, acts_a, k, **kwargs))
