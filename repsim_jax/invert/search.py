r"""INVERT beam search, batched over neurons (Bykov et al., NeurIPS 2023, arXiv 2311.13594).

Problem. For a neuron with activations :math:`a \in \mathbb{R}^N` and concept labels
:math:`Y \in \{0,1\}^{N \times C}`, find the formulas :math:`\varphi` (left-deep chains of
literals :math:`c, \lnot c` joined by :math:`\land, \lor`, at most :math:`L` literals)
maximising :math:`\mathrm{AUC}(a, \varphi(Y))` subject to
:math:`\alpha_{min} \le |\varphi| / N \le \alpha_{max}`, :math:`0 < |\varphi| < N`, by a beam
search of width :math:`B`:

1. score all :math:`2C` literals; the beam is the best :math:`B` admissible ones; the
   expansion list :math:`E` is all literals sorted by differentiability
   :math:`2|\tfrac12 - \mathrm{AUC}|` (stable, after the AUC sort), cut to ``limit_search``;
2. for :math:`l = 2..L`: the pool is the previous beam followed by
   :math:`b \land e,\ b \lor e` for every beam formula :math:`b` and :math:`e \in E`
   (in that order); the beam is the best :math:`B` admissible formulas of the pool (stable
   sort: ties keep pool order).

Batched evaluation. Every candidate's AUC needs only its count :math:`n_\varphi` and twice
its rank sum :math:`R_\varphi = \sum_i \rho_i \varphi_i` (:mod:`repsim_jax.invert.auc`). Inputs
with equal label rows are interchangeable for every formula, so the labels are compressed
to their :math:`G \le N` distinct rows :math:`\bar Y \in \{0,1\}^{G\times C}` with group sizes
:math:`m_g` and group rank sums :math:`\bar\rho_{ug} = \sum_{i \in g} \rho_{ui}` (one sort per
neuron). With beam supports :math:`s_{ub} \in \{0,1\}^G`, one reduction over the groups

.. math::
    X^{R}_{ubc} = \sum_g \bar\rho_{ug}\, s_{ubg}\, \bar Y_{gc}, \qquad
    X^{n}_{ubc} = \sum_g m_g\, s_{ubg}\, \bar Y_{gc}

(a matmul, or a segment sum over the non-zeros of :math:`\bar Y` when it is sparse) gives
every candidate by inclusion-exclusion, with :math:`T_b, T_c, T_\Omega` the statistic of
the beam formula, the concept and all inputs:

.. math::
    b \land c = X,\quad b \land \lnot c = T_b - X,\quad
    b \lor c = T_b + T_c - X,\quad b \lor \lnot c = T_\Omega - T_c + X.

All statistics are integers held exactly in float64 (or, in the float32 path for
backends without float64, in uint32 limbs with the AUCs as float64 bit patterns:
:mod:`repsim_jax.invert.wide`), so equal supports give equal AUCs and ties break like a
stable sort, identically in both paths. Selection is a two-level ``lax.top_k`` (lower index
first on ties, :func:`stable_top_k`) over the pool of :math:`B(1 + 2|E|)` candidates of
each neuron; nothing of size N is touched after the ranking.

Layout of the work. Per neuron, the ranks (one sort), the group rank sums and the
expansion list are computed once (:func:`group_rank_sums_host` with numpy's vectorised
sort on CPU, :func:`_stats_device` with XLA's sort on accelerators); the steps run in one
jit-compiled function vectorised over blocks of neurons (``lax.map``), called on host-level
chunks of neurons of one shape (progress between chunks, one compilation), and the neuron
axis is sharded over devices with ``shard_map`` (every neuron is independent).

Modes. ``compat=True`` keeps every candidate (duplicates included), emulates the official
code's float32 concept fractions and its AUC of 0 for empty / all-true concepts, and so
returns the beams of lapalap/invert v1.1 step for step. The default mode drops candidates
whose support equals an earlier pool entry's (expansions that leave the parent unchanged,
and equal supports reached by different formulas: compared on bit-packed supports), and
ignores empty / all-true concepts.
"""
from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec as P

from repsim_jax import _progress
from repsim_jax._checks import InputError
from repsim_jax._devices import as_mesh, resolve_mesh_alias
from repsim_jax.invert import wide
from repsim_jax.invert.auc import auc_from_rank_sums, twice_average_ranks
from repsim_jax.invert.wide import U64, tree as _t  # leaf by leaf: arrays, limbs, keys

__all__ = ["ConceptTable", "concept_table", "SearchConfig", "beam_search"]

AND, OR = 0, 1


@dataclasses.dataclass(frozen=True)
class ConceptTable:
    """Labels compressed to their distinct rows.

    Attributes:
      group_of_input: (N,) int32, the distinct label row of each input.
      group_labels: (G, C) bool, the distinct rows.
      group_counts: (G,) int64, inputs per row.
      concept_counts: (C,) int64, inputs per concept.
    """
    group_of_input: np.ndarray
    group_labels: np.ndarray
    group_counts: np.ndarray
    concept_counts: np.ndarray

    @property
    def n_inputs(self) -> int:
        return int(self.group_of_input.shape[0])

    @property
    def n_groups(self) -> int:
        return int(self.group_labels.shape[0])

    @property
    def n_concepts(self) -> int:
        return int(self.group_labels.shape[1])


def concept_table(labels: np.ndarray) -> ConceptTable:
    """Distinct rows of a boolean (N, C) label matrix (rows compared as packed bits)."""
    lab = np.asarray(labels, bool)
    packed = np.ascontiguousarray(np.packbits(lab, axis=1))
    view = packed.view(np.dtype((np.void, packed.shape[1])))[:, 0]
    _, first, inverse, counts = np.unique(view, return_index=True, return_inverse=True,
                                          return_counts=True)
    return ConceptTable(group_of_input=inverse.astype(np.int32).ravel(),
                        group_labels=lab[first], group_counts=counts.astype(np.int64),
                        concept_counts=lab.sum(axis=0).astype(np.int64))


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    """Static parameters of the search (hashable: part of the jit cache key)."""
    L: int
    B: int
    min_fraction: float = 0.0
    max_fraction: float = 0.5
    positive: bool = True
    limit_search: int | None = None
    compat: bool = False
    sparse: bool = False
    block: int = 64
    dedup_factor: int = 8
    precision: str = "float64"


PRECISIONS = ("float64", "float32")
MAX_N_32 = 2 ** 24 - 1  # the largest N of the float32 path (explain's "Precision")
_NAN_BITS = 0x7FF8000000000000  # an undefined AUC in the float32 path (IEEE NaN bits)


def _stat_dtype(cfg: SearchConfig):
    """dtype of the counts (and float64 rank sums) inside the search: float64 or uint32."""
    return jnp.float64 if cfg.precision == "float64" else jnp.uint32


def _stat_const(x: int, cfg: SearchConfig):
    """A count as a constant of the search's dtype."""
    if cfg.precision == "float64":
        return float(x)
    return np.uint32(int(x))


def _rank_const(x: int, cfg: SearchConfig):
    """Twice a rank sum as a constant: float64, or two uint32 limbs (:class:`wide.U64`)."""
    return float(x) if cfg.precision == "float64" else wide.u64(int(x))


