"""ViT (``ViTModel``, ``ViTForImageClassification``) as in Hugging Face transformers, NHWC.

Dosovitskiy et al., "An Image is Worth 16x16 Words", ICLR 2021. Pre-norm encoder:

.. math::
   z_0 = [x_{cls};\\, \\mathrm{Conv}_{p\\times p/p}(x)] + E_{pos},\\quad
   z'_l = z_{l-1} + \\mathrm{MSA}(\\mathrm{LN}(z_{l-1})),\\quad
   z_l = z'_l + \\mathrm{MLP}(\\mathrm{LN}(z'_l)),

``layernorm`` after the last block, ``pooler`` = tanh(dense(CLS)) when the checkpoint has
one; the classifier reads the CLS token after ``layernorm``.

Module tree = the checkpoint's keys (transformers' classic layout, which
``save_pretrained`` still writes): ``embeddings`` (``patch_embeddings.projection``,
``cls_token``, ``position_embeddings``), ``encoder.layer.<i>`` (``layernorm_before``,
``attention.attention.{query,key,value}``, ``attention.output.dense``,
``layernorm_after``, ``intermediate.dense``, ``output.dense``), ``layernorm``, ``pooler``;
``ViTForImageClassification`` nests it under ``vit`` next to ``classifier``.

Another image size: the position embeddings of the patch grid are resized bicubically
(exactly ``interpolate_pos_encoding=True`` in transformers; at the checkpoint's own square
size they are used as they are). A size that is not a multiple of the patch size is
floored, as the patch convolution does.
"""
from __future__ import annotations

import math

import jax.numpy as jnp
from flax import nnx

from repsim_jax._checks import InputError
from repsim_jax.models.hf._blocks import (Conv2d, Identity, LayerNorm, Linear, _normal,
                                          activation, attention, interpolate_bicubic)

__all__ = ["ViTModel", "ViTForImageClassification", "PatchEmbeddings", "SelfAttention",
           "AttentionBlock", "interpolate_positions"]


def _pair(v):
    return (int(v[0]), int(v[1])) if isinstance(v, (list, tuple)) else (int(v), int(v))


def interpolate_positions(pos, n_h: int, n_w: int, square: bool, antialias: bool = False):
    """transformers' ``interpolate_pos_encoding``: ``pos`` (1, 1 + P, D) -> (1, 1 + n_h n_w, D).

    Used as is when the patch count matches and the image is square (``square``);
    otherwise the (sqrt P)^2 grid is resized bicubically to (n_h, n_w).
    """
    num_positions = pos.shape[1] - 1
    if n_h * n_w == num_positions and square:
        return pos
    g = int(math.isqrt(num_positions))
    if g * g != num_positions:
        raise InputError(f"position embeddings of {num_positions} patches are not a square "
                         f"grid: this checkpoint cannot be interpolated to {n_h}x{n_w} patches")
    grid = pos[0, 1:].reshape(g, g, pos.shape[2])
    new = interpolate_bicubic(grid, (n_h, n_w), antialias).astype(pos.dtype)
    return jnp.concatenate([pos[:, :1], new.reshape(1, n_h * n_w, pos.shape[2])], axis=1)


class PatchEmbeddings(nnx.Module):
    """``projection``: p x p convolution, stride p; returns (N, h * w, D) tokens, row-major."""

    def __init__(self, channels: int, dim: int, patch, *, rngs: nnx.Rngs):
        self.patch_size = _pair(patch)
        self.projection = Conv2d(channels, dim, self.patch_size, stride=self.patch_size,
                                 rngs=rngs)

    def __call__(self, x):
        if x.shape[1] < self.patch_size[0] or x.shape[2] < self.patch_size[1]:
            raise InputError(f"images of {x.shape[1]}x{x.shape[2]} px are smaller than one "
                             f"{self.patch_size[0]}x{self.patch_size[1]} patch")
        y = self.projection(x)
        return y.reshape(y.shape[0], y.shape[1] * y.shape[2], y.shape[3])


class SelfAttention(nnx.Module):
    """``query``, ``key``, ``value`` projections and softmax attention (head_dim^-1/2)."""

    def __init__(self, dim: int, heads: int, head_dim: int, qkv_bias: bool, *, rngs):
        self.heads, self.head_dim = int(heads), int(head_dim)
        self.query = Linear(dim, heads * head_dim, qkv_bias, rngs=rngs)
        self.key = Linear(dim, heads * head_dim, qkv_bias, rngs=rngs)
        self.value = Linear(dim, heads * head_dim, qkv_bias, rngs=rngs)

    def __call__(self, x):
        return attention(self.query(x), self.key(x), self.value(x), self.heads,
                         self.head_dim ** -0.5)


class SelfOutput(nnx.Module):
    """``dense`` after the attention (no residual here)."""

    def __init__(self, inner: int, dim: int, *, rngs):
        self.dense = Linear(inner, dim, rngs=rngs)

    def __call__(self, x):
        return self.dense(x)


class AttentionBlock(nnx.Module):
    """``attention`` (self-attention) then ``output`` (dense)."""

    def __init__(self, dim: int, heads: int, head_dim: int, qkv_bias: bool, *, rngs):
        self.attention = SelfAttention(dim, heads, head_dim, qkv_bias, rngs=rngs)
        self.output = SelfOutput(heads * head_dim, dim, rngs=rngs)

    def __call__(self, x):
        return self.output(self.attention(x))


