r"""Stage 1 of visual summaries: sparse blur-perturbation masks, optimised per image.

Godi, Carletti, Aghaei, Giuliari, Cristani, *Understanding Deep Architectures by
(Interpretable) Visual Summaries*, BMVC 2018 (masks after Fong & Vedaldi, ICCV 2017).

For an image :math:`x` (H x W x 3) of target class :math:`c` and a mask
:math:`m \in [0, 1]^{H \times W}` (1 keeps a pixel, 0 replaces it by its blur) the
perturbed input is

.. math::  \tilde x = x \odot m + \mathrm{blur}(x) \odot (1 - m),

with a Gaussian blur of kernel 11 and :math:`\sigma = 10` at 224 px (both scaled to the
image size, the kernel kept odd and >= 3). The mask minimises

.. math::

    L(m) = p_c(\tilde x) + \lambda_1 \,\mathrm{mean}|1 - m|
           + \lambda_2 \,\mathrm{TV}_\beta(m) + \lambda_3 \,\mathrm{mean}|m (1 - m)|,
    \qquad \mathrm{TV}_\beta(m) = \mathrm{mean}|\partial_y m|^\beta
                                  + \mathrm{mean}|\partial_x m|^\beta,\ \beta = 3,

where :math:`p_c` is the softmax probability of the target class. The first term asks the
perturbation to destroy the evidence for :math:`c`, the L1 term keeps the deleted area
small, TV makes it compact and the last term pushes :math:`m` to binary values. Adam
(lr 0.1, optax) with :math:`m` clamped to [0, 1] after every step, two passes:

* **smooth**: :math:`m` lives at 1/8 resolution, is bilinearly upsampled and Gaussian
  blurred (:math:`\sigma = 5` at 224 px) before use; the blur is *straight-through*
  (forward: blurred mask; backward: identity), as in the official code, which overwrote the
  tensor's data. Initialised to 1 with a central disc of 0 (radius half the low-res side);
  300 steps, :math:`\lambda = (0.5, 10^{-2}, 0)`; the regularisers act on the low-res mask.
* **sharp**: :math:`m` at full resolution, initialised from the upsampled smooth mask;
  no blur; 150 steps, :math:`\lambda = (0.01, 1, 2)`. (The official code rescaled the
  smooth mask by :math:`(m - \min m) / \max m` when saving and reloading it; for a smooth
  mask that deletes nothing, :math:`m \approx 1`, that maps to :math:`m \approx 0`, i.e.
  "delete everything", so we start from the mask itself.)

**Scale-dependent option** ``baseline="mean"`` (not in the paper): the replacement
image is the per-channel mean colour of :math:`x`,
:math:`\mathrm{blur}(x) \to \bar x = \frac{1}{HW}\sum_{ij} x_{ij}` (blur with
:math:`\sigma \to \infty`). At small sizes (64 px) the scaled blur keeps colour and
shape, so a fully blurred image still scores :math:`p_c \approx 0.9` on the built-in
trained models and the masks settle on loose background areas; the mean baseline removes
all evidence (:math:`p_c \approx 0.03`) and the deleted pixels then lie on the objects.
The default ``"blur"`` is the paper's.

Every image is optimised independently, so one jit-compiled :func:`jax.vmap` runs the two
passes for a whole batch of images (``batch_size`` chunks bound memory; ``mesh``
spreads a chunk over devices). Images whose top-1 prediction is not the target class are
skipped (reported in :attr:`MaskResult.kept` / ``skipped``), as in the paper.

The classifier is either an ``nnx.Module`` following the capture convention of
:mod:`repsim_jax.models.capture` (called in evaluation mode on NHWC float32 images) or any
function ``logits_fn(images (B, H, W, C)) -> logits (B, K)`` written with ``jax.numpy``.
"""
from __future__ import annotations

import dataclasses

from repsim_jax._devices import as_mesh, batch_sharding, resolve_mesh_alias
from repsim_jax._results import result
import functools
import warnings
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from repsim_jax._checks import InputError, as_float_array, check_same_length

__all__ = [
    "MaskPass", "SMOOTH_PASS", "SHARP_PASS", "MaskResult", "gaussian_kernel",
    "image_blur_params", "mask_blur_sigma", "blur_images", "perturb", "tv_beta",
    "mask_objective", "central_disc_init", "optimise_masks", "classifier_apply",
    "BASELINES", "replacement_image",
]


