r"""The host/device scheduler of semantic RSMs: which pairs are computed where and when.

Only the pairs i > j are solved (the diagonal is the identity, the lower triangle mirrored).

**Tiles** (every matcher but the auction): the N x N grid is cut into t x t tiles (I >= J)
with t chosen so that a tile's cost tensor ``(L, t*t, S, S)`` stays below
``max_block_bytes`` (never N x N x S x S); a tile's cost matrices are one GEMM
(:func:`repsim_jax.semantic.geometry.tile_costs`). The exact parts of a matcher are solved on
the host (:func:`repsim_jax.semantic.host.solve_exact_host`, threads) while the device
already computes the next block (JAX's asynchronous dispatch), or in-graph
(``solver="hungarian"``, the default on accelerators). Blocks are stacks of tiles whose
stack axis is sharded over the mesh; layers of equal shape are vmapped in the same call.

**Work items** (the auction): its cost per pair is very uneven, so the pairs of all layers
are a flat list of items (l, i, j); a block of items is split over the devices
(``shard_map``); on a device, chunks of items get their cost matrices and candidate graphs
(``lax.map``), then the bidding runs on the host (numba,
:func:`~repsim_jax.semantic.solvers.auction.auction_host`, CPU with one device) overlapping
the next block's products, or in ONE lane-scheduled auction in-graph
(:func:`~repsim_jax.semantic.solvers.auction.auction_lanes`). On CPU blocks run on one host
thread per core. With a tolerance, the certificate of every pair is computed from the
auction's final prices on the full cost matrix, and the pairs over it are solved exactly
(on the host from the same matrices, or by :func:`exact_items`).
"""
from __future__ import annotations

import functools
import os
from concurrent.futures import ThreadPoolExecutor, as_completed

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from repsim_jax.semantic import geometry as geo
from repsim_jax.semantic import host
from repsim_jax.semantic.solvers import auction as auc
from repsim_jax.semantic.solvers import get_solver
from repsim_jax.semantic.solvers.exact import hungarian_matching

__all__ = ["pair_statistics", "default_block_bytes", "exact_items", "PairStatistics"]

CERT_SLACK = 1.0   # certified auction: final eps = CERT_SLACK x tol / S (gap <= S eps worst;
#                    measured on trained small_vgg features.11: gap ~ 0.5 S eps)
CERT_BIDS = 3200   # certified auction: at most min(50 S, CERT_BIDS) bidding steps per pair
#                    (default max_bids); an unfinished pair is solved exactly: cheaper than a
#                    long price war. Trained small_vgg, N=24, loaded 2-core CPU: features.11
#                    (S=64) 0.105 s at 50 S vs 0.117 s at 10 S; features.7 (S=256) 4.77 s
#                    at 50 S (91% solved exactly) vs 3.38 s at 10 S (all), exact 4.80 s


# ------------------------------------------------------------------------ tile work
def _vmapn(f, n):
    for _ in range(n):
        f = jax.vmap(f)
    return f


def _plan_tile(x, i0, j0, li, lj, t, matcher, opts, quality):
    cost, sqa, sqb = geo.tile_costs(x, i0, j0, li, lj, t)
    slv = get_solver(matcher)
    plan = _vmapn(functools.partial(slv.plan, **_per_pair(opts)), 2)
    subs, aux = plan(cost, jnp.sqrt(sqa), jnp.sqrt(sqb))
    if quality and not slv.optimal:
        subs = subs + (cost,)
    return subs, (aux, cost, sqa.sum(-1), sqb.sum(-1))


def _per_pair(opts):
    return {k: v for k, v in dict(opts).items()
            if k not in ("lanes", "cost_dtype", "tol", "rounds")}


