"""One entry point for every image source: :func:`load` -> :class:`~repsim_jax.data.dataset.Dataset`.

Sources (``source``):

=====================  ==================================================================
``"repsim_shapes"``    the built-in concept world (labels, concepts, pixel masks)
``"digits"``           scikit-learn's 1797 8x8 digits (10 classes), greyscale -> RGB
``"lfw_subset"``       scikit-image's 200 25x25 crops: label 1 face, 0 non-face
``"tfds:<name>"``      a tensorflow-datasets set via ``as_data_source`` (no TensorFlow)
``"hf:<DIR>"``         a Hugging Face ``datasets`` set saved with ``save_to_disk`` (``[hf]``)
``"folder:<DIR>"``     an image folder (:mod:`repsim_jax.data.folder`); a bare directory
                       path works too
``"<file>.npz/.npy"``  arrays: ``images`` [+ ``labels``, ``concept_labels``,
                       ``concept_names``, ``concept_masks``, ``class_names``]
=====================  ==================================================================

Rules shared by all of them:

* pixels: uint8 is scaled by 1/255, float must already lie in [0, 1], anything else is an
  :class:`~repsim_jax._checks.InputError` (:func:`repsim_jax.models.preprocess.to_unit_range`;
  never a silent /255); images come out RGB (N, H, W, 3) float32;
* geometry: ``preprocess`` (a :class:`~repsim_jax.models.preprocess.Preprocess`, or a
  model carrying one) resizes/crops each image by the model's rule — Pillow for decoded
  files (folder, tfds, hf), :func:`~repsim_jax.models.preprocess.resize_array` for arrays;
  the rule, the sizes in and the size out are reported once (``echo``) and kept in
  ``Dataset.info["geometry"]``; without ``preprocess`` images keep their size (and must
  share one);
* order and sampling: sources keep their order (folders: sorted relative paths);
  ``n_images`` takes a seeded random subset (``seed``), kept in the source's order;
  ``balanced=True`` takes ``n_images // K`` per class (all of a smaller class).
  ``repsim_shapes`` is generated i.i.d., so its first ``n_images`` are taken;
* bad files (folders): every image is decoded once before the data set is returned; a
  truncated or unreadable file raises an InputError naming it, or with
  ``skip_bad_images=True`` is left out with one warning listing them
  (``info["skipped"]``); the same for mask files (``masks=``): an undecodable one stops
  the run naming it, or with ``skip_bad_images=True`` its image is skipped (listed in the
  same warning and in ``info["skipped"]``);
* streaming: with ``stream=None`` a decoded source (folder, tfds, hf) stays a lazy
  :class:`~repsim_jax.data.dataset.LazyArray` when its decoded images would take more than
  ``max_memory`` bytes (default 1 GiB), else it is decoded now (in ``workers`` threads);
  ``stream=True`` / ``False`` force either. Concept masks are decided by their own size
  as well: they stay lazy when the images do, or when images and masks together would take
  more than ``max_memory`` (images may then be in memory while the masks stream).
"""
from __future__ import annotations

import dataclasses
import functools
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np

from repsim_jax._checks import InputError, unknown_name
from repsim_jax.data import annotations as ann
from repsim_jax.data import folder as fold
from repsim_jax.data.dataset import Dataset, LazyArray, materialize
from repsim_jax.data.stream import default_workers

__all__ = ["load", "SOURCES", "as_preprocess", "sample_indices", "load_for_model"]

SOURCES = ("repsim_shapes", "digits", "lfw_subset", "tfds:<name>", "hf:<DIR>",
           "folder:<DIR>", "<DIR>", "<file>.npz", "<file>.npy")
_AUTO_SPLITS = ("validation", "test", "train")
_MAX_MEMORY = 1 << 30


def as_preprocess(preprocess):
    """A :class:`Preprocess` from one, from a model (its ``preprocess``, else its
    ``input_shape`` with a centre crop of the shorter side), or None."""
    from repsim_jax.models.preprocess import Preprocess, preprocess_of
    if preprocess is None or isinstance(preprocess, Preprocess):
        return preprocess
    pre = preprocess_of(preprocess)
    if pre.size is None and getattr(preprocess, "input_shape", None) is not None:
        h, w = tuple(preprocess.input_shape)[:2]
        pre = dataclasses.replace(pre, size=(int(h), int(w)), resize="shorter_crop",
                                  crop_pct=1.0)
    return pre


