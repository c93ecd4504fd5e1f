"""Concept annotations of an image folder: a CSV of image-level tags, per-pixel PNG masks.

Concept table (``concepts="FILE.csv"``), paths relative to the image folder, POSIX ``/``:

* wide: header ``path,<concept 1>,<concept 2>,...``, one row per image, 0/1 (also
  true/false, yes/no) per concept;
* long: header ``path,concept``, one row per (image, concept) pair present; images with
  no concept need no row.

Masks (``masks="DIR"``), aligned with the image as displayed (after its EXIF
orientation), same width and height as the image file:

* per concept: ``DIR/<image path without suffix>/<concept>.png`` or
  ``DIR/<image stem>/<concept>.png``; a pixel belongs to the concept when it is non-zero;
* index (Broden style): ``DIR/<image path without suffix>.png`` (or ``DIR/<stem>.png``) holds
  one concept index per pixel, ``DIR/palette.csv`` (header ``index,concept``) names them;
  index 0 is background unless the palette names it. Palette/greyscale PNGs give the index
  directly, an RGB PNG is read as ``R + 256 * G`` (Broden's encoding).

What was found is reported (:class:`AnnotationReport`): rows naming missing images,
images without a row / without masks, concepts present in no image (dropped, with a
warning: an empty concept can only give degenerate scores) and concepts present in every
image (kept, with a warning: no method can tell them apart from the bias). A mask file
Pillow cannot decode is a :class:`BadMaskFile` (an InputError naming it); the loader
checks every mask once, before anything runs (:func:`mask_presence`).
"""
from __future__ import annotations

import concurrent.futures as cf
import csv
import dataclasses
import functools
import warnings
from pathlib import Path, PurePosixPath
from typing import Sequence

import numpy as np

from repsim_jax._checks import InputError

__all__ = ["AnnotationReport", "read_concept_table", "MaskIndex", "scan_masks",
           "load_mask_item", "mask_presence", "take_masks", "finish_concepts",
           "BadMaskFile"]

_TRUE = {"1", "true", "yes", "y", "t", "1.0"}
_FALSE = {"0", "false", "no", "n", "f", "0.0", ""}


@dataclasses.dataclass
class AnnotationReport:
    """Counts (and a few examples) of what did not line up between files and annotations."""
    form: str = ""
    rows_missing_images: int = 0
    missing_examples: list = dataclasses.field(default_factory=list)
    images_without_row: int = 0
    images_without_masks: int = 0
    dropped_empty: list = dataclasses.field(default_factory=list)
    in_every_image: list = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def lines(self) -> list[str]:
        out = []
        if self.rows_missing_images:
            out.append(f"{self.rows_missing_images} annotation row(s) name images that are "
                       f"not in the folder (e.g. {', '.join(self.missing_examples[:3])})")
        if self.images_without_row:
            out.append(f"{self.images_without_row} image(s) have no row in the concept "
                       f"table (no concept)")
        if self.images_without_masks:
            out.append(f"{self.images_without_masks} image(s) have no masks (empty masks)")
        if self.dropped_empty:
            out.append(f"{len(self.dropped_empty)} concept(s) present in no image were "
                       f"dropped: {', '.join(self.dropped_empty)}")
        if self.in_every_image:
            out.append(f"{len(self.in_every_image)} concept(s) present in every image: "
                       f"{', '.join(self.in_every_image)}")
        return out


def _norm(path: str) -> str:
    p = PurePosixPath(str(path).strip().replace("\\", "/"))
    parts = [q for q in p.parts if q not in (".", "")]
    return "/".join(parts)


