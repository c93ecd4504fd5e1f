"""Building blocks of the Hugging Face ports: torch semantics, parameters in the checkpoint's layout.

Every parameter keeps the name *and the shape* it has in the checkpoint
(``model.safetensors``), so the dotted nnx path of a parameter is its checkpoint key and
porting is a copy, no transpose:

* :class:`Linear` ``weight`` is (out, in) and computes :math:`y = x W^\\top + b`;
* :class:`Conv2d` ``weight`` is OIHW (torch) and convolves NHWC activations
  (``dimension_numbers=("NHWC", "OIHW", "NHWC")``), with ``groups`` for depthwise convs;
* :class:`LayerNorm` is ``torch.nn.LayerNorm`` over the last axis,
  :math:`(x-\\mu)/\\sqrt{\\sigma^2_{\\text{biased}}+\\epsilon}\\,\\gamma+\\beta`.

Position-embedding interpolation follows ``torch.nn.functional.interpolate(mode="bicubic",
align_corners=False)`` exactly, written as two small interpolation matrices
(:func:`bicubic_matrix`): :math:`P' = A_H\\, P\\, A_W^\\top` per channel.

* without antialias (ViT, CLIP, DINOv2): output pixel :math:`i` samples the source at
  :math:`u = (i + \\tfrac12)\\,s - \\tfrac12` (:math:`s = n_{in}/n_{out}`), with Keys' cubic
  kernel at :math:`a = -0.75` on the four neighbours :math:`\\lfloor u\\rfloor - 1 \\ldots
  \\lfloor u\\rfloor + 2`, indices clamped to the border (torch's ``upsample_bicubic2d``);
* with antialias (DINOv2 with registers): torch's separable anti-aliased filter, Keys'
  kernel at :math:`a = -0.5` stretched by :math:`\\max(s, 1)`, support
  :math:`2\\max(s,1)` around the centre :math:`(i+\\tfrac12)s`, taps outside the image
  dropped and the weights renormalised to sum to one (``_upsample_bicubic2d_aa``).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from repsim_jax._checks import InputError
from repsim_jax.models.port import PortError

__all__ = ["Linear", "Conv2d", "LayerNorm", "Embedding", "Identity", "activation",
           "ACTIVATIONS", "bicubic_matrix", "interpolate_bicubic", "attention"]

_HI = jax.lax.Precision.HIGHEST


def _normal(rngs: nnx.Rngs, shape, std: float):
    """``std * N(0, 1)`` drawn with numpy from the next key (cheap for large models)."""
    key = rngs.params()
    if isinstance(key, jax.core.Tracer):
        return std * jax.random.normal(key, shape)
    data = jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key
    rng = np.random.default_rng(np.asarray(data).ravel().astype(np.uint64))
    return jnp.asarray(rng.standard_normal(shape, np.float32) * std)


class Linear(nnx.Module):
    """``torch.nn.Linear``, weight (out, in) as in the checkpoint. Random init:
    :math:`N(0, 1/\\text{in})` weights, zero bias (O(1) activations for random models)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 rngs: nnx.Rngs):
        self.weight = nnx.Param(_normal(rngs, (out_features, in_features),
                                        1.0 / math.sqrt(in_features)))
        self.bias = nnx.Param(jnp.zeros((out_features,))) if bias else None

    def __call__(self, x):
        y = jax.lax.dot_general(x, self.weight[...], (((x.ndim - 1,), (1,)), ((), ())),
                                precision=_HI)
        if self.bias is not None:
            y = y + self.bias[...]
        return y


