"""Activations of named layers in one jit-compiled forward pass.

Convention shared by every architecture in :mod:`repsim_jax.models`: a model is an
``nnx.Module`` whose ``__call__(x, taps=None)`` takes NHWC images and returns logits; when
``taps`` is a dict, the model records the output of every named layer into it with
:func:`tap` under its torchvision module path (``conv1``, ``layer3.1.conv2``,
``features.28``, ``avgpool``, ``fc``...). Layers are recorded in forward order.

:func:`activations` jit-compiles ``model(x, taps)`` and returns only the requested
entries; XLA removes everything the requested layers do not depend on, so asking for an
early layer does not pay for the rest of the network.

Forward from a layer: ``activations(..., replace={name: array})`` (and ``forward``) run the
network with the output of layer ``name`` substituted by ``array`` — what every later
layer (and the logits) sees is then :math:`f_{>l}(\\tilde a_l)` instead of
:math:`f_{>l}(a_l)`. The substitution happens inside :func:`tap`, so it works for every
architecture that follows the convention, inside ``jax.jit`` and for several layers at
once; XLA drops whatever only fed the replaced layer. Layers recorded by :func:`tap` but
not passed on by the model (e.g. an auxiliary output head) only change their own recorded
value. Used e.g. for ICE fidelity (:func:`repsim_jax.concepts.fidelity`).
"""
from __future__ import annotations

import functools
from typing import Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from repsim_jax._checks import InputError, as_float_array, unknown_name

__all__ = ["tap", "Taps", "activations", "list_layers", "layer_shapes", "forward"]


class Taps(dict):
    """A capture dict that also substitutes layers: ``model(x, taps=Taps(replace))``.

    ``replace`` maps layer names to arrays of exactly the shape (batch included) the layer
    produces; :func:`tap` returns the replacement instead of the computed value (and records
    it), so the rest of the forward pass runs on it. Works under ``jax.jit`` (the arrays may
    be tracers; shapes are checked at trace time).
    """

    def __init__(self, replace=None):
        super().__init__()
        self.replace = dict(replace or {})


def tap(taps: dict | None, name: str, y):
    """Records ``y`` under ``name`` when capturing and returns it; if ``taps`` is a
    :class:`Taps` with a replacement for ``name``, records and returns the replacement
    instead (same shape required, cast to ``y``'s dtype)."""
    if taps is not None:
        if name in taps:
            raise ValueError(f"layer name {name!r} recorded twice")
        replace = getattr(taps, "replace", None)
        if replace and name in replace:
            r = replace[name]
            if tuple(r.shape) != tuple(y.shape):
                raise InputError(f"replace[{name!r}]: layer {name!r} has shape "
                                 f"{tuple(y.shape)} here, the replacement {tuple(r.shape)}")
            y = jnp.asarray(r).astype(y.dtype)
        taps[name] = y
    return y


def _input_shape(model) -> tuple[int, int, int]:
    shape = getattr(model, "input_shape", None)
    if shape is None:
        raise AttributeError(f"{type(model).__name__} has no `input_shape` (H, W, C) attribute")
    return tuple(shape)


def layer_shapes(model, input_shape: Sequence[int] | None = None) -> dict[str, tuple[int, ...]]:
    """Per-image shape of every named layer, in forward order (computed abstractly)."""
    hwc = tuple(input_shape) if input_shape is not None else _input_shape(model)
    graphdef, state = nnx.split(model)
    order: list[str] = []  # jax returns dict pytrees with sorted keys: keep forward order

    def run(state, x):
        m = nnx.merge(graphdef, state)
        taps: dict = {}
        m(x, taps=taps)
        order[:] = list(taps)
        return taps

    out = jax.eval_shape(run, state, jax.ShapeDtypeStruct((1, *hwc), jnp.float32))
    return {k: tuple(out[k].shape[1:]) for k in order}


def list_layers(model, input_shape: Sequence[int] | None = None) -> list[str]:
    """Names of every capturable layer, in forward order (torchvision module paths)."""
    return list(layer_shapes(model, input_shape))


@functools.partial(jax.jit, static_argnames=("graphdef", "layers"))
def _forward(graphdef, state, x, replace=None, *, layers):
    m = nnx.merge(graphdef, state)
    taps = Taps(replace)
    logits = m(x, taps=taps)
    taps.setdefault("logits", logits)
    return {k: taps[k] for k in layers}


def _validate_images(model, images):
    as_float_array(images, "images", ndim=4)
    hwc = getattr(model, "input_shape", None)
    if hwc is not None and images.shape[-1] != hwc[-1]:
        raise InputError(f"images: model expects {hwc[-1]} channels (NHWC), got shape "
                         f"{tuple(images.shape)}")


