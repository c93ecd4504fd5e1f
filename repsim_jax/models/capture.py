"""Activations of named layers of any model, in one jit-compiled forward pass.

Which models
    Any ``flax.nnx.Module``, unmodified; a ``flax.linen`` module with its variables
    (:func:`from_linen`); a plain ``apply_fn(params, images) -> {name: array}``
    (:func:`from_function`). The model's ``__call__(images)`` takes NHWC images and returns
    its output, which is the layer ``"logits"`` (the first element when it returns a tuple,
    ``out["logits"]`` when it returns a dict holding one).

Layer names
    A layer is a submodule, named by its dotted attribute path: ``conv1``, ``blocks.1``,
    ``encoder.layer.3.attention`` (items of a list / ``nnx.List`` by index, of a dict /
    ``nnx.Dict`` by key). Its activation is what the submodule's ``__call__`` returned (the
    first element of a tuple); a submodule called several times in one forward pass reads
    as its *last* call (like a PyTorch forward hook writing into a dict). Submodules that
    are never called, or return something other than an array, are not layers. Names are
    listed in the order their calls finish (a block after its children).

How (flax 0.12 has no module hooks)
    Inside the traced function the model is a fresh copy (``nnx.merge`` of the user's
    ``nnx.split``); on that copy only, every submodule's class is swapped for a cached
    subclass whose ``__call__`` calls the original and reports the output to the active
    recorder (a :class:`Taps`, found through a context variable). The user's model object is
    never touched, and the subclass is built once per class. ``nnx.capture`` (flax's own
    method-output capture) was not used: it patches the classes themselves for the duration
    of the call (visible to every other instance and thread) and skips inherited
    ``__call__`` methods. Linen modules are captured through ``flax.linen.intercept_methods``
    (the paths ``capture_intermediates`` records, joined by dots).

``tap`` stays for points that are not a submodule's output
    ``tap(name, y)`` inside any module's ``__call__`` records ``y`` under ``name`` relative to
    that module (``"<module path>.<name>"``; at the top level just ``name``), e.g. after a
    functional ``jax.nn.relu`` or for a container such as a whole stage (``layer3``) - and
    outside a capture it simply returns ``y``. The built-in architectures record with the
    older explicit form ``tap(taps, "layer3.0.conv1", y)`` through a ``taps=`` argument of
    their ``__call__`` (their names are exactly the torchvision module paths, as before);
    that convention keeps working for any model whose ``__call__`` takes ``taps``: such a
    model's layers are the ones it records itself (no generic names are added, so a
    wrapper around a built-in model does not list every layer twice).

Evaluation mode
    Capture runs the model in evaluation mode: ``.eval()`` is called on the merged copy
    (``use_running_average=True`` for BatchNorm, ``deterministic=True`` for Dropout), so a
    model left in training mode gives the same activations for any batch size; the user's
    object keeps its mode.

Inputs and preprocessing
    Images are NHWC, float in [0, 1]; uint8 is taken as 0..255 and scaled (inside the pass,
    so uint8 travels to the device at a quarter of the size); float input outside [0, 1]
    (beyond 1e-3 rounding) is an :class:`InputError`. The model's preprocessing
    (:func:`repsim_jax.models.preprocess.preprocess_of`) is applied inside the jitted pass:
    its mean/std normalisation. Resizing is not done here: bring images to the model's size
    with :func:`repsim_jax.models.preprocess.resize_array` (the data loaders do). A spatial
    size the model cannot take is found at trace time (``jax.eval_shape``) and reported as
    an :class:`InputError` naming the model's expected input, never as an error inside XLA.

Compilation and devices
    One ``jax.jit`` per (graph definition, layer names, preprocessing, input shape); chunks
    of ``batch_size`` are padded to one shape, so chunking compiles once. ``mesh=`` (see
    :mod:`repsim_jax._devices`) splits the batch over devices (data parallel; the batch is
    padded to a multiple of the device count and the padding cut off again), the weights
    are replicated. The old ``sharding=`` (a ``NamedSharding`` whose spec splits the batch)
    is a deprecated alias.

Forward from a layer
    ``activations(..., replace={name: array})`` (and :func:`forward`) run the network with
    the output of layer ``name`` substituted by ``array``: every later layer (and the logits)
    sees :math:`f_{>l}(\\tilde a_l)` instead of :math:`f_{>l}(a_l)`. It works for every
    layer that is a submodule output or a ``tap`` point, inside ``jax.jit`` and for several
    layers at once; XLA drops whatever only fed the replaced layer. For a submodule called
    several times, the last call (the one its activation reads) is replaced. Models from
    :func:`from_function` cannot forward from a layer (their layers are outputs of one
    opaque function). Used e.g. for ICE fidelity (:func:`repsim_jax.concepts.fidelity`).
"""
from __future__ import annotations

