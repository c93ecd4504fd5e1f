"""Layer x layer concept comparison of one model or two models on the same inputs.

Glue between the concept extractors (:mod:`~repsim_jax.concepts.net2vec`,
:mod:`~repsim_jax.concepts.nmf`) and the kernel
(:func:`~repsim_jax.concepts.pairwise_similarity`): concept maps of every layer are
brought to one resolution, stacked, and compared in ONE batched call; the resulting
(La, Lb, k1, k2) array is reduced to a (La, Lb) layer matrix.

* supervised (Net2Vec): the same named concept in both layers -> one similarity per
  concept; layer score = mean over the shared concepts;
* unsupervised (ICE): NMF concepts per layer; layer score = best match (default) or
  Hungarian one-to-one matching of the k1 x k2 matrix.

Defaults (the paper's exact formula is not public, so these are choices):

* supervised: ``set_iou`` at 0.5 — the binarisation Net2Vec itself is evaluated with, so a
  similarity of 1 means "the two layers segment the concept identically";
* unsupervised: ``pearson`` — NMF codes of different layers have arbitrary, unrelated
  scales, and Pearson is invariant to scale and offset while still using the continuous
  maps (set IoU would need a per-concept threshold, see ``quantile``); best-match rather
  than Hungarian because layers may split one concept into several NMF components.

Relative depth is a layer's POSITION in the given mapping (``(i + 1) / L``), so pass the
layers in forward order (``repsim_jax.models.activations`` returns them in the order
requested). A rule that does not pick layers by outcome: the main-path output of every
stage / block before pooling (e.g. every conv stage's ReLU of a VGG, the stem ReLU and
every residual block of a ResNet).

The seed's finding on the built-in data (tests/concepts/test_integration.py): small_vgg
(4 stages) vs small_resnet (stem + 4 blocks), 150 test images, every named concept found
in both models; the most similar layer of the other model advances with relative depth in
BOTH directions — Spearman 0.95 / 0.95 (Net2Vec, set IoU, shared-concept mean) and
0.95-1.0 / 0.95 (ICE, Pearson, best match or Hungarian), first layer <-> first layer and
last <-> last, stable over three disjoint subsets and with soft IoU / Pearson / set IoU at
16x16, 8x8 or 4x4. (An earlier weak result, Spearman 0.11, came from layers silently
sorted by name — ``features.10`` before ``features.2`` — not from the metric or the
resolution.)
"""
from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import jax.numpy as jnp
import numpy as np

from repsim_jax._checks import InputError, unknown_name
from repsim_jax._results import result
from repsim_jax.concepts.net2vec import Net2VecResult, concept_probability_maps
from repsim_jax.concepts.nmf import ICEConcepts, ice_fit
from repsim_jax.concepts.similarity import (best_layer_matches, layer_scores,
                                            pairwise_similarity, plot_layer_similarity,
                                            plot_relative_depth, quantile_thresholds,
                                            shared_concept_similarity, stack_layers)

__all__ = ["LayerComparison", "net2vec_layer_similarity", "ice_layer_similarity"]


@result(meta=("layers_a", "layers_b", "metric", "how", "concept_names"))
class LayerComparison:
    """A layer x layer concept-similarity matrix and what it came from: the one result type
    of :func:`net2vec_layer_similarity` and :func:`ice_layer_similarity`.

    Attributes:
      matrix: (La, Lb) layer scores.
      layers_a, layers_b: layer names (rows, columns).
      concept_similarity: (La, Lb, K) per shared concept (supervised) or
        (La, Lb, k1, k2) concept x concept (unsupervised).
      metric: the concept similarity metric; how: the layer aggregation.
      concept_names: shared concept names (supervised) or None.
      concepts_a, concepts_b: ``{layer: ICEConcepts}`` fitted (unsupervised) or None.

    Unpacking ``comp, concepts_a, concepts_b = ice_layer_similarity(...)`` (the 3-tuple
    this function returned before) still works through ``__iter__``; deprecated.
    """
    matrix: np.ndarray
    layers_a: tuple
    layers_b: tuple
    concept_similarity: np.ndarray
    metric: str
    how: str
    concept_names: tuple | None = None
    concepts_a: dict | None = None
    concepts_b: dict | None = None

    def __iter__(self):
        return iter((self, self.concepts_a, self.concepts_b))

    def score(self, layer_a: str, layer_b: str) -> float:
        """The layer score of one named pair."""
        for name, names in ((layer_a, self.layers_a), (layer_b, self.layers_b)):
            if name not in names:
                raise unknown_name("layer", name, list(names))
        return float(self.matrix[self.layers_a.index(layer_a), self.layers_b.index(layer_b)])

    def best_matches(self):
        """:class:`~repsim_jax.concepts.LayerMatches` of the most similar B layer for every
        A layer, with the layer names (unpacks as ``(index, relative_depth_b, spearman)``;
        see :func:`~repsim_jax.concepts.best_layer_matches`)."""
        return best_layer_matches(self.matrix, layers_a=self.layers_a,
                                  layers_b=self.layers_b)

    def plot(self, path=None, *, label_a="model A", label_b="model B"):
        """Heatmap of :attr:`matrix` (matplotlib figure)."""
        return plot_layer_similarity(self.matrix, self.layers_a, self.layers_b,
                                     title=f"concept similarity ({self.metric}, {self.how})",
                                     label_a=label_a, label_b=label_b, path=path)

    def plot_relative_depth(self, path=None, *, label_a="model A", label_b="model B"):
        """Relative-depth view of :attr:`matrix` (matplotlib figure)."""
        return plot_relative_depth(self.matrix, label_a=label_a, label_b=label_b, path=path)


