"""What every notebook starts with: data and a model in one call, :func:`setup`.

Two kinds of data, one record (:class:`NotebookSetup`):

* ``data="repsim_shapes"`` (built-in): the first ``n_images`` images of the test split,
  their classes as labels, the generator's ground-truth concepts (image-level labels and
  pixel-exact masks), the class rules, and a built-in CNN trained on that data
  (``model=``, a name of :data:`repsim_jax.models.zoo.TRAINED_MODELS`; trained on first
  use, then cached).
* any other source of :func:`repsim_jax.data.load` (``"tfds:<name>"``, ``"digits"``, an
  image folder, ...): an ImageNet-trained torchvision architecture (``arch=``, with
  ``weights=``: ``None`` for torchvision's own weights, or a ``.pth`` / ``.safetensors`` /
  ``.npz`` file or state_dict, ported without executing pickled code), the images
  resized/cropped by the model's preprocessing rule (its normalisation stays inside the
  model, so images are in [0, 1]), the **model's predictions** as labels, and as concepts
  the data set's own concept annotations when it has them, else its classes one-hot.

``model`` / ``arch`` also take an already built nnx model (your own, or one with random
weights in tests). ``layers`` is a list of layer names or a ``{model name: layers}`` map,
so a notebook names the layers it studies for both kinds of data at once::

    from repsim_jax import notebook
    nb = notebook.setup(DATA, n_images=N_IMAGES, model="small_vgg", arch="resnet18",
                        layers={"small_vgg": ["features.7", "features.15"],
                                "resnet18": ["layer2", "layer4"]})
    model, images, labels = nb.model, nb.images, nb.labels

:func:`load_model` is the model half alone (a second model to compare with).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from repsim_jax._checks import InputError, unknown_name
from repsim_jax._results import result, to_plain

__all__ = ["setup", "load_model", "NotebookSetup", "BUILTIN_DATA", "DEFAULT_LAYERS"]

BUILTIN_DATA = "repsim_shapes"

# the layers studied when ``layers`` is not given: a few stages from input to output
DEFAULT_LAYERS = {
    "small_vgg": ("features.3", "features.7", "features.11", "features.15", "globalpool",
                  "classifier.1", "logits"),
    "small_resnet": ("layer1", "layer2", "layer3", "globalpool", "logits"),
    "resnet18": ("layer1", "layer2", "layer3", "layer4", "avgpool", "logits"),
    "resnet34": ("layer1", "layer2", "layer3", "layer4", "avgpool", "logits"),
    "resnet50": ("layer1", "layer2", "layer3", "layer4", "avgpool", "logits"),
}


@result(meta=("model", "model_name", "data", "class_names", "class_rules", "concept_names",
              "layers", "info"), eq=False)
class NotebookSetup:
    """Data and model of a notebook (:func:`setup`).

    ``images`` (N, H, W, 3) float32 in [0, 1] at the model's input size; ``labels`` (N,)
    int32: the true classes on the built-in data, the model's predictions otherwise;
    ``class_names``: names of the label values; ``class_rules``: the built-in classes'
    Boolean rules over the concepts (None on other data); ``concept_labels`` (N, C) bool
    and ``concept_names`` (C); ``concept_masks`` (N, H, W, C) bool or None; ``layers``:
    the layer names to study; ``model_name``: the built-in model's or architecture's name;
    ``info``: where the model came from (training info of a built-in model, the weights
    of a ported one) and the data's ``geometry`` line.
    """
    model: Any
    model_name: str
    data: str
    images: np.ndarray
    labels: np.ndarray
    class_names: tuple
    class_rules: tuple | None
    concept_labels: np.ndarray
    concept_names: tuple
    concept_masks: np.ndarray | None
    layers: tuple
    info: dict

    def __len__(self) -> int:
        return len(self.images)

    @property
    def builtin(self) -> bool:
        """True on the built-in data (ground-truth concepts, masks and class rules)."""
        return self.data == BUILTIN_DATA

    def describe(self) -> str:
        """One line: how many images of what size, concepts, model and layers."""
        return (f"{len(self)} images {tuple(self.images.shape[1:])} of {self.data}, "
                f"{len(self.concept_names)} concepts, model {self.model_name}, "
                f"layers {list(self.layers)}")

    def to_dict(self) -> dict:
        """Every field but the model itself (its name is kept)."""
        return {f.name: to_plain(getattr(self, f.name)) for f in dataclasses.fields(self)
                if f.name != "model"}


def _name_of(model) -> str:
    return str(getattr(model, "arch", None) or type(model).__name__)


def load_model(name, weights=None, *, size: int = 224, progress: bool | None = None):
    """``(model, info)`` for a built-in trained model or a torchvision architecture.

    ``name``: a key of :data:`repsim_jax.models.zoo.TRAINED_MODELS` (trained on
    ``repsim_shapes`` on first use, then cached; ``weights`` must be None) or an
    architecture of :func:`repsim_jax.models.model_names` with ImageNet ``weights``
    (``None``: torchvision's ``DEFAULT`` weights, needs ``torchvision``; else a weight file
    or a state_dict) for ``size`` x ``size`` inputs. An nnx model is returned as it is.
    ``progress`` goes to the training of a built-in model (:mod:`repsim_jax._progress`).
    """
    from repsim_jax import models
    from repsim_jax.models import zoo
    if not isinstance(name, str):
        return name, {"source": "given", "name": _name_of(name)}
    if name in zoo.TRAINED_MODELS:
        if weights is not None:
            raise InputError(f"built-in model {name!r} is trained on repsim_shapes by the "
                             f"library: weights= is for torchvision architectures")
        model, info = zoo.load_trained(name, progress=progress)
        return model, {"source": "built-in", "name": name, **info}
    if name not in models.TORCHVISION_MODELS:
        raise unknown_name("model", name, [*zoo.TRAINED_MODELS, *models.TORCHVISION_MODELS])
    if int(size) < 1:
        raise InputError(f"size must be >= 1, got {size}")
    source = "torchvision DEFAULT" if weights is None else (
        str(weights) if not isinstance(weights, Mapping) else "state_dict")
    if weights is None:
        try:
            import torchvision
        except ImportError:
            raise InputError(f"torchvision's ImageNet weights of {name!r} need torchvision "
                             f"(pip install torchvision), or pass weights= (a .pth, "
                             f".safetensors or .npz file)") from None
        net = torchvision.models.get_model(name, weights="DEFAULT")
        weights = {k: v.detach().cpu().numpy() for k, v in net.state_dict().items()}
    model = models.load_ported(name, weights, input_shape=(int(size), int(size), 3))
    return model, {"source": "ported", "name": name, "weights": source}


def _layers_for(layers, name: str, model) -> tuple:
    from repsim_jax import models
    if layers is None:
        if name not in DEFAULT_LAYERS:
            raise InputError(f"no default layers for model {name!r}: pass layers= (a list, "
                             f"or {{model name: list}}); models.list_layers(model) names them")
        chosen = DEFAULT_LAYERS[name]
    elif isinstance(layers, Mapping):
        if name not in layers:
            raise InputError(f"layers names models {sorted(layers)}, not {name!r}, the model "
                             f"in use")
        chosen = layers[name]
    else:
        chosen = layers
    chosen = (chosen,) if isinstance(chosen, str) else tuple(chosen)
    if not chosen:
        raise InputError(f"layers: no layer given for model {name!r}")
    valid = set(models.list_layers(model)) | {"logits"}
    for layer in chosen:
        if layer not in valid:
            raise unknown_name(f"layer of {name}", layer, models.list_layers(model))
    return chosen


def _builtin(n_images: int, model, layers, progress, echo):
    from repsim_jax import data as rdata
    from repsim_jax.data import sources
    from repsim_jax.data.loaders import _resize_masks
    from repsim_jax.models import zoo
    from repsim_jax.models.preprocess import resize_array
    if isinstance(model, str) and model not in zoo.TRAINED_MODELS:
        raise unknown_name(f"built-in trained model (for {BUILTIN_DATA})", model,
                           list(zoo.TRAINED_MODELS))
    model, info = load_model(model, progress=progress)
    name = info["name"]
    layers = _layers_for(layers, name, model)
    if "test_accuracy" in info:
        echo(f"{name}: test accuracy {info['test_accuracy']:.3f} "
             f"({'cached' if info['cached'] else 'trained now'})")
    shapes = sources.load(BUILTIN_DATA, split="test").meta["shapes"]
    if n_images > len(shapes):
        raise InputError(f"n_images={n_images}: the {BUILTIN_DATA} test split has "
                         f"{len(shapes)} images")
    shapes = shapes.take(np.arange(n_images))
    images = np.asarray(shapes.images, np.float32)
    masks = np.asarray(shapes.concept_masks(), bool)          # (N, H, W, C) pixel-exact
    pre = rdata.as_preprocess(model)
    if pre.size is not None and tuple(pre.size) != images.shape[1:3]:   # e.g. your own model
        echo(f"data {BUILTIN_DATA}: {images.shape[1:3]} -> {tuple(pre.size)} "
             f"({pre.describe()})")
        images, masks = resize_array(images, pre), _resize_masks(masks, pre)
    return NotebookSetup(
        model=model, model_name=name, data=BUILTIN_DATA, images=images,
        labels=np.asarray(shapes.labels, np.int32),
        class_names=tuple(shapes.class_names), class_rules=tuple(shapes.class_rules),
        concept_labels=np.asarray(shapes.concept_labels, bool),
        concept_names=tuple(shapes.concept_names), concept_masks=masks,
        layers=layers, info=info)


def _real(data: str, n_images: int, arch, weights, size, layers, split, seed, data_dir,
          concepts, masks, batch_size, predict, echo):
    from repsim_jax import data as rdata
    from repsim_jax import models
    model, info = load_model(arch, weights, size=size)
    name = info["name"]
    layers = _layers_for(layers, name, model)   # checked before any image is decoded
    ds = rdata.load(data, split=split, n_images=n_images, seed=seed, preprocess=model,
                    concepts=concepts, masks=masks, stream=False, data_dir=data_dir,
                    echo=echo)
    images = np.asarray(ds.images, np.float32)
    if predict:   # what the model sees: its predictions
        logits = np.asarray(models.activations(model, images, ["logits"],
                                               batch_size=batch_size)["logits"])
        labels = logits.argmax(-1).astype(np.int32)
        k = logits.shape[-1]
        class_names = tuple(f"imagenet_{c}" if k == 1000 else f"class_{c}" for c in range(k))
    elif ds.labels is None:
        raise InputError(f"predict=False takes the data set's classes as labels, and data "
                         f"{data!r} has none")
    else:
        labels = np.asarray(ds.labels, np.int32)
        class_names = tuple(str(c) for c in ds.class_names) if ds.class_names else \
            tuple(f"class_{c}" for c in range(int(labels.max()) + 1))
    if ds.concept_labels is not None and len(ds.concept_names):
        concept_names = tuple(str(c) for c in ds.concept_names)
        concept_labels = np.asarray(ds.concept_labels, bool)
    elif ds.labels is not None:   # the data set's classes as concepts (one-hot)
        classes = np.asarray(ds.labels)
        k = len(ds.class_names) if ds.class_names else int(classes.max()) + 1
        concept_names = tuple(str(c) for c in ds.class_names) if ds.class_names else \
            tuple(f"class_{c}" for c in range(k))
        concept_labels = classes[:, None] == np.arange(k)[None, :]
    else:
        raise InputError(f"data {data!r} has neither class labels nor concept annotations: "
                         f"nothing to serve as concepts (pass an annotated folder, see "
                         f"repsim_jax.data.annotations)")
    masks = None if ds.concept_masks is None else np.asarray(ds.concept_masks, bool)
    return NotebookSetup(
        model=model, model_name=name, data=data, images=images, labels=labels,
        class_names=class_names, class_rules=None, concept_labels=concept_labels,
        concept_names=concept_names, concept_masks=masks, layers=layers,
        info={**info, "geometry": ds.info.get("geometry"), "split": ds.info.get("split"),
              "data_labels": None if ds.labels is None else np.asarray(ds.labels)})


def _check_source(data: str) -> None:
    """A clear error for a data name no loader takes, before any model is loaded (the
    loader itself checks the rest: tfds names, files, folders)."""
    from pathlib import Path

    from repsim_jax import data as rdata
    if data in (BUILTIN_DATA, "digits", "lfw_subset") or data.startswith(
            ("tfds:", "hf:", "folder:")) or data.endswith((".npz", ".npy")) or \
            Path(data).expanduser().exists():
        return
    raise unknown_name("data source", data, list(rdata.SOURCES))


def setup(data: str = BUILTIN_DATA, *, n_images: int, model="small_vgg", arch="resnet18",
          weights=None, size: int = 224, layers: Sequence[str] | Mapping | None = None,
          split: str = "auto", seed: int = 0, data_dir=None, concepts=None, masks=None,
          batch_size: int | None = 64,
          predict: bool = True, progress: bool | None = None,
          echo: Callable[[str], None] | None = print) -> NotebookSetup:
    """Data and model for a notebook (module docstring): a :class:`NotebookSetup`.

    Args:
      data: ``"repsim_shapes"`` (built-in data and model) or any other source of
        :func:`repsim_jax.data.load` (real data and an ImageNet model).
      n_images: how many images (>= 1): the first of the built-in test split; a seeded
        random subset (``seed``) of other sources.
      model: the name of a built-in trained model, used on ``repsim_shapes``; or an nnx
        model (your own), used on any data (built-in images are then resized/cropped by
        its preprocessing when it names another size).
      arch, weights, size: the torchvision architecture used on other data when ``model``
        is a name, its weights (``None``: torchvision's) and input side.
      layers: layer names, or ``{model name: layer names}`` (the entry of the model in
        use is taken); default :data:`DEFAULT_LAYERS` of that model.
      split, data_dir: of :func:`repsim_jax.data.load` (other data only).
      concepts, masks: an image folder's concept CSV / masks directory
        (:mod:`repsim_jax.data.annotations`): they become the concepts instead of the
        folder's classes.
      batch_size: of the forward pass that predicts the labels (other data only).
      predict: on other data, label each image by the model's prediction (True) or by
        the data set's own class (False: a backbone without a classifier head).
      progress: progress of training a built-in model on first use.
      echo: where the one-line reports go (``None``: silent).
    """
    echo = echo or (lambda line: None)
    if not isinstance(data, str) or not data:
        raise InputError(f"data must be a data source name such as {BUILTIN_DATA!r} or "
                         f"'tfds:imagenette/160px', got {data!r}")
    if isinstance(n_images, bool) or not isinstance(n_images, (int, np.integer)):
        raise InputError(f"n_images must be an integer >= 1, got {n_images!r}")
    if int(n_images) < 1:
        raise InputError(f"n_images must be >= 1, got {n_images}")
    _check_source(data)
    if data == BUILTIN_DATA:
        nb = _builtin(int(n_images), model, layers, progress, echo)
    else:
        nb = _real(data, int(n_images), arch if isinstance(model, str) else model, weights,
                   size, layers, split, seed, data_dir, concepts, masks, batch_size, predict,
                   echo)
    echo(nb.describe())
    return nb
