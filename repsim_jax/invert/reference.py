"""A plain numpy INVERT search, one neuron at a time: the oracle for tests and benchmarks.

It follows lapalap/invert v1.1 ``explain_representation`` step for step (candidate
order, stable sorts, duplicates kept, float32 concept fractions, AUC 0 for empty /
all-true concepts) but scores candidates with the exact rank AUC of
:mod:`repsim_jax.invert.auc` and sparse products (one rank-weighted product per beam
formula), instead of re-sorting the activations for every candidate. It is deliberately
simple and independent of :mod:`repsim_jax.invert.search` (no label compression, no
batching, no JAX).
"""
from __future__ import annotations

import numpy as np
import scipy.sparse
from scipy.stats import rankdata

__all__ = ["beam_search_loop", "hierarchical_labels", "beam_chains"]


def _auc(r2, n, n_total):
    with np.errstate(invalid="ignore", divide="ignore"):
        den = 2.0 * n * (n_total - n)
        return np.where(den > 0, (r2 - n * (n + 1.0)) / np.where(den > 0, den, 1.0), np.nan)


def _admissible(n, n_total, lo, hi):
    f = np.asarray(n, np.float32) / np.float32(n_total)
    return (f >= np.float32(lo)) & (f <= np.float32(hi)) & (f > 0) & (f < 1)


