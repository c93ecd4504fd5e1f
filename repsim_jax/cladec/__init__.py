"""ClaDec: explain a layer by decoding it, against a reference auto-encoder.

Schneider & Vlachos, "Explaining Classifiers by Constructing Familiar Concepts" (2022).
``decoder`` (the decoder and fresh encoders), ``train`` (ClaDec / reference AE, vmapped over
alphas and layers, resumable), ``evaluate`` (reconstruction error, retraining accuracy,
saliency deletion test), ``plots`` (PNG grids).
"""
from repsim_jax.cladec.decoder import Decoder, UpConv, decoder_plan, reinitialize
from repsim_jax.cladec.evaluate import (deletion_curve, difference_map, gradient_saliency,
                                        reconstruction_error, RetrainAccuracy, retrain_accuracy,
                                        SaliencyComparison, saliency_comparison)
from repsim_jax.cladec.plots import plot_cladec_grid, plot_deletion_curves, plot_rows
from repsim_jax.cladec.train import (AutoencoderFit, CladecFit, DecoderGroup, fit_cladec,
                                     fit_reference_ae, reconstruct, reconstruct_ae)

__all__ = ["AutoencoderFit", "CladecFit", "Decoder", "DecoderGroup", "UpConv", "decoder_plan",
           "deletion_curve", "difference_map", "fit_cladec", "fit_reference_ae",
           "gradient_saliency", "plot_cladec_grid", "plot_deletion_curves", "plot_rows",
           "reconstruct", "reconstruct_ae", "reconstruction_error", "reinitialize",
           "RetrainAccuracy", "retrain_accuracy", "SaliencyComparison", "saliency_comparison"]
