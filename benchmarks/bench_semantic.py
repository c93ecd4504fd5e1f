"""Benchmark: semantic RSMs - each matcher's time and quality vs a plain scipy loop, the
cost-matmul floor and (with --peer PATH) the official TaWald/semantic_rsm code, all in one run.

Features: C=256 ReLU-Gaussian, full N x N RSM (all three kernels from one matching).
Rows: N=64 at S=49 and S=196 (2080 pairs), scaling rows S=784 (N=16) and S=3136 (N=4).
The official code runs in a fresh interpreter per call (one process, processes=1), with its
BLAS/torch threads at 1 (its fastest setting here) and, for lapjv, also at the defaults;
"vs official" uses the fastest official row.
Timings exclude jit compilation (each configuration runs once to warm up, then is timed).

    python benchmarks/bench_semantic.py [--quick] [--out PATH] [--peer PATH/TO/semantic_rsm]
    python benchmarks/bench_semantic.py --trained [--n 32] [--peer PATH]   # trained features

``--trained``: activations of the built-in trained models (small_vgg features.15/.11/.7,
small_resnet layer3/layer2: S = 16, 64, 256) and the tokens of a random-init tiny ViT ported by
``models.load_hf`` from a ``save_pretrained`` directory (S = 64 patch tokens, CLS dropped), N images of the built-in test
set; every matcher's time, max / mean cosine-RSM error against exact, the largest certified
bound and the exact fraction (certified matchers), ratios against exact and the official
code in the same run; and ott-jax's Sinkhorn on the same cost matrices as ours (time at
equal rounding quality; ott-jax is a benchmark-only dependency).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from repsim_jax.semantic import host_solver_name, rsm
from repsim_jax.semantic.solvers.exact import host_solver as _host_solver

KERNELS = ("inner", "cosine", "rbf")


def features(n, s, c, seed=0):
    return np.maximum(np.random.default_rng(seed).normal(size=(n, s, c)), 0).astype(np.float32)


def timed(fn, repeat=1):
    best = np.inf
    out = None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def cost_floor(x):
    """Time of the cost-matrix products X_i X_j^T alone: one (N*S, C) x (C, N*S) product
    (every pair, i.e. twice the i > j pairs' flops, done as one GEMM), in row blocks that
    keep the output under 256 MiB."""
    n, s, c = x.shape
    flat = jnp.asarray(x.reshape(n * s, c))
    rows = max(s, ((1 << 26) // (n * s)) // s * s)

    @jax.jit
    def prod(a, b):
        return (a @ b.T).sum()

    def run():
        return float(sum(prod(flat[k:k + rows], flat) for k in range(0, n * s, rows)))
    run()
    return timed(run, 2)[0]


def scipy_loop(x):
    """The plain baseline: per pair numpy cost matrix + scipy linear_sum_assignment."""
    from scipy.optimize import linear_sum_assignment
    ii, jj = np.tril_indices(x.shape[0], -1)
    out = np.empty(ii.size)
    t = time.perf_counter()
    for p, (i, j) in enumerate(zip(ii, jj)):
        c = x[i] @ x[j].T
        r, cc = linear_sum_assignment(c, maximize=True)
        out[p] = c[r, cc].sum()
    return time.perf_counter() - t, out


_PEER_SCRIPT = """
import os, sys, time, numpy as np
sys.path.insert(0, os.path.join(sys.argv[1], "src"))
try:                # only its OR-tools matcher needs ortools; the lapjv/hungarian runs do not
    import ortools.graph.python.linear_sum_assignment  # noqa: F401
except ImportError:
    import types
    for name in ("ortools", "ortools.graph", "ortools.graph.python",
                 "ortools.graph.python.linear_sum_assignment"):
        sys.modules[name] = types.ModuleType(name)
    sys.modules["ortools.graph.python"].linear_sum_assignment = sys.modules[
        "ortools.graph.python.linear_sum_assignment"]
import types
for name in ("seaborn", "loguru"):   # imported by its modules for plots and logging only
    try:
        __import__(name)
    except ImportError:
        mod = sys.modules[name] = types.ModuleType(name)
        mod.logger = types.SimpleNamespace(**{k: (lambda *a, **kw: None) for k in (
            "info", "debug", "warning", "error")})
from srsm.core import bipartite_matching as bm, sim_calc, sim_func
x = np.load(sys.argv[2])
matcher = {"lapjv": bm.lapjv_match, "hungarian": bm.hungarian_match}[sys.argv[3]]
# numpy >= 2 refuses its (1, 1) inner/cosine results in the matrix fill: scalar wrappers
sims = [lambda a, b: float(sim_func.inner_product(a, b)[0, 0]),
        lambda a, b: float(sim_func.cosine_sim(a, b)[0, 0]), sim_func.own_rbf]
xt = np.ascontiguousarray(np.transpose(x, (0, 2, 1)))               # (N, C, S)
os.environ["LSB_JOBID"] = "1"                                      # silence its tqdm
t = time.perf_counter()
out = sim_calc.semantic_sim_parallel(xt, xt, sims, matcher, processes=1)
t = time.perf_counter() - t
np.savez(sys.argv[4], seconds=t, inner=np.asarray(out[0], np.float64))
"""


def peer_run(path, x, func, threads):
    """The official semantic_sim_parallel (processes=1, all three kernels) in a fresh
    interpreter whose BLAS/torch thread count is fixed before import: ``threads=1`` is the
    official code's fastest setting on this 2-core machine (its per-pair numpy/torch calls
    are tiny; with the default thread pools it ran ~5x slower); ``None`` keeps the
    defaults. Returns (seconds, inner RSM)."""
    import subprocess
    import tempfile
    env = dict(os.environ)
    if threads is not None:
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env[var] = str(threads)
    with tempfile.TemporaryDirectory() as d:
        np.save(Path(d) / "x.npy", x)
        subprocess.run([sys.executable, "-c", _PEER_SCRIPT, str(path), str(Path(d) / "x.npy"),
                        func, str(Path(d) / "out.npz")], env=env, check=True,
                       capture_output=True)
        res = np.load(Path(d) / "out.npz")
        return float(res["seconds"]), res["inner"]


def bench_config(n, s, c, matchers, args, results):
    x = features(n, s, c, seed=s)
    npairs = n * (n - 1) // 2
    ii, jj = np.tril_indices(n, -1)
    rows = []
    floor = cost_floor(x)
    rows.append(dict(method="cost-matmul floor", seconds=floor, quality=None))
    base_t, base_s = scipy_loop(x) if s <= 784 or args.full else (None, None)
    if base_t is not None:
        rows.append(dict(method="scipy loop (exact)", seconds=base_t, quality=1.0))
    exact_inner = None
    for name, opts in matchers:
        ingraph_only = name in ("exact[hungarian]", "sinkhorn")
        if (ingraph_only and jax.default_backend() == "cpu" and not args.full
                and s * s * npairs > 49 * 49 * 2080):
            rows.append(dict(method=name, seconds=None, note="accelerator path; --full on CPU"))
            continue
        matcher = name.split("[")[0]
        if name == "exact[scipy]":
            os.environ["REPSIM_LAP"] = "scipy"
        _host_solver.cache_clear()
        call = lambda: rsm(x, kernel=KERNELS, matcher=matcher, progress=False, **opts)  # noqa
        t_first, out = timed(call)
        t, out = timed(call) if t_first < 30 else (t_first, out)
        os.environ.pop("REPSIM_LAP", None)
        _host_solver.cache_clear()
        inner = out["inner"][ii, jj]
        if name == "exact":
            exact_inner = inner
            if base_s is not None:
                assert np.allclose(inner, base_s, rtol=1e-4), "exact != scipy loop"
        q = None
        if exact_inner is not None:
            ratio = inner / exact_inner
            q = float(ratio.mean())
            qmin = float(ratio.min())
        rows.append(dict(method=name, seconds=t, first_call_seconds=t_first, quality=q,
                         quality_min=qmin if q is not None else None))
    if args.peer:
        for func, threads in (("lapjv", 1), ("hungarian", 1), ("lapjv", None)):
            if s > 196 and not args.full:
                continue
            name = f"official {func}" + (" (1 thread)" if threads == 1 else
                                         " (default threads)")
            try:
                t, inner_peer = peer_run(args.peer, x, func, threads)
            except Exception as e:  # noqa: BLE001 - report, do not crash the table
                rows.append(dict(method=name, seconds=None, error=repr(e)[-300:]))
                continue
            q = None
            if exact_inner is not None:
                q = float((inner_peer[ii, jj] / exact_inner).mean())
            rows.append(dict(method=name, seconds=t, quality=q))
    off = {r["method"]: r["seconds"] for r in rows if r.get("seconds")}
    peer_best = min([v for k, v in off.items() if k.startswith("official")], default=None)
    for r in rows:
        if r.get("seconds"):
            r["x_vs_scipy_loop"] = base_t / r["seconds"] if base_t else None
            r["x_vs_official_best"] = peer_best / r["seconds"] if peer_best else None
            r["x_floor"] = r["seconds"] / floor
    results.append(dict(N=n, S=s, C=c, pairs=npairs, rows=rows))
    print(f"\nN={n} S={s} C={c} ({npairs} pairs), host solver {host_solver_name()}, "
          f"backend {jax.default_backend()}")
    print(f"{'method':34s} {'seconds':>9s} {'quality':>8s} {'q_min':>7s} {'vs scipy':>9s} "
          f"{'vs official':>11s} {'x floor':>8s}")
    for r in rows:
        fmt = lambda v, f: (f % v) if v is not None else "-"  # noqa: E731
        print(f"{r['method']:34s} {fmt(r.get('seconds'), '%9.3f'):>9s} "
              f"{fmt(r.get('quality'), '%8.4f'):>8s} {fmt(r.get('quality_min'), '%7.4f'):>7s} "
              f"{fmt(r.get('x_vs_scipy_loop'), '%8.1fx'):>9s} "
              f"{fmt(r.get('x_vs_official_best'), '%10.1fx'):>11s} "
              f"{fmt(r.get('x_floor'), '%7.1fx'):>8s}" + (f"  {r['error']}" if "error" in r
                                                         else "")
              + (f"  ({r['note']})" if "note" in r else ""))
    sys.stdout.flush()


def trained_features(n):
    """{name: (N, S, C)} activations of the trained built-in models and a tiny ViT."""
    from pathlib import Path as _P
    warm = _P(os.environ.get("REPSIM_CACHE", _P.home() / ".cache" / "repsim_jax")) / "WARM"
    for _ in range(120):                       # the model cache may still be filling
        if warm.exists() or not warm.parent.exists():
            break
        time.sleep(5)
    from repsim_jax.data import shapes
    from repsim_jax.models import activations, zoo
    data = shapes.load("test")
    images = np.asarray(data.images[:n])
    out = {}
    for model_name, layers in (("small_vgg", ("features.15", "features.11", "features.7")),
                               ("small_resnet", ("layer3", "layer2"))):
        model, _ = zoo.load_trained(model_name)
        acts = activations(model, images, list(layers))
        for l in layers:
            a = np.asarray(acts[l], np.float32)
            out[f"{model_name} {l}"] = a.reshape(n, -1, a.shape[-1])
    out.update(vit_tokens(images))
    return out


def vit_tokens(images):
    """{name: (N, 64, 64)} patch tokens (CLS dropped) of a tiny random-init ViT (64x64 px,
    patch 8, width 64, 2 layers) ported by :func:`repsim_jax.models.load_hf` from a
    ``save_pretrained`` directory and run by :func:`repsim_jax.models.activations` (the
    path a user's own ViT takes). With transformers installed the checkpoint is written by
    transformers (its own initialisation); otherwise by :func:`repsim_jax.models.save_hf`
    from :func:`repsim_jax.models.build_hf`. No weights are downloaded."""
    import tempfile

    from repsim_jax.models import activations, build_hf, load_hf, save_hf
    cfg = dict(model_type="vit", architectures=["ViTModel"], image_size=64, patch_size=8,
               num_channels=3, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
               intermediate_size=128, hidden_act="gelu", layer_norm_eps=1e-12,
               qkv_bias=True)
    with tempfile.TemporaryDirectory() as d:
        try:
            import torch
            from transformers import ViTConfig, ViTModel
            torch.manual_seed(0)
            ViTModel(ViTConfig(**{k: v for k, v in cfg.items() if k not in
                                  ("model_type", "architectures")})).save_pretrained(d)
            made = "transformers init"
        except ImportError:
            save_hf(build_hf(cfg, seed=0), d)
            made = "build_hf init"
        model = load_hf(d)
        layer = "encoder.layer.1"
        tok = np.asarray(activations(model, images, [layer])[layer], np.float32)
    return {f"vit-tiny {layer} tokens (load_hf, {made})": tok[:, 1:]}


def ott_sinkhorn_row(x, pairs=64, eps_end=2e-3):
    """Our log-domain Sinkhorn vs ott-jax's on the same (centred, range-scaled) cost matrices
    of ``pairs`` pairs: time and rounding quality (greedy on each plan), mean score/exact."""
    import functools
    from ott.geometry import geometry
    from ott.solvers import linear
    from repsim_jax.semantic.host import solve_exact_host
    from repsim_jax.semantic.solvers.greedy import greedy_matching
    from repsim_jax.semantic.solvers.sinkhorn import sinkhorn_solve
    n, s, _ = x.shape
    ii, jj = np.tril_indices(n, -1)
    sel = np.linspace(0, ii.size - 1, min(pairs, ii.size)).astype(int)
    cost = np.einsum("psc,ptc->pst", x[ii[sel]], x[jj[sel]])
    m = cost - cost.mean(1, keepdims=True)
    m = m / (m.max(2) - m.min(2)).max((1,), keepdims=True)[..., None]
    m = jnp.asarray(m, jnp.float32)
    best = np.array([c[np.arange(s), p].sum() for c, p in zip(
        np.asarray(m, np.float64), solve_exact_host(np.asarray(m)))])

    @jax.jit
    def ours(m):
        return jax.vmap(lambda c: sinkhorn_solve(c)[0])(m)

    @functools.partial(jax.jit, static_argnames=("eps",))
    def theirs(m, eps):
        def one(c):
            geom = geometry.Geometry(cost_matrix=-c, epsilon=eps)
            out = linear.solve(geom, threshold=1e-2 / s, max_iterations=2000)
            return greedy_matching(jnp.log(jnp.maximum(out.matrix, 1e-30)))
        return jax.vmap(one)(m)

    rows = []
    for name, fn in (("sinkhorn (repsim_jax)", lambda: ours(m)),
                     (f"ott-jax sinkhorn eps={eps_end}", lambda: theirs(m, eps_end)),
                     ("ott-jax sinkhorn eps=1e-2", lambda: theirs(m, 1e-2))):
        jax.block_until_ready(fn())
        t, perm = timed(lambda: jax.block_until_ready(fn()))
        perm = np.asarray(perm)
        sc = np.array([c[np.arange(s), p].sum() for c, p in zip(np.asarray(m, np.float64), perm)])
        rows.append(dict(method=name, seconds=t, pairs=int(sel.size),
                         rounding_quality=float(np.mean(sc / best))))
    return rows


def bench_trained(args, results):
    feats = trained_features(args.n)
    matchers = [("exact", {}), ("auction", {"tol": 1e-3}), ("auction[uncertified]", {"tol": None}),
                ("sinkhorn", {}), ("window", {"size": 128})]
    if args.matchers:
        keep = set(args.matchers.split(","))
        matchers = [m for m in matchers if m[0] in keep]
    for name, x in feats.items():
        n, s, c = x.shape
        rows = []
        exact = None
        for mname, opts in matchers:
            if mname == "sinkhorn" and s * s * n * (n - 1) / 2 > 64 * 64 * 500 and not args.full:
                rows.append(dict(method=mname, seconds=None,
                                 note="slower than exact on CPU; --full to time it"))
                continue
            call = lambda: rsm(x, kernel=("cosine", "rbf"), matcher=mname.split("[")[0],  # noqa
                               progress=False, return_info=True, mesh=None, **opts)
            t_first, info = timed(call)
            t, info = timed(call) if t_first < 20 else (t_first, info)
            if mname == "exact":
                exact = info.rsm
            err = np.abs(info.rsm["cosine"] - exact["cosine"])
            err_rbf = np.abs(info.rsm["rbf"] - exact["rbf"])
            bound = None if info.bound is None else float(
                max(info.bound["cosine"].max(), info.bound["rbf"].max()))
            rows.append(dict(method=mname, seconds=t, max_err=float(max(err.max(),
                                                                         err_rbf.max())),
                             mean_err=float(err[~np.eye(n, dtype=bool)].mean()),
                             bound=bound, exact_fraction=info.exact_fraction))
        if args.peer and s <= 256:
            try:
                t, _ = peer_run(args.peer, x, "lapjv", 1)
                rows.append(dict(method="official lapjv (1 thread)", seconds=t))
            except Exception as e:  # noqa: BLE001
                rows.append(dict(method="official lapjv (1 thread)", seconds=None,
                                 error=repr(e)[-300:]))
        t_ex = rows[0]["seconds"]
        peer = next((r["seconds"] for r in rows if r["method"].startswith("official")
                     and r.get("seconds")), None)
        for r in rows:
            if r.get("seconds"):
                r["x_vs_exact"] = t_ex / r["seconds"]
                r["x_vs_official"] = peer / r["seconds"] if peer else None
        ott_rows = []
        if not args.no_ott:
            try:
                ott_rows = ott_sinkhorn_row(x, pairs=64 if s <= 64 else 12)
            except Exception as e:  # noqa: BLE001
                ott_rows = [dict(method="ott-jax", error=repr(e)[-300:])]
        results.append(dict(features=name, N=n, S=s, C=c, pairs=n * (n - 1) // 2, rows=rows,
                            sinkhorn_vs_ott=ott_rows))
        print(f"\n{name}: N={n} S={s} C={c} ({n * (n - 1) // 2} pairs), load "
              f"{os.getloadavg()[0]:.1f}")
        print(f"{'method':28s} {'seconds':>8s} {'max err':>9s} {'mean err':>9s} {'bound':>9s} "
              f"{'exact%':>7s} {'vs exact':>8s} {'vs off.':>8s}")
        fmt = lambda v, f: (f % v) if v is not None else "-"  # noqa: E731
        for r in rows:
            if r.get("seconds") is None:
                print(f"{r['method']:28s} {'-':>8s}  ({r.get('note', r.get('error'))})")
                continue
            print(f"{r['method']:28s} {fmt(r.get('seconds'), '%8.3f')} "
                  f"{fmt(r.get('max_err'), '%9.2e')} {fmt(r.get('mean_err'), '%9.2e')} "
                  f"{fmt(r.get('bound'), '%9.2e')} "
                  f"{fmt(None if r.get('exact_fraction') is None else 100 * r['exact_fraction'], '%6.1f%%')} "
                  f"{fmt(r.get('x_vs_exact'), '%7.2fx')} {fmt(r.get('x_vs_official'), '%7.2fx')}")
        for r in ott_rows:
            print(f"  {r['method']:34s} {fmt(r.get('seconds'), '%8.3f')} s, rounding quality "
                  f"{fmt(r.get('rounding_quality'), '%.4f')} ({r.get('pairs')} pairs)")
        sys.stdout.flush()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (< 1 min)")
    ap.add_argument("--full", action="store_true", help="also slow baselines at S >= 784")
    ap.add_argument("--out", default="benchmarks/results/semantic.json")
    ap.add_argument("--peer", default=None, help="checkout of TaWald/semantic_rsm")
    ap.add_argument("--configs", default=None, help="e.g. 64x196,16x784 (N x S)")
    ap.add_argument("--matchers", default=None, help="comma list of rows, e.g. exact,window")
    ap.add_argument("--trained", action="store_true", help="rows on trained features")
    ap.add_argument("--n", type=int, default=32, help="images for --trained")
    ap.add_argument("--no-ott", action="store_true", help="skip the ott-jax comparison")
    args = ap.parse_args(argv)
    if args.trained:
        results = []
        load_before = os.getloadavg()
        bench_trained(args, results)
        out = Path(args.out if args.out != "benchmarks/results/semantic.json"
                   else "benchmarks/results/semantic_trained.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(dict(host_solver=host_solver_name(),
                                       backend=jax.default_backend(), cpu_count=os.cpu_count(),
                                       load_average_before=load_before,
                                       load_average_after=os.getloadavg(), results=results),
                                  indent=1))
        print(f"\nwrote {out}")
        return
    matchers = [("exact", {}), ("exact[scipy]", {}), ("exact[hungarian]", {"solver": "hungarian"}),
                ("window", {"size": 128}), ("window[64]", {"size": 64}),
                ("topk_greedy", {"k": 64}), ("greedy", {}), ("sinkhorn", {}),
                ("auction", {}), ("auction[uncertified]", {"tol": None}),
                ("auction[bf16]", {"cost_dtype": "bfloat16", "tol": None}),
                ("identity", {})]
    if args.quick:
        configs = [(16, 49), (16, 196), (4, 784)]
    else:
        configs = [(64, 49), (64, 196), (16, 784), (4, 3136)]
    if args.configs:
        configs = [tuple(int(v) for v in cfg.split("x")) for cfg in args.configs.split(",")]
    if args.matchers:
        keep = set(args.matchers.split(","))
        matchers = [m for m in matchers if m[0] in keep]
    results = []
    load_before = os.getloadavg()
    for n, s in configs:
        bench_config(n, s, 256, matchers, args, results)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(host_solver=host_solver_name(), backend=jax.default_backend(),
                                   devices=len(jax.devices()), cpu_count=os.cpu_count(),
                                   load_average_before=load_before,
                                   load_average_after=os.getloadavg(),
                                   results=results), indent=1))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
