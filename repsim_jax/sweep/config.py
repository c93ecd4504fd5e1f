"""Configuration of a sweep: what to run (methods x models x layers x data) and how.

A :class:`SweepConfig` is a small frozen dataclass built from command-line flags or a TOML
file (:func:`load_toml`). Everything that changes the numbers - methods and their options,
models (and the content of their weight files), layers, data, seed - enters
:func:`config_hash`; where results go, progress bars and the multi-host set-up do not.
The hash is written into the output directory's manifest, so a directory that holds
another configuration's results is refused instead of silently mixed.

TOML example (every key optional; the defaults are the built-in demo)::

    methods = ["semantic", "invert", "concepts", "cladec", "summaries"]
    layers = "all"              # or ["features.3", "features.7"]
    seed = 0
    output = "repsim-out"
    batch_size = 64

    [data]
    source = "repsim_shapes"    # or "tfds:cifar10", "digits", "lfw_subset", "hf:DIR",
                                # "folder:DIR" (or a bare directory), an .npz/.npy of arrays
    split = "test"
    n_images = 64               # a seeded subset (the sweep seed); "all" for every image
    concepts = "concepts.csv"   # image folders: per-image concept tags (wide or long CSV)
    masks = "masks/"            # image folders: per-pixel concept masks (PNG)
    skip_bad_images = false     # true: leave unreadable images out (one warning)
    balanced = false            # true: n_images // classes images per class

    [[models]]
    name = "small_vgg"          # a built-in trained model
    [[models]]
    name = "mine"               # a ported model: architecture + weight file
    arch = "resnet18"
    weights = "resnet18.pth"
    num_classes = 1000
    [[models]]
    name = "vit"                # or hf = "DIR" (save_pretrained), factory =
    hf = "checkpoints/vit"      # "pkg.mod:fn" (+ weights), activations = "acts.npz"

    [semantic]                  # options of one method (see METHOD_DEFAULTS)
    matcher = "exact"
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Mapping

from repsim_jax._checks import InputError, unknown_name
from repsim_jax.sweep import options as _opts

__all__ = ["METHODS", "METHOD_DEFAULTS", "ModelSpec", "DataSpec", "DistributedSpec",
           "SweepConfig", "SweepError", "from_dict", "load_toml", "config_hash",
           "apply_overrides", "demo_config", "DEMO", "check_config"]

METHODS = ("semantic", "invert", "concepts", "cladec", "summaries", "similarity")

# Options of every method as the sweep passes them on (see repsim_jax.sweep.adapters).
# What each key accepts (type, range, valid names) is in the table next door,
# repsim_jax.sweep.options.OPTIONS (register a new key there with register_options);
# from_dict checks every section against it before anything is written.
# ``layers`` (per method) narrows the sweep's layer list for that method: "all", "last"
# (the deepest layer), or a list of names.
METHOD_DEFAULTS: dict[str, dict[str, Any]] = {
    # compare: how the layer x layer map compares semantic RSMs; debiased CKA by default
    # (biased "linear_cka" is large for unrelated layers at small N)
    # n_images: a seeded subset for the N^2 RSMs (None: all, at most 1000)
    "semantic": {"kernel": "cosine", "matcher": "exact", "compare": "cka_debiased",
                 "layers": "all", "n_images": None},
    "invert": {"L": 2, "B": 3, "min_fraction": 0.0, "max_fraction": 0.5,
               "reduction": "mean", "layers": "all"},
    "concepts": {"k": 5, "max_iter": 100, "metric": "cosine", "resolution": 8,
                 "layer_score": "best_match", "net2vec": True, "net2vec_epochs": 30,
                 "layers": "all",
                 # at scale: ICE fitted on a seeded subset, maps of all inputs by chunks;
                 # Net2Vec trained/tested on a seeded subset (sweep.adapters.adapt_concepts)
                 "fit_images": 1000, "net2vec_images": 1000},
    "cladec": {"alpha": 0.5, "steps": 150, "lr": 3e-3, "batch_size": 32, "layers": "last",
               "retrain_steps": 100},   # 0: skip the retrain-accuracy check
    "summaries": {"classes": "all", "max_images": 4, "steps_smooth": 60, "steps_sharp": 30},
    # layer x layer maps of the activations themselves (repsim_jax.similarity): every
    # layer of every model against every other; measures: names or {name = options}
    # tables (e.g. {rsa = {compare = "pearson"}}); p-values / intervals where asked
    "similarity": {"measures": ["cka_debiased"], "n_permutations": 0, "n_bootstrap": 0,
                   "level": 0.95, "spatial": "flatten", "layers": "all"},
}


def _similarity_measures(values: Mapping[str, Any]) -> None:
    """[similarity] measures: every name (and its options) known to repsim_jax.similarity."""
    if "measures" not in values:
        return
    from repsim_jax.similarity.compare import similarity_measures
    try:
        similarity_measures(values["measures"])
    except KeyError as e:
        raise KeyError(f"[similarity] measures: {e.args[0]}") from None
    except InputError as e:
        raise InputError(f"[similarity] measures: {e}") from None


_opts.register_options(
    "similarity",
    measures=_opts.Option("any", doc="names of repsim_jax.similarity measures"),
    n_permutations=_opts.Option("int", 0, doc="permutations per layer pair (0: no p)"),
    n_bootstrap=_opts.Option("int", 0, doc="bootstrap resamples per pair (0: no CI)"),
    level=_opts.Option("float", 0.0, 1.0, lo_open=True, hi_open=True),
    spatial=_opts.Option("str", choices=("repsim_jax.similarity", "SPATIAL")),
    layers=_opts.Option("layers", doc="this method's layers"),
    check=_similarity_measures)


class SweepError(RuntimeError):
    """The sweep cannot go on (foreign output directory, full disk, failed unit...)."""


def _field_defaults(cls) -> dict[str, Any]:
    """A dataclass's fields with their defaults (None where there is none)."""
    return {f.name: (f.default if f.default is not dataclasses.MISSING else None)
            for f in dataclasses.fields(cls)}


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """One model of a sweep, from exactly one source: a built-in trained model (``name``
    only); ``arch`` (+ ``weights``, ported; random if none); ``hf`` (a Hugging Face
    checkpoint directory, :func:`repsim_jax.models.load_hf`); ``factory``
    (``"package.module:callable"`` returning an nnx model, + optional ``weights`` written
    by :func:`repsim_jax.models.save_npz` / ``save_safetensors``); ``activations``
    (precomputed ``{layer: (N, ...)}``: an .npz or a directory of .npy files)."""
    name: str
    arch: str | None = None
    weights: str | None = None
    num_classes: int | None = None
    hf: str | None = None
    factory: str | None = None
    activations: str | None = None

    @property
    def builtin(self) -> bool:
        return self.source == "builtin"

    @property
    def source(self) -> str:
        """``"builtin"``, ``"arch"``, ``"hf"``, ``"factory"`` or ``"activations"``."""
        for key in MODEL_SOURCES:
            if getattr(self, key) is not None:
                return key
        return "builtin"


