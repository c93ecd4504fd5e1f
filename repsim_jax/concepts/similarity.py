r"""Pairwise concept similarity across layers and models (Mikriukov et al. 2023).

Concept maps of two layers on the SAME inputs, brought to one resolution, are flattened over
inputs and pixels to :math:`a \in \mathbb{R}^{T \times k_1}`, :math:`b \in
\mathbb{R}^{T \times k_2}` (:math:`T = N h w`) and compared concept by concept into a
:math:`k_1 \times k_2` matrix:

* ``"set_iou"`` — binarise :math:`A = [a > \tau_a]`, :math:`B = [b > \tau_b]`;
  :math:`I = A^\top B`, :math:`\mathrm{IoU}_{ij} = I_{ij} / (|A_i| + |B_j| - I_{ij})`.
* ``"soft_iou"`` — for non-negative maps, :math:`\sum_t \min(a_{ti}, b_{tj}) /
  \sum_t \max(a_{ti}, b_{tj})`. With :math:`\max = a + b - \min` only the min-sum
  :math:`m_{ij}` needs the pairwise pass; it is accumulated over chunks of :math:`T`, each
  a bounded (chunk, k1, k2) broadcast, so memory never grows with :math:`N`.
* ``"cosine"`` — :math:`a^\top b / (\lVert a_i\rVert \lVert b_j\rVert)`.
* ``"pearson"`` — cosine of the maps centred by their means over all :math:`T` values.

Every statistic is a sum over :math:`T` of a (k1 x k2) product, so it is accumulated by a
``lax.scan`` over chunks of :math:`T` (memory bounded by the chunk), and with a leading
layer axis on both inputs the same scan computes all :math:`L_a \times L_b` layer pairs in
one ``einsum`` per chunk: one jit-compiled call returns ``(La, Lb, k1, k2)``. With
``mesh=`` the ``La`` axis is sharded across devices. Degenerate cases (empty union, zero
norm, zero variance) give 0.

Layer scores
------------
* supervised (same named concepts in both layers): the diagonal — one similarity per
  concept — averaged over the shared concepts (:func:`shared_concept_similarity`);
* unsupervised (ICE, unrelated concept sets): ``"best_match"``
  :math:`\tfrac12(\overline{\max_j S_{ij}} + \overline{\max_i S_{ij}})`, or
  ``"hungarian"`` — the mean similarity of the optimal one-to-one matching
  (:func:`layer_scores`).
Layer x layer matrices are plotted as heatmaps and in a relative-depth view, relative
depth of layer :math:`i` (0-based) of :math:`L` being :math:`(i + 1) / L`.
"""
from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from repsim_jax._checks import InputError, as_float_array, unknown_name
from repsim_jax._results import result

__all__ = ["METRICS", "pairwise_similarity", "resize_maps", "stack_layers",
           "quantile_thresholds", "shared_concept_similarity", "layer_scores",
           "best_match_score", "hungarian_score", "relative_depth", "best_layer_matches",
           "LayerMatches", "plot_layer_similarity", "plot_relative_depth"]

METRICS = ("set_iou", "soft_iou", "cosine", "pearson")
_CHUNK_BYTES = 64 * 2 ** 20


# ----------------------------------------------------------------------------- resizing
def resize_maps(maps, size: Sequence[int]):
    """Bilinearly resizes (..., N, h, w, k) maps to (..., N, H, W, k): half-pixel centres
    when upsampling (as ``torch.nn.functional.interpolate(mode="bilinear",
    align_corners=False)``), an antialiased triangle filter when downsampling."""
    maps = jnp.asarray(maps)
    H, W = int(size[0]), int(size[1])
    if maps.shape[-3:-1] == (H, W):
        return maps
    shape = maps.shape[:-3] + (H, W, maps.shape[-1])
    return jax.image.resize(maps.astype(jnp.float32), shape, method="linear", antialias=True)