def beam_search_loop(activations, labels, *, L: int, B: int, min_fraction: float = 0.0,
                     max_fraction: float = 0.5, mode: str = "positive",
                     limit_search: int | None = None, dedup: bool = False):
    """Official-semantics beam search for one neuron.

    ``dedup=True`` is the default mode of :func:`repsim_jax.invert.explain` instead: each
    beam keeps the first pool entry of every support (in sorted order), fractions are
    exact, AUCs of NOT c come from their own rank sums, empty / all-true concepts have no
    AUC.

    Returns ``{step: [(literals, ops, auc, count), ...]}`` for steps 1..L: ``literals``
    the literal ids (c or C + c for NOT c), ``ops`` the operators joining literals 2.. (0
    AND, 1 OR).
    """
    a = np.asarray(activations, np.float64)
    lab = np.asarray(labels, bool)
    n_total, n_concepts = lab.shape
    sign = 1.0 if mode == "positive" else -1.0
    r2 = 2.0 * rankdata(a)  # exact integers
    lab_sp = scipy.sparse.csc_matrix(lab).astype(np.float64)
    r_con = lab_sp.T @ r2
    n_con = np.asarray(lab.sum(axis=0), np.float64)
    r_all = float(n_total) * (n_total + 1)
    lit_r = np.concatenate([r_con, r_all - r_con])
    lit_n = np.concatenate([n_con, n_total - n_con])
    if dedup:
        lit_auc = _auc(lit_r, lit_n, n_total)
        admissible = lambda n: ((n >= min_fraction * n_total) & (n <= max_fraction * n_total)  # noqa
                                & (n > 0) & (n < n_total))
        lit_ok = admissible(lit_n)
    else:
        auc_con = np.nan_to_num(_auc(r_con, n_con, n_total), nan=0.0)  # torchmetrics: 0
        lit_auc = np.concatenate([auc_con, 1.0 - auc_con])
        admissible = lambda n: _admissible(n, n_total, min_fraction, max_fraction)  # noqa
        f_con = n_con.astype(np.float32) / np.float32(n_total)
        lit_f = np.concatenate([f_con, np.float32(1) - f_con])
        lit_ok = ((lit_f >= np.float32(min_fraction)) & (lit_f <= np.float32(max_fraction))
                  & (lit_f > 0) & (lit_f < 1))
    key = np.where(np.isnan(lit_auc), np.inf, -sign * lit_auc)
    by_auc = np.argsort(key, kind="stable")

    def support(entry):
        out = None
        for k, lit in enumerate(entry["lits"]):
            col = lab[:, lit % n_concepts] ^ (lit >= n_concepts)
            out = col if out is None else (out & col if entry["ops"][k - 1] == 0 else out | col)
        return out

    def first_distinct(entries):
        out, seen = [], set()
        for e in entries:
            if len(out) == B:
                break
            if dedup:
                k = np.packbits(support(e)).tobytes()
                if k in seen:
                    continue
                seen.add(k)
            out.append(e)
        return out

    beam = first_distinct(dict(lits=(int(i),), ops=(), r=lit_r[i], n=lit_n[i], auc=lit_auc[i])
                          for i in by_auc if lit_ok[i])
    diff = 2.0 * np.abs(0.5 - lit_auc[by_auc])
    diff = np.where(np.isnan(diff), -1.0, diff)
    expand = by_auc[np.argsort(-diff, kind="stable")]
    if limit_search is not None:
        expand = expand[:limit_search]
    c_e, neg_e = expand % n_concepts, expand >= n_concepts
    r_e, n_e = r_con[c_e], n_con[c_e]

    states = {1: [(e["lits"], e["ops"], e["auc"], e["n"]) for e in beam]}
    for step in range(2, L + 1):
        pool_auc = [np.array([e["auc"] for e in beam])]
        pool_ref = [(-1, i) for i in range(len(beam))]  # (parent, candidate) per pool entry
        cands = []
        for p, entry in enumerate(beam[:B]):
            s = support(entry).astype(np.float64)
            x_r = (lab_sp.T @ (r2 * s))[c_e]
            x_n = (lab_sp.T @ s)[c_e]
            and_r = np.where(neg_e, entry["r"] - x_r, x_r)
            and_n = np.where(neg_e, entry["n"] - x_n, x_n)
            or_r = np.where(neg_e, r_all - r_e + x_r, entry["r"] + r_e - x_r)
            or_n = np.where(neg_e, n_total - n_e + x_n, entry["n"] + n_e - x_n)
            cr = np.stack([and_r, or_r], axis=1).ravel()  # expansion-major, AND before OR
            cn = np.stack([and_n, or_n], axis=1).ravel()
            keep = np.flatnonzero(admissible(cn))
            cands.append((cr, cn))
            pool_auc.append(_auc(cr[keep], cn[keep], n_total))
            pool_ref.extend((p, int(k)) for k in keep)
        order = np.argsort(-sign * np.concatenate(pool_auc), kind="stable")

        def entries():
            for i in order:
                p, k = pool_ref[i]
                if p < 0:
                    yield beam[k]
                    continue
                cr, cn = cands[p]
                yield dict(lits=beam[p]["lits"] + (int(expand[k // 2]),),
                           ops=beam[p]["ops"] + (k % 2,), r=cr[k], n=cn[k],
                           auc=_auc(cr[k], cn[k], n_total))

        beam = first_distinct(entries())
        states[step] = [(e["lits"], e["ops"], e["auc"], e["n"]) for e in beam]
    return states


def hierarchical_labels(n: int, n_top: int, n_mid: int, n_leaf: int, *, seed: int = 0,
                        digits: tuple[int, int, int] = (2, 1, 1)):
    """A synthetic concept world: each of ``n`` inputs gets one random leaf plus its mid and
    top ancestors (``n_top * n_mid * n_leaf`` leaves). Returns labels (n, C) bool, concept
    names (``leaf``/``mid``/``top`` + zero-padded index, ``digits`` wide) and the generator,
    so callers can keep drawing from the same stream."""
    rng = np.random.default_rng(seed)
    n_leaves = n_top * n_mid * n_leaf
    leaf = rng.integers(0, n_leaves, n)
    mid = leaf // n_leaf
    top = mid // n_mid
    labels = np.zeros((n, n_leaves + n_top * n_mid + n_top), bool)
    rows = np.arange(n)
    labels[rows, leaf] = True
    labels[rows, n_leaves + mid] = True
    labels[rows, n_leaves + n_top * n_mid + top] = True
    dl, dm, dt = digits
    names = ([f"leaf{i:0{dl}d}" for i in range(n_leaves)]
             + [f"mid{i:0{dm}d}" for i in range(n_top * n_mid)]
             + [f"top{i:0{dt}d}" for i in range(n_top)])
    return labels, names, rng


def beam_chains(result, u: int, step: int) -> list[tuple]:
    """The beam of neuron ``u`` after ``step`` of an :class:`InvertResult` as comparable
    tuples ``(literals, operators, auc)`` - the form :func:`beam_search_loop` returns."""
    out = []
    for k in np.flatnonzero(result.valid[u, step - 1]):
        lits = result.literals[u, step - 1, k]
        m = int((lits >= 0).sum())
        out.append((tuple(int(x) for x in lits[:m]),
                    tuple(int(o) for o in result.ops[u, step - 1, k, 1:m]),
                    float(result.auc[u, step - 1, k])))
    return out