MODEL_SOURCES = ("arch", "hf", "factory", "activations")


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """``source``: any source of :func:`repsim_jax.data.load` ("repsim_shapes", "digits",
    "lfw_subset", "tfds:<name>", "hf:<DIR>", "folder:<DIR>" or a directory, an .npz/.npy);
    ``n_images`` None = all; ``concepts`` / ``masks``: annotation files of an image folder
    (:mod:`repsim_jax.data.annotations`)."""
    source: str = "repsim_shapes"
    split: str = "test"
    n_images: int | None = 64
    data_dir: str | None = None
    concepts: str | None = None
    masks: str | None = None
    skip_bad_images: bool = False
    balanced: bool = False


_DATA_FLAGS = ("skip_bad_images", "balanced")


@dataclasses.dataclass(frozen=True)
class DistributedSpec:
    """``jax.distributed.initialize`` arguments; ``enabled=False`` = one process.

    ``peer_timeout``: seconds without a heartbeat after which a waiting process declares
    another one dead and stops (with a message; rerun to resume)."""
    enabled: bool = False
    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    peer_timeout: float = 60.0


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    methods: tuple[str, ...] = METHODS
    models: tuple[ModelSpec, ...] = (ModelSpec("small_vgg"), ModelSpec("small_resnet"))
    layers: tuple[str, ...] | str = "all"
    data: DataSpec = DataSpec()
    seed: int = 0
    output: str = "repsim-out"
    batch_size: int = 64
    options: Mapping[str, Mapping[str, Any]] = dataclasses.field(
        default_factory=lambda: copy.deepcopy(METHOD_DEFAULTS))
    distributed: DistributedSpec = DistributedSpec()

    def method_options(self, method: str) -> dict[str, Any]:
        return dict(self.options.get(method, {}))

    def to_dict(self) -> dict[str, Any]:
        return {
            "methods": list(self.methods),
            "models": [{k: v for k, v in dataclasses.asdict(m).items() if v is not None}
                       for m in self.models],
            "layers": self.layers if isinstance(self.layers, str) else list(self.layers),
            # unset keys are left out, so older configurations keep their hash
            "data": {k: v for k, v in dataclasses.asdict(self.data).items()
                     if v is not None and not (v is False and k in _DATA_FLAGS)}
            | ({"n_images": "all"} if self.data.n_images is None else {}),
            "seed": self.seed, "output": self.output, "batch_size": self.batch_size,
            "options": {m: dict(o) for m, o in self.options.items()},
            "distributed": dataclasses.asdict(self.distributed),
        }