def sample_indices(n: int, n_images: int | None, seed: int = 0, labels=None,
                   balanced: bool = False) -> np.ndarray:
    """Sorted indices of a seeded subset of ``n`` items (all when ``n_images`` is None or
    >= n); ``balanced``: ``n_images // K`` per class of ``labels``."""
    if n_images is not None and int(n_images) < 1:
        raise InputError(f"n_images must be >= 1, got {n_images}")
    rng = np.random.default_rng(seed)
    if balanced:
        if labels is None:
            raise InputError("balanced sampling needs class labels, which this source does "
                             "not have")
        labels = np.asarray(labels)
        classes = np.unique(labels)
        quota = (len(labels) if n_images is None else int(n_images)) // len(classes)
        if quota < 1:
            raise InputError(f"balanced sampling: n_images={n_images} is smaller than the "
                             f"{len(classes)} classes")
        picks = []
        for c in classes:
            idx = np.flatnonzero(labels == c)
            picks.append(idx if len(idx) <= quota else rng.choice(idx, quota, replace=False))
        return np.sort(np.concatenate(picks))
    if n_images is None or int(n_images) >= n:
        return np.arange(n)
    return np.sort(rng.choice(n, int(n_images), replace=False))


def _rgb(images: np.ndarray) -> np.ndarray:
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3, 4):
        raise InputError(f"images: expected (N, H, W) or (N, H, W, 1|3|4), got shape "
                         f"{images.shape}")
    if images.shape[-1] == 1:
        return np.repeat(images, 3, axis=-1)
    return images[..., :3]


def _arrays_geometry(images: np.ndarray, pre, echo, name: str):
    from repsim_jax.models.preprocess import resize_array
    sizes = [tuple(images.shape[1:3])] * len(images)
    out = resize_array(images, pre) if pre is not None else images
    line = fold.describe_geometry(sizes, pre, out.shape[1:3])
    if echo and pre is not None and out.shape[1:3] != images.shape[1:3]:
        echo(f"data {name}: {line}")
    return out, line


def _resize_masks(masks: np.ndarray, pre) -> np.ndarray:
    """Nearest-neighbour masks with ``pre``'s geometry (same boxes as the images)."""
    if pre is None or pre.resize == "none" or pre.size is None:
        return masks
    (rh, rw), box = fold.target_geometry(masks.shape[1:3], pre)
    h, w = masks.shape[1:3]
    rows = np.minimum((np.arange(rh) + 0.5) * h / rh, h - 1).astype(int)
    cols = np.minimum((np.arange(rw) + 0.5) * w / rw, w - 1).astype(int)
    m = masks[:, rows][:, :, cols]
    if box is not None:
        m = m[:, box[1]:box[3], box[0]:box[2]]
    return m


# --------------------------------------------------------------------- built-in sources
def _shapes(split, n_images, pre, echo):
    from repsim_jax.data import shapes
    if split not in shapes.SPLITS:
        raise unknown_name("split of repsim_shapes", split, list(shapes.SPLITS))
    size, split_seed = shapes.SPLITS[split]
    if n_images is None or n_images >= size or split == "train":
        d = shapes.load(split)
        if n_images is not None:
            d = d.take(slice(0, min(int(n_images), len(d))))
    else:
        d = shapes.generate(int(n_images), seed=split_seed)
    masks = d.concept_masks() if callable(d.concept_masks) else d.concept_masks
    images, line = _arrays_geometry(np.asarray(d.images, np.float32), pre, echo,
                                    "repsim_shapes")
    return Dataset(images, np.asarray(d.labels, np.int32), np.asarray(d.concept_labels, bool),
                   _resize_masks(np.asarray(masks, bool), pre), "repsim_shapes",
                   tuple(d.class_names), tuple(d.concept_names), (),
                   {"geometry": line, "shapes": d})


def _named(source, n_images, seed, balanced, pre, echo):
    from repsim_jax.data import sources
    s = sources.digits() if source == "digits" else sources.lfw_subset()
    idx = sample_indices(len(s), n_images, seed, s.labels, balanced)
    images, line = _arrays_geometry(_rgb(s.images[idx]), pre, echo, source)
    return Dataset(images, s.labels[idx], None, None, source, tuple(s.class_names), (), (),
                   {"geometry": line, "indices": idx})


