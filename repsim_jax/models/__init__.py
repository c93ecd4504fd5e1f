"""Models: nnx architectures with named-layer capture, safe weight porting, built-in zoo.

``build(name)`` constructs any registered architecture (torchvision layouts: ResNet-18/34/50,
VGG-11/16 with and without BN, AlexNet; the small CNNs for the built-in data), in
inference mode, NHWC, carrying its preprocessing (``model.preprocess``; ImageNet mean/std
for the torchvision layouts). ``activations(model, images, layers)`` returns named layers
(submodule paths; torchvision module paths for the built-ins) of *any* nnx model from one
jit-compiled pass; ``from_linen`` / ``from_function`` wrap linen modules and plain
functions; ``load_state_dict`` / ``port_torchvision`` bring in PyTorch weights without
executing pickled code.
"""
from __future__ import annotations

from typing import Callable, Sequence

from flax import nnx

from repsim_jax._checks import InputError, unknown_name
from repsim_jax.models.alexnet import alexnet
from repsim_jax.models.capture import (FunctionModel, LinenModel, Taps, activations, forward,
                                      from_function, from_linen, layer_shapes, list_layers,
                                      record_layers, tap)
from repsim_jax.models.googlenet import googlenet
from repsim_jax.models.mtcnn import (ONet, PNet, RNet, fetch_mtcnn_weights, load_mtcnn,
                                     mtcnn_normalize, mtcnn_preprocess)
from repsim_jax.models.preprocess import (IDENTITY, IMAGENET, Preprocess, preprocess_of,
                                          resize_array)
from repsim_jax.models.port import (PortError, UnsafeWeightsError, WeightsFileError,
                                    export_state_dict, load_ported, load_state_dict,
                                    port_torchvision, save_npz, save_safetensors)
from repsim_jax.models.resnet import resnet18, resnet34, resnet50
from repsim_jax.models.vgg import vgg11, vgg11_bn, vgg16, vgg16_bn
from repsim_jax.models.hf import build_hf, load_hf, save_hf

__all__ = ["activations", "forward", "layer_shapes", "list_layers", "tap", "Taps", "build",
           "model_names", "load_state_dict", "port_torchvision", "export_state_dict",
           "save_npz", "save_safetensors", "load_ported", "PortError", "WeightsFileError",
           "UnsafeWeightsError", "load_mtcnn", "fetch_mtcnn_weights", "mtcnn_normalize",
           "mtcnn_preprocess", "PNet", "RNet", "ONet", "from_linen", "from_function",
           "LinenModel", "FunctionModel", "record_layers", "Preprocess", "IMAGENET",
           "IDENTITY", "preprocess_of", "resize_array", "load_hf", "build_hf", "save_hf"]

TORCHVISION_MODELS: dict[str, Callable] = {
    "resnet18": resnet18, "resnet34": resnet34, "resnet50": resnet50,
    "vgg11": vgg11, "vgg11_bn": vgg11_bn, "vgg16": vgg16, "vgg16_bn": vgg16_bn,
    "alexnet": alexnet,
    "googlenet": googlenet,
}


def _registry() -> dict[str, Callable]:
    reg = dict(TORCHVISION_MODELS)
    try:
        from repsim_jax.models.small import SMALL_MODELS
    except ImportError:  # the small CNN family is optional while it is being written
        SMALL_MODELS = {}
    reg.update(SMALL_MODELS)
    return reg


def model_names() -> list[str]:
    """Names accepted by :func:`build`."""
    return list(_registry())


def build(name: str, *, num_classes: int = 1000, rngs: nnx.Rngs | None = None,
          input_shape: Sequence[int] | None = None, **kwargs):
    """A freshly initialised model ``name`` (see :func:`model_names`), inference mode, NHWC.

    ``input_shape`` (H, W, C) sets the model's default input (224x224x3 for the
    torchvision architectures, which accept any size their pooling allows); ``rngs``
    defaults to ``nnx.Rngs(0)``. Extra keyword arguments go to the constructor.
    """
    reg = _registry()
    if name not in reg:
        raise unknown_name("model", name, list(reg))
    if int(num_classes) < 1:
        raise InputError(f"num_classes must be >= 1, got {num_classes}")
    if input_shape is not None:
        input_shape = tuple(int(s) for s in input_shape)
        if len(input_shape) != 3 or min(input_shape) < 1:
            raise InputError(f"input_shape: expected (H, W, C), got {input_shape}")
        kwargs["input_shape"] = input_shape
    model = reg[name](int(num_classes), rngs=rngs if rngs is not None else nnx.Rngs(0),
                      **kwargs)
    if getattr(model, "arch", None) is None:
        model.arch = name  # named in error messages (e.g. a state_dict that does not fit)
    return model
