r"""Semantic (permutation-invariant) representational similarity matrices.

Wald et al., "Decoupling Semantic Similarity from Spatial Alignment for Neural Networks",
NeurIPS 2024. For N inputs with representations :math:`X_i \in \mathbb{R}^{S \times C}`
(S = H*W positions or tokens, C channels), the semantic similarity of a pair is

.. math::  s(i, j) = \max_{P \in \mathfrak{S}_S} \langle X_i, P X_j \rangle_F
                   = \max_\pi \sum_k \langle x_{ik}, x_{j \pi(k)} \rangle ,

a linear assignment problem on the cost matrix :math:`M_{ij} = X_i X_j^\top`. Permutations
keep norms, so the same :math:`\pi` maximises the cosine and minimises
:math:`\|X_i - P X_j\|_F`; one matching serves every kernel:

* ``inner``:  :math:`K_{ij} = s(i, j)`
* ``cosine``: :math:`K_{ij} = s(i, j) / (\|X_i\|_F \|X_j\|_F)` (0 when a norm is 0)
* ``rbf``:    :math:`K_{ij} = \exp(-d_{ij} / (2\sigma^2))` with
  :math:`d_{ij} = \|X_i - P^* X_j\|_F^2` and, by default, the official convention
  :math:`\sigma = \sqrt{\operatorname{lower\,median}\{d_{ij} \neq 0 : i > j\}} + 10^{-3}`
  (``sigma="lower_median"``; also ``"median"``, ``"mean"`` of the non-zero d, or a number).

The diagonal uses the identity matching (provably optimal: Cauchy-Schwarz); the
spatio-semantic baseline is ``matcher="identity"`` for every pair.

Engineering: only the pairs i > j are solved (the diagonal is the identity, the lower
triangle mirrored). The N x N grid is cut into t x t tiles (I >= J) with t chosen so that a
tile's cost tensor ``(L, t*t, S, S)`` stays below ``max_block_bytes`` (never
N x N x S x S); a tile's cost matrices are ONE matmul ``(t*S, C) x (C, t*S)`` (a GEMM, no
per-pair gathers of the inputs), from which its pairs i > j are picked. The exact parts of a
matcher are solved on the host (:func:`repsim_jax.semantic.matching.solve_exact_host`,
threads) while the device already computes the next block (JAX's asynchronous dispatch), or
in-graph (``solver="hungarian"``, the default on accelerators). Blocks are stacks of tiles
whose stack axis is sharded over all visible devices (``NamedSharding`` on a 1-D
``("tiles",)`` mesh); layers of equal shape are vmapped in the same call. The matched score
and distance come from the cost matrix and the squared norms,
:math:`s = \sum_k M_{k\pi(k)}`, :math:`d = \|X_i\|^2 + \|X_j\|^2 - 2s` (clipped at 0;
float32 rounding of identical sets, :math:`d \le 10^{-6}(\|X_i\|^2 + \|X_j\|^2)`, is
set to exactly 0 as the official aligned-vector difference gives).

The auction (without ``return_quality``) has its own schedule, see ``_auction_statistics``:
flat work items (layer, i, j), per-item batched matmuls in small chunks and candidate graphs
on the device; bidding on the host (numba, :func:`~repsim_jax.semantic.matching.auction_host`,
when installed, on CPU with one device) overlapping the next block's products, or in-graph on
a work queue of lanes (:func:`~repsim_jax.semantic.matching.auction_lanes`; accelerators,
meshes: ``shard_map`` over the devices); blocks run on one host thread per core on CPU.
"""
from __future__ import annotations

import functools
import os
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from repsim_jax._checks import InputError, as_float_array, unknown_name
from repsim_jax.semantic import matching as _m

__all__ = ["rsm", "KERNELS", "pair_statistics", "kernel_from_statistics"]

KERNELS = ("inner", "cosine", "rbf")
SIGMA_RULES = ("lower_median", "median", "mean")


# ------------------------------------------------------------------------ validation
def _as_sets(x, name: str, drop_first_token: bool, stacked: bool):
    lead = 1 if stacked else 0
    as_float_array(x, name, ndim=(3 + lead, 4 + lead))
    x = jnp.asarray(x, jnp.float32)
    if x.ndim == 4 + lead:                                   # (..., N, H, W, C)
        x = x.reshape(*x.shape[:-3], x.shape[-3] * x.shape[-2], x.shape[-1])
    if drop_first_token:
        if x.shape[-2] < 2:
            raise InputError(f"{name}: drop_first_token needs at least 2 tokens, got "
                             f"{x.shape[-2]}")
        x = x[..., 1:, :]
    if x.shape[-3] < 2:
        raise InputError(f"{name}: an RSM needs at least 2 inputs, got N={x.shape[-3]}")
    return x if stacked else x[None]