class Conv2d(nnx.Module):
    """``torch.nn.Conv2d`` on NHWC input with an OIHW weight (zero padding, ``groups``)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 groups: int = 1, bias: bool = True, *, rngs: nnx.Rngs):
        kh, kw = (kernel_size, kernel_size) if np.isscalar(kernel_size) else kernel_size
        self.stride = (int(stride), int(stride)) if np.isscalar(stride) else tuple(stride)
        self.padding = (int(padding), int(padding)) if np.isscalar(padding) else tuple(padding)
        self.groups = int(groups)
        fan_in = in_channels // groups * kh * kw
        self.weight = nnx.Param(_normal(rngs, (out_channels, in_channels // groups, kh, kw),
                                        1.0 / math.sqrt(fan_in)))
        self.bias = nnx.Param(jnp.zeros((out_channels,))) if bias else None

    def __call__(self, x):
        w = self.weight[...]
        kh, kw = w.shape[2:]
        if x.shape[1] + 2 * self.padding[0] < kh or x.shape[2] + 2 * self.padding[1] < kw:
            raise InputError(f"images of {x.shape[1]}x{x.shape[2]} px are smaller than the "
                             f"{kh}x{kw} kernel of this model's convolution")
        ph, pw = self.padding
        y = jax.lax.conv_general_dilated(
            x, w, window_strides=self.stride, padding=((ph, ph), (pw, pw)),
            dimension_numbers=("NHWC", "OIHW", "NHWC"), feature_group_count=self.groups,
            precision=_HI)
        if self.bias is not None:
            y = y + self.bias[...]
        return y


class LayerNorm(nnx.Module):
    """``torch.nn.LayerNorm(dim, eps)`` over the last axis (biased variance)."""

    def __init__(self, dim: int, eps: float):
        self.eps = float(eps)
        self.weight = nnx.Param(jnp.ones((dim,)))
        self.bias = nnx.Param(jnp.zeros((dim,)))

    def __call__(self, x):
        mean = jnp.mean(x, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
        return (x - mean) * jax.lax.rsqrt(var + self.eps) * self.weight[...] + self.bias[...]


class Embedding(nnx.Module):
    """``torch.nn.Embedding`` table (num, dim), looked up at ``arange(num)`` as transformers
    does for position ids: returns (1, num, dim)."""

    def __init__(self, num: int, dim: int, *, rngs: nnx.Rngs):
        self.weight = nnx.Param(_normal(rngs, (num, dim), 1.0))

    def __call__(self):
        return self.weight[...][None]


class Identity(nnx.Module):
    """``torch.nn.Identity`` (e.g. a classifier head with ``num_labels = 0``)."""

    def __call__(self, x):
        return x


def _quick_gelu(x):
    return x * jax.nn.sigmoid(1.702 * x)


ACTIVATIONS = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_python": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_fast": lambda x: jax.nn.gelu(x, approximate=True),
    "quick_gelu": _quick_gelu,
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "tanh": jnp.tanh,
    "sigmoid": jax.nn.sigmoid,
    "linear": lambda x: x,
}


def activation(name: str, key: str = "hidden_act"):
    """The function of transformers' ``ACT2FN[name]`` (the ones vision models use)."""
    if not isinstance(name, str) or name not in ACTIVATIONS:
        raise PortError(f"config.json: {key} = {name!r} is not supported; known: "
                        f"{', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]


class MLP(nnx.Module):
    """fc1 -> activation -> fc2 (the two-layer MLP of CLIP and DINOv2 blocks, HF names)."""

    def __init__(self, dim: int, inner: int, act: str, *, rngs):
        self.act = act
        self.fc1 = Linear(dim, inner, rngs=rngs)
        self.fc2 = Linear(inner, dim, rngs=rngs)

    def __call__(self, x):
        return self.fc2(activation(self.act)(self.fc1(x)))


def _cubic(x: np.ndarray, a: float) -> np.ndarray:
    """Keys' cubic convolution kernel with parameter ``a``."""
    x = np.abs(x)
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return np.where(x < 1, near, np.where(x < 2, far, 0.0))


def bicubic_matrix(n_in: int, n_out: int, antialias: bool = False) -> np.ndarray:
    """(n_out, n_in) matrix of torch's bicubic interpolation (``align_corners=False``,
    output size given), with or without antialias; see the module docstring."""
    scale = n_in / n_out
    m = np.zeros((n_out, n_in), np.float64)
    for i in range(n_out):
        if not antialias:
            u = (i + 0.5) * scale - 0.5
            f = math.floor(u)
            t = u - f
            w = _cubic(np.array([t + 1, t, 1 - t, 2 - t]), -0.75)
            for k in range(4):
                m[i, min(max(f - 1 + k, 0), n_in - 1)] += w[k]
        else:
            support = 2.0 * max(scale, 1.0)
            inv = 1.0 / scale if scale >= 1.0 else 1.0
            center = scale * (i + 0.5)
            lo = max(int(center - support + 0.5), 0)
            hi = min(int(center + support + 0.5), n_in)
            j = np.arange(lo, hi)
            w = _cubic((j - center + 0.5) * inv, -0.5)
            total = w.sum()
            m[i, lo:hi] = w / total if total != 0 else w
    return m.astype(np.float32)


def interpolate_bicubic(grid, out_hw: tuple[int, int], antialias: bool = False):
    """Bicubic resize of a (H, W, D) grid to ``out_hw`` (torch semantics, see module)."""
    h, w = grid.shape[:2]
    ah = jnp.asarray(bicubic_matrix(h, out_hw[0], antialias))
    aw = jnp.asarray(bicubic_matrix(w, out_hw[1], antialias))
    return jnp.einsum("ih,jw,hwd->ijd", ah, aw, grid.astype(jnp.float32), precision=_HI)


def attention(q, k, v, heads: int, scale: float):
    """Multi-head softmax attention of (N, T, heads * d) projections; returns (N, T, heads * d).

    :math:`\\mathrm{softmax}(Q_h K_h^\\top \\cdot \\text{scale})\\, V_h` per head, heads
    concatenated in order (transformers' ``eager_attention_forward`` without mask).
    """
    n, t, hd = q.shape
    d = hd // heads
    q, k, v = (z.reshape(n, t, heads, d) for z in (q, k, v))
    s = jnp.einsum("nqhd,nkhd->nhqk", q, k, precision=_HI) * scale
    p = jax.nn.softmax(s.astype(jnp.float32), axis=-1).astype(v.dtype)
    return jnp.einsum("nhqk,nkhd->nqhd", p, v, precision=_HI).reshape(n, t, hd)
