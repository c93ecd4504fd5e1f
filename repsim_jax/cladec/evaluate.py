"""Evaluating ClaDec against the reference auto-encoder.

Three measurements (Schneider & Vlachos 2022, Sec. "Evaluation"):

* **Reconstruction error** of decoded images ``x_hat``: per image
  :math:`\\sum_{hwc} (\\hat x - x)^2` averaged over images (``reduction="sum"``, the unit of
  the paper's reproduction numbers) or the per-pixel mean (``"mean"``).
* **Retraining accuracy**: a fresh classifier (the same architecture, freshly initialised,
  identical initial weights for every set) is trained on the decoded *training* images and
  tested on the decoded *test* images. ClaDec's claim: its reconstructions keep more class
  information than the auto-encoder's (higher accuracy) although the auto-encoder reconstructs
  the input better (lower error). All decoded sets train in one jitted step (vmapped,
  or unrolled on CPU: see :func:`~repsim_jax.cladec.train.map_members`).
* **Saliency comparison** by a deletion test. A relevance map ``r (N, H, W)`` ranks pixels;
  deleting the top fraction ``f`` (replacing them by a baseline, by default the data set's
  mean image) and reading the classifier's probability of the true class,

  .. math:: p_r(f) = \\frac1N \\sum_n \\mathrm{softmax}(\\mathrm{Cla}(x_n \\odot (1 - m^f_n)
            + b \\odot m^f_n))_{y_n},

  gives a curve; the lower its mean over ``f`` (the deletion area), the more class-relevant
  the pixels ``r`` points at. Compared maps: the gradient saliency
  :math:`\\sum_c |\\partial \\mathrm{Cla}(x)_y / \\partial x_{hwc}|` and the ClaDec-vs-AE
  difference :math:`\\sum_c |D_{\\mathrm{ClaDec}}(x) - D_{\\mathrm{AE}}(x)|_{hwc}` (what the
  layer keeps beyond plain reconstruction), against a random ranking.
"""
from __future__ import annotations

import functools
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from repsim_jax._checks import InputError, as_float_array, check_same_length, unknown_name
from repsim_jax._results import result
from repsim_jax.cladec.decoder import reinitialize
from repsim_jax.cladec.train import (MemberSources, _check_labels, _logits, _stack, _taps,
                                     _with_mode, check_images, frozen, map_members,
                                     train_members)
from repsim_jax.data import views

__all__ = ["reconstruction_error", "RetrainAccuracy", "retrain_accuracy", "gradient_saliency",
           "difference_map", "deletion_curve", "saliency_comparison"]


def reconstruction_error(images, reconstructions, *, reduction: str = "sum",
                         batch_size: int = 256) -> float:
    """Mean over images of the per-image sum (``"sum"``) or mean (``"mean"``) squared error.

    Either argument may be a streamed source (a lazy data set, the lazy view
    :func:`~repsim_jax.cladec.train.reconstruct` returns for one): then both are read
    ``batch_size`` images at a time and the error is reduced chunk by chunk (float64
    accumulation; the in-memory path is unchanged)."""
    if reduction not in ("sum", "mean"):
        raise InputError(f"reduction: expected 'sum' or 'mean', got {reduction!r}")
    streamed = views.is_source(images) or views.is_source(reconstructions)
    for name, x in (("images", images), ("reconstructions", reconstructions)):
        if streamed and views.is_source(x):
            if len(x.shape) != 4:
                raise InputError(f"{name}: expected 4 dimensions, got shape {tuple(x.shape)}")
        else:
            as_float_array(x, name, ndim=4)
    if tuple(images.shape) != tuple(reconstructions.shape):
        raise InputError(f"reconstructions: shape {tuple(reconstructions.shape)} differs from "
                         f"images {tuple(images.shape)}")
    if streamed:
        total, n = 0.0, int(images.shape[0])
        for s, x in views.chunks(images, batch_size):
            r = np.asarray(reconstructions[s:s + len(x)])
            as_float_array(x, "images", ndim=4)
            as_float_array(r, "reconstructions", ndim=4)
            total += float(_sq_sum(jnp.asarray(r, jnp.float32), jnp.asarray(x, jnp.float32)))
        per_value = n if reduction == "sum" else n * int(np.prod(images.shape[1:]))
        return total / per_value
    sq = (jnp.asarray(reconstructions, jnp.float32) - jnp.asarray(images, jnp.float32)) ** 2
    if reduction == "sum":
        return float(jnp.mean(jnp.sum(sq, axis=(1, 2, 3))))
    return float(jnp.mean(sq))


