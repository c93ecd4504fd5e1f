"""Image sources with one common record: :class:`ImageSet` (NHWC float32 in [0, 1]).

* :func:`from_tfds` — any tensorflow-datasets set by name through ``tfds.data_source``
  (random access, no TensorFlow): imagenet2012, cifar10, coco... for users with internet
  or prepared data. Unknown names and sets that need a manual download fail clearly.
* :func:`from_arrays` / :func:`from_file` — numpy arrays in memory or on disk (``.npz``
  with ``images`` [+ ``labels``] entries, or an ``.npy`` image array); never unpickles.
* :func:`digits` — scikit-learn's 1797 8x8 handwritten digits (10 classes).
* :func:`lfw_subset` — scikit-image's 200 25x25 grayscale crops: 100 faces, 100 non-faces.
* :func:`repsim_shapes` — the built-in concept world (:mod:`repsim_jax.data.shapes`).
* :func:`load` dispatches on a name: ``"digits"``, ``"lfw_subset"``, ``"repsim_shapes"``,
  ``"tfds:<name>"`` or a path to an ``.npz``/``.npy`` file.

Integer pixel arrays (uint8 etc.) are scaled by 1/255; float arrays must already lie in
[0, 1]. Grayscale images get a channel axis (N, H, W, 1); :func:`to_rgb` and
:func:`resize` adapt them to a model's ``input_shape``.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from repsim_jax._checks import InputError, as_float_array, unknown_name

__all__ = ["ImageSet", "from_arrays", "from_file", "from_tfds", "digits", "lfw_subset",
           "repsim_shapes", "load", "to_rgb", "resize", "NAMED_SOURCES"]


@dataclasses.dataclass(frozen=True, eq=False)
class ImageSet:
    """``images`` (N, H, W, C) float32 in [0, 1]; ``labels`` (N,) int32 or None;
    ``class_names`` (index -> name); ``name`` of the source; ``meta`` extra information."""

    images: np.ndarray
    labels: np.ndarray | None
    class_names: list
    name: str
    meta: dict = dataclasses.field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.images.shape[0])


def _as_images(images, name: str) -> np.ndarray:
    """NHWC float32 in [0, 1] from (N, H, W) or (N, H, W, C) numeric pixels."""
    images = np.asarray(images)
    as_float_array(images, name, ndim=(3, 4))
    if images.ndim == 3:
        images = images[..., None]
    if images.shape[-1] not in (1, 3, 4):
        raise InputError(f"{name}: expected 1, 3 or 4 channels in the last axis (NHWC), got "
                         f"shape {images.shape}")
    if images.dtype.kind in "iu":
        if images.min() < 0 or images.max() > 255:
            raise InputError(f"{name}: integer pixels must lie in [0, 255], got range "
                             f"[{images.min()}, {images.max()}]")
        return images.astype(np.float32) / np.float32(255.0)
    images = images.astype(np.float32)
    lo, hi = float(images.min()), float(images.max())
    if lo < -1e-6 or hi > 1 + 1e-6:
        raise InputError(f"{name}: float pixels must lie in [0, 1], got range [{lo:.4g}, "
                         f"{hi:.4g}] (scale them first)")
    return np.clip(images, 0.0, 1.0)


def _as_labels(labels, n: int) -> np.ndarray | None:
    if labels is None:
        return None
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise InputError(f"labels: expected a 1-D integer array, got shape {labels.shape}, "
                         f"dtype {labels.dtype}")
    if labels.shape[0] != n:
        raise InputError(f"images has {n} inputs but labels has {labels.shape[0]}")
    return labels.astype(np.int32)


def from_arrays(images, labels=None, *, class_names: Sequence[str] | None = None,
                name: str = "arrays") -> ImageSet:
    """Wraps numpy image (and label) arrays, validating shapes and value ranges."""
    imgs = _as_images(images, "images")
    labs = _as_labels(labels, imgs.shape[0])
    if class_names is None and labs is not None:
        class_names = [str(i) for i in range(int(labs.max()) + 1)]
    return ImageSet(imgs, labs, list(class_names or []), name)


def from_file(path, *, images_key: str = "images", labels_key: str = "labels") -> ImageSet:
    """Images from an ``.npz`` (keys ``images_key`` and optional ``labels_key``) or ``.npy``.

    Loaded with ``allow_pickle=False``: object arrays (pickles) are refused.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"no such image file: {path}")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            return from_arrays(np.load(path, allow_pickle=False), name=path.name)
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                if images_key not in z.files:
                    raise InputError(f"{path}: no array {images_key!r}; it holds {z.files}")
                labels = z[labels_key] if labels_key in z.files else None
                names = [str(s) for s in z["class_names"]] if "class_names" in z.files else None
                return from_arrays(z[images_key], labels, class_names=names, name=path.name)
    except ValueError as err:
        if isinstance(err, InputError):
            raise
        raise InputError(f"{path}: cannot read as numpy data ({err})") from err
    raise InputError(f"{path}: unsupported file type {suffix!r}; use .npz or .npy")


