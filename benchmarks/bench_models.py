"""Benchmarks for repsim_jax.models: safe weight loading and named-layer forward passes.

Peers measured in the same run:
* loading: ``repsim_jax.models.load_state_dict`` (restricted unpickler / own safetensors
  parser) per format vs ``torch.load(weights_only=True)`` and ``safetensors.numpy.load_file``;
* forward: ``activations(model, x, [many layers])`` (jit, single device and data-parallel
  over all host devices) vs the PyTorch reference module with forward hooks.

Usage: python benchmarks/bench_models.py [--quick] [--out PATH]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import numpy as np  # noqa: E402


def _best(fn, repeats):
    fn()  # warm-up (compilation, file cache)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (< 1 min)")
    ap.add_argument("--out", default="benchmarks/results/models.json")
    args = ap.parse_args(argv)

    import jax
    import torch
    from flax import nnx
    from jax.sharding import NamedSharding, PartitionSpec as P

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "models"))
    import test_port_torch as ref  # torch reference modules with torchvision names

    from repsim_jax.models import activations, build, list_layers, load_state_dict, \
        port_torchvision

    name = "resnet18" if args.quick else "resnet50"
    size, batch, repeats = (64, 16, 3) if args.quick else (128, 64, 5)
    rows = []

    with torch.device("meta"):
        tmodel = ref.torch_reference(name, 1000)
    tmodel = ref.randomise(tmodel.to_empty(device="cpu"), seed=0)
    sd = tmodel.state_dict()
    with tempfile.TemporaryDirectory() as tmp:
        paths = ref.save_all_formats(sd, Path(tmp))
        mb = os.path.getsize(paths["zip"]) / 2**20
        for fmt, path in paths.items():
            t = _best(lambda: load_state_dict(path), repeats)
            rows.append({"task": f"load {name} ({mb:.0f} MB)", "impl": f"repsim {fmt}",
                         "seconds": t})
        t = _best(lambda: torch.load(paths["zip"], weights_only=True), repeats)
        rows.append({"task": f"load {name} ({mb:.0f} MB)", "impl": "torch.load zip "
                     "weights_only", "seconds": t})
        try:
            from safetensors.numpy import load_file
            t = _best(lambda: load_file(str(paths["safetensors"])), repeats)
            rows.append({"task": f"load {name} ({mb:.0f} MB)", "impl": "safetensors lib",
                         "seconds": t})
        except ImportError:
            pass

    model = nnx.eval_shape(lambda: build(name, input_shape=(size, size, 3)))
    port_torchvision(model, {k: v.numpy() for k, v in sd.items()})
    layers = list_layers(model)
    x = np.random.default_rng(0).standard_normal((batch, size, size, 3)).astype(np.float32)
    task = f"{name} {batch}x{size}px, {len(layers)} layers"

    def run_jax(sharding=None):
        out = activations(model, x, layers, sharding=sharding)
        jax.block_until_ready(out)

    rows.append({"task": task, "impl": "repsim activations (1 device)",
                 "seconds": _best(run_jax, repeats)})
    n_dev = len(jax.devices())
    if n_dev > 1 and batch % n_dev == 0:
        mesh = jax.make_mesh((n_dev,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
        shard = NamedSharding(mesh, P("data"))
        rows.append({"task": task, "impl": f"repsim activations ({n_dev}-device mesh)",
                     "seconds": _best(lambda: run_jax(shard), repeats)})
    xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
    rows.append({"task": task, "impl": "torch + forward hooks",
                 "seconds": _best(lambda: ref.torch_layers(tmodel, xt), repeats)})

    print(f"{'task':44s} {'implementation':36s} {'seconds':>9s} {'vs first':>9s}")
    first = {}
    for r in rows:
        base = first.setdefault(r["task"], r["seconds"])
        r["ratio_to_first"] = r["seconds"] / base
        print(f"{r['task']:44s} {r['impl']:36s} {r['seconds']:9.3f} {r['ratio_to_first']:9.2f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"quick": args.quick, "devices": [str(d) for d in jax.devices()],
                               "torch_threads": torch.get_num_threads(), "rows": rows},
                              indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
