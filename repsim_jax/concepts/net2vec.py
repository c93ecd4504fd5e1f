r"""Net2Vec supervised concept vectors (Fong & Vedaldi, CVPR 2018), all concepts x layers
trained at once.

For concept :math:`c` and a layer with activations :math:`A \in \mathbb{R}^{h \times w
\times C}` a 1x1 convolution :math:`(w_c \in \mathbb{R}^C, b_c)` gives a logit map that is
upsampled bilinearly to the mask resolution BEFORE the sigmoid:

.. math:: P_c(x) = \sigma\big(\mathrm{up}(\textstyle\sum_k w_{ck} A_k(x) + b_c)\big).

Optionally (the original Net2Vec segmentation setting) the inputs are binarised per channel
at the top-``q`` quantile of that channel over the training set, :math:`A_k \leftarrow
[A_k > \theta_k]` (``binarize_quantile=0.995`` is the top 0.5 %).

Losses over a batch of masks :math:`M \in \{0, 1\}`, with
:math:`\alpha_c = 1 - \overline{M_c}` (one minus the mean fraction of concept pixels over
the training set):

* ``"balanced_linear"`` (Net2Vec, default):
  :math:`L = -\mathrm{mean}\big(\alpha M P + (1 - \alpha)(1 - M)(1 - P)\big)`;
* ``"balanced_bce"``: :math:`L = -\mathrm{mean}\big(\alpha M \log P +
  (1 - \alpha)(1 - M) \log(1 - P)\big)`;
* ``"tversky"``: :math:`L = 1 - TP / (TP + 0.7\,FP + 0.3\,FN)` with soft counts
  :math:`TP = \sum PM`, :math:`FP = \sum P(1 - M)`, :math:`FN = \sum (1 - P) M`
  (the false-positive weight of continental/hybrid_learning).

The parameters of every (layer, concept) pair are disjoint, so the SUM of their losses has
exactly the per-pair gradients: all concepts of all equally-shaped layers train in one
jit-compiled, vmapped computation (an ``einsum`` over a (L, B, h, w, C) batch), with one
optax optimiser (default SGD, momentum 0.9, as the original). Layers of different shapes
form separate groups.

Evaluation is the set IoU over the whole test set at threshold :math:`\tau = 0.5`:

.. math:: \mathrm{IoU}_c = \frac{\sum_x |[P_c(x) > \tau] \wedge M_c(x)|}
                              {\sum_x |[P_c(x) > \tau] \vee M_c(x)|}.
"""
from __future__ import annotations

import dataclasses

from repsim_jax._results import result
import functools
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from repsim_jax._checks import InputError, as_float_array, unknown_name

__all__ = ["LOSSES", "Net2VecConfig", "Net2VecResult", "concept_alpha", "net2vec_loss",
           "train_net2vec", "evaluate_net2vec", "net2vec", "net2vec_kfold",
           "Net2VecKFold", "concept_probability_maps"]

LOSSES = ("balanced_linear", "balanced_bce", "tversky")


@dataclasses.dataclass(frozen=True)
class Net2VecConfig:
    """Training settings (defaults: the original Net2Vec recipe, except ``learning_rate``,
    see below).

    ``learning_rate``: the original 1e-4 was tuned for AlexNet/VGG conv activations in the
    tens with summed losses; here activations are standardised per channel (``standardize``:
    divided by their RMS over the training set) and losses are pixel means, so a step of
    1.0 is used (measured: stable and best of 1e-2 / 0.1 / 1.0 for all three losses on
    planted data, and with the balanced linear loss on both built-in CNNs).
    ``optimizer`` overrides the SGD-with-momentum default (any optax transformation).
    """
    loss: str = "balanced_linear"
    learning_rate: float = 1.0
    momentum: float = 0.9
    epochs: int = 30
    batch_size: int = 16
    threshold: float = 0.5
    binarize_quantile: float | None = None
    standardize: bool = True
    tversky_fp_weight: float = 0.7
    init_scale: float = 0.01
    seed: int = 0
    optimizer: optax.GradientTransformation | None = None
    progress: bool = True


