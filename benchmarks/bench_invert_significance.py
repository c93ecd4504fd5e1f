"""INVERT: cost of the float32/uint32 path and of selection-aware permutation p-values.

Runs in one process on the official reference inputs (N=4000, C=300, 24 neurons; see
/work/shared/reference/README.md) or a bigger planted world:

    python benchmarks/bench_invert_significance.py [--neurons 24] [--perms 99]

Prints and writes benchmarks/results/invert_significance.json: wall time of the float64
and float32 searches (steady state, after one compile), whether they agree, and the time
of ``permutations=n`` relative to one search (ideal: ~n x).
"""
import argparse
import json
import os
import time
from pathlib import Path

import numpy as np


def timed(fn, repeat=2):
    fn()                                   # compile
    t = time.perf_counter()
    for _ in range(repeat):
        out = fn()
    return (time.perf_counter() - t) / repeat, out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--reference", default=os.environ.get("REPSIM_SHARED", "../shared")
                   + "/reference/invert_public.npz")
    p.add_argument("--perms", type=int, default=99)
    p.add_argument("--out", default="benchmarks/results/invert_significance.json")
    a = p.parse_args()
    from repsim_jax.invert import explain
    d = np.load(a.reference, allow_pickle=True)
    lab, acts = d["labels"], d["activations"]
    names = [str(x) for x in d["concept_names"]]
    kw = dict(L=3, B=5)
    rows = {}
    for prec in ("float64", "float32"):
        for rank_on in ("host", "device"):
            t, res = timed(lambda: explain(acts, lab, names, precision=prec, rank_on=rank_on,
                                           **kw))
            rows[f"{prec}/{rank_on}"] = dict(wall_s=t, literals=res.literals, auc=res.auc)
    base = rows["float64/host"]
    same = {k: bool(np.array_equal(v["literals"], base["literals"])
                    and np.array_equal(v["auc"], base["auc"], equal_nan=True))
            for k, v in rows.items()}
    t_perm, res = timed(lambda: explain(acts, lab, names, permutations=a.perms, **kw),
                        repeat=1)
    summary = dict(N=int(acts.shape[0]), C=int(lab.shape[1]), neurons=int(acts.shape[1]),
                   L=3, B=5, load_avg=os.getloadavg(), cpu_count=os.cpu_count(),
                   wall_s={k: v["wall_s"] for k, v in rows.items()},
                   identical_to_float64_host=same, permutations=a.perms,
                   permutation_wall_s=t_perm,
                   permutation_cost_in_searches=t_perm / base["wall_s"],
                   perm_p_value=res.perm_p_value.tolist(),
                   nominal_best_p_value=res.best_p_value.tolist())
    for k, v in summary["wall_s"].items():
        print(f"{k:16s} {v:7.3f} s  identical to float64/host: {same[k]}")
    print(f"permutations={a.perms}: {t_perm:.2f} s = {summary['permutation_cost_in_searches']:.0f}"
          f" searches; load avg {summary['load_avg'][0]:.1f}")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
