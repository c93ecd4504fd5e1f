"""Hugging Face ports against transformers (torch): every named block, two image sizes.

Each architecture is instantiated by transformers at a tiny config, its weights are
re-drawn at O(1) scale (fan-in scaled weights, LayerNorm gains 1 +- 0.1, layer scales
~1, N(0, 1) embeddings: transformers' own init would make most blocks near-zero, where a
wrong block could pass an absolute tolerance), saved with ``save_pretrained`` (plus an
image-processor config) and read back by ``repsim_jax.models.load_hf`` - no torch inside.
Blocks are compared at the checkpoint's square size and at a non-square size that needs
position-embedding interpolation (transformers: ``interpolate_pos_encoding=True``; DINOv2
always), to 1e-4, with a guard that the reference block has std in [0.2, 5].
"""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from repsim_jax import models  # noqa: E402
from repsim_jax.models import hf  # noqa: E402
from repsim_jax.models.port import PortError, WeightsFileError, load_state_dict, \
    save_safetensors  # noqa: E402

pytestmark = pytest.mark.torch
TOL = 1e-4
MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
SIZES = [(32, 32), (48, 40)]   # checkpoint size; non-square, other patch grid


def randomise(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if p.ndim >= 2 and leaf == "weight" and "position_embedding" not in name:
                fan_in = int(np.prod(p.shape[1:]))
                p.copy_(torch.randn(p.shape, generator=g) / fan_in ** 0.5)
            elif "norm" in name and leaf == "weight":
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            elif leaf in ("lambda1", "layer_scale_parameter"):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            elif leaf == "bias":
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            else:  # cls/register tokens, position embeddings
                p.copy_(torch.randn(p.shape, generator=g))
    return model.eval()


def make(tmp_path_factory, name, cls, config):
    model = randomise(cls(config))
    path = tmp_path_factory.mktemp(name)
    model.save_pretrained(path)
    (path / "preprocessor_config.json").write_text(json.dumps(
        {"do_normalize": True, "image_mean": list(MEAN), "image_std": list(STD),
         "do_rescale": True, "rescale_factor": 1 / 255, "do_resize": False}))
    return model, path


def images(hw, n=3, seed=1):
    return np.random.default_rng(seed).uniform(0, 1, (n, *hw, 3)).astype(np.float32)


def pixel_values(x):
    return torch.from_numpy(((x - np.array(MEAN)) / np.array(STD)).astype(np.float32)
                            ).permute(0, 3, 1, 2).contiguous()


def close(name, ours, ref):
    ref = ref.detach().numpy() if hasattr(ref, "detach") else np.asarray(ref)
    ours = np.asarray(ours)
    assert ours.shape == ref.shape, f"{name}: shape {ours.shape} vs transformers {ref.shape}"
    assert 0.2 < ref.std() < 5, f"{name}: reference std {ref.std():.3g} is not O(1)"
    err = float(np.abs(ours - ref).max())
    assert err < TOL, f"{name}: max |ours - transformers| = {err:.2e}"


# ----------------------------------------------------------------------------- fixtures

def vit_config(**kw):
    return transformers.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=48, image_size=32, patch_size=8, **kw)


@pytest.fixture(scope="module")
def vit(tmp_path_factory):
    return make(tmp_path_factory, "vit", transformers.ViTModel, vit_config())


@pytest.fixture(scope="module")
def vit_cls(tmp_path_factory):
    return make(tmp_path_factory, "vitcls", transformers.ViTForImageClassification,
                vit_config(num_labels=5, hidden_act="gelu_new", qkv_bias=False))


def dinov2_config(cls=transformers.Dinov2Config, **kw):
    return cls(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2,
               image_size=32, patch_size=8, **kw)


@pytest.fixture(scope="module")
def dino(tmp_path_factory):
    return make(tmp_path_factory, "dino", transformers.Dinov2Model, dinov2_config())


@pytest.fixture(scope="module")
def dino_reg(tmp_path_factory):
    return make(tmp_path_factory, "dinoreg", transformers.Dinov2WithRegistersModel,
                dinov2_config(transformers.Dinov2WithRegistersConfig, num_register_tokens=3,
                              use_swiglu_ffn=True))


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return make(tmp_path_factory, "clip", transformers.CLIPVisionModel,
                transformers.CLIPVisionConfig(hidden_size=32, intermediate_size=48,
                                              num_hidden_layers=2, num_attention_heads=2,
                                              image_size=32, patch_size=8))


