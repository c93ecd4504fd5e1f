"""ResNet-18/34/50 (torchvision layout, inference mode, NHWC).

Same module tree and parameter names as ``torchvision.models.resnet`` (v1.5: the stride of
a Bottleneck sits on its 3x3 conv), so a torchvision state_dict ports key by key.

Captured layers (torchvision module paths, in forward order): ``conv1``, ``bn1``, ``relu``,
``maxpool``, per block ``layerK.i.conv1``, ``.bn1``, ``.conv2``, ``.bn2`` (``.conv3``,
``.bn3`` for Bottleneck), ``.downsample.0``, ``.downsample.1``, ``.downsample``, ``.relu``
and the block output ``layerK.i``; the stage output ``layerK``; ``avgpool`` (N, 1, 1, C) and
``fc``. A block calls its single ``relu`` module two (Basic) or three (Bottleneck) times;
like a PyTorch forward hook writing into a dict, ``layerK.i.relu`` holds the *last* call,
which equals the block output.
"""
from __future__ import annotations

from typing import Sequence

import jax
from flax import nnx

from repsim_jax.models.capture import tap
from repsim_jax.models.preprocess import imagenet_at
from repsim_jax.models.layers import (AdaptiveAvgPool2d, BatchNorm2d, Conv2d, Linear,
                                      MaxPool2d, ReLU)

__all__ = ["ResNet", "BasicBlock", "Bottleneck", "resnet18", "resnet34", "resnet50"]


def _downsample(inplanes, outplanes, stride, rngs):
    if stride == 1 and inplanes == outplanes:
        return None
    return nnx.List([Conv2d(inplanes, outplanes, 1, stride=stride, bias=False, rngs=rngs),
                     BatchNorm2d(outplanes)])


def _run_downsample(ds, x, taps, prefix):
    if ds is None:
        return x
    y = tap(taps, f"{prefix}.downsample.0", ds[0](x))
    y = tap(taps, f"{prefix}.downsample.1", ds[1](y))
    return tap(taps, f"{prefix}.downsample", y)


class BasicBlock(nnx.Module):
    """relu(bn2(conv2(relu(bn1(conv1(x))))) + downsample(x)), 3x3 convs."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, *, rngs: nnx.Rngs):
        self.conv1 = Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False,
                            rngs=rngs)
        self.bn1 = BatchNorm2d(planes)
        self.relu = ReLU()
        self.conv2 = Conv2d(planes, planes, 3, padding=1, bias=False, rngs=rngs)
        self.bn2 = BatchNorm2d(planes)
        self.downsample = _downsample(inplanes, planes, stride, rngs)

    def __call__(self, x, taps=None, prefix=""):
        y = tap(taps, f"{prefix}.conv1", self.conv1(x))
        y = tap(taps, f"{prefix}.bn1", self.bn1(y))
        y = self.relu(y)
        y = tap(taps, f"{prefix}.conv2", self.conv2(y))
        y = tap(taps, f"{prefix}.bn2", self.bn2(y))
        y = tap(taps, f"{prefix}.relu", self.relu(y + _run_downsample(self.downsample, x,
                                                                         taps, prefix)))
        return tap(taps, prefix, y)


class Bottleneck(nnx.Module):
    """relu(bn3(conv3(relu(bn2(conv2(relu(bn1(conv1(x))))))) + downsample(x)); 1x1-3x3-1x1."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, *, rngs: nnx.Rngs):
        self.conv1 = Conv2d(inplanes, planes, 1, bias=False, rngs=rngs)
        self.bn1 = BatchNorm2d(planes)
        self.conv2 = Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False,
                            rngs=rngs)
        self.bn2 = BatchNorm2d(planes)
        self.conv3 = Conv2d(planes, planes * 4, 1, bias=False, rngs=rngs)
        self.bn3 = BatchNorm2d(planes * 4)
        self.relu = ReLU()
        self.downsample = _downsample(inplanes, planes * 4, stride, rngs)

    def __call__(self, x, taps=None, prefix=""):
        y = tap(taps, f"{prefix}.conv1", self.conv1(x))
        y = self.relu(tap(taps, f"{prefix}.bn1", self.bn1(y)))
        y = tap(taps, f"{prefix}.conv2", self.conv2(y))
        y = self.relu(tap(taps, f"{prefix}.bn2", self.bn2(y)))
        y = tap(taps, f"{prefix}.conv3", self.conv3(y))
        y = tap(taps, f"{prefix}.bn3", self.bn3(y))
        y = tap(taps, f"{prefix}.relu", self.relu(y + _run_downsample(self.downsample, x,
                                                                         taps, prefix)))
        return tap(taps, prefix, y)


