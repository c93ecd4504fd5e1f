"""Image folders: class sub-folders (ImageNet layout) or a flat folder, decoded by Pillow.

Layout
    ``DIR/<class>/.../<image>`` — every top-level sub-folder that holds images is a class
    (sorted names -> labels 0..K-1; images found recursively below it); ``DIR/<image>`` — a
    flat folder, no labels. Images directly in ``DIR`` next to class folders are an error
    (ambiguous). Files are taken in sorted order of their relative POSIX path.

Formats
    ``.jpg .jpeg .png .webp .bmp`` (case-insensitive) via Pillow; anything else (text
    files, hidden files, masks in another directory) is ignored and counted. The EXIF
    orientation is applied (``ImageOps.exif_transpose``); greyscale, RGBA (alpha dropped),
    palette, CMYK and 16-bit images are converted to RGB; pixels become float32 / 255.

Geometry (a model's :class:`~repsim_jax.models.preprocess.Preprocess`, done in Pillow)
    ``resize="none"`` (or no size): images kept as they are (they must then all share one
    size); ``"resize"``: the whole image to ``size`` (bilinear/bicubic, Pillow's antialiased
    filters); ``"shorter_crop"``: shorter side to ``round(min(size) / crop_pct)`` keeping the
    aspect ratio, then the centre ``size`` crop (top/left offsets ``(r - s) // 2``), the
    same rule as :func:`repsim_jax.models.preprocess.resize_array`. Masks follow the same
    geometry with nearest-neighbour resampling, so each mask pixel stays on its image pixel.

Bad files
    :func:`check_files` decodes every image once (in threads; JPEGs at 1/8 scale in the
    DCT domain, which still reads the whole entropy-coded stream) before anything else runs
    and returns the ones that fail (truncated, unreadable, not an image) with Pillow's
    message, so a run stops before any unit with a message naming the file, or skips them
    with one warning when asked.
"""
from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import functools
from pathlib import Path
from typing import Sequence

import numpy as np

from repsim_jax._checks import InputError