@dataclasses.dataclass(frozen=True)
class MaskPass:
    """Hyper-parameters of one optimisation pass (``downsample`` 8 = mask at 1/8 res)."""

    steps: int
    l1: float
    l2: float
    l3: float
    downsample: int
    blur_mask: bool
    tv_beta: float = 3.0
    learning_rate: float = 0.1


SMOOTH_PASS = MaskPass(steps=300, l1=0.5, l2=1e-2, l3=0.0, downsample=8, blur_mask=True)
SHARP_PASS = MaskPass(steps=150, l1=0.01, l2=1.0, l3=2.0, downsample=1, blur_mask=False)


@result(meta=(), eq=False)
class MaskResult:
    """Masks for N images (1 = pixel kept, 0 = pixel replaced by its blur).

    ``smooth``/``sharp`` (N, H, W) float32 are the final masks at image resolution; rows of
    skipped images are all ones (nothing deleted). ``kept`` (N,) bool marks images whose
    top-1 prediction was the target; ``predicted`` (N,) the top-1 class; ``target_prob``,
    ``smooth_prob``, ``sharp_prob``, ``blurred_prob`` (N,) the target probability on the
    clean image, under each final perturbation, and on the fully blurred image (NaN where
    skipped); ``history`` {pass: (steps, N) total loss} (NaN where skipped).
    """

    smooth: np.ndarray
    sharp: np.ndarray
    targets: np.ndarray
    kept: np.ndarray
    predicted: np.ndarray
    target_prob: np.ndarray
    smooth_prob: np.ndarray
    sharp_prob: np.ndarray
    blurred_prob: np.ndarray
    history: dict

    @property
    def skipped(self) -> np.ndarray:
        """Indices of the images skipped because their top-1 was not the target."""
        return np.flatnonzero(~self.kept)


# ----------------------------------------------------------------------------- blurs
def gaussian_kernel(size: int, sigma: float) -> np.ndarray:
    """Normalised 1-D Gaussian weights of odd length ``size`` (as cv2.getGaussianKernel)."""
    r = (size - 1) / 2.0
    t = np.arange(size, dtype=np.float64) - r
    w = np.exp(-(t * t) / (2.0 * sigma * sigma))
    return (w / w.sum()).astype(np.float32)


def image_blur_params(side: int) -> tuple[int, float]:
    """(kernel, sigma) of the perturbation blur: (11, 10) at 224 px, scaled to ``side``."""
    scale = side / 224.0
    k = 2 * int(round((11 * scale - 1) / 2.0)) + 1
    return max(k, 3), 10.0 * scale


def mask_blur_sigma(side: int) -> float:
    """Sigma of the smooth pass' mask blur: 5 at 224 px, scaled to ``side``."""
    return 5.0 * side / 224.0


def _blur_axis(x, weights: np.ndarray, axis: int, mode: str):
    """Correlates ``x`` with ``weights`` along ``axis`` (padding with numpy ``mode``)."""
    r = (len(weights) - 1) // 2
    if r == 0:
        return x
    n = x.shape[axis]
    pad = [(0, 0)] * x.ndim
    pad[axis] = (r, r)
    if r >= n and mode == "reflect":      # numpy reflect needs pad < n; fall back to edge
        mode = "edge"
    xp = jnp.pad(x, pad, mode=mode)
    out = 0.0
    for i, w in enumerate(weights):
        out = out + float(w) * jax.lax.slice_in_dim(xp, i, i + n, axis=axis)
    return out


def blur_images(images, size: tuple[int, int] | None = None,
                sigma: tuple[float, float] | None = None):
    """Gaussian blur of (..., H, W, C) images; default kernel/sigma from image size.

    Border: reflect-101 (cv2's default, numpy ``reflect``), separable per axis.
    """
    h, w = images.shape[-3], images.shape[-2]
    (kh, sh), (kw, sw) = image_blur_params(h), image_blur_params(w)
    if size is not None:
        kh, kw = size
    if sigma is not None:
        sh, sw = sigma
    out = _blur_axis(images, gaussian_kernel(kh, sh), images.ndim - 3, "reflect")
    return _blur_axis(out, gaussian_kernel(kw, sw), images.ndim - 2, "reflect")