@result(meta=("layers", "concept_names"))
class Net2VecResult:
    """Trained concept filters.

    Attributes:
      layers: layer names, in the order of the rows of ``iou``.
      concept_names: concept names, the columns of ``iou``.
      weights: {layer: (K, C)} concept filters (acting on the preprocessed activations).
      bias: {layer: (K,)}.
      scale: {layer: (C,)} per-channel divisor of the standardisation (ones if off).
      channel_thresholds: {layer: (C,)} binarisation thresholds, or None.
      alpha: (K,) loss balance per concept.
      iou: (L, K) set IoU on the evaluation set (nan before evaluation).
      loss_history: {group shape: (epochs,) mean training loss}.
    """
    layers: list
    concept_names: list
    weights: dict
    bias: dict
    scale: dict
    channel_thresholds: dict | None
    alpha: np.ndarray
    iou: np.ndarray
    loss_history: dict

    def concept_vectors(self, layer: str) -> np.ndarray:
        """(K, C) concept vectors in the units of the raw activations (the 1x1 filters
        divided by the standardisation scale)."""
        return np.asarray(self.weights[layer]) / np.asarray(self.scale[layer])[None, :]

    def best_layers(self) -> dict:
        """{concept: (layer, IoU)} at the layer of highest IoU."""
        best = np.nanargmax(np.where(np.isnan(self.iou), -1, self.iou), axis=0)
        return {c: (self.layers[i], float(self.iou[i, j]))
                for j, (c, i) in enumerate(zip(self.concept_names, best))}


# ----------------------------------------------------------------------------- checks
def _check_masks(masks, n_expected: int | None, names, what="masks"):
    masks = np.asarray(masks)
    if masks.ndim != 4:
        raise InputError(f"{what}: expected (N, H, W, K) boolean concept masks, got shape "
                         f"{tuple(masks.shape)}")
    if masks.dtype != np.bool_:
        if not np.isin(masks, (0, 1)).all():
            raise InputError(f"{what}: expected boolean (0/1) masks")
        masks = masks.astype(bool)
    if n_expected is not None and masks.shape[0] != n_expected:
        raise InputError(f"{what} have {masks.shape[0]} inputs but the activations have "
                         f"{n_expected}")
    counts = masks.reshape(-1, masks.shape[-1]).sum(0)
    empty = [names[i] if names is not None else str(i) for i in np.flatnonzero(counts == 0)]
    if empty:
        raise InputError(f"{what}: concept(s) with empty masks (no positive pixel): "
                         f"{', '.join(empty)}; drop them or add examples")
    return masks


def _check_acts(acts) -> dict:
    if not isinstance(acts, Mapping):
        acts = {"layer": acts}
    if not acts:
        raise InputError("activations: no layer given")
    out, n0 = {}, None
    for name, a in acts.items():
        a = as_float_array(a, f"activations[{name!r}]", ndim=(2, 4))
        if a.ndim == 2:
            a = a[:, None, None, :]
        if n0 is None:
            n0 = (name, a.shape[0])
        elif a.shape[0] != n0[1]:
            raise InputError(f"layer {name!r} has {a.shape[0]} inputs but layer {n0[0]!r} has "
                             f"{n0[1]}")
        out[name] = a
    return out


def _groups(acts: dict) -> dict:
    groups: dict = {}
    for name, a in acts.items():
        groups.setdefault(tuple(a.shape[1:]), []).append(name)
    return groups


# ----------------------------------------------------------------------------- maths
def concept_alpha(masks) -> np.ndarray:
    """alpha_c = 1 - mean fraction of pixels of concept c over the masks (N, H, W, K)."""
    m = np.asarray(masks)
    return 1.0 - m.reshape(-1, m.shape[-1]).mean(0, dtype=np.float64)


def _upsampled_logits(x, w, b, size):
    """x (L, B, h, w, C), w (L, K, C), b (L, K) -> logits (L, B, H, W, K) after bilinear
    upsampling."""
    z = jnp.einsum("lbhwc,lkc->lbhwk", x, w) + b[:, None, None, None, :]
    L, B, _, _, K = z.shape
    if z.shape[2:4] != tuple(size):
        z = jax.image.resize(z, (L, B, size[0], size[1], K), method="linear", antialias=False)
    return z


def net2vec_loss(logits, masks, alpha, loss: str = "balanced_linear", fp_weight: float = 0.7):
    """Per-(layer, concept) loss (L, K) of logits (L, B, H, W, K) against masks (B, H, W, K)
    with balance ``alpha`` (K,); see the module docstring."""
    m = masks.astype(logits.dtype)[None]
    axes = (1, 2, 3)
    if loss == "balanced_linear":
        p = jax.nn.sigmoid(logits)
        return -jnp.mean(alpha * m * p + (1 - alpha) * (1 - m) * (1 - p), axis=axes)
    if loss == "balanced_bce":
        return -jnp.mean(alpha * m * jax.nn.log_sigmoid(logits)
                         + (1 - alpha) * (1 - m) * jax.nn.log_sigmoid(-logits), axis=axes)
    if loss == "tversky":
        p = jax.nn.sigmoid(logits)
        tp = jnp.sum(p * m, axis=axes)
        fp = jnp.sum(p * (1 - m), axis=axes)
        fn = jnp.sum((1 - p) * m, axis=axes)
        return 1 - tp / (tp + fp_weight * fp + (1 - fp_weight) * fn + 1e-6)
    raise unknown_name("loss", loss, LOSSES)


