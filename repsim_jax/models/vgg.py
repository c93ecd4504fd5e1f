"""VGG-11/16 with and without batch norm (torchvision layout, inference mode, NHWC).

``features`` is torchvision's ``nn.Sequential`` of 3x3 convs (padding 1), optional
BatchNorm, ReLU and 2x2 max-pools; ``avgpool`` is ``AdaptiveAvgPool2d((7, 7))`` with torch's
bins (so any input size >= 32 px works, as in torchvision); ``classifier`` is
Linear-ReLU-Dropout-Linear-ReLU-Dropout-Linear (dropout is the identity in inference).

Flatten order: the NHWC ``avgpool`` output is transposed to NCHW before flattening
(:func:`~repsim_jax.models.layers.flatten_nchw`), so ``classifier.0.weight`` ports as a plain
transpose of the torch matrix.

Captured layers: ``features.0`` ... ``features.N`` (every module of the Sequential),
``features``, ``avgpool`` (N, 7, 7, C), ``classifier.0`` ... ``classifier.6``,
``classifier``.
"""
from __future__ import annotations

from typing import Sequence

from flax import nnx

from repsim_jax.models.capture import tap
from repsim_jax.models.preprocess import imagenet_at
from repsim_jax.models.layers import (AdaptiveAvgPool2d, BatchNorm2d, Conv2d, Dropout, Linear,
                                      MaxPool2d, ReLU, flatten_nchw)

__all__ = ["SequentialClassifierNet", "VGG", "vgg11", "vgg11_bn", "vgg16", "vgg16_bn", "CFGS"]

CFGS = {
    "vgg11": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg16": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
              512, 512, 512, "M"),
}


class SequentialClassifierNet(nnx.Module):
    """``features -> avgpool -> flatten (C, H, W) -> classifier``, torchvision's VGG/AlexNet shape."""

    def __init__(self, features: list, pool_size: int, classifier: list,
                 input_shape: Sequence[int]):
        self.input_shape = tuple(int(s) for s in input_shape)
        self.preprocess = imagenet_at(self.input_shape[:2])   # torchvision's normalisation
        self.features = nnx.List(features)
        self.avgpool = AdaptiveAvgPool2d(pool_size)
        self.classifier = nnx.List(classifier)

    def __call__(self, x, taps=None):
        for i, layer in enumerate(self.features):
            x = tap(taps, f"features.{i}", layer(x))
        x = tap(taps, "features", x)
        x = flatten_nchw(tap(taps, "avgpool", self.avgpool(x)))
        for i, layer in enumerate(self.classifier):
            x = tap(taps, f"classifier.{i}", layer(x))
        return tap(taps, "classifier", x)


def VGG(cfg: Sequence, batch_norm: bool, num_classes: int = 1000, *, rngs: nnx.Rngs,
        input_shape: Sequence[int] = (224, 224, 3), hidden: int = 4096):
    """torchvision ``VGG(make_layers(cfg, batch_norm), num_classes)``.

    ``hidden`` is the classifier width (4096 in torchvision; smaller only for experiments).
    """
    layers: list = []
    ch = int(input_shape[-1])
    for v in cfg:
        if v == "M":
            layers.append(MaxPool2d(2, 2))
            continue
        layers.append(Conv2d(ch, v, 3, padding=1, rngs=rngs))
        if batch_norm:
            layers.append(BatchNorm2d(v))
        layers.append(ReLU())
        ch = v
    classifier = [Linear(ch * 7 * 7, hidden, rngs=rngs), ReLU(), Dropout(),
                  Linear(hidden, hidden, rngs=rngs), ReLU(), Dropout(),
                  Linear(hidden, num_classes, rngs=rngs)]
    return SequentialClassifierNet(layers, 7, classifier, input_shape)


def vgg11(num_classes=1000, *, rngs, input_shape=(224, 224, 3), hidden=4096):
    """VGG-11 (configuration A), 132.9M parameters at 1000 classes."""
    return VGG(CFGS["vgg11"], False, num_classes, rngs=rngs, input_shape=input_shape,
               hidden=hidden)


def vgg11_bn(num_classes=1000, *, rngs, input_shape=(224, 224, 3), hidden=4096):
    """VGG-11 with BatchNorm after every conv."""
    return VGG(CFGS["vgg11"], True, num_classes, rngs=rngs, input_shape=input_shape,
               hidden=hidden)


def vgg16(num_classes=1000, *, rngs, input_shape=(224, 224, 3), hidden=4096):
    """VGG-16 (configuration D), 138.4M parameters at 1000 classes."""
    return VGG(CFGS["vgg16"], False, num_classes, rngs=rngs, input_shape=input_shape,
               hidden=hidden)


def vgg16_bn(num_classes=1000, *, rngs, input_shape=(224, 224, 3), hidden=4096):
    """VGG-16 with BatchNorm after every conv."""
    return VGG(CFGS["vgg16"], True, num_classes, rngs=rngs, input_shape=input_shape,
               hidden=hidden)