import contextvars
import functools
import inspect
import math
from typing import Any, Callable, Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from repsim_jax._checks import InputError, as_float_array, unknown_name
from repsim_jax.models.preprocess import IDENTITY, Preprocess, preprocess_of

__all__ = ["tap", "Taps", "activations", "list_layers", "layer_shapes", "forward",
           "record_layers", "model_output", "from_linen", "from_function", "LinenModel", "FunctionModel",
           "check_images"]

_RECORDER: contextvars.ContextVar = contextvars.ContextVar("repsim_capture", default=None)
_RANGE_ATOL = 1e-3


# --------------------------------------------------------------------------- recording
class Taps(dict):
    """The recorder of one forward pass: ``{layer name: activation}`` in forward order.

    ``replace`` maps layer names to arrays of exactly the shape (batch included) the layer
    produces; the layer's output is substituted by the replacement (cast to its dtype) and
    the rest of the pass runs on it. ``last_calls`` (``{name: number of calls}``, from an
    abstract pass) restricts the substitution of a submodule called several times to its
    last call. Works under ``jax.jit`` (the arrays may be tracers; shapes are checked at
    trace time). Pass one as ``model(x, taps=Taps(replace))`` to a model of the explicit
    ``taps=`` convention, or let :func:`record_layers` drive any model.
    """

    def __init__(self, replace=None, *, last_calls: Mapping[str, int] | None = None):
        super().__init__()
        self.replace = dict(replace or {})
        self.last_calls = dict(last_calls) if last_calls is not None else None
        self.calls: dict[str, int] = {}
        self._explicit: set[str] = set()
        self._paths: dict[int, str] = {}
        self._stack: list[str] = []

    def _substitute(self, name: str, y):
        r = self.replace[name]
        if tuple(r.shape) != tuple(y.shape):
            raise InputError(f"replace[{name!r}]: layer {name!r} has shape "
                             f"{tuple(y.shape)} here, the replacement {tuple(r.shape)}")
        return jnp.asarray(r).astype(y.dtype)

    def _store(self, name: str, y):
        self.pop(name, None)      # a later call moves the layer to its (last) position
        self[name] = y

    def _record_call(self, name: str, y):
        """One call of layer ``name`` (a submodule or a relative ``tap``): counts it, applies
        the replacement on the last call, stores it; returns what the model goes on with."""
        k = self.calls.get(name, 0)
        self.calls[name] = k + 1
        if name in self.replace and (self.last_calls is None
                                     or k == self.last_calls.get(name, 1) - 1):
            y = self._substitute(name, y)
        self._store(name, y)
        return y

    def _module_output(self, name: str, out):
        if _is_array(out):
            return self._record_call(name, out)
        if isinstance(out, (tuple, list)) and out and _is_array(out[0]):
            first = self._record_call(name, out[0])
            return type(out)((first, *out[1:])) if isinstance(out, tuple) else [first, *out[1:]]
        return out

    def _explicit_tap(self, name: str, y):
        if name in self._explicit:
            raise ValueError(f"layer name {name!r} recorded twice")
        self._explicit.add(name)
        if name in self.replace:
            y = self._substitute(name, y)
        self._store(name, y)
        return y