@jax.jit
def _sq_sum(r, x):
    return jnp.sum((r - x) ** 2, dtype=jnp.float32)


def _sets(name, sets, chunk: int = 64):
    """The image sets stacked ``(K, N, ...)`` on the device, or, when any of them is a
    streamed source, a :class:`~repsim_jax.cladec.train.MemberSources` read per minibatch."""
    if not isinstance(sets, Mapping) or not sets:
        raise InputError(f"{name}: expected a non-empty dict name -> images (N, H, W, C)")
    for k, v in sets.items():
        check_images(v, f"{name}[{k!r}]", chunk=chunk)
    shapes = {tuple(v.shape) for v in sets.values()}
    if len(shapes) != 1:
        raise InputError(f"{name}: all image sets must have one shape, got {sorted(shapes)}")
    if any(views.is_source(v) for v in sets.values()):
        return MemberSources(list(sets.values()))
    return jnp.stack([jnp.asarray(v, jnp.float32) for v in sets.values()])


@result(meta=("steps", "n_train", "n_test"), eq=False)
class RetrainAccuracy:
    """Result of :func:`retrain_accuracy`.

    ``accuracy`` ``{name: test accuracy}`` keyed by the names of the input sets (in their
    order); ``steps`` training steps of each fresh classifier; ``n_train`` / ``n_test``
    images per training / test set. It reads like that mapping: ``acc["cladec"]`` is
    ``acc.accuracy["cladec"]``, and ``len``, ``in``, iteration, ``keys``/``values``/``items``
    go over the set names.
    """
    accuracy: dict
    steps: int
    n_train: int
    n_test: int

    def __getitem__(self, name):
        if name not in self.accuracy:
            raise unknown_name("image set", name, list(self.accuracy))
        return self.accuracy[name]

    def __iter__(self):
        return iter(self.accuracy)

    def __len__(self) -> int:
        return len(self.accuracy)

    def __contains__(self, name) -> bool:
        return name in self.accuracy

    def keys(self):
        return self.accuracy.keys()

    def values(self):
        return self.accuracy.values()

    def items(self):
        return self.accuracy.items()


def retrain_accuracy(classifier: nnx.Module, train_sets: Mapping[str, np.ndarray], train_labels,
                     test_sets: Mapping[str, np.ndarray], test_labels, *, steps: int = 500,
                     batch_size: int = 64, lr: float = 1e-3, weight_decay: float = 0.0,
                     seed: int = 0, progress: bool = True, member_map: str = "auto",
                     eval_batch_size: int = 512) -> RetrainAccuracy:
    """Test accuracy of a fresh ``classifier`` trained on each decoded training set.

    ``train_sets`` / ``test_sets``: ``{name: images}`` with the same names (e.g. ``"input"``,
    ``"cladec alpha=0.5"``, ``"ae"``). One fresh copy per name (same initial weights), all
    trained in one step (``member_map``, see :func:`~repsim_jax.cladec.train.map_members`);
    returns a :class:`RetrainAccuracy` whose ``accuracy`` is ``{name: accuracy on
    test_sets[name]}``. ``classifier`` may be any capture-convention
    model taking these images (the paper retrains the explained classifier's architecture).

    Any set may be a streamed source (a lazy data set, the lazy reconstructions of
    :func:`~repsim_jax.cladec.train.reconstruct`): training then gathers each minibatch of
    every set by index on the host (:func:`~repsim_jax.cladec.train.train_members`) and the
    test accuracy is counted ``eval_batch_size`` images at a time, so memory is bounded by
    the batch sizes, not by N.
    """
    if set(train_sets) != set(test_sets):
        raise InputError(f"train_sets and test_sets name different sets: {sorted(train_sets)} "
                         f"vs {sorted(test_sets)}")
    names = list(train_sets)
    xtr = _sets("train_sets", train_sets, batch_size)
    xte = _sets("test_sets", {k: test_sets[k] for k in names}, eval_batch_size)
    fresh = reinitialize(classifier, seed)
    graphdef, params, rest = _with_mode(fresh, train_bn=True)
    eval_graphdef = _with_mode(fresh, train_bn=False)[0]
    num_classes = int(jax.eval_shape(lambda p, r, x: _logits(graphdef, p, r, x), params, rest,
                                     jax.ShapeDtypeStruct((1, *tuple(xtr.shape)[2:]),
                                                          jnp.float32))
                      .shape[-1])
    ytr = _check_labels(train_labels, np.empty(tuple(xtr.shape)[1:2]), num_classes)
    yte = _check_labels(test_labels, np.empty(tuple(xte.shape)[1:2]), num_classes)
    k = len(names)
    params_k = _stack([params] * k)
    rest_k = _stack([rest] * k)

    def loss_all(p, aux, consts, batch, mbatch):
        def member(p, r, x):
            _, logits, r = _taps(graphdef, p, r, x, ())
            return optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean(), r
        return map_members(member, p, aux, mbatch["x"], mode=member_map)

    params_k, rest_k, _ = train_members(
        loss_all, params_k, rest_k, {}, {"y": jnp.asarray(ytr)}, member_data={"x": xtr},
        steps=steps, batch_size=batch_size, lr=lr, weight_decay=weight_decay, seed=seed,
        progress=progress, desc=f"retrain {k} classifiers")

    out = {}
    for i, name in enumerate(names):
        p = jax.tree.map(lambda a: a[i], params_k)
        r = jax.tree.map(lambda a: a[i], rest_k)
        if isinstance(xte, MemberSources):   # streamed: one chunk of one set at a time
            blocks = (jnp.asarray(x, jnp.float32)
                      for _, x in views.chunks(xte.sources[i], eval_batch_size))
        else:
            blocks = (xte[i, j:j + eval_batch_size]
                      for j in range(0, xte.shape[1], eval_batch_size))
        pred = np.concatenate([np.asarray(_predict(p, r, x, graphdef=eval_graphdef))
                               for x in blocks])
        out[name] = float(np.mean(pred == yte))
    return RetrainAccuracy(accuracy=out, steps=int(steps), n_train=int(xtr.shape[1]),
                           n_test=int(xte.shape[1]))