def _as_tuple_of_str(value, what: str) -> tuple[str, ...] | str:
    if isinstance(value, str):
        if value in ("all", "last"):
            return value
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, (list, tuple)) or not value:
        raise InputError(f"{what}: expected 'all' or a non-empty list of names, got {value!r}")
    return tuple(str(v) for v in value)


def _model_spec(entry) -> ModelSpec:
    if isinstance(entry, str):
        return ModelSpec(entry)
    if not isinstance(entry, Mapping):
        raise InputError(f"models: expected a name or a table, got {entry!r}")
    _opts.check_section("models", entry, defaults=_field_defaults(ModelSpec),
                        label=f"[[models]] {entry['name']!r}" if entry.get("name")
                        else "[[models]]")
    arch = entry.get("arch")
    sources = [k for k in MODEL_SOURCES if entry.get(k) is not None]
    if len(sources) > 1:
        raise InputError(f"models: entry {dict(entry)} gives {' and '.join(sources)}; give one "
                         f"of {', '.join(MODEL_SOURCES)} (or only a built-in name)")
    src = sources[0] if sources else None
    if entry.get("weights") is not None and src not in ("arch", "factory"):
        raise InputError(f"models: entry {dict(entry)}: weights go with arch or factory")
    if entry.get("num_classes") is not None and src in ("hf", "activations"):
        raise InputError(f"models: entry {dict(entry)}: num_classes goes with arch or "
                         f"factory (an {src} model has its own)")
    name = entry.get("name")
    if not name and entry.get("weights"):
        name = Path(entry["weights"]).stem
    if not name and src in ("hf", "activations"):
        name = Path(str(entry[src]).rstrip("/")).stem
    if not name and src == "factory":
        name = str(entry["factory"]).rpartition(":")[2].rpartition(".")[2]
    name = name or arch
    if not name:
        raise InputError(f"models: entry {dict(entry)} needs a 'name' or an 'arch'")
    nc = entry.get("num_classes")
    return ModelSpec(str(name), arch, entry.get("weights"), None if nc is None else int(nc),
                     hf=entry.get("hf"), factory=entry.get("factory"),
                     activations=entry.get("activations"))