def _is_array(x) -> bool:
    return isinstance(x, (jax.Array, np.ndarray, jax.ShapeDtypeStruct)) or (
        hasattr(x, "shape") and hasattr(x, "dtype") and not isinstance(x, nnx.Module))


def tap(*args):
    """Records a value that is not a submodule's output as a layer, and returns it.

    ``tap(name, y)``: inside a capture, records ``y`` as ``"<path of the module whose
    __call__ runs>.<name>"`` (``name`` at the top level), applying a replacement if one is
    asked for; outside a capture returns ``y`` unchanged. ``tap(taps, name, y)``: the
    explicit convention of the built-in architectures - records into the dict ``taps``
    under the absolute ``name`` (``taps=None``: nothing), substituting when ``taps`` is a
    :class:`Taps` with a replacement for ``name``.
    """
    if len(args) == 2:
        name, y = args
        rec = _RECORDER.get()
        if rec is None:
            return y
        full = f"{rec._stack[-1]}.{name}" if rec._stack else str(name)
        return rec._record_call(full, y)
    if len(args) != 3:
        raise TypeError(f"tap() takes (name, y) or (taps, name, y), got {len(args)} arguments")
    taps, name, y = args
    if taps is None:
        return y
    if isinstance(taps, Taps):
        return taps._explicit_tap(name, y)
    if name in taps:
        raise ValueError(f"layer name {name!r} recorded twice")
    taps[name] = y
    return y


_RECORDING_CLASSES: dict[type, type] = {}


def _defines_call(cls: type) -> bool:
    return any("__call__" in c.__dict__ for c in cls.__mro__ if c is not object)


def _recording_class(cls: type) -> type:
    """A subclass of ``cls`` whose ``__call__`` reports its output to the active recorder
    (built once per class; used only on merged copies inside a capture)."""
    if getattr(cls, "_repsim_recording", False):
        return cls
    sub = _RECORDING_CLASSES.get(cls)
    if sub is not None:
        return sub
    original = cls.__call__

    @functools.wraps(original)
    def __call__(self, *args, **kwargs):
        rec = _RECORDER.get()
        name = None if rec is None else rec._paths.get(id(self))
        if name is None:
            return original(self, *args, **kwargs)
        rec._stack.append(name)
        try:
            out = original(self, *args, **kwargs)
        finally:
            rec._stack.pop()
        return rec._module_output(name, out)

    sub = type(cls)(cls.__name__, (cls,), {"__call__": __call__, "_repsim_recording": True,
                                           "__module__": cls.__module__,
                                           "__qualname__": cls.__qualname__})
    _RECORDING_CLASSES[cls] = sub
    return sub


@functools.lru_cache(maxsize=None)
def _takes_taps(cls: type) -> bool:
    try:
        return "taps" in inspect.signature(cls.__call__).parameters
    except (TypeError, ValueError):
        return False


def _logits_of(out):
    if _is_array(out):
        return out
    if isinstance(out, (tuple, list)) and out and _is_array(out[0]):
        return out[0]
    if isinstance(out, Mapping) and _is_array(out.get("logits")):
        return out["logits"]
    return None


