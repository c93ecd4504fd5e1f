"""INVERT benchmark: all neurons of a layer vs a one-neuron-at-a-time numpy search vs the
official lapalap/invert code, in one run.

Data: N inputs, hierarchical concepts (tops -> mids -> leaves, one leaf per input plus its
ancestors; C = 1,000 at full size), neurons = mu * planted formula + N(0, 1) (float32),
formula kinds: leaf, leaf | leaf, mid & ~leaf, leaf | leaf | leaf.

    python benchmarks/bench_invert.py                 # N=50,000, C=1,000, 512 neurons
    python benchmarks/bench_invert.py --quick         # N=4,000, C=300, 64 neurons
    python benchmarks/bench_invert.py --peer /path/to/lapalap-invert-checkout \
        --peer-python /path/to/python-with-torchmetrics-sympytorch

Checks (printed, and in the JSON): the batched search in compat mode returns exactly the
numpy loop's beams (formulas, order, AUC) for every step on the loop neurons, the default
mode equals the loop's de-duplicated beams, and the official code's beams (peer) have the
same supports and AUCs within 1e-5.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _parse():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes (< 1 min)")
    p.add_argument("--out", default="benchmarks/results/invert.json")
    p.add_argument("--neurons", type=int, default=None)
    p.add_argument("--inputs", type=int, default=None)
    p.add_argument("--L", type=int, default=3)
    p.add_argument("--B", type=int, default=10)
    p.add_argument("--mu", type=float, default=5.0)
    p.add_argument("--loop-neurons", type=int, default=4)
    p.add_argument("--devices", type=int, default=os.cpu_count() or 1,
                   help="simulated CPU devices to shard neurons over (default: cores)")
    p.add_argument("--peer", default=None, help="checkout of lapalap/invert (v1.1)")
    p.add_argument("--peer-python", default=sys.executable,
                   help="python with torch, torchmetrics, sympy, sympytorch")
    p.add_argument("--peer-neurons", type=int, default=1)
    return p.parse_args()


ARGS = _parse() if __name__ == "__main__" else None
if ARGS is not None and "jax" not in sys.modules:  # before jax is imported
    flag = f"--xla_force_host_platform_device_count={ARGS.devices}"
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + flag).strip()

import jax  # noqa: E402
import numpy as np  # noqa: E402

from repsim_jax.invert import explain, parse  # noqa: E402
from repsim_jax.invert.reference import (beam_chains, beam_search_loop,  # noqa: E402
                                         hierarchical_labels)


def make_world(n, n_top, n_mid, n_leaf, n_units, mu, seed=0):
    n_leaves = n_top * n_mid * n_leaf
    lab, names, rng = hierarchical_labels(n, n_top, n_mid, n_leaf, seed=seed, digits=(4, 3, 2))
    formulas = []
    for u in range(n_units):
        a, b, c3 = (names[i] for i in rng.choice(n_leaves, 3, replace=False))
        m = names[n_leaves + int(rng.integers(n_top * n_mid))]
        m_leaf = names[int(names.index(m) - n_leaves) * n_leaf + int(rng.integers(n_leaf))]
        formulas.append([a, f"{a} | {b}", f"{m} & ~{m_leaf}", f"{a} | {b} | {c3}"][u % 4])
    truth = np.stack([parse(f, lab, names) for f in formulas], 1)
    acts = (mu * truth + rng.normal(size=truth.shape)).astype(np.float32)
    return acts, lab, names, formulas


def same_beam(ours, loop, atol=1e-12):
    """Same formulas (literals, operators) in the same order, AUCs equal up to rounding."""
    return (len(ours) == len(loop) and
            all(o[:2] == (lt, op) and abs(o[2] - float(a)) <= atol
                for o, (lt, op, a, _) in zip(ours, loop)))


PEER_SCRIPT = r"""
import json, sys, time, types
import numpy as np, sympy, torch
sys.path.insert(0, sys.argv[1])
# invert.utils only holds image loading helpers (cv2, torchvision): not needed here
sys.modules["invert.utils"] = types.SimpleNamespace(find_by_offset=None)
from invert.explainer import Invert
d = np.load(sys.argv[2])
cfg = json.loads(sys.argv[3])
inv = Invert(device="cpu")
lab = torch.from_numpy(d["labels"])
names = [str(x) for x in d["names"]]
inv.labels, inv.num_samples, inv.num_concepts = lab, lab.shape[0], lab.shape[1]
inv.concepts = [sympy.Symbol(n) for n in names]
inv.memdict = {n: lab[:, i] for i, n in enumerate(names)}
out = []
for u in range(d["acts"].shape[1]):
    A = torch.from_numpy(d["acts"][:, u])
    t = time.process_time()
    st = inv.explain_representation(A, L=cfg["L"], B=cfg["B"], memorize_states=True)
    dt = time.process_time() - t
    beams = {k: [dict(formula=str(e["formula"]), auc=float(e["metric"]),
                      concept_fraction=float(e["concept_fraction"])) for e in v]
             for k, v in st.items()}
    out.append(dict(cpu_s=dt, beams=beams))
