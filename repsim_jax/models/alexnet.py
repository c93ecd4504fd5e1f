"""AlexNet (torchvision layout, inference mode, NHWC).

torchvision's one-GPU variant: ``features`` = conv11/4(64)-ReLU-pool3/2-conv5(192)-ReLU-
pool3/2-conv3(384)-ReLU-conv3(256)-ReLU-conv3(256)-ReLU-pool3/2, ``avgpool`` =
``AdaptiveAvgPool2d((6, 6))``, ``classifier`` = Dropout-Linear(9216, 4096)-ReLU-Dropout-
Linear(4096, 4096)-ReLU-Linear(4096, classes). Flatten in (C, H, W) order as in torch.
Captured layers: ``features.0..12``, ``features``, ``avgpool``, ``classifier.0..6``,
``classifier``. Inputs down to 63 px work (as in torchvision).
"""
from __future__ import annotations

from typing import Sequence

from flax import nnx

from repsim_jax.models.layers import Conv2d, Dropout, Linear, MaxPool2d, ReLU
from repsim_jax.models.vgg import SequentialClassifierNet

__all__ = ["alexnet"]


def alexnet(num_classes: int = 1000, *, rngs: nnx.Rngs,
            input_shape: Sequence[int] = (224, 224, 3), hidden: int = 4096):
    """torchvision ``AlexNet(num_classes)``, 61.1M parameters at 1000 classes."""
    ch = int(input_shape[-1])
    features = [Conv2d(ch, 64, 11, stride=4, padding=2, rngs=rngs), ReLU(), MaxPool2d(3, 2),
                Conv2d(64, 192, 5, padding=2, rngs=rngs), ReLU(), MaxPool2d(3, 2),
                Conv2d(192, 384, 3, padding=1, rngs=rngs), ReLU(),
                Conv2d(384, 256, 3, padding=1, rngs=rngs), ReLU(),
                Conv2d(256, 256, 3, padding=1, rngs=rngs), ReLU(), MaxPool2d(3, 2)]
    classifier = [Dropout(), Linear(256 * 6 * 6, hidden, rngs=rngs), ReLU(), Dropout(),
                  Linear(hidden, hidden, rngs=rngs), ReLU(), Linear(hidden, num_classes, rngs=rngs)]
    return SequentialClassifierNet(features, 6, classifier, input_shape)