def _preprocess(x, scale, thresholds):
    if thresholds is not None:
        return (x > thresholds[:, None, None, None, :]).astype(jnp.float32)
    return x / scale[:, None, None, None, :]


@functools.partial(jax.jit, static_argnames=("tx", "loss", "batch_size", "size", "fp_weight"),
                   donate_argnames=("params", "opt_state"))
def _train_epoch(params, opt_state, key, X, M, alpha, scale, thresholds, *, tx, loss,
                 batch_size, size, fp_weight):
    N = X.shape[1]
    steps = max(N // batch_size, 1)
    B = min(batch_size, N)
    perm = jax.random.permutation(key, N)[: steps * B].reshape(steps, B)

    def loss_fn(params, xb, mb):
        z = _upsampled_logits(_preprocess(xb, scale, thresholds), params["w"], params["b"],
                              size)
        per = net2vec_loss(z, mb, alpha, loss, fp_weight)
        return jnp.sum(per), jnp.mean(per)

    def step(carry, idx):
        params, opt_state = carry
        xb = jnp.take(X, idx, axis=1)
        mb = jnp.take(M, idx, axis=0)
        grads, mean_loss = jax.grad(loss_fn, has_aux=True)(params, xb, mb)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), mean_loss

    (params, opt_state), losses = jax.lax.scan(step, (params, opt_state), perm)
    return params, opt_state, jnp.mean(losses)


