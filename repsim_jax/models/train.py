"""Supervised training of nnx classifiers with optax (used for the built-in small CNNs).

Objective: mean softmax cross-entropy over mini-batches,

.. math:: \\mathcal{L}(\\theta) = -\\frac{1}{B}\\sum_{b} \\log \\mathrm{softmax}(f_\\theta(x_b))_{y_b},

minimised with AdamW (decoupled weight decay) under a warm-up + cosine learning-rate
schedule. The model is split once into (graph, parameters, other state such as batch-norm
running statistics); one jit-compiled step maps
``(params, other, opt_state, x, y) -> (params', other', opt_state', loss)`` with donated
buffers, so the Python loop only slices batches. Batch norm runs in training mode during
the loop; the model is returned in eval mode.
"""
from __future__ import annotations

import dataclasses
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from repsim_jax import _progress
from repsim_jax._checks import InputError, as_float_array, check_same_length

__all__ = ["TrainConfig", "train", "evaluate", "predict"]


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of :func:`train` (defaults tuned for the small CNNs on shapes)."""

    epochs: int = 3
    batch_size: int = 32
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 50
    seed: int = 0


def _check_xy(model, images, labels, name="images"):
    as_float_array(images, name, ndim=4)
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise InputError(f"labels: expected a 1-D integer array, got shape {labels.shape} and "
                         f"dtype {labels.dtype}")
    check_same_length(name, images, "labels", labels)
    hwc = tuple(getattr(model, "input_shape", images.shape[1:]))
    if tuple(images.shape[1:]) != hwc:
        raise InputError(f"{name}: model expects images of shape (N, {', '.join(map(str, hwc))})"
                         f" (NHWC), got {tuple(images.shape)}")
    num_classes = getattr(model, "num_classes", None)
    if num_classes is not None and (labels.min() < 0 or labels.max() >= num_classes):
        raise InputError(f"labels: values must lie in [0, {num_classes}), got range "
                         f"[{labels.min()}, {labels.max()}]")
    return labels.astype(np.int32)


@functools.partial(jax.jit, static_argnames=("graphdef", "tx"), donate_argnums=(1, 2, 3))
def _train_step(graphdef, params, other, opt_state, x, y, tx):
    def loss_fn(p, o):
        model = nnx.merge(graphdef, p, o, copy=True)
        logits = model(x)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        correct = jnp.sum(jnp.argmax(logits, -1) == y)
        return loss, (nnx.state(model, nnx.Not(nnx.Param)), correct)

    (loss, (new_other, correct)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        params, other)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    return params, new_other, opt_state, loss, correct


@functools.lru_cache(maxsize=32)
def _optimizer(learning_rate: float, weight_decay: float, warmup: int, total: int):
    """AdamW with linear warm-up and cosine decay; cached so that equal settings give the
    same (hashable, static) object and the jit-compiled step is reused."""
    schedule = optax.warmup_cosine_decay_schedule(0.0, learning_rate, warmup, total)
    return optax.adamw(schedule, weight_decay=weight_decay)


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _logits(graphdef, state, x):
    return nnx.merge(graphdef, state)(x)


def predict(model, images, *, batch_size: int = 512) -> np.ndarray:
    """Logits (N, K) of ``model`` in its current mode, computed in jit-compiled batches."""
    as_float_array(images, "images", ndim=4)
    graphdef, state = nnx.split(model)
    out = [np.asarray(_logits(graphdef, state, jnp.asarray(images[i:i + batch_size])))
           for i in range(0, images.shape[0], batch_size)]
    return np.concatenate(out)


def evaluate(model, images, labels, *, batch_size: int = 512) -> float:
    """Top-1 accuracy of ``model`` (eval mode) on ``(images, labels)``."""
    labels = _check_xy(model, images, labels)
    model.eval()
    return float((predict(model, images, batch_size=batch_size).argmax(-1) == labels).mean())


def train(model, images, labels, *, config: TrainConfig = TrainConfig(), eval_images=None,
          eval_labels=None, progress: bool | None = None,
          data_sharding: jax.sharding.Sharding | None = None) -> dict:
    """Trains ``model`` in place on NHWC float ``images`` and integer ``labels``.

    Each epoch visits a seeded permutation of the data in batches of ``config.batch_size``
    (the last incomplete batch is dropped). Returns a history dict with per-epoch mean
    ``loss``, ``train_accuracy`` (of the training batches, as they were trained on),
    optional ``eval_accuracy`` on ``(eval_images, eval_labels)``, ``seconds``
    (wall time of the loop), ``cpu_seconds`` (process CPU time, all threads) and ``steps``. Raises :class:`InputError` for NaN/Inf images,
    wrong shapes, or labels outside ``[0, num_classes)``; ``FloatingPointError`` if the
    loss diverges.

    ``data_sharding`` (e.g. ``NamedSharding(mesh, P("data"))``) splits every batch across
    devices (data parallel); parameters stay replicated and XLA inserts the gradient and
    batch-norm reductions, so the result equals single-device training up to rounding.
    The batch size must then be a multiple of the number of devices.

    ``progress`` follows the library convention (:mod:`repsim_jax._progress`): a bar over
    the steps with loss, accuracy and ETA on a terminal; in a log one line per epoch
    (``train SmallVGG epoch 1/3: loss 1.2345, accuracy 0.6012, 40 s, ETA 80 s``);
    ``False`` prints nothing.
    """
    labels = _check_xy(model, images, labels)
    if eval_images is not None:
        eval_labels = _check_xy(model, eval_images, eval_labels, name="eval_images")
    n, bs = images.shape[0], int(config.batch_size)
    if config.epochs < 1 or bs < 1:
        raise InputError(f"config: epochs and batch_size must be >= 1, got {config}")
    bs = min(bs, n)
    if data_sharding is not None and bs % len(data_sharding.device_set):
        raise InputError(f"config.batch_size {bs} is not a multiple of the "
                         f"{len(data_sharding.device_set)} devices of data_sharding")
    put = (lambda a: jax.device_put(a, data_sharding)) if data_sharding is not None \
        else jnp.asarray
    steps_per_epoch = n // bs
    total = steps_per_epoch * config.epochs
    tx = _optimizer(float(config.learning_rate), float(config.weight_decay),
                    min(int(config.warmup_steps), max(total // 4, 1)), total)

    model.train()
    graphdef, params, other = nnx.split(model, nnx.Param, ...)
    opt_state = tx.init(params)
    rng = np.random.default_rng(config.seed)
    history = {"loss": [], "train_accuracy": [], "eval_accuracy": [], "steps": total}
    start, cpu_start = time.perf_counter(), time.process_time()
    bar = _progress.bar(total, desc=f"train {type(model).__name__}", unit="step",
                        progress=progress, auto_lines=False)
    for epoch in range(config.epochs):
        order = rng.permutation(n)
        losses, corrects = [], []
        for s in range(steps_per_epoch):
            idx = np.sort(order[s * bs:(s + 1) * bs])
            params, other, opt_state, loss, correct = _train_step(
                graphdef, params, other, opt_state, put(images[idx]), put(labels[idx]), tx)
            losses.append(loss)
            corrects.append(correct)
            bar.update(1)
            if s % 10 == 9 and bar.mode == "bar":   # a cheap running readout for the bar
                bar.set_postfix(loss=float(loss),
                                acc=float(jnp.sum(jnp.stack(corrects))) / ((s + 1) * bs))
        epoch_loss = float(jnp.mean(jnp.stack(losses)))
        if not np.isfinite(epoch_loss):
            bar.close()
            raise FloatingPointError(f"training diverged: mean loss {epoch_loss} in epoch "
                                     f"{len(history['loss']) + 1}; lower the learning rate")
        history["loss"].append(epoch_loss)
        history["train_accuracy"].append(
            float(jnp.sum(jnp.stack(corrects))) / (steps_per_epoch * bs))
        if eval_images is not None:
            nnx.update(model, params, other)
            history["eval_accuracy"].append(evaluate(model, eval_images, eval_labels))
            model.train()
        bar.set_postfix(loss=epoch_loss, acc=history["train_accuracy"][-1])
        acc = (f", eval accuracy {history['eval_accuracy'][-1]:.4f}"
               if history["eval_accuracy"] else "")
        eta = bar.eta()
        bar.log(f"train {type(model).__name__} epoch {epoch + 1}/{config.epochs}: loss "
                f"{epoch_loss:.4f}, accuracy {history['train_accuracy'][-1]:.4f}{acc}, "
                f"{time.perf_counter() - start:.0f} s"
                + (f", ETA {eta:.0f} s" if eta and epoch + 1 < config.epochs else ""))
    bar.close()
    nnx.update(model, params, other)
    model.eval()
    history["seconds"] = time.perf_counter() - start
    history["cpu_seconds"] = time.process_time() - cpu_start
    return history
