"""Concept-based comparison of layers and models (Mikriukov et al. 2023).

* :mod:`~repsim_jax.concepts.nmf` — JAX NMF (HALS / multiplicative updates, NNDSVD init,
  NNLS transform) and ICE unsupervised concept vectors, reconstruction error, fidelity.
* :mod:`~repsim_jax.concepts.net2vec` — Net2Vec supervised concept filters, all concepts x
  layers trained in one vmapped optax loop; set IoU on a test set; k-fold.
* :mod:`~repsim_jax.concepts.similarity` — the kernel: pairwise concept similarity (set IoU,
  soft IoU, cosine, Pearson) of all layer pairs in one batched, chunked jit call; layer
  scores (shared concepts, best match, Hungarian); layer x layer heatmaps and the
  relative-depth view.
* :mod:`~repsim_jax.concepts.rsvc` — RSVC-style shared / unique concepts across models.
* :mod:`~repsim_jax.concepts.compare` — end-to-end comparison of two models' layers.
"""
from repsim_jax.concepts.nmf import (ICEConcepts, NMFResult, fidelity, ice_fit, ice_reconstruct,
                                     ice_transform, nmf, nmf_transform, nndsvd,
                                     reconstruction_error)
from repsim_jax.concepts.net2vec import (LOSSES, Net2VecConfig, Net2VecResult, concept_alpha,
                                         concept_probability_maps, evaluate_net2vec, net2vec,
                                         Net2VecKFold, net2vec_kfold, net2vec_loss,
                                         train_net2vec)
from repsim_jax.concepts.similarity import (METRICS, LayerMatches, best_layer_matches, best_match_score,
                                            hungarian_score, layer_scores,
                                            pairwise_similarity, plot_layer_similarity,
                                            plot_relative_depth, quantile_thresholds,
                                            relative_depth, resize_maps,
                                            shared_concept_similarity, stack_layers)
from repsim_jax.concepts.rsvc import (RSVCComparison, RSVCResult, ridge_concept_prediction,
                                      rsvc_compare, rsvc_similarity)
from repsim_jax.concepts.compare import (LayerComparison, ice_layer_similarity,
                                         net2vec_layer_similarity)

__all__ = [
    "nmf", "NMFResult", "nmf_transform", "nndsvd", "reconstruction_error", "ICEConcepts",
    "ice_fit", "ice_transform", "ice_reconstruct", "fidelity",
    "LOSSES", "Net2VecConfig", "Net2VecResult", "concept_alpha", "net2vec_loss",
    "train_net2vec", "evaluate_net2vec", "net2vec", "net2vec_kfold", "Net2VecKFold",
    "concept_probability_maps",
    "METRICS", "pairwise_similarity", "resize_maps", "stack_layers", "quantile_thresholds",
    "shared_concept_similarity", "layer_scores", "best_match_score", "hungarian_score",
    "relative_depth", "best_layer_matches", "LayerMatches", "plot_layer_similarity",
    "plot_relative_depth",
    "RSVCResult", "RSVCComparison", "ridge_concept_prediction", "rsvc_similarity",
    "rsvc_compare",
    "LayerComparison", "ice_layer_similarity", "net2vec_layer_similarity",
]
