"""Benchmark of the data layer and of the sweep at scale, ratios measured in one run.

1. Folder loader: images/s of ``repsim_jax.data`` on a folder of JPEGs (ImageNet
   geometry: shorter side 256, centre crop 224) - the bad-file check pass, streaming with
   the thread back end, with Grain worker processes - against a plain Pillow loop (open,
   EXIF, RGB, resize, crop, /255, one image after another) in the same run.
2. Sweep at scale: INVERT + concepts (ICE, Net2Vec) through the sweep's own adapters on
   synthetic ResNet-50-sized activations (512 x 14 x 14 per input, planted concept
   neurons) streamed batch by batch into the on-disk activation store, for
   N = 1k/2k/5k/20k (``--quick``: 250/500/1000/2000). Each N runs in a fresh process;
   reported: wall time per phase, peak RSS, store size, and how many planted neurons
   INVERT labels with their concept. Flat memory and linear time are the claims.

    python benchmarks/bench_data.py [--quick] [--only loader|scale]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


# ------------------------------------------------------------------ 1. folder loader
def _make_jpegs(root: Path, n: int, seed: int = 0) -> None:
    from PIL import Image
    rng = np.random.default_rng(seed)
    for i in range(n):
        h, w = int(rng.integers(300, 480)), int(rng.integers(340, 520))
        y, x = np.mgrid[0:h, 0:w]
        img = np.stack([127 + 100 * np.sin(x / rng.uniform(5, 40) + c) *
                        np.cos(y / rng.uniform(5, 40)) for c in range(3)], -1)
        img = np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)
        d = root / f"class{i % 4}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(d / f"img{i:05d}.jpg", quality=90)


def _pillow_loop(files, size=224, resize_to=256):
    """The peer: what a user writes by hand, one image after another."""
    from PIL import Image, ImageOps
    out = np.empty((len(files), size, size, 3), np.float32)
    for i, f in enumerate(files):
        with Image.open(f) as im:
            im = ImageOps.exif_transpose(im).convert("RGB")
            w, h = im.size
            s = resize_to / min(w, h)
            im = im.resize((max(1, round(w * s)), max(1, round(h * s))), Image.BILINEAR)
            left, top = (im.width - size) // 2, (im.height - size) // 2
            im = im.crop((left, top, left + size, top + size))
            out[i] = np.asarray(im, np.float32) / 255.0
    return out


def bench_loader(n_images: int, workers: int) -> dict:
    from repsim_jax import data
    from repsim_jax.data import folder
    from repsim_jax.models.preprocess import IMAGENET
    tmp = Path(tempfile.mkdtemp(prefix="bench_data_"))
    try:
        _make_jpegs(tmp, n_images)
        idx = folder.scan(tmp)
        files = [tmp / f for f in idx.files]
        ds = data.load(str(tmp), preprocess=IMAGENET, stream=True, workers=workers, echo=None)
        ref = _pillow_loop(files)             # warm the file cache for everyone

        def run(backend):
            if backend == "loop":
                return _pillow_loop(files)
            return np.concatenate([b for _, b in ds.images.batches(
                32, backend=backend, workers=workers if backend != "serial" else 1)])
        res = {}
        for _ in range(2):                    # interleaved, best of two: a shared machine
            for backend in ("loop", "threads", "grain", "serial"):
                t = time.perf_counter()
                got = run(backend)
                res[backend] = min(res.get(backend, np.inf), time.perf_counter() - t)
                assert np.abs(got - ref).max() < 1e-6, backend     # the same pixels
        t_loop = res.pop("loop")
        # overlap: a consumer that is busy per batch as long as decoding a batch takes (a
        # device running a forward pass; sleep = the host thread waits on the device). The
        # time the consumer waits for its next batch is what the device would idle.
        busy = 32 * t_loop / n_images
        overlap = {}
        for backend in ("serial", "threads"):
            wait, t = 0.0, time.perf_counter()
            it = ds.images.batches(32, backend=backend, workers=workers)
            while True:
                t0 = time.perf_counter()
                nxt = next(it, None)
                wait += time.perf_counter() - t0
                if nxt is None:
                    break
                time.sleep(busy)
            overlap[backend] = {"total_s": time.perf_counter() - t, "device_wait_s": wait}
        t = time.perf_counter()
        folder.check_files(tmp, idx.files, workers=workers)
        t_check = time.perf_counter() - t
        t = time.perf_counter()
        data.load(str(tmp), preprocess=IMAGENET, stream=True, workers=workers, echo=None)
        t_open = time.perf_counter() - t        # scan + check pass
        return {
            "n_images": n_images, "workers": workers, "image_sizes": "300-480 x 340-520 JPEG",
            "pillow_loop_img_s": n_images / t_loop,
            "check_pass_img_s": n_images / t_check,
            "load_open_s": t_open,
            **{f"stream_{k}_img_s": n_images / v for k, v in res.items()},
            "threads_vs_loop": t_loop / res["threads"],
            "grain_vs_loop": t_loop / res["grain"],
            "end_to_end_threads_img_s": n_images / (t_open + res["threads"]),
            "end_to_end_vs_loop": t_loop / (t_open + res["threads"]),
            "overlap_busy_per_batch_s": busy, "overlap": overlap,
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------- 2. at scale
SHAPE = (14, 14, 512)
N_CONCEPTS = 12


def _concepts(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, N_CONCEPTS)) < 0.2


def _planted_batch(start: int, labels: np.ndarray, rng) -> np.ndarray:
    """ReLU activations; neuron u fires in the top-left quadrant where concept u % 12 is."""
    b = len(labels)
    x = rng.standard_normal((b, *SHAPE), dtype=np.float32) * 0.5
    concept_of = np.arange(SHAPE[-1]) % N_CONCEPTS
    on = labels[:, concept_of].astype(np.float32)            # (b, 512)
    x[:, :7, :7, :] += 2.0 * on[:, None, None, :]
    return np.maximum(x, 0.0)


class _Ctx:
    """What the sweep's invert/concepts adapters read from a SweepContext."""

    def __init__(self, cfg, data, store, layers, mesh):
        self.cfg, self.data, self._store, self._layers, self.mesh = cfg, data, store, layers, mesh

    def stored_activations(self, model, layers):
        return {l: self._store.open(model, l) for l in layers}

    def seed(self, unit):
        return 0


