"""Small trainable CNNs sized for the built-in 64x64 data (``repsim_shapes``).

Two architectures of different depth, both with batch norm and torchvision-style names:

* :class:`SmallVGG` — 4 conv stages (conv-BN-ReLU-maxpool) + a 2-layer classifier;
  layers ``features.0`` ... ``features.15``, ``globalpool``, ``classifier.0`` ... ``.2``.
* :class:`SmallResNet` — a stem and three stages of (1, 1, 2) BasicBlocks (8x8 at the
  end); layers ``conv1``, ``bn1``, ``relu``, ``maxpool``, ``layerK.i.conv1`` ...
  ``layerK.i``, ``layerK``, ``globalpool``, ``fc.0`` ... ``fc.2`` and ``fc`` (= logits;
  block naming as in :mod:`repsim_jax.models.resnet`).

Both end in a global *max* pool (``globalpool``, (N, 1, 1, C)) rather than torchvision's
average pool: the built-in classes ask whether some object has a property.

Batch norm (:class:`BatchNorm2d`) normalises with the batch statistics in training mode
and with the running statistics in eval mode; switch with ``model.train()`` /
``model.eval()`` (nnx sets ``use_running_average``). Models are built in eval mode.
Parameter names equal torch's (``weight``, ``bias``, ``running_mean``, ``running_var``),
so the nnx state path of a parameter is its torch state_dict key.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from repsim_jax.models.capture import tap
from repsim_jax.models.layers import Conv2d, Linear, MaxPool2d, ReLU
from repsim_jax.models.preprocess import Preprocess

__all__ = ["BatchNorm2d", "SmallVGG", "SmallResNet", "SMALL_MODELS"]


class BatchNorm2d(nnx.Module):
    """Trainable ``torch.nn.BatchNorm2d`` over the last (channel) axis.

    Training: :math:`y = (x-\\mu_B)/\\sqrt{\\sigma_B^2+\\epsilon}\\,\\gamma+\\beta` with the
    batch mean/variance, and the running statistics move by
    :math:`r \\leftarrow (1-m)\\,r + m\\,s_B` (torch's momentum :math:`m=0.1`, unbiased
    variance). Eval: the same formula with the running statistics.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1,
                 use_running_average: bool = True):
        self.eps = float(eps)
        self.momentum = float(momentum)
        self.use_running_average = bool(use_running_average)
        self.weight = nnx.Param(jnp.ones((num_features,)))
        self.bias = nnx.Param(jnp.zeros((num_features,)))
        self.running_mean = nnx.BatchStat(jnp.zeros((num_features,)))
        self.running_var = nnx.BatchStat(jnp.ones((num_features,)))

    def __call__(self, x):
        if self.use_running_average:
            mean, var = self.running_mean[...], self.running_var[...]
        else:
            axes = tuple(range(x.ndim - 1))
            mean = jnp.mean(x, axis=axes)
            var = jnp.mean(jnp.square(x - mean), axis=axes)
            n = x.size // x.shape[-1]
            m = self.momentum
            self.running_mean[...] = (1 - m) * self.running_mean[...] + m * jax.lax.stop_gradient(mean)
            self.running_var[...] = ((1 - m) * self.running_var[...]
                                     + m * jax.lax.stop_gradient(var) * n / max(n - 1, 1))
        scale = self.weight[...] * jax.lax.rsqrt(var + self.eps)
        return (x - mean) * scale + self.bias[...]


class GlobalMaxPool2d(nnx.Module):
    """Maximum over the spatial axes, (N, H, W, C) -> (N, 1, 1, C).

    The classes of ``repsim_shapes`` depend on whether *some* object has a property, and
    a spatial maximum detects presence directly (global averaging dilutes small objects,
    which made training several times slower).
    """

    def __call__(self, x):
        return jnp.max(x, axis=(1, 2), keepdims=True)


class SmallVGG(nnx.Module):
    """VGG-like: 4 x [conv3x3-BN-ReLU-maxpool2] with widths (16, 32, 64, 64), then
    global max pool and ``Linear(64, 64)-ReLU-Linear(64, num_classes)``.

    ``features`` indices follow ``torchvision.models.vgg`` (BN variant): stage ``s`` has
    conv ``4s``, BN ``4s+1``, ReLU ``4s+2``, maxpool ``4s+3``. 64x64 input -> 4x4x64.
    """

    widths = (16, 32, 64, 64)

    def __init__(self, num_classes: int, *, rngs: nnx.Rngs,
                 input_shape: Sequence[int] = (64, 64, 3)):
        self.input_shape = tuple(int(s) for s in input_shape)
        self.num_classes = int(num_classes)
        # trained on images in [0, 1] without normalisation (models/train.py, zoo.py)
        self.preprocess = Preprocess(size=self.input_shape[:2], resize="resize")
        layers, c_in = [], self.input_shape[-1]
        for width in self.widths:
            layers += [Conv2d(c_in, width, 3, padding=1, bias=False, rngs=rngs),
                       BatchNorm2d(width), ReLU(), MaxPool2d(2)]
            c_in = width
        self.features = nnx.List(layers)
        self.globalpool = GlobalMaxPool2d()
        self.classifier = nnx.List([Linear(c_in, 64, rngs=rngs), ReLU(),
                                    Linear(64, num_classes, rngs=rngs)])

    def __call__(self, x, taps=None):
        for i, layer in enumerate(self.features):
            x = tap(taps, f"features.{i}", layer(x))
        x = tap(taps, "globalpool", self.globalpool(x))
        x = x.reshape(x.shape[0], -1)
        for i, layer in enumerate(self.classifier):
            x = tap(taps, f"classifier.{i}", layer(x))
        return x