def gradient_saliency(classifier: nnx.Module, images, labels, *,
                      batch_size: int = 256) -> np.ndarray:
    """``(N, H, W)``: :math:`\\sum_c |\\partial \\mathrm{logit}_y / \\partial x_{hwc}|`."""
    check_images(images)
    graphdef, (params, rest) = frozen(classifier)

    num_classes = int(_logits(graphdef, params, rest, jnp.asarray(images[:1])).shape[-1])
    labels = _check_labels(labels, images, num_classes)
    return np.concatenate([np.asarray(_saliency(params, rest,
                                                jnp.asarray(images[i:i + batch_size],
                                                            jnp.float32),
                                                jnp.asarray(labels[i:i + batch_size]),
                                                graphdef=graphdef))
                           for i in range(0, len(images), batch_size)])


def difference_map(cladec_images, ae_images) -> np.ndarray:
    """``(N, H, W)``: :math:`\\sum_c |D_{ClaDec}(x) - D_{AE}(x)|`, what ClaDec adds to the AE."""
    as_float_array(cladec_images, "cladec_images", ndim=4)
    as_float_array(ae_images, "ae_images", ndim=4)
    if tuple(cladec_images.shape) != tuple(ae_images.shape):
        raise InputError(f"ae_images: shape {tuple(ae_images.shape)} differs from "
                         f"cladec_images {tuple(cladec_images.shape)}")
    return np.abs(np.asarray(cladec_images, np.float32)
                  - np.asarray(ae_images, np.float32)).sum(-1)


# module-level jits (graph definitions static): equal shapes compile once across calls
@functools.partial(jax.jit, static_argnames=("graphdef",))
def _predict(p, r, x, *, graphdef):
    return jnp.argmax(_logits(graphdef, p, r, x), axis=-1)


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _saliency(params, rest, x, y, *, graphdef):
    def score(x):
        logits = _logits(graphdef, params, rest, x)
        return jnp.sum(jnp.take_along_axis(logits, y[:, None], axis=1))
    return jnp.sum(jnp.abs(jax.grad(score)(x)), axis=-1)


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _true_prob(params, rest, xb, rb, yb, base, fr, *, graphdef):
    masks = _deletion_masks(rb, fr)[..., None]                         # (F, B, H, W, 1)
    deleted = jnp.where(masks, base, xb[None])                         # (F, B, H, W, C)
    f, b = deleted.shape[:2]
    logits = _logits(graphdef, params, rest, deleted.reshape(f * b, *xb.shape[1:]))
    p = jax.nn.softmax(logits, axis=-1).reshape(f, b, -1)
    return jnp.sum(jnp.take_along_axis(p, yb[None, :, None], axis=2)[..., 0], axis=1)


