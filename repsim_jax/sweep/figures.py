"""The report's figures as plain functions of arrays (also called by the notebooks).

Every function takes numpy arrays and names and returns a stand-alone matplotlib
``Figure`` (no pyplot state, see :mod:`repsim_jax._plotting`); :func:`to_png` renders one
to PNG bytes (deterministic: no timestamp in the file), :func:`show` displays one inline in
Jupyter/Colab. ``report.html`` (:mod:`repsim_jax.sweep.report`) is built from exactly these
functions, so a notebook shows the same pictures as the report.

Choices where the issue was silent: RSM inputs are ordered by class with a *stable* sort
(data order kept within a class); class names sit at the centre of their block on both
axes, boundaries are white lines; semantic and spatio-semantic RSMs share one colour scale
(min/max over both); the relative depth of a layer is ``(index + 1) / depth`` over all
capturable layers of its model in forward order; the best-match similarity of a layer of
model A in model B is the maximum over B's swept layers.
"""
from __future__ import annotations

import io
from typing import Mapping, Sequence

import numpy as np

from repsim_jax import _plotting as plt

__all__ = ["class_order", "rsm_pair", "class_thumbnails", "layer_map", "best_match_curves",
           "depth_plot", "activation_histograms", "concept_overlays", "net2vec_heatmap",
           "image_rows", "histogram", "heatmap", "to_png", "show"]


# ------------------------------------------------------------------------------- utility
def to_png(fig, dpi: int = 90) -> bytes:
    """PNG bytes of ``fig`` (no software/date metadata, so equal figures give equal bytes)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def show(fig, dpi: int = 90) -> None:
    """Displays ``fig`` inline (Jupyter, Colab, headless nbclient alike) and closes it (a
    pyplot figure too, so the inline backend does not show it a second time)."""
    import sys

    from IPython.display import Image, display
    display(Image(to_png(fig, dpi)))
    if "matplotlib.pyplot" in sys.modules:
        sys.modules["matplotlib.pyplot"].close(fig)


def class_order(labels) -> tuple[np.ndarray, list[int], list[float], list[int]]:
    """``(order, boundaries, centres, classes)``: inputs ordered by class (stable within a
    class), the positions between class blocks, each block's centre and its class id."""
    labels = np.asarray(labels)
    order = np.argsort(labels, kind="stable")
    sorted_ = labels[order]
    classes, starts, counts = np.unique(sorted_, return_index=True, return_counts=True)
    bounds = [int(s) for s in starts[1:]]
    centres = [float(s + c / 2.0 - 0.5) for s, c in zip(starts, counts)]
    return order, bounds, centres, [int(c) for c in classes]


def _class_axes(ax, bounds, centres, names, n):
    for b in bounds:
        ax.axhline(b - 0.5, color="white", lw=0.8)
        ax.axvline(b - 0.5, color="white", lw=0.8)
    fs = 7 if len(names) <= 12 else 5
    ax.set_xticks(centres)
    ax.set_xticklabels(names, rotation=90, fontsize=fs)
    ax.set_yticks(centres)
    ax.set_yticklabels(names, fontsize=fs)
    ax.set_xlim(-0.5, n - 0.5)
    ax.set_ylim(n - 0.5, -0.5)


def _name(class_names, c) -> str:
    return str(class_names[c]) if class_names is not None and c < len(class_names) else str(c)


# ---------------------------------------------------------------------------------- RSMs
def rsm_pair(semantic, identity, labels=None, class_names=None, *, title: str = "",
             left: str = "semantic", right: str = "spatio-semantic (identity)"):
    """Semantic and spatio-semantic RSMs side by side, inputs ordered by class, one colour
    scale, class boundaries drawn and class names on both axes."""
    S, B = np.asarray(semantic, np.float64), np.asarray(identity, np.float64)
    n = len(S)
    if labels is not None:
        order, bounds, centres, classes = class_order(labels)
        names = [_name(class_names, c) for c in classes]
    else:
        order, bounds, centres, names = np.arange(n), [], [], []
    vmin = float(min(S.min(), B.min()))
    vmax = float(max(S.max(), B.max()))
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.9), layout="constrained")
    im = None
    for ax, M, sub in ((axes[0], S, left), (axes[1], B, right)):
        im = ax.imshow(M[np.ix_(order, order)], cmap="viridis", vmin=vmin, vmax=vmax,
                       interpolation="nearest")
        ax.set_title(sub, fontsize=9)
        if labels is not None:
            _class_axes(ax, bounds, centres, names, n)
        else:
            ax.set_xlabel("input")
            ax.set_ylabel("input")
    fig.colorbar(im, ax=list(axes), fraction=0.03, pad=0.02, label="similarity")
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def class_thumbnails(thumbs, thumb_labels, class_names=None, *, per_class: int = 8):
    """One row per class: the first ``per_class`` inputs of the class (uint8 or [0, 1])."""
    thumbs = np.asarray(thumbs)
    if thumbs.dtype == np.uint8:
        thumbs = thumbs.astype(np.float32) / 255.0
    thumb_labels = np.asarray(thumb_labels)
    classes = [int(c) for c in np.unique(thumb_labels)]
    cols = min(per_class, max(int((thumb_labels == c).sum()) for c in classes))
    fig, axes = plt.subplots(len(classes), cols + 1, squeeze=False,
                             figsize=(0.75 * (cols + 1) + 0.8, 0.75 * len(classes) + 0.3))
    for r, c in enumerate(classes):
        idx = np.flatnonzero(thumb_labels == c)[:cols]
        axes[r, 0].axis("off")
        axes[r, 0].text(1.0, 0.5, _name(class_names, c), ha="right", va="center",
                        fontsize=8, transform=axes[r, 0].transAxes)
        for j in range(cols):
            ax = axes[r, j + 1]
            ax.axis("off")
            if j < len(idx):
                im = thumbs[idx[j]]
                ax.imshow(im[..., 0] if im.shape[-1] == 1 else im, cmap="gray", vmin=0, vmax=1)
    fig.subplots_adjust(left=0.02, right=0.98, top=0.98, bottom=0.02, wspace=0.05, hspace=0.08)
    return fig


