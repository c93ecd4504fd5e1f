"""ConvNeXt (``ConvNextModel``, ``ConvNextForImageClassification``) as in transformers, NHWC.

Liu et al., "A ConvNet for the 2020s", CVPR 2022. Stem: ``patch_size`` x ``patch_size``
convolution (stride ``patch_size``) + LayerNorm; stage :math:`i > 0` starts with a
LayerNorm + 2x2/2 convolution (``downsampling_layer``); each block is

.. math::
   x + \\gamma \\odot \\mathrm{pw}_2(\\mathrm{act}(\\mathrm{pw}_1(\\mathrm{LN}(\\mathrm{dw}_{7\\times7}(x))))),

with a depthwise 7x7 convolution, the pointwise convolutions as Linear layers on channels
(4x expansion) and layer scale :math:`\\gamma` when ``layer_scale_init_value > 0``;
drop path is the identity at evaluation. Pooled output ``layernorm(mean over H, W)``
(N, D); the classifier reads it. LayerNorm epsilons follow transformers: 1e-6 in the stem,
the downsampling layers and the blocks (fixed in its code), ``layer_norm_eps`` for the
final ``layernorm``.

transformers runs NCHW; here every stage is NHWC (parity tests transpose). Module tree =
checkpoint keys: ``embeddings`` (``patch_embeddings``, ``layernorm``),
``encoder.stages.<i>`` (``downsampling_layer.0`` LayerNorm, ``.1`` conv;
``layers.<j>`` with ``dwconv``, ``layernorm``, ``pwconv1``, ``pwconv2``,
``layer_scale_parameter``), ``layernorm``; the classification model nests it under
``convnext`` next to ``classifier``.
"""
from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from repsim_jax.models.hf._blocks import Conv2d, Identity, LayerNorm, Linear, activation

__all__ = ["ConvNextModel", "ConvNextForImageClassification"]

_EPS = 1e-6  # transformers hard-codes this for every LayerNorm but the final one


class ConvNextEmbeddings(nnx.Module):
    def __init__(self, cfg: dict, *, rngs):
        p = int(cfg["patch_size"])
        self.patch_embeddings = Conv2d(cfg["num_channels"], cfg["hidden_sizes"][0], p,
                                       stride=p, rngs=rngs)
        self.layernorm = LayerNorm(cfg["hidden_sizes"][0], _EPS)

    def __call__(self, x):
        return self.layernorm(self.patch_embeddings(x))


class ConvNextLayer(nnx.Module):
    def __init__(self, cfg: dict, dim: int, *, rngs):
        self.act = cfg["hidden_act"]
        self.dwconv = Conv2d(dim, dim, 7, padding=3, groups=dim, rngs=rngs)
        self.layernorm = LayerNorm(dim, _EPS)
        self.pwconv1 = Linear(dim, 4 * dim, rngs=rngs)
        self.pwconv2 = Linear(4 * dim, dim, rngs=rngs)
        scale = float(cfg["layer_scale_init_value"])
        self.layer_scale_parameter = nnx.Param(jnp.full((dim,), scale)) if scale > 0 else None

    def __call__(self, x):
        y = self.pwconv2(activation(self.act)(self.pwconv1(self.layernorm(self.dwconv(x)))))
        if self.layer_scale_parameter is not None:
            y = self.layer_scale_parameter[...] * y
        return x + y


class ConvNextStage(nnx.Module):
    def __init__(self, cfg: dict, cin: int, cout: int, stride: int, depth: int, *, rngs):
        if cin != cout or stride > 1:
            self.downsampling_layer = nnx.List([
                LayerNorm(cin, _EPS), Conv2d(cin, cout, stride, stride=stride, rngs=rngs)])
        else:
            self.downsampling_layer = nnx.List([])
        self.layers = nnx.List([ConvNextLayer(cfg, cout, rngs=rngs) for _ in range(depth)])

    def __call__(self, x):
        for m in self.downsampling_layer:
            x = m(x)
        for m in self.layers:
            x = m(x)
        return x


class ConvNextEncoder(nnx.Module):
    def __init__(self, cfg: dict, *, rngs):
        sizes, depths = list(cfg["hidden_sizes"]), list(cfg["depths"])
        stages, prev = [], sizes[0]
        for i in range(int(cfg["num_stages"])):
            stages.append(ConvNextStage(cfg, prev, sizes[i], 2 if i > 0 else 1, depths[i],
                                        rngs=rngs))
            prev = sizes[i]
        self.stages = nnx.List(stages)

    def __call__(self, x):
        for s in self.stages:
            x = s(x)
        return x


class ConvNextModel(nnx.Module):
    """transformers ``ConvNextModel``. At the top it returns the last stage (N, H, W, C);
    nested, ``(last_hidden_state, pooler_output)``. Takes any input size its strides allow."""

    num_prefix_tokens = 0
    num_register_tokens = 0

    def __init__(self, cfg: dict, *, root: bool = True, rngs: nnx.Rngs):
        s = int(cfg.get("image_size") or 224)
        self.root = bool(root)
        self.input_shape = (s, s, int(cfg["num_channels"]))
        self.embeddings = ConvNextEmbeddings(cfg, rngs=rngs)
        self.encoder = ConvNextEncoder(cfg, rngs=rngs)
        self.layernorm = LayerNorm(cfg["hidden_sizes"][-1], cfg["layer_norm_eps"])

    def __call__(self, x):
        h = self.encoder(self.embeddings(x))
        pooled = self.layernorm(h.mean(axis=(1, 2)))
        return h if self.root else (h, pooled)


class ConvNextForImageClassification(nnx.Module):
    """transformers ``ConvNextForImageClassification``: ``classifier`` on the pooled
    output; returns logits."""

    num_prefix_tokens = 0
    num_register_tokens = 0

    def __init__(self, cfg: dict, num_labels: int, *, rngs: nnx.Rngs):
        self.convnext = ConvNextModel(cfg, root=False, rngs=rngs)
        self.input_shape = self.convnext.input_shape
        self.classifier = (Linear(cfg["hidden_sizes"][-1], num_labels, rngs=rngs)
                           if num_labels > 0 else Identity())

    def __call__(self, x):
        _, pooled = self.convnext(x)
        return self.classifier(pooled)
