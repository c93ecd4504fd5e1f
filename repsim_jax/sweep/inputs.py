"""Inputs of a sweep: the data set (through :func:`repsim_jax.data.load`) and the models.

Only this module knows where images and weights come from; the rest of the sweep sees a
:class:`~repsim_jax.data.Dataset` (images as an array or a lazy view, annotations) and nnx
models following the capture convention of :mod:`repsim_jax.models.capture`.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

import numpy as np

from repsim_jax._checks import InputError, unknown_name
from repsim_jax.data.dataset import Dataset
from repsim_jax.sweep.config import DataSpec, ModelSpec

__all__ = ["SweepData", "load_data", "load_model", "images_for", "adaptation_line",
           "PrecomputedActivations",
           "load_activations", "check_activations_length", "load_factory_model",
           "load_hf_model"]


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


@dataclasses.dataclass(frozen=True, eq=False)
class PrecomputedActivations:
    """A sweep model given as its activations ``{layer: (N, ...)}`` (``activations = ...``).

    Methods that need only activations (semantic, invert, concepts) run on them; methods
    that run the network (cladec, summaries) refuse it before any unit runs."""
    name: str
    source: str
    arrays: dict

    def layer_shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: tuple(int(d) for d in v.shape[1:]) for k, v in self.arrays.items()}

    def __len__(self) -> int:
        return int(next(iter(self.arrays.values())).shape[0])


def load_activations(path, name: str | None = None) -> PrecomputedActivations:
    """Precomputed activations from an .npz (one array per layer, in the file's order) or a
    directory of ``<layer>.npy`` files (sorted by name; read memory-mapped). Every array must
    be numeric with a leading axis N shared by all layers (checked here; that N equals the
    data set's size is checked by the sweep)."""
    p = Path(path)
    label = f"model {name!r}: activations {str(p)!r}" if name else f"activations {str(p)!r}"
    try:
        if p.is_dir():
            files = sorted(p.glob("*.npy"))
            if not files:
                raise InputError(f"{label}: the directory holds no .npy files (one "
                                 f"<layer>.npy of shape (N, ...) per layer)")
            arrays = {f.stem: np.load(f, mmap_mode="r", allow_pickle=False) for f in files}
        elif p.is_file():
            with np.load(p, allow_pickle=False) as z:
                if not hasattr(z, "files"):
                    raise InputError(f"{label}: expected an .npz of {{layer: (N, ...)}} or a "
                                     f"directory of .npy files, got a single array")
                arrays = {k: z[k] for k in z.files}
        else:
            raise InputError(f"{label} not found (an .npz file or a directory of .npy)")
    except (ValueError, OSError) as e:
        if isinstance(e, InputError):
            raise
        raise InputError(f"{label}: cannot read it as numpy arrays ({e})") from None
    if not arrays:
        raise InputError(f"{label}: holds no arrays")
    lengths = {}
    for k, v in arrays.items():
        if v.ndim < 2 or np.dtype(v.dtype).kind not in "fiu":
            raise InputError(f"{label}: layer {k!r} must be a numeric array (N, ...) with at "
                             f"least 2 dimensions, got shape {tuple(v.shape)} dtype {v.dtype}")
        lengths[k] = int(v.shape[0])
    if len(set(lengths.values())) > 1:
        raise InputError(f"{label}: layers disagree on N (the number of images): {lengths}")
    return PrecomputedActivations(name or p.stem, str(p), arrays)


def check_activations_length(acts: PrecomputedActivations, n_images: int) -> None:
    """Precomputed activations must have one row per image of the sweep's data set."""
    if len(acts) != int(n_images):
        raise InputError(f"model {acts.name!r}: the activations in {acts.source!r} have N = "
                         f"{len(acts)} rows, the data set has {n_images} images (they must be "
                         f"the activations of exactly these images, in this order; set "
                         f"data.n_images = {len(acts)} if that is what they are)")


def _import_factory(target: str, label: str):
    """``"package.module:callable"`` (attribute path after the colon) -> the callable."""
    import importlib
    import sys
    mod_name, sep, attr = str(target).partition(":")
    if not sep or not mod_name or not attr:
        raise InputError(f"{label}: factory must look like 'package.module:callable', got "
                         f"{target!r}")
    try:
        module = importlib.import_module(mod_name)
    except ModuleNotFoundError as e:
        import os
        if os.getcwd() in sys.path or "" in sys.path:
            raise InputError(f"{label}: cannot import {mod_name!r} ({e})") from None
        sys.path.insert(0, os.getcwd())      # the user's own code next to the config
        try:
            module = importlib.import_module(mod_name)
        except ModuleNotFoundError as e2:
            raise InputError(f"{label}: cannot import {mod_name!r} ({e2}); is it on "
                             f"PYTHONPATH?") from None
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            import difflib
            valid = [n for n in dir(obj) if not n.startswith("_")]
            close = difflib.get_close_matches(part, valid, n=3)
            hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
            raise InputError(f"{label}: {getattr(obj, '__name__', mod_name)!r} has no "
                             f"attribute {part!r}.{hint} (it has: "
                             f"{', '.join(valid[:20])})")
        obj = getattr(obj, part)
    if not callable(obj):
        raise InputError(f"{label}: {target!r} is not callable")
    return obj


def load_factory_model(target: str, *, weights=None, num_classes=None, label="factory"):
    """The nnx model the user's ``factory`` returns (``num_classes=`` passed when given),
    with ``weights`` (a file of :func:`repsim_jax.models.save_npz` / ``save_safetensors`` or
    a torch state_dict with the model's keys) ported through the safe loaders."""
    from flax import nnx

    from repsim_jax import models
    fn = _import_factory(target, label)
    model = fn(num_classes=num_classes) if num_classes is not None else fn()
    if not isinstance(model, nnx.Module):
        raise InputError(f"{label}: {target!r} returned {type(model).__name__}, expected a "
                         f"flax.nnx.Module (wrap linen modules / functions with "
                         f"repsim_jax.models.from_linen / from_function)")
    if weights is not None:
        if not Path(weights).is_file():
            raise InputError(f"{label}: weight file {str(weights)!r} not found")
        models.port_torchvision(model, weights)
    return model


def load_hf_model(path, *, label="hf"):
    """A Hugging Face checkpoint directory through :func:`repsim_jax.models.load_hf`."""
    from repsim_jax import models
    if not Path(path).is_dir():
        raise InputError(f"{label}: checkpoint directory {str(path)!r} not found (a "
                         f"directory written by save_pretrained: config.json + "
                         f"model.safetensors)")
    loader = getattr(models, "load_hf", None)
    if loader is None:
        raise InputError(f"{label}: this installation has no repsim_jax.models.load_hf")
    return loader(path)


def load_model(spec: ModelSpec, seed: int = 0, *, progress: bool | None = None):
    """The model of a ``[[models]]`` entry: a built-in trained model; ``arch`` with
    ``weights`` ported (random if None); ``hf``; ``factory`` (+ ``weights``); or
    ``activations`` (a :class:`PrecomputedActivations`). ``progress``: the first-use
    training of a built-in model (see :mod:`repsim_jax._progress`; False silences it)."""
    from flax import nnx

    from repsim_jax import models
    label = f"model {spec.name!r}"
    if spec.source == "activations":
        return load_activations(spec.activations, spec.name)
    if spec.source == "hf":
        return load_hf_model(spec.hf, label=label)
    if spec.source == "factory":
        return load_factory_model(spec.factory, weights=spec.weights,
                                  num_classes=spec.num_classes, label=label)
    if spec.builtin:
        from repsim_jax.models import zoo
        valid = list(zoo.TRAINED_MODELS)
        if spec.name not in valid:
            err = unknown_name("built-in model", spec.name, valid)
            if spec.name in models.model_names():
                err = KeyError(f"{err.args[0]}. {spec.name!r} is an architecture: give it "
                               f"with arch= and weights= (--arch/--weights/--num-classes)")
            raise err
        model, _info = zoo.load_trained(spec.name, progress=progress)
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


def _adaptation(model, in_hwc):
    """What :func:`images_for` does to images of shape ``in_hwc``: ``(out (H, W, C),
    resample)`` with ``resample`` None (the size is kept), ``"rule"`` (the model's
    preprocessing rule) or ``"bilinear"`` (to its ``input_shape``)."""
    from repsim_jax.models.preprocess import preprocess_of
    pre = preprocess_of(model)
    hin, win, cin = (int(v) for v in in_hwc)
    hwc = getattr(model, "input_shape", None)
    if hwc is None:
        h, w, c = (*(pre.size or (hin, win)), cin)
    else:
        h, w, c = (int(v) for v in hwc)
    if pre.size is not None and pre.resize != "none":
        # images already at the model's size went through its rule when they were decoded
        # (the sweep loads them with the first model's preprocessing): never a second time
        out = (*pre.size, c)
        return out, None if (hin, win) == tuple(pre.size) else "rule"
    return (h, w, c), None if (hin, win) == (h, w) else "bilinear"


def adaptation_line(model, in_hwc) -> str | None:
    """One line (size in, size out, rule) for the resample :func:`images_for` applies to
    images of shape ``in_hwc``, or None when it keeps their size."""
    from repsim_jax.data.folder import describe_rule
    from repsim_jax.models.preprocess import preprocess_of
    out, how = _adaptation(model, in_hwc)
    if how is None:
        return None
    rule = describe_rule(preprocess_of(model)) if how == "rule" else \
        f"resized to {out[0]}x{out[1]} (bilinear, the model's input_shape)"
    return f"{in_hwc[0]}x{in_hwc[1]} -> {out[0]}x{out[1]}: {rule}"


def images_for(model, images: np.ndarray) -> np.ndarray:
    """``images`` channel-adapted and resized for ``model``: by its preprocessing's resize
    rule when it has one (``model.preprocess``: e.g. ImageNet's shorter side + centre crop)
    and they are not at its size already, else bilinearly to its ``input_shape`` (a model
    with neither takes them as they are); :func:`adaptation_line` describes it."""
    import jax

    from repsim_jax.models.preprocess import preprocess_of, resize_array, to_unit_range
    x = to_unit_range(images)            # uint8 -> [0, 1]; float must be in [0, 1]
    (h, w, c), how = _adaptation(model, x.shape[1:])
    if x.shape[-1] != c:
        if x.shape[-1] == 1 and c == 3:
            x = np.repeat(x, 3, axis=-1)
        elif x.shape[-1] == 3 and c == 1:
            x = x.mean(-1, keepdims=True)
        else:
            raise InputError(f"images have {x.shape[-1]} channels but the model expects {c}")
    if how == "rule":
        return resize_array(x, preprocess_of(model))
    if how == "bilinear":
        x = np.asarray(jax.image.resize(x, (x.shape[0], h, w, c), "bilinear"))
    return x
