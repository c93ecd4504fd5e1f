"""MTCNN's PNet / RNet / ONet (facenet-pytorch 2.6.0 layouts) and their real pretrained weights.

These are the only real pretrained CNN weights reachable offline-from-a-hub here: they
ship inside the facenet-pytorch 2.6.0 wheel (MIT licence) as legacy ``torch.save``
state_dicts. :func:`fetch_mtcnn_weights` downloads that wheel with
``python -m pip download --no-deps facenet-pytorch==2.6.0`` into the repsim cache
(``$REPSIM_CACHE`` or ``~/.cache/repsim_jax``; nothing is committed) and extracts the
``.pt`` files; :func:`load_mtcnn` ports one through the restricted loader of
:mod:`repsim_jax.models.port` (no pickled code runs).

Layout facts (they matter - a wrong flatten order drops the lfw face AUC to ~0.93):

* input: RGB, NHWC here, normalised as :math:`(255x - 127.5) / 128` for :math:`x\\in[0,1]`
  (each net's ``preprocess``, :func:`mtcnn_preprocess`, applied by ``activations``;
  :func:`mtcnn_normalize` for direct calls); RNet takes 24x24, ONet 48x48, PNet any size >= 12;
* max-pools use ``ceil_mode=True`` (torch's rule, see :func:`~repsim_jax.models.layers.max_pool2d`);
* before the first dense layer facenet-pytorch does ``x.permute(0, 3, 2, 1)`` on NCHW,
  i.e. it flattens in (W, H, C) order (the Caffe/Matlab origin of the weights). In NHWC
  this is ``x.transpose(0, 2, 1, 3).reshape(N, -1)``.

Captured layers use facenet-pytorch's module names (``conv1``, ``prelu1``, ``pool1``, ...,
``dense4``, ``prelu4``, ``dense5_1``, ``softmax5_1``, ``dense5_2``). ``__call__`` returns the
face/non-face logits (``dense5_1`` / ``dense6_1`` / ``conv4_1``; class 1 = face).
"""
from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx

from repsim_jax._checks import unknown_name
from repsim_jax.models.capture import tap
from repsim_jax.models.layers import Conv2d, Linear, MaxPool2d, PReLU
from repsim_jax.models.preprocess import Preprocess

__all__ = ["PNet", "RNet", "ONet", "MTCNN_NETS", "mtcnn_normalize", "mtcnn_preprocess",
           "fetch_mtcnn_weights",
           "load_mtcnn", "FACENET_VERSION"]

FACENET_VERSION = "2.6.0"


# facenet-pytorch's (255 x - 127.5) / 128 for x in [0, 1], as mean/std normalisation
MTCNN_MEAN, MTCNN_STD = (0.5, 0.5, 0.5), (128 / 255, 128 / 255, 128 / 255)


def mtcnn_preprocess(size=None) -> Preprocess:
    """MTCNN's preprocessing: :math:`(255x - 127.5) / 128` as ``(x - 0.5) / (128/255)``;
    ``size`` (H, W) for RNet/ONet (resized to it), ``None`` for the fully convolutional PNet."""
    return Preprocess(size=size, mean=MTCNN_MEAN, std=MTCNN_STD,
                      resize="none" if size is None else "resize")


def mtcnn_normalize(images):
    """Maps images in [0, 1] to MTCNN's input range: :math:`(255x - 127.5) \\cdot 0.0078125`.

    The nets carry this as their ``preprocess`` (:func:`mtcnn_preprocess`), which
    :func:`repsim_jax.models.activations` applies itself: use this only when calling a net
    directly."""
    return (jnp.asarray(images, jnp.float32) * 255.0 - 127.5) * 0.0078125


def _flatten_whc(x):
    return jnp.transpose(x, (0, 2, 1, 3)).reshape(x.shape[0], -1)


class PNet(nnx.Module):
    """Proposal net (fully convolutional, 12x12 receptive field)."""

    def __init__(self, *, rngs: nnx.Rngs, input_shape=(12, 12, 3)):
        self.input_shape = tuple(input_shape)
        self.preprocess = mtcnn_preprocess()
        self.conv1 = Conv2d(3, 10, 3, rngs=rngs)
        self.prelu1 = PReLU(10)
        self.pool1 = MaxPool2d(2, 2, ceil_mode=True)
        self.conv2 = Conv2d(10, 16, 3, rngs=rngs)
        self.prelu2 = PReLU(16)
        self.conv3 = Conv2d(16, 32, 3, rngs=rngs)
        self.prelu3 = PReLU(32)
        self.conv4_1 = Conv2d(32, 2, 1, rngs=rngs)
        self.conv4_2 = Conv2d(32, 4, 1, rngs=rngs)

    def __call__(self, x, taps=None):
        for name in ("conv1", "prelu1", "pool1", "conv2", "prelu2", "conv3", "prelu3"):
            x = tap(taps, name, getattr(self, name)(x))
        logits = tap(taps, "conv4_1", self.conv4_1(x))
        tap(taps, "softmax4_1", jax.nn.softmax(logits, axis=-1))
        tap(taps, "conv4_2", self.conv4_2(x))
        return logits