class ResNet(nnx.Module):
    """torchvision ``ResNet(block, layers, num_classes)`` in inference mode (NHWC input)."""

    def __init__(self, block: type, layers: Sequence[int], num_classes: int = 1000, *,
                 rngs: nnx.Rngs, input_shape: Sequence[int] = (224, 224, 3)):
        self.input_shape = tuple(int(s) for s in input_shape)
        self.num_classes = int(num_classes)
        self.preprocess = imagenet_at(self.input_shape[:2])   # torchvision's normalisation
        in_ch = self.input_shape[-1]
        self.conv1 = Conv2d(in_ch, 64, 7, stride=2, padding=3, bias=False, rngs=rngs)
        self.bn1 = BatchNorm2d(64)
        self.relu = ReLU()
        self.maxpool = MaxPool2d(3, stride=2, padding=1)
        inplanes = 64
        for k, (planes, n, stride) in enumerate(zip((64, 128, 256, 512), layers,
                                                   (1, 2, 2, 2)), start=1):
            blocks = []
            for i in range(n):
                blocks.append(block(inplanes, planes, stride if i == 0 else 1, rngs=rngs))
                inplanes = planes * block.expansion
            setattr(self, f"layer{k}", nnx.List(blocks))
        self.avgpool = AdaptiveAvgPool2d(1)
        self.fc = Linear(inplanes, num_classes, rngs=rngs)

    def __call__(self, x, taps=None):
        y = tap(taps, "conv1", self.conv1(x))
        y = tap(taps, "bn1", self.bn1(y))
        y = tap(taps, "relu", self.relu(y))
        y = tap(taps, "maxpool", self.maxpool(y))
        for k in range(1, 5):
            for i, blk in enumerate(getattr(self, f"layer{k}")):
                y = blk(y, taps, f"layer{k}.{i}")
            y = tap(taps, f"layer{k}", y)
        y = tap(taps, "avgpool", self.avgpool(y))
        return tap(taps, "fc", self.fc(y.reshape(y.shape[0], -1)))


def resnet18(num_classes: int = 1000, *, rngs: nnx.Rngs, input_shape=(224, 224, 3)) -> ResNet:
    """ResNet-18: BasicBlock x (2, 2, 2, 2), 11.7M parameters at 1000 classes."""
    return ResNet(BasicBlock, (2, 2, 2, 2), num_classes, rngs=rngs, input_shape=input_shape)


def resnet34(num_classes: int = 1000, *, rngs: nnx.Rngs, input_shape=(224, 224, 3)) -> ResNet:
    """ResNet-34: BasicBlock x (3, 4, 6, 3), 21.8M parameters at 1000 classes."""
    return ResNet(BasicBlock, (3, 4, 6, 3), num_classes, rngs=rngs, input_shape=input_shape)


def resnet50(num_classes: int = 1000, *, rngs: nnx.Rngs, input_shape=(224, 224, 3)) -> ResNet:
    """ResNet-50: Bottleneck x (3, 4, 6, 3), 25.6M parameters at 1000 classes."""
    return ResNet(Bottleneck, (3, 4, 6, 3), num_classes, rngs=rngs, input_shape=input_shape)
