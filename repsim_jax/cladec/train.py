"""Training ClaDec decoders and reference auto-encoders, many at once, resumably.

ClaDec (Schneider & Vlachos 2022). For a frozen classifier ``Cla`` with layer activation
``L(x)`` and a decoder ``D_theta`` (:class:`~repsim_jax.cladec.decoder.Decoder`), ClaDec
minimises over ``theta`` only

.. math::

    \\mathcal{L}_\\alpha(\\theta) = (1 - \\alpha)\\, \\frac{1}{HWC} \\lVert D_\\theta(L(x)) - x
    \\rVert_2^2 \\; + \\; \\alpha\\, \\mathrm{CE}\\big(\\mathrm{Cla}(D_\\theta(L(x))), y\\big),

averaged over a batch. The classifier's parameters enter as constants (``stop_gradient``,
batch normalisation in evaluation mode): gradients flow *through* ``Cla`` into ``theta`` but
``Cla`` never changes. ``alpha = 0`` is a pure decoder of the layer; growing ``alpha`` keeps
more of what the classifier needs (the MSE is per pixel, so ``alpha`` around ``1e-3`` already
bites - the official default).

The reference auto-encoder replaces the frozen ``L`` by a *fresh* copy ``E_phi`` of the
classifier's architecture up to the same layer and trains ``(phi, theta)`` jointly on the MSE
alone; what ClaDec shows beyond it is what the classifier's layer keeps for classification.

Parallelism: members (one decoder per ``(layer, alpha)``; one encoder+decoder per layer for
the auto-encoder) whose code shapes agree are stacked along a leading axis and trained as one
``jax.vmap``: the loss is the sum of the members' losses, whose gradient w.r.t. the stacked
parameters is each member's own gradient, and Adam (with PyTorch-style L2 weight decay) acts
elementwise - so a sweep of ``K`` alphas costs one compiled step, not ``K``. Members that own
convolution kernels (the auto-encoders' fresh encoders) are mapped by :func:`map_members`,
which unrolls them on XLA:CPU (vmapped per-member convolutions become slow grouped ones there).
Steps run one jitted call each on CPU and in device-side ``lax.fori_loop`` blocks elsewhere
(``step_loop`` of :func:`train_members`).

Streaming: ``images`` may be an in-memory array or a source read in batches (a
:class:`~repsim_jax.data.LazyArray` of a data set larger than memory, a
:class:`~repsim_jax.data.views.MappedView`). A source is never read as a whole: each step's
minibatch is gathered by index on the host (one request of ``batch_size`` items, the next
one prefetched by a background thread while the device works), and :func:`reconstruct` /
:func:`reconstruct_ae` of a source return a lazy view that decodes chunk by chunk when
read. The minibatch indices are the same as in memory, so the numbers agree with the
in-memory path to float tolerance.

Determinism and resumption: the batch of step ``t`` is slice ``t mod (N // B)`` of the
permutation drawn from ``fold_in(key, t // (N // B))``, so a run depends only on its step
count. With ``checkpoint_dir`` the state (parameters, optimiser, loss history) is saved with
orbax every ``checkpoint_every`` steps; a later call with the same arguments resumes from the
latest checkpoint and ends with the same parameters as an uninterrupted run.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from repsim_jax import _progress

from repsim_jax._checks import InputError, as_float_array, check_same_length, unknown_name
from repsim_jax._results import result
from repsim_jax.cladec.decoder import Decoder, reinitialize
from repsim_jax.data import views

__all__ = ["CladecFit", "AutoencoderFit", "DecoderGroup", "fit_cladec", "fit_reference_ae",
           "reconstruct", "reconstruct_ae", "train_members", "check_images", "check_alphas",
           "check_layers", "frozen", "map_members", "MemberSources"]


# ----------------------------------------------------------------------------- checks

def check_images(images, name: str = "images", *, low: float = 0.0, high: float = 1.0,
                 chunk: int = 64):
    """NHWC float images inside the classifier's input range ``[low, high]``.

    A source that is not in memory (:func:`repsim_jax.data.views.is_source`) is checked on
    its first ``chunk`` images (reading it all would defeat streaming); the training loops
    check every minibatch they draw from it (:func:`_checked_source`)."""
    if views.is_source(images):
        if len(images.shape) != 4 or np.dtype(images.dtype).kind not in "fiu":
            raise InputError(f"{name}: expected NHWC float images (4 dimensions), got shape "
                             f"{tuple(images.shape)}, dtype {images.dtype}")
        if int(images.shape[0]) == 0:
            raise InputError(f"{name}: empty (shape {tuple(images.shape)})")
        first = np.asarray(images[0:min(int(chunk), int(images.shape[0]))])
        as_float_array(first, name, ndim=4)
        views.check_range(first, name, low, high)
        return images
    as_float_array(images, name, ndim=4)
    views.check_range(images, name, low, high)
    return images


def _range_checked(batch, name):
    batch = np.asarray(batch, np.float32)
    as_float_array(batch, name, ndim=4)
    views.check_range(batch, name, 0.0, 1.0)
    return batch


def _checked_source(images, name: str = "images"):
    """``images`` as training data: a device array when in memory; a source stays a source
    whose every read is checked (finite, inside ``[0, 1]``) as it is drawn."""
    if not views.is_source(images):
        return jnp.asarray(images, jnp.float32)
    return views.MappedView(images, functools.partial(_range_checked, name=name),
                            item_shape=images.shape[1:], dtype=np.float32,
                            batch_size=int(images.shape[0]), name=name)


def check_alphas(alphas) -> tuple[float, ...]:
    """Alphas as a tuple of floats, each in ``[0, 1]``."""
    a = np.atleast_1d(np.asarray(alphas, dtype=np.float64))
    if a.ndim != 1 or a.size == 0:
        raise InputError(f"alphas: expected a number or a 1-D list, got {alphas!r}")
    bad = a[~((a >= 0) & (a <= 1))]
    if bad.size:
        raise InputError(f"alpha must lie in [0, 1] (weight of the classification loss), "
                         f"got {bad.tolist()}")
    return tuple(float(x) for x in a)


def check_layers(model, layers, image_shape=None) -> tuple[str, ...]:
    """Layer names (one or several), each a capturable layer of ``model``."""
    from repsim_jax.models.capture import list_layers
    layers = (layers,) if isinstance(layers, str) else tuple(layers)
    if not layers:
        raise InputError("layers: empty list of layer names")
    valid = list_layers(model, image_shape)
    valid += [] if "logits" in valid else ["logits"]
    for name in layers:
        if name not in valid:
            raise unknown_name("layer", name, valid)
    if len(set(layers)) != len(layers):
        raise InputError(f"layers: duplicate names in {list(layers)}")
    return layers


def _check_labels(labels, images, num_classes: int | None):
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise InputError(f"labels: expected a 1-D integer array, got shape {labels.shape} "
                         f"dtype {labels.dtype}")
    check_same_length("images", images, "labels", labels)
    if labels.min() < 0 or (num_classes is not None and labels.max() >= num_classes):
        raise InputError(f"labels: must lie in [0, {num_classes}), got range "
                         f"[{labels.min()}, {labels.max()}]")
    return labels.astype(np.int32)


# ----------------------------------------------------------------------------- model views

def _with_mode(model: nnx.Module, *, train_bn: bool):
    """(graphdef, state) of a copy of ``model``; BN in train/eval mode, dropout off."""
    graphdef, state = nnx.split(model)
    m = nnx.merge(graphdef, state)
    m.set_attributes(deterministic=True, use_running_average=not train_bn,
                     raise_if_not_found=False)
    return nnx.split(m, nnx.Param, ...)


def frozen(model: nnx.Module):
    """``(graphdef, state)`` of ``model`` in evaluation mode, for use as a frozen constant."""
    graphdef, params, rest = _with_mode(model, train_bn=False)
    return graphdef, (params, rest)


def _taps(graphdef, params, rest, x, layers):
    # fresh Variable objects at the current trace level, so that BN may update its statistics
    from repsim_jax.models.capture import record_layers
    m = nnx.merge(graphdef, params, jax.tree.map(lambda a: a, rest))
    # any nnx model (submodule paths + taps), its own normalisation, modes as _with_mode set
    logits, taps = record_layers(m, x, eval_mode=False)
    taps.setdefault("logits", logits)
    _, _, new_rest = nnx.split(m, nnx.Param, ...)
    return [taps[k] for k in layers], logits, new_rest


def _constant(tree):
    """``tree`` as a constant of differentiation (float leaves behind ``stop_gradient``)."""
    return jax.tree.map(lambda a: jax.lax.stop_gradient(a)
                        if jnp.issubdtype(a.dtype, jnp.floating) else a, tree)


def _logits(graphdef, params, rest, x):
    from repsim_jax.models.capture import model_output
    return model_output(nnx.merge(graphdef, params, rest), x)


MEMBER_MAPS = ("auto", "vmap", "unroll")
STEP_LOOPS = ("auto", "fori", "python")


def _backend_choice(option: str, value: str, choices, *, cpu: str, other: str) -> str:
    """``value`` checked against ``choices``; ``"auto"`` becomes ``cpu`` on the XLA:CPU
    backend and ``other`` on accelerators."""
    if value not in choices:
        raise unknown_name(option, value, list(choices))
    if value == "auto":
        return cpu if jax.default_backend() == "cpu" else other
    return value


def map_members(fn: Callable, *args, mode: str = "auto"):
    """``fn`` applied to each member (leading axis of every leaf of ``args``), outputs stacked.

    ``"vmap"``: one ``jax.vmap``. ``"unroll"``: a trace-time loop of ``K`` static slices, i.e.
    ``K`` copies of the member's graph in one jitted step. Members that own *convolution
    kernels* (fresh encoders, retrained classifiers) need ``"unroll"`` on XLA:CPU: vmap turns
    their convolutions into grouped convolutions whose gradient is ~5-10x slower per member
    there (and ``lax.map`` is slower still), while accelerators run the grouped form well.
    ``"auto"`` = ``"unroll"`` on the CPU backend, ``"vmap"`` elsewhere.
    """
    mode = _backend_choice("member_map", mode, MEMBER_MAPS, cpu="unroll", other="vmap")
    if mode == "vmap":
        return jax.vmap(fn)(*args)
    k = int(jax.tree.leaves(args)[0].shape[0])
    outs = [fn(*jax.tree.map(lambda a, i=i: a[i], args)) for i in range(k)]
    return jax.tree.map(lambda *xs: jnp.stack(xs), *outs)


# ----------------------------------------------------------------------------- generic trainer

def _stack(trees):
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def _fingerprint(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _batch_index(key, step, n, batch):
    per_epoch = n // batch
    perm = jax.random.permutation(jax.random.fold_in(key, step // per_epoch), n)
    return jax.lax.dynamic_slice(perm, ((step % per_epoch) * batch,), (batch,))


# the minibatch indices on the host (streamed data): one module-level jit
_batch_index_jit = jax.jit(_batch_index, static_argnums=(2, 3))


def _to_saveable(leaf):
    if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
        return jax.random.key_data(leaf)
    return leaf


def _from_saved(saved, like):
    if jnp.issubdtype(like.dtype, jax.dtypes.prng_key):
        return jax.random.wrap_key_data(jnp.asarray(saved), impl=jax.random.key_impl(like))
    return jnp.asarray(saved, like.dtype)


class MemberSources:
    """``K`` sources of ``N`` items each, one per member, read together: the streamed form
    of a ``(K, N, ...)`` ``member_data`` leaf of :func:`train_members`
    (``items(idx) -> (K, B, ...)``)."""

    def __init__(self, sources: Sequence):
        self.sources = list(sources)
        shapes = {tuple(s.shape) for s in self.sources}
        if len(shapes) != 1:
            raise InputError(f"member sources must have one shape, got {sorted(shapes)}")
        self.dtype = np.dtype(np.float32)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.sources), *tuple(self.sources[0].shape))

    def items(self, idx) -> np.ndarray:
        return np.stack([np.asarray(s[idx], np.float32) for s in self.sources])


def _host_batches(data: dict, member_data: dict, idx_of: Callable):
    """``batch(t) -> (data batch, member batch)`` of the streamed leaves at step ``t``."""
    def batch(t):
        idx = np.asarray(idx_of(jnp.asarray(t, jnp.int32)))
        return ({k: np.asarray(v[idx]) for k, v in data.items()},
                {k: v.items(idx) for k, v in member_data.items()})
    return batch


def train_members(loss_all: Callable, params, aux, consts, data: dict, *, steps: int,
                  batch_size: int, lr: float = 3e-4, weight_decay: float = 1e-5, seed: int = 0,
                  member_data: dict | None = None, checkpoint_dir: str | None = None,
                  checkpoint_every: int = 200, log_every: int = 10, progress: bool = True,
                  desc: str = "train", fingerprint: Any = None,
                  callback: Callable[[int, np.ndarray], None] | None = None,
                  step_loop: str = "auto"):
    """Trains ``K`` stacked members with Adam for ``steps`` steps; returns (params, aux, history).

    ``loss_all(params, aux, consts, batch, member_batch) -> (losses (K,), new_aux)`` computes
    every member's loss (it vmaps internally); the optimiser minimises ``sum(losses)``.
    ``data`` leaves have samples on axis 0 (shared by members), ``member_data`` leaves on
    axis 1 (``(K, N, ...)``, one data set per member). ``history`` is ``(steps // log_every,
    K)``: the mean loss of each member over each block of ``log_every`` steps.
    Optimiser: ``add_decayed_weights(weight_decay)`` then ``adam(lr)`` (PyTorch's Adam with
    ``weight_decay``). ``callback(step, losses)`` runs after each block (raising there
    interrupts the run; the checkpoint keeps the progress).
    ``step_loop``: ``"fori"`` runs each block of ``log_every`` steps as one device-side
    ``lax.fori_loop`` (one dispatch per block); ``"python"`` dispatches one jitted step at a
    time (same numbers). On XLA:CPU convolution gradients inside a loop body run ~10x slower
    than the same step called from Python (measured on the small VGG), so ``"auto"`` picks
    ``"python"`` on the CPU backend and ``"fori"`` elsewhere.

    Streaming: a ``data`` value may be a source that is not in memory
    (:func:`repsim_jax.data.views.is_source`) and a ``member_data`` value a
    :class:`MemberSources`; their minibatch (the same indices as in memory) is gathered on
    the host, one request of ``batch_size`` items per step, the next step's prefetched by
    a background thread, and passed to the jitted step. Such runs step from Python
    (``step_loop="fori"`` is refused: a device loop cannot read the host).
    """
    member_data = member_data or {}
    streamed = {k: v for k, v in data.items() if views.is_source(v)} \
        if isinstance(data, dict) else {}
    mstreamed = {k: v for k, v in member_data.items() if isinstance(v, MemberSources)}
    if (streamed or mstreamed) and step_loop == "fori":
        raise InputError("step_loop='fori' needs the training data in memory; streamed "
                         "sources are read on the host step by step (use 'auto' or 'python')")
    step_loop = ("python" if streamed or mstreamed else
                 _backend_choice("step_loop", step_loop, STEP_LOOPS, cpu="python", other="fori"))
    leaves = jax.tree.leaves(data)
    n = int(leaves[0].shape[0]) if leaves else int(jax.tree.leaves(member_data)[0].shape[1])
    batch_size = int(min(batch_size, n))
    if steps < 1:
        raise InputError(f"steps: must be >= 1, got {steps}")
    k = int(jax.tree.leaves(params)[0].shape[0])
    opt = optax.chain(optax.add_decayed_weights(weight_decay), optax.adam(lr))
    opt_state = opt.init(params)
    n_logs = -(-steps // log_every)
    history = jnp.full((n_logs, k), jnp.nan, jnp.float32)
    key = jax.random.key(seed)

    dev_data = {k: v for k, v in data.items() if k not in streamed} if streamed else data
    dev_mdata = {k: v for k, v in member_data.items() if k not in mstreamed}

    def one_step(t, carry, host=None, mhost=None):
        params, aux, opt_state, acc = carry
        idx = _batch_index(key, t, n, batch_size)
        batch = jax.tree.map(lambda a: a[idx], dev_data)
        mbatch = jax.tree.map(lambda a: a[:, idx], dev_mdata)
        if host or mhost:           # the streamed leaves' minibatch, gathered on the host
            batch, mbatch = {**batch, **host}, {**mbatch, **mhost}

        def total(p):
            losses, new_aux = loss_all(p, aux, consts, batch, mbatch)
            return jnp.sum(losses), (losses, new_aux)

        (_, (losses, aux)), grads = jax.value_and_grad(total, has_aux=True)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return params, aux, opt_state, acc + losses

    @jax.jit
    def run_fori(params, aux, opt_state, history, start, stop):
        acc = jnp.zeros((k,), jnp.float32)
        params, aux, opt_state, acc = jax.lax.fori_loop(
            start, stop, one_step, (params, aux, opt_state, acc))
        history = history.at[start // log_every].set(acc / (stop - start))
        return params, aux, opt_state, history

    step_jit = jax.jit(one_step)

    def run_python(params, aux, opt_state, history, start, stop):
        carry = (params, aux, opt_state, jnp.zeros((k,), jnp.float32))
        for t in range(start, stop):
            carry = step_jit(jnp.asarray(t, jnp.int32), carry)
        params, aux, opt_state, acc = carry
        history = history.at[start // log_every].set(acc / (stop - start))
        return params, aux, opt_state, history

    def run_streamed(params, aux, opt_state, history, start, stop):
        import concurrent.futures as cf
        fetch = _host_batches(streamed, mstreamed,
                              lambda t: _batch_index_jit(key, t, n, batch_size))
        carry = (params, aux, opt_state, jnp.zeros((k,), jnp.float32))
        with cf.ThreadPoolExecutor(1) as pool:
            nxt = pool.submit(fetch, start)
            for t in range(start, stop):
                host, mhost = nxt.result()
                if t + 1 < stop:             # decode the next minibatch meanwhile
                    nxt = pool.submit(fetch, t + 1)
                carry = step_jit(jnp.asarray(t, jnp.int32), carry, host, mhost)
        params, aux, opt_state, acc = carry
        history = history.at[start // log_every].set(acc / (stop - start))
        return params, aux, opt_state, history

    run_block = run_fori if step_loop == "fori" else (
        run_streamed if streamed or mstreamed else run_python)

    state = {"params": params, "aux": aux, "opt": opt_state, "history": history}
    start = 0
    mngr = None
    if checkpoint_dir is not None:
        import orbax.checkpoint as ocp
        path = os.path.abspath(checkpoint_dir)
        os.makedirs(path, exist_ok=True)
        meta = {"fingerprint": _fingerprint(fingerprint), "steps_per_log": log_every,
                "batch_size": batch_size, "n": n, "members": k, "seed": seed, "lr": lr,
                "weight_decay": weight_decay}
        meta_path = os.path.join(path, "run.json")
        if os.path.exists(meta_path):
            with open(meta_path) as f:
                old = json.load(f)
            if old != meta:
                raise InputError(f"checkpoint_dir {path} holds a different run ({old}); "
                                 f"use a fresh directory for {meta}")
        else:
            with open(meta_path, "w") as f:
                json.dump(meta, f)
        mngr = ocp.CheckpointManager(path, options=ocp.CheckpointManagerOptions(max_to_keep=2))
        latest = mngr.latest_step()
        if latest is not None:
            leaves_, treedef = jax.tree.flatten(state)
            target = {f"{i:05d}": jax.ShapeDtypeStruct(_to_saveable(l).shape,
                                                       _to_saveable(l).dtype)
                      for i, l in enumerate(leaves_)}
            restored = mngr.restore(latest, args=ocp.args.StandardRestore(target))
            state = jax.tree.unflatten(treedef, [_from_saved(restored[f"{i:05d}"], l)
                                                 for i, l in enumerate(leaves_)])
            start = int(latest)

    def save(step):
        if mngr is None:
            return
        import orbax.checkpoint as ocp
        leaves_ = jax.tree.leaves(state)
        mngr.save(step, args=ocp.args.StandardSave({f"{i:05d}": _to_saveable(l)
                                                     for i, l in enumerate(leaves_)}))
        mngr.wait_until_finished()

    last_saved = start
    try:
        with _progress.bar(steps, desc=desc, unit="step", progress=progress) as bar:
            bar.update(min(start, steps))
            t = start
            while t < steps:
                stop = min(t + log_every - (t % log_every), steps)
                p, a, o, h = run_block(state["params"], state["aux"], state["opt"],
                                       state["history"], t, stop)
                state = {"params": p, "aux": a, "opt": o, "history": h}
                bar.update(stop - t)
                t = stop
                row = np.asarray(h[(t - 1) // log_every])
                bar.set_postfix(loss=f"{float(np.nanmean(row)):.4g}")
                if t - last_saved >= checkpoint_every or t == steps:
                    save(t)
                    last_saved = t
                if callback is not None:
                    callback(t, row)
    finally:
        if mngr is not None:
            mngr.close()
    return state["params"], state["aux"], np.asarray(state["history"])


# ----------------------------------------------------------------------------- results

def _flat_arrays(tree) -> dict:
    """``{key path: numpy array}`` of the array leaves of a pytree (for ``to_dict``/``save``)."""
    leaves = jax.tree_util.tree_leaves_with_path(tree)
    return {jax.tree_util.keystr(p): np.asarray(v) for p, v in leaves
            if hasattr(v, "shape") and hasattr(v, "dtype")}


@result(meta=("layers", "alphas", "code_shape", "decoder_graphdef"), eq=False)
class DecoderGroup:
    """Members sharing one code shape, stacked on axis 0: member ``i`` decodes ``layers[i]``
    (trained with ``alphas[i]``; ``nan`` for an auto-encoder). ``encoder`` (auto-encoders
    only) is ``(graphdef, (params, rest))`` of the fresh encoders, stacked, in eval mode."""
    layers: tuple[str, ...]
    alphas: tuple[float, ...]
    code_shape: tuple[int, ...]
    decoder_graphdef: Any
    decoder_params: Any
    history: np.ndarray
    encoder: Any = None

    def to_dict(self) -> dict:
        return {"layers": list(self.layers), "alphas": list(self.alphas),
                "code_shape": list(self.code_shape), "history": np.asarray(self.history),
                "decoder_params": _flat_arrays(self.decoder_params),
                "encoder_params": None if self.encoder is None else
                _flat_arrays(self.encoder[1])}

    def index(self, layer: str, alpha: float | None = None) -> int | None:
        for i, (l, a) in enumerate(zip(self.layers, self.alphas)):
            if l == layer and (alpha is None or np.isclose(a, alpha)):
                return i
        return None


@result(meta=("image_shape",), eq=False)
class CladecFit:
    """ClaDec decoders for every ``(layer, alpha)``; frozen classifier kept for decoding.

    A pytree with ``to_dict()`` / ``save(dir)`` (decoder weights and training histories by
    member; the classifier's weights are not saved: they are the caller's model)."""
    groups: list[DecoderGroup]
    classifier: Any              # (graphdef, (params, rest)) in eval mode
    image_shape: tuple[int, int, int]

    def to_dict(self) -> dict:
        return {"members": [[l, a] for l, a in self.members],
                "image_shape": list(self.image_shape),
                "groups": [g.to_dict() for g in self.groups]}

    @property
    def members(self) -> list[tuple[str, float]]:
        return [(l, a) for g in self.groups for l, a in zip(g.layers, g.alphas)]

    def find(self, layer: str, alpha: float | None = None):
        for g in self.groups:
            i = g.index(layer, alpha)
            if i is not None:
                return g, i
        raise unknown_name("(layer, alpha)", f"{layer}, {alpha}",
                           [f"{l}, {a}" for l, a in self.members])


@result(meta=("image_shape",), eq=False)
class AutoencoderFit:
    """Reference auto-encoders (fresh encoder up to ``layer`` + decoder), one per layer.

    A pytree with ``to_dict()`` / ``save(dir)`` (encoder and decoder weights, histories)."""
    groups: list[DecoderGroup]
    image_shape: tuple[int, int, int]

    def to_dict(self) -> dict:
        return {"layers": self.layers, "image_shape": list(self.image_shape),
                "groups": [g.to_dict() for g in self.groups]}

    @property
    def layers(self) -> list[str]:
        return [l for g in self.groups for l in g.layers]

    def find(self, layer: str):
        for g in self.groups:
            i = g.index(layer)
            if i is not None:
                return g, i
        raise unknown_name("layer", layer, self.layers)


def _layer_shapes(model, image_shape):
    from repsim_jax.models.capture import layer_shapes
    shapes = layer_shapes(model, image_shape)
    if "logits" not in shapes:
        graphdef, state = nnx.split(model)
        out = jax.eval_shape(lambda s, x: nnx.merge(graphdef, s)(x), state,
                             jax.ShapeDtypeStruct((1, *image_shape), jnp.float32))
        shapes["logits"] = tuple(out.shape[1:])
    return shapes


def _group_by_shape(layers, shapes):
    groups: dict[tuple, list[str]] = {}
    for l in layers:
        groups.setdefault(tuple(shapes[l]), []).append(l)
    return list(groups.items())


def _init_decoders(code_shape, image_shape, seeds, width):
    def make(seed):
        d = Decoder(code_shape, image_shape, width=width, rngs=nnx.Rngs(seed))
        return nnx.split(d)
    graphdef, _ = make(0)
    states = [make(int(s))[1] for s in seeds]
    return graphdef, _stack(states)


def _decode(graphdef, params, code):
    return nnx.merge(graphdef, params)(code)


# ----------------------------------------------------------------------------- ClaDec

def fit_cladec(model: nnx.Module, images, labels, layers: str | Sequence[str],
               alphas: float | Sequence[float] = 0.001, *, steps: int = 1000,
               batch_size: int = 64, lr: float = 3e-4, weight_decay: float = 1e-5,
               width: int = 64, seed: int = 0, checkpoint_dir: str | None = None,
               checkpoint_every: int = 200, log_every: int = 10, progress: bool = True,
               callback: Callable | None = None, step_loop: str = "auto") -> CladecFit:
    """Trains one ClaDec decoder per ``(layer, alpha)`` for the frozen classifier ``model``.

    ``images``: NHWC in ``[0, 1]`` (the classifier's input range), an array or a source read
    one minibatch at a time (module docstring, "Streaming"); ``labels``: class indices.
    All alphas of a layer - and all layers whose activations have the same shape - train as
    one vmapped step. ``model`` is never modified (its BN runs in evaluation mode).
    ``step_loop``: see :func:`train_members`.
    Raises ``KeyError`` for an unknown layer and :class:`InputError` for alphas outside
    ``[0, 1]``, images outside ``[0, 1]`` or mismatched labels.
    """
    check_images(images, chunk=batch_size)
    image_shape = tuple(int(s) for s in images.shape[1:])
    layers = check_layers(model, layers, image_shape)
    alphas = check_alphas(alphas)
    shapes = _layer_shapes(model, image_shape)
    cla_graphdef, cla_state = frozen(model)
    num_classes = int(jax.eval_shape(lambda s, x: _logits(cla_graphdef, *s, x), cla_state,
                                     jax.ShapeDtypeStruct((1, *image_shape), jnp.float32))
                      .shape[-1])
    labels = _check_labels(labels, images, num_classes)
    data = {"x": _checked_source(images), "y": jnp.asarray(labels)}
    groups = []
    for gi, (code_shape, glayers) in enumerate(_group_by_shape(layers, shapes)):
        members = [(l, a) for l in glayers for a in alphas]
        layer_idx = jnp.asarray([glayers.index(l) for l, _ in members], jnp.int32)
        alpha_arr = jnp.asarray([a for _, a in members], jnp.float32)
        dec_graphdef, dec_params = _init_decoders(code_shape, image_shape,
                                                  [seed + 1000 * glayers.index(l)
                                                   for l, _ in members], width)

        def loss_all(params, aux, consts, batch, mbatch, glayers=tuple(glayers),
                     dec_graphdef=dec_graphdef):
            cla = _constant(consts["classifier"])
            codes, _, _ = _taps(cla_graphdef, *cla, batch["x"], glayers)
            codes = jax.lax.stop_gradient(jnp.stack(codes))

            def member(p, li, alpha):
                xh = _decode(dec_graphdef, p, codes[li])
                mse = jnp.mean((xh - batch["x"]) ** 2)
                logits = _logits(cla_graphdef, *cla, xh)
                ce = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(
                    logits, batch["y"]))
                return (1 - alpha) * mse + alpha * ce

            return jax.vmap(member)(params, consts["layer_idx"], consts["alpha"]), aux

        consts = {"classifier": cla_state, "layer_idx": layer_idx, "alpha": alpha_arr}
        fp = {"kind": "cladec", "members": members, "code_shape": code_shape,
              "image_shape": image_shape, "steps": steps, "width": width,
              "n": int(images.shape[0])}
        ckpt = None if checkpoint_dir is None else os.path.join(
            checkpoint_dir, f"cladec_group{gi}_{_fingerprint(fp)}")
        params, _, history = train_members(
            loss_all, dec_params, {}, consts, data, steps=steps, batch_size=batch_size, lr=lr,
            weight_decay=weight_decay, seed=seed, checkpoint_dir=ckpt,
            checkpoint_every=checkpoint_every, log_every=log_every, progress=progress,
            desc=f"ClaDec {','.join(glayers)} x {len(alphas)} alpha", fingerprint=fp,
            callback=callback, step_loop=step_loop)
        groups.append(DecoderGroup(tuple(l for l, _ in members), tuple(a for _, a in members),
                                   code_shape, dec_graphdef, params, history))
    return CladecFit(groups, (cla_graphdef, cla_state), image_shape)


# ----------------------------------------------------------------------------- reference AE

def fit_reference_ae(model: nnx.Module, images, layers: str | Sequence[str], *,
                     encoder: nnx.Module | Callable[[int], nnx.Module] | None = None,
                     steps: int = 1000, batch_size: int = 64, lr: float = 3e-4,
                     weight_decay: float = 1e-5, width: int = 64, seed: int = 0,
                     checkpoint_dir: str | None = None, checkpoint_every: int = 200,
                     log_every: int = 10, progress: bool = True,
                     callback: Callable | None = None, member_map: str = "auto",
                     step_loop: str = "auto") -> AutoencoderFit:
    """Reference auto-encoder per layer: fresh encoder up to ``layer`` + decoder, MSE only.

    ``images`` as in :func:`fit_cladec` (an array or a streamed source).

    The encoder is the classifier's architecture freshly initialised: by default
    :func:`~repsim_jax.cladec.decoder.reinitialize` of ``model``; ``encoder`` may instead be
    an untrained model of the same architecture or a factory ``seed -> model`` (e.g.
    ``lambda s: repsim_jax.models.build(name, num_classes=k, rngs=nnx.Rngs(s))``). Its batch
    normalisation trains with batch statistics. Layers with equal activation shapes train as
    one step (one encoder+decoder per layer), mapped over members by ``member_map`` (see
    :func:`map_members`: on CPU the per-layer encoders are unrolled rather than vmapped).
    """
    check_images(images, chunk=batch_size)
    image_shape = tuple(int(s) for s in images.shape[1:])
    layers = check_layers(model, layers, image_shape)
    shapes = _layer_shapes(model, image_shape)

    def fresh(s):
        if encoder is None:
            return reinitialize(model, s)
        if isinstance(encoder, nnx.Module):
            return encoder if s == seed else reinitialize(encoder, s)
        return encoder(s)

    data = {"x": _checked_source(images)}
    groups = []
    for gi, (code_shape, glayers) in enumerate(_group_by_shape(layers, shapes)):
        seeds = [seed + 1000 * i for i in range(len(glayers))]
        encs = [_with_mode(fresh(s), train_bn=True) for s in seeds]
        enc_graphdef = encs[0][0]
        enc_params = _stack([e[1] for e in encs])
        enc_rest = _stack([e[2] for e in encs])
        enc_shapes = _layer_shapes(fresh(seed), image_shape)
        for l in glayers:
            if tuple(enc_shapes.get(l, ())) != tuple(code_shape):
                raise InputError(f"encoder: layer {l!r} has shape {enc_shapes.get(l)} in the "
                                 f"encoder but {code_shape} in the classifier")
        dec_graphdef, dec_params = _init_decoders(code_shape, image_shape,
                                                  [s + 1 for s in seeds], width)

        def loss_all(params, aux, consts, batch, mbatch, glayers=tuple(glayers),
                     enc_graphdef=enc_graphdef, dec_graphdef=dec_graphdef):
            def member(p, rest, li):
                codes, _, new_rest = _taps(enc_graphdef, p["encoder"], rest, batch["x"],
                                           glayers)
                code = jnp.stack(codes)[li] if len(glayers) > 1 else codes[0]
                xh = _decode(dec_graphdef, p["decoder"], code)
                return jnp.mean((xh - batch["x"]) ** 2), new_rest

            return map_members(member, params, aux, consts["layer_idx"], mode=member_map)

        params0 = {"encoder": enc_params, "decoder": dec_params}
        consts = {"layer_idx": jnp.arange(len(glayers), dtype=jnp.int32)}
        fp = {"kind": "ae", "layers": glayers, "code_shape": code_shape,
              "image_shape": image_shape, "steps": steps, "width": width,
              "n": int(images.shape[0])}
        ckpt = None if checkpoint_dir is None else os.path.join(
            checkpoint_dir, f"ae_group{gi}_{_fingerprint(fp)}")
        params, rest, history = train_members(
            loss_all, params0, enc_rest, consts, data, steps=steps, batch_size=batch_size,
            lr=lr, weight_decay=weight_decay, seed=seed, checkpoint_dir=ckpt,
            checkpoint_every=checkpoint_every, log_every=log_every, progress=progress,
            desc=f"reference AE {','.join(glayers)}", fingerprint=fp, callback=callback,
            step_loop=step_loop)
        # the trained encoders, switched to evaluation mode for decoding
        eval_graphdef = _with_mode(fresh(seed), train_bn=False)[0]
        groups.append(DecoderGroup(tuple(glayers), tuple(float("nan") for _ in glayers),
                                   code_shape, dec_graphdef, params["decoder"], history,
                                   encoder=(eval_graphdef, (params["encoder"], rest))))
    return AutoencoderFit(groups, image_shape)


# ----------------------------------------------------------------------------- decoding

@functools.partial(jax.jit, static_argnames=("graphdef", "dec_graphdef", "layer"))
def _encode_decode(params, rest, dec_params, x, *, graphdef, dec_graphdef, layer):
    """Decoder(layer code of x): one module-level jit (graph definitions are static), so
    repeated reconstructions of equal shapes compile once."""
    codes, _, _ = _taps(graphdef, params, rest, x, (layer,))
    return _decode(dec_graphdef, dec_params, codes[0])


def _batched(fn, images, batch_size):
    if views.is_source(images):
        # a lazy view: each read decodes its items, ``batch_size`` (default 256) at a time
        def decode(x):
            return np.asarray(fn(jnp.asarray(x, jnp.float32)))
        return views.MappedView(images, decode, item_shape=images.shape[1:],
                                dtype=np.float32, batch_size=batch_size or 256,
                                name="reconstructions")
    n = images.shape[0]
    if batch_size is None or batch_size >= n:
        return np.asarray(fn(jnp.asarray(images, jnp.float32)))
    return np.concatenate([np.asarray(fn(jnp.asarray(images[i:i + batch_size], jnp.float32)))
                           for i in range(0, n, batch_size)])


def reconstruct(fit: CladecFit, images, layer: str, alpha: float | None = None, *,
                batch_size: int | None = 256) -> np.ndarray:
    """ClaDec reconstructions ``D(L(x))`` of ``images`` for one ``(layer, alpha)``.

    An array for in-memory ``images``; for a streamed source a lazy
    :class:`~repsim_jax.data.views.MappedView` that decodes the items asked for,
    ``batch_size`` at a time (nothing is computed until it is read)."""
    check_images(images, chunk=batch_size or 256)
    group, i = fit.find(layer, alpha)
    cla_graphdef, cla_state = fit.classifier
    params = jax.tree.map(lambda a: a[i], group.decoder_params)
    return _batched(lambda x: _encode_decode(cla_state[0], cla_state[1], params, x,
                                             graphdef=cla_graphdef,
                                             dec_graphdef=group.decoder_graphdef,
                                             layer=layer), images, batch_size)


def reconstruct_ae(fit: AutoencoderFit, images, layer: str, *,
                   batch_size: int | None = 256) -> np.ndarray:
    """Reference auto-encoder reconstructions of ``images`` through ``layer`` (a lazy view for
    a streamed source, as :func:`reconstruct`)."""
    check_images(images, chunk=batch_size or 256)
    group, i = fit.find(layer)
    enc_graphdef, (enc_params, enc_rest) = group.encoder
    take = lambda t: jax.tree.map(lambda a: a[i], t)  # noqa: E731
    p, r, d = take(enc_params), take(enc_rest), take(group.decoder_params)
    return _batched(lambda x: _encode_decode(p, r, d, x, graphdef=enc_graphdef,
                                             dec_graphdef=group.decoder_graphdef,
                                             layer=layer), images, batch_size)