def stack_layers(maps: Sequence, size: Sequence[int] | None = None):
    """Stacks per-layer concept maps (each (N, h_l, w_l, k)) into (L, N, H, W, k), resizing
    each to ``size`` (default: the largest resolution among them)."""
    maps = [jnp.asarray(m) for m in maps]
    if not maps:
        raise InputError("maps: empty list of layers")
    for i, m in enumerate(maps):
        if m.ndim != 4:
            raise InputError(f"maps[{i}]: expected (N, h, w, k), got shape {tuple(m.shape)}")
        if m.shape[0] != maps[0].shape[0] or m.shape[-1] != maps[0].shape[-1]:
            raise InputError(f"maps[{i}] has shape {tuple(m.shape)}; every layer needs the same "
                             f"N and k as maps[0] {tuple(maps[0].shape)}")
    if size is None:
        size = max((m.shape[1:3] for m in maps), key=lambda s: s[0] * s[1])
    return jnp.stack([resize_maps(m, size) for m in maps])


def quantile_thresholds(maps, q: float = 0.9):
    """Per-concept thresholds: the ``q`` quantile of each concept's map over all inputs and
    pixels. ``maps`` (N, h, w, k) -> (k,); (L, N, h, w, k) -> (L, k)."""
    maps = jnp.asarray(maps, jnp.float32)
    flat = maps.reshape(maps.shape[:-4] + (-1, maps.shape[-1])) if maps.ndim == 5 else \
        maps.reshape(-1, maps.shape[-1])
    return jnp.quantile(flat, q, axis=-2)


