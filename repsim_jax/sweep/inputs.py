"""Inputs of a sweep: the data set (through :func:`repsim_jax.data.load`) and the models.

Only this module knows where images and weights come from; the rest of the sweep sees a
:class:`~repsim_jax.data.Dataset` (images as an array or a lazy view, annotations) and nnx
models following the capture convention of :mod:`repsim_jax.models.capture`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from repsim_jax._checks import InputError, unknown_name
from repsim_jax.data.dataset import Dataset
from repsim_jax.sweep.config import DataSpec, ModelSpec

__all__ = ["SweepData", "load_data", "load_model", "images_for"]


# The sweep's data is the data layer's one record (images may be a lazy view).
SweepData = Dataset


def load_data(spec: DataSpec, *, preprocess=None, seed: int = 0,
              echo: Callable[[str], None] | None = None) -> Dataset:
    """The sweep's images through :func:`repsim_jax.data.load` (every source it knows).

    ``preprocess``: the rule (a Preprocess or a model) that decoded sources (folders, tfds,
    hf) are resized/cropped by; ``seed``: the seed of the ``n_images`` subset. The data
    set is validated completely here (bad image files, annotations), before any unit.
    """
    from repsim_jax import data
    return data.load(spec.source, split=spec.split, n_images=spec.n_images, seed=seed,
                     balanced=spec.balanced, concepts=spec.concepts, masks=spec.masks,
                     skip_bad_images=spec.skip_bad_images, preprocess=preprocess,
                     data_dir=spec.data_dir, echo=echo)


def load_model(spec: ModelSpec, seed: int = 0):
    """A built-in trained model, or ``arch`` with ``weights`` ported (random if None)."""
    from flax import nnx

    from repsim_jax import models
    if spec.builtin:
        from repsim_jax.models import zoo
        valid = list(zoo.TRAINED_MODELS)
        if spec.name not in valid:
            err = unknown_name("built-in model", spec.name, valid)
            if spec.name in models.model_names():
                err = KeyError(f"{err.args[0]}. {spec.name!r} is an architecture: give it "
                               f"with arch= and weights= (--arch/--weights/--num-classes)")
            raise err
        model, _info = zoo.load_trained(spec.name)
        return model
    if spec.weights is not None:
        if not Path(spec.weights).is_file():
            raise InputError(f"model {spec.name!r}: weight file {spec.weights!r} not found")
        # raises a PortError naming missing / unexpected / mis-shaped keys for a weight file
        # of another architecture
        return models.load_ported(spec.arch, spec.weights, num_classes=spec.num_classes)
    if spec.num_classes is None:
        raise InputError(f"model {spec.name!r}: num_classes is required for arch="
                         f"{spec.arch!r} without a weight file")
    return models.build(spec.arch, num_classes=spec.num_classes, rngs=nnx.Rngs(seed))


def images_for(model, images: np.ndarray) -> np.ndarray:
    """``images`` resized (bilinear) / channel-adapted to the model's ``input_shape``."""
    import jax
    h, w, c = tuple(model.input_shape)
    x = np.asarray(images, np.float32)
    if x.shape[-1] != c:
        if x.shape[-1] == 1 and c == 3:
            x = np.repeat(x, 3, axis=-1)
        elif x.shape[-1] == 3 and c == 1:
            x = x.mean(-1, keepdims=True)
        else:
            raise InputError(f"images have {x.shape[-1]} channels but the model expects {c}")
    if x.shape[1:3] != (h, w):
        x = np.asarray(jax.image.resize(x, (x.shape[0], h, w, c), "bilinear"))
    return x