def _common_size(shapes: Sequence, size):
    if size is not None:
        return int(size[0]), int(size[1])
    return max((tuple(s[:2]) for s in shapes), key=lambda s: s[0] * s[1])


def net2vec_layer_similarity(result_a: Net2VecResult, acts_a: Mapping, result_b: Net2VecResult,
                             acts_b: Mapping, *, metric: str = "set_iou", threshold=0.5,
                             size: Sequence[int] | None = None, **kwargs) -> LayerComparison:
    """Supervised layer x layer similarity: Net2Vec probability maps of every trained layer of
    A and B on the same inputs, compared concept by concept for the concepts named in both;
    layer score = mean over those concepts. ``size`` is the common map resolution (default:
    the largest layer resolution of the two)."""
    shapes = [np.shape(acts_a[n])[1:3] for n in result_a.layers] + \
             [np.shape(acts_b[n])[1:3] for n in result_b.layers]
    size = _common_size(shapes, size)
    maps_a = concept_probability_maps(result_a, acts_a, size)
    maps_b = concept_probability_maps(result_b, acts_b, size)
    per_concept, shared = shared_concept_similarity(maps_a, result_a.concept_names, maps_b,
                                                    result_b.concept_names, metric, threshold,
                                                    **kwargs)
    per_concept = np.asarray(per_concept)
    return LayerComparison(per_concept.mean(-1), tuple(result_a.layers),
                           tuple(result_b.layers), per_concept, metric, "shared_concepts",
                           tuple(shared))


def _ice_maps(acts: Mapping, k, size, concepts, nmf_kwargs):
    if concepts is None:
        concepts = {n: ice_fit(a, k, layer=n, **nmf_kwargs) for n, a in acts.items()}
    missing = [n for n in acts if n not in concepts]
    if missing:
        raise InputError(f"concepts: no ICE concepts for layer(s) {', '.join(missing)}")
    return stack_layers([concepts[n].maps for n in acts], size), concepts


def ice_layer_similarity(acts_a: Mapping, acts_b: Mapping | None = None, k: int = 10, *,
                         metric: str = "pearson", how: str = "best_match",
                         size: Sequence[int] | None = None, quantile: float = 0.9,
                         concepts_a: Mapping[str, ICEConcepts] | None = None,
                         concepts_b: Mapping[str, ICEConcepts] | None = None,
                         **kwargs) -> LayerComparison:
    """Unsupervised layer x layer similarity: ICE (NMF) concepts of every layer, concept maps
    stacked at one resolution, compared pairwise, reduced per layer pair by ``how``
    (``"best_match"`` or ``"hungarian"``). ``acts_b=None`` compares A with itself. For
    ``"set_iou"`` each concept map is binarised at its own ``quantile`` (NMF codes have no
    common scale); for ``"soft_iou"`` each map is divided by its maximum.

    Returns a :class:`LayerComparison` with the fitted ICE concepts by layer in
    ``concepts_a`` / ``concepts_b`` (it unpacks like the former 3-tuple
    ``(comparison, concepts_a, concepts_b)``).
    Extra keyword arguments go to :func:`~repsim_jax.concepts.pairwise_similarity`.
    """
    nmf_kwargs = {key: kwargs.pop(key) for key in ("max_iter", "tol", "init", "solver")
                  if key in kwargs}
    same = acts_b is None
    acts_b = acts_a if same else acts_b
    shapes = [np.shape(a)[1:3] for a in acts_a.values()] + \
             [np.shape(a)[1:3] for a in acts_b.values()]
    size = _common_size(shapes, size)
    maps_a, concepts_a = _ice_maps(acts_a, k, size, concepts_a, nmf_kwargs)
    if same:
        maps_b, concepts_b = maps_a, concepts_a
    else:
        maps_b, concepts_b = _ice_maps(acts_b, k, size, concepts_b, nmf_kwargs)
    threshold = kwargs.pop("threshold", 0.5)
    if metric == "set_iou":
        threshold = (quantile_thresholds(maps_a, quantile), quantile_thresholds(maps_b, quantile))
    elif metric == "soft_iou":
        def scaled(m):
            mx = jnp.max(m, axis=(1, 2, 3), keepdims=True)
            return m / jnp.where(mx > 0, mx, 1.0)
        maps_a, maps_b = scaled(maps_a), scaled(maps_b)
    S = np.asarray(pairwise_similarity(maps_a, maps_b, metric, threshold, **kwargs))
    return LayerComparison(np.asarray(layer_scores(S, how)), tuple(acts_a), tuple(acts_b), S,
                           metric, how, None, dict(concepts_a), dict(concepts_b))