def record_layers(module: nnx.Module, x, *, replace: Mapping | None = None,
                  last_calls: Mapping[str, int] | None = None, eval_mode: bool = True,
                  normalize: bool = True):
    """``(logits, taps)`` of one forward pass of ``module`` on images ``x`` in [0, 1],
    recording every layer (module docstring); for use *inside* a traced function.

    ``module`` should be a fresh copy (``nnx.merge``): it is put into evaluation mode when
    ``eval_mode`` (pass ``False`` to keep the modes it has, e.g. BatchNorm in training mode)
    and its submodules' classes are swapped for the duration of the call (restored after).
    ``normalize`` applies the model's mean/std (``preprocess_of(module)``). ``logits`` is
    ``None`` when the model's output is not an array; ``taps`` is a :class:`Taps`.
    """
    taps = Taps(replace, last_calls=last_calls)
    if eval_mode and hasattr(module, "eval"):
        module.eval()
    swapped = []
    explicit = _takes_taps(type(module))
    for path, sub in nnx.iter_modules(module):
        if explicit or not path or not _defines_call(type(sub)):
            continue
        cls = type(sub)
        rec_cls = _recording_class(cls)
        if rec_cls is not cls:
            object.__setattr__(sub, "__class__", rec_cls)
            swapped.append((sub, cls))
        taps._paths.setdefault(id(sub), ".".join(str(p) for p in path))
    if normalize:
        x = preprocess_of(module).normalize(x)
    token = _RECORDER.set(taps)
    try:
        out = module(x, taps=taps) if _takes_taps(type(module)) else module(x)
    finally:
        _RECORDER.reset(token)
        for sub, cls in swapped:
            object.__setattr__(sub, "__class__", cls)
    return _logits_of(out), taps


def model_output(module: nnx.Module, x, *, eval_mode: bool = False):
    """The logits of ``module`` (a merged copy) on images ``x`` in [0, 1], inside a traced
    function: the model's normalisation applied, the first element of a tuple output; no
    recording. ``eval_mode`` puts the copy into evaluation mode first."""
    if eval_mode and hasattr(module, "eval"):
        module.eval()
    out = _logits_of(module(preprocess_of(module).normalize(x)))
    if out is None:
        raise InputError(f"{_model_label(module)}: the model's output is not an array (or a "
                         f"tuple/dict with one), so it has no logits")
    return out


# --------------------------------------------------------------------------- wrappers
class _Static:
    """A hashable-by-identity holder for a static object (a function, a linen module)."""

    def __init__(self, obj):
        self.obj = obj

    def __hash__(self):
        return id(self.obj)

    def __eq__(self, other):
        return isinstance(other, _Static) and other.obj is self.obj


def _as_variables(tree):
    return nnx.data(jax.tree.map(lambda a: nnx.Param(jnp.asarray(a)), tree))


def _read_variables(tree):
    return jax.tree.map(lambda v: v[...], tree, is_leaf=lambda v: isinstance(v, nnx.Variable))


def _hwc(input_shape):
    if input_shape is None:
        return None
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise InputError(f"input_shape: expected (H, W, C), got {input_shape!r}")
    return shape


def _check_preprocess(preprocess):
    if preprocess is None:
        return IDENTITY
    if not isinstance(preprocess, Preprocess):
        raise InputError(f"preprocess: expected a repsim_jax.models.preprocess.Preprocess, got "
                         f"{type(preprocess).__name__}")
    return preprocess


class LinenModel(nnx.Module):
    """A ``flax.linen`` module with its variables, as a model :func:`activations` accepts
    (see :func:`from_linen`)."""

    def __init__(self, module, variables, *, preprocess=None, input_shape=None,
                 apply_kwargs: Mapping[str, Any] | None = None, method: str | None = None):
        self.linen = _Static(module)
        self.variables = _as_variables(variables)
        self.preprocess = _check_preprocess(preprocess)
        self.input_shape = _hwc(input_shape)
        self.apply_kwargs = tuple(sorted((apply_kwargs or {}).items()))
        self.method = method
        self.arch = type(module).__name__

    def __call__(self, x):
        import flax.linen as nn
        rec = _RECORDER.get()

        def interceptor(next_fun, args, kwargs, context):
            out = next_fun(*args, **kwargs)
            path = tuple(context.module.path) if rec is not None else ()
            if context.method_name != "__call__" or not path:
                return out
            return rec._module_output(".".join(str(p) for p in path), out)

        kwargs = dict(self.apply_kwargs)
        if self.method is not None:
            kwargs["method"] = self.method
        with nn.intercept_methods(interceptor):
            return self.linen.obj.apply(_read_variables(self.variables), x, **kwargs)