def _arrays(path: Path, n_images, seed, balanced, pre, echo):
    from repsim_jax.models.preprocess import to_unit_range
    if not path.is_file():
        raise InputError(f"data: array file {str(path)!r} does not exist")
    try:
        if path.suffix.lower() == ".npy":
            arrays: dict[str, Any] = {"images": np.load(path, allow_pickle=False)}
        else:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
    except (ValueError, OSError) as e:
        raise InputError(f"data: cannot read {str(path)!r} as numpy arrays ({e}; object "
                         f"arrays are refused, never unpickled)") from None
    if "images" not in arrays:
        raise InputError(f"data: {str(path)!r} has no 'images' array (found "
                         f"{sorted(arrays)}); expected images (N, H, W, C) and optionally "
                         f"labels, concept_labels, concept_names, concept_masks, class_names")
    n = len(arrays["images"])
    for k in ("labels", "concept_labels", "concept_masks"):
        if k in arrays and len(arrays[k]) != n:
            raise InputError(f"data: {str(path)!r}: {k} has {len(arrays[k])} rows but "
                             f"images has {n}")
    labels = arrays.get("labels")
    if labels is not None:
        if labels.ndim != 1 or labels.dtype.kind not in "iu":
            raise InputError(f"data: {str(path)!r}: labels must be a 1-D integer array, got "
                             f"shape {labels.shape}, dtype {labels.dtype}")
    idx = sample_indices(n, n_images, seed, labels, balanced)
    images = to_unit_range(_rgb(np.asarray(arrays["images"])[idx]), f"{path.name} images")
    images, line = _arrays_geometry(images, pre, echo, path.name)
    get = lambda k: arrays[k][idx] if k in arrays else None  # noqa: E731
    names = tuple(str(s) for s in arrays.get("concept_names", ()))
    cl = get("concept_labels")
    if cl is not None and not names:
        names = tuple(f"concept{i}" for i in range(cl.shape[1]))
    cm = get("concept_masks")
    return Dataset(images, None if labels is None else labels[idx].astype(np.int32),
                   None if cl is None else cl.astype(bool),
                   None if cm is None else _resize_masks(cm.astype(bool), pre),
                   path.stem, tuple(str(s) for s in arrays.get("class_names", ())), names, (),
                   {"geometry": line, "indices": idx})


# -------------------------------------------------------- decoded sources: tfds, hf
def _pil_from_array(a):
    from PIL import Image
    a = np.asarray(a)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.dtype != np.uint8:
        from repsim_jax.models.preprocess import to_unit_range
        a = np.round(to_unit_range(a) * 255).astype(np.uint8)
    return Image.fromarray(a).convert("RGB")


def _to_pixels(img, pre) -> np.ndarray:
    from PIL import Image
    if not isinstance(img, Image.Image):
        img = _pil_from_array(img)
    else:
        from PIL import ImageOps
        img = ImageOps.exif_transpose(img).convert("RGB")
    return np.asarray(fold.apply_geometry(img, pre), np.float32) / np.float32(255.0)


class _TfdsItem:
    """Picklable item loader of a tfds data source (reopened lazily in each process)."""

    def __init__(self, name, split, data_dir, key, indices, pre):
        self.args = (name, split, data_dir)
        self.key, self.indices, self.pre = key, np.asarray(indices), pre
        self._src = None

    def __getstate__(self):
        return {**self.__dict__, "_src": None}

    def source(self):
        if self._src is None:
            import tensorflow_datasets as tfds
            name, split, data_dir = self.args
            kw = {"data_dir": data_dir} if data_dir else {}
            self._src = tfds.data_source(name, split=split, **kw)
        return self._src

    def __call__(self, j):
        return _to_pixels(self.source()[int(self.indices[j])][self.key], self.pre)