def _mesh(devices) -> Mesh | None:
    if devices is None:
        return None
    if isinstance(devices, Mesh):
        return devices
    if devices == "all":
        devices = jax.devices()
    devices = list(devices)
    if len(devices) <= 1:
        return None
    return Mesh(np.array(devices), ("tiles",), axis_types=(jax.sharding.AxisType.Auto,))


# ------------------------------------------------------------------------ tile work
# The N x N pair grid is cut into t x t tiles (I, J), I >= J. The cost matrices of a tile
# are ONE matmul (t*S, C) x (C, t*S) of its row and column inputs; the pairs i > j of the
# tile are then picked from it (all t*t pairs of an off-diagonal tile, the t(t-1)/2 below
# its diagonal for a diagonal tile). A block is a stack of G tiles of one kind, vmapped;
# the stack axis is sharded over the devices.
def _tile_costs(x, i0, j0, li, lj, t):
    """Cost matrices (L, B, S, S) and squared row norms (L, B, S) x2 of one tile's pairs."""
    xi = jax.lax.dynamic_slice_in_dim(x, i0, t, axis=1)           # (L, t, S, C)
    xj = jax.lax.dynamic_slice_in_dim(x, j0, t, axis=1)
    L, _, s, c = xi.shape
    full = jnp.einsum("lsc,ltc->lst", xi.reshape(L, t * s, c), xj.reshape(L, t * s, c),
                      precision=jax.lax.Precision.HIGHEST).reshape(L, t, s, t, s)
    cost = full[:, li, :, lj, :]                                   # (B, L, S, S)
    cost = jnp.moveaxis(cost, 0, 1)
    sqi, sqj = jnp.sum(xi * xi, -1), jnp.sum(xj * xj, -1)          # (L, t, S)
    return cost, sqi[:, li], sqj[:, lj]


def _plan_tile(x, i0, j0, li, lj, t, matcher, opts, quality):
    cost, sqa, sqb = _tile_costs(x, i0, j0, li, lj, t)
    plan = _m._vmapn(functools.partial(_m.plan_subproblems, matcher, **dict(opts)), 2)
    subs, aux = plan(cost, jnp.sqrt(sqa), jnp.sqrt(sqb))
    if quality and matcher != "exact":
        subs = subs + (cost,)
    return subs, (aux, cost, sqa.sum(-1), sqb.sum(-1))


def _distance(sim, tot, xp=jnp):
    """d = ||X_a||^2 + ||X_b||^2 - 2 s from s and tot = ||X_a||^2 + ||X_b||^2 (>= 0; float32
    rounding of identical sets, d <= 1e-6 tot, is set to exactly 0). ``xp``: jnp or np."""
    dist = xp.maximum(tot - 2.0 * sim, 0.0)
    return xp.where(dist <= 1e-6 * tot, 0.0, dist)


def _pair_stats(cost, sq_a, sq_b, perm):
    """s = sum_k M[k, pi(k)] and d (:func:`_distance`)."""
    sim = _m.matched_score(cost, perm)
    return sim, _distance(sim, sq_a + sq_b)


def _finish_tile(sub_perms, state, s, matcher, opts, quality):
    aux, cost, sq_a, sq_b = state
    n_own = len(sub_perms) - (1 if quality and matcher != "exact" else 0)
    assemble = _m._vmapn(functools.partial(_m.assemble_permutation, matcher, s,
                                           **dict(opts)), 2)
    perm = assemble(tuple(sub_perms[:n_own]), aux)
    sim, dist = _pair_stats(cost, sq_a, sq_b, perm)
    if not quality:
        return sim, dist, None
    if matcher == "exact":
        return sim, dist, sim
    return sim, dist, _m.matched_score(cost, sub_perms[-1])


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
    sub_perms = tuple(_m._vmapn(_m.hungarian_matching, u.ndim - 2)(u) for u in subs)
    return _finish_block(sub_perms, state, x.shape[-2], matcher, opts, quality)


