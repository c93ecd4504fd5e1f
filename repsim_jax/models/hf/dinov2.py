"""DINOv2 (``Dinov2Model``, ``Dinov2WithRegistersModel``, ``...ForImageClassification``), NHWC.

Oquab et al., "DINOv2: Learning Robust Visual Features without Supervision", TMLR 2024;
registers: Darcet et al., "Vision Transformers Need Registers", ICLR 2024. Pre-norm blocks
with layer scale :math:`\\lambda` (drop path is the identity at evaluation):

.. math::
   z'_l = z_{l-1} + \\lambda_1 \\odot \\mathrm{MSA}(\\mathrm{LN}_1(z_{l-1})),\\qquad
   z_l = z'_l + \\lambda_2 \\odot \\mathrm{FFN}(\\mathrm{LN}_2(z'_l)),

FFN = fc2(act(fc1)) or, with ``use_swiglu_ffn``, weights_out(silu(a) * b) where
``[a, b] = weights_in(x)`` (hidden width ``(int(2/3 * mlp_ratio * D) + 7) // 8 * 8``).

Tokens: ``[CLS, registers..., patches]`` - the position embeddings cover CLS and patches
and are **always** resized bicubically to the input's patch grid (as in transformers; the
registers variant uses torch's anti-aliased bicubic filter), then the
``num_register_tokens`` register tokens are inserted after CLS. The classification head
reads ``concat(CLS, mean of the patch tokens)`` after ``layernorm``.

Module tree = checkpoint keys: ``embeddings`` (``patch_embeddings.projection``,
``cls_token``, ``position_embeddings``, ``register_tokens``; ``mask_token`` is only used
in pre-training and not loaded), ``encoder.layer.<i>`` (``norm1``,
``attention.attention.{query,key,value}``, ``attention.output.dense``,
``layer_scale1.lambda1``, ``norm2``, ``mlp.{fc1,fc2}`` or ``mlp.{weights_in,weights_out}``,
``layer_scale2.lambda1``), ``layernorm``.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from repsim_jax.models.hf._blocks import MLP, Identity, LayerNorm, Linear, _normal
from repsim_jax.models.hf.vit import (AttentionBlock, Encoder, PatchEmbeddings, _pair,
                                      interpolate_positions)

__all__ = ["Dinov2Model", "Dinov2ForImageClassification"]


class LayerScale(nnx.Module):
    def __init__(self, dim: int, value: float):
        self.lambda1 = nnx.Param(jnp.full((dim,), float(value)))

    def __call__(self, x):
        return x * self.lambda1[...]


class SwiGLUFFN(nnx.Module):
    def __init__(self, dim: int, inner: int, *, rngs):
        self.weights_in = Linear(dim, 2 * inner, rngs=rngs)
        self.weights_out = Linear(inner, dim, rngs=rngs)

    def __call__(self, x):
        a, b = jnp.split(self.weights_in(x), 2, axis=-1)
        return self.weights_out(jax.nn.silu(a) * b)


class Dinov2Layer(nnx.Module):
    def __init__(self, cfg: dict, *, rngs):
        d, eps = cfg["hidden_size"], cfg["layer_norm_eps"]
        heads = cfg["num_attention_heads"]
        inner = int(d * cfg["mlp_ratio"])
        self.norm1 = LayerNorm(d, eps)
        self.attention = AttentionBlock(d, heads, cfg.get("head_dim") or d // heads,
                                        cfg["qkv_bias"], rngs=rngs)
        self.layer_scale1 = LayerScale(d, cfg["layerscale_value"])
        self.norm2 = LayerNorm(d, eps)
        if cfg["use_swiglu_ffn"]:
            self.mlp = SwiGLUFFN(d, (int(inner * 2 / 3) + 7) // 8 * 8, rngs=rngs)
        else:
            self.mlp = MLP(d, inner, cfg["hidden_act"], rngs=rngs)
        self.layer_scale2 = LayerScale(d, cfg["layerscale_value"])

    def __call__(self, x):
        x = self.layer_scale1(self.attention(self.norm1(x))) + x
        return self.layer_scale2(self.mlp(self.norm2(x))) + x


class Dinov2Embeddings(nnx.Module):
    def __init__(self, cfg: dict, registers: int, *, rngs):
        d = cfg["hidden_size"]
        self.antialias = registers_variant = cfg.get("model_type") == "dinov2_with_registers"
        self.patch_embeddings = PatchEmbeddings(cfg["num_channels"], d, cfg["patch_size"],
                                                rngs=rngs)
        ih, iw = _pair(cfg["image_size"])
        ph, pw = self.patch_embeddings.patch_size
        self.cls_token = nnx.Param(_normal(rngs, (1, 1, d), 1.0))
        self.position_embeddings = nnx.Param(_normal(rngs, (1, (ih // ph) * (iw // pw) + 1, d),
                                                     1.0))
        self.register_tokens = (nnx.Param(_normal(rngs, (1, registers, d), 1.0))
                                if registers_variant else None)

    def __call__(self, x):
        tokens = self.patch_embeddings(x)
        n, _, d = tokens.shape
        n_h = x.shape[1] // self.patch_embeddings.patch_size[0]
        n_w = x.shape[2] // self.patch_embeddings.patch_size[1]
        z = jnp.concatenate([jnp.broadcast_to(self.cls_token[...], (n, 1, d)), tokens], axis=1)
        z = z + interpolate_positions(self.position_embeddings[...], n_h, n_w,
                                      x.shape[1] == x.shape[2], self.antialias)
        if self.register_tokens is not None:
            reg = self.register_tokens[...]
            z = jnp.concatenate([z[:, :1], jnp.broadcast_to(reg, (n, *reg.shape[1:])),
                                 z[:, 1:]], axis=1)
        return z


class Dinov2Model(nnx.Module):
    """transformers ``Dinov2Model`` / ``Dinov2WithRegistersModel``. At the top it returns
    the last hidden state (N, 1 + registers + patches, D); nested, ``(last, CLS)``."""

    def __init__(self, cfg: dict, *, root: bool = True, rngs: nnx.Rngs):
        registers = int(cfg.get("num_register_tokens", 0) or 0) \
            if cfg.get("model_type") == "dinov2_with_registers" else 0
        ih, iw = _pair(cfg["image_size"])
        self.root = bool(root)
        self.num_register_tokens = registers
        self.num_prefix_tokens = 1 + registers
        self.input_shape = (ih, iw, int(cfg["num_channels"]))
        self.embeddings = Dinov2Embeddings(cfg, registers, rngs=rngs)
        self.encoder = Encoder(lambda: Dinov2Layer(cfg, rngs=rngs), cfg["num_hidden_layers"])
        self.layernorm = LayerNorm(cfg["hidden_size"], cfg["layer_norm_eps"])

    def __call__(self, x):
        h = self.layernorm(self.encoder(self.embeddings(x)))
        return h if self.root else (h, h[:, 0])


class Dinov2ForImageClassification(nnx.Module):
    """transformers ``Dinov2ForImageClassification``: ``classifier`` on
    ``concat(CLS, mean(patch tokens))``; returns logits."""

    def __init__(self, cfg: dict, num_labels: int, *, rngs: nnx.Rngs):
        attr = "dinov2_with_registers" if cfg.get("model_type") == "dinov2_with_registers" \
            else "dinov2"
        self.backbone_attr = attr
        inner = Dinov2Model(cfg, root=False, rngs=rngs)
        setattr(self, attr, inner)
        self.num_prefix_tokens = inner.num_prefix_tokens
        self.num_register_tokens = inner.num_register_tokens
        self.input_shape = inner.input_shape
        d = cfg["hidden_size"]
        self.classifier = Linear(2 * d, num_labels, rngs=rngs) if num_labels > 0 else Identity()

    def __call__(self, x):
        h, cls = getattr(self, self.backbone_attr)(x)
        patches = h[:, self.num_prefix_tokens:]
        return self.classifier(jnp.concatenate([cls, patches.mean(axis=1)], axis=-1))