def _wide(cfg: SearchConfig) -> bool:
    return cfg.precision != "float64"


def _auc(r2, n, n_total, cfg: SearchConfig):
    """AUC from twice the rank sum ``r2`` and count ``n`` in the search's precision.

    float64: :func:`~repsim_jax.invert.auc.auc_from_rank_sums`. float32 path: ``r2`` is a
    :class:`wide.U64`; ``2U = r2 - n(n+1)`` and ``2 n (N - n)`` are exact 64-bit integers
    and the result is the IEEE bit pattern (U64) of the float64 AUC, ``RN64(2U / 2n(N-n))``
    (:func:`wide.ratio_bits`), NaN bits where undefined.
    """
    if cfg.precision == "float64":
        return auc_from_rank_sums(r2, n, n_total)
    n = n.astype(jnp.uint32)
    u2 = r2 - wide.mul32(n, n + jnp.uint32(1))
    half = wide.mul32(n, jnp.uint32(n_total) - n)
    bits = wide.ratio_bits(u2, half + half)
    undefined = (n == 0) | (n >= jnp.uint32(n_total))
    return wide._where(undefined, wide.u64(_NAN_BITS), bits)


def _defined(auc):
    """Where an AUC (float64 value or float32-path bits) is defined (not NaN)."""
    if isinstance(auc, U64):
        return auc.hi != jnp.uint32(_NAN_BITS >> 32)
    return ~jnp.isnan(auc)


def _auc_out(auc):
    """AUCs as returned by the compiled search: float64, or RN32 of the float64 (float32)."""
    if isinstance(auc, U64):
        return jnp.where(_defined(auc), wide.bits_to_float32(auc), jnp.float32(jnp.nan))
    return auc


def _tw(cond, a, b):
    return _t(lambda x, y: jnp.where(cond, x, y), a, b)


def _rank_sums(w, lab_f, nz_g, nz_c, cfg: SearchConfig):
    """``w @ lab`` of rank sums: float64, or exact in uint32 limbs (:func:`wide.limb_sums`)."""
    if not _wide(cfg):
        return _concept_sums(w, lab_f, nz_g, nz_c, cfg.sparse)
    return wide.limb_sums(lambda x: _concept_sums(x, lab_f, nz_g, nz_c, cfg.sparse), w,
                          lab_f.shape[0])


def _valid(score):
    if isinstance(score, tuple):
        return score[0] > jnp.iinfo(jnp.int32).min
    return score > -jnp.inf


def _key_ge(a, b):
    if isinstance(a, tuple):
        return (a[0] > b[0]) | ((a[0] == b[0]) & (a[1] >= b[1]))
    return a >= b


def _sort_desc(score):
    """All entries of the last axis best first (ties: lower index first)."""
    if not isinstance(score, tuple):
        return jax.lax.top_k(score, score.shape[-1])
    hi, lo = score
    ids = jnp.broadcast_to(jnp.arange(hi.shape[-1], dtype=jnp.int32), hi.shape)
    nh, nl, pos = jax.lax.sort((~hi, ~lo, ids), dimension=hi.ndim - 1, num_keys=2,
                               is_stable=True)
    return (~nh, ~nl), pos


def _concept_sums(w, lab_dense, nz_g, nz_c, sparse: bool):
    """``w @ lab`` for w (..., G) and binary lab (G, C): matmul or sparse segment sum."""
    if not sparse:
        return w @ lab_dense
    lead, g = w.shape[:-1], w.shape[-1]
    w2 = w.reshape(-1, g)
    gathered = jnp.take(w2, nz_g, axis=1).T  # (nnz, M)
    out = jax.ops.segment_sum(gathered, nz_c, num_segments=lab_dense.shape[1],
                              indices_are_sorted=True)  # (C, M)
    return out.T.reshape(*lead, lab_dense.shape[1])


def _fraction_ok(count, n_total, cfg: SearchConfig, frac32=None):
    """Admissibility: min <= n/N <= max and 0 < n < N (float32 fractions in compat)."""
    if cfg.compat:
        f = count.astype(jnp.float32) / jnp.float32(n_total) if frac32 is None else frac32
        return ((f >= jnp.float32(cfg.min_fraction)) & (f <= jnp.float32(cfg.max_fraction))
                & (f > 0) & (f < 1))
    lo, hi = _count_bounds(n_total, cfg)
    return (count >= lo) & (count <= hi) & (count > 0) & (count < n_total)


def _count_bounds(n_total, cfg: SearchConfig):
    """Integer bounds equivalent to ``min_fraction * N <= count <= max_fraction * N``
    (products in float64, as Python floats), so both precisions admit the same counts."""
    return math.ceil(cfg.min_fraction * n_total), math.floor(cfg.max_fraction * n_total)


def _score(auc, ok, cfg: SearchConfig):
    """Selection score: the AUC (negated in mode "negative"), -inf where inadmissible;
    float32 path: an exact (int32, uint32) key of the float64 AUC (:func:`wide.sort_key`)."""
    if isinstance(auc, U64):
        return wide.sort_key(auc, ok & _defined(auc), negate=not cfg.positive)
    s = auc if cfg.positive else -auc
    return jnp.where(ok & ~jnp.isnan(s), s, -jnp.inf)


def _literal_columns(lab_t, lits, n_concepts):
    """Supports (..., G) of literal ids (...) (c or C + c)."""
    cols = jnp.take(lab_t, lits % n_concepts, axis=0)
    return cols ^ (lits >= n_concepts)[..., None]