def from_dict(d: Mapping[str, Any]) -> SweepConfig:
    """A :class:`SweepConfig` from a (TOML-shaped) dict; unknown keys are errors."""
    d = dict(d)
    top = {"methods", "models", "layers", "data", "seed", "output", "batch_size",
           "distributed", "options", *METHODS}
    unknown = set(d) - top
    if unknown:
        raise unknown_name("configuration key", sorted(unknown)[0], sorted(top))
    _opts.check_section("sweep", {k: d[k] for k in ("seed", "batch_size", "output")
                                  if k in d}, label="configuration")
    methods = d.get("methods", list(METHODS))
    if isinstance(methods, str):
        methods = [m.strip() for m in methods.split(",") if m.strip()]
    if methods == ["all"]:
        methods = list(METHODS)
    for m in methods:
        if m not in METHODS:
            raise unknown_name("method", m, METHODS)
    if not methods:
        raise InputError("methods: empty list")
    methods = tuple(m for m in METHODS if m in methods)  # canonical order
    models = d.get("models", ["small_vgg", "small_resnet"])
    if isinstance(models, (str, Mapping)):
        models = [models] if not isinstance(models, str) else \
            [m.strip() for m in models.split(",") if m.strip()]
    specs = tuple(_model_spec(m) for m in models)
    if not specs:
        raise InputError("models: empty list")
    names = [m.name for m in specs]
    if len(set(names)) != len(names):
        raise InputError(f"models: duplicate model names {names}")
    data = d.get("data", {})
    if isinstance(data, str):
        data = {"source": data}
    _opts.check_section("data", data, defaults=_field_defaults(DataSpec))
    if data.get("n_images") == "all":
        data = {**data, "n_images": None}
    data = DataSpec(**data)
    options = copy.deepcopy(METHOD_DEFAULTS)
    given = dict(d.get("options", {}))
    for m in METHODS:
        if m in d:
            if not isinstance(d[m], Mapping):
                raise InputError(f"[{m}]: expected a table of options, got {d[m]!r}")
            given[m] = {**given.get(m, {}), **d[m]}
    for m, opts in given.items():
        if m not in METHODS:
            raise unknown_name("method", m, METHODS)
        if not isinstance(opts, Mapping):
            raise InputError(f"[{m}]: expected a table of options, got {opts!r}")
        options[m].update(dict(opts))
        # every key against what the method takes, before anything is written
        _opts.check_section(m, options[m], defaults=METHOD_DEFAULTS.get(m))
    dist = d.get("distributed", {})
    if isinstance(dist, Mapping):
        _opts.check_section("distributed", dist, defaults=_field_defaults(DistributedSpec))
        dist = DistributedSpec(**dist)
    elif not isinstance(dist, DistributedSpec):
        raise InputError(f"[distributed]: expected a table, got {dist!r}")
    return SweepConfig(methods=methods, models=specs,
                       layers=_as_tuple_of_str(d.get("layers", "all"), "layers"),
                       data=data, seed=int(d.get("seed", 0)),
                       output=str(d.get("output", "repsim-out")),
                       batch_size=int(d.get("batch_size", 64)), options=options,
                       distributed=dist)


def check_config(cfg: SweepConfig) -> None:
    """Checks a :class:`SweepConfig` built without :func:`from_dict` (same rules): every
    method's options, the data and distributed sections and the model entries."""
    for m, opts in cfg.options.items():
        if m not in METHODS:
            raise unknown_name("method", m, METHODS)
        _opts.check_section(m, dict(opts), defaults=METHOD_DEFAULTS.get(m))
    _opts.check_section("data", dataclasses.asdict(cfg.data),
                        defaults=_field_defaults(DataSpec))
    _opts.check_section("distributed", dataclasses.asdict(cfg.distributed),
                        defaults=_field_defaults(DistributedSpec))
    for m in cfg.models:
        _opts.check_section("models", dataclasses.asdict(m),
                            defaults=_field_defaults(ModelSpec), label=f"[[models]] {m.name!r}")


def _tomllib():
    try:
        import tomllib          # Python >= 3.11
    except ImportError:         # pragma: no cover - Python 3.10 needs the `tomli` backport
        import tomli as tomllib
    return tomllib


def load_toml(path) -> dict[str, Any]:
    """The dict of a TOML configuration file (clear error for a missing/bad file)."""
    tomllib = _tomllib()
    path = Path(path)
    if not path.is_file():
        raise InputError(f"configuration file {str(path)!r} does not exist")
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise InputError(f"configuration file {str(path)!r} is not valid TOML: {e}") from None


