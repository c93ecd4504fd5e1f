"""GoogLeNet (Inception v1; torchvision layout, inference mode, NHWC).

Szegedy et al., "Going Deeper with Convolutions", CVPR 2015, as torchvision builds it
(``torchvision.models.googlenet``): ``BasicConv2d`` = conv (no bias) + BatchNorm
(eps 1e-3) + ReLU; an ``Inception`` block concatenates (channels) ``branch1`` (1x1),
``branch2`` (1x1 -> 3x3), ``branch3`` (1x1 -> 3x3: torchvision's known deviation from the
paper's 5x5, kept so its weights load) and ``branch4`` (3x3/1 max-pool -> 1x1). Stem
``conv1`` 7x7/2, ``maxpool1``, ``conv2`` 1x1, ``conv3`` 3x3, ``maxpool2``; then
``inception3a/3b``, ``maxpool3``, ``inception4a..4e``, ``maxpool4``, ``inception5a/5b``,
``avgpool`` (global), ``dropout``, ``fc``. All max-pools use ``ceil_mode=True``.

``transform_input`` (default True, as torchvision sets it for its ImageNet weights): the
weights were trained on inputs scaled to [-1, 1], so the ImageNet-normalised input
:math:`x_c` is re-mapped per channel, :math:`x'_c = x_c \\sigma_c / 0.5 + (\\mu_c - 0.5) / 0.5`
(torchvision's ``_transform_input``); the model's ``preprocess`` is ImageNet's.

The auxiliary heads ``aux1`` (after ``inception4a``) and ``aux2`` (after ``inception4d``)
exist so a torchvision state_dict ports strictly, but are off at evaluation (as in
torchvision's eval mode) and never run; ``aux_logits=False`` leaves them out.

Parameters follow :mod:`repsim_jax.models.layers` (torchvision keys, HWIO convs), so
:func:`repsim_jax.models.port_torchvision` loads a torchvision ``googlenet`` state_dict.
Layer names: the module paths above (``conv1``, ``inception3a``,
``inception3a.branch2.1``, ``fc``...).
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from repsim_jax.models.layers import (BatchNorm2d, Conv2d, Dropout, Linear, MaxPool2d,
                                      adaptive_avg_pool2d, flatten_nchw)
from repsim_jax.models.preprocess import IMAGENET

__all__ = ["GoogLeNet", "Sequential", "BasicConv2d", "Inception", "InceptionAux", "googlenet",
           "transform_input"]

_MEAN = np.asarray(IMAGENET.mean, np.float32)
_STD = np.asarray(IMAGENET.std, np.float32)


def transform_input(x):
    """torchvision's ``_transform_input`` on NHWC: ImageNet-normalised -> [-1, 1] scaling."""
    return x * (_STD / 0.5) + (_MEAN - 0.5) / 0.5


class Sequential(nnx.List):
    """``torch.nn.Sequential``: a list of modules (items keep their index in parameter
    paths, ``branch2.1.conv.weight``) that is itself callable, so it is a layer too."""

    def __call__(self, x):
        for m in self:
            x = m(x)
        return x


class BasicConv2d(nnx.Module):
    """relu(bn(conv(x))), conv without bias, BatchNorm eps 1e-3."""

    def __init__(self, cin: int, cout: int, kernel_size, stride=1, padding=0, *, rngs):
        self.conv = Conv2d(cin, cout, kernel_size, stride=stride, padding=padding,
                           bias=False, rngs=rngs)
        self.bn = BatchNorm2d(cout, eps=1e-3)

    def __call__(self, x):
        return jax.nn.relu(self.bn(self.conv(x)))


class Inception(nnx.Module):
    """Four branches concatenated along channels (see the module docstring)."""

    def __init__(self, cin, ch1x1, ch3x3red, ch3x3, ch5x5red, ch5x5, pool_proj, *, rngs):
        self.branch1 = BasicConv2d(cin, ch1x1, 1, rngs=rngs)
        self.branch2 = Sequential([BasicConv2d(cin, ch3x3red, 1, rngs=rngs),
                                 BasicConv2d(ch3x3red, ch3x3, 3, padding=1, rngs=rngs)])
        self.branch3 = Sequential([BasicConv2d(cin, ch5x5red, 1, rngs=rngs),
                                 BasicConv2d(ch5x5red, ch5x5, 3, padding=1, rngs=rngs)])
        self.branch4 = Sequential([MaxPool2d(3, stride=1, padding=1, ceil_mode=True),
                                 BasicConv2d(cin, pool_proj, 1, rngs=rngs)])

    def __call__(self, x):
        return jnp.concatenate([self.branch1(x), self.branch2(x), self.branch3(x),
                                self.branch4(x)], axis=-1)