@functools.partial(jax.jit, static_argnames=("batch_size", "size", "threshold"))
def _set_iou_counts(w, b, X, M, scale, thresholds, *, batch_size, size, threshold):
    """Intersections and unions (L, K) of [P > threshold] and M over all inputs."""
    N = X.shape[1]
    n_chunks = -(-N // batch_size)
    logit_thr = float(np.log(threshold / (1 - threshold)))

    def body(acc, c):
        start = jnp.minimum(c * batch_size, N - batch_size)
        xb = jax.lax.dynamic_slice_in_dim(X, start, batch_size, axis=1)
        mb = jax.lax.dynamic_slice_in_dim(M, start, batch_size, axis=0)
        valid = ((start + jnp.arange(batch_size)) >= c * batch_size)[None, :, None, None, None]
        z = _upsampled_logits(_preprocess(xb, scale, thresholds), w, b, size)
        pred = (z > logit_thr) & valid
        m = mb[None] & valid
        inter = jnp.sum(pred & m, axis=(1, 2, 3), dtype=jnp.float32)
        union = jnp.sum(pred | m, axis=(1, 2, 3), dtype=jnp.float32)
        return (acc[0] + inter, acc[1] + union), None

    L, K = b.shape
    zeros = jnp.zeros((L, K), jnp.float32)
    (inter, union), _ = jax.lax.scan(body, (zeros, zeros), jnp.arange(n_chunks))
    return inter, union


# ----------------------------------------------------------------------------- API
def train_net2vec(acts, masks, concept_names: Sequence[str] | None = None,
                  config: Net2VecConfig = Net2VecConfig()) -> Net2VecResult:
    """Trains one 1x1 concept filter per (layer, concept).

    Args:
      acts: {layer: (N, h, w, C)} activations (or one array); (N, C) layers count as 1x1.
      masks: (N, H, W, K) boolean concept masks on the same inputs.
      concept_names: K names (default ``"0".."K-1"``).
      config: :class:`Net2VecConfig`.

    Returns a :class:`Net2VecResult` (``iou`` is nan: see :func:`evaluate_net2vec`).
    """
    acts = _check_acts(acts)
    N = next(iter(acts.values())).shape[0]
    K = np.asarray(masks).shape[-1]
    names = list(concept_names) if concept_names is not None else [str(i) for i in range(K)]
    if len(names) != K:
        raise InputError(f"concept_names: {len(names)} names for masks with {K} concepts")
    masks = _check_masks(masks, N, names)
    if config.loss not in LOSSES:
        raise unknown_name("loss", config.loss, LOSSES)
    size = tuple(masks.shape[1:3])
    alpha = jnp.asarray(concept_alpha(masks), jnp.float32)
    M = jnp.asarray(masks)
    tx = config.optimizer or optax.sgd(config.learning_rate, momentum=config.momentum)
    key = jax.random.PRNGKey(config.seed)
    weights, bias, scales, thresholds, history = {}, {}, {}, {}, {}
    from repsim_jax import _progress
    for shape, group in _groups(acts).items():
        X = jnp.stack([jnp.asarray(acts[n], jnp.float32) for n in group])   # (L, N, h, w, C)
        L, C = X.shape[0], shape[-1]
        flat = X.reshape(L, -1, C)
        scale = (jnp.sqrt(jnp.mean(flat * flat, axis=1)) + 1e-6 if config.standardize
                 else jnp.ones((L, C), jnp.float32))
        thr = None
        if config.binarize_quantile is not None:
            thr = jnp.quantile(flat, config.binarize_quantile, axis=1)
        del flat
        key, k_init = jax.random.split(key)
        params = {"w": config.init_scale * jax.random.normal(k_init, (L, K, C), jnp.float32),
                  "b": jnp.zeros((L, K), jnp.float32)}
        opt_state = tx.init(params)
        losses = []
        epochs = range(config.epochs)
        epochs = _progress.track(epochs, desc=f"net2vec {len(group)} layer(s) {shape}",
                                 unit="epoch", progress=config.progress)
        for _ in epochs:
            key, k_ep = jax.random.split(key)
            params, opt_state, ep_loss = _train_epoch(
                params, opt_state, k_ep, X, M, alpha, scale, thr, tx=tx, loss=config.loss,
                batch_size=config.batch_size, size=size, fp_weight=config.tversky_fp_weight)
            losses.append(ep_loss)
        history[shape] = np.asarray(jnp.stack(losses)) if losses else np.zeros(0)
        for i, n in enumerate(group):
            weights[n], bias[n], scales[n] = params["w"][i], params["b"][i], scale[i]
            if thr is not None:
                thresholds[n] = thr[i]
    layers = list(acts)
    return Net2VecResult(layers, names, weights, bias, scales,
                         thresholds if config.binarize_quantile is not None else None,
                         np.asarray(alpha), np.full((len(layers), K), np.nan), history)


def _group_params(result: Net2VecResult, group):
    w = jnp.stack([result.weights[n] for n in group])
    b = jnp.stack([result.bias[n] for n in group])
    s = jnp.stack([result.scale[n] for n in group])
    t = (jnp.stack([result.channel_thresholds[n] for n in group])
         if result.channel_thresholds is not None else None)
    return w, b, s, t


def _result_acts(result: Net2VecResult, acts) -> dict:
    acts = _check_acts(acts)
    missing = [n for n in result.layers if n not in acts]
    if missing:
        raise InputError(f"activations lack the trained layer(s) {', '.join(missing)}")
    return {n: acts[n] for n in result.layers}


def evaluate_net2vec(result: Net2VecResult, acts, masks, *, threshold: float = 0.5,
                     batch_size: int = 64) -> Net2VecResult:
    """Set IoU (L, K) over all given inputs at ``threshold``; returns the result with
    ``iou`` filled in."""
    acts = _result_acts(result, acts)
    N = next(iter(acts.values())).shape[0]
    masks = _check_masks(masks, N, result.concept_names, "test masks")
    if masks.shape[-1] != len(result.concept_names):
        raise InputError(f"test masks have {masks.shape[-1]} concepts, the filters "
                         f"{len(result.concept_names)}")
    if not 0 < threshold < 1:
        raise InputError(f"threshold: expected a probability in (0, 1), got {threshold}")
    size = tuple(masks.shape[1:3])
    M = jnp.asarray(masks)
    iou = np.full((len(result.layers), len(result.concept_names)), np.nan)
    for shape, group in _groups(acts).items():
        X = jnp.stack([jnp.asarray(acts[n], jnp.float32) for n in group])
        w, b, s, t = _group_params(result, group)
        inter, union = _set_iou_counts(w, b, X, M, s, t, batch_size=min(batch_size, N),
                                       size=size, threshold=float(threshold))
        vals = np.where(np.asarray(union) > 0, np.asarray(inter) / np.maximum(
            np.asarray(union), 1), 0.0)
        for i, n in enumerate(group):
            iou[result.layers.index(n)] = vals[i]
    return dataclasses.replace(result, iou=iou)


def net2vec(acts_train, masks_train, acts_test, masks_test,
            concept_names: Sequence[str] | None = None,
            config: Net2VecConfig = Net2VecConfig()) -> Net2VecResult:
    """Trains on (acts_train, masks_train) and reports the set IoU on the test set."""
    result = train_net2vec(acts_train, masks_train, concept_names, config)
    return evaluate_net2vec(result, acts_test, masks_test, threshold=config.threshold)


@result(meta=("layers", "concept_names"))
class Net2VecKFold:
    """What :func:`net2vec_kfold` returns.

    Attributes:
      iou_mean, iou_std: (L, K) mean / standard deviation over the folds of the held-out
        set IoU (rows ``layers``, columns ``concept_names``).
      folds: one :class:`Net2VecResult` per fold (trained on the others, ``iou`` on it).
      layers, concept_names: the names of the rows / columns.

    Unpacking ``iou_mean, iou_std, results = net2vec_kfold(...)`` (the 3-tuple this
    function returned before) still works through ``__iter__``; deprecated.
    """
    iou_mean: np.ndarray
    iou_std: np.ndarray
    folds: list
    layers: tuple = ()
    concept_names: tuple = ()

    def __iter__(self):          # the old 3-tuple; deprecated
        return iter((self.iou_mean, self.iou_std, self.folds))

    def iou(self, layer: str, concept: str) -> float:
        """Mean held-out IoU of one named (layer, concept)."""
        for name, names in ((layer, self.layers), (concept, self.concept_names)):
            if name not in names:
                raise unknown_name("name", name, list(names))
        return float(self.iou_mean[self.layers.index(layer),
                                   self.concept_names.index(concept)])


def net2vec_kfold(acts, masks, concept_names: Sequence[str] | None = None, *, folds: int = 5,
                  config: Net2VecConfig = Net2VecConfig()) -> Net2VecKFold:
    """k-fold cross-validated set IoU: trains on k-1 folds, evaluates on the held-out one.

    Returns a :class:`Net2VecKFold` (``iou_mean (L, K)``, ``iou_std (L, K)``, ``folds``);
    it still unpacks as the old ``(iou_mean, iou_std, results)``.
    """
    acts = _check_acts(acts)
    N = next(iter(acts.values())).shape[0]
    if not 2 <= folds <= N:
        raise InputError(f"folds: expected 2 <= folds <= N={N}, got {folds}")
    order = np.random.default_rng(config.seed).permutation(N)
    parts = np.array_split(order, folds)
    masks = np.asarray(masks)
    results = []
    for f in range(folds):
        test = np.sort(parts[f])
        train = np.sort(np.concatenate([parts[g] for g in range(folds) if g != f]))
        tr = {n: jnp.take(jnp.asarray(a), train, axis=0) for n, a in acts.items()}
        te = {n: jnp.take(jnp.asarray(a), test, axis=0) for n, a in acts.items()}
        results.append(net2vec(tr, masks[train], te, masks[test], concept_names, config))
    ious = np.stack([r.iou for r in results])
    return Net2VecKFold(ious.mean(0), ious.std(0), results, tuple(results[0].layers),
                        tuple(results[0].concept_names))


def concept_probability_maps(result: Net2VecResult, acts, size: Sequence[int] | None = None,
                             *, layers: Sequence[str] | None = None, batch_size: int = 256):
    """Concept probability maps P (L, N, H, W, K) of the given layers (default all trained
    layers), each upsampled to ``size`` (default: the largest layer resolution) — the input
    of :func:`repsim_jax.concepts.pairwise_similarity`."""
    acts = _result_acts(result, acts)
    layers = list(layers) if layers is not None else list(result.layers)
    for n in layers:
        if n not in result.layers:
            raise unknown_name("layer", n, result.layers)
    if size is None:
        size = max((acts[n].shape[1:3] for n in layers), key=lambda s: s[0] * s[1])
    size = (int(size[0]), int(size[1]))

    @jax.jit
    def maps(x, w, b, s, t):
        return jax.nn.sigmoid(_upsampled_logits(_preprocess(x, s, t), w, b, size))

    out = []
    for n in layers:
        w, b, s, t = _group_params(result, [n])
        a = jnp.asarray(acts[n], jnp.float32)
        out.append(jnp.concatenate([maps(a[None, i:i + batch_size], w, b, s, t)[0]
                                    for i in range(0, a.shape[0], batch_size)]))
    return jnp.stack(out)