__all__ = ["IMAGE_SUFFIXES", "FolderIndex", "scan", "open_rgb", "check_files",
           "target_geometry", "apply_geometry", "decode_image", "load_image_item",
           "describe_geometry", "describe_rule"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
_EXIF_SWAP = {5, 6, 7, 8}      # EXIF orientations that swap width and height


@dataclasses.dataclass(frozen=True)
class FolderIndex:
    """The image files of a folder (relative POSIX paths, sorted), their labels."""
    root: Path
    files: tuple[str, ...]
    labels: np.ndarray | None
    class_names: tuple[str, ...]
    ignored: tuple[str, ...]          # non-image files


def _is_image(p: Path) -> bool:
    return p.suffix.lower() in IMAGE_SUFFIXES


def scan(root) -> FolderIndex:
    """The images below ``root`` and their class labels (module docstring)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise InputError(f"image folder {str(root)!r} does not exist or is not a directory")
    images, ignored = [], []
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if any(part.startswith(".") for part in rel.parts):
            continue
        if p.is_file():
            (images if _is_image(p) else ignored).append(rel.as_posix())
    if not images:
        raise InputError(f"image folder {str(root)!r} holds no images (looked for "
                         f"{', '.join(IMAGE_SUFFIXES)}; {len(ignored)} other file(s) "
                         f"ignored)")
    top = [f for f in images if "/" not in f]
    nested = [f for f in images if "/" in f]
    if top and nested:
        raise InputError(
            f"image folder {str(root)!r} mixes images at its top level ({len(top)}, e.g. "
            f"{top[0]!r}) with class sub-folders ({len(nested)} images, e.g. "
            f"{nested[0]!r}): move the top-level images into a class folder, or point at a "
            f"folder of one layout")
    if top:
        return FolderIndex(root, tuple(top), None, (), tuple(ignored))
    files = sorted(nested)
    class_names = tuple(sorted({f.split("/", 1)[0] for f in files}))
    lookup = {c: i for i, c in enumerate(class_names)}
    labels = np.asarray([lookup[f.split("/", 1)[0]] for f in files], np.int32)
    return FolderIndex(root, tuple(files), labels, class_names, tuple(ignored))


def open_rgb(path):
    """A Pillow RGB image, EXIF orientation applied (raises OSError for bad files)."""
    from PIL import Image, ImageOps
    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im)
        if im.mode in ("I;16", "I;16B", "I;16L", "I"):
            a = np.asarray(im, np.float64)
            scale = 65535.0 if a.max() > 255 else 255.0
            im = Image.fromarray(np.clip(a / scale * 255.0 + 0.5, 0, 255).astype(np.uint8))
        if im.mode == "P" and "transparency" in im.info:
            im = im.convert("RGBA")
        rgb = im.convert("RGB")
        rgb.load()
    return rgb


def _header(path) -> tuple[int, int]:
    """(H, W) after the EXIF orientation, from the header only."""
    from PIL import Image
    with Image.open(path) as im:
        w, h = im.size
        try:
            orient = im.getexif().get(0x0112, 1)
        except Exception:  # noqa: BLE001 - broken EXIF: the decode check reports the file
            orient = 1
    return (w, h) if orient in _EXIF_SWAP else (h, w)


def _check_one(path) -> tuple[tuple[int, int] | None, str | None]:
    try:
        from PIL import Image
        hw = _header(path)
        with Image.open(path) as im:
            if im.format == "JPEG":   # DCT-domain 1/8 scaling: reads every byte, ~4x faster
                im.draft("RGB", (max(1, im.width // 8), max(1, im.height // 8)))
            im.load()            # decodes the whole stream: truncated files fail here
        return hw, None
    except Exception as e:  # noqa: BLE001 - any failure makes the file bad
        return None, f"{type(e).__name__}: {e}"


def check_files(root, files: Sequence[str], *, workers: int = 4):
    """Decodes every file once (threads). Returns ``(sizes, bad)``: ``sizes[i]`` the (H, W)
    of file i after EXIF orientation (None when bad), ``bad`` a list of (file, message)."""
    root = Path(root)
    paths = [root / f for f in files]
    if workers > 1 and len(paths) > 1:
        with cf.ThreadPoolExecutor(workers) as pool:
            got = list(pool.map(_check_one, paths))
    else:
        got = [_check_one(p) for p in paths]
    sizes = [g[0] for g in got]
    bad = [(f, g[1]) for f, g in zip(files, got) if g[1] is not None]
    return sizes, bad


def _shorter_side(h: int, w: int, target: int) -> tuple[int, int]:
    # the rule of repsim_jax.models.preprocess (kept identical on purpose)
    if h <= w:
        return target, max(1, int(round(w * target / h)))
    return max(1, int(round(h * target / w))), target


def target_geometry(hw: Sequence[int], pre) -> tuple[tuple[int, int], tuple | None]:
    """``((resize_h, resize_w), crop box (left, top, right, bottom) or None)`` that ``pre``
    applies to an image of size ``hw``."""
    h, w = int(hw[0]), int(hw[1])
    if pre is None or pre.resize == "none" or pre.size is None:
        return (h, w), None
    th, tw = pre.size
    if pre.resize == "resize":
        return (th, tw), None
    rh, rw = _shorter_side(h, w, int(round(min(th, tw) / float(pre.crop_pct))))
    if rh < th or rw < tw:
        raise InputError(f"preprocess: resized image {rh}x{rw} is smaller than the crop "
                         f"{th}x{tw}")
    top, left = (rh - th) // 2, (rw - tw) // 2
    return (rh, rw), (left, top, left + tw, top + th)


def apply_geometry(img, pre, *, nearest: bool = False):
    """``pre``'s resize/crop applied to a Pillow image (``nearest`` for masks)."""
    from PIL import Image
    (rh, rw), box = target_geometry((img.height, img.width), pre)
    if (rh, rw) != (img.height, img.width):
        if nearest:
            resample = Image.NEAREST
        else:
            resample = Image.BICUBIC if pre.interpolation == "bicubic" else Image.BILINEAR
        img = img.resize((rw, rh), resample)
    if box is not None:
        img = img.crop(box)
    return img


def decode_image(path, pre=None) -> np.ndarray:
    """(H, W, 3) float32 in [0, 1] of one image file after ``pre``'s geometry."""
    img = apply_geometry(open_rgb(path), pre)
    return np.asarray(img, np.float32) / np.float32(255.0)


def load_image_item(i: int, root: str, files: tuple, pre) -> np.ndarray:
    """Item ``i`` of a folder view (module-level: picklable for process workers)."""
    path = Path(root) / files[i]
    try:
        return decode_image(path, pre)
    except OSError as e:
        raise InputError(f"image {str(path)!r} cannot be decoded: {e}") from e


def folder_view(root, files, pre, out_hw, workers):
    from repsim_jax.data.dataset import LazyArray
    load = functools.partial(load_image_item, root=str(root), files=tuple(files), pre=pre)
    return LazyArray(len(files), (*out_hw, 3), np.float32, load, workers=workers,
                     name=f"folder:{root}")


def describe_geometry(sizes: Sequence[tuple[int, int]], pre, out_hw) -> str:
    """One line: sizes in, size out, rule."""
    distinct = sorted(set(sizes))
    if len(distinct) == 1:
        size_in = f"{distinct[0][0]}x{distinct[0][1]}"
    else:
        hs = [s[0] for s in sizes]
        ws = [s[1] for s in sizes]
        size_in = (f"{len(distinct)} sizes, H {min(hs)}..{max(hs)}, W {min(ws)}..{max(ws)}")
    return f"{len(sizes)} images in {size_in} -> {out_hw[0]}x{out_hw[1]}: {describe_rule(pre)}"


def describe_rule(pre) -> str:
    """The resize/crop rule of ``pre`` in words (the end of :func:`describe_geometry`)."""
    if pre is None or pre.resize == "none" or pre.size is None:
        return "kept as they are (resize='none')"
    if pre.resize == "resize":
        return f"resized to {pre.size[0]}x{pre.size[1]} ({pre.interpolation})"
    return (f"shorter side to {int(round(min(pre.size) / float(pre.crop_pct)))}, centre "
            f"crop {pre.size[0]}x{pre.size[1]} (crop_pct={pre.crop_pct:g}, "
            f"{pre.interpolation})")
