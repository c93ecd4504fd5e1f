"""Inference-mode building blocks with PyTorch semantics, NHWC layout.

Every parameter is stored under the attribute name that ``torch.nn`` uses (``weight``,
``bias``, ``running_mean``, ``running_var``), so the nnx state path of a parameter joined
with dots *is* its torchvision state_dict key (``layer1.0.conv1.weight``). Only the layout
differs, and :mod:`repsim_jax.models.port` converts it:

* ``Conv2d.weight`` is HWIO (torch: OIHW),
* ``Linear.weight`` is (in, out) (torch: (out, in)),
* everything else has the torch shape.

Pooling follows torch exactly:

* :func:`max_pool2d` pads with :math:`-\\infty` and implements ``ceil_mode``: the output
  size is :math:`\\lceil (H + 2p - k) / s \\rceil + 1`, minus one when the last window would
  start in the right padding (torch's rule);
* :func:`adaptive_avg_pool2d` uses torch's bins: output cell :math:`i` of :math:`o` averages
  input rows :math:`[\\lfloor iH/o \\rfloor, \\lceil (i+1)H/o \\rceil)`; it is written as two
  small averaging matrices :math:`A_H \\in \\mathbb{R}^{o_H \\times H}` and
  :math:`A_W`, :math:`y = A_H\\, x\\, A_W^\\top` per channel, valid for any input size
  (including inputs smaller than the output, where bins overlap/repeat).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from repsim_jax._checks import InputError

__all__ = ["Conv2d", "BatchNorm2d", "Linear", "PReLU", "ReLU", "MaxPool2d", "Dropout",
           "AdaptiveAvgPool2d", "max_pool2d", "adaptive_avg_pool2d", "adaptive_pool_matrix",
           "flatten_nchw"]


def _init_normal(rngs: nnx.Rngs, shape, std: float):
    """``std * N(0, 1)`` of ``shape`` from the next ``rngs.params()`` key.

    Concrete keys draw with numpy (seeded from the key): this avoids compiling one random
    kernel per parameter shape, which made building VGG-16 take many seconds. Under
    ``nnx.eval_shape`` (abstract keys) it falls back to ``jax.random`` and costs nothing.
    """
    key = rngs.params()
    if isinstance(key, jax.core.Tracer):
        return std * jax.random.normal(key, shape)
    return jnp.asarray(_numpy_rng(key).standard_normal(shape, np.float32) * std)


def _init_uniform(rngs: nnx.Rngs, shape, bound: float):
    """``U(-bound, bound)`` of ``shape`` (see :func:`_init_normal`)."""
    key = rngs.params()
    if isinstance(key, jax.core.Tracer):
        return jax.random.uniform(key, shape, minval=-bound, maxval=bound)
    return jnp.asarray(_numpy_rng(key).uniform(-bound, bound, shape).astype(np.float32))


def _numpy_rng(key) -> np.random.Generator:
    data = jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key
    return np.random.default_rng(np.asarray(data).ravel().astype(np.uint64))


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if np.isscalar(v) else (int(v[0]), int(v[1]))


class Conv2d(nnx.Module):
    """``torch.nn.Conv2d`` (zero padding, no groups/dilation); weight HWIO.

    Initialised like torchvision's CNNs: Kaiming-normal with fan-out, zero bias.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 bias: bool = True, *, rngs: nnx.Rngs):
        kh, kw = _pair(kernel_size)
        self.stride = _pair(stride)
        self.padding = _pair(padding)
        std = math.sqrt(2.0 / (out_channels * kh * kw))
        self.weight = nnx.Param(_init_normal(rngs, (kh, kw, in_channels, out_channels), std))
        self.bias = nnx.Param(jnp.zeros((out_channels,))) if bias else None

    def __call__(self, x):
        ph, pw = self.padding
        y = jax.lax.conv_general_dilated(
            x, self.weight[...], window_strides=self.stride, padding=((ph, ph), (pw, pw)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            precision=jax.lax.Precision.HIGHEST)
        if self.bias is not None:
            y = y + self.bias[...]
        return y


class BatchNorm2d(nnx.Module):
    """``torch.nn.BatchNorm2d`` in eval mode: :math:`(x-\\mu)/\\sqrt{\\sigma^2+\\epsilon}\\,\\gamma+\\beta`."""

    def __init__(self, num_features: int, eps: float = 1e-5):
        self.eps = float(eps)
        self.weight = nnx.Param(jnp.ones((num_features,)))
        self.bias = nnx.Param(jnp.zeros((num_features,)))
        self.running_mean = nnx.BatchStat(jnp.zeros((num_features,)))
        self.running_var = nnx.BatchStat(jnp.ones((num_features,)))

    def __call__(self, x):
        scale = self.weight[...] * jax.lax.rsqrt(self.running_var[...] + self.eps)
        return (x - self.running_mean[...]) * scale + self.bias[...]


class Linear(nnx.Module):
    """``torch.nn.Linear``; weight stored (in, out). Init: torch's uniform(±1/sqrt(in))."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 rngs: nnx.Rngs):
        bound = 1.0 / math.sqrt(in_features)
        self.weight = nnx.Param(_init_uniform(rngs, (in_features, out_features), bound))
        self.bias = nnx.Param(_init_uniform(rngs, (out_features,), bound)) if bias else None

    def __call__(self, x):
        y = jnp.dot(x, self.weight[...], precision=jax.lax.Precision.HIGHEST)
        if self.bias is not None:
            y = y + self.bias[...]
        return y


class PReLU(nnx.Module):
    """``torch.nn.PReLU(num_parameters)``: :math:`\\max(x,0) + a_c \\min(x,0)` per channel (last axis)."""

    def __init__(self, num_parameters: int, init: float = 0.25):
        self.weight = nnx.Param(jnp.full((num_parameters,), init))

    def __call__(self, x):
        return jnp.where(x >= 0, x, self.weight[...] * x)


class ReLU(nnx.Module):
    """``torch.nn.ReLU``."""

    def __call__(self, x):
        return jax.nn.relu(x)


class Dropout(nnx.Module):
    """``torch.nn.Dropout`` in eval mode: the identity."""

    def __call__(self, x):
        return x


def max_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode: bool = False):
    """``torch.nn.functional.max_pool2d`` on NHWC ``x`` (-inf padding, torch ceil_mode rule)."""
    k = _pair(kernel_size)
    s = _pair(stride if stride is not None else kernel_size)
    p = _pair(padding)
    pads = []
    for n, kk, ss, pp in zip(x.shape[1:3], k, s, p):
        span = n + 2 * pp - kk
        if span < 0:
            raise InputError(f"max_pool2d: input of size {n} is smaller than the window {kk} "
                             f"(padding {pp}); the images are too small for this model")
        out = (-(-span // ss) if ceil_mode else span // ss) + 1
        if ceil_mode and (out - 1) * ss >= n + pp:
            out -= 1
        extra = max((out - 1) * ss + kk - (n + 2 * pp), 0)
        pads.append((pp, pp + extra))
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, *k, 1), (1, *s, 1),
                                 ((0, 0), *pads, (0, 0)))


class MaxPool2d(nnx.Module):
    """``torch.nn.MaxPool2d`` (see :func:`max_pool2d`)."""

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode: bool = False):
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride if stride is not None else kernel_size)
        self.padding = _pair(padding)
        self.ceil_mode = bool(ceil_mode)

    def __call__(self, x):
        return max_pool2d(x, self.kernel_size, self.stride, self.padding, self.ceil_mode)


def adaptive_pool_matrix(n_in: int, n_out: int) -> np.ndarray:
    """Averaging matrix ``(n_out, n_in)`` of torch's adaptive pooling bins.

    Row :math:`i` is :math:`1/(e_i-s_i)` on :math:`[s_i, e_i)` with
    :math:`s_i=\\lfloor i n_{in}/n_{out}\\rfloor`, :math:`e_i=\\lceil (i+1) n_{in}/n_{out}\\rceil`.
    """
    a = np.zeros((n_out, n_in), np.float32)
    for i in range(n_out):
        start = (i * n_in) // n_out
        end = -(-((i + 1) * n_in) // n_out)
        a[i, start:end] = 1.0 / (end - start)
    return a


def adaptive_avg_pool2d(x, output_size):
    """``torch.nn.functional.adaptive_avg_pool2d`` on NHWC ``x`` for any input size."""
    oh, ow = _pair(output_size)
    h, w = x.shape[1:3]
    if (h, w) == (oh, ow):
        return x
    if oh == 1 and ow == 1:
        return jnp.mean(x, axis=(1, 2), keepdims=True)
    ah = jnp.asarray(adaptive_pool_matrix(h, oh))
    aw = jnp.asarray(adaptive_pool_matrix(w, ow))
    return jnp.einsum("ih,jw,nhwc->nijc", ah, aw, x, precision=jax.lax.Precision.HIGHEST)


class AdaptiveAvgPool2d(nnx.Module):
    """``torch.nn.AdaptiveAvgPool2d`` (see :func:`adaptive_avg_pool2d`)."""

    def __init__(self, output_size):
        self.output_size = _pair(output_size)

    def __call__(self, x):
        return adaptive_avg_pool2d(x, self.output_size)


def flatten_nchw(x):
    """``torch.flatten(x, 1)`` of the NCHW tensor that NHWC ``x`` stands for: (C, H, W) order.

    The transpose happens in the forward pass, so ported ``Linear`` weights keep torch's
    column order and need only the (out, in) -> (in, out) transpose.
    """
    return jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)
