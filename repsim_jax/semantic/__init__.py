"""repsim_jax.semantic: semantic (permutation-invariant) RSMs, Wald et al., NeurIPS 2024.

>>> K = rsm(reps, kernel="cosine", matcher="exact")          # (N, N)
>>> Ks = rsm({"layer1": a, "layer2": b}, kernel="rbf")       # {layer: (N, N)}
>>> info = rsm(reps, matcher="auction", tol=1e-3, return_info=True)   # certified
>>> compare(Ks)                                # layer x layer, debiased CKA (labelled)

Modules: :mod:`.geometry` (cost matrices, kernels, bounds), :mod:`.problem` (matching
problem, :class:`Matching`), :mod:`.solvers` (one matcher per module, registry,
:func:`matcher_options`), :mod:`.schedule` (tiles / work items over host threads and
devices), :mod:`.host`, :mod:`.rsm` (pair blocks -> N x N), :mod:`.matching` (the matchers'
stable entry point), :mod:`.compare` (CKA, RSA), :mod:`.evaluate` (retrieval F1@1, JSD).
"""
from repsim_jax.semantic.compare import (COMPARISONS, RSMComparison, cka, compare,
                                         upper_triangle)
from repsim_jax.semantic.evaluate import (jensen_shannon, jsd_alignment, retrieval_f1,
                                          retrieve, top1_agreement)
from repsim_jax.semantic.matching import (MATCHERS, Matching, auction_lanes, auction_matching,
                                          check_options, exact_matching, greedy_matching,
                                          host_solver_name, hungarian_matching, match,
                                          matcher_options, sinkhorn_matching, solve,
                                          solve_exact_host)
from repsim_jax.semantic.rsm import (KERNELS, SemanticRSM, kernel_from_statistics,
                                     pair_statistics, rsm)

__all__ = [
    "rsm", "SemanticRSM", "KERNELS", "MATCHERS", "COMPARISONS", "compare", "RSMComparison",
    "cka", "upper_triangle", "retrieve", "retrieval_f1", "top1_agreement", "jensen_shannon",
    "jsd_alignment", "match", "solve", "Matching", "matcher_options", "check_options",
    "exact_matching", "greedy_matching", "hungarian_matching", "sinkhorn_matching",
    "auction_matching", "auction_lanes",
    "solve_exact_host", "host_solver_name", "kernel_from_statistics", "pair_statistics",
]
