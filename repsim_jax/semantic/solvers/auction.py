r"""``auction``: Bertsekas' forward auction on a sparse candidate graph, with a certificate.

Candidates (:func:`auction_candidates`): each row keeps its best column in each of ~k
strided column groups, ranked by the column-centred costs plus the column potentials of one
dense log-domain Sinkhorn step, plus the diagonal (so the identity is a perfect matching of
the graph and the auction terminates). Bidding (:func:`auction_matching` for one pair,
:func:`auction_lanes` for many pairs on a work queue of lanes in-graph,
:func:`auction_host` on the host with numba): Gauss-Seidel over small Jacobi rounds of up
to ``bidders`` free rows. Epsilon-optimal on its candidate graph,
:math:`\sum_k R_{k\pi(k)} \ge \mathrm{OPT}_{cand}(R) - S\varepsilon` (R: the costs in units
of r, the largest range of a row's group maxima).

**Certificate.** Any column prices :math:`q` give an upper bound on the optimum of the
FULL cost matrix (LP duality of the assignment problem):

.. math:: \mathrm{OPT}(M) \le \sum_i \max_j (M_{ij} - q_j) + \sum_j q_j ,

so :math:`\mathrm{gap} = \sum_i \max_j (M_{ij} - q_j) + \sum_j q_j - \sum_i M_{i\pi(i)}
= \sum_i [\max_j (M_{ij} - q_j) - (M_{i\pi(i)} - q_{\pi(i)})] \ge 0` bounds the matching's
shortfall :math:`s_{exact} - s`. The auction's final prices (in the costs' units: the
candidate values' column constants plus r times the bidding prices) are near-optimal duals,
and the host auction makes them so for the full matrix: after bidding at the final epsilon,
every row whose slack on the FULL row exceeds epsilon (its best column was not a candidate)
gets that column as an extra candidate (after 8 extras it bids over all columns) and bids
again, until every row is epsilon-complementary-slack on the full matrix (``rounds`` at
most), so the gap is at most :math:`S\varepsilon r`. With ``tol`` (see :func:`repsim_jax.semantic.rsm`), the final
epsilon of each pair is chosen from ``tol`` and the pair's norms, with epsilon-scaling from
``eps`` down to it (:data:`EPS_FACTOR` per phase); pairs whose gap still exceeds the
tolerance are solved exactly. The bound is computed from the solver's own state and one
pass over the cost matrix; no exact solve is involved.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from repsim_jax._checks import InputError
from repsim_jax.semantic.host import numba_kernel
from repsim_jax.semantic.solvers.base import Option, Solver, register

__all__ = ["auction_candidates", "auction_graph", "auction_prices", "auction_matching",
           "auction_lanes", "auction_host", "host_auction_available", "auction_cost_dtype",
           "AUCTION", "EPS_FACTOR", "DEFAULT_TOL"]

EPS_FACTOR = 0.2          # epsilon-scaling: each phase's epsilon is 0.2 x the previous one
DEFAULT_TOL = 1e-3        # rsm(matcher="auction") certifies every entry within 1e-3


def auction_graph(cost, k: int, *, centred: bool = False, dual_eps: float = 0.05):
    r"""Candidate graph of one (S, S) problem and the full matrix in the same units:
    ``(vals, idx, full, scale)`` with ``vals``, ``idx`` (S, G + 1) (see
    :func:`auction_candidates`), ``full`` (S, S) the transformed costs
    :math:`(M_{ij} - c_j) / r` whose entries at ``idx`` are ``vals`` (c_j a constant per
    column: same optimum, ``OPT(M) = r OPT(full) + sum_j c_j``) and ``scale`` = r."""
    s = cost.shape[-1]
    m = cost.astype(jnp.float32)
    if not centred:
        m = m - m.mean(0, keepdims=True)
    tiny = jnp.finfo(jnp.float32).tiny
    if k >= s:
        scale = jnp.maximum(jnp.max(m.max(1) - m.min(1)), tiny)
        full = m / scale
        return full, jnp.broadcast_to(jnp.arange(s, dtype=jnp.int32), (s, s)), full, scale
    if dual_eps:    # one dense log-domain Sinkhorn step; its column potentials g are a
        # constant per column, so R + g has the same optimum, but it no longer ranks every
        # row's columns by the columns' strength alone
        e = dual_eps * jnp.maximum(jnp.max(m.max(1) - m.min(1)), tiny)
        f = -e * jax.nn.logsumexp(m / e, axis=1)
        m = m - e * jax.nn.logsumexp((m + f[:, None]) / e, axis=0)[None, :]
    width = -(-s // k)
    groups = -(-s // width)
    key = jnp.pad(m, ((0, 0), (0, groups * width - s)), constant_values=-jnp.inf)
    key = key.reshape(s, width, groups)           # group g: columns g, g + G, g + 2G, ...
    # argmax, not an equality test against key.max(): under jit + vmap XLA may compute the
    # centred values in two fusions, and a bitwise mismatch gave wrong indices
    pos = jnp.argmax(key, 1)
    best = jnp.take_along_axis(key, pos[:, None, :], 1)[:, 0, :]
    idx = (pos * groups + jnp.arange(groups)).astype(jnp.int32)
    scale = jnp.maximum(jnp.max(best.max(1) - best.min(1)), tiny)
    rows = jnp.arange(s, dtype=jnp.int32)
    diag = jnp.where((idx == rows[:, None]).any(1), -jnp.inf, jnp.diagonal(m))
    return (jnp.concatenate([best, diag[:, None]], 1) / scale,
            jnp.concatenate([idx, rows[:, None]], 1), m / scale, scale)


def auction_candidates(cost, k: int, *, centred: bool = False, dual_eps: float = 0.05):
    r"""Sparse candidate graph of one (S, S) problem: ``(vals, idx)``, both (S, G + 1).

    The columns are dealt into G = ceil(S / ceil(S / k)) strided groups (group g: columns g,
    g + G, g + 2G, ...; strided rather than consecutive, so that spatially clustered strong
    positions spread over the groups) and each row keeps its best column per group (one pass
    over the matrix, cheaper than a top-k on CPU), plus
    the diagonal as one extra candidate (value -inf when it already is its group's best; a
    -inf candidate is never taken), so the identity is a perfect matching of the candidate
    graph and the auction terminates. With ``k >= S`` every column is a candidate (dense
    auction, (S, S)).

    Values are column-mean reduced and scaled, :math:`R_{ij} = (M_{ij} - \bar M_{\cdot j})
    / r`, with r the largest range of a row's group maxima (with ``k >= S`` the largest row
    range). Subtracting a constant per column (or per row) changes every permutation's score
    by the same amount, so the optimum is unchanged; the column means remove the pull of
    high-norm columns that otherwise dominate every row, and the unit of ``eps``, r, ignores
    such constants, e.g. offsets shared by all positions (features ``50 + noise``: with
    :math:`\max|M|`, set by the offset, as the unit, the auction stopped at once and
    captured 55% of the exact matching's gain over the identity; 99.7% with r).
    ``dual_eps`` (default 0.05, of the largest row range; 0 = off): groups are ranked by
    :math:`R_{ij} + g_j` with g the column potentials of one dense log-domain Sinkhorn step,
    and the values carry them (a constant per column: same optimum, near-dual prices for
    the auction). Without it all similar rows keep the same strongest columns, and on
    trained CNN activations (many near-equivalent strong positions) the candidates covered
    ~60% of the optimal matching's weight (~80% with it).
    ``centred=True``: ``cost`` is already column-centred up to row constants, e.g.
    :math:`(X_a - \bar x_a)(X_b - \bar x_b)^\top` (skips one pass over the matrix).
    """
    return auction_graph(cost, k, centred=centred, dual_eps=dual_eps)[:2]


def _sparse_sinkhorn_prices(vals, idx, eps, iters):
    """Column prices -g from ``iters`` log-domain Sinkhorn steps on the candidate graph."""
    s, kk = vals.shape
    seg = idx.reshape(-1)
    g = jnp.zeros(s, vals.dtype)
    for _ in range(iters):
        f = -eps * jax.nn.logsumexp((vals + g[idx]) / eps, axis=1)
        b = (vals + f[:, None]).reshape(-1) / eps
        mx = jax.ops.segment_max(b, seg, num_segments=s)
        mx = jnp.where(jnp.isfinite(mx), mx, 0.0)
        tot = jax.ops.segment_sum(jnp.exp(b - mx[seg]), seg, num_segments=s)
        g = -eps * (jnp.log(jnp.maximum(tot, 1e-30)) + mx)
    return -g


def auction_prices(vals, idx, *, init_eps: float = 4e-2, init_iters: int = 0):
    """Starting prices (S,) of one pair's auction from its candidate graph ``(vals, idx)``:
    ``init_iters`` sparse Sinkhorn steps at ``init_eps`` (zeros when ``init_iters=0``)."""
    if not init_iters:
        return jnp.zeros(vals.shape[0], jnp.float32)
    return _sparse_sinkhorn_prices(vals, idx, init_eps, int(init_iters))


def _bid_step(gather, st, eps, m: int):
    """One step of ONE pair's auction: pop up to ``m`` free rows, let them bid at once.

    ``gather(rows) -> (cols, vals)`` returns the candidate columns and values ``(m, K)`` of
    the given rows; ``st = (price, owner, assign, stack, top)``.
    """
    price, owner, assign, stack, top = st
    s = price.shape[0]
    barange = jnp.arange(m)
    cnt = jnp.minimum(top, m)
    valid = barange < cnt
    top = top - cnt
    rows = stack[jnp.clip(top + cnt - 1 - barange, 0, s - 1)]            # (m,)
    ji, vr = gather(rows)                                                # (m, K)
    kk = ji.shape[1]
    karange = jnp.arange(kk)
    v = vr - price[ji]
    # argmax, not an equality test against v.max(): under jit + vmap XLA may compute v in two
    # fusions, and a bitwise mismatch would give no index (an out-of-range candidate)
    k1 = jnp.argmax(v, 1)
    w1 = jnp.take_along_axis(v, k1[:, None], 1)[:, 0]
    w2 = (jnp.max(jnp.where(karange == k1[:, None], -jnp.inf, v), 1) if kk > 1
          else w1 - 2.0)
    w2 = jnp.maximum(w2, w1 - 2.0)    # one finite candidate: a bounded (valid) raise
    j = jnp.take_along_axis(ji, k1[:, None], 1)[:, 0]
    bid = price[j] + (w1 - w2) + eps
    # Jacobi among the m bidders: a bidder wins unless another valid bidder on the same
    # object bids more (or as much and earlier)
    earlier = barange[None, :] < barange[:, None]
    same = (j[:, None] == j[None, :]) & valid[:, None] & valid[None, :]
    beaten = same & ((bid[None, :] > bid[:, None]) | ((bid[None, :] == bid[:, None]) & earlier))
    win = valid & ~beaten.any(1)
    old = owner[j]
    jw = jnp.where(win, j, s)                         # index s = out of bounds: no-op
    price = price.at[jw].set(bid, mode="drop")
    owner = owner.at[jw].set(rows, mode="drop")
    assign = assign.at[jnp.where(win, rows, s)].set(j, mode="drop")
    evict = win & (old >= 0)
    assign = assign.at[jnp.where(evict, old, s)].set(-1, mode="drop")
    back = jnp.where(evict, old, rows)                # evicted owners and losing bidders
    push = evict | (valid & ~win)
    pos = top + jnp.cumsum(push) - 1
    stack = stack.at[jnp.where(push, pos, s)].set(back, mode="drop")
    return price, owner, assign, stack, top + push.sum()


def _fresh_state(price):
    s = price.shape[-1]
    return (price, jnp.full(s, -1, jnp.int32), jnp.full(s, -1, jnp.int32),
            jnp.arange(s, dtype=jnp.int32)[::-1], jnp.asarray(s, jnp.int32))


def _complete(assign):
    """A permutation from a partial assignment (-1 = free): rows left free (only after
    ``max_bids``, never on a finished run) take the free columns in index order."""
    s = assign.shape[-1]
    owner = jnp.full(s, -1, jnp.int32).at[jnp.where(assign >= 0, assign, s)].set(
        jnp.arange(s, dtype=jnp.int32), mode="drop")
    free_rows = assign < 0
    rank = jnp.cumsum(free_rows) - 1
    cols_in_order = jnp.argsort(owner >= 0, stable=True).astype(jnp.int32)
    return jnp.where(free_rows, cols_in_order[jnp.clip(rank, 0, s - 1)], assign)


def _auction_defaults(s, eps, bidders, max_bids):
    return (jnp.asarray(eps, jnp.float32), max(1, min(int(bidders), s)),
            int(max_bids) if max_bids is not None else 50 * s)


def full_gap(full, price, perm):
    """Certificate of one pair in the units of ``full`` (see the module docstring):
    :math:`\\sum_i \\max_j (F_{ij} - p_j) - (F_{i\\pi(i)} - p_{\\pi(i)}) \\ge 0` (float32;
    jit/vmap-able)."""
    red = full - price[None, :]
    own = jnp.take_along_axis(red, perm[:, None], 1)[:, 0]
    return jnp.sum(red.max(1) - own)


def auction_matching(cost, *, k: int = 32, eps: float = 1e-2, init_iters: int = 0,
                     init_eps: float = 4e-2, bidders: int = 4, max_bids: int | None = None,
                     dual_eps: float = 0.05, return_state: bool = False):
    r"""Approximate maximum matching of one (S, S) cost matrix by the auction algorithm.

    Bertsekas' forward auction on the candidate graph of :func:`auction_candidates` (values
    :math:`R_{ij}`, columns = objects with prices :math:`p_j`). Gauss-Seidel: a free row i
    takes its best object :math:`j^* = \arg\max_j R_{ij} - p_j` (value :math:`w_1`, second
    best :math:`w_2`), raises its price by :math:`w_1 - w_2 + \varepsilon` and evicts the
    previous owner, who is pushed on the stack of free rows. Every step keeps
    :math:`\varepsilon`-complementary slackness, so at the end

    .. math:: \sum_k R_{k\pi(k)} \ge \max_{\sigma \in \mathrm{cand}} \sum_k R_{k\sigma(k)}
              - S\varepsilon   \quad(\text{in units of } r).

    With ``k < S`` the candidate values already include the column potentials of one dense
    Sinkhorn step (``dual_eps``, :func:`auction_candidates`; the dense graph, ``k >= S``,
    has none), i.e. near-dual prices, so prices start at 0;
    ``init_iters`` sparse log-domain Sinkhorn steps at ``init_eps`` can add to that.
    Each step pops up to ``bidders`` free rows, which bid at once against
    the same prices (a small Jacobi auction: on one object only the highest bid wins, losers
    go back on the stack), cutting the number of sequential steps. Jit/vmap-able (vmapped,
    all pairs step in lock step until the last one is done; :func:`auction_lanes` runs many
    pairs without that wait and gives the same permutations); after ``max_bids`` (default
    50 S) steps any row still free takes a free column in index order, so the output is
    always a permutation. Returns ``perm`` (S,) int32; with ``return_state`` also
    ``(steps, gap)``: the number of bidding steps and the certificate on the FULL matrix in
    the costs' units (:func:`full_gap` times r; OPT(M) - score <= gap).

    Defaults measured at N=64, S=196, C=256 on the 2-core CPU (whole RSM): quality 0.9996
    at 0.41 s (bfloat16 costs 0.29 s); without the dual step (``dual_eps=0``) and one sparse
    Sinkhorn step 0.9991 at 0.38 s. On trained CNN activations with spatially clustered
    strong positions (small_vgg, 64 images) the dual step matters: features.7 (S=256)
    0.973 (worst pair 0.80) vs 0.905 (0.57) without, features.11 (S=64) 0.997 vs 0.994;
    ``rsm(matcher="auction")`` certifies every entry (``tol``) with the host auction.
    """
    cost = jnp.asarray(cost)
    vals, idx, full, scale = auction_graph(cost, int(k), dual_eps=dual_eps)
    price = auction_prices(vals, idx, init_eps=init_eps, init_iters=init_iters)
    eps, m, limit = _auction_defaults(cost.shape[-1], eps, bidders, max_bids)

    def gather(rows):
        return idx[rows], vals[rows]

    def body(c):
        st, n = c
        return _bid_step(gather, st, eps, m), n + 1

    st, n = jax.lax.while_loop(lambda c: (c[0][4] > 0) & (c[1] < limit), body,
                               (_fresh_state(price), jnp.asarray(0, jnp.int32)))
    perm = _complete(st[2])
    if not return_state:
        return perm
    return perm, n, full_gap(full, st[0], perm) * scale


def auction_lanes(vals, idx, prices, *, eps: float = 1e-2, bidders: int = 4,
                  max_bids: int | None = None, lanes: int = 64, return_prices: bool = False):
    r"""The auction of :func:`auction_matching` for a batch of P pairs, scheduled on lanes.

    ``vals``, ``idx``: (P, S, K) candidate graphs (:func:`auction_candidates`), ``prices``:
    (P, S) starting prices (:func:`auction_prices`). Returns (P, S) int32 permutations,
    identical to ``vmap(auction_matching)`` on the same pairs (and with ``return_prices``
    the final prices (P, S), for the certificate :func:`full_gap`).

    Why lanes: the number of bidding steps per pair is very uneven (ReLU-Gaussian costs at
    S=196: mean 178, 99th percentile 420, max 750), so a vmapped ``while_loop`` keeps every
    pair of a batch stepping until the slowest is done (2.5x wasted steps at batch 64). Here
    ``lanes`` pairs step together and a lane whose pair is finished writes its result and
    takes the next unstarted pair (a work queue inside one ``while_loop``), so all lanes stay
    busy until the queue is empty. On the 2-core CPU, 2016 pairs at S=196: 0.33 s vs 0.68 s
    for batches of 64 in lock step (0.49 s at the best batch size, 16).
    With ``lanes >= P`` this is the lock-step schedule.
    """
    n_pairs, s, _ = vals.shape
    b = max(1, min(int(lanes), n_pairs))
    eps, m, limit = _auction_defaults(s, eps, bidders, max_bids)
    eps = jnp.broadcast_to(eps, (n_pairs,))            # a scalar or one epsilon per pair

    def load(p):                        # a lane's fresh state for pair p (p >= P: idle)
        price, owner, assign, stack, top = _fresh_state(prices[jnp.minimum(p, n_pairs - 1)])
        return price, owner, assign, stack, jnp.where(p < n_pairs, top, 0), jnp.int32(0)

    def lane_step(p, st):
        def gather(rows):
            return idx[p, rows], vals[p, rows]
        return _bid_step(gather, st, eps[p], m)

    def body(c):
        pid, st, nxt, out, outp = c
        *core, n = st
        core = jax.vmap(lane_step)(jnp.minimum(pid, n_pairs - 1), tuple(core))
        st = (*core, n + 1)
        done = (pid < n_pairs) & ((st[4] <= 0) | (st[5] >= limit))

        def reload(c):
            pid, st, nxt, out, outp = c
            slot = jnp.where(done, pid, n_pairs)
            out = out.at[slot].set(st[2], mode="drop")
            outp = outp.at[slot].set(st[0], mode="drop")
            new = nxt + jnp.cumsum(done) - 1
            pid = jnp.where(done, jnp.minimum(new, n_pairs), pid)
            fresh = jax.vmap(load)(pid)
            pick = lambda a, f: jnp.where(done.reshape((-1,) + (1,) * (a.ndim - 1)), f, a)  # noqa: E731
            return pid, jax.tree.map(pick, st, fresh), nxt + done.sum(), out, outp

        return jax.lax.cond(done.any(), reload, lambda c: c, (pid, st, nxt, out, outp))

    pid = jnp.arange(b, dtype=jnp.int32)
    init = (pid, jax.vmap(load)(pid), jnp.asarray(b, jnp.int32),
            jnp.full((n_pairs, s), -1, jnp.int32), jnp.zeros((n_pairs, s), jnp.float32))
    *_, out, outp = jax.lax.while_loop(lambda c: jnp.any(c[0] < n_pairs), body, init)
    perm = jax.vmap(_complete)(out)
    return (perm, outp) if return_prices else perm


def _row_best_py(row, price):  # pragma: no cover - compiled by numba
    """max_c row[c] - price[c] (float32; vectorised: fastmath without no-NaN/Inf flags)."""
    best = np.float32(-np.inf)
    for c in range(row.shape[0]):
        v = row[c] - price[c]
        best = v if v > best else best
    return best


def _numba_opts():
    return frozenset({"nsz", "arcp", "contract", "afn", "reassoc"})


def _auction_host_kernel(vals, idx, prices, full, eps0, eps_end, factor, m, limit, rounds,
                         n_extra, out, out_price, out_gap, out_steps):  # pragma: no cover
    """The bidding loop of :func:`auction_lanes` for the host, one pair after the other.

    Without certification (``full`` of shape (P, 1, 1)) and ``eps_end == eps0`` these are the
    same steps in the same order as the lanes (so the same permutations): pop up to ``m``
    free rows, each bids for its best candidate against the same prices, on one object the
    highest bid wins (ties: the earlier bidder), evicted owners and losers go back on the
    stack. With ``eps_end < eps0``: epsilon-scaling, each phase ``factor`` x the previous
    epsilon, rows no longer epsilon-CS on their candidates freed at a phase change. With
    ``full`` (P, S, S): after the last phase, each row that is not epsilon-CS on its FULL
    row gets its best column as an extra candidate (up to ``n_extra``; then it bids over
    every column) and bids again, up to ``rounds`` times; ``out_gap`` gets the certificate
    :math:`\sum_i \max_j (F_{ij} - p_j) - (F_{i\pi(i)} - p_{\pi(i)})` (float64, units of
    ``full``; inf if unfinished). Plain Python loops, compiled by numba
    (:func:`auction_host`); ``out`` (P, S) gets the assignment (-1 = still free after
    ``limit`` steps)."""
    n_pairs, s, kk = vals.shape
    certify = full.shape[1] == s
    ninf = np.float32(-np.inf)
    rows = np.empty(m, np.int32)
    js = np.empty(m, np.int32)
    bids = np.empty(m, np.float32)
    xcap = max(n_extra, 1)
    for p in range(n_pairs):
        price = prices[p].copy()
        owner = np.full(s, -1, np.int32)
        assign = np.full(s, -1, np.int32)
        dense = np.zeros(s, np.bool_)
        dirty = np.zeros(s, np.bool_)   # assigned by a non-dense bid since the last check
        extra = np.empty((s, xcap), np.int32)
        nex = np.zeros(s, np.int32)
        stack = np.empty(s, np.int32)
        for r in range(s):
            stack[r] = s - 1 - r
        top = s
        n = 0
        e = np.float32(eps0[p])
        last = np.float32(eps_end[p])
        rnd = 0
        while True:
            while top > 0 and n < limit:
                cnt = min(top, m)
                top -= cnt
                for b in range(cnt):
                    r = stack[top + cnt - 1 - b]
                    rows[b] = r
                    best = ninf               # best (first index on ties) and second best
                    second = ninf             # in one pass
                    j = 0
                    if dense[r]:
                        for c in range(s):
                            v = full[p, r, c] - price[c]
                            if v > best:
                                second = best
                                best = v
                                j = c
                            elif v > second:
                                second = v
                    else:
                        for k in range(kk):
                            c = idx[p, r, k]
                            v = vals[p, r, k] - price[c]
                            if v > best:
                                second = best
                                best = v
                                j = c
                            elif v > second:
                                second = v
                        for x in range(nex[r]):
                            c = extra[r, x]
                            v = full[p, r, c] - price[c]
                            if v > best:
                                second = best
                                best = v
                                j = c
                            elif v > second:
                                second = v
                    if second < best - 2.0:
                        second = best - 2.0
                    js[b] = j
                    bids[b] = price[j] + (best - second) + e
                pushed = 0
                for b in range(cnt):
                    win = True
                    for c in range(cnt):
                        if c != b and js[c] == js[b] and (
                                bids[c] > bids[b] or (bids[c] == bids[b] and c < b)):
                            win = False
                            break
                    j = js[b]
                    if win:
                        old = owner[j]
                        price[j] = bids[b]
                        owner[j] = rows[b]
                        assign[rows[b]] = j
                        if not dense[rows[b]]:
                            dirty[rows[b]] = True     # e-CS on its candidates only
                        if old >= 0:
                            assign[old] = -1
                            stack[top + pushed] = old
                            pushed += 1
                    else:
                        stack[top + pushed] = rows[b]
                        pushed += 1
                top += pushed
                n += 1
            if n >= limit:
                break
            if e > last:             # next phase: free the rows not e-CS on their graph
                e = max(np.float32(e * factor), last)
                for r in range(s):
                    a = assign[r]
                    if dense[r]:
                        best = _row_best(full[p, r], price)
                        own = full[p, r, a] - price[a]
                    else:
                        best = ninf
                        own = ninf
                        for k in range(kk):
                            c = idx[p, r, k]
                            v = vals[p, r, k] - price[c]
                            if v > best:
                                best = v
                            if c == a and v > own:
                                own = v
                        for x in range(nex[r]):
                            c = extra[r, x]
                            v = full[p, r, c] - price[c]
                            if v > best:
                                best = v
                            if c == a and v > own:
                                own = v
                    if best - own > e:
                        owner[a] = -1
                        assign[r] = -1
                        stack[top] = r
                        top += 1
                continue
            if not certify or rnd >= rounds:
                break
            rnd += 1                 # full-row check: rows whose best column is missing
            for r in range(s):       # (an e-CS row stays so while other prices rise, and
                if not dirty[r]:     # dense rows bid on their full row: only dirty rows)
                    continue
                dirty[r] = False
                a = assign[r]
                best = ninf
                jb = 0
                for c in range(s):
                    v = full[p, r, c] - price[c]
                    if v > best:
                        best = v
                        jb = c
                if best - (full[p, r, a] - price[a]) > e * np.float32(1.01):
                    if nex[r] < n_extra:
                        extra[r, nex[r]] = jb
                        nex[r] += 1
                    else:
                        dense[r] = True
                    owner[a] = -1
                    assign[r] = -1
                    stack[top] = r
                    top += 1
            if top == 0:
                break
        out[p] = assign
        out_price[p] = price
        out_steps[p] = n
        if certify:
            gap = 0.0
            for r in range(s):
                a = assign[r]
                if a < 0:
                    gap = np.inf
                    break
                best = _row_best(full[p, r], price)
                gap += np.float64(best) - np.float64(full[p, r, a] - price[a])
            out_gap[p] = gap


@functools.lru_cache(maxsize=None)
def _compiled_host_kernel():
    """The host kernel compiled by numba with its row-maximum helper (None without numba)."""
    global _row_best
    helper = numba_kernel(_row_best_py, fastmath=_numba_opts())
    if helper is None:
        return None
    _row_best = helper
    return numba_kernel(_auction_host_kernel, fastmath=_numba_opts())


_row_best = _row_best_py


def host_auction_available() -> bool:
    """Whether :func:`auction_host` can run (numba installed: the ``[fast]`` extra)."""
    return _compiled_host_kernel() is not None


def auction_host(vals, idx, prices, *, eps: float = 1e-2, bidders: int = 4,
                 max_bids: int | None = None, full=None, eps_end=None, rounds: int = 8,
                 n_extra: int = 8, return_state: bool = False):
    """:func:`auction_lanes` on the host: the same permutations (P, S) from numpy arrays, the
    bidding loop compiled by numba, releasing the GIL (callers overlap it with device work
    and run it on several threads). On the 2-core CPU, 2016 pairs at S=196: 0.10 s on one
    core vs 0.31 core-s for the XLA:CPU lanes. Needs numba (``pip install
    repsim_jax[fast]``).

    Certified mode: ``full`` (P, S, S) the full matrices in the candidates' units
    (:func:`auction_graph`), ``eps_end`` (P,) each pair's final epsilon (epsilon-scaling
    from ``eps`` by :data:`EPS_FACTOR` per phase), ``rounds`` dense re-bidding rounds (see
    :func:`_auction_host_kernel`), ``n_extra`` extra candidates per row before it bids
    over every column. ``return_state``: ``(perm, prices, gap, steps)`` with
    ``gap`` (P,) float64 the certificate in the units of ``full`` (inf without ``full``).
    """
    kernel = _compiled_host_kernel()
    if kernel is None:
        raise ImportError("auction_host needs numba: pip install 'repsim_jax[fast]'")
    vals = np.ascontiguousarray(vals, np.float32)
    idx = np.ascontiguousarray(idx, np.int32)
    prices = np.ascontiguousarray(prices, np.float32)
    n_pairs, s = vals.shape[:2]
    _, m, limit = _auction_defaults(s, eps, bidders, max_bids)
    e0 = np.full(n_pairs, eps, np.float32)
    e1 = e0 if eps_end is None else np.minimum(np.asarray(eps_end, np.float32), e0)
    full = (np.zeros((n_pairs, 1, 1), np.float32) if full is None
            else np.ascontiguousarray(full, np.float32))
    out = np.empty((n_pairs, s), np.int32)
    out_price = np.empty((n_pairs, s), np.float32)
    out_gap = np.full(n_pairs, np.inf)
    out_steps = np.empty(n_pairs, np.int32)
    kernel(vals, idx, prices, full, e0, e1, np.float32(EPS_FACTOR), m, limit, int(rounds),
           int(n_extra), out, out_price, out_gap, out_steps)
    perm = np.asarray(jax.vmap(_complete)(out)) if (out < 0).any() else out
    return (perm, out_price, out_gap, out_steps) if return_state else perm


@functools.lru_cache(maxsize=None)
def auction_cost_dtype() -> str:
    """The auction's ``cost_dtype="auto"``: ``"bfloat16"`` where matrix products in bfloat16
    are native (GPU, TPU, CPUs with AVX512-BF16 or AMX), else ``"float32"``. (The default is
    ``"float32"``: the certificate (``tol``) needs float32 costs.)

    Only the candidate costs the auction bids on are rounded, from position-centred inputs,
    to a relative error ~2^-9 of what varies between positions, well inside the auction's own
    epsilon (1e-2 of the costs' range); matched scores are always float32. Measured at N=64,
    S=196, C=256 (2-core CPU with AMX): quality 0.99909 in both, 0.26 s vs 0.37 s.
    """
    if jax.default_backend() != "cpu":
        return "bfloat16"
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((ln for ln in f if ln.startswith("flags")), "").split()
    except OSError:
        return "float32"
    return "bfloat16" if {"avx512_bf16", "amx_bf16"} & set(flags) else "float32"


class _Auction(Solver):
    def finalise(self, opts):
        if opts.get("cost_dtype") == "auto":
            opts["cost_dtype"] = auction_cost_dtype()
        return opts

    def check_run(self, opts):
        if opts.get("tol") is not None and opts["cost_dtype"] != "float32":
            raise InputError("matcher 'auction': the certificate (tol) needs float32 "
                             f"costs; cost_dtype={opts['cost_dtype']!r} needs tol=None")

    _KEEP = ("k", "eps", "init_iters", "init_eps", "bidders", "max_bids", "dual_eps")

    def plan(self, cost, norms_a, norms_b, **opts):
        return (), auction_matching(cost, **{q: v for q, v in opts.items() if q in self._KEEP})

    def solve_one(self, cost, norms_a, norms_b, **opts):
        opts = {q: v for q, v in opts.items() if q in self._KEEP}
        perm, steps, gap = auction_matching(cost, return_state=True, **opts)
        limit = _auction_defaults(cost.shape[-1], 0.0, 1, opts.get("max_bids"))[2]
        return perm, {"gap": gap, "iterations": steps, "converged": steps < limit}


AUCTION = register(_Auction(name="auction", certified=True, work_items=True,
                            cpu_block_bytes=1 << 20, options={
    "k": Option(32, "int", doc="candidate column groups per row"),
    "eps": Option(1e-2, "frac", doc="a fraction of the costs' row range"),
    "init_iters": Option(0, "nonneg"),
    "init_eps": Option(4e-2, "pos"),
    "bidders": Option(4, "int"),
    "max_bids": Option(None, "int", nullable=True),
    "lanes": Option(None, "int", nullable=True),
    "dual_eps": Option(0.05, "nonneg"),
    "cost_dtype": Option("float32", "choice", ("auto", "float32", "bfloat16", "float16")),
    "tol": Option(DEFAULT_TOL, "pos", nullable=True,
                  doc="certified max error of every RSM entry; None: uncertified"),
    "rounds": Option(8, "int", doc="re-bidding rounds of the certificate (candidate refresh)"),
}))
