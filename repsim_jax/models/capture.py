"""Activations of named layers in one jit-compiled forward pass.

Convention shared by every architecture in :mod:`repsim_jax.models`: a model is an
``nnx.Module`` whose ``__call__(x, taps=None)`` takes NHWC images and returns logits; when
``taps`` is a dict, the model records the output of every named layer into it with
:func:`tap` under its torchvision module path (``conv1``, ``layer3.1.conv2``,
``features.28``, ``avgpool``, ``fc``...). Layers are recorded in forward order.

:func:`activations` jit-compiles ``model(x, taps)`` and returns only the requested
entries; XLA removes everything the requested layers do not depend on, so asking for an
early layer does not pay for the rest of the network.
"""
from __future__ import annotations

import functools
from typing import Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from repsim_jax._checks import InputError, as_float_array, unknown_name

__all__ = ["tap", "activations", "list_layers", "layer_shapes", "forward"]


def tap(taps: dict | None, name: str, y):
    """Records ``y`` under ``name`` when capturing; returns ``y`` unchanged."""
    if taps is not None:
        if name in taps:
            raise ValueError(f"layer name {name!r} recorded twice")
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
def _forward(graphdef, state, x, layers):
    m = nnx.merge(graphdef, state)
    taps: dict = {}
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


def activations(model, images, layers: Iterable[str] | str, *, batch_size: int | None = None,
                sharding: jax.sharding.Sharding | None = None) -> dict[str, jax.Array]:
    """Activations ``{name: (N, ...)}`` of the named ``layers`` for NHWC ``images``.

    One jit-compiled forward pass per batch. ``"logits"`` is always available as a name.
    ``batch_size`` bounds memory (the pass runs over chunks of N and concatenates);
    ``sharding`` (e.g. ``NamedSharding(mesh, P("data"))``) places the images — and hence
    the batch dimension of the computation — across devices (data parallel).

    Raises ``KeyError`` listing the valid names for an unknown layer, and
    :class:`InputError` for images of the wrong rank/channels or with NaN/Inf.
    """
    if isinstance(layers, str):
        layers = [layers]
    layers = tuple(layers)
    if not layers:
        raise InputError("layers: empty list of layer names")
    _validate_images(model, images)
    valid = list_layers(model, images.shape[1:]) + ["logits"]
    for name in layers:
        if name not in valid:
            raise unknown_name("layer", name, valid)
    graphdef, state = nnx.split(model)
    if sharding is not None:
        # weights restored from a checkpoint are committed to one device: replicate them
        # onto the devices the images are spread over, or jit refuses the mix.
        state = jax.device_put(state, _replicated(sharding))
    n = images.shape[0]
    if batch_size is None or batch_size >= n:
        x = jnp.asarray(images, jnp.float32)
        if sharding is not None:
            x = jax.device_put(x, sharding)
        return _forward(graphdef, state, x, layers)
    chunks = []
    for start in range(0, n, batch_size):
        x = jnp.asarray(images[start:start + batch_size], jnp.float32)
        if sharding is not None and x.shape[0] % len(sharding.device_set) == 0:
            x = jax.device_put(x, sharding)
        chunks.append(jax.device_get(_forward(graphdef, state, x, layers)))
    return {k: jnp.asarray(np.concatenate([c[k] for c in chunks])) for k in layers}


def forward(model, images, *, batch_size: int | None = None) -> jax.Array:
    """Logits of ``model`` for NHWC ``images`` (jit-compiled, optionally in chunks)."""
    return activations(model, images, ["logits"], batch_size=batch_size)["logits"]
