"""``explain``: INVERT labels for one neuron, a layer of neurons, or a dict of layers.

See :mod:`repsim_jax.invert.search` for the search and its maths and
:mod:`repsim_jax.invert.auc` for the AUC and the Mann-Whitney test.

Documented results for degenerate inputs:

- a *constant* neuron (all activations equal) has no explanation: its beam is empty,
  ``auc`` NaN, ``p_value`` 1 and ``constant`` True (a warning names the neurons);
- a concept with no positive or no negative input is never part of a formula in the
  default mode (its AUC is undefined); ``compat=True`` scores it like the official code
  (AUC 0, its negation 1), which only lets it into the expansion list;
- NaN / Inf activations, non-boolean labels, a length mismatch, duplicate concept names or
  labels without a single non-trivial concept raise :class:`repsim_jax._checks.InputError`.
"""
from __future__ import annotations

import dataclasses
import warnings
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from repsim_jax._checks import InputError, as_float_array, check_same_length, unknown_name
from repsim_jax._devices import as_mesh, resolve_mesh_alias
from repsim_jax._results import result
from repsim_jax.invert.auc import ALTERNATIVES, benjamini_hochberg, mann_whitney_from_rank_sums
from repsim_jax.invert.formula import Formula, formula_string
from repsim_jax.invert.search import (ConceptTable, SearchConfig, _check_precision,
                                     beam_search, check_chunk, concept_table,
                                     null_best_auc)

__all__ = ["Explanation", "NeuronBeam", "InvertResult", "InvertLayers", "explain",
           "reduce_activations", "resolve_precision", "REDUCTIONS", "PRECISIONS"]

REDUCTIONS = ("mean", "max")


@dataclasses.dataclass(frozen=True)
class Explanation:
    """One formula of a beam."""
    formula: str
    structure: Formula
    auc: float
    concept_fraction: float
    differentiability: float
    p_value: float
    log_p_value: float

    @property
    def length(self) -> int:
        return len(self.structure)


_BEAM_FIELDS = ("explanations", "p_value", "log_p_value", "q_value", "constant",
                "perm_p_value", "layer", "neuron")


@result(meta=_BEAM_FIELDS)
class NeuronBeam:
    """The beam of one neuron (best first) and the tests of its best formula.

    ``p_value`` / ``log_p_value``: the nominal Mann-Whitney test of the best formula, as if
    it had been fixed in advance (it was selected from thousands of candidates: see
    :func:`explain`, "Significance"); ``q_value``: Benjamini-Hochberg of those over the
    neurons of the call; ``perm_p_value``: the selection-aware permutation p-value (None
    unless ``explain(permutations=n)``). ``layer`` / ``neuron``: where it came from.
    """
    explanations: tuple
    p_value: float
    log_p_value: float
    q_value: float
    constant: bool
    perm_p_value: float | None = None
    layer: str = ""
    neuron: int = -1

    def __len__(self) -> int:
        return len(self.explanations)

    def __getitem__(self, i) -> Explanation:
        return self.explanations[i]

    def __iter__(self):
        return iter(self.explanations)

    @property
    def best(self) -> Explanation | None:
        return self.explanations[0] if self.explanations else None


_META = ("concept_names", "params", "layer")


