"""Data: the built-in ground-truth concept world and loaders for other image sources.

* :mod:`repsim_jax.data.shapes` — ``repsim_shapes``: procedural images with per-pixel
  concept masks, image-level concept labels and compositional class rules
  (``shapes.generate(n, seed)``, ``shapes.load("train" | "test")``).
* :mod:`repsim_jax.data.tfds_shapes` — the same data as a tensorflow-datasets builder
  (array_record, no TensorFlow); imported on demand (it imports tfds).
* :mod:`repsim_jax.data.sources` — tfds sets by name, numpy files, scikit-learn digits,
  scikit-image lfw_subset, all as :class:`~repsim_jax.data.sources.ImageSet`.
"""
from repsim_jax.data import shapes, sources
from repsim_jax.data.shapes import ShapesData
from repsim_jax.data.sources import ImageSet

__all__ = ["shapes", "sources", "ShapesData", "ImageSet"]