class Intermediate(nnx.Module):
    """act(dense(x))."""

    def __init__(self, dim: int, inner: int, act: str, *, rngs):
        self.act = act
        self.dense = Linear(dim, inner, rngs=rngs)

    def __call__(self, x):
        return activation(self.act)(self.dense(x))


class Output(nnx.Module):
    """dense(h) + residual."""

    def __init__(self, inner: int, dim: int, *, rngs):
        self.dense = Linear(inner, dim, rngs=rngs)

    def __call__(self, h, residual):
        return self.dense(h) + residual


class ViTLayer(nnx.Module):
    """One pre-norm encoder block (see the module docstring)."""

    def __init__(self, cfg: dict, *, rngs):
        d, eps = cfg["hidden_size"], cfg["layer_norm_eps"]
        heads = cfg["num_attention_heads"]
        hd = cfg.get("head_dim") or d // heads
        self.attention = AttentionBlock(d, heads, hd, cfg["qkv_bias"], rngs=rngs)
        self.intermediate = Intermediate(d, cfg["intermediate_size"], cfg["hidden_act"],
                                         rngs=rngs)
        self.output = Output(cfg["intermediate_size"], d, rngs=rngs)
        self.layernorm_before = LayerNorm(d, eps)
        self.layernorm_after = LayerNorm(d, eps)

    def __call__(self, x):
        x = self.attention(self.layernorm_before(x)) + x
        return self.output(self.intermediate(self.layernorm_after(x)), x)


class Encoder(nnx.Module):
    """``layer``: the list of blocks."""

    def __init__(self, make_layer, n: int):
        self.layer = nnx.List([make_layer() for _ in range(n)])

    def __call__(self, x):
        for blk in self.layer:
            x = blk(x)
        return x


class ViTEmbeddings(nnx.Module):
    """[CLS; patch tokens] + (interpolated) position embeddings."""

    def __init__(self, cfg: dict, *, rngs):
        d = cfg["hidden_size"]
        self.patch_embeddings = PatchEmbeddings(cfg["num_channels"], d, cfg["patch_size"],
                                                rngs=rngs)
        ih, iw = _pair(cfg["image_size"])
        ph, pw = self.patch_embeddings.patch_size
        self.cls_token = nnx.Param(_normal(rngs, (1, 1, d), 1.0))
        self.position_embeddings = nnx.Param(_normal(rngs, (1, (ih // ph) * (iw // pw) + 1, d),
                                                     1.0))

    def __call__(self, x):
        tokens = self.patch_embeddings(x)
        n_h = x.shape[1] // self.patch_embeddings.patch_size[0]
        n_w = x.shape[2] // self.patch_embeddings.patch_size[1]
        cls = jnp.broadcast_to(self.cls_token[...], (x.shape[0], 1, tokens.shape[2]))
        z = jnp.concatenate([cls, tokens], axis=1)
        return z + interpolate_positions(self.position_embeddings[...], n_h, n_w,
                                         x.shape[1] == x.shape[2])


class Pooler(nnx.Module):
    """act(dense(CLS))."""

    def __init__(self, dim: int, out: int, act: str, *, rngs):
        self.act = act
        self.dense = Linear(dim, out, rngs=rngs)

    def __call__(self, x):
        return activation(self.act, "pooler_act")(self.dense(x[:, 0]))


class ViTModel(nnx.Module):
    """transformers ``ViTModel``. At the top (``root=True``) it returns the last hidden state
    (N, 1 + patches, D) - transformers' first output; nested under a head it returns
    ``(last_hidden_state, pooler_output)`` as transformers does (capture takes the first)."""

    num_prefix_tokens = 1
    num_register_tokens = 0

    def __init__(self, cfg: dict, *, pooler: bool = True, root: bool = True, rngs: nnx.Rngs):
        d = cfg["hidden_size"]
        ih, iw = _pair(cfg["image_size"])
        self.root = bool(root)
        self.input_shape = (ih, iw, int(cfg["num_channels"]))
        self.embeddings = ViTEmbeddings(cfg, rngs=rngs)
        self.encoder = Encoder(lambda: ViTLayer(cfg, rngs=rngs), cfg["num_hidden_layers"])
        self.layernorm = LayerNorm(d, cfg["layer_norm_eps"])
        self.pooler = (Pooler(d, cfg.get("pooler_output_size") or d,
                              cfg.get("pooler_act", "tanh"), rngs=rngs) if pooler else None)

    def __call__(self, x):
        h = self.layernorm(self.encoder(self.embeddings(x)))
        pooled = self.pooler(h) if self.pooler is not None else None
        return h if self.root else (h, pooled)


class ViTForImageClassification(nnx.Module):
    """transformers ``ViTForImageClassification``: ``classifier`` on the final CLS token
    (after ``vit.layernorm``); returns logits."""

    num_prefix_tokens = 1
    num_register_tokens = 0

    def __init__(self, cfg: dict, num_labels: int, *, rngs: nnx.Rngs):
        self.vit = ViTModel(cfg, pooler=False, root=False, rngs=rngs)
        self.input_shape = self.vit.input_shape
        self.classifier = (Linear(cfg["hidden_size"], num_labels, rngs=rngs) if num_labels > 0
                           else Identity())

    def __call__(self, x):
        h, _ = self.vit(x)
        return self.classifier(h[:, 0])