class FunctionModel(nnx.Module):
    """A plain ``apply_fn(params, images) -> {name: array}`` as a model (see
    :func:`from_function`)."""

    supports_replace = False

    def __init__(self, apply_fn: Callable, params, *, preprocess=None, input_shape=None):
        if not callable(apply_fn):
            raise InputError(f"apply_fn: expected a callable, got {type(apply_fn).__name__}")
        self.apply_fn = _Static(apply_fn)
        self.params = _as_variables(params)
        self.preprocess = _check_preprocess(preprocess)
        self.input_shape = _hwc(input_shape)
        self.arch = getattr(apply_fn, "__name__", "function")

    def __call__(self, x):
        out = self.apply_fn.obj(_read_variables(self.params), x)
        if not isinstance(out, Mapping):
            raise InputError(f"from_function: apply_fn must return a dict {{name: array}}, got "
                             f"{type(out).__name__}")
        for name, value in out.items():
            if str(name) != "logits":
                tap(str(name), value)
        return out.get("logits")


def from_linen(module, variables, *, preprocess: Preprocess | None = None,
               input_shape: Sequence[int] | None = None,
               apply_kwargs: Mapping[str, Any] | None = None,
               method: str | None = None) -> LinenModel:
    """A ``flax.linen`` ``module`` with its ``variables`` (``module.init(...)``'s dict) as a
    model that :func:`activations`, :func:`list_layers` etc. accept.

    Layer names are the linen module paths joined by dots, as ``capture_intermediates``
    records them (``Dense_0``, ``block.Conv_1``); ``logits`` is the module's output. The
    forward pass is ``module.apply(variables, images, **apply_kwargs)`` (``method=`` for
    another method): linen has no evaluation mode of its own, so pass e.g.
    ``apply_kwargs={"train": False}`` when your module takes such a flag. ``preprocess``
    is the model's :class:`~repsim_jax.models.preprocess.Preprocess` (default: none);
    ``input_shape`` (H, W, C) its default input for :func:`list_layers`. ``replace=`` works.
    """
    if not hasattr(module, "apply") or not hasattr(module, "init"):
        raise InputError(f"from_linen: expected a flax.linen Module, got "
                         f"{type(module).__name__}")
    if not isinstance(variables, Mapping):
        raise InputError(f"from_linen: variables must be the dict module.init(...) returns, "
                         f"got {type(variables).__name__}")
    return LinenModel(module, dict(variables), preprocess=preprocess, input_shape=input_shape,
                      apply_kwargs=apply_kwargs, method=method)


def from_function(apply_fn: Callable, params, *, preprocess: Preprocess | None = None,
                  input_shape: Sequence[int] | None = None) -> FunctionModel:
    """A plain ``apply_fn(params, images) -> {name: array}`` as a model.

    Layer names are the dict's keys (in its order); ``logits`` is ``out["logits"]`` when
    present. ``params`` is any pytree of arrays (it becomes the model's state, passed to the
    jitted pass as arguments, not baked in as constants). ``replace=`` is not supported
    (one opaque function cannot be resumed from a layer).
    """
    return FunctionModel(apply_fn, params, preprocess=preprocess, input_shape=input_shape)


# --------------------------------------------------------------------------- abstract pass
def _model_label(model) -> str:
    return str(getattr(model, "arch", None) or type(model).__name__)


def _expected_hwc(model) -> tuple | None:
    shape = getattr(model, "input_shape", None)
    if shape is not None:
        return tuple(int(s) for s in shape)
    pre = preprocess_of(model)
    return None if pre.size is None else (*pre.size, None)


