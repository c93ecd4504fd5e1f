"""Benchmark of repsim_jax.summaries, all ratios measured in one run.

* masks: perturbation masks per second for a batch of images optimised in ONE vmapped,
  jit-compiled program (``optimise_masks(batch_size=B)``) vs the same code run one image at
  a time (``batch_size=1``, a Python loop over images); compile time reported separately
  (each configuration is warmed up first on the same shapes).
* affinity propagation: the JAX while-loop vs scikit-learn's AffinityPropagation on the
  same similarity matrix (same damping/iterations), and whether they agree.
* SSIM: all pairs of M crops in one vmapped call vs a loop of skimage structural_similarity.

    python benchmarks/bench_summaries.py --quick
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
import warnings
from pathlib import Path

import jax
import numpy as np


def _time(fn):
    t = time.perf_counter()
    out = fn()
    jax.block_until_ready(jax.tree.leaves(out) if not hasattr(out, "sharp") else out.sharp)
    return time.perf_counter() - t, out


def bench_masks(n_images: int, steps: tuple[int, int], size: int, model_name: str):
    from flax import nnx
    from repsim_jax.models import build
    from repsim_jax.summaries import optimise_masks
    model = build(model_name, num_classes=7, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (n_images, size, size, 3)).astype(np.float32)
    kw = dict(smooth_steps=steps[0], sharp_steps=steps[1], progress=False)
    out = {}
    for name, bs in (("vmapped", n_images), ("one_at_a_time", 1)):
        # warm-up on the same shapes (compile + one run of the chunk), then the timed run
        first, _ = _time(lambda: optimise_masks(model, x[:bs], batch_size=bs, **kw))
        total, res = _time(lambda: optimise_masks(model, x, batch_size=bs, **kw))
        run_chunk = total * bs / n_images
        out[name] = {"seconds": total, "masks_per_s": n_images / total,
                     "compile_s": max(first - run_chunk, 0.0)}
    out["speedup"] = out["one_at_a_time"]["seconds"] / out["vmapped"]["seconds"]
    out.update(n_images=n_images, steps=list(steps), size=size, model=model_name)
    return out


def bench_ap(n: int):
    from sklearn.cluster import AffinityPropagation
    from repsim_jax.summaries import affinity_propagation, shifted_similarity
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 6, (max(n // 25, 2), 8))
    x = centres[rng.integers(0, len(centres), n)] + rng.normal(0, 1, (n, 8))
    s, pref = shifted_similarity(-((x[:, None] - x[None]) ** 2).sum(-1))
    affinity_propagation(s, pref)                                   # compile
    t_jax, ours = _time(lambda: affinity_propagation(s, pref))
    sk = AffinityPropagation(affinity="precomputed", damping=0.9, max_iter=1000,
                             convergence_iter=100, preference=pref, random_state=0)
    t_sk, _ = _time(lambda: sk.fit(s))
    return {"n": n, "jax_s": t_jax, "sklearn_s": t_sk, "speedup": t_sk / t_jax,
            "clusters": int(len(ours.exemplars)),
            "same_labels": bool(np.array_equal(ours.labels, sk.labels_))}


def bench_ssim(m: int, side: int):
    from skimage.metrics import structural_similarity
    from repsim_jax.summaries import pairwise_ssim
    rng = np.random.default_rng(0)
    crops = rng.uniform(0, 1, (m, side, side)).astype(np.float32)
    pairwise_ssim(crops).block_until_ready()
    t_jax, pw = _time(lambda: pairwise_ssim(crops))

    def loop():
        return np.array([[structural_similarity(a, b, data_range=1.0) for b in crops]
                         for a in crops])
    t_sk, ref = _time(loop)
    return {"crops": m, "side": side, "jax_s": t_jax, "skimage_s": t_sk,
            "speedup": t_sk / t_jax, "max_abs_diff": float(np.abs(np.asarray(pw) - ref).max())}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes (< 1 min)")
    p.add_argument("--out", default="benchmarks/results/summaries.json")
    p.add_argument("--model", default="small_vgg")
    args = p.parse_args(argv)
    warnings.simplefilter("ignore")
    if args.quick:
        cfg = dict(n_images=8, steps=(20, 10), size=64, ap=150, ssim=(10, 32))
    else:
        cfg = dict(n_images=16, steps=(300, 150), size=64, ap=600, ssim=(40, 32))
    res = {"device": str(jax.devices()[0]), "cpu_count": os.cpu_count(),
           "platform": platform.platform(), "quick": args.quick}
    res["masks"] = bench_masks(cfg["n_images"], cfg["steps"], cfg["size"], args.model)
    res["affinity_propagation"] = bench_ap(cfg["ap"])
    res["ssim"] = bench_ssim(*cfg["ssim"])
    m = res["masks"]
    print(f"{'benchmark':<34}{'ours':>12}{'peer':>12}{'ratio':>9}")
    print(f"{'masks/s vmapped vs 1-at-a-time':<34}{m['vmapped']['masks_per_s']:>12.3f}"
          f"{m['one_at_a_time']['masks_per_s']:>12.3f}{m['speedup']:>9.2f}")
    a = res["affinity_propagation"]
    print(f"{'AP s (jax vs sklearn), n=' + str(a['n']):<34}{a['jax_s']:>12.3f}"
          f"{a['sklearn_s']:>12.3f}{a['speedup']:>9.2f}  same labels: {a['same_labels']}")
    s = res["ssim"]
    print(f"{'pairwise SSIM s (vs skimage loop)':<34}{s['jax_s']:>12.3f}{s['skimage_s']:>12.3f}"
          f"{s['speedup']:>9.2f}  max diff {s['max_abs_diff']:.1e}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    print(f"wrote {out}")
    return res


if __name__ == "__main__":
    main()