# ---------------------------------------------------------------------- layer x layer maps
def heatmap(M, row_labels=None, col_labels=None, *, title: str = "", cbar: str = "",
            vmin=None, vmax=None, xlabel: str = "", ylabel: str = "", cmap="viridis"):
    """A labelled heatmap (labels shown when there are at most 60 per axis)."""
    M = np.asarray(M, np.float64)
    n_r, n_c = M.shape
    w = float(np.clip(0.3 * n_c + 2.2, 3.4, 12))
    h = float(np.clip(0.3 * n_r + 1.8, 2.8, 12))
    fig, ax = plt.subplots(figsize=(w + 0.8, h), layout="constrained")
    im = ax.imshow(M, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest",
                   aspect="auto")
    fig.colorbar(im, ax=ax, fraction=0.05, pad=0.02, label=cbar)
    if row_labels is not None and len(row_labels) == n_r and n_r <= 60:
        ax.set_yticks(range(n_r))
        ax.set_yticklabels([str(l) for l in row_labels], fontsize=7)
    if col_labels is not None and len(col_labels) == n_c and n_c <= 60:
        ax.set_xticks(range(n_c))
        ax.set_xticklabels([str(l) for l in col_labels], rotation=90, fontsize=7)
    if n_r * n_c <= 100:
        for i in range(n_r):
            for j in range(n_c):
                if np.isfinite(M[i, j]):
                    ax.text(j, i, f"{M[i, j]:.2f}", ha="center", va="center", fontsize=6,
                            color="white" if M[i, j] < np.nanmean(M) else "black")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=9)
    return fig


def layer_map(M, row_layers, col_layers, *, measure: str, row_model: str, col_model: str):
    """One model pair's layer x layer similarity map, axes labelled by layer name."""
    kind = "within" if row_model == col_model else "across"
    return heatmap(M, row_layers, col_layers, cbar=measure,
                   xlabel=f"{col_model} layer", ylabel=f"{row_model} layer",
                   title=f"{row_model} x {col_model} ({kind} model): {measure}")


def best_match_curves(M, keys: Sequence[tuple[str, str]], depth: Sequence[float] | None = None,
                      *, higher: bool = True
                      ) -> dict[tuple[str, str], tuple[np.ndarray, np.ndarray, list[str]]]:
    """For every ordered pair of different models (A, B): the relative depth of each of A's
    layers and its best-match similarity among B's layers, ``{(A, B): (x, y, layers)}``.

    ``depth``: relative depth per key (default: (rank + 1) / count among the keys of its
    model). ``higher=False`` for a distance (e.g. Procrustes): the best match is the
    minimum."""
    M = np.asarray(M, np.float64)
    by_model: dict[str, list[int]] = {}
    for i, (m, _) in enumerate(keys):
        by_model.setdefault(m, []).append(i)
    if depth is None or not np.all(np.isfinite(np.asarray(depth, float))):
        depth = np.zeros(len(keys))
        for idx in by_model.values():
            for r, i in enumerate(idx):
                depth[i] = (r + 1.0) / len(idx)
    depth = np.asarray(depth, np.float64)
    out = {}
    for a, ia in by_model.items():
        for b, ib in by_model.items():
            if a == b:
                continue
            ia_sorted = sorted(ia, key=lambda i: depth[i])
            sub = M[np.ix_(ia_sorted, ib)]
            out[(a, b)] = (depth[ia_sorted], sub.max(1) if higher else sub.min(1),
                           [keys[i][1] for i in ia_sorted])
    return out


def depth_plot(curves: Mapping[tuple[str, str], tuple], *, measure: str):
    """Best-match similarity of each layer against its relative depth, one line per pair."""
    fig, ax = plt.subplots(figsize=(6, 3.8), layout="constrained")
    for (a, b), (x, y, names) in curves.items():
        ax.plot(x, y, marker="o", ms=4, label=f"{a} layers, best match in {b}")
    ax.set_xlabel("relative depth (layer index / depth)")
    ax.set_ylabel(f"best-match {measure}")
    ax.set_xlim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return fig