def _input_shape(model) -> tuple[int, int, int]:
    shape = _expected_hwc(model)
    if shape is None or shape[-1] is None:
        raise InputError(f"{_model_label(model)} has no `input_shape` (H, W, C) attribute: "
                         f"give input_shape=(H, W, C) (repsim layers: --input-shape H,W,C)")
    return tuple(shape)


_ABSTRACT_CACHE: dict = {}


def _abstract_pass(model, hwc: tuple) -> tuple[dict, tuple | None, dict]:
    """``(layer shapes in forward order, logits shape or None, calls per layer)``."""
    graphdef, state = nnx.split(model)
    avals = tuple((tuple(a.shape), str(a.dtype)) for a in jax.tree.leaves(state))
    key = (graphdef, avals, tuple(hwc))
    try:
        hit = _ABSTRACT_CACHE.get(key)
    except TypeError:           # an unhashable static attribute: no caching
        key, hit = None, None
    if hit is not None:
        return hit
    meta: dict = {}

    def run(state, x):
        m = nnx.merge(graphdef, state)
        logits, taps = record_layers(m, x)
        meta["order"] = list(taps)
        meta["calls"] = dict(taps.calls)
        return dict(taps), logits

    try:
        out, logits = jax.eval_shape(run, state, jax.ShapeDtypeStruct((1, *hwc), jnp.float32))
    except (TypeError, ValueError, IndexError, AssertionError) as e:   # InputError too
        err = _size_error(model, hwc, e)
        if err is e:
            raise
        raise err from e
    shapes = {k: tuple(out[k].shape[1:]) for k in meta["order"] if _is_array(out[k])}
    result = (shapes, None if logits is None else tuple(logits.shape[1:]), meta["calls"])
    if key is not None:
        if len(_ABSTRACT_CACHE) > 256:
            _ABSTRACT_CACHE.clear()
        _ABSTRACT_CACHE[key] = result
    return result


def _size_error(model, hwc, e: Exception) -> Exception:
    """The forward pass failed to trace at ``hwc``: name the model's expected input."""
    expected = _expected_hwc(model)
    first = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}" if str(e) else type(e).__name__
    pre = preprocess_of(model)
    hint = (f"; bring images to its size with repsim_jax.models.preprocess.resize_array("
            f"images, preprocess_of(model)) ({pre.describe()})" if pre.size is not None else "")
    if expected is not None:
        exp = tuple(s for s in expected if s is not None)
        if tuple(hwc[:len(exp)]) == exp:
            return e                            # fails at its own input: not a size problem
        want = " x ".join("C" if s is None else str(s) for s in expected)
        return InputError(f"images of size {' x '.join(map(str, hwc))} (H x W x C) do not fit "
                          f"{_model_label(model)}: it expects {want}{hint}. The forward pass "
                          f"failed with {first}")
    return InputError(f"images of size {' x '.join(map(str, hwc))} (H x W x C) do not fit "
                      f"{_model_label(model)}{hint}. The forward pass failed with {first}")


def layer_shapes(model, input_shape: Sequence[int] | None = None) -> dict[str, tuple[int, ...]]:
    """Per-image shape of every named layer, in forward order (computed abstractly, no
    FLOPs). ``input_shape`` (H, W, C) defaults to the model's ``input_shape``. ``"logits"``
    is not listed (it is always available when the model returns an array)."""
    hwc = tuple(int(s) for s in input_shape) if input_shape is not None else _input_shape(model)
    return dict(_abstract_pass(model, hwc)[0])


def list_layers(model, input_shape: Sequence[int] | None = None) -> list[str]:
    """Names of every capturable layer, in forward order (see the module docstring)."""
    return list(layer_shapes(model, input_shape))


# --------------------------------------------------------------------------- forward
@functools.partial(jax.jit, static_argnames=("graphdef", "layers", "last_calls"))
def _forward(graphdef, state, x, replace=None, *, layers, last_calls):
    if x.dtype == jnp.uint8:
        x = x.astype(jnp.float32) / 255.0
    else:
        x = jnp.clip(x.astype(jnp.float32), 0.0, 1.0)
    m = nnx.merge(graphdef, state)
    logits, taps = record_layers(m, x, replace=replace, last_calls=dict(last_calls))
    return {k: logits if (k == "logits" and k not in taps) else taps[k] for k in layers}