def _finish_tile(sub_perms, state, s, matcher, opts, quality):
    aux, cost, sq_a, sq_b = state
    slv = get_solver(matcher)
    n_own = len(sub_perms) - (1 if quality and not slv.optimal else 0)
    assemble = _vmapn(functools.partial(slv.assemble, s, **_per_pair(opts)), 2)
    perm = assemble(tuple(sub_perms[:n_own]), aux)
    sim, dist = geo.pair_stats(cost, sq_a, sq_b, perm)
    if not quality:
        return sim, dist, None
    if slv.optimal:
        return sim, dist, sim
    return sim, dist, geo.matched_score(cost, sub_perms[-1])


_STATIC = ("t", "matcher", "opts", "quality")


@functools.partial(jax.jit, static_argnames=_STATIC)
def _plan_block(x, i0, j0, li, lj, t, matcher, opts, quality):
    fn = functools.partial(_plan_tile, t=t, matcher=matcher, opts=opts, quality=quality)
    return jax.vmap(fn, (None, 0, 0, None, None))(x, i0, j0, li, lj)


@functools.partial(jax.jit, static_argnames=("s", "matcher", "opts", "quality"))
def _finish_block(sub_perms, state, s, matcher, opts, quality):
    fn = functools.partial(_finish_tile, s=s, matcher=matcher, opts=opts, quality=quality)
    return jax.vmap(fn)(sub_perms, state)


@functools.partial(jax.jit, static_argnames=_STATIC)
def _ingraph_block(x, i0, j0, li, lj, t, matcher, opts, quality):
    subs, state = _plan_block(x, i0, j0, li, lj, t, matcher, opts, quality)
    sub_perms = tuple(_vmapn(hungarian_matching, u.ndim - 2)(u) for u in subs)
    return _finish_block(sub_perms, state, x.shape[-2], matcher, opts, quality)


def default_block_bytes(matcher: str = "exact") -> int:
    """Bytes of cost matrices computed at once: on CPU 32 MiB (1 MiB per thread for
    ``auction``), 256 MiB on accelerators.

    Measured on the 2-core CPU (C=256, 3 kernels, quiet machine): N=64, S=196 exact 1.45 s
    at 256 MiB vs 1.04 s at 32 MiB (window 1.29 vs 0.87 s); N=16, S=784 exact 1.86 vs
    1.29 s; the auction (host bidding) 0.37 s at 1 MiB vs 0.48 s at 4 MiB (bfloat16 costs
    0.26 vs 0.38 s).
    Smaller blocks stay in cache, overlap host solving with the next block's products
    sooner, and (in-graph loops) wait for fewer stragglers; 8 MiB was no better for exact
    and window. Accelerators want large batches.
    """
    if jax.default_backend() != "cpu":
        return 256 << 20
    return get_solver(matcher).cpu_block_bytes


def _tile_size(n, s, L, max_block_bytes, block_pairs):
    if block_pairs is not None:
        t = int(np.sqrt(max(int(block_pairs), 1)))
    else:
        t = int(np.sqrt(max(int(max_block_bytes), 1) / (4 * L * 3 * s * s)))
    return int(min(max(t, 1), n))