def scale_one(n: int, out_json: str) -> None:
    """One N in this process: write the store, run INVERT and ICE/Net2Vec adapters."""
    os.environ.setdefault("XLA_FLAGS", "")
    from repsim_jax.data import Dataset, LazyArray
    from repsim_jax.sweep import adapters
    from repsim_jax.sweep import config as C
    from repsim_jax.sweep.plan import Unit
    from repsim_jax.sweep.run import local_mesh
    from repsim_jax.sweep.store import ActivationStore
    tmp = Path(tempfile.mkdtemp(prefix="bench_scale_"))
    rec = {"n": n}
    try:
        labels = _concepts(n)
        masks = LazyArray(n, (14, 14, N_CONCEPTS), bool, _MaskFromLabels(labels))
        data = Dataset(images=np.zeros((n, 1, 1, 3), np.float32), concept_labels=labels,
                       concept_masks=masks, name="synthetic",
                       concept_names=tuple(f"c{j}" for j in range(N_CONCEPTS)))
        store = ActivationStore(tmp, chunk_images=256, process=0)
        rng = np.random.default_rng(1)
        t = time.perf_counter()
        store.write("resnet50", ["layer3"], {"layer3": SHAPE}, n,
                    ((s, {"layer3": _planted_batch(s, labels[s:s + 256], rng)})
                     for s in range(0, n, 256)))
        rec["write_s"] = time.perf_counter() - t
        rec["store_gb"] = sum(p.stat().st_size for p in tmp.rglob("*") if p.is_file()) / 1e9
        cfg = C.from_dict({"methods": ["invert", "concepts"], "models": ["small_vgg"],
                           "invert": {"L": 2, "B": 3},
                           "concepts": {"k": 5, "max_iter": 50, "net2vec_epochs": 3}})
        ctx = _Ctx(cfg, data, store, ["layer3"], local_mesh())
        unit = Unit(method="invert", model="resnet50", layers=("layer3",))
        t = time.perf_counter()
        res = adapters.adapt_invert(unit, ctx)
        rec["invert_s"] = time.perf_counter() - t
        rows = res["tables"]["invert_neurons"]
        rec["invert_planted_recovered"] = float(np.mean(
            [r["formula"] == f"c{r['neuron'] % N_CONCEPTS}" for r in rows]))
        unit = Unit(method="concepts", model="resnet50", layers=("layer3",))
        t = time.perf_counter()
        res = adapters.adapt_concepts(unit, ctx)
        rec["concepts_s"] = time.perf_counter() - t
        rec["ice_relative_error"] = res["tables"]["concepts_ice"][0]["relative_error"]
        iou = {r["concept"]: r["set_iou"] for r in res["tables"]["concepts_net2vec"]}
        rec["net2vec_mean_iou"] = float(np.mean(list(iou.values())))
        rec["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    Path(out_json).write_text(json.dumps(rec))


class _MaskFromLabels:
    """Picklable item loader: the planted quadrant of every concept the image has."""

    def __init__(self, labels):
        self.labels = labels

    def __call__(self, i):
        m = np.zeros((14, 14, N_CONCEPTS), bool)
        m[:7, :7, :] = self.labels[int(i)]
        return m


def bench_scale(sizes) -> list[dict]:
    out = []
    for n in sizes:
        with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
            path = f.name
        t = time.perf_counter()
        subprocess.run([sys.executable, __file__, "--scale-one", str(n), path], check=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
        rec = json.loads(Path(path).read_text())
        rec["process_s"] = time.perf_counter() - t
        os.unlink(path)
        print(f"  N={n:6d}: write {rec['write_s']:6.1f} s, INVERT {rec['invert_s']:6.1f} s, "
              f"concepts {rec['concepts_s']:6.1f} s, peak RSS {rec['peak_rss_gb']:.2f} GB, "
              f"store {rec['store_gb']:.2f} GB, planted recovered "
              f"{rec['invert_planted_recovered']:.2f}", flush=True)
        out.append(rec)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", choices=["loader", "scale"])
    ap.add_argument("--scale-one", nargs=2, metavar=("N", "JSON"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.scale_one:
        scale_one(int(args.scale_one[0]), args.scale_one[1])
        return
    load = os.getloadavg()
    report = {"machine": platform.platform(), "cpus": os.cpu_count(),
              "load_average_at_start": load, "quick": args.quick}
    if args.only in (None, "loader"):
        n = 64 if args.quick else 256
        r = bench_loader(n, workers=max(2, os.cpu_count() or 2))
        report["loader"] = r
        print(f"folder loader, {n} JPEGs -> 224x224 (load average {load[0]:.1f}):")
        print(f"  plain Pillow loop      {r['pillow_loop_img_s']:7.1f} img/s")
        print(f"  check pass             {r['check_pass_img_s']:7.1f} img/s")
        for k in ("threads", "grain", "serial"):
            print(f"  stream ({k:7s})      {r[f'stream_{k}_img_s']:7.1f} img/s")
        for k, v in r["overlap"].items():
            print(f"  with a busy consumer ({k:7s}): total {v['total_s']:.2f} s, consumer "
                  f"waited {v['device_wait_s']:.2f} s for batches")
        print(f"  threads / loop {r['threads_vs_loop']:.2f}x, grain / loop "
              f"{r['grain_vs_loop']:.2f}x, end to end (check + threads) / loop "
              f"{r['end_to_end_vs_loop']:.2f}x")
    if args.only in (None, "scale"):
        sizes = [250, 500, 1000, 2000] if args.quick else [1000, 2000, 5000, 20000]
        print(f"sweep at scale, {SHAPE} activations per input, INVERT L=2 B=3 + ICE k=5 "
              f"(fit on 1000) + Net2Vec (1000):")
        recs = bench_scale(sizes)
        report["scale"] = recs
        t = [r["invert_s"] + r["concepts_s"] + r["write_s"] for r in recs]
        report["scale_time_per_input_ms"] = [1e3 * ti / r["n"] for ti, r in zip(t, recs)]
        report["scale_peak_rss_gb"] = [r["peak_rss_gb"] for r in recs]
    report["load_average_at_end"] = os.getloadavg()
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "data_quick.json" if args.quick else "data.json"
    if args.only and (RESULTS / name).is_file():   # keep the other part's figures
        old = json.loads((RESULTS / name).read_text())
        report = {**old, **{k: v for k, v in report.items()
                            if k in ("loader", "scale") or k not in old},
                  f"load_average_{args.only}": [report["load_average_at_start"],
                                                report["load_average_at_end"]]}
    (RESULTS / name).write_text(json.dumps(report, indent=2))
    print(f"wrote {RESULTS / name}")


if __name__ == "__main__":
    main()