def _tfds(name, split, data_dir, n_images, seed, balanced, pre, stream, max_memory, workers,
          echo):
    from repsim_jax.data import sources
    import tensorflow_datasets as tfds
    data_dir = str(Path(data_dir).expanduser()) if data_dir else None
    kw = {"data_dir": data_dir} if data_dir else {}
    try:
        builder = tfds.builder(name, **kw)
    except tfds.core.registered.DatasetNotFoundError:
        raise unknown_name("tfds data set", name, sources._tfds_names()) from None
    if builder.MANUAL_DOWNLOAD_INSTRUCTIONS and not sources._prepared(builder):
        manual = Path(builder._data_dir_root) / "downloads" / "manual"
        raise InputError(
            f"tfds data set {name!r} needs a manual download: place its files in {manual} "
            f"and run `tfds build {name} --data_dir {builder._data_dir_root}` once. "
            f"Instructions: {' '.join(str(builder.MANUAL_DOWNLOAD_INSTRUCTIONS).split())[:300]}")
    splits = _AUTO_SPLITS if split == "auto" else (split,)
    src, last = None, None
    for sp in splits:
        try:
            src = tfds.data_source(name, split=sp, **kw)
            split = sp
            break
        except Exception as e:  # noqa: BLE001 - missing split, network, not prepared
            last = e
    if src is None:
        raise InputError(f"tfds data set {name!r} (split {split!r}) could not be loaded or "
                         f"prepared: {type(last).__name__}: {str(last)[:300]}. Without "
                         f"internet access, prepare it elsewhere and pass data_dir") from None
    if len(src) == 0:
        raise InputError(f"tfds data set {name!r} split {split!r} is empty")
    first = src[0]
    key = next((k for k in ("image", "img", "images") if k in first), None)
    if key is None:
        raise InputError(f"tfds data set {name!r} has no image feature (features: "
                         f"{sorted(first)})")
    labels_all, class_names = None, ()
    lab_key = "label" if "label" in first else None
    if balanced and lab_key is None:
        raise InputError(f"balanced sampling needs labels; tfds data set {name!r} has none")
    if lab_key is not None and (balanced or n_images is None or n_images >= len(src)):
        labels_all = np.asarray([int(src[i][lab_key]) for i in range(len(src))], np.int32)
    idx = sample_indices(len(src), n_images, seed, labels_all, balanced)
    if lab_key is not None:
        labels = labels_all[idx] if labels_all is not None else \
            np.asarray([int(src[int(i)][lab_key]) for i in idx], np.int32)
        feat = builder.info.features[lab_key] if lab_key in builder.info.features else None
        class_names = tuple(getattr(feat, "names", None) or
                            [str(i) for i in range(int(labels.max()) + 1)])
    else:
        labels = None
    shapes = [tuple(np.shape(src[int(i)][key])[:2]) for i in idx[:64]]
    if pre is None or pre.size is None or pre.resize == "none":
        all_shapes = {tuple(np.shape(src[int(i)][key])[:2]) for i in idx}
        if len(all_shapes) > 1:
            raise InputError(f"tfds data set {name!r}: images differ in size "
                             f"({sorted(all_shapes)[:4]}...); pass preprocess= (a model or "
                             f"a Preprocess with a size) to resize/crop them")
    load = _TfdsItem(name, split, data_dir, key, idx, pre)
    out_hw = _out_hw(load(0).shape, pre)
    view = LazyArray(len(idx), (*out_hw, 3), np.float32, load, workers=workers,
                     name=f"tfds:{name}")
    line = fold.describe_geometry(shapes, pre, out_hw) + (" (sizes of the first 64)"
                                                          if len(idx) > 64 else "")
    if echo and pre is not None:
        echo(f"data tfds:{name}:{split}: {line}")
    images = view if _keep_lazy(view, stream, max_memory) else np.asarray(view)
    return Dataset(images, labels, None, None, f"tfds:{name}", class_names, (), (),
                   {"geometry": line, "split": split, "indices": idx})


def _out_hw(shape, pre):
    return tuple(int(s) for s in shape[:2])


def _keep_lazy(view, stream, max_memory) -> bool:
    if stream is None:
        return view.nbytes > max_memory
    return bool(stream)


class _HfItem:
    def __init__(self, path, split, key, indices, pre):
        self.path, self.split, self.key = path, split, key
        self.indices, self.pre, self._ds = np.asarray(indices), pre, None

    def __getstate__(self):
        return {**self.__dict__, "_ds": None}

    def __call__(self, j):
        if self._ds is None:
            self._ds = _hf_open(self.path, self.split)[0]
        return _to_pixels(self._ds[int(self.indices[j])][self.key], self.pre)


