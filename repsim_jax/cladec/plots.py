"""Pictures: input / ClaDec / reference-AE grids per layer and alpha, deletion curves (PNG)."""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from repsim_jax._checks import InputError

__all__ = ["plot_rows", "plot_cladec_grid", "plot_deletion_curves"]


def _agg():
    from repsim_jax import _plotting as plt
    return plt


def _show(ax, img):
    img = np.clip(np.asarray(img, np.float32), 0, 1)
    if img.shape[-1] == 1:
        ax.imshow(img[..., 0], cmap="gray", vmin=0, vmax=1)
    else:
        ax.imshow(img)
    ax.set_xticks([])
    ax.set_yticks([])


def plot_rows(rows: Mapping[str, np.ndarray], path, *, n: int = 8, title: str | None = None):
    """Writes a PNG grid: one row per ``{label: images (N, H, W, C)}``, ``n`` columns."""
    if not rows:
        raise InputError("rows: nothing to plot")
    n = min(n, *(len(v) for v in rows.values()))
    plt = _agg()
    fig, axes = plt.subplots(len(rows), n, figsize=(1.2 * n + 1.6, 1.25 * len(rows)),
                             squeeze=False)
    for r, (label, imgs) in enumerate(rows.items()):
        if np.asarray(imgs).ndim != 4:
            raise InputError(f"rows[{label!r}]: expected (N, H, W, C) images")
        for c in range(n):
            _show(axes[r, c], imgs[c])
        axes[r, 0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_cladec_grid(cladec_fit, ae_fit, images, path, *, layers: Sequence[str] | None = None,
                     alphas: Sequence[float] | None = None, n: int = 8):
    """PNG grid: the inputs, then per layer the ClaDec row of every alpha and the AE row."""
    from repsim_jax.cladec.train import reconstruct, reconstruct_ae
    images = np.asarray(images[:n], np.float32)
    members = cladec_fit.members
    layers = list(dict.fromkeys(l for l, _ in members)) if layers is None else list(layers)
    rows = {"input": images}
    for layer in layers:
        for l, a in members:
            if l == layer and (alphas is None or any(np.isclose(a, b) for b in alphas)):
                rows[f"{layer}\nClaDec a={a:g}"] = reconstruct(cladec_fit, images, layer, a)
        if ae_fit is not None and layer in ae_fit.layers:
            rows[f"{layer}\nref. AE"] = reconstruct_ae(ae_fit, images, layer)
    return plot_rows(rows, path, n=n, title="input / ClaDec / reference auto-encoder")


def plot_deletion_curves(comparison: dict, path, *, title: str = "deletion test"):
    """PNG of :func:`~repsim_jax.cladec.evaluate.saliency_comparison` curves."""
    plt = _agg()
    fig, ax = plt.subplots(figsize=(4.5, 3.4))
    for name, curve in comparison["curves"].items():
        ax.plot(comparison["fractions"], curve, marker="o",
                label=f"{name} (area {comparison['area'][name]:.3f})")
    ax.set_xlabel("fraction of pixels deleted (most relevant first)")
    ax.set_ylabel("true-class probability")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
