"""Benchmark: semantic RSMs - each matcher's time and quality vs a plain scipy loop, the
cost-matmul floor and (with --peer PATH) the official TaWald/semantic_rsm code, all in one run.

Features: C=256 ReLU-Gaussian, full N x N RSM (all three kernels from one matching).
Rows: N=64 at S=49 and S=196 (2080 pairs), scaling rows S=784 (N=16) and S=3136 (N=4).
The official code runs in a fresh interpreter per call (one process, processes=1), with its
BLAS/torch threads at 1 (its fastest setting here) and, for lapjv, also at the defaults;
"vs official" uses the fastest official row.
Timings exclude jit compilation (each configuration runs once to warm up, then is timed).

    python benchmarks/bench_semantic.py [--quick] [--out PATH] [--peer PATH/TO/semantic_rsm]
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
from repsim_jax.semantic.matching import _host_solver

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


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (< 1 min)")
    ap.add_argument("--full", action="store_true", help="also slow baselines at S >= 784")
    ap.add_argument("--out", default="benchmarks/results/semantic.json")
    ap.add_argument("--peer", default=None, help="checkout of TaWald/semantic_rsm")
    ap.add_argument("--configs", default=None, help="e.g. 64x196,16x784 (N x S)")
    ap.add_argument("--matchers", default=None, help="comma list of rows, e.g. exact,window")
    args = ap.parse_args(argv)
    matchers = [("exact", {}), ("exact[scipy]", {}), ("exact[hungarian]", {"solver": "hungarian"}),
                ("window", {"size": 128}), ("window[64]", {"size": 64}),
                ("topk_greedy", {"k": 64}), ("greedy", {}), ("sinkhorn", {}),
                ("auction", {}), ("auction[bf16]", {"cost_dtype": "bfloat16"}),
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
