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

from repsim_jax._checks import InputError, as_float_array, check_same_length
from repsim_jax.invert.auc import ALTERNATIVES, benjamini_hochberg, mann_whitney_from_rank_sums
from repsim_jax.invert.formula import Formula, formula_string
from repsim_jax.invert.search import ConceptTable, SearchConfig, beam_search, concept_table

__all__ = ["Explanation", "NeuronBeam", "InvertResult", "explain", "reduce_activations",
           "REDUCTIONS"]

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


@dataclasses.dataclass(frozen=True)
class NeuronBeam:
    """The beam of one neuron (best first) and the test of its best formula."""
    explanations: tuple[Explanation, ...]
    p_value: float
    log_p_value: float
    q_value: float
    constant: bool

    def __len__(self) -> int:
        return len(self.explanations)

    def __getitem__(self, i) -> Explanation:
        return self.explanations[i]

    def __iter__(self):
        return iter(self.explanations)

    @property
    def best(self) -> Explanation | None:
        return self.explanations[0] if self.explanations else None


@dataclasses.dataclass
class InvertResult:
    """Beams of U neurons after every step 1..L (arrays) and their best formulas' tests.

    Array attributes (U = neurons, L = steps, B = beam width): ``literals`` (U, L, B, L)
    literal ids (c or C + c for NOT c; -1 none), ``ops`` (U, L, B, L) (0 AND, 1 OR),
    ``auc``, ``concept_fraction``, ``p_value``, ``log_p_value`` (U, L, B), ``valid``
    (U, L, B), per neuron ``best_p_value``, ``best_log_p_value``, ``q_value``,
    ``log_q_value`` (Benjamini-Hochberg over all neurons of the call), ``constant``.
    ``result[u]`` is the final :class:`NeuronBeam` of neuron u, ``result.beam(u, step)``
    the beam after an earlier step.
    """
    concept_names: list[str]
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
    params: dict

    def __len__(self) -> int:
        return int(self.auc.shape[0])

    def __getitem__(self, u: int) -> NeuronBeam:
        return self.beam(u)

    def __iter__(self):
        return (self.beam(u) for u in range(len(self)))

    def formula(self, u: int, step: int, slot: int) -> Formula:
        return Formula.from_arrays(self.literals[u, step - 1, slot], self.ops[u, step - 1, slot],
                                   len(self.concept_names))

    def beam(self, u: int, step: int | None = None) -> NeuronBeam:
        """Beam of neuron ``u`` after ``step`` (1-based; default: the last step)."""
        s = (self.auc.shape[1] if step is None else int(step)) - 1
        expl = []
        for k in np.flatnonzero(self.valid[u, s]):
            f = self.formula(u, s + 1, int(k))
            a = float(self.auc[u, s, k])
            expl.append(Explanation(formula_string(f, self.concept_names), f, a,
                                    float(self.concept_fraction[u, s, k]),
                                    2.0 * abs(0.5 - a), float(self.p_value[u, s, k]),
                                    float(self.log_p_value[u, s, k])))
        return NeuronBeam(tuple(expl), float(self.best_p_value[u]),
                          float(self.best_log_p_value[u]), float(self.q_value[u]),
                          bool(self.constant[u]))

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
        ax.set_title("INVERT explanations")
        if path is not None:
            ax.figure.tight_layout()
            ax.figure.savefig(path, dpi=120)
        return ax


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


def _run(acts2d, table, names, cfg, devices, alternative, compat, rank_on):
    out = beam_search(acts2d.T, table, cfg, devices=devices, rank_on=rank_on)
    factor = cfg.dedup_factor
    while not compat and not out["complete"].all():
        # rare: more equal supports near the top than the de-duplication looked at; redo
        # those neurons looking at 4x more candidates
        redo = np.flatnonzero(~out["complete"])
        factor *= 4
        cfg = dataclasses.replace(cfg, dedup_factor=factor)
        again = beam_search(np.ascontiguousarray(acts2d[:, redo].T), table, cfg,
                            devices=devices, rank_on=rank_on)
        for k, v in again.items():
            out[k][redo] = v
    n_total = acts2d.shape[0]
    with jax.enable_x64(True):
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


def explain(activations, labels, concept_names: Sequence[str], *, L: int = 3, B: int = 10,
            min_fraction: float = 0.0, max_fraction: float = 0.5, mode: str = "positive",
            limit_search: int | None = None, compat: bool = False, reduction: str = "mean",
            alternative: str = "two-sided", devices=None, block: int | None = None,
            rank_on: str | None = None):
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
      alternative: Mann-Whitney alternative for the p-values ("two-sided", "greater":
        formula-positive inputs activate more, "less").
      devices: devices to shard neurons over (default: all devices of the default
        backend); block: neurons per vectorised block (default: from the problem size);
        rank_on: "host" (numpy sort, default on CPU) or "device" (XLA sort) for the
        per-neuron ranks.
    Returns:
      a :class:`NeuronBeam` for (N,) input, an :class:`InvertResult` (``result[u]`` is a
      :class:`NeuronBeam`) for one layer, or ``{layer: InvertResult}`` for a dict. The
      Benjamini-Hochberg q-values are computed across all neurons of the call.
    """
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
    for name, a in acts.items():
        if a.shape[0] != n_inputs:
            raise InputError(f"layer {name!r} has {a.shape[0]} inputs, expected {n_inputs}")
    lab, names = _check_labels(labels, concept_names, n_inputs)
    table = concept_table(lab)
    if devices is None:
        devices = jax.devices()
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
                       compat=bool(compat), sparse=bool(sparse), block=int(block))
    params = dict(L=int(L), B=int(B), min_fraction=min_fraction, max_fraction=max_fraction,
                  mode=mode, limit_search=limit_search, compat=compat, reduction=reduction,
                  alternative=alternative)
    runs = {name: _run(a, table, names, cfg, devices, alternative, compat, rank_on)
            for name, a in acts.items()}
    all_log_p = np.concatenate([r["best_log_p_value"] for r in runs.values()])
    q, log_q = benjamini_hochberg(log_p=all_log_p)
    results, start = {}, 0
    for name, r in runs.items():
        u = r["auc"].shape[0]
        results[name] = InvertResult(concept_names=names, q_value=q[start:start + u],
                                     log_q_value=log_q[start:start + u], params=params, **r)
        start += u
        if r["constant"].any():
            warnings.warn(f"INVERT: constant neuron(s) {np.flatnonzero(r['constant'])[:10]} "
                          f"{'of layer ' + repr(name) + ' ' if name else ''}have no explanation",
                          stacklevel=2)
    if one_neuron:
        return results[""][0]
    return results[""] if single else results
