r"""Stage 2a of visual summaries: regions of the sharp masks and their similarities.

**Regions.** A sharp mask :math:`m` is binarised into the *deleted* pixels
:math:`1 - m > 0.5` (what the classifier needed; the official code thresholds the saved
``1 - m`` image at 128). Candidate regions per image are

* the bounding boxes of the 8-connected components of the binary mask (at least
  ``min_area`` pixels) - always kept, they are the mask's own regions; and
* box proposals from a multi-scale, multi-aspect sliding grid (the substitute for
  Selective Search, which is not available), kept when more than 75% of their pixels lie
  in the binary mask (the official rule), computed for all boxes of all images at once
  from a summed-area table.

Redundant boxes of one image are pruned greedily as in the official MATLAB code: a box and
every other box that overlaps it by >= 0.5 of the *smaller* area with an area ratio < 2
form a group; only the group member with the highest score survives - the score being
the mean of its top-100 similarities to regions of *other* images (the box "most similar
to other images' boxes").

**Similarity: the documented substitute for Proposal Flow's LOM score.** Proposal Flow
(Ham et al., CVPR 2016) scores a match :math:`r \to r'` between regions of two images by
appearance agreement times geometric consistency of the match's offset with the offsets
of the neighbouring regions' matches (local offset matching). We keep both ingredients:

* appearance :math:`a(r, r') = \max(0, \cos(h_r, h_{r'}))` of region descriptors - HOG of
  the region resampled to 24 x 24 px (grey, 6 px cells, 9 unsigned orientation bins,
  2 x 2-cell blocks with L2-Hys normalisation), or activations of a layer average-pooled
  over the region;
* geometric consistency: the offset of a match is
  :math:`\Delta(r, r') = (c_{r'} - c_r,\ \log s_{r'} - \log s_r)` (box centres in units of
  the image side, :math:`s` = square root of the box area over the image area). For the
  image :math:`J` of :math:`r'`, every region :math:`n` of :math:`r`'s image votes with
  its best match :math:`n^* = \arg\max_{n' \in J} a(n, n')`; the local offset is the
  weighted mean

  .. math::  y_J(r) = \frac{\sum_n w_{rn}\, a(n, n^*)\, \Delta(n, n^*)}
                           {\sum_n w_{rn}\, a(n, n^*)},\qquad
             w_{rn} = \exp\!\Big(-\frac{\lVert c_r - c_n \rVert^2}{2\rho^2}\Big),

  and :math:`g(r, r') = \exp(-\lVert \Delta(r, r') - y_J(r) \rVert^2 / 2\sigma^2)`
  (:math:`\rho = 0.25`, :math:`\sigma = 0.15`).

The similarity is :math:`a \cdot g`, symmetrised :math:`(S + S^\top) / 2` (the official
code filled one triangle of image pairs and transposed it). Everything is one jit-compiled
computation over all regions of a class (no loop over pairs).
"""
from __future__ import annotations

import dataclasses

from repsim_jax._results import result
import functools

import jax
import jax.numpy as jnp
import numpy as np

from repsim_jax._checks import InputError, as_float_array

__all__ = ["Regions", "binarise", "component_boxes", "grid_boxes", "inside_fraction",
           "candidate_regions", "crop_regions", "hog", "hog_descriptors",
           "pooled_descriptors", "region_similarity", "prune_redundant", "box_overlap"]


@result(meta=(), eq=False)
class Regions:
    """Boxes ``(R, 4)`` int ``[y0, x0, y1, x1)`` (end exclusive) and the index of the
    image each lies in, ``image_ids (R,)``; ``source (R,)``: 0 component, 1 proposal."""

    image_ids: np.ndarray
    boxes: np.ndarray
    source: np.ndarray

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    def take(self, idx) -> "Regions":
        return Regions(self.image_ids[idx], self.boxes[idx], self.source[idx])


def binarise(masks, threshold: float = 0.5) -> np.ndarray:
    """Deleted pixels ``1 - m > threshold`` of (N, H, W) masks (bool)."""
    as_float_array(masks, "masks", ndim=3)
    return (1.0 - np.asarray(masks)) > threshold