def read_concept_table(path, files: Sequence[str], report: AnnotationReport):
    """``(labels (N, C) bool, names)`` for ``files`` from a wide or long concept CSV."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise InputError(f"concepts: file {str(path)!r} does not exist")
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.reader(f))
    rows = [r for r in rows if any(c.strip() for c in r)]
    if not rows:
        raise InputError(f"concepts: {str(path)!r} is empty")
    header = [h.strip() for h in rows[0]]
    if not header or header[0].lower() != "path" or len(header) < 2:
        raise InputError(f"concepts: {str(path)!r} must start with a header whose first "
                         f"column is 'path' (wide: path,<concept>,...; long: path,concept); "
                         f"got {rows[0][:4]}")
    index = {f: i for i, f in enumerate(files)}
    n = len(files)
    missing = []
    if len(header) == 2 and header[1].lower() == "concept":
        report.form = "long"
        pairs = []
        for k, r in enumerate(rows[1:], start=2):
            if len(r) < 2 or not r[1].strip():
                raise InputError(f"concepts: {str(path)!r} line {k}: expected path,concept, "
                                 f"got {r}")
            pairs.append((_norm(r[0]), r[1].strip()))
        names = sorted({c for _, c in pairs})
        col = {c: j for j, c in enumerate(names)}
        labels = np.zeros((n, len(names)), bool)
        seen = np.zeros(n, bool)
        for p, c in pairs:
            i = index.get(p)
            if i is None:
                missing.append(p)
                continue
            labels[i, col[c]] = True
            seen[i] = True
    else:
        report.form = "wide"
        names = header[1:]
        dup = sorted({c for c in names if names.count(c) > 1})
        if dup or any(not c for c in names):
            raise InputError(f"concepts: {str(path)!r} has empty or repeated concept "
                             f"columns {dup}")
        labels = np.zeros((n, len(names)), bool)
        seen = np.zeros(n, bool)
        for k, r in enumerate(rows[1:], start=2):
            if len(r) != len(header):
                raise InputError(f"concepts: {str(path)!r} line {k} has {len(r)} fields, "
                                 f"the header {len(header)}")
            p = _norm(r[0])
            values = []
            for c, v in zip(names, r[1:]):
                v = v.strip().lower()
                if v in _TRUE:
                    values.append(True)
                elif v in _FALSE:
                    values.append(False)
                else:
                    raise InputError(f"concepts: {str(path)!r} line {k}, column {c!r}: "
                                     f"expected 0 or 1, got {v!r}")
            i = index.get(p)
            if i is None:
                missing.append(p)
                continue
            labels[i] = values
            seen[i] = True
    report.rows_missing_images = len(missing)
    report.missing_examples = sorted(set(missing))[:5]
    report.images_without_row = int(n - seen.sum())
    return labels, list(names)


# ---------------------------------------------------------------------------- masks
@dataclasses.dataclass(frozen=True)
class MaskIndex:
    """Where the masks of each image are: per-concept files or one index file."""
    root: Path
    layout: str                          # "per_concept" | "index"
    concept_names: tuple[str, ...]
    per_image: tuple                     # per image: {concept: path} or index path or None
    palette: dict                        # index value -> concept (layout "index")


def _read_palette(path: Path) -> dict:
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = [r for r in csv.reader(f) if any(c.strip() for c in r)]
    if not rows or [h.strip().lower() for h in rows[0][:2]] != ["index", "concept"]:
        raise InputError(f"masks: {str(path)!r} must have the header index,concept")
    out = {}
    for k, r in enumerate(rows[1:], start=2):
        try:
            out[int(r[0])] = r[1].strip()
        except (ValueError, IndexError):
            raise InputError(f"masks: {str(path)!r} line {k}: expected <int>,<concept>, "
                             f"got {r}") from None
    return out


def scan_masks(root, files: Sequence[str]) -> MaskIndex:
    """Finds the masks of ``files`` below ``root`` (module docstring for the layouts)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise InputError(f"masks: directory {str(root)!r} does not exist")
    keys = [(str(PurePosixPath(f).with_suffix("")), PurePosixPath(f).stem) for f in files]
    stems = [k[1] for k in keys]
    if (root / "palette.csv").is_file():
        palette = _read_palette(root / "palette.csv")
        per = []
        for full, stem in keys:
            cand = [root / f"{full}.png"] + ([root / f"{stem}.png"]
                                             if stems.count(stem) == 1 else [])
            per.append(next((str(c) for c in cand if c.is_file()), None))
        names = tuple(sorted(set(palette.values())))
        return MaskIndex(root, "index", names, tuple(per), palette)
    per, names = [], set()
    for full, stem in keys:
        cand = [root / full] + ([root / stem] if stems.count(stem) == 1 else [])
        d = next((c for c in cand if c.is_dir()), None)
        masks = {} if d is None else {p.stem: str(p) for p in sorted(d.glob("*.png"))}
        names |= set(masks)
        per.append(masks or None)
    if not names:
        raise InputError(f"masks: no masks found in {str(root)!r} for the {len(files)} "
                         f"images (expected DIR/<image stem>/<concept>.png, or index PNGs "
                         f"DIR/<image stem>.png with DIR/palette.csv)")
    return MaskIndex(root, "per_concept", tuple(sorted(names)), tuple(per), {})


def _read_index_png(path) -> np.ndarray:
    from PIL import Image, ImageOps
    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im)
        a = np.asarray(im)
        if im.mode in ("RGB", "RGBA"):
            a = a[..., 0].astype(np.int64) + 256 * a[..., 1].astype(np.int64)
        elif a.ndim == 3:
            a = a[..., 0]
    return a.astype(np.int64)


def _read_binary_png(path) -> np.ndarray:
    from PIL import Image, ImageOps
    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im)
        if im.mode in ("RGBA", "LA", "PA"):
            im = im.convert("RGBA")
            a = np.asarray(im)
            return (a[..., :3].max(-1) > 0) & (a[..., 3] > 0)
        a = np.asarray(im)
    return (a.max(-1) if a.ndim == 3 else a) > 0


def _decode(read, path) -> np.ndarray:
    """``read(path)``; a file Pillow cannot decode (not an image, truncated) is an
    InputError naming it."""
    try:
        return read(path)
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001 - any decoding failure makes the file bad
        raise BadMaskFile(path, f"{type(e).__name__}: {e}") from None