# ------------------------------------------------------------------ auction (work items)
# The auction has no exact sub-problems, and its cost per pair is very uneven, so it gets its
# own schedule: the pairs of all layers are a flat list of work items (l, i, j); a block of
# items is split over the devices (shard_map: every device runs its own loop); on a device,
# chunks of items get their cost matrices (batched matmul) and candidate graphs (lax.map, one
# chunk of cost matrices in memory at a time), then the bidding for every item of the block
# runs on the host (numba) or in ONE lane-scheduled auction (matching.auction_lanes), and
# the matched score comes from the inputs, s = sum_k <x_ik, x_j pi(k)>, so no cost matrix
# is kept.
_PRICE_KEYS = ("init_eps", "init_iters")
_BID_KEYS = ("eps", "bidders", "max_bids")


def _auction_graph(x, items, *, chunk, opts):
    """Candidate graphs and starting prices ``(vals, idx, price)`` of work items (B, 3)."""
    li, ii, jj = items[:, 0], items[:, 1], items[:, 2]
    k = int(opts.get("k", 32))
    split = lambda a: a.reshape(-1, chunk, *a.shape[1:])  # noqa: E731
    low = jnp.dtype(opts.get("cost_dtype", "float32"))

    def graph(c):
        l, i, j = c
        xa, xb = x[l, i], x[l, j]                                   # (chunk, S, C)
        centred = low != jnp.float32
        if not centred:
            cost = jnp.einsum("psc,ptc->pst", xa, xb, precision=jax.lax.Precision.HIGHEST)
        else:   # (A - a)(B - b)^T is M less its column means and a constant per row (the
            # candidates' column centring, done by the GEMM); centred inputs keep the
            # rounding relative to what varies between positions, not to shared offsets
            ca = (xa - xa.mean(1, keepdims=True)).astype(low)
            cb = (xb - xb.mean(1, keepdims=True)).astype(low)
            cost = jnp.einsum("psc,ptc->pst", ca, cb, preferred_element_type=jnp.float32)
        vals, idx = jax.vmap(functools.partial(
            _m.auction_candidates, k=k, centred=centred,
            dual_eps=float(opts.get("dual_eps", 0.05))))(cost)
        price = jax.vmap(functools.partial(
            _m.auction_prices, **{q: v for q, v in opts.items() if q in _PRICE_KEYS}))(
                vals, idx)
        return vals, idx, price

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
    return sim, _distance(sim, sq[li, ii] + sq[li, jj])


def _auction_device(x, sq, items, *, chunk, opts):
    vals, idx, price = _auction_graph(x, items, chunk=chunk, opts=opts)
    perm = _m.auction_lanes(vals, idx, price, **{q: v for q, v in opts.items()
                                                 if q in _BID_KEYS + ("lanes",)})
    return _auction_score(x, sq, items, perm, chunk=chunk)


@functools.partial(jax.jit, static_argnames=("chunk", "opts", "mesh"))
def _auction_block(x, sq, items, *, chunk, opts, mesh):
    fn = functools.partial(_auction_device, chunk=chunk, opts=dict(opts))
    if mesh is None:
        return fn(x, sq, items)
    ax = P(mesh.axis_names[0])
    return jax.shard_map(fn, mesh=mesh, in_specs=(P(), P(), ax), out_specs=(ax, ax),
                         check_vma=False)(x, sq, items)


def _score_host_kernel(x, items, perm, out):  # pragma: no cover - compiled by numba
    """out[b] = sum_k <x[l, i, k], x[l, j, perm[b, k]]> for work items b = (l, i, j):
    float32 dot products per position, summed in float64."""
    for b in range(items.shape[0]):
        l, i, j = items[b, 0], items[b, 1], items[b, 2]
        acc = 0.0
        for k in range(perm.shape[1]):
            q = perm[b, k]
            t = np.float32(0.0)
            for c in range(x.shape[3]):
                t += x[l, i, k, c] * x[l, j, q, c]
            acc += t
        out[b] = acc


@functools.partial(jax.jit, static_argnames=("chunk", "opts"))
def _auction_graph_jit(x, items, *, chunk, opts):
    return _auction_graph(x, items, chunk=chunk, opts=dict(opts))


