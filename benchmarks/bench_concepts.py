"""Benchmark of repsim_jax.concepts: NMF vs scikit-learn, Net2Vec training throughput,
and the pairwise similarity kernel, all in one run.

* NMF: the JAX HALS solver vs ``sklearn.decomposition.NMF(solver="cd", init="nndsvda")`` on
  the same non-negative (activation-like) matrix, same k, iterations and tol; reports wall
  time (after compilation; compile time separately) and both reconstruction errors.
* Net2Vec: all concepts x layers in one vmapped training vs the same code run one
  (layer, concept) at a time (the Python-loop peer), as training images per second and
  (image x layer x concept) filter updates per second.
* pairwise_similarity: all layer pairs in one call vs a Python loop over layer pairs.

    python benchmarks/bench_concepts.py --quick
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np


def _timeit(fn, repeat=3):
    best = np.inf
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        jax.block_until_ready(out)
        best = min(best, time.perf_counter() - t)
    return best, out


def _activation_like(M, C, rank, seed=0):
    rng = np.random.default_rng(seed)
    X = np.maximum(rng.normal(size=(M, rank)) @ rng.normal(size=(rank, C)), 0)
    return (X * rng.gamma(1.0, size=(1, C))).astype(np.float32)


def bench_nmf(M, C, k, max_iter):
    from sklearn.decomposition import NMF
    from repsim_jax.concepts import nmf, reconstruction_error
    X = _activation_like(M, C, rank=2 * k)
    t0 = time.perf_counter()
    jax.block_until_ready(nmf(X, k, max_iter=max_iter))
    first = time.perf_counter() - t0
    t_jax, (W, H) = _timeit(lambda: nmf(X, k, max_iter=max_iter))
    n_iter = nmf(X, k, max_iter=max_iter).n_iter
    sk = NMF(k, init="nndsvda", solver="cd", max_iter=max_iter, tol=1e-4)
    t_sk, _ = _timeit(lambda: sk.fit_transform(X), repeat=2)
    err_jax = reconstruction_error(X, W, H)
    return {"M": M, "C": C, "k": k, "max_iter": max_iter,
            "jax_s": t_jax, "jax_compile_s": first - t_jax, "sklearn_s": t_sk,
            "speedup": t_sk / t_jax, "jax_n_iter": n_iter, "sklearn_n_iter": int(sk.n_iter_),
            "jax_err": err_jax, "sklearn_err": float(sk.reconstruction_err_),
            "err_ratio": err_jax / float(sk.reconstruction_err_)}


def bench_net2vec(N, L, hw, C, K, mask_size, epochs):
    from repsim_jax.concepts import Net2VecConfig, train_net2vec
    rng = np.random.default_rng(0)
    acts = {f"layer{l}": rng.normal(size=(N, hw, hw, C)).astype(np.float32) for l in range(L)}
    masks = rng.random((N, mask_size, mask_size, K)) < 0.2
    cfg = Net2VecConfig(epochs=epochs, progress=False)
    train_net2vec(acts, masks, config=Net2VecConfig(epochs=1, progress=False))   # compile
    t_all, _ = _timeit(lambda: train_net2vec(acts, masks, config=cfg).weights["layer0"],
                       repeat=1)
    # peer: one (layer, concept) at a time with the same code (a Python loop)
    n_peer = min(4, L * K)
    one = {"layer0": acts["layer0"]}
    train_net2vec(one, masks[..., :1], config=Net2VecConfig(epochs=1, progress=False))
    t0 = time.perf_counter()
    for c in range(n_peer):
        jax.block_until_ready(train_net2vec(one, masks[..., c:c + 1], config=cfg)
                              .weights["layer0"])
    t_loop = (time.perf_counter() - t0) / n_peer * L * K
    imgs = N * epochs
    return {"N": N, "layers": L, "hw": hw, "C": C, "concepts": K, "mask_size": mask_size,
            "epochs": epochs, "batched_s": t_all, "loop_s_extrapolated": t_loop,
            "images_per_s": imgs / t_all,
            "filter_updates_per_s": imgs * L * K / t_all,
            "loop_filter_updates_per_s": imgs * L * K / t_loop, "speedup": t_loop / t_all}


def bench_similarity(L, N, hw, k, metric):
    from repsim_jax.concepts import pairwise_similarity
    rng = np.random.default_rng(0)
    a = jnp.asarray(rng.random((L, N, hw, hw, k)), jnp.float32)
    b = jnp.asarray(rng.random((L, N, hw, hw, k)), jnp.float32)
    pairwise_similarity(a, b, metric)
    pairwise_similarity(a[0], b[0], metric)
    t_all, _ = _timeit(lambda: pairwise_similarity(a, b, metric))
    t_loop, _ = _timeit(lambda: [pairwise_similarity(a[i], b[j], metric)
                                 for i in range(L) for j in range(L)], repeat=1)
    return {"metric": metric, "layers": L, "N": N, "hw": hw, "k": k, "batched_s": t_all,
            "loop_s": t_loop, "speedup": t_loop / t_all}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (< 1 min)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "concepts.json"))
    args = ap.parse_args(argv)
    q = args.quick
    nmf_sizes = [(20_000, 64, 10)] if q else [(20_000, 64, 10), (200_000, 128, 10)]
    res = {"device": str(jax.devices()[0]), "backend": jax.default_backend(),
           "cpu_count": os.cpu_count(), "platform": platform.platform(), "quick": q,
           "nmf": [bench_nmf(M, C, k, 200) for M, C, k in nmf_sizes],
           "net2vec": [bench_net2vec(N=200 if q else 1000, L=4, hw=16, C=64, K=16,
                                     mask_size=64, epochs=2 if q else 5)],
           "similarity": [bench_similarity(L=4 if q else 8, N=100 if q else 500, hw=16, k=10,
                                           metric=m) for m in ("set_iou", "soft_iou")]}
    print(f"device: {res['device']}")
    print("\nNMF (k, 200 iter, tol 1e-4)       jax s  compile s  sklearn s  speedup  err ratio")
    for r in res["nmf"]:
        print(f"  M={r['M']:>7} C={r['C']:>4} k={r['k']:>3}  {r['jax_s']:8.3f}  {r['jax_compile_s']:8.2f}"
              f"  {r['sklearn_s']:9.3f}  {r['speedup']:6.2f}x  {r['err_ratio']:.5f}")
    print("\nNet2Vec training                 img/s  filter-upd/s  loop filter-upd/s  speedup")
    for r in res["net2vec"]:
        print(f"  N={r['N']} L={r['layers']} K={r['concepts']} {r['hw']}x{r['hw']}x{r['C']}"
              f"  {r['images_per_s']:8.1f}  {r['filter_updates_per_s']:11.0f}"
              f"  {r['loop_filter_updates_per_s']:15.0f}  {r['speedup']:6.1f}x")
    print("\npairwise_similarity (La x Lb)   batched s  loop s  speedup")
    for r in res["similarity"]:
        print(f"  {r['metric']:>8} L={r['layers']} N={r['N']} {r['hw']}x{r['hw']} k={r['k']}"
              f"  {r['batched_s']:8.3f}  {r['loop_s']:7.3f}  {r['speedup']:6.1f}x")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