def _blocks(n, t, ndev):
    """[(kind, li, lj, [(I, J), ...] stacks of size G)] for the tiles I >= J of the grid."""
    nt = -(-n // t)
    out = []
    li_d, lj_d = np.tril_indices(t, -1)
    li_o, lj_o = (a.ravel() for a in np.meshgrid(np.arange(t), np.arange(t), indexing="ij"))
    kinds = [("diag", li_d, lj_d, [(I, I) for I in range(nt)])] if t > 1 else []
    kinds.append(("off", li_o, lj_o, [(I, J) for I in range(nt) for J in range(I)]))
    for kind, li, lj, tiles in kinds:
        if not tiles:
            continue
        g = ndev
        for k in range(0, len(tiles), g):
            stack = tiles[k:k + g]
            out.append((kind, li, lj, stack + [None] * (g - len(stack))))
    return out


def _tile_statistics(x, matcher, opts, solver, mesh, max_block_bytes, block_pairs,
                     return_quality, bar):
    L, n, s, c = x.shape
    t = _tile_size(n, s, L, max_block_bytes, block_pairs)
    nt = -(-n // t)
    if mesh is not None and nt * (nt + 1) // 2 < mesh.devices.size:
        mesh = None                          # fewer tiles than devices: one device is enough
    ndev = 1 if mesh is None else mesh.devices.size
    if nt * t > n:                                                  # zero inputs, discarded
        x = jnp.concatenate([x, jnp.zeros((L, nt * t - n, s, c), x.dtype)], axis=1)
    if mesh is not None:
        x = jax.device_put(x, NamedSharding(mesh, P()))
        put = lambda v: jax.device_put(v, NamedSharding(mesh, P(mesh.axis_names[0])))  # noqa: E731
    else:
        put = jnp.asarray
    blocks = []
    for kind, li, lj, stack in _blocks(n, t, ndev):
        ij = np.array([tl if tl is not None else stack[0] for tl in stack], np.int32) * t
        gi = ij[:, :1] + li[None]                                   # (G, B) global rows
        gj = ij[:, 1:] + lj[None]
        valid = (gi < n) & np.array([tl is not None for tl in stack])[:, None]
        blocks.append((put(ij[:, 0]), put(ij[:, 1]), jnp.asarray(li), jnp.asarray(lj),
                       gi, gj, valid))
    sim_m = np.zeros((L, n, n), np.float32)
    dist_m = np.zeros((L, n, n), np.float32)
    ex_m = np.zeros((L, n, n), np.float32) if return_quality else None

    def store(block, res):
        _, _, _, _, gi, gj, valid = block
        for target, val in zip((sim_m, dist_m, ex_m), res):
            if target is not None:
                val = np.moveaxis(np.asarray(val), 1, 0)              # (L, G, B)
                target[:, gi[valid], gj[valid]] = val[:, valid]

    static = dict(t=t, matcher=matcher, opts=opts, quality=return_quality)
    bar.reset(total=len(blocks))
    ingraph = solver == "hungarian" or (get_solver(matcher).ingraph and not return_quality)
    if ingraph:                      # dispatch block k+1 before block k is read back
        pending = None
        for blk in blocks:
            res = _ingraph_block(x, *blk[:4], **static)
            if pending is not None:
                store(*pending)
                bar.update()
            pending = (blk, res)
        store(*pending)
        bar.update()
    else:
        pending = _plan_block(x, *blocks[0][:4], **static)
        for k, blk in enumerate(blocks):
            nxt = (_plan_block(x, *blocks[k + 1][:4], **static)      # dispatched async
                   if k + 1 < len(blocks) else None)
            subs, state = pending
            sub_perms = tuple(jnp.asarray(host.solve_exact_host(np.asarray(u))) for u in subs)
            store(blk, _finish_block(sub_perms, state, s, matcher, opts, return_quality))
            pending = nxt
            bar.update()
    ii, jj = np.tril_indices(n, -1)
    return (sim_m[:, ii, jj], dist_m[:, ii, jj],
            ex_m[:, ii, jj] if return_quality else None)


# ------------------------------------------------------------------ auction (work items)
_PRICE_KEYS = ("init_eps", "init_iters")
_BID_KEYS = ("eps", "bidders", "max_bids")


def _auction_graph(x, sq, items, *, chunk, opts, certify):
    """Candidate graphs and starting prices ``(vals, idx, price)`` of work items (B, 3);
    with ``certify`` also the full matrices in the candidates' units, their scale r, each
    item's final epsilon (in units of r) and tolerance on the score (units of M)."""
    li, ii, jj = items[:, 0], items[:, 1], items[:, 2]
    k = int(opts.get("k", 32))
    split = lambda a: a.reshape(-1, chunk, *a.shape[1:])  # noqa: E731
    s = x.shape[-2]

    def graph(c):
        l, i, j = c
        cost, centred = geo.item_costs(x[l, i], x[l, j], opts.get("cost_dtype", "float32"))
        vals, idx, full, scale = jax.vmap(functools.partial(
            auc.auction_graph, k=k, centred=centred,
            dual_eps=float(opts.get("dual_eps", 0.05))))(cost)
        price = jax.vmap(functools.partial(
            auc.auction_prices, **{q: v for q, v in opts.items() if q in _PRICE_KEYS}))(
                vals, idx)
        if not certify:
            return vals, idx, price
        sa, sb = sq[l, i], sq[l, j]
        tol_m = opts["tol"] * jnp.sqrt(sa * sb) - geo.ROUNDING * (sa + sb)
        eps_end = jnp.clip(CERT_SLACK * tol_m / (scale * s), 1e-7, float(opts["eps"]))
        return vals, idx, price, full, scale, eps_end, tol_m

    return tuple(a.reshape(-1, *a.shape[2:])
                 for a in jax.lax.map(graph, (split(li), split(ii), split(jj))))


def _auction_score(x, sq, items, perm, *, chunk):
    """sim, dist of work items from their permutations: s = sum_k <x_ik, x_j pi(k)>."""
    li, ii, jj = items[:, 0], items[:, 1], items[:, 2]
    split = lambda a: a.reshape(-1, chunk, *a.shape[1:])  # noqa: E731

    def score(c):
        l, i, j, pm = c
        xb = jnp.take_along_axis(x[l, j], pm[..., None], axis=1)
        return jnp.einsum("psc,psc->p", x[l, i], xb, precision=jax.lax.Precision.HIGHEST)

    sim = jax.lax.map(score, (split(li), split(ii), split(jj), split(perm))).reshape(-1)
    return sim, geo.distance(sim, sq[li, ii] + sq[li, jj])


def _auction_gap(x, items, perm, price, *, chunk, opts):
    """Certificates (B,) in units of M of work items from their final prices: the full
    matrices are recomputed chunk by chunk (the in-graph path keeps none)."""
    li, ii, jj = items[:, 0], items[:, 1], items[:, 2]
    split = lambda a: a.reshape(-1, chunk, *a.shape[1:])  # noqa: E731
    k = int(opts.get("k", 32))

    def one(c):
        l, i, j, pm, pr = c
        cost, centred = geo.item_costs(x[l, i], x[l, j], "float32")
        _, _, full, scale = jax.vmap(functools.partial(
            auc.auction_graph, k=k, centred=centred,
            dual_eps=float(opts.get("dual_eps", 0.05))))(cost)
        return jax.vmap(auc.full_gap)(full, pr, pm) * scale

    return jax.lax.map(one, (split(li), split(ii), split(jj), split(perm),
                             split(price))).reshape(-1)


def _auction_device(x, sq, items, *, chunk, opts, certify):
    graph = _auction_graph(x, sq, items, chunk=chunk, opts=opts, certify=certify)
    vals, idx, price = graph[:3]
    bid = {q: v for q, v in opts.items() if q in _BID_KEYS + ("lanes",)}
    if certify:
        bid["eps"] = graph[5]                    # each item's final epsilon, no scaling
    perm, fin = auc.auction_lanes(vals, idx, price, return_prices=True, **bid)
    sim, dist = _auction_score(x, sq, items, perm, chunk=chunk)
    if not certify:
        return sim, dist, jnp.full(sim.shape, jnp.inf), jnp.full(sim.shape, jnp.inf)
    gap = _auction_gap(x, items, perm, fin, chunk=chunk, opts=opts)
    return sim, dist, gap, graph[6]


@functools.partial(jax.jit, static_argnames=("chunk", "opts", "mesh", "certify"))
def _auction_block(x, sq, items, *, chunk, opts, mesh, certify):
    fn = functools.partial(_auction_device, chunk=chunk, opts=dict(opts), certify=certify)
    if mesh is None:
        return fn(x, sq, items)
    ax = P(mesh.axis_names[0])
    return jax.shard_map(fn, mesh=mesh, in_specs=(P(), P(), ax), out_specs=(ax,) * 4,
                         check_vma=False)(x, sq, items)


@functools.partial(jax.jit, static_argnames=("chunk", "opts", "certify"))
def _auction_graph_jit(x, sq, items, *, chunk, opts, certify):
    return _auction_graph(x, sq, items, chunk=chunk, opts=dict(opts), certify=certify)


@functools.partial(jax.jit, static_argnames=("chunk",))
def _item_costs_jit(x, items, *, chunk):
    li, ii, jj = items[:, 0], items[:, 1], items[:, 2]
    split = lambda a: a.reshape(-1, chunk, *a.shape[1:])  # noqa: E731
    out = jax.lax.map(lambda c: geo.item_costs(x[c[0], c[1]], x[c[0], c[2]])[0],
                      (split(li), split(ii), split(jj)))
    return out.reshape(-1, *out.shape[2:])


def exact_items(x, items, *, max_block_bytes: int = 32 << 20):
    """Exact matched scores (B,) (float64 sums) of work items (l, i, j) of ``x`` (L, N, S, C):
    cost matrices on the device in blocks, exact solves on the host. The fallback of the
    certified matchers."""
    items = np.asarray(items, np.int32).reshape(-1, 3)
    s = x.shape[-2]
    out = np.empty(len(items))
    per = max(1, int(max_block_bytes) // (4 * s * s))
    for a in range(0, len(items), per):
        blk = items[a:a + per]
        chunk = min(len(blk), max(1, (1 << 20) // (4 * s * s)))
        pad = -len(blk) % chunk
        work = np.concatenate([blk, np.repeat(blk[:1], pad, 0)])
        cost = np.asarray(_item_costs_jit(x, jnp.asarray(work), chunk=chunk))[:len(blk)]
        perm = host.solve_exact_host(cost)
        out[a:a + per] = np.take_along_axis(cost.astype(np.float64), perm[..., None],
                                            -1)[..., 0].sum(-1)
    return out


def _auction_statistics(x, opts, mesh, max_block_bytes, block_pairs, bar, use_host):
    """sim, dist, gap, fallback (L, P) of every pair i > j of every layer by the auction:
    bidding on the host (numba) when ``use_host``, else in-graph on lanes. ``gap`` is the
    certificate (units of M) when ``opts["tol"]`` is set (inf otherwise); ``fallback``
    marks the pairs solved exactly because their certificate exceeded the tolerance."""
    L, n, s, c = x.shape
    ndev = 1 if mesh is None else mesh.devices.size
    ii, jj = np.tril_indices(n, -1)
    items = np.stack([np.repeat(np.arange(L), ii.size), np.tile(ii, L), np.tile(jj, L)],
                     1).astype(np.int32)                                   # (L*P, 3)
    opts = dict(opts)
    certify = opts.get("tol") is not None
    cpu = jax.default_backend() == "cpu"
    chunk = max(1, int(max_block_bytes) // (4 * s * s))        # cost matrices at once
    kk = min(int(opts.get("k", 32)), s) + 1
    # XLA:CPU runs one computation's loop on one core, so on CPU blocks are solved by as
    # many host threads as there are cores (2016 pairs at S=196 on 2 cores: 0.95 s -> 0.6 s
    # for the whole statistics); on accelerators two blocks in flight overlap the transfers
    workers = (os.cpu_count() or 1) if cpu else 2
    if block_pairs is not None:
        nblocks = -(-len(items) // max(1, int(block_pairs)))
    else:   # lanes: one block per worker (each block ends with a tail of draining lanes);
        # host: 2 per worker, so that one block's bidding overlaps the next one's products;
        # candidate graphs <= 256 MiB per block; certified host blocks keep their full cost
        # matrices (<= 64 MiB per block)
        cand = len(items) * 4 * s * (2 * kk + 4)
        full = len(items) * 4 * s * s if (certify and use_host) else 0
        nblocks = max(min((2 if use_host else 1) * workers, -(-len(items) // ndev)),
                      -(-cand // (256 << 20)), -(-full // (64 << 20)))
    per_dev = -(-len(items) // (nblocks * ndev))                # even blocks, least padding
    chunk = -(-per_dev // -(-per_dev // chunk))                 # even chunks
    per_dev = -(-per_dev // chunk) * chunk
    nblocks = -(-len(items) // (per_dev * ndev))
    if opts.get("lanes") is None:    # CPU: a work queue over 64 lanes; accelerators: lock step
        opts["lanes"] = 64 if cpu else per_dev
    size = per_dev * ndev
    pad = np.zeros((nblocks * size - len(items), 3), np.int32)
    pad[:, 1] = 1                                                # a valid dummy pair (1, 0)
    work = np.concatenate([items, pad])
    if mesh is not None:
        # inputs committed to one device (e.g. another function's output) are copied onto
        # every device of the mesh, or jit refuses the mix with the sharded work items
        x = jax.device_put(x, NamedSharding(mesh, P()))
        put = lambda v: jax.device_put(v, NamedSharding(mesh, P(mesh.axis_names[0])))  # noqa: E731
    else:
        put = jnp.asarray
    sq = jnp.sum(x * x, -1).sum(-1)                                        # (L, N)
    sq_host = np.asarray(sq, np.float64)
    if use_host:
        x_host = np.asarray(x)
    static = dict(chunk=chunk, opts=tuple(sorted(opts.items())), mesh=mesh, certify=certify)
    bar.reset(total=nblocks)

    def run(b):
        items_b = work[b * size:(b + 1) * size]
        tot = sq_host[items_b[:, 0], items_b[:, 1]] + sq_host[items_b[:, 0], items_b[:, 2]]
        if not use_host:
            sim, dist, gap, tol_m = (np.asarray(r) for r in
                                     _auction_block(x, sq, put(items_b), **static))
            gap = gap.astype(np.float64) + geo.ROUNDING * tot
            return sim, dist, gap, gap > tol_m     # fallback: exact_items afterwards
        # device: products, candidates; host (numba, no GIL): bidding and scores
        graph = [np.asarray(a) for a in _auction_graph_jit(
            x, sq, put(items_b), chunk=chunk, opts=static["opts"], certify=certify)]
        bid = {q: v for q, v in opts.items() if q in _BID_KEYS}
        fallback = np.zeros(len(items_b), bool)
        if certify:
            vals, idx, price, full, scale, eps_end, tol_m = graph
            if bid.get("max_bids") is None:
                bid["max_bids"] = min(50 * s, CERT_BIDS)
            perm, _, gap_k, _ = auc.auction_host(
                vals, idx, price, full=full, eps_end=eps_end, rounds=int(opts["rounds"]),
                return_state=True, **bid)
            gap = gap_k * scale + geo.ROUNDING * tot
            fallback = gap > tol_m
            if fallback.any():           # the stronger step: exact, on the same matrices
                perm = perm.copy()
                perm[fallback] = host.solve_exact_host(full[fallback], threads=1)
                gap[fallback] = geo.ROUNDING * tot[fallback]
        else:
            perm = auc.auction_host(*graph, **bid)
            gap = np.full(len(items_b), np.inf)
        sim = np.empty(len(items_b))
        host.numba_kernel(geo.score_host_kernel, fastmath=True)(x_host, items_b, perm, sim)
        return sim.astype(np.float32), geo.distance(sim, tot, np), gap, fallback

    res = [None] * nblocks
    with ThreadPoolExecutor(max(1, min(workers, nblocks))) as ex:
        futures = {ex.submit(run, b): b for b in range(nblocks)}
        for fut in as_completed(futures):
            res[futures[fut]] = fut.result()
            bar.update()
    sim, dist, gap, fallback = (np.concatenate([r[q] for r in res])[:len(items)]
                                for q in range(4))
    if certify and not use_host and fallback.any():     # in-graph path: exact afterwards
        fix = np.flatnonzero(fallback)
        ex_sim = exact_items(x, items[fix])
        tot = sq_host[items[fix, 0], items[fix, 1]] + sq_host[items[fix, 0], items[fix, 2]]
        sim[fix] = ex_sim
        dist[fix] = geo.distance(ex_sim, tot, np)
        gap[fix] = geo.ROUNDING * tot
    shape = (L, ii.size)
    return (sim.reshape(shape), dist.reshape(shape), gap.reshape(shape),
            fallback.reshape(shape))


# ------------------------------------------------------------------------------ entry
class PairStatistics:
    """What :func:`pair_statistics` returns: ``ii, jj`` (P,), ``sim``, ``dist`` (L, P),
    ``exact_sim`` (L, P) or None (``return_quality`` re-solve of non-certified matchers),
    ``gap`` (L, P) certified bounds on s_exact - s (None where the matcher has none),
    ``fallback`` (L, P) pairs solved exactly by a certified matcher's stronger step."""

    def __init__(self, ii, jj, sim, dist, exact_sim=None, gap=None, fallback=None):
        self.ii, self.jj, self.sim, self.dist = ii, jj, sim, dist
        self.exact_sim, self.gap, self.fallback = exact_sim, gap, fallback

    def __iter__(self):           # the old 5-tuple
        return iter((self.ii, self.jj, self.sim, self.dist, self.exact_sim))


def pair_statistics(x, *, matcher: str = "exact", solver: str = "auto",
                    return_quality: bool = False, max_block_bytes: int | None = None,
                    block_pairs: int | None = None, mesh=None, progress: bool | None = None,
                    **options) -> PairStatistics:
    r"""Matched statistics of every pair i > j of a stack of layers ``x`` (L, N, S, C).

    Returns a :class:`PairStatistics` (iterates as ``(ii, jj, sim, dist, exact_sim)``):
    pair indices (P,) (``np.tril_indices(N, -1)``), :math:`s(i,j)` and :math:`d_{ij}` of
    shape (L, P), the exact :math:`s(i,j)` (L, P) when ``return_quality`` for a matcher
    without a certificate (else None), and for certified matchers the bound ``gap``.
    ``mesh``: a :class:`jax.sharding.Mesh` or None (see :func:`repsim_jax._devices.as_mesh`).
    """
    from repsim_jax import _progress
    x = jnp.asarray(x, jnp.float32)
    L, n, s, c = x.shape
    slv = get_solver(matcher)
    checked = slv.check(options)
    opts = tuple(sorted(checked.items()))
    if solver == "auto":
        solver = "host" if jax.default_backend() == "cpu" else "hungarian"
    if solver not in ("host", "hungarian"):
        from repsim_jax._checks import unknown_name
        raise unknown_name("solver", solver, ("host", "hungarian"))
    if mesh is not None and mesh.devices.size <= 1:
        mesh = None
    if max_block_bytes is None:
        max_block_bytes = default_block_bytes(matcher)
    ii, jj = np.tril_indices(n, -1)
    # RSM tiles under the library's progress= convention (repsim_jax._progress)
    bar = _progress.bar(1, desc=f"semantic rsm ({matcher})", unit="tile", progress=progress)
    try:
        if slv.work_items:           # declared by the solver (the auction), not its name
            slv.check_run(checked)
            use_host = solver == "host" and mesh is None and auc.host_auction_available()
            sim, dist, gap, fb = _auction_statistics(x, opts, mesh, max_block_bytes,
                                                     block_pairs, bar, use_host)
            return PairStatistics(ii, jj, sim, dist, None,
                                  gap if checked.get("tol") is not None else None, fb)
        sim, dist, ex = _tile_statistics(x, matcher, opts, solver, mesh, max_block_bytes,
                                         block_pairs, return_quality, bar)
        return PairStatistics(ii, jj, sim, dist, ex)
    finally:
        bar.close()
