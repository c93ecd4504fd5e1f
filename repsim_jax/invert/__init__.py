"""INVERT: label neurons with compositional concept formulas (Bykov et al., NeurIPS 2023).

``explain(activations, labels, concept_names, L=3, B=10, ...)`` runs the beam search of
the paper for every neuron at once (:mod:`.search`), scoring formulas by their exact rank
AUC (:mod:`.auc`); formulas are left-deep chains of literals (:mod:`.formula`). Results:
:class:`InvertResult` (one layer, a sequence of :class:`NeuronBeam`), :class:`InvertLayers`
(a dict of layers). The per-neuron q-values are Benjamini-Hochberg of the nominal p-value
of each neuron's best formula (anti-conservative: the formula was selected);
``explain(permutations=n)`` adds a selection-aware permutation p-value.
"""
from repsim_jax.invert.auc import (ALTERNATIVES, auc_from_rank_sums, benjamini_hochberg,
                                   mann_whitney, mann_whitney_from_rank_sums, rank_auc,
                                   twice_average_ranks)
from repsim_jax.invert.explainer import (PRECISIONS, REDUCTIONS, Explanation, InvertLayers,
                                         InvertResult, NeuronBeam, explain,
                                         reduce_activations, resolve_precision)
from repsim_jax.invert.formula import Formula, evaluate, formula_string, parse
from repsim_jax.invert.search import (ConceptTable, SearchConfig, beam_search, concept_table,
                                      null_best_auc)

__all__ = ["explain", "Explanation", "NeuronBeam", "InvertResult", "InvertLayers",
           "reduce_activations", "resolve_precision", "REDUCTIONS", "PRECISIONS", "rank_auc",
           "mann_whitney", "mann_whitney_from_rank_sums", "benjamini_hochberg",
           "twice_average_ranks", "auc_from_rank_sums", "ALTERNATIVES", "Formula",
           "formula_string", "evaluate", "parse", "ConceptTable", "concept_table",
           "SearchConfig", "beam_search", "null_best_auc"]
