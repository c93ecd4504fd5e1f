"""Pictures of visual summaries: one PNG strip of member crops per summary, and the masks.

matplotlib is an optional extra; it is imported inside the functions (Agg backend).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

__all__ = ["summary_strip", "save_summaries", "save_masks"]


def _resize(crop: np.ndarray, height: int) -> np.ndarray:
    """Nearest-neighbour resize of an (h, w, 3) crop to ``height`` rows (aspect kept)."""
    h, w = crop.shape[:2]
    width = max(int(round(w * height / h)), 1)
    ys = np.minimum((np.arange(height) + 0.5) * h / height, h - 1).astype(int)
    xs = np.minimum((np.arange(width) + 0.5) * w / width, w - 1).astype(int)
    return crop[ys][:, xs]


def summary_strip(images, class_summary, members: Sequence[int], *, height: int = 64,
                  gap: int = 4) -> np.ndarray:
    """(height, W, 3) float image: the crops of ``members`` (region indices) side by side,
    exemplar first, separated by white gaps."""
    from repsim_jax.data.views import gather
    regions = class_summary.regions
    members = [int(r) for r in members]
    # only the images drawn are read (one request; a lazy source is never materialised)
    ids = np.asarray([class_summary.image_indices[regions.image_ids[r]] for r in members],
                     np.int64)
    drawn = gather(images, ids) if len(ids) else None
    tiles = []
    for k, r in enumerate(members):
        img = np.asarray(drawn[k])
        y0, x0, y1, x1 = regions.boxes[r]
        tile = _resize(np.clip(img[y0:y1, x0:x1, :3], 0, 1), height)
        tiles += [tile, np.ones((height, gap, 3))]
    return np.concatenate(tiles[:-1], axis=1) if tiles else np.ones((height, height, 3))


def save_summaries(result, images, out_dir, *, class_names: Sequence[str] | None = None,
                   height: int = 64, masks: bool = True) -> list[Path]:
    """Writes ``<out_dir>/<class>/summary_<k>.png`` (member strip per kept summary) and
    ``<out_dir>/<class>/masks.png`` (the class's images and masks, when ``masks``) for
    every class of a :class:`~repsim_jax.summaries.pipeline.SummaryResult`; returns the
    paths.

    ``images`` are the caller's full images (the result indexes into them): an array or a
    lazy source (:mod:`repsim_jax.data.views`), of which only the images drawn are read.
    """
    from repsim_jax.data.views import subset
    from repsim_jax import _plotting as plt

    out = Path(out_dir)
    paths = []
    for c, cs in result.classes.items():
        name = class_names[c] if class_names is not None else f"class_{c}"
        folder = out / str(name)
        folder.mkdir(parents=True, exist_ok=True)
        for k, members in enumerate(cs.summaries):
            path = folder / f"summary_{k}.png"
            plt.imsave(path, summary_strip(images, cs, members, height=height))
            paths.append(path)
        if masks and result.masks is not None and len(cs.image_indices):
            where = {int(i): k for k, i in enumerate(result.image_indices)}
            pos = [where[int(i)] for i in cs.image_indices]
            paths.append(save_masks(subset(images, result.image_indices), result.masks,
                                    folder / "masks.png", indices=pos))
    return paths


def save_masks(images, mask_result, path, *, indices: Sequence[int] | None = None,
               max_images: int = 8, titles: Sequence[str] | None = None) -> Path:
    """One figure: per image the input, the smooth and sharp masks (1 - m: what was
    deleted) and the perturbed image; rows = images. ``images`` align with the masks (an
    array or a lazy source: only the rows drawn are read)."""
    from repsim_jax import _plotting as plt
    from repsim_jax.data.views import gather
    from repsim_jax.summaries.masks import blur_images, perturb

    idx = np.asarray(indices if indices is not None
                     else np.flatnonzero(mask_result.kept), np.int64)[:max_images]
    if idx.size == 0:
        idx = np.arange(min(int(images.shape[0]), max_images))
    drawn = np.asarray(gather(images, idx), np.float32)
    fig, axes = plt.subplots(len(idx), 4, figsize=(8, 2 * len(idx)), squeeze=False)
    blurred = np.asarray(blur_images(drawn))
    for row, i in enumerate(idx):
        pert = np.asarray(perturb(drawn[row], blurred[row], mask_result.sharp[i]))
        panels = [(drawn[row, ..., :3], "input"), (1 - mask_result.smooth[i], "smooth 1-m"),
                  (1 - mask_result.sharp[i], "sharp 1-m"), (pert[..., :3], "perturbed")]
        for col, (im, t) in enumerate(panels):
            ax = axes[row, col]
            ax.imshow(np.clip(im, 0, 1), cmap="magma" if im.ndim == 2 else None, vmin=0, vmax=1)
            ax.set_xticks([]), ax.set_yticks([])
            if row == 0:
                ax.set_title(t, fontsize=8)
        if titles is not None:
            axes[row, 0].set_ylabel(titles[row], fontsize=7)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