def _auction_statistics(x, opts, mesh, max_block_bytes, block_pairs, bar, host):
    """sim, dist (L, P) of every pair i > j of every layer by the auction: bidding on the
    host (numba, :func:`~repsim_jax.semantic.matching.auction_host`) when ``host``, else
    in-graph on lanes (:func:`~repsim_jax.semantic.matching.auction_lanes`)."""
    L, n, s, c = x.shape
    ndev = 1 if mesh is None else mesh.devices.size
    ii, jj = np.tril_indices(n, -1)
    items = np.stack([np.repeat(np.arange(L), ii.size), np.tile(ii, L), np.tile(jj, L)],
                     1).astype(np.int32)                                   # (L*P, 3)
    opts = dict(opts)
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
        # candidate graphs <= 256 MiB per block
        cand = len(items) * 4 * s * (2 * kk + 4)
        nblocks = max(min((2 if host else 1) * workers, -(-len(items) // ndev)),
                      -(-cand // (256 << 20)))
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
        put = lambda v: jax.device_put(v, NamedSharding(mesh, P(mesh.axis_names[0])))  # noqa: E731
    else:
        put = jnp.asarray
    sq = jnp.sum(x * x, -1).sum(-1)                                        # (L, N)
    if host:
        x_host = np.asarray(x)
        sq_host = np.asarray(sq, np.float64)
    static = dict(chunk=chunk, opts=tuple(sorted(opts.items())), mesh=mesh)
    bar.reset(total=nblocks)

    def run(b):
        items_b = work[b * size:(b + 1) * size]
        if not host:
            res = _auction_block(x, sq, put(items_b), **static)
        else:   # device: products, candidates; host (numba, no GIL): bidding and scores
            graph = _auction_graph_jit(x, put(items_b), chunk=chunk, opts=static["opts"])
            perm = _m.auction_host(*(np.asarray(a) for a in graph),
                                   **{q: v for q, v in opts.items() if q in _BID_KEYS})
            sim = np.empty(len(items_b))
            _m.numba_kernel(_score_host_kernel, fastmath=True)(x_host, items_b, perm, sim)
            tot = sq_host[items_b[:, 0], items_b[:, 1]] + sq_host[items_b[:, 0], items_b[:, 2]]
            res = (sim.astype(np.float32), _distance(sim, tot, np))
        return tuple(np.asarray(r) for r in res)

    sims, dists = [None] * nblocks, [None] * nblocks
    with ThreadPoolExecutor(max(1, min(workers, nblocks))) as pool:
        futures = {pool.submit(run, b): b for b in range(nblocks)}
        for fut in as_completed(futures):
            sims[futures[fut]], dists[futures[fut]] = fut.result()
            bar.update()
    sim = np.concatenate(sims)[:len(items)].reshape(L, ii.size)
    dist = np.concatenate(dists)[:len(items)].reshape(L, ii.size)
    return sim, dist


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
    return (1 << 20) if matcher == "auction" else (32 << 20)


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


def pair_statistics(x, *, matcher: str = "exact", solver: str = "auto",
                    return_quality: bool = False, max_block_bytes: int | None = None,
                    block_pairs: int | None = None, devices="all", progress: bool | None = None,
                    **options):
    r"""Matched statistics of every pair i > j of a stack of layers ``x`` (L, N, S, C).

    Returns ``(ii, jj, sim, dist, exact_sim)``: pair indices (P,) (``np.tril_indices(N,
    -1)``), :math:`s(i,j)` and :math:`d_{ij}` of shape (L, P), and the exact
    :math:`s(i,j)` (L, P) when ``return_quality`` (else None).
    """
    from tqdm.auto import tqdm
    x = jnp.asarray(x, jnp.float32)
    L, n, s, c = x.shape
    opts = tuple(sorted(_m._check_matcher(matcher, s, options).items()))
    if solver == "auto":
        solver = "host" if jax.default_backend() == "cpu" else "hungarian"
    if solver not in ("host", "hungarian"):
        raise unknown_name("solver", solver, ("host", "hungarian"))
    mesh = _mesh(devices)
    if max_block_bytes is None:
        max_block_bytes = default_block_bytes(matcher)
    if matcher == "auction" and not return_quality:
        # bidding on the host (numba) on CPU with one device; in-graph lanes otherwise
        host = solver == "host" and mesh is None and _m.host_auction_available()
        bar = tqdm(total=1, desc="semantic rsm (auction)", leave=False,
                   disable={True: False, False: True, None: None}[progress])
        sim, dist = _auction_statistics(x, opts, mesh, max_block_bytes, block_pairs, bar,
                                        host)
        bar.close()
        ii, jj = np.tril_indices(n, -1)
        return ii, jj, sim, dist, None
    t = _tile_size(n, s, L, max_block_bytes, block_pairs)
    nt = -(-n // t)
    if mesh is not None and nt * (nt + 1) // 2 < mesh.devices.size:
        mesh = None                          # fewer tiles than devices: one device is enough
    ndev = 1 if mesh is None else mesh.devices.size
    if nt * t > n:                                                  # zero inputs, discarded
        x = jnp.concatenate([x, jnp.zeros((L, nt * t - n, s, c), x.dtype)], axis=1)
    if mesh is not None:
        x = jax.device_put(x, NamedSharding(mesh, P()))
        put = lambda v: jax.device_put(v, NamedSharding(mesh, P("tiles")))  # noqa: E731
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
    bar = tqdm(total=len(blocks), desc=f"semantic rsm ({matcher})", leave=False,
               disable={True: False, False: True, None: None}[progress])
    ingraph = solver == "hungarian" or (matcher in _m.INGRAPH and not return_quality)
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
            sub_perms = tuple(jnp.asarray(_m.solve_exact_host(np.asarray(u))) for u in subs)
            store(blk, _finish_block(sub_perms, state, s, matcher, opts, return_quality))
            pending = nxt
            bar.update()
    bar.close()
    ii, jj = np.tril_indices(n, -1)
    return (ii, jj, sim_m[:, ii, jj], dist_m[:, ii, jj],
            ex_m[:, ii, jj] if return_quality else None)


def _sigma(dist: np.ndarray, rule) -> np.ndarray:
    """Per-layer sigma from the off-diagonal squared distances (L, P)."""
    if not isinstance(rule, str):
        val = float(rule)
        if not np.isfinite(val) or val <= 0:
            raise InputError(f"sigma must be positive and finite, got {rule!r}")
        return np.full(dist.shape[0], val)
    if rule not in SIGMA_RULES:
        raise unknown_name("sigma rule", rule, SIGMA_RULES)
    out = np.empty(dist.shape[0])
    for layer, d in enumerate(dist):
        nz = np.sort(d[d != 0].astype(np.float64))
        if nz.size == 0:
            med = 0.0
        elif rule == "lower_median":
            med = nz[(nz.size - 1) // 2]
        elif rule == "median":
            med = np.median(nz)
        else:
            med = nz.mean()
        out[layer] = np.sqrt(med) + 1e-3
    return out


def kernel_from_statistics(kernel: str, n: int, ii, jj, sim, dist, sqnorm, *,
                           sigma="lower_median") -> np.ndarray:
    """Assembles (L, N, N) RSMs from matched pair statistics (see the module docstring)."""
    L = sim.shape[0]
    sim = sim.astype(np.float64)
    sqnorm = np.asarray(sqnorm, np.float64)
    out = np.zeros((L, n, n))
    if kernel == "inner":
        off, diag = sim, sqnorm
    elif kernel == "cosine":
        nrm = np.sqrt(sqnorm)
        den = nrm[:, ii] * nrm[:, jj]
        off = np.where(den > 0, sim / np.where(den > 0, den, 1.0), 0.0)
        diag = np.where(sqnorm > 0, sqnorm / np.where(sqnorm > 0, nrm * nrm, 1.0), 0.0)
    elif kernel == "rbf":
        sig = _sigma(dist, sigma)[:, None]
        off = np.exp(-dist.astype(np.float64) / (2.0 * sig ** 2))
        diag = np.ones((L, n))
    else:
        raise unknown_name("kernel", kernel, KERNELS)
    out[:, ii, jj] = off
    out[:, jj, ii] = off
    out[:, np.arange(n), np.arange(n)] = diag
    return out


def _rsm_stack(x, kernels, matcher, return_quality, sigma, options):
    ii, jj, sim, dist, exact = pair_statistics(x, matcher=matcher,
                                               return_quality=return_quality, **options)
    n = x.shape[1]
    sqnorm = np.asarray(jnp.sum(jnp.square(x), axis=(-2, -1)))
    mats = {k: kernel_from_statistics(k, n, ii, jj, sim, dist, sqnorm, sigma=sigma)
            for k in kernels}
    qual = None
    if return_quality:
        ratio = np.where(exact != 0, sim / np.where(exact != 0, exact, 1.0), 1.0)
        qual = np.ones((x.shape[0], n, n))
        qual[:, ii, jj] = ratio
        qual[:, jj, ii] = ratio
    return mats, qual


def rsm(reps, *, kernel: str | Sequence[str] = "cosine", matcher: str = "exact",
        return_quality: bool = False, stacked: bool = False, sigma="lower_median",
        drop_first_token: bool = False, **options):
    r"""Semantic RSM(s) of one layer, a stack of equal-shaped layers, or a dict of layers.

    Args:
      reps: (N, H, W, C) or (N, S, C) for one layer (channels last, position s = h*W + w);
        with ``stacked=True`` a (L, N, ...) array of L equal-shaped layers; or a dict
        ``{layer: reps}`` (layers of equal shape are vmapped together).
      kernel: ``"inner"``, ``"cosine"``, ``"rbf"``, or a sequence of them (one matching
        serves all; the result is then a dict ``{kernel: rsm}``).
      matcher: ``"identity"``, ``"exact"``, ``"greedy"``, ``"topk_greedy"`` (option ``k``,
        default 64), ``"window"`` (option ``size``, default 128), ``"sinkhorn"`` (options
        ``eps_start``, ``eps_end``, ``n_stages``, ``iters_per_stage``) or ``"auction"``
        (options ``k`` candidates per row, default 32, ``eps`` default 1e-2 of the costs'
        row range, ``dual_eps``, ``init_iters``, ``init_eps``, ``bidders``, ``max_bids``,
        ``lanes``: pairs stepping together, default 64 on CPU, a whole block on
        accelerators;
        ``cost_dtype``: ``"float32"`` (default), ``"bfloat16"`` or ``"auto"`` (bfloat16
        where native, :func:`~repsim_jax.semantic.matching.auction_cost_dtype`): candidate
        costs from centred low-precision inputs, scores always float32; with
        ``return_quality`` the per-pair path uses float32 costs).
        See :mod:`repsim_jax.semantic.matching`.
      return_quality: also return the (N, N) ratio matched score / exact score (1 on the
        diagonal and for ``exact``; <= 1 otherwise).
      sigma: rbf bandwidth rule (``"lower_median"`` = official, ``"median"``, ``"mean"``)
        or a positive number.
      drop_first_token: drop token 0 (e.g. a transformer's CLS token) from every set.
      **options: matcher options, and ``solver`` (``"auto"``, ``"host"``, ``"hungarian"``:
        where exact sub-problems are solved; for the auction ``"host"`` = numba bidding,
        ``"hungarian"`` = in-graph lanes),
        ``max_block_bytes`` (cost matrices at once; default :func:`default_block_bytes`:
        32 MiB on CPU, 1 MiB for the auction, 256 MiB on accelerators), ``block_pairs``
        (pairs per block), ``devices`` (``"all"``, a list of devices, a 1-D Mesh, or None),
        ``progress``.

    Returns:
      (N, N) float64 array (or (L, N, N) when ``stacked``; a dict per layer for dict input;
      a dict per kernel for a kernel sequence); with ``return_quality`` a tuple
      ``(rsm, quality)`` of the same structure.
    """
    kernels = (kernel,) if isinstance(kernel, str) else tuple(kernel)
    if not kernels:
        raise InputError("kernel: give at least one kernel")
    for k in kernels:
        if k not in KERNELS:
            raise unknown_name("kernel", k, KERNELS)
    if matcher not in _m.MATCHERS:
        raise unknown_name("matcher", matcher, _m.MATCHERS)

    def pick(mats):
        return mats[kernels[0]] if isinstance(kernel, str) else mats

    if isinstance(reps, Mapping):
        if not reps:
            raise InputError("reps: the dict of layers is empty")
        sets = {name: _as_sets(v, f"reps[{name!r}]", drop_first_token, False)
                for name, v in reps.items()}
        ns = {name: v.shape[1] for name, v in sets.items()}
        if len(set(ns.values())) > 1:
            raise InputError(f"reps: layers disagree on the number of inputs N: {ns}")
        groups: dict[tuple, list] = {}
        for name, v in sets.items():
            groups.setdefault(v.shape, []).append(name)
        out, qout = {}, {}
        for names in groups.values():
            x = jnp.concatenate([sets[nm] for nm in names], axis=0)
            mats, qual = _rsm_stack(x, kernels, matcher, return_quality, sigma, options)
            for li, nm in enumerate(names):
                out[nm] = pick({k: m[li] for k, m in mats.items()})
                if return_quality:
                    qout[nm] = qual[li]
        out = {nm: out[nm] for nm in reps}
        return (out, {nm: qout[nm] for nm in reps}) if return_quality else out

    x = _as_sets(reps, "reps", drop_first_token, stacked)
    mats, qual = _rsm_stack(x, kernels, matcher, return_quality, sigma, options)
    if not stacked:
        mats = {k: m[0] for k, m in mats.items()}
        qual = None if qual is None else qual[0]
    return (pick(mats), qual) if return_quality else pick(mats)
