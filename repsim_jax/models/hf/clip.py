"""CLIP's vision tower (``CLIPVisionModel``; the image side of ``CLIPModel`` /
``CLIPVisionModelWithProjection``), as in Hugging Face transformers, NHWC.

Radford et al., "Learning Transferable Visual Models From Natural Language Supervision",
ICML 2021. A ViT with a LayerNorm *before* the encoder and ``quick_gelu`` MLPs:

.. math::
   z_0 = \\mathrm{LN}_{pre}([c;\\, \\mathrm{Conv}_{p/p}(x)] + E_{pos}),\\quad
   z'_l = z_{l-1} + \\mathrm{MSA}(\\mathrm{LN}_1(z_{l-1})),\\quad
   z_l = z'_l + \\mathrm{MLP}(\\mathrm{LN}_2(z'_l)),

pooled output :math:`\\mathrm{LN}_{post}(z_L[\\text{CLS}])` (so ``post_layernorm`` is
(N, D)); with a projection (``CLIPModel``, ``...WithProjection``) the image embedding is
``visual_projection(pooled)``.

Module tree = checkpoint keys: ``embeddings`` (``class_embedding``, ``patch_embedding``,
``position_embedding``), ``pre_layrnorm`` (sic), ``encoder.layers.<i>`` (``layer_norm1``,
``self_attn.{q,k,v,out}_proj``, ``layer_norm2``, ``mlp.{fc1,fc2}``), ``post_layernorm``.
A ``CLIPVisionModel`` saved by transformers 5 has these at the top; ``CLIPModel``,
``...WithProjection`` and older ``CLIPVisionModel`` checkpoints nest them under
``vision_model`` (next to ``visual_projection``), and so do the layer names here. The text
tower of a ``CLIPModel`` checkpoint is not loaded. Another image size: bicubic position
interpolation (transformers' ``interpolate_pos_encoding=True``).
"""
from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from repsim_jax._checks import InputError
from repsim_jax.models.hf._blocks import (Conv2d, Embedding, LayerNorm, Linear, _normal,
                                          MLP, attention)
from repsim_jax.models.hf.vit import _pair, interpolate_positions

__all__ = ["CLIPVisionModel", "CLIPVisionWithProjection"]


class CLIPAttention(nnx.Module):
    def __init__(self, dim: int, heads: int, *, rngs):
        self.heads = int(heads)
        self.k_proj = Linear(dim, dim, rngs=rngs)
        self.v_proj = Linear(dim, dim, rngs=rngs)
        self.q_proj = Linear(dim, dim, rngs=rngs)
        self.out_proj = Linear(dim, dim, rngs=rngs)

    def __call__(self, x):
        d = x.shape[-1] // self.heads
        y = attention(self.q_proj(x), self.k_proj(x), self.v_proj(x), self.heads, d ** -0.5)
        return self.out_proj(y)


class CLIPEncoderLayer(nnx.Module):
    def __init__(self, cfg: dict, *, rngs):
        d, eps = cfg["hidden_size"], cfg["layer_norm_eps"]
        self.self_attn = CLIPAttention(d, cfg["num_attention_heads"], rngs=rngs)
        self.layer_norm1 = LayerNorm(d, eps)
        self.mlp = MLP(d, cfg["intermediate_size"], cfg["hidden_act"], rngs=rngs)
        self.layer_norm2 = LayerNorm(d, eps)

    def __call__(self, x):
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class CLIPEncoder(nnx.Module):
    def __init__(self, cfg: dict, *, rngs):
        self.layers = nnx.List([CLIPEncoderLayer(cfg, rngs=rngs)
                                for _ in range(cfg["num_hidden_layers"])])

    def __call__(self, x):
        for blk in self.layers:
            x = blk(x)
        return x


class CLIPVisionEmbeddings(nnx.Module):
    def __init__(self, cfg: dict, *, rngs):
        d = cfg["hidden_size"]
        self.patch_size = _pair(cfg["patch_size"])
        ih, iw = _pair(cfg["image_size"])
        self.class_embedding = nnx.Param(_normal(rngs, (d,), 1.0))
        self.patch_embedding = Conv2d(cfg["num_channels"], d, self.patch_size,
                                      stride=self.patch_size, bias=False, rngs=rngs)
        n_pos = (ih // self.patch_size[0]) * (iw // self.patch_size[1]) + 1
        self.position_embedding = Embedding(n_pos, d, rngs=rngs)

    def __call__(self, x):
        if x.shape[1] < self.patch_size[0] or x.shape[2] < self.patch_size[1]:
            raise InputError(f"images of {x.shape[1]}x{x.shape[2]} px are smaller than one "
                             f"{self.patch_size[0]}x{self.patch_size[1]} patch")
        y = self.patch_embedding(x)
        n, n_h, n_w, d = y.shape
        tokens = y.reshape(n, n_h * n_w, d)
        cls = jnp.broadcast_to(self.class_embedding[...], (n, 1, d))
        z = jnp.concatenate([cls, tokens], axis=1)
        pos = self.position_embedding()
        return z + interpolate_positions(pos, n_h, n_w, x.shape[1] == x.shape[2])


class CLIPVisionModel(nnx.Module):
    """The vision transformer. At the top it returns the last hidden state (N, 1 + patches,
    D) - transformers' first output; nested, ``(last_hidden_state, pooler_output)``."""

    num_prefix_tokens = 1
    num_register_tokens = 0

    def __init__(self, cfg: dict, *, root: bool = True, rngs: nnx.Rngs):
        d, eps = cfg["hidden_size"], cfg["layer_norm_eps"]
        ih, iw = _pair(cfg["image_size"])
        self.root = bool(root)
        self.input_shape = (ih, iw, int(cfg["num_channels"]))
        self.embeddings = CLIPVisionEmbeddings(cfg, rngs=rngs)
        self.pre_layrnorm = LayerNorm(d, eps)
        self.encoder = CLIPEncoder(cfg, rngs=rngs)
        self.post_layernorm = LayerNorm(d, eps)

    def __call__(self, x):
        h = self.encoder(self.pre_layrnorm(self.embeddings(x)))
        pooled = self.post_layernorm(h[:, 0])
        return h if self.root else (h, pooled)


class CLIPVisionWithProjection(nnx.Module):
    """``vision_model`` (+ ``visual_projection`` when the checkpoint has it). Returns the
    image embedding ``visual_projection(pooled)``, or without a projection the last hidden
    state of ``vision_model``."""

    num_prefix_tokens = 1
    num_register_tokens = 0

    def __init__(self, cfg: dict, projection_dim: int | None, *, rngs: nnx.Rngs):
        self.vision_model = CLIPVisionModel(cfg, root=False, rngs=rngs)
        self.input_shape = self.vision_model.input_shape
        self.visual_projection = (Linear(cfg["hidden_size"], int(projection_dim), bias=False,
                                         rngs=rngs) if projection_dim else None)

    def __call__(self, x):
        h, pooled = self.vision_model(x)
        return self.visual_projection(pooled) if self.visual_projection is not None else h