def _hf_open(path, split):
    try:
        import datasets
    except ImportError:
        raise InputError("hf: sources need the `datasets` package (pip install "
                         "'repsim_jax[hf]')") from None
    p = Path(path).expanduser()
    if not p.exists():
        raise InputError(f"hf: directory {str(p)!r} does not exist")
    try:
        ds = datasets.load_from_disk(str(p))
    except Exception as e:  # noqa: BLE001 - not a saved data set
        raise InputError(f"hf: {str(p)!r} is not a data set saved with save_to_disk "
                         f"({type(e).__name__}: {e})") from None
    if isinstance(ds, datasets.DatasetDict):
        names = list(ds)
        if split == "auto":
            split = next((s for s in _AUTO_SPLITS if s in ds), names[0])
        if split not in ds:
            raise unknown_name(f"split of {p.name}", split, names)
        ds = ds[split]
    return ds, split


def _hf(path, split, n_images, seed, balanced, pre, stream, max_memory, workers, echo):
    import datasets
    ds, split = _hf_open(path, split)
    feats = ds.features
    key = next((k for k, f in feats.items() if isinstance(f, datasets.Image)), None)
    if key is None:
        raise InputError(f"hf: {path!r} has no Image feature (features: {list(feats)})")
    lab = next((k for k, f in feats.items() if isinstance(f, datasets.ClassLabel)), None)
    labels_all = np.asarray(ds[lab], np.int32) if lab else None
    idx = sample_indices(len(ds), n_images, seed, labels_all, balanced)
    load = _HfItem(path, split, key, idx, pre)
    sample = [ds[int(i)][key] for i in idx[:64]]
    shapes = [(im.height, im.width) for im in sample]
    if (pre is None or pre.size is None or pre.resize == "none") and len(set(shapes)) > 1:
        raise InputError(f"hf: {path!r}: images differ in size; pass preprocess= (a model or "
                         f"a Preprocess with a size)")
    out_hw = tuple(load(0).shape[:2])
    view = LazyArray(len(idx), (*out_hw, 3), np.float32, load, workers=workers,
                     name=f"hf:{path}")
    line = fold.describe_geometry(shapes, pre, out_hw)
    if echo and pre is not None:
        echo(f"data hf:{path}: {line}")
    images = view if _keep_lazy(view, stream, max_memory) else np.asarray(view)
    class_names = tuple(feats[lab].names) if lab else ()
    return Dataset(images, None if lab is None else labels_all[idx], None, None, f"hf:{path}",
                   class_names, (), (), {"geometry": line, "split": split, "indices": idx})


# ------------------------------------------------------------------------------ folders
def _listing(bad) -> str:
    return "; ".join(f"{f} ({m})" for f, m in bad[:10]) + \
        (f"; and {len(bad) - 10} more" if len(bad) > 10 else "")


def _keep_ok(files, sizes, labels, ok):
    if len(ok) == len(files):
        return files, sizes, labels
    return ([files[i] for i in ok], [sizes[i] for i in ok],
            None if labels is None else labels[ok])


