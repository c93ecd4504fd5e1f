r"""Visual summaries end to end: masks -> regions -> similarity -> AP -> SSIM cleaning.

Per class :math:`c` (Godi et al., BMVC 2018): take up to ``images_per_class`` images of
class :math:`c` that the classifier gets right (official: 10), optimise their sharp masks
(:mod:`.masks`, all classes' images in one vmapped run), extract regions and their
appearance x geometric-consistency similarities (:mod:`.regions`), prune redundant boxes,
cluster the regions of the class with affinity propagation on the similarity shifted to
:math:`\le 0` with preference :math:`1.3 \times` its median, keep per cluster at most 10
members (one per image) and drop clusters whose median pairwise grey SSIM is below
:math:`0.9 \times` the median over clusters (:mod:`.cluster`). The surviving clusters are
the class's *visual summaries*; their count per class compares architectures.

Substitutes (no Proposal Flow / Selective Search): grid box proposals + mask components
instead of Selective Search; appearance x offset-consistency instead of the LOM score
(:mod:`.regions`); and instead of warping each member image onto the exemplar with the
dense flow, every member's box is resampled onto a common ``crop_size`` square (a
box-to-box affine warp) before the SSIM. Clusters with a single member cannot recur
across images and are never summaries.

Degenerate inputs end in a :class:`ClassSummary` whose ``status`` says what happened
(never an exception): ``"no_correct_images"`` (no image of the class is classified
correctly), ``"empty_masks"`` (every mask collapsed to nothing deleted),
``"single_region"`` (one region in total: nothing to cluster), ``"no_recurring_cluster"``
(every cluster lives in one image only), ``"ok"``. A warning accompanies each non-ok
status.

Scoring against ground truth (where per-pixel object / concept masks are known, e.g.
``repsim_shapes``): :func:`summary_purity` (do a summary's regions show one concept),
:func:`part_labels` + :func:`label_purity` (do they show the same part of an object).
"""
from __future__ import annotations

import dataclasses

from repsim_jax._results import result
import warnings
from typing import Callable, Sequence

import numpy as np

from repsim_jax._checks import InputError, as_float_array, check_same_length
from repsim_jax.summaries import cluster as _cluster
from repsim_jax.summaries import masks as _masks
from repsim_jax.summaries import regions as _regions

__all__ = ["ClassSummary", "SummaryResult", "summarise_regions", "visual_summaries",
           "summary_purity", "PARTS", "part_labels", "label_purity"]


@result(meta=("class_index", "status", "message"), eq=False)
class ClassSummary:
    """Summaries of one class.

    ``image_indices`` (n,) indices (into the caller's images) of the images used;
    ``regions`` boxes with ``image_ids`` indexing ``image_indices``; ``similarity`` (R, R);
    ``labels`` (R,) AP cluster of each region; ``members`` list (per AP cluster) of region
    indices (exemplar first, one per image, <= 10); ``coherence`` (K,) median pairwise
    SSIM; ``kept`` (K,) bool; ``summaries`` = the kept clusters' member lists;
    ``empty_masks`` image indices whose mask deleted nothing; ``status``/``message``.
    """

    class_index: int
    status: str
    message: str
    image_indices: np.ndarray
    regions: _regions.Regions
    similarity: np.ndarray
    labels: np.ndarray
    members: list
    coherence: np.ndarray
    kept: np.ndarray
    empty_masks: np.ndarray

    @property
    def summaries(self) -> list[np.ndarray]:
        return [m for m, k in zip(self.members, self.kept) if k]

    @property
    def n_summaries(self) -> int:
        return int(np.sum(self.kept))


@result(meta=(), eq=False)
class SummaryResult:
    """``masks`` for the selected images (``image_indices`` into the caller's arrays) and
    ``classes`` {class index: :class:`ClassSummary`}; ``counts()`` = summaries per class."""

    image_indices: np.ndarray
    masks: _masks.MaskResult
    classes: dict

    def counts(self) -> dict[int, int]:
        return {c: s.n_summaries for c, s in self.classes.items()}


def _empty(class_index, status, message, image_indices, empty=None) -> ClassSummary:
    warnings.warn(f"visual summaries, class {class_index}: {message}", stacklevel=3)
    z = np.zeros(0, np.int64)
    return ClassSummary(class_index, status, message, np.asarray(image_indices, np.int64),
                        _regions.Regions(z, np.zeros((0, 4), np.int64), np.zeros(0, np.int8)),
                        np.zeros((0, 0), np.float32), z, [], np.zeros(0), np.zeros(0, bool),
                        np.asarray(empty if empty is not None else z, np.int64))