def _first_unique(sup, valid, keep_n):
    """Positions of the first ``keep_n`` valid entries whose support is new (in order)."""
    kk = sup.shape[-2]
    packed = jnp.packbits(sup, axis=-1)  # bit-packed supports, compared as uint32 words
    pad = -packed.shape[-1] % 4
    packed = jnp.pad(packed, [(0, 0)] * (packed.ndim - 1) + [(0, pad)])
    packed = jax.lax.bitcast_convert_type(
        packed.reshape(*packed.shape[:-1], packed.shape[-1] // 4, 4), jnp.uint32)
    eq = jnp.all(packed[..., :, None, :] == packed[..., None, :, :], axis=-1)  # (u, kk, kk)
    earlier = jnp.tril(jnp.ones((kk, kk), bool), k=-1)
    dup = jnp.any(eq & earlier & valid[..., None, :], axis=-1)
    keep = valid & ~dup
    key = jnp.where(keep, kk - jnp.arange(kk), 0)
    _, pos = jax.lax.top_k(key, keep_n)
    ok = jnp.take_along_axis(keep, pos, axis=-1)
    return pos, ok, jnp.sum(keep, axis=-1) >= keep_n


def _search_block(rho_g, constant, expand, lab_f, lab_t, nz_g, nz_c, counts_g, n_total,
                  cfg: SearchConfig):
    """Beam search for a block of neurons from their group rank sums ``rho_g`` (u, G) and
    expansion lists ``expand`` (u, K); returns per-step beam arrays."""
    if _wide(cfg) and not isinstance(rho_g, U64):  # (u, G, 2) limbs [hi, lo]
        rho_g = U64(rho_g[..., 0], rho_g[..., 1])
    u = rho_g.shape[0]
    n_groups, n_concepts = lab_f.shape
    sd = _stat_dtype(cfg)
    r_all = _rank_const(n_total * (n_total + 1), cfg)  # twice the rank sum of all inputs
    r_con = _rank_sums(rho_g, lab_f, nz_g, nz_c, cfg)  # (u, C)
    n_con = counts_g @ lab_f  # (C,)

    # ---- step 1: all 2C literals (c then NOT c, in concept order)
    r_lit = _t(lambda a, b: jnp.concatenate([a, b], axis=1), r_con, r_all - r_con)
    n_lit = jnp.broadcast_to(jnp.concatenate([n_con, _stat_const(n_total, cfg) - n_con]),
                             r_con.shape[:1] + (2 * n_concepts,))
    auc_lit, ok_lit = _literal_auc(r_con, n_con, n_total, cfg, jnp)
    ok_lit = ok_lit & ~constant[:, None]
    score_lit = _score(auc_lit, ok_lit, cfg)
    n_lits = 2 * n_concepts
    k_exp = expand.shape[1]

    b = cfg.B
    max_len = cfg.L
    if cfg.compat:
        sel_score, sel = stable_top_k(score_lit, min(b, n_lits))
        sel_ok = _valid(sel_score)
        complete = jnp.ones((u,), bool)
    else:
        kk = min(b * cfg.dedup_factor, n_lits)
        sel_score, cand = stable_top_k(score_lit, kk)
        sup_c = _literal_columns(lab_t, cand, n_concepts)
        pos, sel_ok, enough = _first_unique(sup_c, _valid(sel_score), min(b, kk))
        complete = enough | ~_valid(_t(lambda x: x[:, -1], sel_score))
        sel = jnp.take_along_axis(cand, pos, axis=1)
    if sel.shape[1] < b:  # fewer literals than beam slots
        pad = b - sel.shape[1]
        sel = jnp.pad(sel, ((0, 0), (0, pad)))
        sel_ok = jnp.pad(sel_ok, ((0, 0), (0, pad)))
    beam_r = _t(lambda x: jnp.take_along_axis(x, sel, axis=1), r_lit)
    beam_n = jnp.take_along_axis(n_lit, sel, axis=1)
    beam_sup = _literal_columns(lab_t, sel, n_concepts) & sel_ok[..., None]
    chains = jnp.full((u, b, max_len), -1, jnp.int32).at[:, :, 0].set(sel.astype(jnp.int32))
    ops = jnp.zeros((u, b, max_len), jnp.int8)
    lengths = jnp.ones((u, b), jnp.int32)
    beam_auc = _t(lambda x: jnp.take_along_axis(x, sel, axis=1), auc_lit)
    beam_ok = sel_ok
    history = [(chains, ops, beam_r, beam_n, _auc_out(beam_auc), beam_ok)]

    # pad the expansion list to a multiple of 64 with inert entries (chunked top-k)
    k_pad = -(-k_exp // 64) * 64
    valid_e = (jnp.arange(k_pad) < k_exp)[None, None, :, None]
    expand = jnp.pad(expand, ((0, 0), (0, k_pad - k_exp)))
    c_exp = expand % n_concepts
    neg_exp = expand >= n_concepts
    r_e = _t(lambda x: jnp.take_along_axis(x, c_exp, axis=1)[:, None, :], r_con)  # (u,1,K)
    n_e = jnp.take(n_con, c_exp)[:, None, :]
    neg_e = neg_exp[:, None, :]
    arange_len = jnp.arange(max_len)

    for _step in range(2, max_len + 1):
        sup_f = beam_sup.astype(sd)
        if _wide(cfg):   # exact rank sums in limbs, counts (< 2^24) in uint32
            x_r = _rank_sums(_t(lambda r: r[:, None, :] * sup_f, rho_g), lab_f, nz_g, nz_c,
                             cfg)
            x_n = _concept_sums(counts_g[None, None, :] * sup_f, lab_f, nz_g, nz_c,
                                cfg.sparse)
        else:
            w = jnp.stack([rho_g[:, None, :] * sup_f, counts_g[None, None, :] * sup_f], axis=2)
            x = _concept_sums(w, lab_f, nz_g, nz_c, cfg.sparse)  # (u, B, 2, C)
            x_r, x_n = x[:, :, 0, :], x[:, :, 1, :]
        x_r = _t(lambda x: jnp.take_along_axis(x, c_exp[:, None, :], axis=2), x_r)  # (u,B,K)
        x_n = jnp.take_along_axis(x_n, c_exp[:, None, :], axis=2)
        tb_r, tb_n = _t(lambda x: x[..., None], beam_r), beam_n[..., None]
        # candidate statistics (u, B, K, 2): [b AND e, b OR e], by inclusion-exclusion
        cand_r = _t(lambda a, o: jnp.stack([a, o], axis=-1),
                    _tw(neg_e, tb_r - x_r, x_r),
                    _tw(neg_e, r_all - r_e + x_r, tb_r + r_e - x_r))
        cand_n = jnp.stack([jnp.where(neg_e, tb_n - x_n, x_n),
                            jnp.where(neg_e, _stat_const(n_total, cfg) - n_e + x_n,
                                      tb_n + n_e - x_n)], axis=-1)
        cand_ok = _fraction_ok(cand_n, n_total, cfg) & beam_ok[:, :, None, None] & valid_e
        if not cfg.compat:  # the expansion leaves the parent's support unchanged
            cand_ok = cand_ok & (cand_n != tb_n[..., None])
        cand_score = _score(_auc(cand_r, cand_n, n_total, cfg), cand_ok, cfg)
        cand_score = _t(lambda x: x.reshape(u, -1), cand_score)  # parent, expansion, op
        prev_score = _score(_auc(beam_r, beam_n, n_total, cfg), beam_ok, cfg)
        n_cand = jax.tree_util.tree_leaves(cand_score)[0].shape[1]
        kk = b if cfg.compat else min(b * cfg.dedup_factor, n_cand)
        top_s, top_i = stable_top_k(cand_score, kk)
        # pool = previous beam (first: wins ties) followed by the candidates
        pool_s = _t(lambda a, c: jnp.concatenate([a, c], axis=1), prev_score, top_s)
        pool_i = jnp.concatenate([jnp.broadcast_to(jnp.arange(b), (u, b)), top_i + b], axis=1)

        def describe(idx):
            is_cand = idx >= b
            k = jnp.maximum(idx - b, 0)
            parent = jnp.where(is_cand, k // (2 * k_pad), idx)
            j = (k // 2) % k_pad
            op = (k % 2).astype(jnp.int8)
            lit = jnp.take_along_axis(expand, j, axis=1)
            psup = jnp.take_along_axis(beam_sup, parent[..., None], axis=1)
            col = _literal_columns(lab_t, lit, n_concepts)
            new = jnp.where((op == AND)[..., None], psup & col, psup | col)
            sup = jnp.where(is_cand[..., None], new, psup)
            flat = k.astype(jnp.int32)
            r = _tw(is_cand,
                    _t(lambda x: jnp.take_along_axis(x.reshape(u, -1), flat, axis=1), cand_r),
                    _t(lambda x: jnp.take_along_axis(x, parent, axis=1), beam_r))
            n = jnp.where(is_cand, jnp.take_along_axis(cand_n.reshape(u, -1), flat, axis=1),
                          jnp.take_along_axis(beam_n, parent, axis=1))
            return sup, is_cand, parent, lit, op, r, n

        sel_s, pos = _sort_desc(pool_s)  # small: B + kk entries
        cand = jnp.take_along_axis(pool_i, pos, axis=1)
        if cfg.compat:
            sel = cand[:, :b]
            sel_ok = _valid(_t(lambda x: x[:, :b], sel_s))
        else:
            sup_c = describe(cand)[0]
            p2, sel_ok, _ = _first_unique(sup_c, _valid(sel_s), b)
            sel = jnp.take_along_axis(cand, p2, axis=1)
            # exact unless a kept entry ranks below the last candidate looked at (unseen
            # candidates could precede it) and candidates were not exhausted
            last = _t(lambda x: x[:, -1:], top_s)
            seen = _key_ge(_t(lambda x: jnp.take_along_axis(x, p2, axis=1), sel_s), last)
            exhausted = ~_valid(_t(lambda x: x[:, 0], last))
            complete = complete & (exhausted | jnp.all(seen | ~sel_ok, axis=1)
                                   & (jnp.sum(sel_ok, axis=1) >= b))
        new_sup, is_cand, parent, lit, op, beam_r, beam_n = describe(sel)
        par_chain = jnp.take_along_axis(chains, parent[..., None], axis=1)
        par_ops = jnp.take_along_axis(ops, parent[..., None], axis=1)
        par_len = jnp.take_along_axis(lengths, parent, axis=1)
        at = is_cand[..., None] & (arange_len == par_len[..., None])
        chains = jnp.where(at, lit[..., None].astype(jnp.int32), par_chain)
        ops = jnp.where(at, op[..., None], par_ops)
        lengths = par_len + is_cand.astype(jnp.int32)
        beam_auc = _auc(beam_r, beam_n, n_total, cfg)
        beam_ok = sel_ok
        beam_sup = new_sup & sel_ok[..., None]
        history.append((chains, ops, beam_r, beam_n, _auc_out(beam_auc), beam_ok))

    if _wide(cfg):   # rank sums as (..., 2) uint32 limbs [hi, lo]
        history = [(c, o, jnp.stack([r.hi, r.lo], axis=-1), *rest)
                   for c, o, r, *rest in history]
    stacked = [jnp.stack(h, axis=1) for h in zip(*history)]  # each (u, L, B, ...)
    return (*stacked, complete)


def stable_top_k(x, k: int, chunk: int | None = None):
    """``lax.top_k`` along the last axis (ties: lower index first), in two levels.

    XLA's CPU top-k sorts the whole row; here the row is cut into chunks, the ``k`` best
    chunks by their maximum (ties: lower chunk first) are kept in index order and top-k
    runs on those ``k * chunk`` entries only. Exact: every one of the k best entries (in
    (value desc, index asc) order) lies in a chunk whose best entry is among the k best.
    ``x`` may also be an (int32, uint32) key pair (the float32 path), ordered
    lexicographically (stable sorts instead of top-k).
    """
    n = jax.tree_util.tree_leaves(x)[0].shape[-1]
    if chunk is None:  # balance the two top-k's: n / chunk ~ k * chunk
        chunk = max(8, int(2 ** round(math.log2(max(math.sqrt(n / k), 1.0)))))
    if isinstance(x, tuple):
        return _stable_top_k_key(x, k, chunk, n)
    if n <= 4 * k * chunk:
        return jax.lax.top_k(x, k)
    n_chunks = -(-n // chunk)
    pad = n_chunks * chunk - n
    xp = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, pad)], constant_values=-jnp.inf)
    xc = xp.reshape(*x.shape[:-1], n_chunks, chunk)
    _, cid = jax.lax.top_k(jnp.max(xc, axis=-1), k)
    cid = jnp.sort(cid, axis=-1)
    sub = jnp.take_along_axis(xc, cid[..., None], axis=-2).reshape(*x.shape[:-1], k * chunk)
    vals, pos = jax.lax.top_k(sub, k)
    idx = jnp.take_along_axis(cid, pos // chunk, axis=-1) * chunk + pos % chunk
    return vals, idx


def _stable_top_k_key(x, k: int, chunk: int, n: int):
    """:func:`stable_top_k` of a lexicographic (int32 hi, uint32 lo) key."""
    if n <= 4 * k * chunk:
        vals, pos = _sort_desc(x)
        return _t(lambda v: v[..., :k], vals), pos[..., :k]
    hi, lo = x
    n_chunks = -(-n // chunk)
    pad = [(0, 0)] * (hi.ndim - 1) + [(0, n_chunks * chunk - n)]
    hc = jnp.pad(hi, pad, constant_values=jnp.iinfo(jnp.int32).min)
    lc = jnp.pad(lo, pad)
    hc, lc = (v.reshape(*hi.shape[:-1], n_chunks, chunk) for v in (hc, lc))
    mh = jnp.max(hc, axis=-1)
    ml = jnp.max(jnp.where(hc == mh[..., None], lc, jnp.uint32(0)), axis=-1)
    _, cpos = _sort_desc((mh, ml))
    cid = jnp.sort(cpos[..., :k], axis=-1)
    sub = tuple(jnp.take_along_axis(v, cid[..., None], axis=-2).reshape(*hi.shape[:-1],
                                                                        k * chunk)
                for v in (hc, lc))
    vals, pos = _sort_desc(sub)
    pos = pos[..., :k]
    idx = jnp.take_along_axis(cid, pos // chunk, axis=-1) * chunk + pos % chunk
    return _t(lambda v: v[..., :k], vals), idx


def _literal_auc(r_con, n_con, n_total, cfg: SearchConfig, xp):
    """AUC and admissibility of the 2C literals (c, then NOT c) with numpy or jax.numpy
    (numpy: always float64; jax.numpy: in the search's precision)."""
    n_lit = xp.concatenate([n_con, n_total - n_con])
    if xp is np or cfg.precision == "float64":
        with np.errstate(invalid="ignore", divide="ignore"):
            auc_con = auc_from_rank_sums_np(r_con, n_con, n_total, xp)
            r_neg = float(n_total) * (n_total + 1) - r_con
            auc_neg = auc_from_rank_sums_np(r_neg, n_total - n_con, n_total, xp)
    else:  # float32 path: exact limbs, AUCs as float64 bits
        n_con = n_con.astype(jnp.uint32)
        n_lit = jnp.concatenate([n_con, jnp.uint32(n_total) - n_con])
        auc_con = _auc(r_con, n_con, n_total, cfg)
        auc_neg = _auc(_rank_const(n_total * (n_total + 1), cfg) - r_con,
                       jnp.uint32(n_total) - n_con, n_total, cfg)
    if isinstance(auc_con, U64):
        cat = lambda a, b: _t(lambda x, y: jnp.concatenate([x, y], axis=1), a, b)  # noqa
        if cfg.compat:   # as below, on the float64 bits: NaN -> 0, NOT c = RN64(1 - AUC(c))
            auc_con = wide._where(_defined(auc_con), auc_con, wide.u64(0))
            auc_lit = cat(auc_con, wide.abs_one_minus_bits(auc_con))
        else:
            auc_lit = cat(auc_con, auc_neg)
        frac_ok = _literal_frac_ok(n_con, n_lit, n_total, cfg, xp)
        return auc_lit, jnp.broadcast_to(frac_ok, auc_lit.shape)
    if cfg.compat:  # torchmetrics: AUC 0 without positives or negatives; NOT c = 1 - AUC(c)
        auc_con = xp.where(xp.isnan(auc_con), 0.0, auc_con)
        auc_lit = xp.concatenate([auc_con, 1.0 - auc_con], axis=1)
    else:
        auc_lit = xp.concatenate([auc_con, auc_neg], axis=1)
    ok = _literal_frac_ok(n_con, n_lit, n_total, cfg, xp)
    return auc_lit, xp.broadcast_to(ok, auc_lit.shape)


def _literal_frac_ok(n_con, n_lit, n_total, cfg: SearchConfig, xp):
    """Admissible literal counts (compat: the official float32 fractions)."""
    if cfg.compat:
        f_con = n_con.astype(xp.float32) / xp.float32(n_total)
        frac = xp.concatenate([f_con, xp.float32(1) - f_con])
        return ((frac >= xp.float32(cfg.min_fraction)) & (frac <= xp.float32(cfg.max_fraction))
                & (frac > 0) & (frac < 1))
    lo, hi = _count_bounds(n_total, cfg)
    return (n_lit >= lo) & (n_lit <= hi) & (n_lit > 0) & (n_lit < n_total)


def auc_from_rank_sums_np(r2, n, n_total, xp=np):
    """float64 AUC ``(r2 - n(n+1)) / (2 n (N - n))`` (NaN where undefined), numpy or jnp."""
    den = 2.0 * n * (n_total - n)
    return xp.where(den > 0, (r2 - n * (n + 1)) / xp.where(den > 0, den, 1.0), xp.nan)


def _order_keys(auc_lit, cfg: SearchConfig, xp):
    """Sort keys of the expansion list: differentiability desc, then AUC (mode order).

    float32 path (``auc_lit`` float64 bits): the same keys exactly, as ascending
    (int32, uint32) pairs, 4 keys in all (:func:`wide.sort_key` of ``2|0.5 - AUC|``,
    computed as ``RN64(|1 - 2 AUC|)``, and of the AUC; undefined AUCs last in both)."""
    if isinstance(auc_lit, U64):
        ok = _defined(auc_lit)
        diff = wide.abs_one_minus_bits(wide.double_bits(auc_lit))
        d_hi, d_lo = wide.sort_key(diff, ok)
        s_hi, s_lo = wide.sort_key(auc_lit, ok, negate=not cfg.positive)
        return ~d_hi, ~d_lo, ~s_hi, ~s_lo
    sort_score = xp.where(xp.isnan(auc_lit), -xp.inf, auc_lit if cfg.positive else -auc_lit)
    diff = 2.0 * xp.abs(0.5 - auc_lit)
    diff = xp.where(xp.isnan(diff), -1.0, diff)  # undefined AUC: never useful, last
    return -diff, -sort_score


def expansion_order_host(rho_g, table: ConceptTable, cfg: SearchConfig) -> np.ndarray:
    """Expansion lists (U, K) of literal ids: stable sort by AUC, then by differentiability."""
    lab = table.group_labels.astype(np.float64)
    r_con = rho_g @ lab
    n_con = table.group_counts.astype(np.float64) @ lab
    auc_lit, _ = _literal_auc(r_con, n_con, table.n_inputs, cfg, np)
    k1, k2 = _order_keys(auc_lit, cfg, np)
    order = np.lexsort((k2, k1), axis=-1)  # last key primary; lexsort is stable
    k_exp = order.shape[1] if cfg.limit_search is None else min(cfg.limit_search, order.shape[1])
    return order[:, :k_exp].astype(np.int32)


def _expansion_device(rho_g, lab_f, counts_g, n_total: int, cfg: SearchConfig):
    """Expansion lists (U, K) from group rank sums, in the search's precision (jnp)."""
    r_con = (wide.limb_sums(lambda w: w @ lab_f, rho_g, lab_f.shape[0]) if _wide(cfg)
             else rho_g @ lab_f)
    auc_lit, _ = _literal_auc(r_con, counts_g @ lab_f, n_total, cfg, jnp)
    keys = _order_keys(auc_lit, cfg, jnp)
    ids = jnp.broadcast_to(jnp.arange(keys[0].shape[1]), keys[0].shape)
    *_, order = jax.lax.sort((*keys, ids), dimension=1, num_keys=len(keys), is_stable=True)
    k_exp = order.shape[1] if cfg.limit_search is None else min(cfg.limit_search, order.shape[1])
    return order[:, :k_exp].astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("cfg", "n_groups"))
def _stats_device(acts, group, lab_f, counts_g, cfg: SearchConfig, n_groups: int):
    """Device version of :func:`group_rank_sums_host` + :func:`expansion_order_host`."""
    sd = _stat_dtype(cfg)
    rho, tie = twice_average_ranks(acts, dtype=None if sd == jnp.float64 else jnp.int32)
    constant = jnp.all(rho == rho[:, :1], axis=1)
    rho_g = _group_sums(rho, group, n_groups, cfg)
    order = _expansion_device(rho_g, lab_f, counts_g, acts.shape[1], cfg)
    if _wide(cfg):
        rho_g = jnp.stack([rho_g.hi, rho_g.lo], axis=-1)
    return rho_g, tie, constant, order


def _group_sums(rho, group, n_groups: int, cfg: SearchConfig):
    """Sums over the inputs of each label group of twice the ranks (..., N) -> (..., G):
    float64, or exact U64 limbs (float32 path)."""
    def seg(x):
        return jnp.moveaxis(jax.ops.segment_sum(jnp.moveaxis(x, -1, 0), group,
                                                num_segments=n_groups), 0, -1)
    if not _wide(cfg):
        return seg(rho.astype(jnp.float64))
    return wide.limb_sums(seg, rho.astype(jnp.uint32), rho.shape[-1])


def _sort_keys_f32(a):
    """uint64 keys whose order is the order of float32 values, low 32 bits = position."""
    b = (a.astype(np.float32) + np.float32(0)).view(np.uint32)  # +0: -0.0 -> 0.0
    k = b ^ np.where(b >> np.uint32(31), np.uint32(0xFFFFFFFF), np.uint32(0x80000000))
    return (k.astype(np.uint64) << np.uint64(32)) | np.arange(a.shape[1], dtype=np.uint64)


def _rank_block(a, group, n_groups):
    """Group sums of twice the average ranks for a block of neurons a (u, N)."""
    u, n = a.shape
    if n < 2 ** 31 and np.array_equal(a.astype(np.float32), a):  # one packed-key sort
        key = _sort_keys_f32(a)
        key.sort(axis=1)
        idx = (key & np.uint64(0xFFFFFFFF)).astype(np.int32)
        vals = (key >> np.uint64(32)).astype(np.uint32)
        del key
    else:  # exact float64 order
        idx = np.argsort(a, axis=1)
        vals = np.take_along_axis(a, idx, axis=1)
    start = _run_starts(vals)
    del vals
    gid = group[idx].astype(np.int64)
    gid += (np.arange(u, dtype=np.int64) * n_groups)[:, None]
    n_runs = start.sum(axis=1)
    if (n_runs == n).all():  # no ties: twice the rank of sorted position p is 2p + 2
        rho = np.broadcast_to(np.arange(2.0, 2.0 * n + 1.0, 2.0), (u, n))
        tie = np.zeros(u)
    else:  # tie groups over the flattened block (every row starts a group)
        starts, sizes = _runs(start)
        rho = np.repeat(2.0 * (starts % n) + sizes + 1.0, sizes)  # first + last + 2
        tie = _tie_sum(starts, sizes, u, n)
    rho_g = np.bincount(gid.ravel(), weights=np.ravel(rho), minlength=u * n_groups)
    return rho_g.reshape(u, n_groups), tie, n_runs == 1


def _run_starts(vals: np.ndarray) -> np.ndarray:
    """(U, N) bool: where a run of equal values starts in each sorted row."""
    start = np.ones(vals.shape, bool)
    start[:, 1:] = vals[:, 1:] != vals[:, :-1]
    return start


def _runs(start: np.ndarray):
    """Flat start positions and sizes of the runs of a (U, N) start mask (every row starts
    a run, so runs never cross rows)."""
    starts = np.flatnonzero(start.ravel())
    return starts, np.diff(np.append(starts, start.size))


def _tie_sum(starts, sizes, u: int, n: int) -> np.ndarray:
    """(U,) sum over the tie groups of each row of t^3 - t (float64)."""
    s64 = sizes.astype(np.float64)
    return np.bincount(starts // n, weights=s64 ** 3 - s64, minlength=u)


def _tie_term_host(a: np.ndarray) -> np.ndarray:
    """(U,) sum over tie groups of t^3 - t of each row (float64, as the host ranking)."""
    u, n = a.shape
    return _tie_sum(*_runs(_run_starts(np.sort(a, axis=1))), u, n)


def group_rank_sums_host(acts: np.ndarray, table: ConceptTable, block: int = 32):
    """Per neuron: group sums of twice the average ranks (U, G), tie term (U,), constant (U,).

    numpy on the host (its vectorised sort is ~30x faster than XLA's CPU sort); float32
    activations are sorted as one packed 64-bit key (value bits, position), float64 ones
    by ``argsort``. Blocks of neurons run on a thread pool.
    """
    from concurrent.futures import ThreadPoolExecutor
    import os
    n_units = acts.shape[0]
    starts = range(0, n_units, block)
    fn = lambda s: _rank_block(acts[s:s + block], table.group_of_input, table.n_groups)  # noqa
    workers = max(1, min(len(starts), os.cpu_count() or 1))
    with ThreadPoolExecutor(workers) as ex:
        parts = list(ex.map(fn, starts))
    return tuple(np.concatenate(x) for x in zip(*parts))


def _search_blocks(rho_g, constant, expand, lab_f, lab_t, nz_g, nz_c, counts_g, *,
                   n_total: int, cfg: SearchConfig):
    """lax.map over blocks of ``cfg.block`` neurons (U a multiple of the block)."""
    n_units = rho_g.shape[0]
    nb = n_units // cfg.block
    split = lambda x: x.reshape(nb, cfg.block, *x.shape[1:])  # noqa: E731

    def fn(args):
        return _search_block(*args, lab_f=lab_f, lab_t=lab_t, nz_g=nz_g, nz_c=nz_c,
                             counts_g=counts_g, n_total=n_total, cfg=cfg)

    out = jax.lax.map(fn, (split(rho_g), split(constant), split(expand)))
    return tuple(o.reshape(n_units, *o.shape[2:]) for o in out)


def _shard_neurons(fn, mesh: Mesh | None, n_sharded: int, n_replicated: int):
    """``fn`` with its first ``n_sharded`` arguments split over the mesh's first axis."""
    if mesh is None:
        return fn
    shard, rep = P(mesh.axis_names[0]), P()
    return jax.shard_map(fn, mesh=mesh, in_specs=(shard,) * n_sharded + (rep,) * n_replicated,
                         out_specs=shard, check_vma=False)


@functools.partial(jax.jit, static_argnames=("cfg", "mesh", "n_total"))
def _search_jit(rho_g, constant, expand, lab_f, lab_t, nz_g, nz_c, counts_g, *,
                n_total: int, cfg: SearchConfig, mesh: Mesh | None):
    fn = functools.partial(_search_blocks, n_total=n_total, cfg=cfg)
    return _shard_neurons(fn, mesh, 3, 5)(rho_g, constant, expand, lab_f, lab_t, nz_g, nz_c,
                                          counts_g)


def _null_block(rho, keys, constant, perm_ids, lab_f, lab_t, nz_g, nz_c, counts_g, group, *,
                n_total: int, n_groups: int, cfg: SearchConfig):
    """Best-formula statistics of the searches on permuted inputs for a block of neurons.

    ``rho`` (u, N): twice the average ranks; ``keys`` (u, 2): one PRNG key per neuron;
    ``perm_ids`` (P,): which permutations (permutation p of neuron u uses
    ``fold_in(keys[u], p)``, so results do not depend on chunking or sharding). For every
    (neuron, permutation) the ranks are permuted relative to the labels, the group rank sums
    and the expansion list are recomputed and the whole beam search runs, ``vmap``-ped over
    the permutations. Returns rank sum, count, validity (u, P) of the best formula of the
    last step, and ``complete`` (u, P).
    """
    def one(rho_u, key_u, p):
        perm = jax.random.permutation(jax.random.fold_in(key_u, p), n_total)
        return _group_sums(rho_u[perm], group, n_groups, cfg)

    rho_g = jax.vmap(jax.vmap(one, (None, None, 0)), (0, 0, None))(rho, keys, perm_ids)

    def search(rg):  # rg (u, G): one permutation of every neuron of the block
        expand = _expansion_device(rg, lab_f, counts_g, n_total, cfg)
        out = _search_block(rg, constant, expand, lab_f, lab_t, nz_g, nz_c, counts_g,
                            n_total, cfg)
        r2, n, valid, complete = out[2], out[3], out[5], out[6]
        return r2[:, -1, 0], n[:, -1, 0], valid[:, -1, 0], complete

    return jax.vmap(search, in_axes=1, out_axes=1)(rho_g)


@functools.partial(jax.jit, static_argnames=("cfg", "mesh", "n_total", "n_groups", "block"))
def _null_jit(rho, keys, constant, perm_ids, lab_f, lab_t, nz_g, nz_c, counts_g, group, *,
              n_total: int, n_groups: int, cfg: SearchConfig, mesh: Mesh | None, block: int):
    def blocks(rho, keys, constant, perm_ids, *rest):
        nb = rho.shape[0] // block
        split = lambda x: x.reshape(nb, block, *x.shape[1:])  # noqa: E731
        fn = lambda a: _null_block(*a, perm_ids, *rest, n_total=n_total,  # noqa: E731
                                   n_groups=n_groups, cfg=cfg)
        out = jax.lax.map(fn, (split(rho), split(keys), split(constant)))
        return tuple(o.reshape(rho.shape[0], *o.shape[2:]) for o in out)

    if mesh is None:
        return blocks(rho, keys, constant, perm_ids, lab_f, lab_t, nz_g, nz_c, counts_g, group)
    shard, rep = P(mesh.axis_names[0]), P()
    fn = jax.shard_map(blocks, mesh=mesh, in_specs=(shard,) * 3 + (rep,) * 7,
                       out_specs=shard, check_vma=False)
    return fn(rho, keys, constant, perm_ids, lab_f, lab_t, nz_g, nz_c, counts_g, group)


def _mesh_layout(mesh, n_units: int, block: int):
    """(mesh or None for one device, number of devices, block, padded number of neurons)."""
    if mesh is not None and mesh.devices.size == 1:
        mesh = None
    n_dev = 1 if mesh is None else int(mesh.shape[mesh.axis_names[0]])
    per_dev = int(math.ceil(n_units / n_dev))  # power-of-two blocks: fewer recompilations
    block = max(1, min(block, 2 ** int(math.ceil(math.log2(max(per_dev, 1))))))
    unit = block * n_dev
    return mesh, n_dev, block, int(math.ceil(n_units / unit) * unit)


CHUNK_NEURONS = 1024  # default neurons per compiled call of the search (progress steps)


def check_chunk(chunk: int | None) -> None:
    """Refuses a ``chunk`` (neurons per compiled call) that is not None or >= 1."""
    if chunk is not None and int(chunk) < 1:
        raise InputError(f"chunk must be >= 1 neurons or None, got {chunk}")


def _chunking(padded: int, unit: int, chunk: int | None):
    """(neurons per chunk, number of chunks): chunks are multiples of ``unit`` (block x
    devices) covering ``padded`` neurons; by default about ``CHUNK_NEURONS`` each, sized so
    that padding the last one adds less than one ``unit`` per chunk."""
    check_chunk(chunk)
    target = CHUNK_NEURONS if chunk is None else int(chunk)
    n_chunks = max(1, -(-padded // max(target, unit)))
    size = -(-padded // n_chunks)
    size = -(-size // unit) * unit
    return size, -(-padded // size)


def _first_device(mesh):
    return jax.local_devices()[0] if mesh is None else mesh.devices.flat[0]


def _check_precision(cfg: SearchConfig, n_total: int):
    if cfg.precision not in PRECISIONS:
        raise InputError(f"precision must be one of {PRECISIONS}, got {cfg.precision!r}")
    if cfg.precision == "float32" and n_total > MAX_N_32:
        raise InputError(f"precision='float32': exact only for N < 2^24 = {MAX_N_32 + 1} "
                         f"inputs (ranks and counts in 32 bits, rank sums < 2^48 in two "
                         f"uint32 limbs), got N={n_total}; use precision='float64' on a "
                         f"backend with float64 (CPU/GPU) or fewer inputs")


def _device_args(table: ConceptTable, cfg: SearchConfig):
    sd = np.float64 if cfg.precision == "float64" else np.uint32
    nz_c, nz_g = (x.astype(np.int32) for x in np.nonzero(table.group_labels.T))
    return (table.group_labels.astype(sd), table.group_labels.T, nz_g, nz_c,
            table.group_counts.astype(sd))


def _exact_stats(r2, n, n_total: int, precision: str):
    """Twice the rank sums and counts as exact float64 (float32 path: from the (..., 2)
    uint32 limbs [hi, lo]; every value is below 2^48)."""
    n = np.asarray(n).astype(np.int64)
    if precision == "float64":
        return np.asarray(r2, np.float64), n.astype(np.float64)
    r2 = np.asarray(r2)
    full = wide.to_int(U64(r2[..., 0], r2[..., 1]))
    return full.astype(np.float64), n.astype(np.float64)


def beam_search(acts: np.ndarray, table: ConceptTable, cfg: SearchConfig, mesh=None,
                rank_on: str | None = None, devices=None, *, chunk: int | None = None,
                progress: bool | None = None, desc: str = "invert"):
    """Runs the batched beam search on activations (U, N); returns a dict of numpy arrays.

    Keys: ``literals`` (U, L, B, L) int32 literal ids (-1 = none), ``ops`` (U, L, B, L),
    ``rank_sum2`` and ``count`` (U, L, B) float64 (exact integers in both precisions),
    ``auc`` (U, L, B) float64 (recomputed on the host from the exact integers, so the two
    precisions report identical AUCs), ``auc_device`` (U, L, B) the AUC as computed in the
    search (float64, or the float64 rounded to float32 in the float32 path), ``valid`` (U, L, B), ``tie_term`` (U,),
    ``constant`` (U,), ``complete`` (U,) (default mode: whether the de-duplicated beam is
    exact; the caller retries with a larger ``dedup_factor``).
    ``mesh``: ``repsim_jax._devices`` convention (None: the default device); neurons are
    split over its first axis. ``devices=``: deprecated alias of ``mesh``.
    ``rank_on``: "host" (numpy sort; default on CPU) or "device" (XLA sort; default on
    accelerators) for the per-neuron ranks and expansion lists.
    ``chunk``: neurons per compiled call (rounded up to a multiple of block x devices;
    default: ~``CHUNK_NEURONS``, balanced so the last chunk is barely padded). Every
    chunk has the same shape (the last one padded with inert neurons), so the search
    compiles once; between chunks progress is reported under the ``progress=``
    convention (:mod:`repsim_jax._progress`, ``desc`` names the bar). Results do not
    depend on ``chunk`` (every neuron is searched independently).
    """
    mesh = as_mesh(resolve_mesh_alias(mesh, devices, "devices", "beam_search"))
    n_units, n_total = acts.shape
    _check_precision(cfg, n_total)
    mesh, n_dev, block, padded = _mesh_layout(mesh, n_units, cfg.block)
    if rank_on is None:
        rank_on = "host" if _first_device(mesh).platform == "cpu" else "device"
    if rank_on not in ("host", "device"):
        raise InputError(f"rank_on must be 'host' or 'device', got {rank_on!r}")
    cfg = dataclasses.replace(cfg, block=block)
    f64 = cfg.precision == "float64"
    with jax.enable_x64(f64):
        lab_f, lab_t, nz_g, nz_c, counts_g = _device_args(table, cfg)
        if rank_on == "host":
            rho_g, tie, constant = group_rank_sums_host(np.asarray(acts), table)
            expand = expansion_order_host(rho_g, table, cfg)
            if not f64:  # exact integers < 2^48 -> (U, G, 2) uint32 limbs [hi, lo]
                limbs = wide.from_int(rho_g)
                rho_g = np.stack([limbs.hi, limbs.lo], axis=-1)
        else:
            rho_g, tie, constant, expand = (np.asarray(x) for x in _stats_device(
                jnp.asarray(acts, jnp.float64 if f64 else jnp.float32),
                jnp.asarray(table.group_of_input), jnp.asarray(lab_f), jnp.asarray(counts_g),
                cfg=cfg, n_groups=table.n_groups))
            if not f64:   # the device's float32 tie term is rounded: exact one on the host
                tie = _tie_term_host(np.asarray(acts, np.float32))
        size, n_chunks = _chunking(padded, block * n_dev, chunk)
        pad = size * n_chunks - n_units
        rho_g = np.pad(rho_g, ((0, pad),) + ((0, 0),) * (rho_g.ndim - 1))
        constant_p = np.pad(constant, (0, pad), constant_values=True)
        expand = np.pad(expand, ((0, pad), (0, 0)))
        rep = _put([lab_f, lab_t, nz_g, nz_c, counts_g], mesh, 0)
        parts = []
        with _progress.bar(n_units, desc=desc, unit="neuron", progress=progress) as bar:
            pending = None   # one chunk in flight while the previous one is collected
            for i in range(n_chunks + 1):
                nxt = None
                if i < n_chunks:
                    sl = slice(i * size, (i + 1) * size)
                    nxt = _search_jit(*_put([rho_g[sl], constant_p[sl], expand[sl]], mesh, 3),
                                      *rep, n_total=n_total, cfg=cfg, mesh=mesh)
                if pending is not None:
                    parts.append([np.array(o) for o in pending])
                    bar.update(min(size, n_units - (i - 1) * size))
                pending = nxt
        out = [np.concatenate(x)[:n_units] for x in zip(*parts)]
    keys = ("literals", "ops", "rank_sum2", "count", "auc", "valid", "complete")
    res = dict(zip(keys, out))
    res["rank_sum2"], res["count"] = _exact_stats(res["rank_sum2"], res["count"], n_total,
                                                  cfg.precision)
    res["auc_device"] = res["auc"]   # as computed in the search (float32 path: RN32)
    res["auc"] = _host_auc(res["rank_sum2"], res["count"], res["literals"], n_total,
                           table.n_concepts, cfg)
    res.update(tie_term=np.array(tie, np.float64), constant=np.array(constant))
    return res


def _host_auc(r2, n, literals, n_total: int, n_concepts: int, cfg: SearchConfig):
    """float64 AUCs of the beams from exact statistics, computed as the float64 search does
    (compat: NOT c of step 1 is ``1 - AUC(c)`` with AUC 0 for an undefined AUC(c))."""
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = auc_from_rank_sums_np(r2, n, n_total)
        if cfg.compat:
            negated = literals[:, 0, :, 0] >= n_concepts
            c_auc = auc_from_rank_sums_np(float(n_total) * (n_total + 1) - r2[:, 0],
                                          n_total - n[:, 0], n_total)
            c_auc = np.where(np.isnan(c_auc), 0.0, c_auc)
            auc[:, 0] = np.where(negated, 1.0 - c_auc, auc[:, 0])
    return auc


def _put(args, mesh, n_sharded: int):
    if mesh is None:
        return [jnp.asarray(x) for x in args]
    from jax.sharding import NamedSharding
    sh, rep = NamedSharding(mesh, P(mesh.axis_names[0])), NamedSharding(mesh, P())
    return [jax.device_put(x, sh if i < n_sharded else rep) for i, x in enumerate(args)]


def twice_ranks_host(acts: np.ndarray) -> np.ndarray:
    """(U, N) int32 twice the 1-based average ranks of each row (exact integers)."""
    from scipy.stats import rankdata
    return (2.0 * rankdata(np.asarray(acts), axis=1)).astype(np.int32)


def null_best_auc(acts: np.ndarray, table: ConceptTable, cfg: SearchConfig, n_perm: int,
                  seed: int = 0, *, mesh=None, chunk: int | None = None,
                  neuron_ids=None, progress: bool | None = None,
                  desc: str = "invert null") -> np.ndarray:
    """Best-formula AUC of the whole beam search on ``n_perm`` permutations of each neuron.

    The inputs' activations are permuted relative to their labels (H0: the neuron carries
    no information about the concepts) and the search of ``cfg`` is rerun from scratch
    (group rank sums, expansion list, every step), so the null distribution includes the
    selection of the best formula among all candidates. Permutation ``p`` of neuron ``u``
    is drawn from ``fold_in(fold_in(PRNGKey(seed), neuron_ids[u]), p)``: reproducible and
    independent of ``chunk``, of the mesh and of the other neurons of the call.

    Args:
      acts: (U, N) activations; ``table``, ``cfg``: as for :func:`beam_search`.
      n_perm: permutations per neuron; ``chunk``: permutations per compiled call (memory:
        ~``chunk * block`` searches at once; default from ``cfg.block``).
      neuron_ids: (U,) ints folded into the key (default 0..U-1).
      progress: one step per chunk of permutations (:mod:`repsim_jax._progress`).
    Returns:
      (U, n_perm) float64 AUCs (recomputed on the host from the exact statistics, as the
      observed ones), NaN where the permuted search found no admissible formula. Sign
      convention as the search: large is good in mode "positive", small in "negative".
    """
    mesh = as_mesh(mesh)
    n_units, n_total = acts.shape
    _check_precision(cfg, n_total)
    if int(n_perm) < 1:
        raise InputError(f"n_perm must be >= 1, got {n_perm}")
    n_perm = int(n_perm)
    if chunk is None:
        chunk = max(1, min(n_perm, cfg.block))
    chunk = int(min(chunk, n_perm))
    mesh, n_dev, block, padded = _mesh_layout(mesh, n_units, max(1, cfg.block // chunk))
    ids = np.arange(n_units) if neuron_ids is None else np.asarray(neuron_ids, np.int64)
    f64 = cfg.precision == "float64"
    rho = twice_ranks_host(acts)
    constant = (rho == rho[:, :1]).all(axis=1)
    pad = padded - n_units
    with jax.enable_x64(f64):
        base = jax.random.PRNGKey(int(seed))
        keys = np.asarray(jax.vmap(lambda i: jax.random.fold_in(base, i))(
            jnp.asarray(ids, jnp.uint32)))
        lab_f, lab_t, nz_g, nz_c, counts_g = _device_args(table, cfg)
        sharded = _put([np.pad(rho, ((0, pad), (0, 0))),
                        np.pad(keys, ((0, pad), (0, 0))),
                        np.pad(constant, (0, pad), constant_values=True)], mesh, 3)
        rep = _put([lab_f, lab_t, nz_g, nz_c, counts_g, table.group_of_input], None, 0)
        if mesh is not None:
            rep = _put(rep, mesh, 0)
        r2s, ns, oks = [], [], []
        bar = _progress.bar(n_perm, desc=desc, unit="permutation", progress=progress)
        for start in range(0, n_perm, chunk):
            perm_ids = jnp.arange(start, start + chunk, dtype=jnp.uint32)
            c = cfg
            while True:
                r2, n, ok, complete = (np.asarray(x)[:n_units] for x in _null_jit(
                    *sharded[:3], perm_ids, *rep, n_total=n_total, n_groups=table.n_groups,
                    cfg=c, mesh=mesh, block=block))
                if c.compat or complete[~constant].all():
                    break
                c = dataclasses.replace(c, dedup_factor=c.dedup_factor * 4)
            keep = min(chunk, n_perm - start)
            r2s.append(r2[:, :keep]), ns.append(n[:, :keep]), oks.append(ok[:, :keep])
            bar.update(keep)
        bar.close()
    r2, n = _exact_stats(np.concatenate(r2s, 1), np.concatenate(ns, 1), n_total,
                         cfg.precision)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = auc_from_rank_sums_np(r2, n, n_total)
    ok = np.concatenate(oks, 1).astype(bool)
    return np.where(ok, auc, np.nan)