def component_boxes(binary, min_area: int = 4) -> list[np.ndarray]:
    """Per image, the (k, 4) boxes of the 8-connected components with >= ``min_area`` px."""
    from scipy import ndimage
    out = []
    for b in np.asarray(binary, bool):
        lab, k = ndimage.label(b, structure=np.ones((3, 3), bool))
        if k == 0:
            out.append(np.zeros((0, 4), np.int64))
            continue
        areas = ndimage.sum_labels(b, lab, index=np.arange(1, k + 1))
        sl = ndimage.find_objects(lab)
        boxes = [(s[0].start, s[1].start, s[0].stop, s[1].stop)
                 for s, a in zip(sl, areas) if a >= min_area]
        out.append(np.asarray(boxes, np.int64).reshape(-1, 4))
    return out


def grid_boxes(h: int, w: int, scales=(0.125, 0.25, 0.375, 0.5),
               aspects=(1.0, 2.0, 0.5)) -> np.ndarray:
    """Sliding boxes (B, 4): side ``scale * sqrt(h w)``, height/width = aspect, stride half
    the box side (the Selective-Search substitute)."""
    base = np.sqrt(h * w)
    out = []
    for sc in scales:
        for ar in aspects:
            bh = int(round(base * sc * np.sqrt(ar)))
            bw = int(round(base * sc / np.sqrt(ar)))
            if bh < 2 or bw < 2 or bh > h or bw > w:
                continue
            ys = np.unique(np.r_[np.arange(0, h - bh + 1, max(bh // 2, 1)), h - bh])
            xs = np.unique(np.r_[np.arange(0, w - bw + 1, max(bw // 2, 1)), w - bw])
            yy, xx = np.meshgrid(ys, xs, indexing="ij")
            out.append(np.stack([yy.ravel(), xx.ravel(), yy.ravel() + bh, xx.ravel() + bw], 1))
    boxes = np.concatenate(out) if out else np.zeros((0, 4), np.int64)
    return np.unique(boxes, axis=0).astype(np.int64)


def inside_fraction(binary, boxes) -> np.ndarray:
    """(N, B) fraction of each box's pixels inside each binary mask (summed-area table)."""
    b = np.asarray(binary, np.float64)
    c = np.pad(b.cumsum(1).cumsum(2), ((0, 0), (1, 0), (1, 0)))
    y0, x0, y1, x1 = np.asarray(boxes).T
    inside = c[:, y1, x1] - c[:, y0, x1] - c[:, y1, x0] + c[:, y0, x0]
    return inside / ((y1 - y0) * (x1 - x0))[None, :]


def candidate_regions(binary, *, min_inside: float = 0.75, proposals: bool = True,
                      components: bool = True, min_area: int = 4, **grid) -> Regions:
    """Component boxes and grid proposals kept by the ``min_inside`` rule, all images."""
    binary = np.asarray(binary, bool)
    n, h, w = binary.shape
    ids, boxes, src = [], [], []
    if components:
        for i, bx in enumerate(component_boxes(binary, min_area)):
            ids.append(np.full(len(bx), i)); boxes.append(bx); src.append(np.zeros(len(bx)))
    if proposals:
        g = grid_boxes(h, w, **grid)
        if len(g):
            keep = inside_fraction(binary, g) > min_inside
            i, j = np.nonzero(keep)
            ids.append(i); boxes.append(g[j]); src.append(np.ones(len(j)))
    if not ids:
        return Regions(np.zeros(0, np.int64), np.zeros((0, 4), np.int64), np.zeros(0, np.int8))
    ids, boxes, src = np.concatenate(ids), np.concatenate(boxes), np.concatenate(src)
    # drop exact duplicates (a proposal equal to a component box), keep components first
    key = np.concatenate([ids[:, None], boxes], 1)
    _, first = np.unique(key, axis=0, return_index=True)
    first = np.sort(first)
    order = np.lexsort((src[first], ids[first]))
    sel = first[order]
    return Regions(ids[sel].astype(np.int64), boxes[sel].astype(np.int64),
                   src[sel].astype(np.int8))


def _bucket(n: int, minimum: int = 8) -> int:
    """Next power of two >= n (>= minimum): padded sizes reuse compiled programs."""
    return max(minimum, 1 << max(int(n) - 1, 0).bit_length())


def _pad_regions(regions: "Regions", size: int, image_id: int):
    """Region arrays padded to ``size`` with 1 x 1 boxes at (0, 0) in image ``image_id``."""
    extra = size - len(regions)
    ids = np.concatenate([regions.image_ids, np.full(extra, image_id)]).astype(np.int32)
    boxes = np.concatenate([regions.boxes, np.tile([[0, 0, 1, 1]], (extra, 1))]).astype(np.int32)
    return ids, boxes


# ------------------------------------------------------------------------ descriptors
@functools.partial(jax.jit, static_argnames=("size",))
def _crop(images, image_ids, boxes, size: int):
    def one(i, box):
        img = images[i]
        y0, x0, y1, x1 = [b.astype(jnp.float32) for b in box]
        sy, sx = size / (y1 - y0), size / (x1 - x0)
        return jax.image.scale_and_translate(
            img, (size, size, img.shape[-1]), (0, 1), jnp.stack([sy, sx]),
            jnp.stack([-y0 * sy, -x0 * sx]), method="linear", antialias=True)
    return jax.vmap(one)(image_ids, boxes)


def crop_regions(images, regions: Regions, size: int = 24) -> jax.Array:
    """(R, size, size, C) crops of every region, each box resampled to the square."""
    if len(regions) == 0:
        return jnp.zeros((0, size, size, np.shape(images)[-1]), jnp.float32)
    ids, boxes = _pad_regions(regions, _bucket(len(regions)), 0)
    crops = _crop(jnp.asarray(images, jnp.float32), jnp.asarray(ids), jnp.asarray(boxes),
                  int(size))
    return crops[:len(regions)]


@functools.partial(jax.jit, static_argnames=("cell", "bins", "block", "eps"))
def hog(grey, *, cell: int = 6, bins: int = 9, block: int = 2, eps: float = 1e-5):
    """HOG of (..., H, W) grey images: central-difference gradients (0 on the border),
    unsigned orientations hard-binned into ``bins`` over [0, 180), per-cell mean magnitude
    histograms, ``block x block``-cell blocks (stride 1 cell) with L2-Hys normalisation.
    Returns (..., D) descriptors."""
    g = jnp.asarray(grey, jnp.float32)
    gy = jnp.zeros_like(g).at[..., 1:-1, :].set(g[..., 2:, :] - g[..., :-2, :])
    gx = jnp.zeros_like(g).at[..., :, 1:-1].set(g[..., :, 2:] - g[..., :, :-2])
    mag = jnp.hypot(gx, gy)
    ang = jnp.mod(jnp.rad2deg(jnp.arctan2(gy, gx)), 180.0)
    idx = jnp.clip((ang / (180.0 / bins)).astype(jnp.int32), 0, bins - 1)
    votes = jax.nn.one_hot(idx, bins) * mag[..., None]             # (..., H, W, bins)
    h, w = g.shape[-2] // cell, g.shape[-1] // cell
    votes = votes[..., :h * cell, :w * cell, :]
    shp = votes.shape[:-3] + (h, cell, w, cell, bins)
    hist = votes.reshape(shp).mean(axis=(-4, -2))                  # (..., h, w, bins)
    blocks = jnp.stack([hist[..., i:h - block + 1 + i, j:w - block + 1 + j, :]
                        for i in range(block) for j in range(block)], axis=-2)
    blocks = blocks.reshape(blocks.shape[:-2] + (-1,))             # (..., bh, bw, b*b*bins)
    v = blocks / jnp.sqrt(jnp.sum(blocks ** 2, -1, keepdims=True) + eps ** 2)
    v = jnp.minimum(v, 0.2)
    v = v / jnp.sqrt(jnp.sum(v ** 2, -1, keepdims=True) + eps ** 2)
    return v.reshape(v.shape[:-3] + (-1,))


def hog_descriptors(images, regions: Regions, size: int = 24) -> jax.Array:
    """(R, D) HOG of every region's grey crop resampled to ``size`` x ``size``."""
    if len(regions) == 0:
        return jnp.zeros((0, 0), jnp.float32)
    ids, boxes = _pad_regions(regions, _bucket(len(regions)), 0)
    crops = _crop(jnp.asarray(images, jnp.float32), jnp.asarray(ids), jnp.asarray(boxes),
                  int(size))
    grey = crops.mean(-1) if crops.shape[-1] == 3 else crops[..., 0]
    return hog(grey)[:len(regions)]


@jax.jit
def _pool(fmap, image_ids, boxes_f):
    c = jnp.cumsum(jnp.cumsum(fmap, axis=1), axis=2)
    c = jnp.pad(c, ((0, 0), (1, 0), (1, 0), (0, 0)))
    y0, x0, y1, x1 = boxes_f.T
    tot = (c[image_ids, y1, x1] - c[image_ids, y0, x1] - c[image_ids, y1, x0]
           + c[image_ids, y0, x0])
    return tot / ((y1 - y0) * (x1 - x0)).astype(fmap.dtype)[:, None]


def pooled_descriptors(feature_maps, regions: Regions, image_hw: tuple[int, int]):
    """(R, C) mean of (N, h, w, C) feature maps over each region's box (mapped onto the
    feature grid, at least one cell)."""
    fm = jnp.asarray(feature_maps, jnp.float32)
    if fm.ndim == 2:
        fm = fm[:, None, None, :]
    if fm.ndim != 4:
        raise InputError(f"feature_maps: expected (N, h, w, C), got shape {fm.shape}")
    fh, fw = fm.shape[1:3]
    H, W = image_hw
    b = regions.boxes.astype(np.float64)
    y0 = np.clip(np.floor(b[:, 0] * fh / H), 0, fh - 1)
    x0 = np.clip(np.floor(b[:, 1] * fw / W), 0, fw - 1)
    y1 = np.maximum(np.clip(np.ceil(b[:, 2] * fh / H), 1, fh), y0 + 1)
    x1 = np.maximum(np.clip(np.ceil(b[:, 3] * fw / W), 1, fw), x0 + 1)
    boxes_f = np.stack([y0, x0, y1, x1], 1).astype(np.int32)
    size = _bucket(len(regions))
    ids = np.concatenate([regions.image_ids, np.zeros(size - len(regions))]).astype(np.int32)
    boxes_f = np.concatenate([boxes_f, np.tile([[0, 0, 1, 1]], (size - len(regions), 1))])
    return _pool(fm, jnp.asarray(ids), jnp.asarray(boxes_f.astype(np.int32)))[:len(regions)]


# ------------------------------------------------------------------------- similarity
@functools.partial(jax.jit, static_argnames=("n_images",))
def _similarity(desc, boxes, image_ids, hw, n_images: int, rho, sigma):
    d = desc / jnp.maximum(jnp.linalg.norm(desc, axis=1, keepdims=True), 1e-12)
    a = jnp.maximum(d @ d.T, 0.0)                                           # (R, R)
    hw = hw.astype(jnp.float32)
    b = boxes.astype(jnp.float32)
    centre = jnp.stack([(b[:, 0] + b[:, 2]) / 2 / hw[0], (b[:, 1] + b[:, 3]) / 2 / hw[1]], 1)
    logs = 0.5 * jnp.log((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) / (hw[0] * hw[1]))
    feat = jnp.concatenate([centre, logs[:, None]], 1)                      # (R, 3)
    delta = feat[None, :, :] - feat[:, None, :]                             # (R, R', 3)
    onehot = jax.nn.one_hot(image_ids, n_images, dtype=bool)                # (R, J)
    masked = jnp.where(onehot.T[:, None, :], a[None, :, :], -1.0)          # (J, n, n')
    best = jnp.argmax(masked, axis=2)                                       # (J, n)
    a_best = jnp.take_along_axis(masked, best[..., None], 2)[..., 0]        # (J, n)
    a_best = jnp.maximum(a_best, 0.0)
    d_best = feat[best] - feat[None, :, :]                                  # (J, n, 3)
    dist2 = jnp.sum((centre[:, None, :] - centre[None, :, :]) ** 2, -1)
    same = image_ids[:, None] == image_ids[None, :]
    wrn = jnp.where(same, jnp.exp(-dist2 / (2 * rho ** 2)), 0.0)            # (r, n)
    vote = wrn[None, :, :] * a_best[:, None, :]                             # (J, r, n)
    y = jnp.einsum("jrn,jnk->jrk", vote, d_best) / jnp.maximum(
        vote.sum(-1, keepdims=True), 1e-12)                                 # (J, r, 3)
    y_pair = y[image_ids[None, :], jnp.arange(len(image_ids))[:, None]]     # (r, r', 3)
    g = jnp.exp(-jnp.sum((delta - y_pair) ** 2, -1) / (2 * sigma ** 2))
    s = a * g
    return 0.5 * (s + s.T)


def region_similarity(descriptors, regions: Regions, image_hw: tuple[int, int], *,
                      rho: float = 0.25, sigma: float = 0.15) -> np.ndarray:
    """(R, R) appearance x geometric-consistency similarity (see the module docstring)."""
    if len(regions) == 0:
        return np.zeros((0, 0), np.float32)
    r = len(regions)
    n_images = _bucket(int(regions.image_ids.max()) + 2, 2)   # + one image for padding
    size = _bucket(r)
    ids, boxes = _pad_regions(regions, size, n_images - 1)
    desc = np.zeros((size, np.shape(descriptors)[1]), np.float32)
    desc[:r] = np.asarray(descriptors, np.float32)
    s = _similarity(jnp.asarray(desc), jnp.asarray(boxes), jnp.asarray(ids),
                    jnp.asarray(image_hw), n_images, float(rho), float(sigma))
    return np.asarray(s)[:r, :r]


# -------------------------------------------------------------------------- pruning
def box_overlap(boxes) -> tuple[np.ndarray, np.ndarray]:
    """(overlap over the smaller area, larger/smaller area ratio), both (B, B)."""
    b = np.asarray(boxes, np.float64)
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    ih = np.clip(np.minimum(b[:, None, 2], b[None, :, 2]) - np.maximum(b[:, None, 0],
                                                                       b[None, :, 0]), 0, None)
    iw = np.clip(np.minimum(b[:, None, 3], b[None, :, 3]) - np.maximum(b[:, None, 1],
                                                                       b[None, :, 1]), 0, None)
    small = np.minimum(area[:, None], area[None, :])
    big = np.maximum(area[:, None], area[None, :])
    return ih * iw / small, big / small


def prune_redundant(boxes, scores, *, overlap: float = 0.5, scale: float = 2.0) -> np.ndarray:
    """Indices of the boxes (of one image) that survive the official greedy pruning.

    Walking the list, box ``i`` and the boxes with overlap/smaller-area >= ``overlap`` and
    area ratio < ``scale`` form a redundant group; the list becomes [best-scoring member of
    the group] + the other boxes, and the walk moves on.
    """
    n = len(boxes)
    if n <= 1:
        return np.arange(n)
    ov, ratio = box_overlap(boxes)
    redundant = (ov >= overlap) & (ratio < scale)
    scores = np.asarray(scores, np.float64)
    order = list(range(n))
    count = 0
    while count < len(order):
        i = order[count]
        count += 1
        others = [j for j in order if j != i]
        group = [i] + [j for j in others if redundant[i, j]]
        keep = [j for j in others if not redundant[i, j]]
        best = group[int(np.argmax(scores[group]))]
        order = [best] + keep
    return np.asarray(sorted(order), np.int64)
