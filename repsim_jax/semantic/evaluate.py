r"""The evaluation protocol of Wald et al. (NeurIPS 2024) for (semantic) RSMs.

* Retrieval: every query i retrieves its most similar *other* input
  :math:`r(i) = \arg\max_{j \ne i} K_{ij}` (lowest index on ties). With annotated label
  sets :math:`A_i` the score is :math:`F1@1 = \frac1N\sum_i 2|A_i \cap A_{r(i)}| /
  (|A_i| + |A_{r(i)}|)` (1 when both sets are empty); for single-label data the top-1
  agreement :math:`\frac1N\sum_i [y_i = y_{r(i)}]`.
* Output alignment: the Jensen-Shannon divergence (base 2, in [0, 1]) of the predicted
  class distributions, :math:`JSD(p, q) = \tfrac12 KL(p\|m) + \tfrac12 KL(q\|m)`,
  :math:`m = (p+q)/2`, correlated (Pearson and Spearman) with the RSM over the pairs
  i < j. Similar representations should predict similar outputs, so more negative is better.

All functions take one (N, N) RSM or a stack (L, N, N) and are jit/vmap-compiled.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from repsim_jax._checks import InputError, as_float_array, check_same_length
from repsim_jax.semantic.compare import _pearson, _ranks, upper_triangle

__all__ = ["retrieve", "retrieval_f1", "top1_agreement", "jensen_shannon", "jsd_alignment"]


def _stack(k):
    as_float_array(k, "rsm", ndim=(2, 3))
    k = jnp.asarray(k, jnp.float32)
    single = k.ndim == 2
    k = k[None] if single else k
    if k.shape[-1] != k.shape[-2]:
        raise InputError(f"rsm: must be square, got shape {tuple(k.shape[-2:])}")
    if k.shape[-1] < 2:
        raise InputError(f"rsm: retrieval needs N >= 2 inputs, got N={k.shape[-1]}")
    return k, single


@jax.jit
def _retrieve(k):
    n = k.shape[-1]
    return jnp.argmax(jnp.where(jnp.eye(n, dtype=bool), -jnp.inf, k), axis=-1)


def retrieve(rsm) -> np.ndarray:
    """Index of each input's most similar other input: (N,) or (L, N)."""
    k, single = _stack(rsm)
    r = np.asarray(_retrieve(k))
    return r[0] if single else r


def retrieval_f1(rsm, label_sets, *, per_query: bool = False):
    """Mean F1@1 of label sets between each query and its retrieved input.

    ``label_sets``: (N, K) bool (input i carries label k). Returns a float (or (L,) for a
    stack of RSMs; per-query (…, N) scores with ``per_query=True``).
    """
    k, single = _stack(rsm)
    lab = np.asarray(label_sets)
    if lab.ndim != 2:
        raise InputError(f"label_sets: expected (N, K) booleans, got shape {lab.shape}")
    check_same_length("rsm", k[0], "label_sets", lab)
    lab = jnp.asarray(lab.astype(bool))
    r = _retrieve(k)
    other = lab[r]                                           # (L, N, K)
    inter = jnp.sum(other & lab[None], -1)
    size = jnp.sum(other, -1) + jnp.sum(lab, -1)[None]
    f1 = jnp.where(size > 0, 2.0 * inter / jnp.maximum(size, 1), 1.0)
    f1 = np.asarray(f1, np.float64)
    res = f1 if per_query else f1.mean(-1)
    return res[0] if single else res


def top1_agreement(rsm, labels):
    """Fraction of queries whose retrieved input has the same class label."""
    k, single = _stack(rsm)
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise InputError(f"labels: expected (N,) class labels, got shape {labels.shape}")
    check_same_length("rsm", k[0], "labels", labels)
    r = np.asarray(_retrieve(k))
    res = (labels[r] == labels[None]).mean(-1)
    return float(res[0]) if single else res


def jensen_shannon(probs):
    """Pairwise JSD (base 2) of the rows of ``probs`` (N, K) -> (N, N)."""
    p = jnp.asarray(probs, jnp.float32)
    m = 0.5 * (p[:, None, :] + p[None, :, :])

    def xlogy(x, y):
        return jnp.where(x > 0, x * jnp.log2(jnp.where(x > 0, x, 1.0) / jnp.where(y > 0, y, 1.0)),
                         0.0)
    js = 0.5 * jnp.sum(xlogy(p[:, None, :], m), -1) + 0.5 * jnp.sum(xlogy(p[None, :, :], m), -1)
    return jnp.clip(js, 0.0, 1.0)


def jsd_alignment(rsm, probs=None, *, logits=None):
    """Pearson and Spearman correlation of RSM entries with the JSD of predictions.

    Give ``probs`` (N, K) (rows sum to 1) or ``logits`` (N, K). Returns a dict with
    ``"pearson"`` and ``"spearman"`` (floats, or (L,) arrays for a stack of RSMs).
    """
    k, single = _stack(rsm)
    if (probs is None) == (logits is None):
        raise InputError("jsd_alignment: give exactly one of probs or logits")
    if probs is not None:
        as_float_array(probs, "probs", ndim=2)
        p = np.asarray(probs, np.float64)
        if (p < 0).any() or not np.allclose(p.sum(-1), 1.0, atol=1e-4):
            raise InputError("probs: rows must be non-negative and sum to 1 "
                             "(pass logits=... for unnormalised scores)")
    else:
        as_float_array(logits, "logits", ndim=2)
        p = np.asarray(jax.nn.softmax(jnp.asarray(logits, jnp.float32), -1))
    check_same_length("rsm", k[0], "probs/logits", p)
    jsd = upper_triangle(jensen_shannon(p))
    ut = upper_triangle(k)
    pr = jax.vmap(_pearson, (0, None))(ut, jsd)
    sp = jax.vmap(_pearson, (0, None))(jax.vmap(_ranks)(ut), _ranks(jsd))
    pr, sp = np.asarray(pr, np.float64), np.asarray(sp, np.float64)
    return ({"pearson": float(pr[0]), "spearman": float(sp[0])} if single
            else {"pearson": pr, "spearman": sp})