@pytest.fixture(scope="module")
def convnext(tmp_path_factory):
    return make(tmp_path_factory, "convnext", transformers.ConvNextForImageClassification,
                transformers.ConvNextConfig(hidden_sizes=[8, 16, 24], depths=[1, 2, 1],
                                            num_stages=3, num_labels=4, image_size=32))


# ----------------------------------------------------------------------------- parity

def _vit_names(n):
    """Our (classic transformers) layer name -> transformers 5's in-memory module path."""
    n = re.sub(r"^(vit\.)?encoder\.layer\.(\d+)", r"\1layers.\2", n)
    for a, b in ((r"attention\.attention\.query$", "attention.q_proj"),
                 (r"attention\.attention\.key$", "attention.k_proj"),
                 (r"attention\.attention\.value$", "attention.v_proj"),
                 (r"attention\.output\.dense$", "attention.o_proj"),
                 (r"intermediate\.dense$", "mlp.fc1"), (r"intermediate$", "mlp.activation_fn"),
                 (r"\.output\.dense$", ".mlp.fc2"), (r"\.output$", "")):
        n = re.sub(a, b, n)
    return n


def _dinov2_names(n):
    for a, b in ((r"attention\.attention\.query$", "attention.q_proj"),
                 (r"attention\.attention\.key$", "attention.k_proj"),
                 (r"attention\.attention\.value$", "attention.v_proj"),
                 (r"attention\.output\.dense$", "attention.o_proj"),
                 (r"mlp\.weights_out$", "mlp.down_proj")):
        n = re.sub(a, b, n)
    return n


def compare_all(tm, model, x, rename=lambda n: n, **kw):
    """Every layer of ``model`` that has a transformers module (after ``rename``) against
    that module's output (forward hooks), through ``models.activations`` on images in
    [0, 1] (the port's preprocessing applied inside). Returns (our names, compared names,
    our activations, transformers' outputs)."""
    names = models.list_layers(model, input_shape=(*x.shape[1:3], 3))
    modules = dict(tm.named_modules())
    targets = {n: rename(n) for n in names if rename(n) in modules}
    ref, hooks = {}, []
    for n, h in targets.items():
        def hook(mod, inp, out, n=n):
            out = out[0] if isinstance(out, (tuple, transformers.utils.ModelOutput)) else out
            ref[n] = out.detach().clone()
        hooks.append(modules[h].register_forward_hook(hook))
    try:
        with torch.no_grad():
            out = tm(pixel_values(x), output_hidden_states=True, **kw)
    finally:
        for h in hooks:
            h.remove()
    targets = {n: h for n, h in targets.items() if n in ref}   # modules that ran
    ours = models.activations(model, x, list(targets) + ["logits"])
    for n in targets:
        r = ref[n]
        # transformers' convolutional outputs are NCHW (ours NHWC), except inside a ConvNeXt
        # block between its two permutes
        if r.ndim == 4 and not re.search(r"layers\.\d+\.(layernorm|pwconv1|pwconv2)$", n):
            r = r.permute(0, 2, 3, 1)
        close(n, ours[n], r)
    return names, set(targets), ours, out


