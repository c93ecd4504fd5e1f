"""repsim_jax.similarity: layer-similarity measures that do not mislead.

Every measure is a pure, jit-compiled function of two representations ``X (N, Dx)``,
``Y (N, Dy)`` of the same N inputs, returning a scalar (compiled once per shape and
option set):

>>> cka(X, Y, debiased=True)               # debiased linear CKA (Song et al. 2012 HSIC_u)
>>> rsa(X, Y, rdm="correlation", compare="spearman")
>>> procrustes(X, Y, alpha=1.0)            # angular shape distance (Williams et al. 2021)
>>> cca(X, Y); svcca(X, Y); pwcca(X, Y)    # mean CCA, Raghu 2017, Morcos 2018
>>> mutual_knn(X, Y, k=10); cknna(X, Y)    # Huh et al. 2024
>>> permutation_test("cka_debiased", X, Y, n=1000, key=0).p_value
>>> bootstrap("procrustes", X, Y, n=1000, key=0, level=0.95)
>>> compare_layers(acts_a, acts_b, measures=["cka_debiased", "procrustes"],
...                n_permutations=200, n_bootstrap=200)       # labelled SimilarityTable

Modules: :mod:`.cka` (biased/debiased/minibatch CKA), :mod:`.rsa`, :mod:`.procrustes`,
:mod:`.cca` (CCA/SVCCA/PWCCA), :mod:`.knn` (mutual kNN, CKNNA), :mod:`.stats`
(permutation test, bootstrap), :mod:`.compare` (all layer pairs).
"""
from repsim_jax.similarity._measure import ALIASES, MEASURES
from repsim_jax.similarity.cka import cka, hsic_biased, hsic_unbiased, minibatch_cka, rbf_gram
from repsim_jax.similarity.rsa import RDMS, RSA_COMPARES, rdm, rsa
from repsim_jax.similarity.procrustes import procrustes
from repsim_jax.similarity.cca import canonical_correlations, cca, pwcca, svcca
from repsim_jax.similarity.knn import cknna, mutual_knn
from repsim_jax.similarity.stats import (BootstrapResult, PermutationResult, bootstrap,
                                         permutation_test)
from repsim_jax.similarity.compare import (SPATIAL, LayerMatrix, SimilarityTable,
                                           compare_layers, flatten_layer,
                                           similarity_measures)

MEASURE_NAMES = tuple(sorted({*MEASURES, *ALIASES}))

__all__ = [
    "cka", "minibatch_cka", "hsic_biased", "hsic_unbiased", "rbf_gram", "rsa", "rdm",
    "RDMS", "RSA_COMPARES", "procrustes", "cca", "svcca", "pwcca", "canonical_correlations",
    "mutual_knn", "cknna", "permutation_test", "bootstrap", "PermutationResult",
    "BootstrapResult", "compare_layers", "SimilarityTable", "LayerMatrix", "flatten_layer",
    "SPATIAL", "MEASURE_NAMES", "MEASURES", "similarity_measures",
]