def _deletion_masks(relevance: jax.Array, fractions: jax.Array) -> jax.Array:
    """``(F, N, H, W)`` bool: the top ``round(f H W)`` pixels of each map (ties by index)."""
    n, h, w = relevance.shape
    order = jnp.argsort(-relevance.reshape(n, h * w), axis=1, stable=True)
    ranks = jnp.argsort(order, axis=1).reshape(n, h, w)
    counts = jnp.round(fractions * h * w).astype(jnp.int32)
    return ranks[None] < counts[:, None, None, None]


def deletion_curve(classifier: nnx.Module, images, labels, relevance,
                   fractions: Sequence[float] = (0.05, 0.1, 0.2, 0.3, 0.5), *,
                   baseline: str | float = "mean", batch_size: int = 256) -> np.ndarray:
    """``(F,)``: mean true-class probability after deleting the top ``f`` most relevant pixels.

    ``baseline``: ``"mean"`` (the mean image of ``images``) or a constant fill value.
    """
    check_images(images)
    as_float_array(relevance, "relevance", ndim=3)
    if tuple(relevance.shape) != tuple(images.shape[:3]):
        raise InputError(f"relevance: expected shape {tuple(images.shape[:3])} (N, H, W), got "
                         f"{tuple(relevance.shape)}")
    fr = np.asarray(fractions, np.float32)
    if fr.ndim != 1 or fr.size == 0 or fr.min() < 0 or fr.max() > 1:
        raise InputError(f"fractions: expected a 1-D list in [0, 1], got {fractions!r}")
    x = jnp.asarray(images, jnp.float32)
    if isinstance(baseline, str):
        if baseline != "mean":
            raise InputError(f"baseline: expected 'mean' or a number, got {baseline!r}")
        base = jnp.mean(x, axis=0)
    else:
        base = jnp.full(x.shape[1:], float(baseline), jnp.float32)
    graphdef, (params, rest) = frozen(classifier)
    num_classes = int(_logits(graphdef, params, rest, x[:1]).shape[-1])
    labels = jnp.asarray(_check_labels(labels, images, num_classes))

    total = np.zeros(fr.shape, np.float64)
    step = max(1, batch_size // len(fr))
    rel = jnp.asarray(relevance, jnp.float32)
    for i in range(0, x.shape[0], step):
        total += np.asarray(_true_prob(params, rest, x[i:i + step], rel[i:i + step],
                                          labels[i:i + step], base, jnp.asarray(fr),
                                          graphdef=graphdef))
    return total / x.shape[0]


@result(eq=False)
class SaliencyComparison:
    """Deletion test of several relevance maps (:func:`saliency_comparison`).

    ``fractions`` (F,); ``curves`` {name: (F,)} mean true-class probability after deleting
    each fraction of the most relevant pixels; ``area`` {name: float} (lower = more
    class-relevant pixels highlighted); ``maps`` {name: (N, H, W)}. Indexing by those
    field names (``cmp["curves"]``) works as on the dict returned before.
    """
    fractions: np.ndarray
    curves: dict
    area: dict
    maps: dict

    def __getitem__(self, key):
        if key not in ("fractions", "curves", "area", "maps"):
            raise unknown_name("field", key, ["fractions", "curves", "area", "maps"])
        return getattr(self, key)

    def keys(self):
        return ("fractions", "curves", "area", "maps")


def saliency_comparison(classifier: nnx.Module, images, labels, cladec_images, ae_images, *,
                        fractions: Sequence[float] = (0.05, 0.1, 0.2, 0.3, 0.5),
                        baseline: str | float = "mean", seed: int = 0) -> SaliencyComparison:
    """Deletion curves of gradient saliency, ClaDec-minus-AE difference and a random map.

    Returns a :class:`SaliencyComparison` (fractions, curves, area, maps) with names
    ``"gradient"``, ``"cladec_minus_ae"``, ``"random"``; a lower area = more class-relevant
    pixels highlighted.
    """
    check_images(images)
    check_same_length("images", images, "cladec_images", cladec_images)
    maps = {"gradient": gradient_saliency(classifier, images, labels),
            "cladec_minus_ae": difference_map(cladec_images, ae_images),
            "random": np.asarray(jax.random.uniform(jax.random.key(seed), images.shape[:3]))}
    curves = {k: deletion_curve(classifier, images, labels, m, fractions, baseline=baseline)
              for k, m in maps.items()}
    return SaliencyComparison(np.asarray(fractions, np.float32), curves,
                              {k: float(np.mean(v)) for k, v in curves.items()}, maps)