def summarise_regions(images, sharp_masks, *, class_index: int = 0, image_indices=None,
                      features=None, crop_size: int = 32, max_members: int = 10,
                      ssim_threshold: float = 0.9, preference_factor: float = 1.3,
                      min_inside: float = 0.75, mask_threshold: float = 0.5,
                      proposals: bool = True, components: bool = True,
                      damping: float = 0.9, max_iter: int = 1000,
                      convergence_iter: int = 100) -> ClassSummary:
    """Stage 2 for the images of one class: regions -> similarity -> AP -> cleaning.

    ``images`` (n, H, W, C) in [0, 1] for crops/SSIM; ``sharp_masks`` (n, H, W);
    ``features``: None for HOG appearance, or (n, h, w, D) feature maps whose average over
    a region is its descriptor. ``image_indices`` labels the images in the result.
    """
    as_float_array(images, "images", ndim=4)
    as_float_array(sharp_masks, "sharp_masks", ndim=3)
    images = np.asarray(images, np.float32)
    n, h, w, _ = images.shape
    if sharp_masks.shape != (n, h, w):
        raise InputError(f"sharp_masks: expected shape {(n, h, w)}, got {sharp_masks.shape}")
    ids = np.arange(n) if image_indices is None else np.asarray(image_indices, np.int64)
    binary = _regions.binarise(sharp_masks, mask_threshold)
    empty = ids[~binary.any((1, 2))]
    if empty.size == n:
        return _empty(class_index, "empty_masks", f"all {n} mask(s) collapsed to empty (no "
                      "pixel deleted); no regions", ids, empty)
    cand = _regions.candidate_regions(binary, min_inside=min_inside, proposals=proposals,
                                      components=components)
    if len(cand) == 0:
        return _empty(class_index, "empty_masks", "no region survived the "
                      f"{min_inside:.0%}-inside rule", ids, empty)

    def descriptors(reg):
        if features is None:
            return _regions.hog_descriptors(images, reg)
        return _regions.pooled_descriptors(features, reg, (h, w))

    sim = _regions.region_similarity(descriptors(cand), cand, (h, w))
    other = cand.image_ids[:, None] != cand.image_ids[None, :]
    keep = []
    top = np.sort(np.where(other, sim, -np.inf), axis=1)[:, ::-1][:, :100]
    score = np.array([t[np.isfinite(t)].mean() if np.isfinite(t).any() else 0.0 for t in top])
    for i in np.unique(cand.image_ids):
        idx = np.flatnonzero(cand.image_ids == i)
        keep.append(idx[_regions.prune_redundant(cand.boxes[idx], score[idx])])
    keep = np.sort(np.concatenate(keep))
    reg = cand.take(keep)
    sim = sim[np.ix_(keep, keep)]
    if len(reg) == 1:
        return dataclasses.replace(
            _empty(class_index, "single_region", "only one region in total: nothing to "
                   "cluster, no summary", ids, empty),
            regions=reg, similarity=sim,
            labels=np.zeros(1, np.int64))
    shifted, pref = _cluster.shifted_similarity(sim, preference_factor)
    ap = _cluster.affinity_propagation(shifted, pref, damping=damping, max_iter=max_iter,
                                       convergence_iter=convergence_iter)
    members = _cluster.cluster_members(ap.labels, ap.exemplars, sim, reg.image_ids,
                                       max_members)
    sizes = np.array([len(m) for m in members])
    m_max = int(max(max_members, 2))
    grey = np.asarray(_regions.crop_regions(images, reg, crop_size)).mean(-1)
    padded = np.zeros((_regions._bucket(len(members), 4), m_max, crop_size, crop_size),
                      np.float32)
    for k, m in enumerate(members):
        padded[k, :len(m)] = grey[m]
    pw = np.asarray(_cluster.pairwise_ssim(padded))[:len(members)]
    kept, coherence = _cluster.coherent_clusters(pw, sizes, ssim_threshold)
    status, message = "ok", (f"{int(kept.sum())} summaries from {len(members)} clusters of "
                             f"{len(reg)} regions")
    if not np.any(sizes >= 2):
        status = "no_recurring_cluster"
        message = (f"all {len(members)} cluster(s) of {len(reg)} regions lie in a single "
                   "image; no summary")
        warnings.warn(f"visual summaries, class {class_index}: {message}", stacklevel=2)
    return ClassSummary(class_index, status, message, ids, reg, sim, ap.labels, members,
                        coherence, kept, empty)