print("PEER_JSON" + json.dumps(out))
"""


def run_peer(args, acts, lab, names, res_compat):
    with tempfile.TemporaryDirectory() as tmp:
        npz = Path(tmp) / "peer.npz"
        # the official metric is the exact AUC only for scores inside [0, 1]: min-max scale
        a = acts[:, :args.peer_neurons].astype(np.float64)
        a = ((a - a.min(0)) / (a.max(0) - a.min(0))).astype(np.float32)
        np.savez(npz, acts=a, labels=lab, names=np.array(names))
        script = Path(tmp) / "peer.py"
        script.write_text(PEER_SCRIPT)
        t = time.perf_counter()
        proc = subprocess.run([args.peer_python, str(script), str(Path(args.peer).resolve()),
                               str(npz), json.dumps(dict(L=args.L, B=args.B))],
                              capture_output=True, text=True)
        wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise RuntimeError(f"peer failed:\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.split("PEER_JSON", 1)[1])
    # same neurons through our compat mode (rank-based, so the scaling does not matter)
    mismatches = 0
    for u, o in enumerate(out):
        for step, beam in o["beams"].items():
            ours = res_compat.beam(u, int(step))
            ok = len(ours) == len(beam) and all(
                np.array_equal(parse(x.formula, lab, names), parse(y["formula"], lab, names))
                and abs(x.auc - y["auc"]) <= 1e-5 for x, y in zip(ours, beam))
            mismatches += not ok
    return dict(neurons=len(out), cpu_s_per_neuron=float(np.mean([o["cpu_s"] for o in out])),
                wall_s=wall, beam_mismatches=mismatches)


def main(args):
    if args.quick:
        n, shape, units = args.inputs or 4000, (6, 4, 10), args.neurons or 64
    else:
        n, shape, units = args.inputs or 50_000, (10, 9, 10), args.neurons or 512
    acts, lab, names, formulas = make_world(n, *shape, units, args.mu)
    devices = jax.devices()
    print(f"N={n} C={lab.shape[1]} neurons={units} L={args.L} B={args.B} "
          f"devices={len(devices)} ({devices[0].platform}), load avg {os.getloadavg()[0]:.1f}")
    kw = dict(L=args.L, B=args.B)
    rows = {}
    for mode, compat in (("default", False), ("compat", True)):
        t = time.perf_counter()
        explain(acts, lab, names, compat=compat, **kw)
        first = time.perf_counter() - t
        t, c = time.perf_counter(), time.process_time()
        res = explain(acts, lab, names, compat=compat, **kw)
        rows[mode] = dict(first_call_s=first, wall_s=time.perf_counter() - t,
                          cpu_s=time.process_time() - c, result=res)
    res_d, res_c = rows["default"]["result"], rows["compat"]["result"]
    # numpy one-neuron-at-a-time oracle on a few neurons
    loop_t, mism_c, mism_d = [], 0, 0
    for u in range(min(args.loop_neurons, units)):
        t = time.perf_counter()
        ref = beam_search_loop(acts[:, u], lab, **kw)
        loop_t.append(time.perf_counter() - t)
        ref_d = beam_search_loop(acts[:, u], lab, dedup=True, **kw)
        for step in range(1, args.L + 1):
            mism_c += not same_beam(beam_chains(res_c, u, step), ref[step])
            mism_d += not same_beam(beam_chains(res_d, u, step), ref_d[step])
    loop_per_neuron = float(np.mean(loop_t))
    recovered = float(np.mean([np.array_equal(res_d[u].best.structure.evaluate(lab),
                                              parse(formulas[u], lab, names))
                               for u in range(units)]))
    summary = dict(N=n, C=lab.shape[1], neurons=units, L=args.L, B=args.B, mu=args.mu,
                   devices=len(devices), load_avg=os.getloadavg(),
                   loop_s_per_neuron=loop_per_neuron,
                   loop_s_all_neurons_est=loop_per_neuron * units,
                   loop_neurons_checked=len(loop_t),
                   compat_vs_loop_step_mismatches=int(mism_c),
                   default_vs_loop_dedup_step_mismatches=int(mism_d),
                   planted_recovered_fraction=recovered)
    for mode in ("default", "compat"):
        r = rows[mode]
        summary[mode] = dict(first_call_s=r["first_call_s"], wall_s=r["wall_s"],
                             cpu_s=r["cpu_s"],
                             speedup_vs_loop=loop_per_neuron * units / r["wall_s"])
    if args.peer:
        peer = run_peer(args, acts, lab, names, res_c)
        peer["speedup_of_compat"] = (peer["cpu_s_per_neuron"] * units /
                                     rows["compat"]["wall_s"])
        summary["peer_official"] = peer
    print(f"{'method':<34}{'wall s':>10}{'s/neuron':>12}{'speed-up':>12}")
    for mode in ("default", "compat"):
        r = summary[mode]
        print(f"{'repsim_jax explain (' + mode + ')':<34}{r['wall_s']:>10.2f}"
              f"{r['wall_s'] / units:>12.5f}{r['speedup_vs_loop']:>11.1f}x")
    print(f"{'numpy loop (one neuron at a time)':<34}{loop_per_neuron * units:>10.2f}"
          f"{loop_per_neuron:>12.5f}{1.0:>11.1f}x   (measured on {len(loop_t)} neurons)")
    if args.peer:
        p = summary["peer_official"]
        print(f"{'official lapalap/invert (CPU s)':<34}{p['cpu_s_per_neuron'] * units:>10.1f}"
              f"{p['cpu_s_per_neuron']:>12.3f}   (measured on {p['neurons']} neurons; "
              f"beam mismatches vs compat: {p['beam_mismatches']})")
    print(f"first call (compile + run): default {rows['default']['first_call_s']:.1f}s, "
          f"compat {rows['compat']['first_call_s']:.1f}s; beams vs numpy loop: compat "
          f"{mism_c} / default {mism_d} mismatching steps; planted recovered "
          f"{recovered:.0%}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2, default=float))
    print(f"wrote {out}")
    return summary


if __name__ == "__main__":
    main(ARGS)
