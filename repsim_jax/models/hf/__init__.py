"""Hugging Face vision checkpoints as nnx models: ViT, DINOv2 (+ registers), CLIP vision, ConvNeXt.

``load_hf(dir)`` reads a directory written by transformers' ``save_pretrained``
(``config.json`` + ``model.safetensors`` [+ ``preprocessor_config.json``]) without torch or
transformers; ``build_hf(config)`` makes a random model of the same architecture and
``save_hf(model, dir)`` writes one back (transformers' ``from_pretrained`` reads it). The
ports reproduce transformers' forward pass block by block (tests/models/test_hf_parity.py,
1e-4 on every named block at two image sizes).

Layer names (what :func:`repsim_jax.models.list_layers` shows and ``activations`` takes)
are the module paths of the checkpoint's keys, i.e. the transformers module tree of the
classic layout that ``save_pretrained`` writes (transformers 5 renamed some modules in
memory, e.g. ViT's ``encoder.layer.N`` became ``layers.N``, but converts back on saving):

================================  ==========================================================
ViT ``ViTModel``                  ``embeddings``, ``encoder.layer.<i>`` (and inside it
                                  ``attention``, ``intermediate``, ``output``, ...),
                                  ``layernorm``, ``pooler`` (when present)
``ViTForImageClassification``     the same under ``vit.`` + ``classifier`` (logits)
DINOv2 ``Dinov2Model``            ``embeddings``, ``encoder.layer.<i>`` (``norm1``,
                                  ``attention``, ``layer_scale1``, ``mlp``, ...), ``layernorm``
CLIP ``CLIPVisionModel``          ``embeddings``, ``pre_layrnorm``, ``encoder.layers.<i>``,
                                  ``post_layernorm`` (the pooled CLS, (N, D)); checkpoints of
                                  ``CLIPModel`` / ``...WithProjection`` nest these under
                                  ``vision_model.`` and add ``visual_projection``
ConvNeXt ``ConvNextModel``        ``embeddings``, ``encoder.stages.<i>`` (and
                                  ``.downsampling_layer.<k>``, ``.layers.<j>``), ``layernorm``
                                  (pooled, (N, D)); the classifier nests it under
                                  ``convnext.`` + ``classifier``
================================  ==========================================================

Shapes: transformer blocks give (N, tokens, D), ConvNeXt stages NHWC (transformers' are
NCHW). ``"logits"`` is the model's own output: the logits of the classification models,
the image embedding of CLIP with a projection, otherwise transformers' first output
(the last hidden state: (N, tokens, D), or the last ConvNeXt stage (N, H, W, C)).

**Tokens.** Every token layer is laid out ``[CLS, registers..., patches]``: token 0 is
CLS, then ``model.num_register_tokens`` register tokens (DINOv2 with registers only; 0
otherwise), then the h x w patches in row-major order. ``model.num_prefix_tokens`` is
1 + registers. For the semantic RSM (position sets over patches):
``semantic.rsm(acts, drop_first_token=True)`` drops CLS, which is all the prefix for ViT,
CLIP and DINOv2 without registers; with registers, slice them off first,
``acts[name][:, model.num_prefix_tokens:]`` (or leave them in: they are then matched
like any other position). Exception: CLIP's ``post_layernorm`` and ViT's ``pooler`` are
already pooled (N, D), and so is ConvNeXt's ``layernorm``.

**Input size.** ``model.preprocess`` comes from ``preprocessor_config.json``
(:func:`preprocess_from_hf`); ``activations`` normalises images in [0, 1] with it. The
transformers take any size of at least one patch: the position embeddings are resized
bicubically to the patch grid exactly as transformers' ``interpolate_pos_encoding``
(always on in DINOv2; ViT and CLIP use the checkpoint's own square size as it is).
"""
from repsim_jax.models.hf.loader import (ARCHITECTURES, MODEL_TYPES, build_hf, load_hf,
                                         preprocess_from_hf, read_config, save_hf)

__all__ = ["load_hf", "build_hf", "save_hf", "read_config", "preprocess_from_hf",
           "ARCHITECTURES", "MODEL_TYPES"]