class BadMaskFile(InputError):
    """A mask file that cannot be decoded (``path``, Pillow's ``reason``)."""

    def __init__(self, path, reason: str):
        super().__init__(f"masks: {str(path)!r} cannot be decoded ({reason})")
        self.path, self.reason = str(path), reason


def _raw_masks(mi: MaskIndex, i: int, hw, names) -> np.ndarray:
    """(H, W, C) bool of image i at its file size ``hw``, channels in ``names`` order."""
    out = np.zeros((*hw, len(names)), bool)
    entry = mi.per_image[i]
    if entry is None:
        return out
    col = {c: j for j, c in enumerate(names)}
    if mi.layout == "index":
        idx = _decode(_read_index_png, entry)
        if idx.shape != tuple(hw):
            raise InputError(f"masks: {entry!r} is {idx.shape[0]}x{idx.shape[1]} but its "
                             f"image is {hw[0]}x{hw[1]}")
        for value, c in mi.palette.items():
            if c in col:
                out[..., col[c]] |= idx == value
        return out
    for c, p in entry.items():
        if c not in col:
            continue
        m = _decode(_read_binary_png, p)
        if m.shape != tuple(hw):
            raise InputError(f"masks: {p!r} is {m.shape[0]}x{m.shape[1]} but its image is "
                             f"{hw[0]}x{hw[1]}")
        out[..., col[c]] = m
    return out


def load_mask_item(i: int, mi: MaskIndex, sizes: tuple, names: tuple, pre) -> np.ndarray:
    """(H', W', C) bool masks of image ``i`` after ``pre``'s geometry (nearest)."""
    from PIL import Image

    from repsim_jax.data.folder import apply_geometry
    raw = _raw_masks(mi, i, sizes[i], names)
    if pre is None or pre.resize == "none" or pre.size is None:
        return raw
    planes = [np.asarray(apply_geometry(Image.fromarray(raw[..., j].astype(np.uint8)), pre,
                                        nearest=True)) > 0 for j in range(raw.shape[-1])]
    if not planes:
        from repsim_jax.data.folder import target_geometry
        (rh, rw), box = target_geometry(sizes[i], pre)
        hw = (box[3] - box[1], box[2] - box[0]) if box else (rh, rw)
        return np.zeros((*hw, 0), bool)
    return np.stack(planes, -1)


def mask_presence(mi: MaskIndex, sizes, *, workers: int = 4, bad: list | None = None
                  ) -> np.ndarray:
    """(N, C) bool: which concepts each image's masks contain (decodes every mask once).

    An undecodable mask file raises :class:`BadMaskFile`; with a list ``bad`` it is
    appended there as ``(image index, mask file, reason)`` instead (that image's row
    stays all False), so every bad file can be named at once."""
    names = mi.concept_names

    def one(i):
        try:
            return _raw_masks(mi, i, sizes[i], names).reshape(-1, len(names)).any(0)
        except BadMaskFile as e:
            if bad is None:
                raise
            return (i, e.path, e.reason)
    if workers > 1 and len(sizes) > 1:
        with cf.ThreadPoolExecutor(workers) as pool:
            rows = list(pool.map(one, range(len(sizes))))
    else:
        rows = [one(i) for i in range(len(sizes))]
    failed = [r for r in rows if isinstance(r, tuple)]
    if failed:
        bad.extend(failed)
        rows = [np.zeros(len(names), bool) if isinstance(r, tuple) else r for r in rows]
    return np.stack(rows) if rows else np.zeros((0, len(names)), bool)


def take_masks(mi: MaskIndex, keep) -> MaskIndex:
    """The mask index of the images ``keep`` (positions in ``mi.per_image``)."""
    return dataclasses.replace(mi, per_image=tuple(mi.per_image[int(i)] for i in keep))


def mask_loader(mi: MaskIndex, sizes, names, pre):
    return functools.partial(load_mask_item, mi=mi, sizes=tuple(sizes), names=tuple(names),
                             pre=pre)


def finish_concepts(labels: np.ndarray, names: list, report: AnnotationReport, *,
                    what: str = "concepts"):
    """Drops concepts present in no image (warning), reports those present in every image.
    Returns ``(labels, names, kept column indices)``."""
    present = labels.any(0)
    full = labels.all(0) if len(labels) else np.zeros(len(names), bool)
    keep = np.flatnonzero(present)
    report.dropped_empty = [names[j] for j in np.flatnonzero(~present)]
    report.in_every_image = [names[j] for j in np.flatnonzero(full)]
    if report.dropped_empty:
        warnings.warn(f"{what}: dropped {len(report.dropped_empty)} concept(s) present in no "
                      f"image: {', '.join(report.dropped_empty)}", stacklevel=3)
    if report.in_every_image:
        warnings.warn(f"{what}: {len(report.in_every_image)} concept(s) present in every "
                      f"image (kept, but uninformative): "
                      f"{', '.join(report.in_every_image)}", stacklevel=3)
    return labels[:, keep], [names[j] for j in keep], keep