def check_images(model, images, name: str = "images"):
    """Validates NHWC ``images`` for ``model``: rank, channels, dtype (uint8 or float),
    range (float in [0, 1] within 1e-3), finiteness. Returns them unchanged (numpy or jax)."""
    if not hasattr(images, "shape") or not hasattr(images, "dtype"):
        images = np.asarray(images)
    dt = np.dtype(images.dtype)
    if images.ndim != 4:
        raise InputError(f"{name}: expected NHWC images (4 dimensions), got shape "
                         f"{tuple(images.shape)}")
    if any(int(s) == 0 for s in images.shape):
        raise InputError(f"{name}: empty array (shape {tuple(images.shape)})")
    hwc = getattr(model, "input_shape", None)
    if hwc is not None and images.shape[-1] != hwc[-1]:
        raise InputError(f"{name}: model expects {hwc[-1]} channels (NHWC), got shape "
                         f"{tuple(images.shape)}")
    if dt == np.uint8:
        return images
    if dt.kind != "f":
        raise InputError(f"{name}: expected uint8 (0..255) or float in [0, 1], got dtype {dt}")
    xp = jnp if isinstance(images, jax.Array) else np
    lo, hi = float(xp.min(images)), float(xp.max(images))
    if not (math.isfinite(lo) and math.isfinite(hi)):
        n_bad = int(xp.sum(~xp.isfinite(images)))
        raise InputError(f"{name}: contains {n_bad} NaN/Inf value(s) (shape "
                         f"{tuple(images.shape)})")
    if lo < -_RANGE_ATOL or hi > 1 + _RANGE_ATOL:
        raise InputError(f"{name}: float images must be in [0, 1] (uint8 0..255 is scaled "
                         f"automatically); found values in [{lo:.4g}, {hi:.4g}]. The model's "
                         f"normalisation ({preprocess_of(model).describe()}) is applied "
                         f"inside the forward pass")
    return images


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


def _batch_placement(mesh, sharding):
    """(batch sharding or None, replicated sharding or None, number of batch shards)."""
    from repsim_jax._devices import as_mesh, batch_sharding, replicated, resolve_mesh_alias
    target = resolve_mesh_alias(mesh, sharding, "sharding", "activations")
    if target is None:
        return None, None, 1
    if isinstance(target, jax.sharding.NamedSharding):
        spec = tuple(target.spec)
        axis = spec[0] if spec else None
        names = () if axis is None else ((axis,) if isinstance(axis, str) else tuple(axis))
        shards = int(np.prod([target.mesh.shape[a] for a in names])) if names else 1
        return (jax.sharding.NamedSharding(target.mesh, jax.sharding.PartitionSpec(axis)),
                replicated(target.mesh), shards)
    m = as_mesh(target)
    return batch_sharding(m), replicated(m), int(m.devices.shape[0])


def _pad(a, rows: int):
    if a.shape[0] == rows:
        return a
    xp = jnp if isinstance(a, jax.Array) else np
    return xp.concatenate([a, xp.zeros((rows - a.shape[0], *a.shape[1:]), a.dtype)])


