"""Loading a transformers ``save_pretrained`` directory into the nnx ports (no torch needed).

A checkpoint directory holds ``config.json`` (``model_type``, ``architectures`` and the
sizes), the weights (``model.safetensors``; also a sharded
``model.safetensors.index.json`` or a legacy ``pytorch_model.bin``, read by the safe
loaders of :mod:`repsim_jax.models.port` - nothing is unpickled with the standard
unpickler) and, optionally, ``preprocessor_config.json`` (the image processor).

Structure: ``model_type`` picks the family, the weight names pick the variant (a ``vit.``
/ ``dinov2.`` / ``convnext.`` prefix plus ``classifier`` = the classification model; a
``vision_model.`` prefix = CLIP's tower nested as in ``CLIPModel``; ``pooler`` keys = a ViT
pooler), every size from ``config.json`` (missing entries take transformers' config
defaults). The nnx parameter paths are the checkpoint keys and keep their shapes, so
porting is a checked copy: missing, unexpected and mis-shaped tensors are reported
together, by name and with both shapes, in one :class:`~repsim_jax.models.port.PortError`.
Tensors that only pre-training or the text tower use are skipped: ``*.mask_token``,
``*.position_ids``, ``text_model.*``, ``text_projection.*``, ``logit_scale``. Weights are
cast to float32.

Preprocessing (``preprocessor_config.json`` -> :class:`~repsim_jax.models.preprocess.Preprocess`):
``do_normalize`` + ``image_mean`` / ``image_std`` are the normalisation; ``do_rescale``
with ``rescale_factor`` = 1/255 is the library's [0, 1] input scaling (another factor
:math:`r` is folded into mean and std: :math:`(255 r x - m)/s = (x - m/255r)/(s/255r)`);
``do_resize`` with ``size = {height, width}`` -> ``resize``; ``size = {shortest_edge: s}``
with ``do_center_crop`` and ``crop_size`` -> ``shorter_crop`` (crop / s); ConvNeXt's
``crop_pct`` (below 384 px) -> ``shorter_crop`` with that fraction; ``resample`` 3 ->
bicubic, anything else bilinear. No file = no normalisation and no resize (the images
are taken as they come; the transformers can take other sizes by position interpolation).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from flax import nnx

from repsim_jax._checks import InputError
from repsim_jax.models.port import PortError, WeightsFileError, load_state_dict
from repsim_jax.models.preprocess import Preprocess

__all__ = ["load_hf", "build_hf", "save_hf", "read_config", "preprocess_from_hf",
           "MODEL_TYPES", "ARCHITECTURES"]

#: transformers' config defaults (used only where ``config.json`` lacks an entry)
_DEFAULTS = {
    "vit": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                intermediate_size=3072, hidden_act="gelu", layer_norm_eps=1e-12,
                image_size=224, patch_size=16, num_channels=3, qkv_bias=True,
                pooler_output_size=None, pooler_act="tanh"),
    "dinov2": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, mlp_ratio=4,
                   hidden_act="gelu", layer_norm_eps=1e-6, image_size=224, patch_size=14,
                   num_channels=3, qkv_bias=True, layerscale_value=1.0,
                   use_swiglu_ffn=False),
    "clip_vision_model": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                              num_attention_heads=12, num_channels=3, image_size=224,
                              patch_size=32, hidden_act="quick_gelu", layer_norm_eps=1e-5),
    "convnext": dict(num_channels=3, patch_size=4, num_stages=4,
                     hidden_sizes=[96, 192, 384, 768], depths=[3, 3, 9, 3], hidden_act="gelu",
                     layer_norm_eps=1e-12, layer_scale_init_value=1e-6, image_size=224),
}
_DEFAULTS["dinov2_with_registers"] = dict(_DEFAULTS["dinov2"], num_register_tokens=4)

#: model_type -> the transformers classes that are ported
ARCHITECTURES = {
    "vit": ("ViTModel", "ViTForImageClassification"),
    "dinov2": ("Dinov2Model", "Dinov2ForImageClassification"),
    "dinov2_with_registers": ("Dinov2WithRegistersModel",
                              "Dinov2WithRegistersForImageClassification"),
    "clip_vision_model": ("CLIPVisionModel", "CLIPVisionModelWithProjection"),
    "clip": ("CLIPModel",),
    "convnext": ("ConvNextModel", "ConvNextForImageClassification"),
}
MODEL_TYPES = tuple(ARCHITECTURES)

_SKIPPED_SUFFIXES = (".mask_token", ".position_ids", "num_batches_tracked")
_SKIPPED_PREFIXES = ("text_model.", "text_projection.")
_SKIPPED_KEYS = ("logit_scale",)


def _skipped(key: str) -> bool:
    return (key.endswith(_SKIPPED_SUFFIXES) or key.startswith(_SKIPPED_PREFIXES)
            or key in _SKIPPED_KEYS)


# ----------------------------------------------------------------------------- config

def read_config(path) -> dict:
    """``config.json`` of a checkpoint directory (or the file itself) as a dict."""
    p = Path(os.fspath(path))
    f = p / "config.json" if p.is_dir() else p
    if not f.is_file():
        raise WeightsFileError(f"{p}: no config.json (expected a directory written by "
                               f"transformers' save_pretrained)")
    try:
        cfg = json.loads(f.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise WeightsFileError(f"{f}: not valid JSON ({e})") from None
    if not isinstance(cfg, dict):
        raise WeightsFileError(f"{f}: expected a JSON object")
    return cfg


def _vision_config(cfg: dict, source: str) -> tuple[str, dict]:
    """(model_type, config of the vision network with defaults filled in and checked)."""
    mt = cfg.get("model_type")
    if mt not in ARCHITECTURES:
        raise PortError(f"{source}: model_type {mt!r} is not supported; known model types: "
                        f"{', '.join(MODEL_TYPES)}")
    vc = cfg
    if mt == "clip":
        vc = cfg.get("vision_config")
        if not isinstance(vc, dict):
            raise PortError(f"{source}: a CLIPModel config.json needs a 'vision_config' "
                            f"object")
        vc = dict(vc, model_type="clip_vision_model")
    out = dict(_DEFAULTS["clip_vision_model" if mt == "clip" else mt])
    out.update({k: v for k, v in vc.items() if v is not None or k not in out})
    out["model_type"] = "clip_vision_model" if mt == "clip" else mt
    _check_config(out, source)
    return mt, out


def _check_config(c: dict, source: str):
    from repsim_jax.models.hf._blocks import ACTIVATIONS

    def positive(*keys):
        for k in keys:
            v = c.get(k)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or v <= 0:
                raise PortError(f"{source}: config.json {k} = {v!r}: expected a positive "
                                f"number")

    act = c.get("hidden_act")
    if act not in ACTIVATIONS:
        raise PortError(f"{source}: config.json hidden_act = {act!r} is not supported; "
                        f"known: {', '.join(ACTIVATIONS)}")
    if c["model_type"] == "convnext":
        positive("num_channels", "patch_size", "num_stages")
        n = int(c["num_stages"])
        for k in ("hidden_sizes", "depths"):
            if not isinstance(c[k], (list, tuple)) or len(c[k]) < n:
                raise PortError(f"{source}: config.json {k} = {c[k]!r} must list "
                                f"num_stages = {n} values")
        return
    positive("hidden_size", "num_hidden_layers", "num_attention_heads", "num_channels")
    if not c.get("head_dim") and c["hidden_size"] % c["num_attention_heads"]:
        raise PortError(f"{source}: config.json hidden_size {c['hidden_size']} is not "
                        f"divisible by num_attention_heads {c['num_attention_heads']}")
    if c.get("pooler_act") is not None and c["pooler_act"] not in ACTIVATIONS:
        raise PortError(f"{source}: config.json pooler_act = {c['pooler_act']!r} is not "
                        f"supported; known: {', '.join(ACTIVATIONS)}")


def _num_labels(cfg: dict) -> int:
    if isinstance(cfg.get("id2label"), dict):
        return len(cfg["id2label"])
    return int(cfg.get("num_labels", 2))


# ----------------------------------------------------------------------------- structure

def _constructor(cfg: dict, keys: set | None, source: str):
    """(architecture name, zero-argument constructor taking ``rngs``) for ``cfg``.

    With ``keys`` (the checkpoint's tensor names) the variant follows the weights; without
    (a random model), ``architectures[0]`` of the config.
    """
    from repsim_jax.models.hf import clip, convnext, dinov2, vit

    mt, vc = _vision_config(cfg, source)
    archs = cfg.get("architectures") or [ARCHITECTURES[mt][0]]
    arch = archs[0]
    if arch not in ARCHITECTURES[mt]:
        raise PortError(f"{source}: architecture {arch!r} (model_type {mt!r}) is not "
                        f"supported; for {mt!r}: {', '.join(ARCHITECTURES[mt])}")

    def prefixed(p):
        return any(k.startswith(p) for k in keys) if keys is not None else None

    labels = _num_labels(cfg)
    if mt == "vit":
        head = prefixed("vit.") if keys is not None else arch == "ViTForImageClassification"
        if head:
            return "ViTForImageClassification", \
                lambda rngs: vit.ViTForImageClassification(vc, labels, rngs=rngs)
        pooler = "pooler.dense.weight" in keys if keys is not None else True
        return "ViTModel", lambda rngs: vit.ViTModel(vc, pooler=pooler, rngs=rngs)
    if mt in ("dinov2", "dinov2_with_registers"):
        base, cls_name = ARCHITECTURES[mt]
        head = prefixed(mt + ".") if keys is not None else arch == cls_name
        if head:
            return cls_name, lambda rngs: dinov2.Dinov2ForImageClassification(vc, labels,
                                                                              rngs=rngs)
        return base, lambda rngs: dinov2.Dinov2Model(vc, rngs=rngs)
    if mt in ("clip_vision_model", "clip"):
        nested = prefixed("vision_model.") if keys is not None else arch != "CLIPVisionModel"
        if not nested:
            return "CLIPVisionModel", lambda rngs: clip.CLIPVisionModel(vc, rngs=rngs)
        if keys is not None:
            proj = "visual_projection.weight" in keys
        else:
            proj = arch in ("CLIPModel", "CLIPVisionModelWithProjection")
        dim = (cfg.get("projection_dim") or 512) if proj else None
        name = arch if arch != "CLIPVisionModel" or proj else "CLIPVisionModel"
        return name, lambda rngs: clip.CLIPVisionWithProjection(vc, dim, rngs=rngs)
    head = prefixed("convnext.") if keys is not None else arch == "ConvNextForImageClassification"
    if head:
        return "ConvNextForImageClassification", \
            lambda rngs: convnext.ConvNextForImageClassification(vc, labels, rngs=rngs)
    return "ConvNextModel", lambda rngs: convnext.ConvNextModel(vc, rngs=rngs)


# ----------------------------------------------------------------------------- preprocess

def preprocess_from_hf(proc: dict | None, source: str = "preprocessor_config.json") -> Preprocess:
    """A transformers image-processor config as :class:`Preprocess` (rules in the module
    docstring); ``None`` -> no normalisation, no resize."""
    if not proc:
        return Preprocess()
    if not isinstance(proc, dict):
        raise WeightsFileError(f"{source}: expected a JSON object")
    mean = std = None
    if proc.get("do_normalize", True) and proc.get("image_mean") is not None:
        mean = [float(v) for v in np.atleast_1d(proc["image_mean"])]
        std = [float(v) for v in np.atleast_1d(proc.get("image_std", 1.0))]
        if len(std) == 1 and len(mean) > 1:
            std = std * len(mean)
        if len(mean) == 1 and len(std) > 1:
            mean = mean * len(std)
        factor = float(proc.get("rescale_factor", 1 / 255)) if proc.get("do_rescale", True) \
            else 1 / 255
        k = 255.0 * factor
        if abs(k - 1.0) > 1e-6:
            mean, std = [m / k for m in mean], [s / k for s in std]
    interp = "bicubic" if proc.get("resample") == 3 else "bilinear"
    size = proc.get("size")
    if not proc.get("do_resize", True) or size is None:
        return Preprocess(mean=mean, std=std, interpolation=interp)
    if isinstance(size, (int, float)):
        size = {"shortest_edge": int(size)}
    if not isinstance(size, dict):
        raise WeightsFileError(f"{source}: size = {size!r} is not understood")
    if "height" in size and "width" in size:
        hw = (int(size["height"]), int(size["width"]))
        return Preprocess(size=hw, mean=mean, std=std, resize="resize", interpolation=interp)
    if "shortest_edge" not in size:
        raise WeightsFileError(f"{source}: size = {size!r} is not understood (expected "
                               f"height/width or shortest_edge)")
    s = int(size["shortest_edge"])
    if proc.get("crop_pct") is not None and not proc.get("do_center_crop"):
        if s < 384:  # ConvNeXt's processor: resize s / crop_pct, centre crop s
            return Preprocess(size=(s, s), mean=mean, std=std, resize="shorter_crop",
                              crop_pct=float(proc["crop_pct"]), interpolation=interp)
        return Preprocess(size=(s, s), mean=mean, std=std, resize="resize",
                          interpolation=interp)
    crop = proc.get("crop_size") if proc.get("do_center_crop") else None
    if isinstance(crop, (int, float)):
        crop = {"height": int(crop), "width": int(crop)}
    if isinstance(crop, dict) and "height" in crop:
        hw = (int(crop["height"]), int(crop["width"]))
        pct = min(1.0, min(hw) / s)
        return Preprocess(size=hw, mean=mean, std=std, resize="shorter_crop", crop_pct=pct,
                          interpolation=interp)
    # shortest edge only, no crop: the size depends on the aspect ratio - keep it square
    return Preprocess(size=(s, s), mean=mean, std=std, resize="shorter_crop", crop_pct=1.0,
                      interpolation=interp)


# ----------------------------------------------------------------------------- weights

def _weights(directory: Path) -> dict[str, np.ndarray]:
    single = directory / "model.safetensors"
    if single.is_file():
        return load_state_dict(single)
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        try:
            wmap = json.loads(index.read_text())["weight_map"]
        except (KeyError, ValueError, TypeError) as e:
            raise WeightsFileError(f"{index}: not a safetensors index ({e})") from None
        out: dict[str, np.ndarray] = {}
        for shard in sorted(set(wmap.values())):
            out.update(load_state_dict(directory / shard))
        return out
    legacy = directory / "pytorch_model.bin"
    if legacy.is_file():
        return load_state_dict(legacy)
    raise WeightsFileError(f"{directory}: no model.safetensors (nor a sharded index or "
                           f"pytorch_model.bin)")


def _header_keys(directory: Path) -> set[str] | None:
    """Tensor names from the safetensors header alone (no data read)."""
    f = directory / "model.safetensors"
    if not f.is_file():
        return None
    import struct
    with open(f, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise WeightsFileError(f"{f}: too short for a safetensors file (truncated?)")
        (n,) = struct.unpack("<Q", head)
        size = f.stat().st_size
        if n > size - 8:
            raise WeightsFileError(f"{f}: safetensors header of {n} bytes exceeds the file "
                                   f"({size} bytes; truncated?)")
        try:
            header = json.loads(fh.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise WeightsFileError(f"{f}: corrupt safetensors header ({e})") from None
    return {k for k in header if k != "__metadata__"}


def _variables(model) -> dict[str, tuple]:
    flat = nnx.to_flat_state(nnx.state(model, nnx.Param))
    return {".".join(map(str, path)): (path, var) for path, var in flat}


def _summarise(label: str, items: list[str], limit: int = 20) -> str:
    more = f" ... (+{len(items) - limit} more)" if len(items) > limit else ""
    return f"{label} ({len(items)}): " + ", ".join(items[:limit]) + more


def _port(model, sd: dict, source: str, arch: str):
    import jax.numpy as jnp

    variables = _variables(model)
    given = {k: v for k, v in sd.items() if not _skipped(k)}
    missing = [k for k in variables if k not in given]
    unexpected = [k for k in given if k not in variables]
    misshaped, nonfinite, updates = [], [], []
    for key, arr in given.items():
        if key not in variables:
            continue
        path, var = variables[key]
        arr = np.asarray(arr)
        if tuple(arr.shape) != tuple(var.shape):
            misshaped.append(f"{key} (checkpoint {tuple(arr.shape)}, model needs "
                             f"{tuple(var.shape)})")
            continue
        arr = arr.astype(np.float32)
        if not np.isfinite(arr).all():
            nonfinite.append(key)
            continue
        updates.append((path, var.replace(jnp.asarray(arr))))
    problems = []
    if misshaped:
        problems.append(_summarise("mis-shaped tensors", misshaped))
    if missing:
        problems.append(_summarise("missing tensors", missing))
    if unexpected:
        problems.append(_summarise("unexpected tensors", unexpected))
    if nonfinite:
        problems.append(_summarise("tensors with NaN/Inf", nonfinite))
    if problems:
        raise PortError(f"{source}: the weights do not fit {arch} as config.json describes it "
                        f"({len(variables)} tensors expected, {len(given)} given):\n  "
                        + "\n  ".join(problems))
    nnx.update(model, nnx.from_flat_state(updates))
    return model


def _finish(model, arch: str, cfg: dict, pre: Preprocess, source: str):
    model.arch = f"hf:{arch}"
    model.hf_architecture = arch
    model.hf_config_json = json.dumps(cfg, sort_keys=True)
    model.preprocess = pre
    if pre.size is not None:
        model.input_shape = (*pre.size, model.input_shape[2])
    model.source = source
    return model


# ----------------------------------------------------------------------------- public

def load_hf(path):
    """An nnx model from a transformers ``save_pretrained`` directory (module docstring).

    Supported: ViT (``ViTModel``, ``ViTForImageClassification``), DINOv2 (``Dinov2Model``,
    ``Dinov2WithRegistersModel`` and their ``...ForImageClassification``), CLIP's vision
    tower (``CLIPVisionModel``, ``CLIPVisionModelWithProjection``, the image side of a
    ``CLIPModel``), ConvNeXt (``ConvNextModel``, ``ConvNextForImageClassification``).
    The model takes NHWC pixel values normalised as ``model.preprocess`` says (which
    :func:`repsim_jax.models.activations` applies to images in [0, 1]); layer names are
    the transformers module paths (see :mod:`repsim_jax.models.hf`).

    Raises :class:`~repsim_jax.models.port.WeightsFileError` for a missing directory,
    config or weights file and for a truncated/corrupt file (naming it), and
    :class:`~repsim_jax.models.port.PortError` for an unknown ``model_type`` /
    architecture (listing the known ones) and for weights that do not fit (naming each
    tensor with both shapes).
    """
    directory = Path(os.fspath(path))
    if not directory.is_dir():
        raise WeightsFileError(f"{directory}: no such checkpoint directory")
    cfg = read_config(directory)
    source = str(directory)
    keys = _header_keys(directory)
    if keys is None:
        sd = _weights(directory)
        keys = set(sd)
    else:
        sd = None
    arch, make = _constructor(cfg, {k for k in keys if not _skipped(k)}, source)
    proc_file = directory / "preprocessor_config.json"
    proc = None
    if proc_file.is_file():
        try:
            proc = json.loads(proc_file.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise WeightsFileError(f"{proc_file}: not valid JSON ({e})") from None
    pre = preprocess_from_hf(proc, str(proc_file))
    model = nnx.eval_shape(lambda: make(nnx.Rngs(0)))
    if sd is None:
        sd = _weights(directory)
    _port(model, sd, source, arch)
    return _finish(model, arch, cfg, pre, source)


def build_hf(config: dict, *, preprocess: Preprocess | None = None, seed: int = 0):
    """A randomly initialised port of the architecture ``config`` (a ``config.json`` dict)
    describes - for tests, benchmarks and offline notebooks. Weights: N(0, 1/fan_in)
    linear/conv weights, zero biases, unit LayerNorms, N(0, 1) embeddings (O(1)
    activations; not transformers' own initialisation)."""
    if not isinstance(config, dict):
        raise InputError(f"config: expected a dict like config.json, got "
                         f"{type(config).__name__}")
    arch, make = _constructor(config, None, "config")
    model = make(nnx.Rngs(seed))
    return _finish(model, arch, config, preprocess or Preprocess(), "random")


def save_hf(model, path) -> Path:
    """Writes a port as a checkpoint directory that :func:`load_hf` (and transformers'
    ``from_pretrained``) reads: ``config.json``, ``model.safetensors`` and, when the model
    normalises its input, ``preprocessor_config.json``."""
    from repsim_jax.models.port import save_safetensors

    cfg_json = getattr(model, "hf_config_json", None)
    if cfg_json is None:
        raise InputError("save_hf: not a Hugging Face port (no hf_config_json); build it "
                         "with load_hf or build_hf")
    out = Path(os.fspath(path))
    out.mkdir(parents=True, exist_ok=True)
    cfg = json.loads(cfg_json)
    cfg.setdefault("architectures", [model.hf_architecture])
    (out / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True))
    sd = {k: np.asarray(var[...], np.float32) for k, (_, var) in _variables(model).items()}
    save_safetensors(sd, out / "model.safetensors")
    pre = getattr(model, "preprocess", None)
    if isinstance(pre, Preprocess) and (pre.mean is not None or pre.size is not None):
        proc = {"do_rescale": True, "rescale_factor": 1 / 255,
                "do_normalize": pre.mean is not None,
                "resample": 3 if pre.interpolation == "bicubic" else 2}
        if pre.mean is not None:
            proc.update(image_mean=list(pre.mean), image_std=list(pre.std))
        if pre.size is None or pre.resize == "none":
            proc["do_resize"] = False
        elif pre.resize == "resize":
            proc.update(do_resize=True, size={"height": pre.size[0], "width": pre.size[1]})
        else:
            s = int(round(min(pre.size) / pre.crop_pct))
            proc.update(do_resize=True, size={"shortest_edge": s}, do_center_crop=True,
                        crop_size={"height": pre.size[0], "width": pre.size[1]})
        (out / "preprocessor_config.json").write_text(json.dumps(proc, indent=2))
    return out