def _blur_mask(mask):
    """Gaussian filter of an (H, W) mask like scipy.ndimage.gaussian_filter (truncate 4,
    half-sample symmetric border), sigma scaled from 5 at 224 px."""
    out = mask
    for axis in (0, 1):
        s = mask_blur_sigma(mask.shape[axis])
        r = int(4.0 * s + 0.5)
        out = _blur_axis(out, gaussian_kernel(2 * r + 1, s), axis, "symmetric")
    return out


# -------------------------------------------------------------------------- objective
def perturb(image, blurred, mask):
    """``x * m + blur(x) * (1 - m)`` for an (H, W, C) image and an (H, W) mask."""
    m = mask[..., None]
    return image * m + blurred * (1.0 - m)


def tv_beta(mask, beta: float = 3.0):
    """``mean|row diffs|^beta + mean|col diffs|^beta`` of an (h, w) mask."""
    dy = jnp.abs(mask[1:, :] - mask[:-1, :]) ** beta if mask.shape[0] > 1 else jnp.zeros(1)
    dx = jnp.abs(mask[:, 1:] - mask[:, :-1]) ** beta if mask.shape[1] > 1 else jnp.zeros(1)
    return jnp.mean(dy) + jnp.mean(dx)


def _expand(param, hw: tuple[int, int], blur_mask: bool):
    """Optimised parameter -> mask at image resolution (upsample; straight-through blur)."""
    up = param if param.shape == hw else jax.image.resize(param, hw, method="bilinear")
    if blur_mask:
        up = up + jax.lax.stop_gradient(_blur_mask(up) - up)
    return up


def mask_objective(param, image, blurred, target, apply: Callable, params, cfg: MaskPass):
    """Loss of one mask (see the module docstring) and the target probability."""
    hw = image.shape[:2]
    m = _expand(param, hw, cfg.blur_mask)
    x = perturb(image, blurred, m)
    logits = apply(params, x[None])[0]
    prob = jax.nn.softmax(logits.astype(jnp.float32))[target]
    reg = (cfg.l1 * jnp.mean(jnp.abs(1.0 - param)) + cfg.l2 * tv_beta(param, cfg.tv_beta)
           + cfg.l3 * jnp.mean(jnp.abs(param * (1.0 - param))))
    return prob + reg, prob


def central_disc_init(shape: tuple[int, int]) -> np.ndarray:
    """Ones with a central disc of zeros, radius half the height (official ``circular``)."""
    h, w = shape
    radius = h // 2
    cy, cx = h // 2, w // 2
    y, x = np.ogrid[-cy:h - cy, -cx:w - cx]
    return (y * y + x * x > radius * radius).astype(np.float32)


def _run_pass(param0, image, blurred, target, apply, params, cfg: MaskPass):
    opt = optax.adam(cfg.learning_rate)
    grad_fn = jax.value_and_grad(mask_objective, has_aux=True)

    def step(carry, _):
        p, state = carry
        (loss, _), g = grad_fn(p, image, blurred, target, apply, params, cfg)
        updates, state = opt.update(g, state, p)
        p = jnp.clip(optax.apply_updates(p, updates), 0.0, 1.0)
        return (p, state), loss

    (p, _), losses = jax.lax.scan(step, (param0, opt.init(param0)), None, length=cfg.steps)
    _, prob = mask_objective(p, image, blurred, target, apply, params, cfg)
    return p, prob, losses


BASELINES = ("blur", "mean")


def replacement_image(image, baseline: str = "blur"):
    """What a deleted pixel becomes: ``"blur"`` (paper) or ``"mean"`` (channel means)."""
    if baseline == "blur":
        return blur_images(image)
    if baseline == "mean":
        return jnp.broadcast_to(jnp.mean(image, axis=(-3, -2), keepdims=True), image.shape)
    raise InputError(f"baseline: expected one of {BASELINES}, got {baseline!r}")