class _Block(nnx.Module):
    """BasicBlock: relu(bn2(conv2(relu(bn1(conv1(x))))) + downsample(x))."""

    def __init__(self, c_in: int, c_out: int, stride: int, *, rngs: nnx.Rngs):
        self.conv1 = Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False, rngs=rngs)
        self.bn1 = BatchNorm2d(c_out)
        self.relu = ReLU()
        self.conv2 = Conv2d(c_out, c_out, 3, padding=1, bias=False, rngs=rngs)
        self.bn2 = BatchNorm2d(c_out)
        self.downsample = (nnx.List([Conv2d(c_in, c_out, 1, stride=stride, bias=False,
                                            rngs=rngs), BatchNorm2d(c_out)])
                           if stride != 1 or c_in != c_out else None)

    def __call__(self, x, taps, prefix):
        y = tap(taps, f"{prefix}.conv1", self.conv1(x))
        y = self.relu(tap(taps, f"{prefix}.bn1", self.bn1(y)))
        y = tap(taps, f"{prefix}.conv2", self.conv2(y))
        y = tap(taps, f"{prefix}.bn2", self.bn2(y))
        if self.downsample is not None:
            x = tap(taps, f"{prefix}.downsample.0", self.downsample[0](x))
            x = tap(taps, f"{prefix}.downsample.1", self.downsample[1](x))
            x = tap(taps, f"{prefix}.downsample", x)
        y = tap(taps, f"{prefix}.relu", self.relu(y + x))
        return tap(taps, prefix, y)


class SmallResNet(nnx.Module):
    """ResNet-like: stem conv3x3(16)-BN-ReLU-maxpool2, then ``layer1..3`` of (1, 1, 2)
    BasicBlocks with widths (16, 32, 64) and strides (1, 2, 2), global max pool, and the
    head ``fc = Sequential(Linear(64, 64), ReLU, Linear(64, num_classes))`` (the classes
    combine several concepts: a hidden layer lets the head form AND/NOT of them).

    11 weight layers on the main path (9 convs + 2 linear, plus two 1x1 downsample convs)
    vs. 6 in :class:`SmallVGG`. 64x64 input -> 8x8x64.
    """

    widths = (16, 32, 64)
    blocks = (1, 1, 2)

    def __init__(self, num_classes: int, *, rngs: nnx.Rngs,
                 input_shape: Sequence[int] = (64, 64, 3)):
        self.input_shape = tuple(int(s) for s in input_shape)
        self.num_classes = int(num_classes)
        # trained on images in [0, 1] without normalisation (models/train.py, zoo.py)
        self.preprocess = Preprocess(size=self.input_shape[:2], resize="resize")
        self.conv1 = Conv2d(self.input_shape[-1], 16, 3, padding=1, bias=False, rngs=rngs)
        self.bn1 = BatchNorm2d(16)
        self.relu = ReLU()
        self.maxpool = MaxPool2d(2)
        c_in = 16
        for k, (width, n, stride) in enumerate(zip(self.widths, self.blocks, (1, 2, 2)), 1):
            blocks = []
            for i in range(n):
                blocks.append(_Block(c_in, width, stride if i == 0 else 1, rngs=rngs))
                c_in = width
            setattr(self, f"layer{k}", nnx.List(blocks))
        self.globalpool = GlobalMaxPool2d()
        self.fc = nnx.List([Linear(c_in, 64, rngs=rngs), ReLU(),
                            Linear(64, num_classes, rngs=rngs)])

    def __call__(self, x, taps=None):
        y = tap(taps, "conv1", self.conv1(x))
        y = tap(taps, "bn1", self.bn1(y))
        y = tap(taps, "relu", self.relu(y))
        y = tap(taps, "maxpool", self.maxpool(y))
        for k in range(1, len(self.widths) + 1):
            for i, blk in enumerate(getattr(self, f"layer{k}")):
                y = blk(y, taps, f"layer{k}.{i}")
            y = tap(taps, f"layer{k}", y)
        y = tap(taps, "globalpool", self.globalpool(y))
        y = y.reshape(y.shape[0], -1)
        for i, layer in enumerate(self.fc):
            y = tap(taps, f"fc.{i}", layer(y))
        return tap(taps, "fc", y)


SMALL_MODELS = {"small_vgg": SmallVGG, "small_resnet": SmallResNet}