def activations(model, images, layers: Iterable[str] | str, *, batch_size: int | None = None,
                mesh=None, replace: dict | None = None,
                sharding: jax.sharding.Sharding | None = None) -> dict[str, jax.Array]:
    """Activations ``{name: (N, ...)}`` of the named ``layers`` for NHWC ``images``, in the
    order of ``layers`` (see the module docstring for names, modes and inputs).

    ``model``: any ``nnx.Module`` (or :func:`from_linen` / :func:`from_function`);
    ``images``: uint8 (0..255) or float in [0, 1], NHWC; the model's normalisation is
    applied inside the pass, and the model runs in evaluation mode. ``"logits"`` is the
    model's output. ``batch_size`` bounds memory (the pass runs over equal chunks of N, one
    compilation); ``mesh`` (``None``, ``"all"``, a Mesh or devices) splits the batch over
    devices; ``sharding=`` is its deprecated alias. ``replace`` (``{layer: (N, ...)
    array}``) substitutes the output of those layers during the pass: later layers and the
    logits are computed from the replacement, the replaced layer reads back as the
    replacement; paths that do not go through it (e.g. a residual branch) still see the
    images.

    Raises ``KeyError`` listing the valid names for an unknown layer (requested or to
    replace), and :class:`InputError` for images of the wrong rank/channels/dtype, out of
    [0, 1], with NaN/Inf, of a size the model cannot take, and for a replacement whose
    shape differs from the layer's.
    """
    if isinstance(layers, str):
        layers = [layers]
    layers = tuple(layers)
    if not layers:
        raise InputError("layers: empty list of layer names")
    images = check_images(model, images)
    shapes, logits_shape, calls = _abstract_pass(model, tuple(int(s) for s in images.shape[1:]))
    valid = list(shapes) + (["logits"] if logits_shape is not None and "logits" not in shapes
                            else [])
    for name in layers:
        if name not in valid:
            raise unknown_name("layer", name, valid)
    n = int(images.shape[0])
    if replace:
        if not getattr(model, "supports_replace", True):
            raise InputError(f"replace: {_model_label(model)} is a plain function "
                             f"(from_function); it cannot run forward from a layer")
        replace = _check_replace(replace, shapes, n)
    else:
        replace = None
    batch_sh, rep_sh, shards = _batch_placement(mesh, sharding)
    graphdef, state = nnx.split(model)
    if rep_sh is not None:
        # weights restored from a checkpoint are committed to one device: replicate them
        # onto the devices the images are spread over, or jit refuses the mix.
        state = jax.device_put(state, rep_sh)
    last_calls = tuple(sorted((k, v) for k, v in calls.items() if replace and k in replace))
    bs = n if batch_size is None or int(batch_size) >= n else max(1, int(batch_size))
    bs = -(-bs // shards) * shards          # a multiple of the batch shards

    def run(x, rep, valid_rows):
        pad = bs - x.shape[0]
        x = _pad(x, bs)
        if x.dtype != np.uint8:
            x = x.astype(np.float32) if isinstance(x, np.ndarray) else x.astype(jnp.float32)
        if rep is not None:
            rep = {k: _pad(jnp.asarray(v, jnp.float32), bs) for k, v in rep.items()}
        if batch_sh is not None:
            x = jax.device_put(x, batch_sh)
            if rep is not None:
                rep = jax.device_put(rep, batch_sh)
        out = _forward(graphdef, state, x, rep, layers=layers, last_calls=last_calls)
        return out if pad == 0 else {k: v[:valid_rows] for k, v in out.items()}

    if bs >= n:
        out = run(images, replace, n)
        return {k: out[k] for k in layers}   # jit returns dicts with sorted keys
    chunks = []
    for start in range(0, n, bs):
        sl = slice(start, start + bs)
        rows = min(bs, n - start)
        rep = None if replace is None else {k: v[sl] for k, v in replace.items()}
        chunks.append(jax.device_get(run(images[sl], rep, rows)))
    return {k: jnp.asarray(np.concatenate([c[k] for c in chunks])) for k in layers}


def forward(model, images, *, batch_size: int | None = None, mesh=None,
            replace: dict | None = None) -> jax.Array:
    """Logits of ``model`` for NHWC ``images`` (jit-compiled, optionally in chunks);
    ``replace={layer: array}`` runs the network from those layers' substituted outputs
    (see :func:`activations`)."""
    return activations(model, images, ["logits"], batch_size=batch_size, mesh=mesh,
                       replace=replace)["logits"]
