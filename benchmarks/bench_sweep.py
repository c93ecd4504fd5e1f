"""Sweep engine benchmark: wall time of a full sweep, per method, and of a resumed run.

    python benchmarks/bench_sweep.py            # the `repsim demo` configuration
    python benchmarks/bench_sweep.py --quick    # random-weight small_vgg, 2 layers, 16 images

Reports, in one run: total wall and CPU time of the sweep, the time spent per method
(sum of its units), the time of the same command run again (everything resumed: only
planning, loading and the report), and the devices used. JSON to --out.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny configuration (< 1 min)")
    ap.add_argument("--out", default="benchmarks/results/sweep.json")
    args = ap.parse_args(argv)
    from repsim_jax.sweep import config as C
    from repsim_jax.sweep.run import run_sweep
    tmp = Path(tempfile.mkdtemp(prefix="bench_sweep_"))
    if args.quick:
        cfg = C.from_dict({"methods": ["semantic", "invert", "concepts"],
                           "layers": ["features.11", "features.15"],
                           "models": [{"name": "vgg", "arch": "small_vgg", "num_classes": 7}],
                           "data": {"n_images": 16}, "output": str(tmp / "run"),
                           "concepts": {"net2vec_epochs": 5}})
    else:
        cfg = C.demo_config(output=str(tmp / "run"))
    t0, c0 = time.time(), _cpu()
    run_sweep(cfg, progress=False, echo=None)
    wall, cpu = time.time() - t0, _cpu() - c0
    t1 = time.time()
    run_sweep(cfg, progress=False, echo=None)
    resumed = time.time() - t1
    log = json.loads((tmp / "run" / "run_log.json").read_text())
    per_method: dict[str, float] = {}
    for key, sec in log["unit_seconds"].items():
        per_method[key.split("__")[0]] = per_method.get(key.split("__")[0], 0.0) + sec
    result = {"config": "quick" if args.quick else "demo", "wall_s": round(wall, 2),
              "cpu_s": round(cpu, 2), "resumed_wall_s": round(resumed, 2),
              "units": log["units"], "per_method_s": {k: round(v, 2)
                                                     for k, v in per_method.items()},
              "devices": log["devices"], "cpu_count": os.cpu_count()}
    print(f"{'measure':<28}{'seconds':>10}")
    for k in ("wall_s", "cpu_s", "resumed_wall_s"):
        print(f"{k:<28}{result[k]:>10.2f}")
    for k, v in result["per_method_s"].items():
        print(f"  {k:<26}{v:>10.2f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
