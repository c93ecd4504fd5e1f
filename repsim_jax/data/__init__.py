"""Data: one data layer for the Python API, the sweep and the notebooks.

* :func:`load` (:mod:`repsim_jax.data.loaders`) — every source (``repsim_shapes``,
  ``digits``, ``lfw_subset``, ``tfds:<name>``, ``hf:<DIR>``, image folders, ``.npz/.npy``)
  as one :class:`Dataset` (images NHWC float32 in [0, 1] or a lazy :class:`LazyArray`,
  labels, class names, concept labels/names/masks, files, info); :func:`load_for_model`
  resizes/crops by a model's preprocessing.
* :mod:`repsim_jax.data.folder` — image folders (class sub-folders or flat), Pillow
  decoding, EXIF orientation, the resize/crop rules of
  :class:`~repsim_jax.models.preprocess.Preprocess`, bad-file checks.
* :mod:`repsim_jax.data.annotations` — concept CSV (wide / long) and masks (per-concept PNGs
  or Broden-style index PNGs + ``palette.csv``).
* :mod:`repsim_jax.data.stream` — batches decoded by background workers (threads or Grain).
* :mod:`repsim_jax.data.views` — :class:`~repsim_jax.data.views.MappedView` (a function
  applied to a source batch by batch when read) and the chunked reads (``gather``,
  ``chunks``) through which ClaDec and the visual summaries consume lazy sources.
* :mod:`repsim_jax.data.shapes` — ``repsim_shapes``: procedural images with per-pixel
  concept masks, image-level concept labels and compositional class rules.
* :mod:`repsim_jax.data.tfds_shapes` — the same data as a tensorflow-datasets builder
  (array_record, no TensorFlow); imported on demand (it imports tfds).
* :mod:`repsim_jax.data.sources` — the older per-source helpers (:class:`ImageSet`), kept
  for compatibility.
"""
from repsim_jax.data import annotations, folder, shapes, sources, stream, views
from repsim_jax.data.dataset import Dataset, LazyArray, materialize
from repsim_jax.data.loaders import SOURCES, as_preprocess, load, load_for_model, sample_indices
from repsim_jax.data.shapes import ShapesData
from repsim_jax.data.sources import ImageSet

__all__ = ["load", "load_for_model", "Dataset", "LazyArray", "materialize", "SOURCES",
           "as_preprocess", "sample_indices", "annotations", "folder", "shapes", "sources",
           "stream", "views", "ShapesData", "ImageSet"]