class InceptionAux(nnx.Module):
    """Auxiliary classifier: 4x4 adaptive average pool, 1x1 conv (128), fc1 (1024), ReLU,
    dropout, fc2. Present for weight loading; not run at evaluation."""

    def __init__(self, cin: int, num_classes: int, *, rngs):
        self.conv = BasicConv2d(cin, 128, 1, rngs=rngs)
        self.fc1 = Linear(2048, 1024, rngs=rngs)
        self.fc2 = Linear(1024, num_classes, rngs=rngs)
        self.dropout = Dropout()

    def __call__(self, x):
        y = flatten_nchw(self.conv(adaptive_avg_pool2d(x, 4)))
        return self.fc2(self.dropout(jax.nn.relu(self.fc1(y))))


class GoogLeNet(nnx.Module):
    """torchvision ``GoogLeNet(num_classes, aux_logits, transform_input)`` in eval mode."""

    def __init__(self, num_classes: int = 1000, *, rngs: nnx.Rngs,
                 input_shape: Sequence[int] = (224, 224, 3), aux_logits: bool = True,
                 transform_input: bool = True):
        self.input_shape = tuple(int(s) for s in input_shape)
        self.num_classes = int(num_classes)
        self.transform_input = bool(transform_input)
        self.preprocess = IMAGENET
        cin = self.input_shape[-1]
        self.conv1 = BasicConv2d(cin, 64, 7, stride=2, padding=3, rngs=rngs)
        self.maxpool1 = MaxPool2d(3, stride=2, ceil_mode=True)
        self.conv2 = BasicConv2d(64, 64, 1, rngs=rngs)
        self.conv3 = BasicConv2d(64, 192, 3, padding=1, rngs=rngs)
        self.maxpool2 = MaxPool2d(3, stride=2, ceil_mode=True)
        self.inception3a = Inception(192, 64, 96, 128, 16, 32, 32, rngs=rngs)
        self.inception3b = Inception(256, 128, 128, 192, 32, 96, 64, rngs=rngs)
        self.maxpool3 = MaxPool2d(3, stride=2, ceil_mode=True)
        self.inception4a = Inception(480, 192, 96, 208, 16, 48, 64, rngs=rngs)
        self.inception4b = Inception(512, 160, 112, 224, 24, 64, 64, rngs=rngs)
        self.inception4c = Inception(512, 128, 128, 256, 24, 64, 64, rngs=rngs)
        self.inception4d = Inception(512, 112, 144, 288, 32, 64, 64, rngs=rngs)
        self.inception4e = Inception(528, 256, 160, 320, 32, 128, 128, rngs=rngs)
        self.maxpool4 = MaxPool2d(2, stride=2, ceil_mode=True)
        self.inception5a = Inception(832, 256, 160, 320, 32, 128, 128, rngs=rngs)
        self.inception5b = Inception(832, 384, 192, 384, 48, 128, 128, rngs=rngs)
        self.aux1 = InceptionAux(512, num_classes, rngs=rngs) if aux_logits else None
        self.aux2 = InceptionAux(528, num_classes, rngs=rngs) if aux_logits else None
        self.avgpool = _GlobalAvgPool()
        self.dropout = Dropout()
        self.fc = Linear(1024, num_classes, rngs=rngs)

    def __call__(self, x):
        if self.transform_input:
            x = transform_input(x)
        for name in ("conv1", "maxpool1", "conv2", "conv3", "maxpool2", "inception3a",
                     "inception3b", "maxpool3", "inception4a", "inception4b", "inception4c",
                     "inception4d", "inception4e", "maxpool4", "inception5a", "inception5b",
                     "avgpool"):
            x = getattr(self, name)(x)
        return self.fc(self.dropout(x.reshape(x.shape[0], -1)))


class _GlobalAvgPool(nnx.Module):
    """``nn.AdaptiveAvgPool2d((1, 1))``: (N, 1, 1, C)."""

    def __call__(self, x):
        return jnp.mean(x, axis=(1, 2), keepdims=True)


def googlenet(num_classes: int = 1000, *, rngs: nnx.Rngs, input_shape=(224, 224, 3),
              aux_logits: bool = True, transform_input: bool = True) -> GoogLeNet:
    """GoogLeNet: 6.6M parameters at 1000 classes (13.0M with the auxiliary heads)."""
    return GoogLeNet(num_classes, rngs=rngs, input_shape=input_shape, aux_logits=aux_logits,
                     transform_input=transform_input)