def _folder(root, n_images, seed, balanced, concepts, masks, skip_bad_images, pre, stream,
            max_memory, workers, echo):
    idx_ = fold.scan(root)
    files = list(idx_.files)
    labels = idx_.labels
    info: dict[str, Any] = {"ignored_files": len(idx_.ignored)}
    sel = sample_indices(len(files), n_images, seed, labels, balanced)
    files = [files[i] for i in sel]
    labels = None if labels is None else labels[sel]
    sizes, bad = fold.check_files(idx_.root, files, workers=workers)
    if bad and not skip_bad_images:
        raise InputError(f"image folder {str(idx_.root)!r}: {len(bad)} image(s) cannot "
                         f"be decoded: {_listing(bad)}. Fix or remove them, or skip them "
                         f"with skip_bad_images=True (--skip-bad-images)")
    files, sizes, labels = _keep_ok(files, sizes, labels,
                                    [i for i, s in enumerate(sizes) if s is not None])
    if not files:
        raise InputError(f"image folder {str(idx_.root)!r}: no readable images left "
                         f"(skipped {len(bad)}: {_listing(bad)})")
    mi, present = None, None
    if masks is not None:   # every mask decoded once too, before anything else runs
        mi = ann.scan_masks(masks, files)
        bad_masks: list = []
        present = ann.mask_presence(mi, sizes, workers=workers, bad=bad_masks)
        if bad_masks:
            mbad = [(files[i], f"mask {p}: {why}") for i, p, why in bad_masks]
            if not skip_bad_images:
                raise InputError(
                    f"masks {str(mi.root)!r}: {len(mbad)} image(s) have mask files that "
                    f"cannot be decoded: {_listing(mbad)}. Fix or remove them, or skip "
                    f"those images with skip_bad_images=True (--skip-bad-images)")
            drop = {i for i, _, _ in bad_masks}
            keep = [i for i in range(len(files)) if i not in drop]
            files, sizes, labels = _keep_ok(files, sizes, labels, keep)
            mi, present = ann.take_masks(mi, keep), present[keep]
            bad = bad + mbad
    if bad:
        warnings.warn(f"image folder {str(idx_.root)!r}: skipped {len(bad)} unreadable "
                      f"image(s): {_listing(bad)}", stacklevel=3)
        if not files:
            raise InputError(f"image folder {str(idx_.root)!r}: no readable images left")
    info["skipped"] = [f for f, _ in bad]
    if pre is None or pre.size is None or pre.resize == "none":
        if len(set(sizes)) > 1:
            raise InputError(f"image folder {str(idx_.root)!r}: images differ in size "
                             f"({len(set(sizes))} sizes, e.g. {sorted(set(sizes))[:3]}); pass "
                             f"preprocess= (a model or a Preprocess with a size) to "
                             f"resize/crop them")
        out_hw = sizes[0]
    else:
        (rh, rw), box = fold.target_geometry(sizes[0], pre)
        out_hw = (box[3] - box[1], box[2] - box[0]) if box else (rh, rw)
    view = fold.folder_view(idx_.root, files, pre, out_hw, workers)
    line = fold.describe_geometry(sizes, pre, out_hw)
    info["geometry"] = line
    if echo:
        echo(f"data folder {str(idx_.root)!r}: {line}" +
             (f"; {len(idx_.ignored)} non-image file(s) ignored" if idx_.ignored else ""))
    report = ann.AnnotationReport()
    concept_labels, concept_names, concept_masks = None, [], None
    if concepts is not None:
        concept_labels, concept_names = ann.read_concept_table(concepts, files, report)
    if masks is not None:
        report.images_without_masks = sum(e is None for e in mi.per_image)
        mnames = list(mi.concept_names)
        if concept_labels is None:
            concept_labels, concept_names = present, mnames
        else:   # one concept list: the table's, then concepts only the masks have
            extra = [c for c in mnames if c not in concept_names]
            concept_names = concept_names + extra
            col = {c: j for j, c in enumerate(mnames)}
            concept_labels = np.concatenate(
                [concept_labels, np.zeros((len(files), len(extra)), bool)], 1)
            for j, c in enumerate(concept_names):
                if c in col:
                    concept_labels[:, j] |= present[:, col[c]]
    if concept_labels is not None:
        concept_labels, concept_names, _ = ann.finish_concepts(
            concept_labels, concept_names, report,
            what=f"concepts of {str(idx_.root)!r}")
        if not concept_names:
            raise InputError(f"concepts of {str(idx_.root)!r}: no concept is present in any "
                             f"of the {len(files)} images")
        for line_ in report.lines():
            if echo:
                echo(f"data concepts: {line_}")
        if report.rows_missing_images or (report.form == "wide" and
                                          report.images_without_row):
            warnings.warn(f"concepts of {str(idx_.root)!r}: " + "; ".join(
                l for l in report.lines() if "row" in l), stacklevel=3)
        info["annotations"] = report.to_dict()
    if masks is not None:
        mview = LazyArray(len(files), (*out_hw, len(concept_names)), bool,
                          ann.mask_loader(mi, sizes, concept_names, pre), workers=workers,
                          name=f"masks:{masks}")
    lazy = _keep_lazy(view, stream, max_memory)
    images = view if lazy else np.asarray(view)
    if masks is not None:
        # the masks' own size decides too (Broden-style: ~1000 concepts x H x W bool per
        # image outweighs the image itself): eager only when images and masks together fit
        in_memory = 0 if lazy else view.nbytes
        mask_lazy = lazy if stream is not None else \
            lazy or in_memory + mview.nbytes > max_memory
        concept_masks = mview if mask_lazy else np.asarray(mview)
        info["masks_lazy"] = bool(mask_lazy)
    return Dataset(images, labels, concept_labels, concept_masks,
                   f"folder:{idx_.root}", idx_.class_names, tuple(concept_names),
                   tuple(files), info)


