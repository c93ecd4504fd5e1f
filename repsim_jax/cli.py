"""`repsim`: layer sweeps from model weights to a report.

  repsim demo                      every method on the built-in models and data
  repsim sweep --config run.toml   a configured sweep (flags override the file)
  repsim layers small_vgg          the capturable layers of a model, with shapes
  repsim layers --hf DIR           ... of a Hugging Face checkpoint (or --factory pkg.mod:fn)
  repsim report OUT                re-render OUT/report.html from its results (no recompute)

The command line only parses; the work is done by :mod:`repsim_jax.sweep`. Bad input
(unknown model/layer/data set, a weight file for another architecture, an output
directory holding another configuration's results, a full disk) prints one line
``repsim: error: ...`` and exits with status 2.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

__all__ = ["main", "build_parser"]

def _add_sweep_flags(p: argparse.ArgumentParser, *, demo: bool = False) -> None:
    g = p.add_argument_group("what to run")
    if not demo:
        g.add_argument("--config", metavar="TOML", help="configuration file (TOML); flags "
                       "given on the command line override it")
        g.add_argument("--methods", metavar="LIST", help="comma-separated subset of "
                       "semantic,invert,concepts,cladec,summaries (default: all)")
        g.add_argument("--models", metavar="LIST", help="comma-separated built-in models "
                       "(small_vgg, small_resnet)")
        g.add_argument("--arch", help="architecture of a model to port (resnet18, vgg16, "
                       "alexnet, ...); with --weights and --num-classes")
        g.add_argument("--weights", metavar="FILE", help="weight file for --arch "
                       "(.pth/.pt/.safetensors/.npz, torchvision state_dict names)")
        g.add_argument("--num-classes", type=int, help="number of classes of --arch")
        g.add_argument("--name", help="name of the ported model (default: file stem)")
        g.add_argument("--layers", metavar="LIST", help="comma-separated layer names, or "
                       "'all' (default) or 'last'; see `repsim layers MODEL`")
        g.add_argument("--data", metavar="SOURCE", help="repsim_shapes (default), digits, "
                       "lfw_subset, tfds:<name>, hf:<DIR>, folder:<DIR> (or a directory of "
                       "images, class sub-folders give labels), or a .npz with an 'images' "
                       "array")
        g.add_argument("--concepts", metavar="FILE", help="concept table of an image folder "
                       "(CSV: path,<concept>,... with 0/1, or path,concept)")
        g.add_argument("--masks", metavar="DIR", help="concept masks of an image folder "
                       "(DIR/<image stem>/<concept>.png, or index PNGs + DIR/palette.csv)")
        g.add_argument("--skip-bad-images", action="store_true", help="leave unreadable "
                       "images out (one warning lists them) instead of stopping")
        g.add_argument("--balanced", action="store_true", help="sample --n-images evenly "
                       "across classes")
        g.add_argument("--split", help="data split (default: test)")
        g.add_argument("--data-dir", help="tfds data directory")
        g.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                       help="any configuration value, e.g. --set semantic.matcher=greedy "
                       "(value as a TOML literal); repeatable")
    g.add_argument("--n-images", type=int, help="number of images")
    g.add_argument("--seed", type=int, help="random seed (default 0)")
    g.add_argument("--out", metavar="DIR", help="output directory (default repsim-out"
                   f"{'/demo' if demo else ''})")
    g.add_argument("--batch-size", type=int, help="images per forward chunk (memory)")
    g = p.add_argument_group("how to run")
    g.add_argument("--no-progress", action="store_true", help="no progress output at all "
                   "(bars on a terminal, lines in a log; also model training on first use)")
    g.add_argument("--distributed", action="store_true", help="call "
                   "jax.distributed.initialize() (auto-detects TPU pods, SLURM, Open MPI)")
    g.add_argument("--coordinator", metavar="HOST:PORT", help="jax.distributed coordinator")
    g.add_argument("--num-processes", type=int, help="jax.distributed process count")
    g.add_argument("--process-id", type=int, help="jax.distributed index of this process")


_SWEEP_EPILOG = """examples:
  repsim sweep --models small_vgg,small_resnet --layers features.11,layer3 --out runs/a
  repsim sweep --arch resnet18 --weights resnet18.pth --num-classes 1000 \\
               --data tfds:imagenet2012 --split validation --n-images 512 \\
               --methods semantic,invert --set semantic.matcher=window
  repsim sweep --config run.toml --set invert.B=5      (TOML keys: see repsim_jax.sweep.config)
  repsim sweep --data folder:photos --concepts photos/concepts.csv --masks photos_masks \
               --skip-bad-images --n-images 2000 --methods invert,concepts

several hosts (jax.distributed): start the same command on every host, with --out on a
file system all hosts share, plus --distributed (TPU pods, SLURM, Open MPI are detected) or
--coordinator HOST:PORT --num-processes P --process-id I (or the environment variables
REPSIM_COORDINATOR, REPSIM_NUM_PROCESSES, REPSIM_PROCESS_ID). Each process computes its
share of the units on its local devices; process 0 writes the report. A process that fails
or stops (no heartbeat for --set distributed.peer_timeout=SECONDS, default 60) makes the
others stop with a message; the same commands run again resume.
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="repsim", description=__doc__.split("\n\nThe command line")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run `repsim COMMAND --help` for the options of a command.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    s = sub.add_parser("sweep", help="run (or resume) a sweep of methods x models x layers",
                       description="Runs any subset of {semantic, invert, concepts, cladec, "
                       "summaries} over the layers of one or more models on a data set and "
                       "writes arrays, tables, pictures and report.html into one directory. "
                       "Started again with the same command after an interruption, it "
                       "resumes where it stopped.",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog=_SWEEP_EPILOG)
    _add_sweep_flags(s)
    d = sub.add_parser("demo", help="the whole sweep on the built-in models and data",
                       description="Every method on the two built-in CNNs and the built-in "
                       "concept data (a few minutes on a laptop CPU; trains the built-in "
                       "models on first use). Prints the path of the report.")
    _add_sweep_flags(d, demo=True)
    ly = sub.add_parser("layers", help="list the capturable layers of a model",
                        description="Lists the layer names (torchvision module paths) and "
                        "per-image activation shapes of a built-in model or an architecture.")
    ly.add_argument("model", nargs="?", default=None,
                    help="built-in model (small_vgg, small_resnet) or an architecture "
                    "name (resnet18, vgg16_bn, alexnet, ...); or give --hf / --factory")
    ly.add_argument("--hf", metavar="DIR", default=None,
                    help="a Hugging Face checkpoint directory (save_pretrained)")
    ly.add_argument("--factory", metavar="PKG.MOD:FN", default=None,
                    help="your own code: a callable returning an nnx model")
    ly.add_argument("--input-shape", metavar="H,W,C", default=None,
                    help="input size to list shapes at (default: the model's own)")
    ly.add_argument("--num-classes", type=int, default=None,
                    help="classes of an architecture (changes only the last layer's shape; "
                    "default 1000, or the built-in data's classes for the small CNNs)")
    rp = sub.add_parser("report", help="re-render the report of an existing output directory",
                        description="Rewrites OUT/report.html (and OUT/arrays, tables, "
                        "figures) from the finished units' checkpoints of a sweep directory: "
                        "nothing is recomputed, no model or data is loaded. Works for any "
                        "sweep output, also one made from precomputed activations.")
    rp.add_argument("out", metavar="OUT", help="output directory of a sweep (has manifest.json)")
    return p


def _cmd_report(args) -> int:
    from repsim_jax.sweep import report
    t0 = time.time()
    path = report.render(args.out)
    print(f"report: {path}  ({time.time() - t0:.1f} s)")
    return 0


def _config_dict(args, demo: bool) -> dict:
    from repsim_jax.sweep import config as C
    d: dict = {}
    if demo:
        import copy
        d = copy.deepcopy(C.DEMO)
    elif args.config:
        d = C.load_toml(args.config)
    if not demo:
        if args.methods:
            d["methods"] = args.methods
        models = list(d.get("models", [])) if (args.models is None and args.arch) else None
        if args.models:
            models = [m.strip() for m in args.models.split(",") if m.strip()]
        if args.arch:
            models = models or []
            models.append({k: v for k, v in {"name": args.name, "arch": args.arch,
                                             "weights": args.weights,
                                             "num_classes": args.num_classes}.items()
                           if v is not None})
        if models is not None:
            d["models"] = models
        if args.layers:
            d["layers"] = args.layers
        data = dict(d.get("data", {})) if isinstance(d.get("data", {}), dict) else \
            {"source": d["data"]}
        for key, val in (("source", args.data), ("split", args.split),
                         ("data_dir", args.data_dir), ("concepts", args.concepts),
                         ("masks", args.masks)):
            if val is not None:
                data[key] = val
        for key in ("skip_bad_images", "balanced"):
            if getattr(args, key):
                data[key] = True
        d["data"] = data
    if args.n_images is not None:
        d.setdefault("data", {})["n_images"] = args.n_images
    for key, val in (("seed", args.seed), ("output", args.out),
                     ("batch_size", args.batch_size)):
        if val is not None:
            d[key] = val
    dist = dict(d.get("distributed", {}))
    if args.distributed:
        dist["enabled"] = True
    for key, val in (("coordinator_address", args.coordinator),
                     ("num_processes", args.num_processes), ("process_id", args.process_id)):
        if val is not None:
            dist[key] = val
            dist["enabled"] = True
    if dist:
        d["distributed"] = dist
    if not demo:
        d = C.apply_overrides(d, args.set)
    return d


def _cmd_sweep(args, demo: bool) -> int:
    from repsim_jax.sweep import config as C
    from repsim_jax.sweep.run import run_sweep
    cfg = C.from_dict(_config_dict(args, demo))
    t0 = time.time()
    path = run_sweep(cfg, progress=False if args.no_progress else None)
    print(f"report: {path}  ({time.time() - t0:.1f} s)")
    return 0


def _cmd_layers(args) -> int:
    from flax import nnx

    from repsim_jax import models
    from repsim_jax._checks import InputError
    given = [k for k in ("model", "hf", "factory") if getattr(args, k) is not None]
    if len(given) != 1:
        raise InputError("layers: give one of MODEL, --hf DIR or --factory PKG.MOD:FN")
    hwc = None
    if args.input_shape:
        try:
            hwc = tuple(int(v) for v in args.input_shape.split(","))
        except ValueError:
            hwc = ()
        if len(hwc) != 3:
            raise InputError(f"--input-shape: expected H,W,C, got {args.input_shape!r}")
    if args.hf is not None:
        from repsim_jax.sweep.inputs import load_hf_model
        model, label = load_hf_model(args.hf, label="--hf"), args.hf
    elif args.factory is not None:
        from repsim_jax.sweep.inputs import load_factory_model
        model = load_factory_model(args.factory, num_classes=args.num_classes,
                                   label="--factory")
        label = args.factory
    else:
        num_classes = args.num_classes
        if args.model in ("small_vgg", "small_resnet") and num_classes is None:
            from repsim_jax.data import shapes   # the built-in models' classes
            num_classes = len(shapes.CLASS_NAMES)
        # layer names and shapes do not depend on the weights: no training, no download
        model = models.build(args.model, num_classes=num_classes or 1000, rngs=nnx.Rngs(0))
        label = args.model
    shapes_ = models.layer_shapes(model, hwc)
    if not shapes_:
        raise InputError(f"{label}: no capturable layers (no submodule returned an array)")
    width = max(len(n) for n in shapes_)
    shown = hwc or getattr(model, "input_shape", None) or ()
    print(f"{label}: {len(shapes_)} layers, input {' x '.join(map(str, shown))}"
          f" (H x W x C); per-image activation shapes:")
    for name, shape in shapes_.items():
        print(f"  {name:<{width}}  {' x '.join(map(str, shape))}")
    return 0


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import contextlib

    from repsim_jax import _progress
    # --no-progress silences every progress=None of the library for this command
    quiet = _progress.disabled() if getattr(args, "no_progress", False) \
        else contextlib.nullcontext()
    with quiet:
        return _dispatch(args)


def _dispatch(args) -> int:
    from repsim_jax._checks import InputError
    from repsim_jax.sweep.config import SweepError
    try:
        if args.command == "layers":
            return _cmd_layers(args)
        if args.command == "report":
            return _cmd_report(args)
        return _cmd_sweep(args, demo=args.command == "demo")
    except (InputError, KeyError, SweepError, FileNotFoundError, ValueError) as e:
        msg = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
        first, _, details = msg.partition("\n")
        print(f"repsim: error: {first}", file=sys.stderr)
        if details.strip():   # e.g. the missing / unexpected keys of a weight file
            print("\n".join("  " + l for l in details.splitlines()), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("repsim: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