@result(meta=_META)
class InvertResult:
    """Beams of U neurons after every step 1..L (arrays) and their best formulas' tests.

    A sequence of :class:`NeuronBeam`: ``result[u]`` (negative ``u`` counts from the end),
    ``result[2:5]`` (a list), ``len(result)``, ``for beam in result``; ``result.beam(u,
    step)`` is the beam after an earlier step.

    Array attributes (U = neurons, L = steps, B = beam width): ``literals`` (U, L, B, L)
    literal ids (c or C + c for NOT c; -1 none), ``ops`` (U, L, B, L) (0 AND, 1 OR),
    ``auc``, ``concept_fraction``, ``p_value``, ``log_p_value`` (U, L, B), ``valid``
    (U, L, B), ``count`` (U, L, B) inputs where the formula holds; per neuron
    ``best_p_value``, ``best_log_p_value`` (nominal Mann-Whitney test of the best
    formula), ``q_value``, ``log_q_value`` (Benjamini-Hochberg of those over all neurons
    of the call: NOT selection-aware, see :func:`explain`), ``constant``; with
    ``explain(permutations=n)``: ``perm_p_value``, ``perm_q_value`` (U,) and ``null_auc``
    (U, n) (else empty). ``layer``: the layer name for dict inputs ("" otherwise).
    """
    concept_names: tuple
    literals: np.ndarray
    ops: np.ndarray
    auc: np.ndarray
    concept_fraction: np.ndarray
    p_value: np.ndarray
    log_p_value: np.ndarray
    valid: np.ndarray
    count: np.ndarray
    best_p_value: np.ndarray
    best_log_p_value: np.ndarray
    q_value: np.ndarray
    log_q_value: np.ndarray
    constant: np.ndarray
    perm_p_value: np.ndarray
    perm_q_value: np.ndarray
    null_auc: np.ndarray
    params: dict
    layer: str = ""

    def __len__(self) -> int:
        return int(self.auc.shape[0])

    def __getitem__(self, u):
        if isinstance(u, slice):
            return [self.beam(i) for i in range(len(self))[u]]
        if isinstance(u, (bool, np.bool_)) or not isinstance(u, (int, np.integer)):
            raise TypeError(f"InvertResult indices must be integers or slices, not "
                            f"{type(u).__name__}")
        return self.beam(u)

    def __iter__(self):
        return (self.beam(u) for u in range(len(self)))

    def _index(self, u) -> int:
        n = len(self)
        i = int(u)
        if not -n <= i < n:
            raise IndexError(f"neuron index {u} out of range for {n} neurons")
        return i % n

    def formula(self, u: int, step: int, slot: int) -> Formula:
        u = self._index(u)
        return Formula.from_arrays(self.literals[u, step - 1, slot], self.ops[u, step - 1, slot],
                                   len(self.concept_names))

    def beam(self, u: int, step: int | None = None) -> NeuronBeam:
        """Beam of neuron ``u`` after ``step`` (1-based; default: the last step)."""
        u = self._index(u)
        s = (self.auc.shape[1] if step is None else int(step)) - 1
        expl = []
        for k in np.flatnonzero(self.valid[u, s]):
            f = self.formula(u, s + 1, int(k))
            a = float(self.auc[u, s, k])
            expl.append(Explanation(formula_string(f, self.concept_names), f, a,
                                    float(self.concept_fraction[u, s, k]),
                                    2.0 * abs(0.5 - a), float(self.p_value[u, s, k]),
                                    float(self.log_p_value[u, s, k])))
        perm = float(self.perm_p_value[u]) if self.perm_p_value.size else None
        return NeuronBeam(tuple(expl), float(self.best_p_value[u]),
                          float(self.best_log_p_value[u]), float(self.q_value[u]),
                          bool(self.constant[u]), perm, self.layer, u)

    def best_formulas(self) -> list[str | None]:
        return [b.best.formula if b.best else None for b in self]

    def plot(self, ax=None, top: int = 20, path=None):
        """Horizontal bars: AUC of the best formula of the ``top`` neurons (best first)."""
        from repsim_jax import _plotting as plt
        best = self.auc[:, -1, 0]
        ok = self.valid[:, -1, 0]
        order = [u for u in np.argsort(-np.where(ok, best, -np.inf), kind="stable") if ok[u]]
        order = order[:top]
        if ax is None:
            _, ax = plt.subplots(figsize=(8, 0.35 * max(len(order), 2) + 1))
        labels = [f"{u}: {self[u].best.formula}" for u in order]
        ax.barh(range(len(order)), [best[u] for u in order], color="tab:blue")
        ax.set_yticks(range(len(order)), labels, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlim(0.5 if self.params.get("mode") == "positive" else 0.0, 1.0)
        ax.set_xlabel("AUC of the best formula")
        ax.set_title(f"INVERT explanations{' of ' + self.layer if self.layer else ''}")
        if path is not None:
            ax.figure.tight_layout()
            ax.figure.savefig(path, dpi=120)
        return ax


@result
class InvertLayers:
    """``explain`` of a dict of layers: ``{layer: InvertResult}`` in the given order.

    Behaves like the dict it replaces (``res["conv"]``, ``keys()``, ``items()``,
    ``values()``, ``len``, ``in``, iteration over the layer names); q-values of every
    layer are Benjamini-Hochberg over all neurons of all layers of the call.
    """
    layers: dict

    def __getitem__(self, name) -> InvertResult:
        if name not in self.layers:
            raise unknown_name("layer", name, list(self.layers))
        return self.layers[name]

    def __iter__(self):
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    def __contains__(self, name) -> bool:
        return name in self.layers

    def keys(self):
        return self.layers.keys()

    def values(self):
        return self.layers.values()

    def items(self):
        return self.layers.items()


def reduce_activations(x, reduction: str = "mean") -> np.ndarray:
    """(N,), (N, U) pass through; (N, ..., U) (channels last) -> (N, U) by mean or max."""
    if reduction not in REDUCTIONS:
        raise InputError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    a = as_float_array(x, "activations")
    a = np.asarray(a, np.float64)
    if a.ndim <= 2:
        return a
    axes = tuple(range(1, a.ndim - 1))
    return a.mean(axis=axes) if reduction == "mean" else a.max(axis=axes)


def _check_labels(labels, concept_names, n_inputs):
    lab = np.asarray(labels)
    if lab.ndim != 2:
        raise InputError(f"labels: expected (N, C), got shape {lab.shape}")
    if lab.dtype != np.bool_:
        if lab.dtype.kind not in "iuf" or not np.isin(lab, (0, 1)).all():
            raise InputError(f"labels: expected a boolean (or 0/1) array, got dtype {lab.dtype}")
        lab = lab.astype(bool)
    if lab.shape[0] != n_inputs:
        raise InputError(f"activations have {n_inputs} inputs but labels have {lab.shape[0]}")
    names = [str(n) for n in concept_names]
    if len(names) != lab.shape[1]:
        raise InputError(f"{len(names)} concept_names for {lab.shape[1]} label columns")
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise InputError(f"duplicate concept names: {dup[:5]}")
    counts = lab.sum(axis=0)
    if not np.any((counts > 0) & (counts < n_inputs)):
        raise InputError("labels: no concept has both positive and negative inputs")
    return lab, names


PRECISIONS = ("auto", "float64", "float32")
_F64_PLATFORMS = ("cpu", "gpu", "cuda", "rocm")


def resolve_precision(precision: str = "auto", mesh=None) -> str:
    """The search's arithmetic: "float64" or "float32" (see :func:`explain`).

    "auto" picks "float32" when the devices have no float64 (any platform but CPU/GPU,
    e.g. TPU) or when float64 was switched off explicitly (``JAX_ENABLE_X64=0``/``false``
    in the environment), and "float64" otherwise (JAX's default of x64 off is not taken as
    a request: INVERT switches x64 on locally around its own calls).
    """
    import os
    if precision not in PRECISIONS:
        raise InputError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision != "auto":
        return precision
    m = as_mesh(mesh)
    dev = jax.local_devices()[0] if m is None else m.devices.flat[0]
    if dev.platform not in _F64_PLATFORMS:
        return "float32"
    if os.environ.get("JAX_ENABLE_X64", "").strip().lower() in ("0", "false", "no", "off"):
        return "float32"
    return "float64"


def _run(acts2d, table, cfg, mesh, alternative, compat, rank_on, progress=None,
         desc="invert", chunk=None):
    out = beam_search(acts2d.T, table, cfg, mesh=mesh, rank_on=rank_on, progress=progress,
                      desc=desc, chunk=chunk)
    factor = cfg.dedup_factor
    while not compat and not out["complete"].all():
        # rare: more equal supports near the top than the de-duplication looked at; redo
        # those neurons looking at 4x more candidates
        redo = np.flatnonzero(~out["complete"])
        factor *= 4
        cfg = dataclasses.replace(cfg, dedup_factor=factor)
        again = beam_search(np.ascontiguousarray(acts2d[:, redo].T), table, cfg,
                            mesh=mesh, rank_on=rank_on, progress=False)
        for k, v in again.items():
            out[k][redo] = v
    n_total = acts2d.shape[0]
    # p-values from the exact integer statistics in float64 on the host CPU (any backend)
    with jax.default_device(jax.local_devices(backend="cpu")[0]), jax.enable_x64(True):
        _, p, log_p = mann_whitney_from_rank_sums(
            jnp.asarray(out["rank_sum2"]), jnp.asarray(out["count"]), n_total,
            jnp.asarray(out["tie_term"])[:, None, None], alternative)
        p, log_p = np.asarray(p), np.asarray(log_p)
    valid = out["valid"].astype(bool)
    count = out["count"]
    if compat:
        frac = (count.astype(np.float32) / np.float32(n_total)).astype(np.float64)
    else:
        frac = count / n_total
    auc = np.where(valid, out["auc"], np.nan)
    p = np.where(valid, p, np.nan)
    log_p = np.where(valid, log_p, np.nan)
    frac = np.where(valid, frac, np.nan)
    constant = out["constant"].astype(bool)
    best_p = np.where(constant, 1.0, p[:, -1, 0])
    best_log_p = np.where(constant, 0.0, log_p[:, -1, 0])
    return dict(literals=out["literals"], ops=out["ops"], auc=auc, concept_fraction=frac,
                p_value=p, log_p_value=log_p, valid=valid, count=count, best_p_value=best_p,
                best_log_p_value=best_log_p, constant=constant)


def _permutation_test(acts2d, run, table, cfg, mesh, n_perm, seed, offset, chunk,
                      progress=None, desc="invert null"):
    """Selection-aware p-values: the observed best AUC against the best AUCs of the whole
    search on permuted inputs; ``p = (1 + #{null >= observed}) / (1 + n)``."""
    null = null_best_auc(acts2d.T, table, cfg, n_perm, seed, mesh=mesh, chunk=chunk,
                         neuron_ids=offset + np.arange(acts2d.shape[1]), progress=progress,
                         desc=desc)
    sign = 1.0 if cfg.positive else -1.0
    obs = sign * np.where(run["valid"][:, -1, 0], run["auc"][:, -1, 0], -np.inf * sign)
    hits = np.sum(np.nan_to_num(sign * null, nan=-np.inf) >= obs[:, None], axis=1)
    p = (1.0 + hits) / (1.0 + n_perm)
    return np.where(run["constant"], 1.0, p), null


def explain(activations, labels, concept_names: Sequence[str], *, L: int = 3, B: int = 10,
            min_fraction: float = 0.0, max_fraction: float = 0.5, mode: str = "positive",
            limit_search: int | None = None, compat: bool = False, reduction: str = "mean",
            alternative: str = "two-sided", permutations: int = 0, seed: int = 0,
            permutation_chunk: int | None = None, precision: str = "auto", mesh="all",
            block: int | None = None, rank_on: str | None = None, chunk: int | None = None,
            progress: bool | None = None, devices=None):
    """INVERT: the B best compositional concept formulas (<= L literals) of each neuron.

    Args:
      activations: (N,) one neuron; (N, U) U neurons; (N, ..., U) a conv layer, reduced
        over its middle (spatial) axes by ``reduction`` ("mean" or "max"); or a dict
        ``{layer: array}`` of any of these.
      labels: (N, C) boolean concept labels; ``concept_names``: C names.
      L: maximum number of literals; B: beam width.
      min_fraction, max_fraction: admissible range of the fraction of inputs where a
        formula holds (besides 0 < fraction < 1).
      mode: "positive" (maximise AUC) or "negative" (minimise it).
      limit_search: keep only this many literals (most differentiable) for expansion.
      compat: reproduce lapalap/invert v1.1 step for step (duplicates kept). Default:
        formulas with equal supports are de-duplicated in the beam.
      alternative: Mann-Whitney alternative for the nominal p-values ("two-sided",
        "greater": formula-positive inputs activate more, "less").
      permutations: 0 (default) or n > 0: also compute the selection-aware permutation
        p-value of each neuron's best formula from n permutations (see "Significance";
        costs n full searches per neuron). seed: its PRNG seed (permutation p of neuron u
        of the call is fixed by ``(seed, u, p)``). permutation_chunk: permutations per
        compiled call (bounds memory; default from ``block``).
      precision: "auto" (default), "float64" or "float32" (see "Precision").
      mesh: devices to shard neurons over (:mod:`repsim_jax._devices` convention; default
        "all": every local device); ``devices=`` is its deprecated alias.
      block: neurons per vectorised block (default: from the problem size); rank_on:
        "host" (numpy sort, default on CPU) or "device" (XLA sort) for the per-neuron
        ranks.
      chunk: neurons per compiled call (default ~1024; one shape, compiled once, the last
        chunk padded); results do not depend on it.
      progress: progress over the neuron chunks of each layer (and the permutation
        chunks), :mod:`repsim_jax._progress` convention: None/True a bar on a terminal,
        lines in a log (for a search longer than 30 s), False nothing.
    Returns:
      a :class:`NeuronBeam` for (N,) input, an :class:`InvertResult` (a sequence of
      :class:`NeuronBeam`, sliceable) for one layer, or an :class:`InvertLayers` (a
      mapping ``{layer: InvertResult}``, names kept) for a dict.

    Significance. ``p_value`` of a formula is the nominal two-sided (or ``alternative``)
    Mann-Whitney test of that formula's indicator, valid only for a formula fixed in
    advance. The per-neuron ``p_value`` / ``q_value`` are that nominal p-value of the
    neuron's BEST formula, and the q-values are Benjamini-Hochberg over the neurons of the
    call. Because the best formula was selected from thousands of candidates (about 2C +
    4BC(L-1) per neuron) for having the most extreme AUC, these p-values are far too small
    under the null (anti-conservative): for neurons of pure noise most best formulas get
    p < 0.05. They rank neurons; they do not control the false discovery rate of "this
    neuron is explained". For that use ``permutations=n``: the activations of each neuron
    are permuted relative to the labels and the whole search (expansion list, every beam
    step, the selection of the best formula) is rerun, vmapped over permutations; the
    selection-aware p-value is ``perm_p_value = (1 + #{null best AUC >= observed best AUC})
    / (1 + n)`` (in mode "negative": <=), exactly uniform on {1/(n+1), ..., 1} under H0
    (activations independent of the concepts), never below ``1/(n+1)``;
    ``perm_q_value`` is Benjamini-Hochberg of those over the neurons of the call.

    Precision. "float64" runs the search on exact integer statistics held in float64
    (x64 switched on locally). "float32" is for backends without float64 (TPU) and uses
    32-bit integers only (:mod:`repsim_jax.invert.wide`): ranks and counts are int32 /
    uint32; twice the rank sums (up to N(N+1) < 2^48) are two uint32 limbs with carries,
    summed exactly by splitting into limbs whose sums cannot overflow; ``2U = R - n(n+1)``
    and ``2 n (N - n)`` are exact 64-bit integers, and every AUC is computed as the bit
    pattern of the float64 the float64 path computes (``RN64(2U / 2n(N-n))`` by integer
    long division; also ``1 - AUC`` in compat mode and the differentiability of the
    expansion order). Selections compare those bits as exact 64-bit keys, so the float32
    path ranks every candidate exactly as the float64 one: same beams, ties included, for
    every N < 2^24 (bigger N is refused). The AUC reported inside the search is that
    float64 rounded to float32; the returned AUCs, fractions and p-values are recomputed
    in float64 on the host CPU from the exact integers (and the tie term on the host), so
    they are identical to the float64 path. The float32 path ranks float64 activations as
    float32 when ``rank_on="device"`` (values equal in float32 are ties). "auto" chooses
    by :func:`resolve_precision`.
    """
    if devices is not None:  # deprecated alias (the default "all" counts as not given)
        mesh = resolve_mesh_alias(None if mesh == "all" else mesh, devices, "devices",
                                  "invert.explain")
    mesh = as_mesh(mesh)
    if mode not in ("positive", "negative"):
        raise InputError(f"mode must be 'positive' or 'negative', got {mode!r}")
    if alternative not in ALTERNATIVES:
        raise InputError(f"alternative must be one of {ALTERNATIVES}, got {alternative!r}")
    if int(L) < 1 or int(B) < 1:
        raise InputError(f"L and B must be >= 1, got L={L}, B={B}")
    if not 0.0 <= min_fraction <= max_fraction <= 1.0:
        raise InputError(f"need 0 <= min_fraction <= max_fraction <= 1, got "
                         f"{min_fraction}, {max_fraction}")
    if limit_search is not None and int(limit_search) < 1:
        raise InputError(f"limit_search must be >= 1 or None, got {limit_search}")
    if int(permutations) < 0:
        raise InputError(f"permutations must be >= 0, got {permutations}")
    prec = resolve_precision(precision, mesh)
    single = not isinstance(activations, Mapping)
    layers = {"": activations} if single else dict(activations)
    if not layers:
        raise InputError("activations: empty dict of layers")
    one_neuron = single and np.ndim(activations) == 1
    acts = {}
    for name, x in layers.items():
        a = reduce_activations(x, reduction)
        acts[name] = a[:, None] if a.ndim == 1 else a
    n_inputs = next(iter(acts.values())).shape[0]
    _check_precision(SearchConfig(L=1, B=1, precision=prec), n_inputs)   # before any work
    for name, a in acts.items():
        if a.shape[0] != n_inputs:
            raise InputError(f"layer {name!r} has {a.shape[0]} inputs, expected {n_inputs}")
    lab, names = _check_labels(labels, concept_names, n_inputs)
    table = concept_table(lab)
    n_concepts = lab.shape[1]
    k_exp = 2 * n_concepts if limit_search is None else min(int(limit_search), 2 * n_concepts)
    nnz = int(table.group_labels.sum())
    sparse = nnz * 16 < table.n_groups * n_concepts
    if block is None:  # ~200 MB of float64 candidates per block
        per_neuron = 8 * (8 * B * max(k_exp, 1) * 2 + 4 * B * table.n_groups)
        block = int(max(1, min(128, 1.5e8 // per_neuron)))
    cfg = SearchConfig(L=int(L), B=int(B), min_fraction=float(min_fraction),
                       max_fraction=float(max_fraction), positive=(mode == "positive"),
                       limit_search=None if limit_search is None else int(limit_search),
                       compat=bool(compat), sparse=bool(sparse), block=int(block),
                       precision=prec)
    params = dict(L=int(L), B=int(B), min_fraction=min_fraction, max_fraction=max_fraction,
                  mode=mode, limit_search=limit_search, compat=compat, reduction=reduction,
                  alternative=alternative, permutations=int(permutations), seed=int(seed),
                  precision=prec)
    check_chunk(chunk)   # before any layer is searched
    label = lambda name, what: f"invert{' ' + name if name else ''}{what}"  # noqa: E731
    runs = {name: _run(a, table, cfg, mesh, alternative, compat, rank_on,
                       progress=progress, desc=label(name, ""), chunk=chunk)
            for name, a in acts.items()}
    all_log_p = np.concatenate([r["best_log_p_value"] for r in runs.values()])
    q, log_q = benjamini_hochberg(log_p=all_log_p)
    perm = {}
    if permutations:
        offset = 0
        for name, a in acts.items():
            perm[name] = _permutation_test(a, runs[name], table, cfg, mesh, int(permutations),
                                           int(seed), offset, permutation_chunk,
                                           progress=progress, desc=label(name, " null"))
            offset += a.shape[1]
        perm_q, _ = benjamini_hochberg(np.concatenate([v[0] for v in perm.values()]))
    results, start = {}, 0
    for name, r in runs.items():
        u = r["auc"].shape[0]
        if permutations:
            extra = dict(perm_p_value=perm[name][0], perm_q_value=perm_q[start:start + u],
                         null_auc=perm[name][1])
        else:
            extra = dict(perm_p_value=np.zeros(0), perm_q_value=np.zeros(0),
                         null_auc=np.zeros((0, 0)))
        results[name] = InvertResult(concept_names=tuple(names), q_value=q[start:start + u],
                                     log_q_value=log_q[start:start + u], params=params,
                                     layer=name, **extra, **r)
        start += u
        if r["constant"].any():
            warnings.warn(f"INVERT: constant neuron(s) {np.flatnonzero(r['constant'])[:10]} "
                          f"{'of layer ' + repr(name) + ' ' if name else ''}have no explanation",
                          stacklevel=2)
    if one_neuron:
        return results[""][0]
    return results[""] if single else InvertLayers(results)