def visual_summaries(classifier, images, labels, classes: Sequence[int] | None = None, *,
                     images_per_class: int = 10, features: str | Callable | None = None,
                     smooth_steps: int | None = None, sharp_steps: int | None = None,
                     batch_size: int | None = 64, progress: bool = True,
                     baseline: str = "blur", mesh=None, **stage2) -> SummaryResult:
    """Visual summaries of ``classes`` (default: all labels present) for ``classifier``.

    ``classifier``: nnx model (capture convention) or ``logits_fn(images)``; ``images``
    (N, H, W, C) in [0, 1] (the input the classifier takes): an array, or a source that
    is read in chunks (a :class:`~repsim_jax.data.LazyArray`, a
    :class:`~repsim_jax.data.views.MappedView`): the predictions stream ``batch_size``
    images at a time and only the explained images are gathered, by index, so memory is
    bounded by ``batch_size`` and ``images_per_class``, not by N; ``labels`` (N,) true
    classes.
    Per class the first ``images_per_class`` correctly classified images are used; masks
    for all of them are optimised in one vmapped run. ``features``: None (HOG), a layer
    name of an nnx ``classifier`` (its activations pooled over regions), or a function
    ``images -> (N, h, w, D)``. ``baseline`` ("blur" paper, "mean" for small images) goes
    to :func:`.masks.optimise_masks`, as ``mesh`` (devices for the mask batches,
    :mod:`repsim_jax._devices` convention); ``stage2`` to :func:`summarise_regions`.
    """
    from repsim_jax.data import views
    streamed = views.is_source(images)
    if streamed:
        if len(images.shape) != 4:
            raise InputError(f"images: expected 4 dimensions (N, H, W, C), got shape "
                             f"{tuple(images.shape)}")
    else:
        as_float_array(images, "images", ndim=4)
        images = np.asarray(images, np.float32)
    labels = np.asarray(labels)
    check_same_length("images", images, "labels", labels)
    if labels.dtype.kind not in "iu":
        raise InputError(f"labels: expected integer classes, got dtype {labels.dtype}")
    classes = sorted(np.unique(labels).tolist()) if classes is None else list(classes)
    apply, params = _masks.classifier_apply(classifier)
    chunk = batch_size or len(images)
    # predictions chunk by chunk (a lazy source is read ``chunk`` images per request)
    blocks = ((images[a:b] for a, b in _masks._chunks(len(images), chunk)) if not streamed
              else (np.asarray(x, np.float32) for _, x in views.chunks(images, chunk)))
    pred = np.concatenate([np.asarray(_masks._probs(x, params, apply)).argmax(1)
                           for x in blocks])
    correct = pred == labels
    chosen, no_correct = [], []
    for c in classes:
        idx = np.flatnonzero((labels == c) & correct)[:images_per_class]
        (chosen.append(idx) if idx.size else no_correct.append(c))
    sel = np.concatenate(chosen) if chosen else np.zeros(0, np.int64)
    # only the explained images are ever gathered (by index, ``chunk`` per request)
    x_sel = (np.asarray(views.gather(images, sel, chunk), np.float32) if streamed
             else images[sel])
    if streamed and sel.size:
        as_float_array(x_sel, "images", ndim=4)
    if sel.size:
        mres = _masks.optimise_masks(classifier, x_sel, labels[sel],
                                     smooth_steps=smooth_steps, sharp_steps=sharp_steps,
                                     batch_size=batch_size, progress=progress,
                                     baseline=baseline, mesh=mesh)
    else:
        mres = None
    fmaps = None
    if features is not None and sel.size:
        if isinstance(features, str):
            from repsim_jax.models import activations
            fmaps = np.asarray(activations(classifier, x_sel, [features],
                                           batch_size=batch_size)[features])
        elif callable(features):
            fmaps = np.asarray(features(x_sel))
        else:
            raise InputError("features: expected None, a layer name or a function")
    out = {}
    for c in classes:
        if c in no_correct:
            out[c] = _empty(c, "no_correct_images", "no image of this class is classified "
                            "correctly; no summary", np.zeros(0, np.int64))
            continue
        pos = np.flatnonzero(labels[sel] == c)
        out[c] = summarise_regions(x_sel[pos], mres.sharp[pos], class_index=c,
                                   image_indices=sel[pos],
                                   features=None if fmaps is None else fmaps[pos], **stage2)
    return SummaryResult(sel, mres, out)