def digits() -> ImageSet:
    """scikit-learn's digits: 1797 images (8, 8, 1), pixel counts 0..16 scaled to [0, 1]."""
    from sklearn.datasets import load_digits
    d = load_digits()
    images = (d.images / 16.0).astype(np.float32)[..., None]
    return ImageSet(images, d.target.astype(np.int32), [str(i) for i in range(10)], "digits")


def lfw_subset() -> ImageSet:
    """scikit-image's ``lfw_subset``: 200 grayscale (25, 25, 1) images; label 1 = face
    (the first 100), 0 = non-face (the last 100)."""
    from skimage import data as skdata
    images = np.asarray(skdata.lfw_subset(), np.float32)
    labels = np.r_[np.ones(100, np.int32), np.zeros(images.shape[0] - 100, np.int32)]
    return ImageSet(_as_images(images, "lfw_subset"), labels, ["non_face", "face"],
                    "lfw_subset")


def repsim_shapes(split: str = "test") -> ImageSet:
    """The built-in concept data (:func:`repsim_jax.data.shapes.load`) as an ImageSet;
    ``meta["shapes"]`` keeps the full :class:`~repsim_jax.data.shapes.ShapesData`."""
    from repsim_jax.data import shapes
    data = shapes.load(split)
    return ImageSet(data.images, data.labels, list(data.class_names), f"repsim_shapes:{split}",
                    {"shapes": data, "concept_names": list(data.concept_names)})


