"""ClaDec benchmark: a vmapped alpha sweep vs the same decoders trained one after another.

All timings in one run, on the built-in 64x64 shapes images and the small_vgg architecture
(untrained weights: the cost of a step does not depend on them), deepest hidden layer
``classifier.1`` (64-d code -> dense projection -> 4 transposed-conv stages).

    python benchmarks/bench_cladec.py             # A=4 alphas, batch 32, 40 steps
    python benchmarks/bench_cladec.py --quick     # A=3 alphas, batch 16, 12 steps (< 1 min)

Rows (``member-steps/s`` = decoders x steps per second of steady training, compile and the
first block excluded; ``first call`` = wall time of the first block of ``log_every`` steps,
compile included):

* ``sweep (vmap)``: one ``fit_cladec`` call with A alphas (one compiled step for all).
* ``sequential``: A ``fit_cladec`` calls with one alpha each (same code, A compiles).
* ``sweep, fori_loop``: the vmapped sweep with ``step_loop="fori"`` (blocks of steps inside
  ``lax.fori_loop``) instead of the CPU default ``"python"`` (one dispatch per step).
* ``AE 2 layers vmap`` / ``unroll``: reference auto-encoders for two layers of equal shape
  (``features.13``, ``features.14``; each member owns a conv encoder) with
  ``member_map="vmap"`` vs ``"unroll"``.

Check: the sweep's decoder for each alpha matches the sequentially trained one (same seeds
and batches; max / mean abs parameter difference printed).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path


def _parse():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes (< 1 min)")
    p.add_argument("--out", default="benchmarks/results/cladec.json")
    p.add_argument("--alphas", type=int, default=None, help="number of alphas A")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--skip-ae", action="store_true", help="skip the auto-encoder rows")
    p.add_argument("--skip-fori", action="store_true", help="skip the fori_loop row")
    return p.parse_args()


def main(args):
    import jax
    import numpy as np
    from flax import nnx

    from repsim_jax.cladec import fit_cladec, fit_reference_ae
    from repsim_jax.data import shapes
    from repsim_jax.models import build

    a_count = args.alphas or (3 if args.quick else 4)
    steps = args.steps or (12 if args.quick else 40)
    batch = args.batch or (16 if args.quick else 32)
    log_every = 4 if args.quick else 10
    alphas = tuple(float(a) for a in np.linspace(0.0, 0.9, a_count))
    data = shapes.generate(args.images, seed=0)
    x, y = np.asarray(data.images), np.asarray(data.labels)
    model = build("small_vgg", num_classes=len(data.class_names), rngs=nnx.Rngs(0))
    layer = "classifier.1"

    def timed(fn):
        stamps = [time.perf_counter()]
        out = fn(lambda t, row: stamps.append(time.perf_counter()))
        d = np.diff(stamps)
        steady = float(np.sum(d[1:])) / max(steps - log_every, 1)   # s per step
        return out, {"first_call_s": float(d[0]), "step_s": steady,
                     "total_s": float(stamps[-1] - stamps[0])}

    common = dict(steps=steps, batch_size=batch, log_every=log_every, progress=False, lr=1e-3)
    rows = []
    # warm-up (tracing caches, eager helpers); every measured call below compiles its own step
    fit_cladec(model, x[:32], y[:32], layer, (0.1, 0.2), steps=2, batch_size=batch,
               log_every=1, progress=False)

    sweep, t = timed(lambda cb: fit_cladec(model, x, y, layer, alphas, callback=cb, **common))
    rows.append({"name": f"sweep (vmap), A={a_count}", "members": a_count, **t})

    seq_t, singles = [], []
    for a in alphas:
        fit, t = timed(lambda cb, a=a: fit_cladec(model, x, y, layer, a, callback=cb, **common))
        seq_t.append(t)
        singles.append(fit)
    rows.append({"name": f"sequential, {a_count} calls", "members": a_count,
                 "first_call_s": seq_t[0]["first_call_s"],
                 "step_s": float(sum(t["step_s"] for t in seq_t)),
                 "total_s": float(sum(t["total_s"] for t in seq_t))})
    g = sweep.groups[0]
    gaps = [np.abs(np.asarray(p[i]) - np.asarray(q[0])).ravel()
            for i, fit in enumerate(singles)
            for p, q in zip(jax.tree.leaves(g.decoder_params),
                            jax.tree.leaves(fit.groups[0].decoder_params))]
    gaps = np.concatenate(gaps)
    diff, diff_mean = float(gaps.max()), float(gaps.mean())

    if not args.skip_fori:
        _, t = timed(lambda cb: fit_cladec(model, x, y, layer, alphas, callback=cb,
                                           step_loop="fori", **common))
        rows.append({"name": f"sweep, fori_loop, A={a_count}", "members": a_count, **t})

    if not args.skip_ae:
        ae_layers = ["features.13", "features.14"]
        for mode in ("vmap", "unroll"):
            _, t = timed(lambda cb, mode=mode: fit_reference_ae(
                model, x, ae_layers, callback=cb, member_map=mode, **common))
            rows.append({"name": f"AE 2 layers {mode}", "members": 2, **t})

    for r in rows:
        r["member_steps_per_s"] = r["members"] / r["step_s"]
    base = rows[1]["member_steps_per_s"]
    for r in rows:
        r["speedup_vs_sequential"] = r["member_steps_per_s"] / base

    print(f"\nClaDec on {jax.default_backend()} ({jax.devices()[0].device_kind}), "
          f"layer {layer}, batch {batch}, {steps} steps, alphas {alphas}")
    print(f"{'run':<26} {'first call s':>12} {'s/step':>8} {'member-steps/s':>15} "
          f"{'x seq':>6} {'total s':>8}")
    for r in rows:
        print(f"{r['name']:<26} {r['first_call_s']:>12.2f} {r['step_s']:>8.3f} "
              f"{r['member_steps_per_s']:>15.2f} {r['speedup_vs_sequential']:>6.2f} "
              f"{r['total_s']:>8.1f}")
    print(f"|sweep - sequential| decoder parameters: max {diff:.2e}, mean {diff_mean:.2e} "
          f"(Adam moves a parameter by <= lr x steps = {1e-3 * steps:.1e}; float32 summation "
          f"order differs between the batched and the single step)")
    result = {"config": {"quick": args.quick, "alphas": alphas, "steps": steps,
                         "batch_size": batch, "log_every": log_every, "images": args.images,
                         "layer": layer, "model": "small_vgg (untrained weights)"},
              "env": {"backend": jax.default_backend(), "devices": len(jax.devices()),
                      "cpu_count": os.cpu_count(), "python": platform.python_version(),
                      "jax": jax.__version__,
                      "load_avg": os.getloadavg() if hasattr(os, "getloadavg") else None},
              "rows": rows, "param_diff_sweep_vs_sequential": {"max": diff, "mean": diff_mean}}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    sys.exit(0 if main(_parse()) else 1)