def summary_purity(class_summary: ClassSummary, concept_masks, *, min_cover: float = 0.25,
                   concepts=None, members=None) -> tuple[np.ndarray, np.ndarray]:
    r"""How much the regions of each summary show the same ground-truth concept.

    A region *shows* concept :math:`c` when at least ``min_cover`` of its box's pixels lie
    in :math:`c`'s mask. A summary's purity is :math:`\max_c` (fraction of its members
    showing :math:`c`). ``concept_masks`` (N, H, W, C) bool align with the caller's images
    (the summary indexes them through ``image_indices``); ``concepts`` restricts the
    candidate concepts (indices), e.g. to object concepts. ``members`` overrides the
    groups (default: the summaries). Returns (purity (S,), best concept index (S,)).
    """
    cs = class_summary
    groups = cs.summaries if members is None else members
    cm = concept_masks
    sel = np.arange(cm.shape[-1]) if concepts is None else np.asarray(concepts)
    cover = np.zeros((len(cs.regions), len(sel)))
    for r in range(len(cs.regions)):
        y0, x0, y1, x1 = cs.regions.boxes[r]
        img = cs.image_indices[cs.regions.image_ids[r]]
        cover[r] = np.asarray(cm[img, y0:y1, x0:x1][..., sel]).mean((0, 1))
    shows = cover >= min_cover
    purity = np.array([shows[g].mean(0).max() if len(g) else np.nan for g in groups])
    best = np.array([sel[shows[g].mean(0).argmax()] if len(g) else -1 for g in groups])
    return purity, best


PARTS = ("whole", "top", "bottom", "left", "right")


def part_labels(class_summary: ClassSummary, instance_map, *, min_object: float = 0.2,
                whole: float = 0.6) -> np.ndarray:
    r"""Which part of a ground-truth object each region of a class shows.

    ``instance_map`` (N, H, W) int: the object instance covering each pixel (-1 = none),
    aligned with the caller's images (the summary indexes them through ``image_indices``),
    e.g. ``repsim_shapes``' ``object_map``. For a region with box :math:`B` let
    :math:`k^* = \arg\max_k |B \cap O_k|` be its dominant instance. The region shows

    * nothing (label -1) if :math:`|B \cap O_{k^*}| < ` ``min_object`` :math:`|B|`;
    * the *whole* object (0, ``PARTS[0]``) if it covers more than ``whole`` of it,
      :math:`|B \cap O_{k^*}| > ` ``whole`` :math:`|O_{k^*}|`;
    * otherwise the object's top / bottom / left / right part (1-4): the side of the
      object's centroid on which the box centre lies, along the axis of larger offset.

    These are the "parts" a summary should show consistently across images (the paper's
    head / legs / wings / tail). Box sums come from one summed-area table per instance.
    Returns (R,) int labels indexing :data:`PARTS` (-1: no object).
    """
    cs = class_summary
    inst = np.asarray(instance_map)
    if inst.ndim != 3:
        raise InputError(f"instance_map: expected (N, H, W) ints, got shape {inst.shape}")
    if len(cs.regions) == 0:
        return np.zeros(0, np.int64)
    imgs = cs.image_indices[cs.regions.image_ids]
    n_inst = int(max(inst.max() + 1, 1))
    used, local = np.unique(imgs, return_inverse=True)
    onehot = inst[used][..., None] == np.arange(n_inst)              # (n, H, W, K)
    sat = np.pad(onehot.cumsum(1).cumsum(2), ((0, 0), (1, 0), (1, 0), (0, 0)))
    y0, x0, y1, x1 = cs.regions.boxes.T
    inside = (sat[local, y1, x1] - sat[local, y0, x1] - sat[local, y1, x0]
              + sat[local, y0, x0])                                  # (R, K)
    k = inside.argmax(1)
    hit = inside[np.arange(len(k)), k]
    area = (y1 - y0) * (x1 - x0)
    size = onehot.sum((1, 2))                                        # (n, K) |O_k|
    h, w = inst.shape[1:]
    yy, xx = np.mgrid[:h, :w]
    cy = np.einsum("nhwk,hw->nk", onehot, yy + 0.5) / np.maximum(size, 1)
    cx = np.einsum("nhwk,hw->nk", onehot, xx + 0.5) / np.maximum(size, 1)
    total = size[local, k]
    dy, dx = (y0 + y1) / 2 - cy[local, k], (x0 + x1) / 2 - cx[local, k]
    side = np.where(np.abs(dy) >= np.abs(dx), np.where(dy > 0, 2, 1), np.where(dx > 0, 4, 3))
    labels = np.where(hit > whole * total, 0, side)
    return np.where((hit >= min_object * area) & (hit > 0), labels, -1).astype(np.int64)


def label_purity(labels, groups) -> np.ndarray:
    r"""Purity of each group of regions under per-region ``labels`` (-1 = no label).

    :math:`\mathrm{purity}(G) = \max_{l \ge 0} |\{r \in G : \ell_r = l\}| / |G|`: the
    fraction of members sharing the group's most common label; unlabelled members (e.g.
    regions on no object) count against it. Returns (len(groups),) (NaN for empty groups).
    """
    labels = np.asarray(labels)
    out = np.full(len(groups), np.nan)
    for i, g in enumerate(groups):
        g = np.asarray(g, np.int64)
        if g.size:
            lab = labels[g]
            lab = lab[lab >= 0]
            out[i] = np.bincount(lab).max() / g.size if lab.size else 0.0
    return out