def from_tfds(name: str, split: str = "train", *, data_dir=None, image_key: str = "image",
              label_key: str | None = "label", limit: int | None = None,
              download: bool = True) -> ImageSet:
    """A tensorflow-datasets set by ``name`` via ``tfds.data_source`` (numpy, no TF).

    ``limit`` reads only the first examples of ``split`` (tfds slicing also works:
    ``split="validation[:1000]"``). Images must share one shape. Raises ``KeyError`` for an
    unknown name (with close matches), and :class:`InputError` for a set that needs a
    manual download that is not in place, or that has no ``image_key`` feature.
    """
    import tensorflow_datasets as tfds
    kwargs = {"data_dir": os.fspath(Path(data_dir).expanduser())} if data_dir else {}
    try:
        builder = tfds.builder(name, **kwargs)
    except tfds.core.registered.DatasetNotFoundError as err:
        raise unknown_name("tfds data set", name, _tfds_names()) from err
    if builder.MANUAL_DOWNLOAD_INSTRUCTIONS and not _prepared(builder):
        manual = Path(builder._data_dir_root) / "downloads" / "manual"
        raise InputError(
            f"tfds data set {name!r} needs a manual download: place its files in {manual} "
            f"and run `tfds build {name} --data_dir {builder._data_dir_root}` once "
            f"(or prepare it with TensorFlow elsewhere and pass data_dir). Instructions: "
            f"{builder.MANUAL_DOWNLOAD_INSTRUCTIONS.strip()[:300]}")
    try:
        source = tfds.data_source(name, split=split, download=download, **kwargs)
    except Exception as err:  # noqa: BLE001 - network, missing split, missing optional deps
        raise InputError(
            f"tfds data set {name!r} (split {split!r}) could not be loaded or prepared in "
            f"{builder._data_dir_root}: {type(err).__name__}: {str(err)[:300]}. Without "
            "internet access, prepare it on another machine and pass its data_dir.") from err
    n = len(source) if limit is None else min(int(limit), len(source))
    if n == 0:
        raise InputError(f"tfds data set {name!r} split {split!r} is empty")
    first = source[0]
    if image_key not in first:
        raise InputError(f"tfds data set {name!r} has no feature {image_key!r}; features: "
                         f"{sorted(first)}")
    rows = [first] + [source[i] for i in range(1, n)]
    shapes = {np.shape(r[image_key]) for r in rows}
    if len(shapes) > 1:
        raise InputError(f"tfds data set {name!r}: images differ in shape ({sorted(shapes)[:4]}"
                         "...); resize them per example first")
    images = _as_images(np.stack([np.asarray(r[image_key]) for r in rows]), f"{name}:{image_key}")
    labels, class_names = None, []
    if label_key is not None and label_key in first:
        labels = _as_labels(np.array([int(r[label_key]) for r in rows]), n)
        feature = builder.info.features[label_key] if label_key in builder.info.features \
            else None
        class_names = list(getattr(feature, "names", None) or [])
        if not class_names:
            class_names = [str(i) for i in range(int(labels.max()) + 1)]
    return ImageSet(images, labels, class_names, f"tfds:{name}:{split}")


def _tfds_names() -> list[str]:
    import tensorflow_datasets as tfds
    try:
        return list(tfds.list_builders(with_community_datasets=False))
    except Exception:  # noqa: BLE001 - the listing is only a hint in an error message
        return []


def _prepared(builder) -> bool:
    try:
        return bool(builder.is_prepared())
    except Exception:  # noqa: BLE001 - treat unreadable metadata as "not prepared"
        return False


NAMED_SOURCES = {"digits": digits, "lfw_subset": lfw_subset, "repsim_shapes": repsim_shapes}


def load(name: str, **kwargs) -> ImageSet:
    """Loads a source by name: one of :data:`NAMED_SOURCES`, ``"tfds:<name>"`` (kwargs go to
    :func:`from_tfds`) or a path to an ``.npz``/``.npy`` file."""
    if name in NAMED_SOURCES:
        return NAMED_SOURCES[name](**kwargs)
    if name.startswith("tfds:"):
        return from_tfds(name[5:], **kwargs)
    if name.endswith((".npz", ".npy")) or os.sep in name:
        return from_file(name, **kwargs)
    raise unknown_name("image source", name, [*NAMED_SOURCES, "tfds:<name>", "<path>.npz"])


def to_rgb(images: np.ndarray) -> np.ndarray:
    """NHWC images with 3 channels: grayscale repeated, an alpha channel dropped."""
    images = _as_images(images, "images")
    if images.shape[-1] == 1:
        return np.repeat(images, 3, axis=-1)
    return images[..., :3]


def resize(images: np.ndarray, size: int | Sequence[int], method: str = "linear") -> np.ndarray:
    """Resizes NHWC images to ``size`` (int or (H, W)) with ``jax.image.resize``
    (antialiased when shrinking)."""
    import jax
    hw = (int(size), int(size)) if np.isscalar(size) else tuple(int(s) for s in size)
    images = np.asarray(as_float_array(images, "images", ndim=4), np.float32)
    out = jax.image.resize(images, (images.shape[0], *hw, images.shape[-1]), method=method)
    return np.clip(np.asarray(out), 0.0, 1.0)
