"""A model's preprocessing as data: input size, resize/crop rule, mean/std normalisation.

Every model carries a :class:`Preprocess` (attribute ``model.preprocess``; absent means
:data:`IDENTITY`). Images enter the library as NHWC floats in [0, 1] (uint8 is taken as
0..255 and scaled, see :func:`to_unit_range`); :func:`resize_array` (host side, data
loaders) brings them to the model's size by the model's rule, and :meth:`Preprocess.normalize`
(inside the jit-compiled forward pass) applies ``(x - mean) / std``.

Resize rules (``resize``):

- ``"none"``: the model takes the images as they are (a size mismatch is an error when
  ``size`` is set and the model cannot take other sizes);
- ``"resize"``: bilinear resize of the whole image to ``size`` (aspect ratio not kept);
- ``"shorter_crop"``: resize the shorter side to ``round(min(size) / crop_pct)`` keeping
  the aspect ratio, then a centre crop of ``size`` (the torchvision / timm evaluation rule;
  ImageNet: 256 -> 224, ``crop_pct = 0.875``).
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from repsim_jax._checks import InputError

__all__ = ["Preprocess", "IDENTITY", "IMAGENET", "imagenet_at", "preprocess_of",
           "to_unit_range", "resize_array", "output_size"]

RESIZE_RULES = ("none", "resize", "shorter_crop")


@dataclasses.dataclass(frozen=True)
class Preprocess:
    """How images in [0, 1] become a model's input.

    ``size``: (H, W) the model expects (``None``: any size it can take); ``mean`` / ``std``:
    per-channel normalisation (``None``: none); ``resize``: one of ``"none"``, ``"resize"``,
    ``"shorter_crop"`` (module docstring); ``crop_pct``: the crop fraction of
    ``"shorter_crop"``; ``interpolation``: ``"bilinear"`` or ``"bicubic"``.
    """
    size: tuple[int, int] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    resize: str = "none"
    crop_pct: float = 1.0
    interpolation: str = "bilinear"

    def __post_init__(self):
        if self.resize not in RESIZE_RULES:
            raise InputError(f"preprocess: unknown resize rule {self.resize!r}; valid: "
                             f"{', '.join(RESIZE_RULES)}")
        if self.size is not None:
            size = tuple(int(s) for s in self.size)
            if len(size) != 2 or min(size) < 1:
                raise InputError(f"preprocess: size must be (H, W), got {self.size!r}")
            object.__setattr__(self, "size", size)
        if (self.mean is None) != (self.std is None):
            raise InputError("preprocess: give both mean and std, or neither")
        if self.mean is not None:
            mean = tuple(float(v) for v in self.mean)
            std = tuple(float(v) for v in self.std)
            if len(mean) != len(std):
                raise InputError(f"preprocess: mean has {len(mean)} channels, std {len(std)}")
            if min(std) <= 0:
                raise InputError(f"preprocess: std must be > 0, got {std}")
            object.__setattr__(self, "mean", mean)
            object.__setattr__(self, "std", std)
        if not 0 < float(self.crop_pct) <= 1:
            raise InputError(f"preprocess: crop_pct must be in (0, 1], got {self.crop_pct}")
        if self.interpolation not in ("bilinear", "bicubic"):
            raise InputError(f"preprocess: interpolation must be 'bilinear' or 'bicubic', "
                             f"got {self.interpolation!r}")

    def normalize(self, x):
        """``(x - mean) / std`` over the last (channel) axis; works on numpy and jax arrays
        (inside ``jit``)."""
        if self.mean is None:
            return x
        if x.shape[-1] != len(self.mean):
            raise InputError(f"images: the model's normalisation has {len(self.mean)} "
                             f"channels, the images {x.shape[-1]}")
        mean = np.asarray(self.mean, np.float32)
        std = np.asarray(self.std, np.float32)
        return (x - mean) / std

    def describe(self) -> str:
        """One line for logs and reports."""
        parts = [f"resize={self.resize}"]
        if self.size is not None:
            parts.append(f"size={self.size[0]}x{self.size[1]}")
        if self.resize == "shorter_crop":
            parts.append(f"crop_pct={self.crop_pct:g}")
        if self.mean is not None:
            parts.append(f"mean={self.mean} std={self.std}")
        else:
            parts.append("no normalisation")
        return ", ".join(parts)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


IDENTITY = Preprocess()
IMAGENET = Preprocess(size=(224, 224), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                      resize="shorter_crop", crop_pct=0.875)


def imagenet_at(size: Sequence[int] | None = None) -> Preprocess:
    """:data:`IMAGENET` (torchvision's mean/std and 256 -> 224 crop rule) for a model set up
    for another input ``size`` (H, W); the crop keeps ``crop_pct`` = 0.875."""
    if size is None or tuple(int(s) for s in size) == IMAGENET.size:
        return IMAGENET
    return dataclasses.replace(IMAGENET, size=tuple(int(s) for s in size))


def preprocess_of(model) -> Preprocess:
    """``model.preprocess`` when it is a :class:`Preprocess`, else :data:`IDENTITY`."""
    pre = getattr(model, "preprocess", None)
    return pre if isinstance(pre, Preprocess) else IDENTITY


def to_unit_range(images, name: str = "images", *, atol: float = 1e-3) -> np.ndarray:
    """NHWC images as float32 in [0, 1]: uint8 is divided by 255; float must already be in
    [0, 1] (within ``atol``, then clipped) or :class:`InputError` says what was found."""
    x = np.asarray(images)
    if x.dtype == np.uint8:
        return x.astype(np.float32) / 255.0
    if x.dtype.kind not in "f":
        raise InputError(f"{name}: expected uint8 (0..255) or float in [0, 1], got dtype "
                         f"{x.dtype}")
    x = x.astype(np.float32, copy=False)
    if x.size:
        lo, hi = float(np.min(x)), float(np.max(x))
        if not (np.isfinite(lo) and np.isfinite(hi)):
            raise InputError(f"{name}: contains NaN/Inf values")
        if lo < -atol or hi > 1 + atol:
            raise InputError(f"{name}: float images must be in [0, 1] (uint8 is scaled "
                             f"automatically); found values in [{lo:.4g}, {hi:.4g}]")
        if lo < 0 or hi > 1:
            x = np.clip(x, 0.0, 1.0)
    return x


def output_size(in_hw: Sequence[int], pre: Preprocess) -> tuple[int, int]:
    """The (H, W) an image of size ``in_hw`` has after ``pre``'s resize rule."""
    h, w = int(in_hw[0]), int(in_hw[1])
    if pre.resize == "none" or pre.size is None:
        return h, w
    return tuple(pre.size)


def _shorter_side(h: int, w: int, target: int) -> tuple[int, int]:
    if h <= w:
        return target, max(1, int(round(w * target / h)))
    return max(1, int(round(h * target / w))), target


def resize_array(images, pre: Preprocess) -> np.ndarray:
    """Applies ``pre``'s resize rule to NHWC images in [0, 1] (host side, jax.image)."""
    import jax
    import jax.numpy as jnp
    x = np.asarray(images, np.float32)
    if x.ndim != 4:
        raise InputError(f"images: expected NHWC (4 dimensions), got shape {x.shape}")
    if pre.resize == "none" or pre.size is None:
        return x
    n, h, w, c = x.shape
    method = "linear" if pre.interpolation == "bilinear" else "cubic"
    th, tw = pre.size
    if pre.resize == "resize":
        if (h, w) == (th, tw):
            return x
        out = jax.image.resize(jnp.asarray(x), (n, th, tw, c), method, antialias=True)
        return np.clip(np.asarray(out), 0.0, 1.0)
    rh, rw = _shorter_side(h, w, int(round(min(th, tw) / float(pre.crop_pct))))
    if (rh, rw) != (h, w):
        x = np.asarray(jax.image.resize(jnp.asarray(x), (n, rh, rw, c), method,
                                        antialias=True))
    if rh < th or rw < tw:
        raise InputError(f"preprocess: resized image {rh}x{rw} is smaller than the crop "
                         f"{th}x{tw}")
    top, left = (rh - th) // 2, (rw - tw) // 2
    return np.clip(x[:, top:top + th, left:left + tw], 0.0, 1.0)
