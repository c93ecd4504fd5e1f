"""Visual summaries (Godi et al., BMVC 2018): what parts of its images a classifier uses.

Stage 1, :mod:`.masks`: sparse blur-perturbation masks per image (smooth then sharp pass),
vmapped over many images. Stage 2, :mod:`.regions` + :mod:`.cluster`: regions of the sharp
masks, appearance x geometric-consistency similarity (the documented substitute for
Proposal Flow), affinity propagation and SSIM cleaning. :mod:`.pipeline` runs both stages
per class; :mod:`.plots` draws the summaries and masks.
"""
from repsim_jax.summaries.cluster import (APResult, affinity_propagation, cluster_members,
                                          coherent_clusters, pairwise_ssim, shifted_similarity,
                                          ssim)
from repsim_jax.summaries.masks import (SHARP_PASS, SMOOTH_PASS, MaskPass, MaskResult,
                                        optimise_masks)
from repsim_jax.summaries.pipeline import (PARTS, ClassSummary, SummaryResult, label_purity,
                                           part_labels, summarise_regions, summary_purity,
                                           visual_summaries)
from repsim_jax.summaries.plots import save_masks, save_summaries, summary_strip
from repsim_jax.summaries.regions import (Regions, binarise, candidate_regions, hog,
                                          region_similarity)

__all__ = [
    "APResult", "affinity_propagation", "cluster_members", "coherent_clusters",
    "pairwise_ssim", "shifted_similarity", "ssim", "SHARP_PASS", "SMOOTH_PASS", "MaskPass",
    "MaskResult", "optimise_masks", "ClassSummary", "SummaryResult", "summarise_regions",
    "summary_purity", "PARTS", "part_labels", "label_purity",
    "visual_summaries", "save_masks", "save_summaries", "summary_strip", "Regions",
    "binarise", "candidate_regions", "hog", "region_similarity",
]
