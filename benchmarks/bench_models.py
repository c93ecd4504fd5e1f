"""Benchmarks for repsim_jax.models: safe weight loading and named-layer forward passes.

Peers measured in the same run:
* loading: ``repsim_jax.models.load_state_dict`` (restricted unpickler / own safetensors
  parser) per format vs ``torch.load(weights_only=True)`` and ``safetensors.numpy.load_file``;
* forward: ``activations(model, x, [many layers])`` (jit, single device and data-parallel
  over all host devices) vs the PyTorch reference module with forward hooks;
* Hugging Face ports (``--part hf``): ViT-B/16-sized and ConvNeXt-T-sized models (random
  weights from transformers' default configs, saved by ``save_pretrained`` and read by
  ``load_hf``, so both sides hold the same weights), forward pass + capture of every block
  (embeddings, each encoder layer / stage, final norm; ``models.activations``), images/s and
  peak resident memory
  during the pass, against transformers' forward with ``output_hidden_states=True``.

Peak memory is the largest RSS sampled (every 2 ms) during the timed calls minus the RSS
before them: it counts what the pass allocates on the host (on CPU, everything).

Usage: python benchmarks/bench_models.py [--quick] [--part all|torchvision|hf] [--out PATH]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
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


class _PeakRSS:
    """Largest resident set size sampled while the block runs, minus the RSS at entry (MB)."""

    def __enter__(self):
        import psutil
        self._proc = psutil.Process()
        self.base = self.peak = self._proc.memory_info().rss
        self._stop = threading.Event()

        def sample():
            while not self._stop.is_set():
                self.peak = max(self.peak, self._proc.memory_info().rss)
                time.sleep(0.002)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.mb = (self.peak - self.base) / 2**20


def _hf_blocks(model):
    """Every block of a port, as ``activations`` names: embeddings, each encoder layer /
    stage, the final norm."""
    import re

    from repsim_jax.models import list_layers
    pat = r"((vit|convnext)\.)?(embeddings|encoder\.layer\.\d+|encoder\.stages\.\d+|layernorm)"
    return [n for n in list_layers(model) if re.fullmatch(pat, n)]


def hf_rows(quick: bool, repeats: int):
    """ViT-B/16- and ConvNeXt-T-sized ports vs transformers, same weights, same inputs."""
    import jax
    import torch
    import transformers

    from repsim_jax.models import activations, load_hf

    if quick:
        cases = [("ViT (192 wide, 4 layers)", transformers.ViTModel,
                  transformers.ViTConfig(hidden_size=192, num_hidden_layers=4,
                                         num_attention_heads=3, intermediate_size=768,
                                         image_size=112, patch_size=16), 112, 8),
                 ("ConvNeXt (32-256 wide, 1-1-3-1)", transformers.ConvNextModel,
                  transformers.ConvNextConfig(hidden_sizes=[32, 64, 128, 256],
                                              depths=[1, 1, 3, 1]), 64, 8)]
    else:
        cases = [("ViT-B/16 (86M)", transformers.ViTModel, transformers.ViTConfig(), 224, 16),
                 ("ConvNeXt-T (28M)", transformers.ConvNextModel,
                  transformers.ConvNextConfig(), 224, 16)]
    rows = []
    for label, cls, config, size, batch in cases:
        torch.manual_seed(0)
        tm = cls(config).eval()
        with tempfile.TemporaryDirectory() as tmp:
            tm.save_pretrained(tmp)
            t = time.perf_counter()
            model = load_hf(tmp)
            load_s = time.perf_counter() - t
        blocks = _hf_blocks(model)
        x = np.random.default_rng(0).uniform(0, 1, (batch, size, size, 3)).astype(np.float32)
        xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()   # no preprocessor file:
        t = time.perf_counter()                                     # the port takes x as is
        out = jax.block_until_ready(activations(model, x, blocks + ["logits"]))
        compile_s = time.perf_counter() - t
        with torch.no_grad():
            ref = tm(xt, output_hidden_states=True)
        last = ref.hidden_states[-1]
        ours_last = out[[b for b in blocks if "layernorm" not in b][-1]]
        if last.ndim == 4:
            last = last.permute(0, 2, 3, 1)
        err = float(np.abs(np.asarray(ours_last) - last.numpy()).max())
        task = f"{label} {batch}x{size}px, {len(blocks)} blocks"

        def ours():
            jax.block_until_ready(activations(model, x, blocks + ["logits"]))

        def theirs():
            with torch.no_grad():
                tm(xt, output_hidden_states=True)

        for impl, fn, extra in (("repsim load_hf + activations (all blocks)", ours,
                                 {"load_s": load_s, "compile_s": compile_s,
                                  "max_abs_diff_last_block": err}),
                                ("transformers (torch) output_hidden_states", theirs, {})):
            fn()
            with _PeakRSS() as mem:
                t = _best(fn, repeats)
            rows.append({"task": task, "impl": impl, "seconds": t,
                         "images_per_s": batch / t, "peak_rss_mb": mem.mb, **extra})
        del tm, model
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (< 1 min)")
    ap.add_argument("--part", choices=("all", "torchvision", "hf"), default="all")
    ap.add_argument("--out", default=None,
                    help="default benchmarks/results/models.json (models_hf.json for --part hf)")
    args = ap.parse_args(argv)
    if args.out is None:
        args.out = f"benchmarks/results/models{'_hf' if args.part == 'hf' else ''}.json"

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
    if args.part in ("all", "hf"):
        rows += hf_rows(args.quick, 3)
    if args.part == "hf":
        return _report(rows, args, jax, torch)

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
    return _report(rows, args, jax, torch)


def _report(rows, args, jax, torch):
    print(f"{'task':48s} {'implementation':42s} {'seconds':>9s} {'vs first':>9s} "
          f"{'img/s':>8s} {'peak MB':>8s}")
    first = {}
    for r in rows:
        base = first.setdefault(r["task"], r["seconds"])
        r["ratio_to_first"] = r["seconds"] / base
        ips = f"{r['images_per_s']:8.1f}" if "images_per_s" in r else f"{'':8s}"
        mem = f"{r['peak_rss_mb']:8.0f}" if "peak_rss_mb" in r else f"{'':8s}"
        print(f"{r['task']:48s} {r['impl']:42s} {r['seconds']:9.3f} "
              f"{r['ratio_to_first']:9.2f} {ips} {mem}")
    import os as _os
    load = _os.getloadavg()[0] if hasattr(_os, "getloadavg") else None
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"quick": args.quick, "devices": [str(d) for d in jax.devices()],
                               "torch_threads": torch.get_num_threads(),
                               "load_average_1min": load, "rows": rows},
                              indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
