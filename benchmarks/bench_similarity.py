"""Layer-similarity benchmark: all layer pairs of two 20-layer models, every measure.

repsim_jax.similarity.compare_layers (every layer prepared once, pairs vmapped, one compile
per shape group) against, in the same run,

* a per-pair numpy loop (float32 numpy implementations of the same definitions, each pair
  computed from the two raw representations, as one-pair-at-a-time libraries do). The loop
  runs over the pairs in a fixed random order (so every width mix is sampled) until it has
  done all pairs or spent ``--loop-budget`` seconds (at least 2 pairs); when it stops early
  its time is extrapolated to all pairs and the row says so (``numpy_extrapolated``,
  ``numpy_pairs_timed``);
* rsatoolbox (RDMs of all layers, then ``rsatoolbox.rdm.compare`` of all RDM pairs at once:
  its fastest use) for RSA.

Also the memory of minibatch CKA against full CKA: XLA's temp buffer size of the compiled
programs (``compiled.memory_analysis()``), for the RBF kernel (N x N Gram matrices) and the
linear kernel.

Synthetic activations: layer l of model A is a random mixing of a shared latent plus noise,
model B the same with other mixings (related but not equal layers); widths 64/128/256/512
(5 layers each, so 4 shape groups per model). Every measure runs at every size; the
input-by-input ones (RSA, RBF CKA, kNN, CKNNA) hold N x N statistics per layer, chunked by
compare_layers to ``--fast-budget-gib`` (its FAST_BUDGET, 2 GiB by default).

    python benchmarks/bench_similarity.py            # N = 2000 and 10000, 20 layers each
    python benchmarks/bench_similarity.py --quick    # N = 500, 8 layers per model
Writes benchmarks/results/bench_similarity.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

FEATURE = ["cka", "cka_debiased", "procrustes", "cca", "svcca", "pwcca"]
INPUTWISE = ["rbf_cka", "rbf_cka_debiased", "rsa", "mutual_knn", "cknna"]


def make_acts(n, n_layers, seed):
    rng = np.random.default_rng(seed)
    widths = [64, 128, 256, 512]
    z = rng.normal(size=(n, 32)).astype(np.float32)
    out = []
    for m in range(2):
        acts = {}
        for l in range(n_layers):
            d = widths[l * len(widths) // n_layers]
            W = rng.normal(size=(32, d)).astype(np.float32)
            acts[f"layer{l:02d}"] = np.maximum(z @ W + (1 + l / 4) * rng.normal(
                size=(n, d)).astype(np.float32), 0)
        out.append(acts)
    return out


# ------------------------------------------------------------- numpy per-pair loop
def _c(X):
    return X - X.mean(0)


def np_cka(X, Y, debiased=False):
    X, Y = _c(X), _c(Y)
    if not debiased:
        return np.sum((X.T @ Y) ** 2) / (np.linalg.norm(X.T @ X) * np.linalg.norm(Y.T @ Y))

    def h(A, B):
        n = len(A)
        ka, kb = (A * A).sum(1), (B * B).sum(1)
        u, v = A @ A.sum(0) - ka, B @ B.sum(0) - kb
        ta, tb = A.sum(0) @ A.sum(0) - ka.sum(), B.sum(0) @ B.sum(0) - kb.sum()
        return (np.sum((A.T @ B) ** 2) - ka @ kb + ta * tb / ((n - 1) * (n - 2))
                - 2 * u @ v / (n - 2)) / (n * (n - 3))
    return h(X, Y) / np.sqrt(h(X, X) * h(Y, Y))


def _rbf(A):
    A = _c(A)
    s = (A * A).sum(1)
    d2 = np.maximum(s[:, None] + s[None] - 2 * A @ A.T, 0)
    return np.exp(-d2 / (2 * np.median(d2)))


def np_rbf_cka(X, Y):
    def gram(A):
        K = _rbf(A)
        return K - K.mean(0) - K.mean(1)[:, None] + K.mean()
    K, L = gram(X), gram(Y)
    return np.sum(K * L) / np.sqrt(np.sum(K * K) * np.sum(L * L))


def np_rbf_cka_debiased(X, Y):
    def gram(A):
        K = _rbf(A)
        np.fill_diagonal(K, 0)
        n = len(K)
        r = K.sum(1)
        K = K - (r[:, None] + r[None]) / (n - 2) + r.sum() / ((n - 1) * (n - 2))
        np.fill_diagonal(K, 0)
        return K
    K, L = gram(X), gram(Y)
    return np.sum(K * L) / np.sqrt(np.sum(K * K) * np.sum(L * L))


def np_procrustes(X, Y):
    X, Y = _c(X), _c(Y)
    X, Y = X / np.linalg.norm(X), Y / np.linalg.norm(Y)
    return np.arccos(min(1.0, np.linalg.svd(X.T @ Y, compute_uv=False).sum()))


def _basis(X):
    U, s, _ = np.linalg.svd(_c(X), full_matrices=False)
    return U, s


def np_cca(X, Y):
    return np.linalg.svd(_basis(X)[0].T @ _basis(Y)[0], compute_uv=False).sum() / min(
        X.shape[1], Y.shape[1])


def np_svcca(X, Y, keep=0.99):
    def red(A):
        U, s = _basis(A)
        k = int(np.searchsorted(np.cumsum(s ** 2) / np.sum(s ** 2), keep) + 1)
        return U[:, :k]
    a, b = red(X), red(Y)
    return np.linalg.svd(a.T @ b, compute_uv=False).sum() / min(a.shape[1], b.shape[1])


def np_pwcca(X, Y):
    Ux, _ = _basis(X)
    P, rho, _ = np.linalg.svd(Ux.T @ _basis(Y)[0], full_matrices=False)
    w = np.abs((Ux @ P).T @ _c(X)).sum(1)
    return (w * rho).sum() / w.sum()


def np_rsa(X, Y):
    from scipy.stats import spearmanr

    def rdm(A):
        Z = A - A.mean(1, keepdims=True)
        Z /= np.linalg.norm(Z, axis=1, keepdims=True)
        return (1 - Z @ Z.T)[np.triu_indices(len(A), 1)]
    return spearmanr(rdm(X), rdm(Y))[0]


def _knn(A, k):
    s = (A * A).sum(1)
    d = s[:, None] + s[None] - 2 * A @ A.T
    np.fill_diagonal(d, np.inf)
    return np.argpartition(d, k, axis=1)[:, :k]


def np_mutual_knn(X, Y, k=10):
    a, b = _knn(X, k), _knn(Y, k)
    return np.mean((a[:, :, None] == b[:, None, :]).sum((1, 2)) / k)


def np_cknna(X, Y, k=10):
    def prep(A):
        A = A / np.linalg.norm(A, axis=1, keepdims=True)
        K = A @ A.T
        G = K.copy()
        np.fill_diagonal(G, -np.inf)
        m = np.zeros_like(K, bool)
        np.put_along_axis(m, np.argpartition(-G, k, axis=1)[:, :k], True, 1)
        return K, m

    def hu(K, L):
        n = len(K)
        K, L = K.copy(), L.copy()
        np.fill_diagonal(K, 0)
        np.fill_diagonal(L, 0)
        return (np.sum(K * L.T) + K.sum() * L.sum() / ((n - 1) * (n - 2))
                - 2 * K.sum(0) @ L.sum(1) / (n - 2)) / (n * (n - 3))
    (K, mk), (L, ml) = prep(X), prep(Y)
    m = mk & ml
    return hu(m * K, m * L) / np.sqrt(hu(mk * K, mk * K) * hu(ml * L, ml * L))


NUMPY = {"cka": np_cka, "cka_debiased": lambda x, y: np_cka(x, y, True),
         "rbf_cka": np_rbf_cka, "rbf_cka_debiased": np_rbf_cka_debiased, "procrustes": np_procrustes,
         "cca": np_cca, "svcca": np_svcca, "pwcca": np_pwcca, "rsa": np_rsa,
         "mutual_knn": np_mutual_knn, "cknna": np_cknna}


def numpy_loop(measure, A, B, budget_s, max_pairs=None):
    """(seconds for all pairs, extrapolated?, pairs timed, {pair: value}): pairs in a fixed
    random order until all are done or ``budget_s`` is spent (at least 2)."""
    pairs = [(a, b) for a in A for b in B]
    order = np.random.default_rng(0).permutation(len(pairs))[:max_pairs or len(pairs)]
    vals = {}
    t = time.perf_counter()
    for i in order:
        a, b = pairs[i]
        vals[(a, b)] = float(NUMPY[measure](A[a], B[b]))
        if len(vals) >= 2 and time.perf_counter() - t > budget_s:
            break
    dt = time.perf_counter() - t
    return dt * len(pairs) / len(vals), len(vals) < len(pairs), len(vals), vals


# ---------------------------------------------------------------------- rsatoolbox
def rsatoolbox_all_pairs(A, B):
    import rsatoolbox
    t = time.perf_counter()
    r = [rsatoolbox.rdm.calc_rdm(rsatoolbox.data.Dataset(np.asarray(v, np.float64)),
                                 method="correlation") for v in (*A.values(), *B.values())]
    ra = rsatoolbox.rdm.concat(r[:len(A)])
    rb = rsatoolbox.rdm.concat(r[len(A):])
    vals = rsatoolbox.rdm.compare(ra, rb, method="spearman")
    return time.perf_counter() - t, np.asarray(vals)


# --------------------------------------------------------------------- JAX side
def jax_all_pairs(measure, A, B, repeat_below_s=120.0):
    """(first call s, steady s, table): the steady-state call is timed again only when the
    first (compile included) took under ``repeat_below_s``; otherwise compile time is a
    negligible share and the first call's time is reported for both."""
    from repsim_jax import similarity as S
    t = time.perf_counter()
    tab = S.compare_layers(A, B, [measure], progress=False)
    first = time.perf_counter() - t
    if first >= repeat_below_s:
        return first, first, tab
    t = time.perf_counter()
    tab = S.compare_layers(A, B, [measure], progress=False)
    return first, time.perf_counter() - t, tab


def memory_rows(n, d, batch):
    import jax
    import jax.numpy as jnp

    import importlib
    M = importlib.import_module("repsim_jax.similarity._measure")
    C = importlib.import_module("repsim_jax.similarity.cka")
    rows = []
    for kernel in ("rbf", "linear"):
        x = jax.ShapeDtypeStruct((n, d), jnp.float32)
        xb = jax.ShapeDtypeStruct((batch, d), jnp.float32)
        _, opts = M.resolve("cka", {"kernel": kernel, "debiased": True})
        full = M.value_jit.lower(x, x, name="cka", opts=opts).compile().memory_analysis()
        mb = C._batch_hsic.lower(xb, xb, kernel=kernel, sigma=1.0).compile().memory_analysis()
        rows.append({"kernel": kernel, "N": n, "D": d, "batch": batch,
                     "full_temp_bytes": int(full.temp_size_in_bytes),
                     "minibatch_temp_bytes": int(mb.temp_size_in_bytes),
                     "ratio": full.temp_size_in_bytes / max(1, mb.temp_size_in_bytes)})
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--sizes", default=None, help="comma-separated N (default 2000,10000)")
    ap.add_argument("--layers", type=int, default=None)
    ap.add_argument("--loop-budget", type=float, default=None,
                    help="numpy loop: seconds per measure and size before it extrapolates "
                         "(default 120, --quick 10)")
    ap.add_argument("--loop-pairs", type=int, default=None,
                    help="numpy loop: at most this many pairs (default all)")
    ap.add_argument("--fast-budget-gib", type=float, default=None,
                    help="compare_layers' memory budget for prepared statistics "
                         "(similarity.compare.FAST_BUDGET; default the library's 2 GiB)")
    ap.add_argument("--measures", default=None, help="comma-separated subset of measures")
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--out", default="benchmarks/results/bench_similarity.json")
    args = ap.parse_args()
    sizes = [int(s) for s in (args.sizes or ("500" if args.quick else "2000,10000"))
             .split(",")]
    n_layers = args.layers or (8 if args.quick else 20)
    budget = args.loop_budget if args.loop_budget is not None else (10 if args.quick else 120)
    import importlib
    C = importlib.import_module("repsim_jax.similarity.compare")
    if args.fast_budget_gib is not None:
        C.FAST_BUDGET = int(args.fast_budget_gib * (1 << 30))
    res = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                       "load_average": os.getloadavg()},
           "settings": {"sizes": sizes, "layers": n_layers, "loop_budget_s": budget,
                        "loop_pairs": args.loop_pairs, "fast_budget_bytes": C.FAST_BUDGET},
           "rows": [], "memory": []}
    print(f"load average at start: {os.getloadavg()}")
    for n in sizes:
        A, B = make_acts(n, n_layers, seed=n)
        measures = FEATURE + INPUTWISE
        if args.measures:
            measures = [m for m in measures if m in args.measures.split(",")]
        for m in measures:
            first, steady, tab = jax_all_pairs(m, A, B)
            loop_s, extrap, timed, vals = numpy_loop(m, A, B, budget, args.loop_pairs)
            got = {(r["layer"], r["other_layer"]): r["value"] for r in tab.records()}
            err = max(abs(got[k] - v) for k, v in vals.items())
            row = {"N": n, "layers": n_layers, "pairs": n_layers ** 2, "measure": m,
                   "jax_first_s": round(first, 3), "jax_s": round(steady, 3),
                   "jax_timed_once": first == steady,
                   "numpy_loop_s": round(loop_s, 3), "numpy_extrapolated": extrap,
                   "numpy_pairs_timed": timed,
                   "ratio_vs_numpy": round(loop_s / steady, 1),
                   "max_abs_diff_vs_numpy": float(err)}
            if extrap:
                row["note"] = (f"numpy loop timed on {timed} of {n_layers ** 2} pairs "
                               f"(random order), extrapolated to all")
            if m == "rsa" and n <= 2000:    # rsatoolbox keeps float64 RDMs: 16 GB at 10k
                rt, rv = rsatoolbox_all_pairs(A, B)
                row["rsatoolbox_s"] = round(rt, 3)
                row["ratio_vs_rsatoolbox"] = round(rt / steady, 1)
                row["max_abs_diff_vs_rsatoolbox"] = float(np.max(np.abs(
                    tab.matrix().values - rv)))
            res["rows"].append(row)
            print(json.dumps(row), flush=True)
    for n in ([] if args.no_memory else sizes):
        res["memory"] += memory_rows(n, 512, 256)
    for r in res["memory"]:
        print(json.dumps(r))
    res["machine"]["load_average_end"] = os.getloadavg()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