class RNet(nnx.Module):
    """Refinement net, 24x24 RGB input."""

    def __init__(self, *, rngs: nnx.Rngs, input_shape=(24, 24, 3)):
        self.input_shape = tuple(input_shape)
        self.preprocess = mtcnn_preprocess(self.input_shape[:2])
        self.conv1 = Conv2d(3, 28, 3, rngs=rngs)
        self.prelu1 = PReLU(28)
        self.pool1 = MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = Conv2d(28, 48, 3, rngs=rngs)
        self.prelu2 = PReLU(48)
        self.pool2 = MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = Conv2d(48, 64, 2, rngs=rngs)
        self.prelu3 = PReLU(64)
        self.dense4 = Linear(576, 128, rngs=rngs)
        self.prelu4 = PReLU(128)
        self.dense5_1 = Linear(128, 2, rngs=rngs)
        self.dense5_2 = Linear(128, 4, rngs=rngs)

    def __call__(self, x, taps=None):
        for name in ("conv1", "prelu1", "pool1", "conv2", "prelu2", "pool2", "conv3",
                     "prelu3"):
            x = tap(taps, name, getattr(self, name)(x))
        x = tap(taps, "dense4", self.dense4(_flatten_whc(x)))
        x = tap(taps, "prelu4", self.prelu4(x))
        logits = tap(taps, "dense5_1", self.dense5_1(x))
        tap(taps, "softmax5_1", jax.nn.softmax(logits, axis=-1))
        tap(taps, "dense5_2", self.dense5_2(x))
        return logits


class ONet(nnx.Module):
    """Output net, 48x48 RGB input (also predicts 5 facial landmarks, ``dense6_3``)."""

    def __init__(self, *, rngs: nnx.Rngs, input_shape=(48, 48, 3)):
        self.input_shape = tuple(input_shape)
        self.preprocess = mtcnn_preprocess(self.input_shape[:2])
        self.conv1 = Conv2d(3, 32, 3, rngs=rngs)
        self.prelu1 = PReLU(32)
        self.pool1 = MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = Conv2d(32, 64, 3, rngs=rngs)
        self.prelu2 = PReLU(64)
        self.pool2 = MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = Conv2d(64, 64, 3, rngs=rngs)
        self.prelu3 = PReLU(64)
        self.pool3 = MaxPool2d(2, 2, ceil_mode=True)
        self.conv4 = Conv2d(64, 128, 2, rngs=rngs)
        self.prelu4 = PReLU(128)
        self.dense5 = Linear(1152, 256, rngs=rngs)
        self.prelu5 = PReLU(256)
        self.dense6_1 = Linear(256, 2, rngs=rngs)
        self.dense6_2 = Linear(256, 4, rngs=rngs)
        self.dense6_3 = Linear(256, 10, rngs=rngs)

    def __call__(self, x, taps=None):
        for name in ("conv1", "prelu1", "pool1", "conv2", "prelu2", "pool2", "conv3",
                     "prelu3", "pool3", "conv4", "prelu4"):
            x = tap(taps, name, getattr(self, name)(x))
        x = tap(taps, "dense5", self.dense5(_flatten_whc(x)))
        x = tap(taps, "prelu5", self.prelu5(x))
        logits = tap(taps, "dense6_1", self.dense6_1(x))
        tap(taps, "softmax6_1", jax.nn.softmax(logits, axis=-1))
        tap(taps, "dense6_2", self.dense6_2(x))
        tap(taps, "dense6_3", self.dense6_3(x))
        return logits


MTCNN_NETS = {"pnet": PNet, "rnet": RNet, "onet": ONet}


def _cache_root() -> Path:
    env = os.environ.get("REPSIM_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "repsim_jax"


def fetch_mtcnn_weights(cache_dir=None, *, quiet: bool = True) -> Path:
    """Directory holding facenet-pytorch 2.6.0's ``pnet.pt``, ``rnet.pt``, ``onet.pt``.

    On first use downloads the wheel (``pip download --no-deps``, ~1.9 MB, no torch)
    into ``<cache>/wheels`` and extracts the three files into
    ``<cache>/facenet_pytorch-2.6.0/``; a file lock makes parallel callers wait for one
    download. Raises ``RuntimeError`` with pip's message when the download fails.
    """
    root = Path(cache_dir).expanduser() if cache_dir is not None else _cache_root()
    out = root / f"facenet_pytorch-{FACENET_VERSION}"
    names = ("pnet.pt", "rnet.pt", "onet.pt")
    if all((out / n).is_file() for n in names):
        return out
    wheels = root / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    with open(wheels / ".facenet.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if all((out / n).is_file() for n in names):
            return out
        wheel = sorted(wheels.glob(f"facenet_pytorch-{FACENET_VERSION}-*.whl"))
        if not wheel:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps",
                   f"facenet-pytorch=={FACENET_VERSION}", "-d", str(wheels)]
            if quiet:
                cmd.append("-q")
            proc = subprocess.run(cmd, capture_output=True, text=True)
            wheel = sorted(wheels.glob(f"facenet_pytorch-{FACENET_VERSION}-*.whl"))
            if proc.returncode != 0 or not wheel:
                raise RuntimeError(f"could not download facenet-pytorch=={FACENET_VERSION} "
                                   f"with `{' '.join(cmd)}`:\n{proc.stderr[-2000:]}")
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=".facenet-"))
        with zipfile.ZipFile(wheel[-1]) as zf:
            for n in names:
                (tmp / n).write_bytes(zf.read(f"facenet_pytorch/data/{n}"))
        out.mkdir(parents=True, exist_ok=True)
        for n in names:
            os.replace(tmp / n, out / n)
        tmp.rmdir()
    return out


def load_mtcnn(name: str, path=None, *, cache_dir=None):
    """``"pnet"``, ``"rnet"`` or ``"onet"`` with facenet-pytorch's pretrained weights, ported safely.

    ``path`` overrides the weights file (default: :func:`fetch_mtcnn_weights`).
    """
    from repsim_jax.models.port import port_torchvision

    key = str(name).lower()
    if key not in MTCNN_NETS:
        raise unknown_name("MTCNN net", name, list(MTCNN_NETS))
    if path is None:
        path = fetch_mtcnn_weights(cache_dir) / f"{key}.pt"
    model = MTCNN_NETS[key](rngs=nnx.Rngs(0))
    return port_torchvision(model, path)