def _parse_value(text: str):
    tomllib = _tomllib()
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(d: dict[str, Any], assignments) -> dict[str, Any]:
    """Applies ``section.key=value`` strings (value parsed as a TOML literal) to ``d``."""
    d = copy.deepcopy(d)
    for a in assignments or ():
        if "=" not in a:
            raise InputError(f"--set {a!r}: expected section.key=value")
        key, value = a.split("=", 1)
        parts = key.strip().split(".")
        node = d
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise InputError(f"--set {a!r}: {p!r} is not a section")
        node[parts[-1]] = _parse_value(value.strip())
    return d


def _file_digest(path: str) -> str:
    p = Path(path)
    if p.is_dir():      # a directory of files (.npy activations, a checkpoint): every file
        h = hashlib.sha256()
        for f in sorted(q for q in p.iterdir() if q.is_file()):
            h.update(f"{f.name}:{_file_digest(str(f))};".encode())
        return h.hexdigest()
    if not p.is_file():
        return "missing"
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _folder_digest(path: str) -> str:
    """sha256 of a folder's file listing (relative path, size, mtime): cheap for large
    image folders, and changed by any added, removed or rewritten file."""
    root = Path(path)
    if not root.is_dir():
        return "missing"
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            st = p.stat()
            h.update(f"{p.relative_to(root).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n"
                     .encode())
    return h.hexdigest()


def config_hash(cfg: SweepConfig) -> str:
    """sha256 of everything that determines the numbers (not output/progress/hosts).

    Weight files and array files enter by content, so replacing a weight file under the
    same name is detected as another configuration.
    """
    d = cfg.to_dict()
    d.pop("output")
    d.pop("distributed")
    for m in d["models"]:
        for key in ("weights", "activations", "hf"):   # files enter by content
            if key in m:
                m[f"{key}_sha256"] = _file_digest(m[key])
                m[key] = os.path.basename(str(m[key]).rstrip("/"))
    src = d["data"]["source"]
    if src.endswith((".npz", ".npy")):
        d["data"]["sha256"] = _file_digest(src)
        d["data"]["source"] = os.path.basename(src)
    elif src.startswith("folder:") or os.path.isdir(src):
        d["data"]["listing_sha256"] = _folder_digest(src[7:] if src.startswith("folder:")
                                                     else src)
    for key in ("concepts", "masks"):
        if d["data"].get(key):
            p = d["data"][key]
            d["data"][f"{key}_sha256"] = (_folder_digest(p) if os.path.isdir(p)
                                          else _file_digest(p))
    d["options"] = {m: o for m, o in d["options"].items() if m in d["methods"]}
    text = json.dumps(d, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# The demo: every method on both built-in models (stage outputs of each) and 64 images of
# the built-in concept data.
DEMO: dict[str, Any] = {
    "layers": ["features.7", "features.11", "features.15", "globalpool", "layer2", "layer3"],
    "data": {"source": "repsim_shapes", "split": "test", "n_images": 64},
    "models": ["small_vgg", "small_resnet"],
    # ClaDec trains two networks per layer: the demo decodes one layer (small_vgg's
    # deepest conv stage); a sweep config can ask for any layers of any models. 300 steps at
    # lr 3e-3 and alpha 0.05: SSE/image on the 64 demo images ClaDec 157 / AE 144, and the
    # decodings show the objects (alpha 0.5: 917 / 144, class-evidence noise; the mean image
    # scores 1459; 100 steps at lr 3e-4 gave 1520)
    "cladec": {"layers": ["features.15"], "steps": 300, "alpha": 0.05},
    "summaries": {"max_images": 3},
    "output": "repsim-out/demo",
}


def demo_config(output: str = "repsim-out/demo", **overrides) -> SweepConfig:
    """The built-in demo: every method on both built-in models and the built-in data."""
    return from_dict({**copy.deepcopy(DEMO), "output": output, **overrides})