def _replicated(sharding: jax.sharding.Sharding) -> jax.sharding.Sharding:
    """A sharding that keeps a full copy of an array on every device of ``sharding``."""
    if isinstance(sharding, jax.sharding.NamedSharding):
        return jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec())
    mesh = jax.sharding.Mesh(np.array(sorted(sharding.device_set, key=lambda d: d.id)), ("d",))
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())


def _batch_sharding(sharding: jax.sharding.Sharding) -> jax.sharding.Sharding:
    """``sharding``'s split of the leading (batch) axis, for arrays of any rank."""
    if isinstance(sharding, jax.sharding.NamedSharding):
        spec = tuple(sharding.spec)
        return jax.sharding.NamedSharding(sharding.mesh,
                                          jax.sharding.PartitionSpec(spec[0] if spec else None))
    return _replicated(sharding)


def _check_replace(replace, shapes: dict, n: int) -> dict:
    """Validates ``{layer: (N, ...) array}`` against the model's layer shapes."""
    if not isinstance(replace, dict):
        raise InputError(f"replace: expected a dict {{layer name: array}}, got "
                         f"{type(replace).__name__}")
    out = {}
    for name, r in replace.items():
        if name not in shapes:
            raise unknown_name("layer to replace", name, list(shapes))
        r = as_float_array(r, f"replace[{name!r}]")
        want = (n, *shapes[name])
        if tuple(r.shape) != want:
            raise InputError(f"replace[{name!r}]: layer {name!r} has shape {want} for these "
                             f"{n} images, the replacement {tuple(r.shape)}")
        out[name] = r
    return out


def activations(model, images, layers: Iterable[str] | str, *, batch_size: int | None = None,
                sharding: jax.sharding.Sharding | None = None,
                replace: dict | None = None) -> dict[str, jax.Array]:
    """Activations ``{name: (N, ...)}`` of the named ``layers`` for NHWC ``images``, in the
    order of ``layers``.

    One jit-compiled forward pass per batch. ``"logits"`` is always available as a name.
    ``batch_size`` bounds memory (the pass runs over chunks of N and concatenates);
    ``sharding`` (e.g. ``NamedSharding(mesh, P("data"))``) places the images — and hence
    the batch dimension of the computation — across devices (data parallel).

    ``replace`` (``{layer: (N, ...) array}``) substitutes the output of those layers by the
    given arrays during the pass (see the module docstring): later layers and the logits
    are computed from the replacement; the replaced layer itself reads back as the
    replacement. The images still feed every path that does not go through a replaced
    layer (e.g. a residual branch around it).

    Raises ``KeyError`` listing the valid names for an unknown layer (requested or to
    replace), and :class:`InputError` for images of the wrong rank/channels or with
    NaN/Inf, and for a replacement whose shape differs from the layer's.
    """
    if isinstance(layers, str):
        layers = [layers]
    layers = tuple(layers)
    if not layers:
        raise InputError("layers: empty list of layer names")
    _validate_images(model, images)
    shapes = layer_shapes(model, images.shape[1:])
    valid = list(shapes) + ["logits"]
    for name in layers:
        if name not in valid:
            raise unknown_name("layer", name, valid)
    n = images.shape[0]
    replace = _check_replace(replace, shapes, n) if replace else None
    graphdef, state = nnx.split(model)
    if sharding is not None:
        # weights restored from a checkpoint are committed to one device: replicate them
        # onto the devices the images are spread over, or jit refuses the mix.
        state = jax.device_put(state, _replicated(sharding))

    def place(x, rep, always: bool):
        x = jnp.asarray(x, jnp.float32)
        rep = None if rep is None else {k: jnp.asarray(v, jnp.float32) for k, v in rep.items()}
        if sharding is not None and (always or x.shape[0] % len(sharding.device_set) == 0):
            x = jax.device_put(x, sharding)
            if rep is not None:
                rep = jax.device_put(rep, _batch_sharding(sharding))
        return x, rep

    if batch_size is None or batch_size >= n:
        out = _forward(graphdef, state, *place(images, replace, True), layers=layers)
        return {k: out[k] for k in layers}   # jit returns dicts with sorted keys
    chunks = []
    for start in range(0, n, batch_size):
        sl = slice(start, start + batch_size)
        x, rep = place(images[sl], None if replace is None else
                       {k: v[sl] for k, v in replace.items()}, False)
        chunks.append(jax.device_get(_forward(graphdef, state, x, rep, layers=layers)))
    return {k: jnp.asarray(np.concatenate([c[k] for c in chunks])) for k in layers}


def forward(model, images, *, batch_size: int | None = None,
            replace: dict | None = None) -> jax.Array:
    """Logits of ``model`` for NHWC ``images`` (jit-compiled, optionally in chunks);
    ``replace={layer: array}`` runs the network from those layers' substituted outputs
    (see :func:`activations`)."""
    return activations(model, images, ["logits"], batch_size=batch_size,
                       replace=replace)["logits"]