# ----------------------------------------------------------------------------- the kernel
@functools.partial(jax.jit, static_argnames=("metric", "chunk"))
def _pairwise(a, b, ta, tb, metric: str, chunk: int):
    """a (La, T, k1), b (Lb, T, k2), ta (La, k1), tb (Lb, k2) -> (La, Lb, k1, k2)."""
    La, T, k1 = a.shape
    Lb, _, k2 = b.shape
    n_chunks = -(-T // chunk)
    f32 = jnp.float32
    if metric == "pearson":
        a = a - jnp.mean(a, axis=1, keepdims=True)
        b = b - jnp.mean(b, axis=1, keepdims=True)

    def take(x, c):
        start = jnp.minimum(c * chunk, T - chunk)
        xs = jax.lax.dynamic_slice_in_dim(x, start, chunk, axis=1)
        valid = (start + jnp.arange(chunk)) >= c * chunk   # drop the overlap of the last chunk
        return xs, valid

    def body(acc, c):
        xa, valid = take(a, c)
        xb, _ = take(b, c)
        v = valid.astype(f32)[None, :, None]
        if metric == "set_iou":
            xa = (xa > ta[:, None, :]).astype(f32) * v
            xb = (xb > tb[:, None, :]).astype(f32) * v
            cross = jnp.einsum("ati,btj->abij", xa, xb)
        elif metric == "soft_iou":
            xa = xa.astype(f32) * v
            xb = xb.astype(f32) * v
            cross = jnp.sum(jnp.minimum(xa[:, None, :, :, None], xb[None, :, :, None, :]),
                            axis=2)
        else:
            xa = xa.astype(f32) * v
            xb = xb.astype(f32) * v
            cross = jnp.einsum("ati,btj->abij", xa, xb)
        if metric in ("cosine", "pearson"):
            sa, sb = jnp.sum(xa * xa, axis=1), jnp.sum(xb * xb, axis=1)
        else:
            sa, sb = jnp.sum(xa, axis=1), jnp.sum(xb, axis=1)
        acc_cross, acc_a, acc_b = acc
        return (acc_cross + cross, acc_a + sa, acc_b + sb), None

    init = (jnp.zeros((La, Lb, k1, k2), f32), jnp.zeros((La, k1), f32),
            jnp.zeros((Lb, k2), f32))
    (cross, sa, sb), _ = jax.lax.scan(body, init, jnp.arange(n_chunks))
    sa = sa[:, None, :, None]
    sb = sb[None, :, None, :]
    if metric in ("set_iou", "soft_iou"):
        union = sa + sb - cross
        return jnp.where(union > 0, cross / jnp.where(union > 0, union, 1.0), 0.0)
    denom = jnp.sqrt(sa) * jnp.sqrt(sb)
    return jnp.where(denom > 0, cross / jnp.where(denom > 0, denom, 1.0), 0.0)


def _as_layer_stack(maps, name):
    maps = as_float_array(maps, name, ndim=(4, 5)) if not (
        hasattr(maps, "dtype") and np.dtype(maps.dtype) == np.bool_) else maps
    single = maps.ndim == 4
    maps = jnp.asarray(maps)
    if maps.dtype == jnp.bool_:
        maps = maps.astype(jnp.float32)
    if single:
        maps = maps[None]
    if maps.ndim != 5:
        raise InputError(f"{name}: expected (N, H, W, k) or (L, N, H, W, k), got shape "
                         f"{tuple(maps.shape)}")
    return maps, single


def _thresholds(threshold, L, k, name):
    t = jnp.asarray(threshold, jnp.float32)
    if t.ndim == 0:
        return jnp.full((L, k), t)
    if t.shape == (k,):
        return jnp.broadcast_to(t, (L, k))
    if t.shape == (L, k):
        return t
    raise InputError(f"threshold for {name}: expected a scalar, ({k},) or ({L}, {k}), got "
                     f"shape {tuple(t.shape)}")


def pairwise_similarity(maps_a, maps_b, metric: str = "set_iou", threshold=0.5, *,
                        chunk_size: int | None = None, mesh: jax.sharding.Mesh | None = None):
    """Concept-by-concept similarity of two sets of concept maps on the same inputs.

    Args:
      maps_a: (N, H, W, k1) or (La, N, H, W, k1) concept maps (probabilities, NMF codes,
        binary masks...).
      maps_b: (N, H, W, k2) or (Lb, N, H, W, k2), same N, H, W (see :func:`resize_maps`,
        :func:`stack_layers`).
      metric: ``"set_iou"``, ``"soft_iou"``, ``"cosine"`` or ``"pearson"`` (module docstring).
      threshold: binarisation threshold for ``"set_iou"``: a scalar, or a pair
        ``(thr_a, thr_b)`` of per-concept thresholds ((k,) or (L, k); see
        :func:`quantile_thresholds`).
      chunk_size: number of flattened (input, pixel) values per accumulation step; default
        keeps each step's working set near 64 MiB.
      mesh: optional 1-axis device mesh; the ``La`` axis is sharded across it.

    Returns:
      (k1, k2), or (La, Lb, k1, k2) when both inputs have a layer axis (a single
      (N, H, W, k) input is treated as one layer).
    """
    if metric not in METRICS:
        raise unknown_name("metric", metric, METRICS)
    a, single_a = _as_layer_stack(maps_a, "maps_a")
    b, single_b = _as_layer_stack(maps_b, "maps_b")
    if a.shape[1] != b.shape[1]:
        raise InputError(f"maps_a has {a.shape[1]} inputs but maps_b has {b.shape[1]}; concept "
                         f"maps must come from the same inputs")
    if a.shape[2:4] != b.shape[2:4]:
        raise InputError(f"maps_a has resolution {tuple(a.shape[2:4])} but maps_b "
                         f"{tuple(b.shape[2:4])}; resize them to one (resize_maps)")
    if metric == "soft_iou" and (float(jnp.min(a)) < 0 or float(jnp.min(b)) < 0):
        raise InputError("soft_iou needs non-negative concept maps (found negative values)")
    La, N, H, W, k1 = a.shape
    Lb, k2 = b.shape[0], b.shape[-1]
    if isinstance(threshold, (tuple, list)) and len(threshold) == 2:
        ta = _thresholds(threshold[0], La, k1, "maps_a")
        tb = _thresholds(threshold[1], Lb, k2, "maps_b")
    else:
        ta = _thresholds(threshold, La, k1, "maps_a")
        tb = _thresholds(threshold, Lb, k2, "maps_b")
    T = N * H * W
    if chunk_size is None:
        per_value = 4 * (La * k1 + Lb * k2 + (La * Lb * k1 * k2 if metric == "soft_iou" else 0))
        chunk_size = max(1, _CHUNK_BYTES // per_value)
    chunk = int(min(chunk_size, T))
    a = a.reshape(La, T, k1)
    b = b.reshape(Lb, T, k2)
    pad = 0
    if mesh is not None:
        from jax.sharding import NamedSharding, PartitionSpec as P
        axis = mesh.axis_names[0]
        n_dev = mesh.shape[axis]
        pad = (-La) % n_dev
        if pad:
            a = jnp.concatenate([a, jnp.zeros((pad, T, k1), a.dtype)])
            ta = jnp.concatenate([ta, jnp.zeros((pad, k1), ta.dtype)])
        a = jax.device_put(a, NamedSharding(mesh, P(axis)))
        ta = jax.device_put(ta, NamedSharding(mesh, P(axis)))
    out = _pairwise(a, b, ta, tb, metric, chunk)
    if pad:
        out = out[:La]
    if single_a and single_b:
        return out[0, 0]
    if single_a:
        return out[0]
    if single_b:
        return out[:, 0]
    return out


# ----------------------------------------------------------------------------- scores
def shared_concept_similarity(maps_a, names_a: Sequence[str], maps_b, names_b: Sequence[str],
                              metric: str = "set_iou", threshold=0.5, **kwargs):
    """Supervised comparison: the similarity of each concept NAMED in both map sets.

    Returns ``(per_concept, shared)``: ``per_concept`` (..., K) for the K shared names (in
    the order of ``names_a``), ``...`` being (La, Lb) for layer stacks; the supervised
    layer score is ``per_concept.mean(-1)``.
    """
    names_a, names_b = list(names_a), list(names_b)
    if maps_a.shape[-1] != len(names_a) or maps_b.shape[-1] != len(names_b):
        raise InputError(f"names: {len(names_a)}/{len(names_b)} concept names for maps with "
                         f"{maps_a.shape[-1]}/{maps_b.shape[-1]} concepts")
    shared = [n for n in names_a if n in names_b]
    if not shared:
        raise InputError("no concept name is shared by the two map sets")
    ia = np.array([names_a.index(n) for n in shared])
    ib = np.array([names_b.index(n) for n in shared])
    S = pairwise_similarity(jnp.take(jnp.asarray(maps_a), ia, axis=-1),
                            jnp.take(jnp.asarray(maps_b), ib, axis=-1), metric, threshold,
                            **kwargs)
    return jnp.diagonal(S, axis1=-2, axis2=-1), shared


def best_match_score(S):
    """Best-match aggregation of (..., k1, k2): mean of row maxima and of column maxima,
    averaged (symmetric)."""
    S = jnp.asarray(S)
    return 0.5 * (jnp.mean(jnp.max(S, axis=-1), axis=-1) + jnp.mean(jnp.max(S, axis=-2), axis=-1))


def hungarian_score(S):
    """Mean similarity of the optimal one-to-one concept matching of (..., k1, k2)
    (``scipy.optimize.linear_sum_assignment`` per matrix; min(k1, k2) pairs)."""
    from scipy.optimize import linear_sum_assignment
    S = np.asarray(S, np.float64)
    flat = S.reshape(-1, *S.shape[-2:])
    out = np.empty(len(flat))
    for i, m in enumerate(flat):   # tiny (k x k) problems; cost is negligible next to S
        r, c = linear_sum_assignment(m, maximize=True)
        out[i] = m[r, c].mean()
    return out.reshape(S.shape[:-2])


def layer_scores(S, how: str = "best_match"):
    """Layer-pair score of (..., k1, k2) concept similarity matrices: ``"best_match"``,
    ``"hungarian"`` or ``"diagonal"`` (mean of the diagonal: same concepts in both)."""
    if how == "best_match":
        return np.asarray(best_match_score(S))
    if how == "hungarian":
        return hungarian_score(S)
    if how == "diagonal":
        return np.asarray(jnp.mean(jnp.diagonal(jnp.asarray(S), axis1=-2, axis2=-1), axis=-1))
    raise unknown_name("layer score", how, ("best_match", "hungarian", "diagonal"))


def relative_depth(n_layers: int) -> np.ndarray:
    """Relative depth ``(i + 1) / L`` of each of ``L`` layers."""
    return (np.arange(n_layers) + 1.0) / n_layers


@result(meta=("layers_a", "layers_b"))
class LayerMatches:
    """What :func:`best_layer_matches` returns.

    Attributes:
      index: (La,) for each layer of A the index of its most similar layer of B.
      relative_depth_b: (La,) relative depth ``(j + 1) / Lb`` of each match.
      spearman: Spearman correlation of A's relative depths with the matches' (nan when
        either is constant).
      relative_depth_a: (La,) relative depth ``(i + 1) / La`` of A's layers.
      layers_a, layers_b: layer names, when given (else None).

    Unpacking ``index, relative_depth_b, spearman = best_layer_matches(M)`` (the 3-tuple
    this function returned before) still works through ``__iter__``; deprecated.
    """
    index: np.ndarray
    relative_depth_b: np.ndarray
    spearman: float
    relative_depth_a: np.ndarray
    layers_a: tuple | None = None
    layers_b: tuple | None = None

    def __iter__(self):          # the old 3-tuple; deprecated
        return iter((self.index, self.relative_depth_b, self.spearman))

    @property
    def matches(self) -> dict:
        """{layer of A: best-matching layer of B} (needs the layer names)."""
        if self.layers_a is None or self.layers_b is None:
            raise InputError("matches: no layer names; pass layers_a= and layers_b= to "
                             "best_layer_matches")
        return {a: self.layers_b[int(j)] for a, j in zip(self.layers_a, self.index)}


def best_layer_matches(M, *, layers_a: Sequence[str] | None = None,
                       layers_b: Sequence[str] | None = None) -> LayerMatches:
    """For each layer of A (rows of the (La, Lb) matrix ``M``), the most similar layer of
    B. Returns a :class:`LayerMatches`: ``index (La,)``, ``relative_depth_b (La,)`` of each
    match and the ``spearman`` correlation between A's and the matches' relative depths
    (nan when either is constant); optional layer names give ``.matches``. Still unpacks as
    the old ``(index, relative_depth_b, spearman)``."""
    from scipy.stats import spearmanr
    M = np.asarray(M)
    if M.ndim != 2 or 0 in M.shape:
        raise InputError(f"M: expected a non-empty (La, Lb) matrix, got shape {M.shape}")
    for name, names, n in (("layers_a", layers_a, M.shape[0]), ("layers_b", layers_b,
                                                                M.shape[1])):
        if names is not None and len(names) != n:
            raise InputError(f"{name}: {len(names)} names for {n} layers of M {M.shape}")
    idx = np.argmax(M, axis=1)
    rd_a, rd_b = relative_depth(M.shape[0]), relative_depth(M.shape[1])[idx]
    rho = np.nan if np.ptp(rd_b) == 0 or len(rd_a) < 2 else float(spearmanr(rd_a, rd_b)[0])
    return LayerMatches(idx, rd_b, rho, rd_a,
                        None if layers_a is None else tuple(layers_a),
                        None if layers_b is None else tuple(layers_b))


# ----------------------------------------------------------------------------- plots
def plot_layer_similarity(M, names_a: Sequence[str], names_b: Sequence[str] | None = None, *,
                          title: str = "concept similarity", label_a: str = "model A",
                          label_b: str = "model B", path=None):
    """Heatmap of a (La, Lb) layer x layer similarity matrix; returns the figure (and saves
    it to ``path`` when given). Uses matplotlib's Agg backend."""
    from repsim_jax import _plotting as plt
    M = np.asarray(M)
    names_b = names_a if names_b is None else names_b
    fig, ax = plt.subplots(figsize=(1.2 + 0.45 * M.shape[1], 1.0 + 0.4 * M.shape[0]))
    im = ax.imshow(M, cmap="viridis", aspect="auto")
    ax.set_xticks(range(M.shape[1]), names_b, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(M.shape[0]), names_a, fontsize=7)
    ax.set_xlabel(label_b)
    ax.set_ylabel(label_a)
    ax.set_title(title)
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig


def plot_relative_depth(M, *, label_a: str = "model A", label_b: str = "model B",
                        title: str = "most similar layer by relative depth", path=None):
    """Relative-depth view of a (La, Lb) matrix: every layer pair as a point at
    (relative depth in A, relative depth in B) coloured by similarity, the best match of each
    A layer highlighted, and the diagonal for reference."""
    from repsim_jax import _plotting as plt
    M = np.asarray(M)
    ra, rb = relative_depth(M.shape[0]), relative_depth(M.shape[1])
    gx, gy = np.meshgrid(ra, rb, indexing="ij")
    bm = best_layer_matches(M)
    rd_best, rho = bm.relative_depth_b, bm.spearman
    fig, ax = plt.subplots(figsize=(4.6, 4))
    sc = ax.scatter(gx.ravel(), gy.ravel(), c=M.ravel(), s=40, cmap="viridis")
    ax.plot(ra, rd_best, "o-", color="crimson", mfc="none", ms=10, label="best match")
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=1)
    ax.set_xlabel(f"relative depth, {label_a}")
    ax.set_ylabel(f"relative depth, {label_b}")
    ax.set_title(f"{title}\nSpearman {rho:.2f}", fontsize=9)
    ax.legend(loc="lower right", fontsize=7)
    fig.colorbar(sc, ax=ax)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig
