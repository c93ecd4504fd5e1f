"""ClaDec decoders: a layer's code back to an image, and fresh copies of an encoder.

Schneider & Vlachos, "Explaining Classifiers by Constructing Familiar Concepts" (Machine
Learning 2022, arXiv 2203.04109). A decoder ``D`` maps the activation ``L(x)`` of one layer of
a classifier back to input space,

.. math::

    D = \\sigma \\circ T_n \\circ \\mathrm{ReLU} \\circ T_{n-1} \\circ \\dots \\circ
        \\mathrm{ReLU} \\circ T_1 \\circ \\mathrm{ReLU} \\circ P ,

where ``P`` is the *projection* of the code - a dense layer onto an ``h0 x w0 x c0`` grid for a
flat code (or a code whose spatial size is not ``H / 2**n``), or a 3x3 convolution for a
spatial code of size ``h x w`` with ``H = 2**n h`` - and ``T_i`` are transposed convolutions
with kernel 4, stride 2 and (PyTorch) padding 1 (:class:`UpConv`, computed as a 3x3
convolution over the four output phases), each doubling the resolution, so that ``n``
stages reach the input resolution ``H x W``; the last stage emits the image's ``C`` channels and
``sigma`` (the logistic sigmoid) puts them into ``[0, 1]``. Channels halve per stage from
``width`` down to ``min_width``. The decoder has no batch normalisation, so several decoders
can be trained in parallel as one ``jax.vmap`` over their stacked parameters.

:func:`reinitialize` draws fresh parameters for any capture-convention model (He-normal
kernels, zero biases, unit scales, reset running statistics): the reference auto-encoder's
encoder is the classifier's architecture, freshly initialised.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from repsim_jax._checks import InputError

__all__ = ["Conv3x3", "Decoder", "DecoderPlan", "UpConv", "conv3x3", "decoder_plan", "reinitialize", "upsample_kernel",
           "TORCH_PADDING_K4S2P1"]

#: lax padding of a transposed convolution equal to PyTorch's ConvTranspose2d(k=4, s=2, p=1):
#: ``k - 1 - p = 2`` on each side of the stride-dilated input; output size is exactly 2x.
TORCH_PADDING_K4S2P1 = ((2, 2), (2, 2))


@dataclasses.dataclass(frozen=True)
class DecoderPlan:
    """Shape plan of a decoder: projection kind, start grid, channels per stage."""
    kind: str                      # "dense" or "conv"
    start: tuple[int, int]         # (h0, w0) grid after the projection
    channels: tuple[int, ...]      # channels after the projection, then after each stage


def _pow2_stages(ratio_h: float, ratio_w: float) -> int | None:
    if ratio_h != ratio_w or ratio_h < 1 or ratio_h != int(ratio_h):
        return None
    n = int(round(math.log2(ratio_h)))
    return n if 2 ** n == int(ratio_h) else None


def decoder_plan(code_shape: Sequence[int], image_shape: Sequence[int], *, width: int = 64,
                 min_width: int = 16, min_start: int = 4) -> DecoderPlan:
    """Plans the decoder for a per-image ``code_shape`` and ``image_shape = (H, W, C)``.

    A spatial code ``(h, w, c)`` with ``h >= 2`` and ``H / h = W / w = 2**n`` gets a conv
    projection and ``n`` stages; any other code is flattened and gets a dense projection onto
    the coarsest grid ``H / 2**n`` with both sides ``>= min_start`` (``n <= 5``).
    """
    code_shape = tuple(int(s) for s in code_shape)
    if len(image_shape) != 3:
        raise InputError(f"image_shape: expected (H, W, C), got {tuple(image_shape)}")
    H, W, _ = (int(s) for s in image_shape)
    n = None
    if len(code_shape) == 3 and min(code_shape[:2]) >= 2:
        n = _pow2_stages(H / code_shape[0], W / code_shape[1])
    if n is not None:
        kind, start = "conv", (code_shape[0], code_shape[1])
    else:
        kind, n = "dense", 0
        while (n < 5 and H % 2 ** (n + 1) == 0 and W % 2 ** (n + 1) == 0
               and H // 2 ** (n + 1) >= min_start and W // 2 ** (n + 1) >= min_start):
            n += 1
        start = (H // 2 ** n, W // 2 ** n)
    channels = tuple(max(min_width, width // 2 ** i) for i in range(n + 1))
    return DecoderPlan(kind, start, channels)


def _phase_table():
    """Index/mask table mapping a 4x4 transposed-conv kernel to a 3x3 conv over 4 phases."""
    taps = np.zeros((3, 2), np.int64)      # [t, a] -> kernel index k = a + 3 - 2 t
    valid = np.zeros((3, 2), bool)
    for t in range(3):
        for a in range(2):
            k = a + 3 - 2 * t
            taps[t, a], valid[t, a] = (k if 0 <= k <= 3 else 0), 0 <= k <= 3
    return taps, valid


_TAPS, _VALID = _phase_table()


def upsample_kernel(kernel: jax.Array) -> jax.Array:
    """``(4, 4, I, O)`` transposed-conv kernel -> ``(3, 3, I, 4 O)`` conv kernel (phases a, b).

    Output pixel ``(2m + a, 2n + b)`` of ConvTranspose(k4, s2, p1) reads inputs
    ``m - 1 + t`` (rows) with kernel row ``a + 3 - 2t`` when that lies in ``[0, 3]``.
    """
    ky = _TAPS[:, None, :, None]           # (3, 1, 2, 1): t_y, -, a, -
    kx = _TAPS[None, :, None, :]           # (1, 3, 1, 2): -, t_x, -, b
    mask = (_VALID[:, None, :, None] & _VALID[None, :, None, :]).astype(np.float32)
    k = kernel[ky, kx] * mask[..., None, None]          # (3, 3, 2, 2, I, O)
    i, o = kernel.shape[2:]
    return jnp.transpose(k, (0, 1, 4, 2, 3, 5)).reshape(3, 3, i, 4 * o)


def conv3x3(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """'SAME' 3x3 convolution as patches @ kernel (NHWC, HWIO).

    Written as an explicit patch extraction and a matrix product so that ``jax.vmap`` over
    stacked kernels becomes a *batched matmul* instead of a grouped convolution (whose
    gradient is very slow on XLA:CPU); on accelerators both are fast.
    """
    b, h, w, c = x.shape
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    patches = jnp.stack([xp[:, i:i + h, j:j + w] for i in range(3) for j in range(3)], axis=3)
    return jnp.einsum("bhwpc,pco->bhwo", patches, kernel.reshape(9, c, -1))


class Conv3x3(nnx.Module):
    """3x3 'SAME' convolution with bias (see :func:`conv3x3`)."""

    def __init__(self, in_features: int, out_features: int, *, rngs: nnx.Rngs):
        self.kernel = nnx.Param(jax.random.uniform(
            rngs.params(), (3, 3, in_features, out_features), jnp.float32, -1, 1)
            / np.sqrt(9 * in_features))
        self.bias = nnx.Param(jnp.zeros((out_features,), jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        return conv3x3(x, self.kernel[...]) + self.bias[...]


class UpConv(nnx.Module):
    """PyTorch ``ConvTranspose2d(I, O, kernel_size=4, stride=2, padding=1)``, NHWC.

    .. math:: y_{2m+a,\,2n+b,\,o} = b_o + \sum_{t_y, t_x \in \{0,1,2\}} \sum_i
              x_{m-1+t_y,\, n-1+t_x,\, i}\; K_{a+3-2t_y,\; b+3-2t_x,\; i,\; o}

    (terms with a kernel index outside ``[0, 3]`` or an input outside the image vanish), with
    ``K[kh, kw, i, o] = W_torch[i, o, kh, kw]``. Computed as one 3x3 convolution with ``4 O``
    output channels (one per phase ``(a, b)``) and a depth-to-space shuffle - the same numbers
    as a stride-dilated transposed convolution, and much faster on CPU.
    """

    def __init__(self, in_features: int, out_features: int, *, rngs: nnx.Rngs):
        fan_in = in_features * 4  # each output pixel reads 2 x 2 taps of every input channel
        self.kernel = nnx.Param(jax.random.uniform(
            rngs.params(), (4, 4, in_features, out_features), jnp.float32, -1, 1)
            / np.sqrt(fan_in))
        self.bias = nnx.Param(jnp.zeros((out_features,), jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        y = conv3x3(x, upsample_kernel(self.kernel[...]))
        b, h, wd, _ = y.shape
        o = self.kernel.shape[-1]
        y = y.reshape(b, h, wd, 2, 2, o).transpose(0, 1, 3, 2, 4, 5).reshape(b, 2 * h, 2 * wd, o)
        return y + self.bias[...]


class Decoder(nnx.Module):
    """Code of one layer -> image in ``[0, 1]`` (see the module docstring for the maths).

    ``code_shape``: per-image shape of the layer's activation; ``image_shape``: ``(H, W, C)``.
    Call with a batch ``(B, *code_shape)``; returns ``(B, H, W, C)``.
    """

    def __init__(self, code_shape: Sequence[int], image_shape: Sequence[int], *,
                 width: int = 64, min_width: int = 16, rngs: nnx.Rngs):
        self.code_shape = tuple(int(s) for s in code_shape)
        self.image_shape = tuple(int(s) for s in image_shape)
        plan = decoder_plan(self.code_shape, self.image_shape, width=width, min_width=min_width)
        self.kind, self.start = plan.kind, plan.start
        c0 = plan.channels[0]
        if plan.kind == "dense":
            self.project = nnx.Linear(int(np.prod(self.code_shape)),
                                      plan.start[0] * plan.start[1] * c0, rngs=rngs)
        else:
            self.project = Conv3x3(self.code_shape[-1], c0, rngs=rngs)
        outs = list(plan.channels[1:])
        if outs:
            outs[-1] = self.image_shape[-1]
        stages = []
        for cin, cout in zip(plan.channels[:-1], outs):
            stages.append(UpConv(cin, cout, rngs=rngs))
        self.stages = nnx.List(stages)
        # no upsampling needed (code already at input resolution): a 3x3 conv emits the image
        self.head = (Conv3x3(c0, self.image_shape[-1], rngs=rngs)
                     if not stages else None)

    def __call__(self, code: jax.Array) -> jax.Array:
        b = code.shape[0]
        if self.kind == "dense":
            h = self.project(code.reshape(b, -1)).reshape(b, *self.start, -1)
        else:
            h = self.project(code)
        h = jax.nn.relu(h)
        for i, stage in enumerate(self.stages):
            h = stage(h)
            if i < len(self.stages) - 1:
                h = jax.nn.relu(h)
        if self.head is not None:
            h = self.head(h)
        return jax.nn.sigmoid(h)


def _fresh_leaf(path, value, key):
    names = [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
    names = [n for n in names if n not in ("value", "raw_value", "_raw_value")]
    name = names[-1] if names else ""
    shape, dtype = value.shape, value.dtype
    if len(shape) >= 2:          # conv / dense kernels (HWIO or IO layout: fan-in first)
        fan_in = int(np.prod(shape[:-1]))
        return jax.random.normal(key, shape, dtype) * jnp.sqrt(2.0 / fan_in).astype(dtype)
    if name in ("bias", "mean", "running_mean"):
        return jnp.zeros(shape, dtype)
    if name in ("scale", "var", "running_var", "weight"):
        return jnp.ones(shape, dtype)
    return jax.random.normal(key, shape, dtype) * 0.02


def reinitialize(model: nnx.Module, seed: int = 0) -> nnx.Module:
    """A copy of ``model`` (same architecture) with freshly drawn parameters.

    Kernels (any parameter with >= 2 axes, fan-in = all axes but the last, as in flax's HWIO
    and IO layouts) ``~ N(0, 2 / fan_in)`` (He); 1-D biases 0, normalisation scales/weights 1,
    running means 0 and variances 1; other parameters ``~ N(0, 0.02^2)``. Non-array state (RNG streams...) is kept.
    ``model`` itself is not modified.
    """
    graphdef, params, rest = nnx.split(model, (nnx.Param, nnx.BatchStat), ...)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    keys = jax.random.split(jax.random.key(seed), max(len(leaves), 1))
    fresh = [_fresh_leaf(p, v, k) for (p, v), k in zip(leaves, keys)]
    params = jax.tree_util.tree_unflatten(treedef, fresh)
    return nnx.merge(graphdef, params, rest)