@pytest.mark.parametrize("hw", SIZES)
def test_vit_every_block(vit, hw):
    tm, path = vit
    model = hf.load_hf(path)
    x = images(hw)
    names, done, ours, ref = compare_all(tm, model, x, _vit_names, interpolate_pos_encoding=True)
    blocks = ["embeddings", "encoder.layer.0", "encoder.layer.1", "layernorm", "pooler"]
    assert [n for n in names if n in blocks] == blocks and set(blocks) <= done
    for i in range(2):   # every part of a block has its transformers counterpart
        assert {f"encoder.layer.{i}.{p}" for p in (
            "layernorm_before", "attention", "attention.attention.query",
            "attention.attention.key", "attention.attention.value", "attention.output.dense",
            "layernorm_after", "intermediate.dense", "intermediate", "output.dense")} <= done
    for i, h in enumerate(ref.hidden_states):   # and the hidden_states tuple
        close(blocks[i], ours[blocks[i]], h)
    close("logits", ours["logits"], ref.last_hidden_state)
    n_patches = (hw[0] // 8) * (hw[1] // 8)
    assert ours["layernorm"].shape == (3, 1 + n_patches, 32)


@pytest.mark.parametrize("hw", SIZES)
def test_vit_classification_every_block(vit_cls, hw):
    tm, path = vit_cls
    model = hf.load_hf(path)
    assert model.hf_architecture == "ViTForImageClassification"
    names, done, ours, ref = compare_all(tm, model, images(hw), _vit_names,
                                         interpolate_pos_encoding=True)
    assert {"vit.embeddings", "vit.encoder.layer.1", "vit.layernorm", "classifier"} <= done
    assert not any(n.startswith("vit.pooler") for n in names)
    close("logits", ours["logits"], ref.logits)


@pytest.mark.parametrize("hw", SIZES)
@pytest.mark.parametrize("which", ["dino", "dino_reg"])
def test_dinov2_every_block(which, hw, request):
    tm, path = request.getfixturevalue(which)
    model = hf.load_hf(path)
    names, done, ours, ref = compare_all(tm, model, images(hw), _dinov2_names)
    blocks = ["embeddings", "encoder.layer.0", "encoder.layer.1", "layernorm"]
    assert set(blocks) <= done
    for i in range(2):
        parts = ["norm1", "attention", "attention.attention.query", "attention.output.dense",
                 "layer_scale1", "norm2", "mlp", "layer_scale2"]
        parts += ["mlp.weights_out"] if which == "dino_reg" else ["mlp.fc1", "mlp.fc2"]
        assert {f"encoder.layer.{i}.{p}" for p in parts} <= done
    for i, h in enumerate(ref.hidden_states):
        close(blocks[i], ours[blocks[i]], h)
    close("logits", ours["logits"], ref.last_hidden_state)
    regs = 3 if which == "dino_reg" else 0
    assert model.num_register_tokens == regs and model.num_prefix_tokens == 1 + regs
    n_patches = (hw[0] // 8) * (hw[1] // 8)
    assert ours["layernorm"].shape[1] == 1 + regs + n_patches


@pytest.mark.parametrize("hw", SIZES)
def test_clip_vision_every_block(clip, hw):
    tm, path = clip
    model = hf.load_hf(path)
    names, done, ours, ref = compare_all(tm, model, images(hw), interpolate_pos_encoding=True)
    blocks = ["embeddings", "pre_layrnorm", "encoder.layers.0", "encoder.layers.1",
              "post_layernorm"]
    assert [n for n in names if n in blocks] == blocks and set(blocks) <= done
    assert {f"encoder.layers.1.{p}" for p in ("layer_norm1", "self_attn", "self_attn.q_proj",
                                              "self_attn.out_proj", "layer_norm2", "mlp",
                                              "mlp.fc1", "mlp.fc2")} <= done
    # transformers' hidden_states: the encoder input (after pre_layrnorm), then every layer
    for name, h in zip(blocks[1:4], ref.hidden_states):
        close(name, ours[name], h)
    close("post_layernorm", ours["post_layernorm"], ref.pooler_output)
    close("logits", ours["logits"], ref.last_hidden_state)


@pytest.mark.parametrize("hw", SIZES)
def test_convnext_every_block(convnext, hw):
    tm, path = convnext
    model = hf.load_hf(path)
    names, done, ours, ref = compare_all(tm, model, images(hw))
    blocks = ["convnext.embeddings", "convnext.encoder.stages.0", "convnext.encoder.stages.1",
              "convnext.encoder.stages.2", "convnext.layernorm", "classifier"]
    assert set(blocks) <= done
    assert {"convnext.encoder.stages.1.downsampling_layer.0",
            "convnext.encoder.stages.1.downsampling_layer.1",
            "convnext.encoder.stages.1.layers.1.dwconv", "convnext.encoder.stages.1.layers.1",
            "convnext.encoder.stages.1.layers.1.pwconv1"} <= done
    for name, h in zip(blocks, ref.hidden_states):     # NCHW -> NHWC
        close(name, ours[name], h.permute(0, 2, 3, 1))
    assert ours["convnext.encoder.stages.2"].shape == (3, hw[0] // 16, hw[1] // 16, 24)
    close("logits", ours["logits"], ref.logits)


# ----------------------------------------------------------------------------- errors

def _copy(src, dst):
    import shutil
    shutil.copytree(src, dst)
    return dst


def _edit_config(path, **changes):
    cfg = json.loads((path / "config.json").read_text())
    cfg.update(changes)
    (path / "config.json").write_text(json.dumps(cfg))


def test_clear_errors(vit, tmp_path):
    _, src = vit
    bad = _copy(src, tmp_path / "type")
    _edit_config(bad, model_type="swin")
    with pytest.raises(PortError, match=r"model_type 'swin' is not supported; known model "
                                         r"types: vit, dinov2, dinov2_with_registers"):
        hf.load_hf(bad)
    bad = _copy(src, tmp_path / "arch")
    _edit_config(bad, architectures=["ViTForMaskedImageModeling"])
    with pytest.raises(PortError, match=r"'ViTForMaskedImageModeling'.*ViTModel, "
                                         r"ViTForImageClassification"):
        hf.load_hf(bad)
    bad = _copy(src, tmp_path / "shape")
    _edit_config(bad, intermediate_size=40)
    with pytest.raises(PortError, match=r"mis-shaped tensors \(6\):.* encoder\.layer\.0\."
                                         r"intermediate\.dense\.weight \(checkpoint \(48, 32\)"
                                         r", model needs \(40, 32\)\)"):
        hf.load_hf(bad)
    bad = _copy(src, tmp_path / "missing")
    sd = load_state_dict(bad / "model.safetensors")
    del sd["encoder.layer.1.output.dense.weight"]
    sd["encoder.layer.9.extra"] = np.zeros(3, np.float32)
    save_safetensors(sd, bad / "model.safetensors")
    with pytest.raises(PortError, match=r"(?s)missing tensors \(1\): encoder\.layer\.1\.output"
                                         r"\.dense\.weight.*unexpected tensors \(1\): "
                                         r"encoder\.layer\.9\.extra"):
        hf.load_hf(bad)
    bad = _copy(src, tmp_path / "trunc")
    raw = (bad / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(WeightsFileError, match=r"trunc/model\.safetensors.*truncated"):
        hf.load_hf(bad)
    (bad / "model.safetensors").unlink()
    with pytest.raises(WeightsFileError, match="no model.safetensors"):
        hf.load_hf(bad)
    with pytest.raises(WeightsFileError, match="no such checkpoint directory"):
        hf.load_hf(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightsFileError, match="no config.json"):
        hf.load_hf(tmp_path / "empty")
    bad = _copy(src, tmp_path / "act")
    _edit_config(bad, hidden_act="mish")
    with pytest.raises(PortError, match=r"hidden_act = 'mish' is not supported; known: gelu"):
        hf.load_hf(bad)


# ----------------------------------------------------------------------------- preprocessing

@pytest.mark.parametrize("cls,size,rule,pct,interp", [
    ("ViTImageProcessorPil", (224, 224), "resize", 1.0, "bilinear"),
    ("CLIPImageProcessorPil", (224, 224), "shorter_crop", 1.0, "bicubic"),
    ("ConvNextImageProcessorPil", (384, 384), "resize", 1.0, "bicubic"),
    ("BitImageProcessorPil", (224, 224), "shorter_crop", 1.0, "bicubic")])
def test_preprocessor_config_becomes_preprocess(cls, size, rule, pct, interp, tmp_path):
    proc = getattr(transformers, cls)()
    proc.save_pretrained(tmp_path)
    pre = hf.preprocess_from_hf(json.loads((tmp_path / "preprocessor_config.json").read_text()))
    assert (pre.size, pre.resize, pre.crop_pct, pre.interpolation) == (size, rule, pct, interp)
    # the normalisation equals the processor's on uint8 pixels (resize and crop off)
    u8 = np.random.default_rng(0).integers(0, 256, (20, 24, 3), dtype=np.uint8)
    ref = proc(images=[u8], do_resize=False, do_center_crop=False,
               return_tensors="np")["pixel_values"][0].transpose(1, 2, 0)
    np.testing.assert_allclose(pre.normalize(u8.astype(np.float32) / 255), ref, atol=1e-5)


def test_preprocess_rules_from_real_checkpoint_configs():
    # ConvNeXt at 224 (crop_pct), DINOv2 (shortest edge 256, crop 224), rescale 1/127.5
    c = hf.preprocess_from_hf({"size": {"shortest_edge": 224}, "crop_pct": 0.875,
                               "resample": 3, "image_mean": [0.485, 0.456, 0.406],
                               "image_std": [0.229, 0.224, 0.225]})
    assert (c.size, c.resize, c.crop_pct) == ((224, 224), "shorter_crop", 0.875)
    d = hf.preprocess_from_hf({"size": {"shortest_edge": 256}, "do_center_crop": True,
                               "crop_size": {"height": 224, "width": 224},
                               "image_mean": [0.5], "image_std": [0.5]})
    assert (d.size, d.resize, d.crop_pct, d.mean) == ((224, 224), "shorter_crop", 0.875,
                                                      (0.5,))
    r = hf.preprocess_from_hf({"do_resize": False, "rescale_factor": 1 / 127.5,
                               "image_mean": [1.0, 1.0, 1.0], "image_std": [1.0, 1.0, 1.0]})
    x = np.random.default_rng(0).uniform(0, 1, (2, 3)).astype(np.float32)
    np.testing.assert_allclose(r.normalize(x), x * 255 / 127.5 - 1, atol=1e-6)
    assert hf.preprocess_from_hf(None).mean is None


def test_build_save_load_roundtrip(tmp_path):
    cfg = {"model_type": "dinov2_with_registers", "hidden_size": 16, "num_hidden_layers": 1,
           "num_attention_heads": 2, "image_size": 16, "patch_size": 8,
           "num_register_tokens": 2, "architectures": ["Dinov2WithRegistersModel"]}
    from repsim_jax.models.preprocess import IMAGENET
    model = hf.build_hf(cfg, preprocess=IMAGENET)
    hf.save_hf(model, tmp_path)
    back = hf.load_hf(tmp_path)
    assert back.preprocess == IMAGENET and back.num_prefix_tokens == 3
    x = np.random.default_rng(0).normal(size=(2, 16, 24, 3)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(back(x)), np.asarray(model(x)), atol=1e-6)
    # transformers reads what save_hf wrote and computes the same
    tm = transformers.AutoModel.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        ref = tm(torch.from_numpy(x).permute(0, 3, 1, 2)).last_hidden_state.numpy()
    np.testing.assert_allclose(np.asarray(model(x)), ref, atol=TOL)


def test_clip_model_checkpoint_gives_its_vision_tower(tmp_path_factory):
    vision = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                  num_attention_heads=2, image_size=32, patch_size=8)
    text = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                num_attention_heads=2)
    tm, path = make(tmp_path_factory, "clipfull", transformers.CLIPModel,
                    transformers.CLIPConfig(vision_config=vision, text_config=text,
                                            projection_dim=24))
    model = hf.load_hf(path)
    assert model.hf_architecture == "CLIPModel" and model.visual_projection is not None
    x = images((32, 32))
    with torch.no_grad():
        ref = tm.get_image_features(pixel_values(x))
        ref = getattr(ref, "pooler_output", ref)
        hidden = tm.vision_model(pixel_values(x)).last_hidden_state
    ours = models.activations(model, x, ["logits", "vision_model", "visual_projection"])
    close("visual_projection", ours["visual_projection"], ref)
    close("logits", ours["logits"], ref)
    close("vision_model", ours["vision_model"], hidden)


def test_dinov2_registers_classification_logits(tmp_path_factory):
    tm, path = make(tmp_path_factory, "dinoregcls",
                    transformers.Dinov2WithRegistersForImageClassification,
                    dinov2_config(transformers.Dinov2WithRegistersConfig,
                                  num_register_tokens=2, num_labels=3))
    model = hf.load_hf(path)
    assert model.hf_architecture == "Dinov2WithRegistersForImageClassification"
    x = images(SIZES[1])
    with torch.no_grad():
        ref = tm(pixel_values(x)).logits
    close("logits", models.activations(model, x, ["logits"])["logits"], ref)