def _masks_one(image, target, apply, params, smooth: MaskPass, sharp: MaskPass,
               baseline: str = "blur"):
    """Both passes for one image: (smooth mask, sharp mask, probs, loss histories)."""
    h, w = image.shape[:2]
    blurred = replacement_image(image, baseline)
    low = (max(h // smooth.downsample, 1), max(w // smooth.downsample, 1))
    p_smooth, prob_smooth, hist_smooth = _run_pass(
        jnp.asarray(central_disc_init(low)), image, blurred, target, apply, params, smooth)
    up = jax.image.resize(p_smooth, (h, w), method="bilinear")
    init = jnp.clip(up, 0.0, 1.0)
    if sharp.downsample > 1:
        init = jax.image.resize(init, (max(h // sharp.downsample, 1),
                                       max(w // sharp.downsample, 1)), method="bilinear")
    p_sharp, prob_sharp, hist_sharp = _run_pass(init, image, blurred, target, apply, params,
                                                sharp)
    sharp_full = _expand(p_sharp, (h, w), False)
    full_prob = jax.nn.softmax(apply(params, blurred[None])[0].astype(jnp.float32))[target]
    return up, sharp_full, prob_smooth, prob_sharp, full_prob, hist_smooth, hist_sharp


@functools.partial(jax.jit, static_argnames=("apply", "smooth", "sharp", "baseline"))
def _masks_batch(images, targets, params, apply, smooth, sharp, baseline="blur"):
    fn = lambda x, t: _masks_one(x, t, apply, params, smooth, sharp, baseline)  # noqa: E731
    return jax.vmap(fn)(images, targets)


@functools.partial(jax.jit, static_argnames=("apply",))
def _probs(images, params, apply):
    return jax.nn.softmax(apply(params, images).astype(jnp.float32), axis=-1)


# -------------------------------------------------------------------------- classifier
class _NnxApply:
    """Hashable ``apply(state, x)`` for an nnx graphdef (so jit caches per architecture)."""

    def __init__(self, graphdef):
        self.graphdef = graphdef

    def __call__(self, state, x):
        from flax import nnx

        from repsim_jax.models.capture import model_output   # its normalisation applied
        return model_output(nnx.merge(self.graphdef, state), x)

    def __hash__(self):
        return hash(self.graphdef)

    def __eq__(self, other):
        return isinstance(other, _NnxApply) and other.graphdef == self.graphdef


class _FnApply:
    def __init__(self, fn):
        self.fn = fn

    def __call__(self, params, x):
        return self.fn(x)

    def __hash__(self):
        return hash(self.fn)

    def __eq__(self, other):
        return isinstance(other, _FnApply) and other.fn is self.fn


def _eval_view(model):
    from flax import nnx
    for kw in ({"deterministic": True, "use_running_average": True},
               {"use_running_average": True}, {"deterministic": True}):
        try:
            return nnx.view(model, **kw)
        except (ValueError, TypeError):
            continue
    return model


def classifier_apply(classifier) -> tuple[Callable, object]:
    """``(apply, params)`` with ``apply(params, images) -> logits`` for a model or function.

    An ``nnx.Module`` is viewed in evaluation mode (BatchNorm running averages, no dropout)
    and split into a static graph and its state; a plain callable is used as is.
    """
    try:
        from flax import nnx
        if isinstance(classifier, nnx.Module):
            graphdef, state = nnx.split(_eval_view(classifier))
            return _NnxApply(graphdef), state
    except ImportError:  # pragma: no cover
        pass
    if not callable(classifier):
        raise InputError(f"classifier: expected an nnx.Module or a logits function, got "
                         f"{type(classifier).__name__}")
    return _FnApply(classifier), None


def _chunks(n: int, size: int):
    return [(s, min(s + size, n)) for s in range(0, n, size)]


def optimise_masks(classifier, images, targets=None, *, smooth_steps: int | None = None,
                   sharp_steps: int | None = None, smooth: MaskPass = SMOOTH_PASS,
                   sharp: MaskPass = SHARP_PASS, batch_size: int | None = 64,
                   mesh=None, progress: bool = True, baseline: str = "blur",
                   sharding: jax.sharding.Sharding | None = None) -> MaskResult:
    """Smooth then sharp perturbation masks for every correctly classified image.

    ``classifier``: an nnx model (capture convention) or ``logits_fn(images) -> logits``;
    ``images`` (N, H, W, C) float (as the classifier expects them); ``targets`` (N,) int
    class indices (default: the top-1 predictions, so nothing is skipped). The step counts
    override ``smooth.steps`` / ``sharp.steps`` (short runs for tests). Images are processed
    ``batch_size`` at a time (the last chunk padded so every chunk reuses one compiled
    program); each chunk is one jit-compiled, vmapped optimisation of both passes.
    Images whose top-1 class differs from the target are skipped with a warning.
    ``baseline``: what deleted pixels become, ``"blur"`` (paper) or ``"mean"`` (see the
    module docstring; ``blurred_prob`` is then the probability on the mean image).
    ``mesh``: devices to split each chunk's images over (:mod:`repsim_jax._devices`
    convention; used when the chunk size is a multiple of the device count);
    ``sharding=`` is its deprecated alias (a Sharding's devices form the mesh).
    """
    mesh = as_mesh(resolve_mesh_alias(mesh, sharding, "sharding", "optimise_masks"))
    if baseline not in BASELINES:
        raise InputError(f"baseline: expected one of {BASELINES}, got {baseline!r}")
    as_float_array(images, "images", ndim=4)
    images = np.asarray(images, np.float32)
    n, h, w, _ = images.shape
    if h < 2 or w < 2:
        raise InputError(f"images: need at least 2 x 2 pixels, got {h} x {w}")
    if smooth_steps is not None:
        smooth = dataclasses.replace(smooth, steps=int(smooth_steps))
    if sharp_steps is not None:
        sharp = dataclasses.replace(sharp, steps=int(sharp_steps))
    if smooth.steps < 1 or sharp.steps < 1:
        raise InputError(f"steps: need >= 1 step per pass, got smooth={smooth.steps}, "
                         f"sharp={sharp.steps}")
    apply, params = classifier_apply(classifier)
    bs = n if batch_size is None else max(int(batch_size), 1)

    probs = np.concatenate([np.asarray(_probs(jnp.asarray(images[a:b]), params, apply))
                            for a, b in _chunks(n, bs)])
    if probs.ndim != 2:
        raise InputError(f"classifier: expected logits of shape (B, K), got {probs.shape[1:]} "
                         "per batch")
    predicted = probs.argmax(1).astype(np.int32)
    if targets is None:
        targets = predicted.copy()
    targets = np.asarray(targets)
    if targets.ndim != 1 or targets.dtype.kind not in "iu":
        raise InputError(f"targets: expected (N,) integer class indices, got dtype "
                         f"{targets.dtype} shape {targets.shape}")
    check_same_length("images", images, "targets", targets)
    k = probs.shape[1]
    if targets.min() < 0 or targets.max() >= k:
        raise InputError(f"targets: class indices must lie in [0, {k}), got "
                         f"[{targets.min()}, {targets.max()}]")
    targets = targets.astype(np.int32)
    kept = predicted == targets
    if not kept.all():
        warnings.warn(f"optimise_masks: skipped {int((~kept).sum())} of {n} image(s) whose "
                      "top-1 prediction is not the target class", stacklevel=2)

    smooth_m = np.ones((n, h, w), np.float32)
    sharp_m = np.ones((n, h, w), np.float32)
    nan = np.full(n, np.nan, np.float32)
    s_prob, h_prob, b_prob = nan.copy(), nan.copy(), nan.copy()
    hist = {"smooth": np.full((smooth.steps, n), np.nan, np.float32),
            "sharp": np.full((sharp.steps, n), np.nan, np.float32)}
    idx = np.flatnonzero(kept)
    if idx.size:
        size = min(bs, idx.size)
        chunks = _chunks(idx.size, size)
        from repsim_jax import _progress
        chunks = _progress.track(chunks, desc="visual-summary masks", unit="chunk",
                                 progress=progress if len(chunks) > 1 else False)
        for a, b in chunks:
            sel = idx[a:b]
            pad = np.concatenate([sel, np.repeat(sel[-1:], size - sel.size)])
            x, t = jnp.asarray(images[pad]), jnp.asarray(targets[pad])
            if mesh is not None and size % mesh.devices.size == 0:
                x = jax.device_put(x, batch_sharding(mesh, x.ndim))
                t = jax.device_put(t, batch_sharding(mesh, t.ndim))
            out = jax.device_get(_masks_batch(x, t, params, apply, smooth, sharp,
                                                   baseline))
            m = sel.size
            smooth_m[sel], sharp_m[sel] = out[0][:m], out[1][:m]
            s_prob[sel], h_prob[sel], b_prob[sel] = out[2][:m], out[3][:m], out[4][:m]
            hist["smooth"][:, sel], hist["sharp"][:, sel] = out[5][:m].T, out[6][:m].T
    tgt_prob = probs[np.arange(n), targets].astype(np.float32)
    return MaskResult(smooth=smooth_m, sharp=sharp_m, targets=targets, kept=kept,
                      predicted=predicted, target_prob=np.where(kept, tgt_prob, np.nan),
                      smooth_prob=s_prob, sharp_prob=h_prob, blurred_prob=b_prob,
                      history=hist)