# ----------------------------------------------------------------------------- load
def load(source: str, *, split: str = "test", n_images: int | None = None, seed: int = 0,
         balanced: bool = False, concepts=None, masks=None, skip_bad_images: bool = False,
         preprocess=None, stream: bool | None = None, max_memory: int | None = None,
         data_dir=None, workers: int | None = None,
         echo: Callable[[str], None] | None = print) -> Dataset:
    """Loads ``source`` as a :class:`Dataset` (module docstring: sources and rules).

    Args:
      source: see :data:`SOURCES`.
      split: split of repsim_shapes ("train"/"test"), tfds or hf (``"auto"``: the first of
        validation, test, train that exists); ignored by the other sources.
      n_images: a seeded subset of this many images (None: all).
      seed: seed of the subset; balanced: ``n_images // K`` images per class.
      concepts: a concept CSV (wide or long, :mod:`repsim_jax.data.annotations`), folders
        only; masks: a masks directory, folders only.
      skip_bad_images: leave out unreadable images, and images whose mask file is
        unreadable, with one warning (else an error naming the files).
      preprocess: a :class:`~repsim_jax.models.preprocess.Preprocess` or a model: the
        resize/crop rule applied while decoding (normalisation stays in the model).
      stream: keep decoded sources lazy (True), decode now (False), or decide by
        ``max_memory`` (None; default 1 GiB of decoded float32 images, masks counted with
        them).
      data_dir: tfds data directory; workers: decoding threads (default: CPU count);
      echo: where the one-line reports go (None: silent).
    """
    pre = as_preprocess(preprocess)
    max_memory = _MAX_MEMORY if max_memory is None else int(max_memory)
    workers = default_workers() if workers is None else max(1, int(workers))
    source = str(source)
    if (concepts is not None or masks is not None) and not (
            source.startswith("folder:") or Path(source).expanduser().is_dir()):
        raise InputError(f"concepts/masks files annotate image folders; source {source!r} is "
                         f"not a folder (arrays carry them as concept_labels/concept_masks)")
    if source == "repsim_shapes":
        if balanced:
            raise InputError("balanced sampling is not available for repsim_shapes (its "
                             "images are generated i.i.d.)")
        return _shapes(split, n_images, pre, echo)
    if source in ("digits", "lfw_subset"):
        return _named(source, n_images, seed, balanced, pre, echo)
    if source.startswith("tfds:"):
        return _tfds(source[5:], split, data_dir, n_images, seed, balanced, pre, stream,
                     max_memory, workers, echo)
    if source.startswith("hf:"):
        return _hf(source[3:], split, n_images, seed, balanced, pre, stream, max_memory,
                   workers, echo)
    if source.startswith("folder:") or Path(source).expanduser().is_dir():
        root = source[7:] if source.startswith("folder:") else source
        return _folder(root, n_images, seed, balanced, concepts, masks, skip_bad_images,
                       pre, stream, max_memory, workers, echo)
    path = Path(source).expanduser()
    if path.suffix.lower() in (".npz", ".npy"):
        return _arrays(path, n_images, seed, balanced, pre, echo)
    if path.suffix.lower() in fold.IMAGE_SUFFIXES:
        raise InputError(f"data source {source!r} is a single image file: put the images "
                         f"into a folder and pass the folder (folder:DIR)")
    if path.exists():
        raise InputError(f"data source {source!r}: unsupported file type {path.suffix!r} "
                         f"(use an image folder, .npz or .npy)")
    raise unknown_name("data source", source, list(SOURCES))


def load_for_model(source: str, model, *, n_images: int | None = None, split: str = "auto",
                   **kwargs) -> Dataset:
    """``load(source, preprocess=model, split=split, ...)``: images resized/cropped by the
    model's rule (its ``preprocess``, else its ``input_shape`` with a centre crop of the
    shorter side) — what the notebooks use for ``DATA = "tfds:imagenette/160px"`` etc."""
    return load(source, preprocess=model, n_images=n_images, split=split, **kwargs)
