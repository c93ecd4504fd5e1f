"""repsim_jax.semantic: semantic (permutation-invariant) RSMs, Wald et al., NeurIPS 2024.

>>> K = rsm(reps, kernel="cosine", matcher="exact")          # (N, N)
>>> Ks = rsm({"layer1": a, "layer2": b}, kernel="rbf")       # {layer: (N, N)}
>>> compare(Ks)                                # layer x layer, debiased CKA (labelled)

Modules: :mod:`.matching` (matchers), :mod:`.rsm` (pair blocks -> N x N, kernels),
:mod:`.compare` (CKA, RSA), :mod:`.evaluate` (retrieval F1@1, JSD alignment).
"""
from repsim_jax.semantic.compare import (COMPARISONS, RSMComparison, cka, compare,
                                         upper_triangle)
from repsim_jax.semantic.evaluate import (jensen_shannon, jsd_alignment, retrieval_f1,
                                          retrieve, top1_agreement)
from repsim_jax.semantic.matching import (MATCHERS, auction_lanes, auction_matching,
                                          exact_matching, greedy_matching,
                                          host_solver_name, hungarian_matching, match,
                                          sinkhorn_matching, solve_exact_host)
from repsim_jax.semantic.rsm import KERNELS, kernel_from_statistics, pair_statistics, rsm

__all__ = [
    "rsm", "KERNELS", "MATCHERS", "COMPARISONS", "compare", "RSMComparison", "cka", "upper_triangle",
    "retrieve", "retrieval_f1", "top1_agreement", "jensen_shannon", "jsd_alignment",
    "match", "exact_matching", "greedy_matching", "hungarian_matching", "sinkhorn_matching",
    "auction_matching", "auction_lanes",
    "solve_exact_host", "host_solver_name", "kernel_from_statistics", "pair_statistics",
]