# -------------------------------------------------------------------------------- INVERT
def activation_histograms(activations, holds, titles: Sequence[str], *, bins: int = 20):
    """Per neuron (row of ``activations`` (K, N)): the activation distribution of the inputs
    where its formula holds (``holds`` (K, N) bool) and of those where it does not."""
    A, H = np.asarray(activations, np.float64), np.asarray(holds, bool)
    k = len(A)
    cols = min(k, 4)
    rows = int(np.ceil(k / cols))
    fig, axes = plt.subplots(rows, cols, squeeze=False, figsize=(3.0 * cols, 2.4 * rows),
                             layout="constrained")
    for i, ax in enumerate(axes.flat):
        if i >= k:
            ax.axis("off")
            continue
        edges = np.histogram_bin_edges(A[i], bins=bins)
        ax.hist(A[i][~H[i]], bins=edges, color="#999999", alpha=0.8,
                label=f"without ({int((~H[i]).sum())})")
        ax.hist(A[i][H[i]], bins=edges, color="#cc3311", alpha=0.7,
                label=f"with ({int(H[i].sum())})")
        ax.set_title(titles[i], fontsize=7)
        ax.set_xlabel("activation", fontsize=7)
        ax.tick_params(labelsize=6)
        ax.legend(fontsize=6)
    return fig


def histogram(values, *, xlabel: str, title: str = "", bins: int = 30):
    fig, ax = plt.subplots(figsize=(4.5, 3), layout="constrained")
    v = np.asarray(values, np.float64)
    ax.hist(v[np.isfinite(v)], bins=bins, color="#4477aa")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count")
    if title:
        ax.set_title(title, fontsize=9)
    return fig


# ------------------------------------------------------------------------------ concepts
def concept_overlays(images, maps, *, concept_names: Sequence[str] | None = None):
    """Concept maps over example images: ``images`` (n, H, W, C) in [0, 1], ``maps``
    (n, k, h, w) (upsampled to H x W, each normalised to its maximum); one row per image,
    the image first, then one column per concept."""
    X, Mp = np.asarray(images, np.float32), np.asarray(maps, np.float32)
    n, k = Mp.shape[:2]
    H, W = X.shape[1:3]
    fig, axes = plt.subplots(n, k + 1, squeeze=False, figsize=(1.3 * (k + 1), 1.3 * n + 0.3),
                             layout="constrained")
    for i in range(n):
        img = np.clip(X[i], 0, 1)
        img = img[..., 0] if img.shape[-1] == 1 else img
        axes[i, 0].imshow(img, cmap="gray")
        axes[i, 0].axis("off")
        for j in range(k):
            m = Mp[i, j]
            m = m / max(float(m.max()), 1e-12)
            ax = axes[i, j + 1]
            ax.imshow(img, cmap="gray")
            ax.imshow(m, cmap="jet", alpha=0.45, vmin=0, vmax=1, extent=(-0.5, W - 0.5,
                                                                        H - 0.5, -0.5),
                      interpolation="bilinear")
            ax.axis("off")
            if i == 0:
                ax.set_title(concept_names[j] if concept_names else f"concept {j}",
                             fontsize=7)
    return fig


def net2vec_heatmap(iou, layers: Sequence[str], concepts: Sequence[str], *, model: str = ""):
    """Net2Vec set IoU as a concept x layer heatmap (rows: concepts, columns: layers)."""
    return heatmap(np.asarray(iou, np.float64).T, list(concepts), list(layers), vmin=0.0,
                   vmax=1.0, cbar="set IoU", xlabel="layer", ylabel="concept",
                   title=f"{model}: Net2Vec set IoU (held-out half)" if model else "")


# ---------------------------------------------------------------------------- image rows
def image_rows(rows: Sequence[np.ndarray], row_labels: Sequence[str] | None = None, *,
               col_titles: Sequence[str] | None = None, size: float = 1.2, cmap="magma"):
    """Rows of images (each (n, H, W[, C]) in [0, 1]; single-channel ones use ``cmap``)."""
    n = max(len(r) for r in rows)
    fig, axes = plt.subplots(len(rows), n, squeeze=False,
                             figsize=(size * n + (1.2 if row_labels else 0.2),
                                      size * len(rows) + 0.3))
    for i, row in enumerate(rows):
        for j in range(n):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            for sp in ax.spines.values():
                sp.set_visible(False)
            if j >= len(row):
                continue
            im = np.clip(np.asarray(row[j], np.float32), 0, 1)
            if im.ndim == 3 and im.shape[-1] == 1:
                im = im[..., 0]
            ax.imshow(im, cmap=None if im.ndim == 3 else cmap, vmin=0, vmax=1)
            if col_titles is not None and i == 0 and j < len(col_titles):
                ax.set_title(str(col_titles[j]), fontsize=7)
        if row_labels:
            axes[i, 0].set_ylabel(row_labels[i], fontsize=8, rotation=0, ha="right",
                                  va="center")
    fig.subplots_adjust(left=0.16 if row_labels else 0.02, right=0.99, top=0.92,
                        bottom=0.02, wspace=0.05, hspace=0.08)
    return fig
