"""A generated image folder with every case the data layer must handle, and the pixels each
image must come out with (computed here from the generated arrays, not by the loader)."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

CLASSES = ("cat", "dog")
CONCEPTS = ("stripes", "spots", "sky", "never")      # "never": in no image (dropped)


def _smooth(h, w, seed):
    """A smooth RGB uint8 picture (JPEG keeps it within a few levels)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    f = rng.uniform(1, 3, 3)
    p = rng.uniform(0, np.pi, 3)
    img = [0.5 + 0.4 * np.sin(f[c] * 3 * x + p[c]) * np.cos(f[c] * 2 * y) for c in range(3)]
    return np.clip(np.stack(img, -1) * 255, 0, 255).astype(np.uint8)


def make_folder(root: Path) -> dict:
    """Writes ``root/images`` (+ concepts CSVs, masks of both layouts); returns what is
    expected: ``pixels[file]`` the displayed RGB uint8 image, ``lossless`` files, masks."""
    from PIL import Image
    img_root = root / "images"
    for c in CLASSES:
        (img_root / c).mkdir(parents=True, exist_ok=True)
    pixels, lossless = {}, set()
    # cat/a.jpg: RGB JPEG 40x48
    a = _smooth(40, 48, 0)
    Image.fromarray(a).save(img_root / "cat/a.jpg", quality=95)
    pixels["cat/a.jpg"] = np.asarray(Image.open(img_root / "cat/a.jpg").convert("RGB"))
    # cat/b.png: RGBA 48x40 (alpha dropped)
    b = _smooth(48, 40, 1)
    alpha = np.full((48, 40, 1), 128, np.uint8)
    Image.fromarray(np.concatenate([b, alpha], -1), "RGBA").save(img_root / "cat/b.png")
    pixels["cat/b.png"] = b
    # cat/c.webp: lossless WebP 40x40
    c = _smooth(40, 40, 2)
    Image.fromarray(c).save(img_root / "cat/c.webp", lossless=True)
    pixels["cat/c.webp"] = c
    # dog/d.bmp: greyscale 36x44
    d = _smooth(36, 44, 3)[..., 0]
    Image.fromarray(d, "L").save(img_root / "dog/d.bmp")
    pixels["dog/d.bmp"] = np.repeat(d[..., None], 3, -1)
    # dog/e.png: palette image 40x40
    idx = (np.arange(40)[:, None] // 10 + np.arange(40)[None, :] // 10) % 4
    pal_colors = np.array([[250, 10, 10], [10, 240, 10], [10, 10, 230], [200, 200, 20]],
                          np.uint8)
    pim = Image.fromarray(idx.astype(np.uint8), "P")
    pim.putpalette(pal_colors.reshape(-1).tolist() + [0] * (768 - 12))
    pim.save(img_root / "dog/e.png")
    pixels["dog/e.png"] = pal_colors[idx]
    # dog/f.png: stored 40x48 with EXIF orientation 6 (rotate 90 degrees clockwise to
    # display) -> displayed 48x40
    f = _smooth(40, 48, 4)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(f).save(img_root / "dog/f.png", exif=exif)
    pixels["dog/f.png"] = np.rot90(f, k=-1)
    lossless |= {"cat/b.png", "cat/c.webp", "dog/d.bmp", "dog/e.png", "dog/f.png"}
    # a stray text file, and a truncated JPEG
    (img_root / "dog/notes.txt").write_text("not an image\n")
    buf = img_root / "dog/g_truncated.jpg"
    Image.fromarray(_smooth(40, 40, 5)).save(buf, quality=95)
    data = buf.read_bytes()
    buf.write_bytes(data[: len(data) // 2])
    good = sorted(pixels)
    # concept tags: stripes on cat images a, b; spots on dog d, e, f; sky on a and f
    tags = {"cat/a.jpg": {"stripes", "sky"}, "cat/b.png": {"stripes"},
            "dog/d.bmp": {"spots"}, "dog/e.png": {"spots"}, "dog/f.png": {"spots", "sky"}}
    # wide CSV: every good image but cat/c.webp has a row; one row names a missing image
    with open(root / "concepts_wide.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", *CONCEPTS])
        for p in good:
            if p != "cat/c.webp":
                w.writerow([p, *[int(k in tags.get(p, ())) for k in CONCEPTS]])
        w.writerow(["cat/missing.jpg", 1, 0, 0, 0])
    with open(root / "concepts_long.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "concept"])
        for p in good:
            for k in sorted(tags.get(p, ())):
                w.writerow([p, k])
        w.writerow(["dog/missing.png", "spots"])
    # masks, per concept: DIR/<stem>/<concept>.png at the displayed image size
    masks, rng = {}, np.random.default_rng(7)
    for p in good:
        h, w_ = pixels[p].shape[:2]
        masks[p] = {}
        for k in sorted(tags.get(p, ())):
            m = np.zeros((h, w_), bool)
            y0, x0 = rng.integers(0, h // 2), rng.integers(0, w_ // 2)
            m[y0:y0 + h // 2, x0:x0 + w_ // 2] = True
            masks[p][k] = m
            d = root / "masks" / Path(p).stem
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(m.astype(np.uint8) * 255).save(d / f"{k}.png")
    # the same masks as index PNGs + palette.csv (Broden style); one concept per pixel:
    # later concepts (sorted) overwrite earlier ones where they overlap
    names = ["sky", "spots", "stripes"]
    (root / "masks_index").mkdir()
    (root / "masks_index" / "palette.csv").write_text(
        "index,concept\n" + "".join(f"{i + 1},{n}\n" for i, n in enumerate(names)))
    index_masks = {}
    for p in good:
        h, w_ = pixels[p].shape[:2]
        ix = np.zeros((h, w_), np.uint8)
        for i, n in enumerate(names):
            if n in masks[p]:
                ix[masks[p][n]] = i + 1
        Image.fromarray(ix, "L").save(root / "masks_index" / f"{Path(p).stem}.png")
        index_masks[p] = {n: ix == i + 1 for i, n in enumerate(names)}
    return {"root": img_root, "pixels": pixels, "lossless": lossless, "good": good,
            "tags": tags, "masks": masks, "index_masks": index_masks,
            "truncated": "dog/g_truncated.jpg"}


@pytest.fixture(scope="session")
def fx(tmp_path_factory):
    """The generated folder (once per session), see :func:`make_folder`."""
    return make_folder(tmp_path_factory.mktemp("image_folder"))
