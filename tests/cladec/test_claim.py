"""The seed's claim, measured: for the deepest layer, a classifier retrained on ClaDec
reconstructions beats one retrained on the reference auto-encoder's reconstructions, while
the auto-encoder reconstructs the input better."""
import os
from pathlib import Path

import numpy as np
import pytest

from repsim_jax.cladec import (fit_cladec, fit_reference_ae, plot_cladec_grid, reconstruct,
                               reconstruct_ae, reconstruction_error, retrain_accuracy,
                               saliency_comparison)

ALPHAS = (0.01, 0.1, 0.5)


def claim_numbers(model, layer, xtr, ytr, xte, yte, *, alphas=ALPHAS, cladec_steps, ae_steps,
                  retrain_steps, lr=1e-3, ae_lr=3e-3, batch_size=64):
    fit = fit_cladec(model, xtr, ytr, layer, alphas, steps=cladec_steps, lr=lr,
                     batch_size=batch_size, progress=False)
    ae = fit_reference_ae(model, xtr, layer, steps=ae_steps, lr=ae_lr, batch_size=batch_size,
                          progress=False)
    train_sets = {a: reconstruct(fit, xtr, layer, a) for a in alphas}
    test_sets = {a: reconstruct(fit, xte, layer, a) for a in alphas}
    train_sets["ae"], test_sets["ae"] = reconstruct_ae(ae, xtr, layer), reconstruct_ae(ae, xte,
                                                                                        layer)
    acc = retrain_accuracy(model, train_sets, ytr, test_sets, yte, steps=retrain_steps,
                           progress=False)
    err = {k: reconstruction_error(xte, v) for k, v in test_sets.items()}
    return fit, ae, acc, err, test_sets


def _report(name, acc, err):
    lines = [f"{name}: set | retrained test accuracy | reconstruction error (sum sq / image)"]
    lines += [f"  {k!s:>6} | {acc[k]:.3f} | {err[k]:.2f}" for k in acc]
    print("\n".join(lines))


@pytest.mark.slow
def test_claim_on_digits(digits, digits_classifier, tmp_path):
    xtr, ytr, xte, yte = digits
    fit, ae, acc, err, test_sets = claim_numbers(
        digits_classifier, "fc1", xtr, ytr, xte, yte, cladec_steps=300, ae_steps=600,
        retrain_steps=300)
    _report("digits fc1", acc, err)
    assert err["ae"] < min(err[a] for a in (0.1, 0.5))          # AE reconstructs better
    for a in (0.1, 0.5):
        assert acc[a] > acc["ae"] + 0.01, (a, acc)              # ClaDec keeps more class info
    assert err[0.01] < err[0.1] < err[0.5]                      # alpha trades fidelity
    png = plot_cladec_grid(fit, ae, xte, tmp_path / "digits.png", n=6)
    assert Path(png).stat().st_size > 1000
    comp = saliency_comparison(digits_classifier, xte[:200], yte[:200], test_sets[0.5][:200],
                               test_sets["ae"][:200])
    print("deletion areas (lower = more class-relevant pixels):", comp["area"])
    assert comp["area"]["gradient"] < comp["area"]["random"]


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("REPSIM_CLADEC_CONCEPT"),
                    reason="standalone ~90 s at load ~2, but under pytest (8 forced host "
                           "devices, shared machine) it passed 400 s unfinished; set "
                           "REPSIM_CLADEC_CONCEPT=1 to run (numbers in the docstring)")
def test_claim_on_builtin_concept_data(tmp_path):
    """The claim on the built-in shapes data, deepest hidden layer ``classifier.1`` of small_vgg.

    Opt-in. Sized to fit ~90 s of a 2-core CPU when run as a script: 300 train / 400 test images (64x64), batch 16, one
    alpha (0.1), 30 ClaDec / 30 AE / 30 retrain steps. Measured (7 classes, chance ~0.14):

    ======  =======================  ===================================
    set     retrained test accuracy  reconstruction error (sum sq/image)
    ======  =======================  ===================================
    0.1     0.260                    1530.8
    ae      0.133                    964.2
    ======  =======================  ===================================

    Time at load ~2.3 (compiles included): fit_cladec 12 s, fit_reference_ae 19 s,
    reconstruct 10 s, retrain_accuracy 47 s. A larger run (500 train, batch 32, 30/60/30
    steps) gave 0.443 vs 0.260 and errors 1541 vs 859 but took ~500 s at load ~10; the
    original 1000-image / 3-alpha / 300-600-300-step configuration was never completed on CPU.
    Every step is a forward/backward of the 64x64 VGG, so retraining dominates.
    """
    zoo = pytest.importorskip("repsim_jax.models.zoo")
    shapes = pytest.importorskip("repsim_jax.data.shapes")
    model, info = zoo.load_trained("small_vgg")
    train, test = shapes.load("train"), shapes.load("test")
    xtr, ytr = np.asarray(train.images[:300]), np.asarray(train.labels[:300])
    xte, yte = np.asarray(test.images[:400]), np.asarray(test.labels[:400])
    deepest = "classifier.1"         # the last hidden layer (classifier.2 are the logits)
    fit, ae, acc, err, _ = claim_numbers(model, deepest, xtr, ytr, xte, yte, alphas=(0.1,),
                                         cladec_steps=30, ae_steps=30, retrain_steps=30,
                                         batch_size=16)
    _report(f"shapes {deepest}", acc, err)
    assert err["ae"] < 0.8 * err[0.1], err                      # AE reconstructs better
    assert acc[0.1] > acc["ae"] + 0.05, acc                     # ClaDec keeps more class info
