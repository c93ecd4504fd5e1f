"""Built-in trained models: the small CNNs trained on ``repsim_shapes``, cached on disk.

``load_trained(name)`` returns ``(model, info)``. On first use it trains the model on the
default ``train`` split (a few minutes on 2 CPU cores), measures test accuracy on the
``test`` split, and saves the weights under the cache directory ``$REPSIM_CACHE`` (default
``~/.cache/repsim_jax``)::

    <cache>/models/<name>-<key>/state.npz     every array of the nnx state, by path
    <cache>/models/<name>-<key>/info.json     written last: marks the entry complete

``<key>`` hashes everything the weights depend on (architecture name, training config,
data set version, split sizes/seeds, class rules), so a change retrains instead of serving
stale weights. Entries are written to a temporary directory and renamed into place; an
entry whose weights fail to load or whose parameter checksum disagrees with ``info.json``
(truncated / corrupt files) is discarded and retrained, with a warning.

Several processes (pytest-xdist workers, the processes of a multi-host sweep): the cache
is read by every process on its own - ``np.load(allow_pickle=False)``, no collective, no
barrier, no topology - so the processes of a ``jax.distributed`` run read it as a single
process would. A missing or unreadable entry is trained by ONE process: a ``fcntl`` lock
file per entry (``<entry>.lock``) is held while checking, training and saving; the others
print that they wait, block on the lock, and then read what the first saved. (Processes on
several hosts share the entry only when ``$REPSIM_CACHE`` is on a file system they share;
otherwise each host trains its own copy, and the sweep refuses to go on if the copies
differ.) The weights are not saved with orbax because its checkpointers synchronise all
processes of a ``jax.distributed`` run in every save and restore; entries of earlier
versions (an orbax ``checkpoint/`` directory) are still read, by this process alone.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import shutil
import sys
import warnings
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from repsim_jax._checks import unknown_name
from repsim_jax.models.small import SMALL_MODELS
from repsim_jax.models.train import TrainConfig, evaluate, train

__all__ = ["TRAINED_MODELS", "cache_dir", "load_trained", "entry_dir"]

DATA_VERSION = "repsim_shapes-1"

# name -> training recipe on the default shapes splits.
TRAINED_MODELS = {
    "small_vgg": TrainConfig(epochs=3, batch_size=32, learning_rate=2e-3, seed=0),
    "small_resnet": TrainConfig(epochs=4, batch_size=32, learning_rate=2e-3, seed=0),
}
# what the first-use message promises (measured on 2 CPU cores: 82 s and 100 s)
_TRAIN_MINUTES = {"small_vgg": 2, "small_resnet": 2}


def cache_dir() -> Path:
    """The cache root: ``$REPSIM_CACHE`` or ``~/.cache/repsim_jax`` (absolute)."""
    return Path(os.environ.get("REPSIM_CACHE") or "~/.cache/repsim_jax").expanduser().resolve()


def _data_config(train_size: int | None) -> dict:
    from repsim_jax.data import shapes
    train_n, train_seed = shapes.SPLITS["train"]
    test_n, test_seed = shapes.SPLITS["test"]
    return {"name": "repsim_shapes", "version": DATA_VERSION, "size": 64,
            "train": {"n": int(train_size or train_n), "seed": train_seed},
            "test": {"n": test_n, "seed": test_seed},
            "class_names": list(shapes.CLASS_NAMES), "class_rules": list(shapes.CLASS_RULES)}


def _key(name: str, config: TrainConfig, data: dict) -> str:
    blob = json.dumps({"name": name, "config": dataclasses.asdict(config), "data": data},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def entry_dir(name: str, config: TrainConfig | None = None, *, root: Path | None = None,
              train_size: int | None = None) -> Path:
    """Directory of the cache entry for ``name`` under ``root`` (default :func:`cache_dir`)."""
    config = config or TRAINED_MODELS[name]
    root = Path(root).expanduser().resolve() if root is not None else cache_dir()
    return root / "models" / f"{name}-{_key(name, config, _data_config(train_size))}"


@contextlib.contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:     # another process trains (or reads) this entry: wait
            print(f"repsim: waiting for another process to finish {path.stem} "
                  f"(lock {path})", file=sys.stderr, flush=True)
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _checksum(model) -> float:
    leaves = jax.tree.leaves(nnx.state(model))
    return float(sum(np.asarray(x, np.float64).sum() for x in leaves))


def _build(name: str, num_classes: int):
    model = SMALL_MODELS[name](num_classes, rngs=nnx.Rngs(0))
    model.eval()
    return model


def _path_key(path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def _flat_state(model) -> dict[str, np.ndarray]:
    """Every array of ``model``'s nnx state by its path ("features/0/weight")."""
    flat = jax.tree_util.tree_flatten_with_path(nnx.state(model).to_pure_dict())[0]
    return {_path_key(p): np.asarray(x) for p, x in flat}


def _read_state(entry: Path, model) -> dict:
    """The stored state as a pure dict shaped like ``model``'s (names, shapes checked)."""
    target = nnx.state(model).to_pure_dict()
    if (entry / "state.npz").is_file():
        with np.load(entry / "state.npz", allow_pickle=False) as z:
            stored = {k: z[k] for k in z.files}
    else:
        stored = _read_legacy_orbax(entry / "checkpoint", target)
    want = {_path_key(p): x for p, x in jax.tree_util.tree_flatten_with_path(target)[0]}
    if set(stored) != set(want):
        raise ValueError(f"stored arrays {sorted(set(stored) ^ set(want))[:4]} do not match "
                         f"the model's state")
    for k, x in want.items():
        if stored[k].shape != tuple(x.shape) or stored[k].dtype != x.dtype:
            raise ValueError(f"{k}: stored {stored[k].dtype}{stored[k].shape}, model "
                             f"{x.dtype}{tuple(x.shape)}")
    return jax.tree_util.tree_map_with_path(lambda p, _: stored[_path_key(p)], target)


def _read_legacy_orbax(path: Path, target) -> dict[str, np.ndarray]:
    """An orbax StandardCheckpointer entry of an earlier version, read by this process
    alone (process-local options, single-device targets: no multi-host barrier)."""
    import orbax.checkpoint as ocp
    dev = jax.local_devices()[0]
    sds = jax.tree.map(lambda x: jax.ShapeDtypeStruct(
        x.shape, x.dtype, sharding=jax.sharding.SingleDeviceSharding(dev)), target)
    kwargs = {}
    if jax.process_count() > 1:
        me = jax.process_index()
        kwargs["multiprocessing_options"] = ocp.options.MultiprocessingOptions(
            primary_host=me, active_processes={me}, barrier_sync_key_prefix=f"repsim-p{me}")
    with ocp.StandardCheckpointer(**kwargs) as ckpt:
        restored = ckpt.restore(path, sds)
    return {_path_key(p): np.asarray(x)
            for p, x in jax.tree_util.tree_flatten_with_path(restored)[0]}


def _restore(entry: Path, name: str):
    info = json.loads((entry / "info.json").read_text())
    model = _build(name, len(info["data"]["class_names"]))
    state = nnx.state(model)
    nnx.replace_by_pure_dict(state, _read_state(entry, model))
    nnx.update(model, state)
    got = _checksum(model)
    if not np.isclose(got, info["checksum"], rtol=1e-9, atol=1e-6):
        raise ValueError(f"checksum mismatch: {got} != {info['checksum']}")
    return model, info


def _train_and_save(entry: Path, name: str, config: TrainConfig, train_size: int | None,
                    progress) -> tuple:
    from repsim_jax.data import shapes
    tr, te = shapes.load("train"), shapes.load("test")
    if train_size is not None:
        tr = tr.take(slice(0, int(train_size)))
    model = _build(name, tr.num_classes)
    history = train(model, tr.images, tr.labels, config=config, progress=progress)
    info = {"name": name, "test_accuracy": evaluate(model, te.images, te.labels),
            "train_seconds": history["seconds"], "train_cpu_seconds": history["cpu_seconds"],
            "final_loss": history["loss"][-1],
            "steps": history["steps"], "config": dataclasses.asdict(config),
            "data": _data_config(train_size), "num_classes": tr.num_classes,
            "num_params": int(sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))),
            "checksum": _checksum(model), "jax_backend": jax.default_backend()}
    for stale in entry.parent.glob(f"{entry.name}.tmp-*"):   # left by a killed trainer
        shutil.rmtree(stale, ignore_errors=True)
    tmp = entry.with_name(f"{entry.name}.tmp-{os.getpid()}")
    tmp.mkdir(parents=True)
    with open(tmp / "state.npz", "wb") as f:      # plain arrays: no collective, no pickle
        np.savez(f, **_flat_state(model))
        f.flush()
        os.fsync(f.fileno())
    (tmp / "info.json").write_text(json.dumps(info, indent=1))
    shutil.rmtree(entry, ignore_errors=True)
    os.replace(tmp, entry)
    return model, info


def _load_or_train(name: str, config: TrainConfig, *, root: Path | None = None,
                   train_size: int | None = None, retrain: bool = False, progress=None):
    entry = entry_dir(name, config, root=root, train_size=train_size)
    with _locked(entry.with_name(entry.name + ".lock")):
        if not retrain and (entry / "info.json").exists():
            try:
                model, info = _restore(entry, name)
                return model, {**info, "path": str(entry), "cached": True}
            except Exception as err:  # corrupt or partial entry: retrain
                warnings.warn(f"cache entry {entry} is unreadable ({type(err).__name__}: "
                              f"{str(err)[:200]}); retraining {name}", RuntimeWarning)
        from repsim_jax import _progress
        _progress.message(
            f"training {name} on first use, about {_TRAIN_MINUTES.get(name, 2)} min on a "
            f"CPU ({config.epochs} epochs); cached in {entry}", progress)
        model, info = _train_and_save(entry, name, config, train_size, progress)
        return model, {**info, "path": str(entry), "cached": False}


def load_trained(name: str = "small_vgg", *, retrain: bool = False, progress: bool | None = None):
    """A small CNN trained on ``repsim_shapes``: ``(model, info)``, model in eval mode.

    Trains on first use (then served from the cache, see the module docstring).
    ``info`` holds ``test_accuracy`` (on the 2000-image test split), ``train_seconds``,
    ``config`` (optimiser settings), ``data`` (data set, splits, class names and rules),
    ``num_params``, ``path`` (the cache entry) and ``cached`` (False when trained now).

    Training says so first ("training small_vgg on first use, about 2 min ...; cached in
    ...") and shows a bar with loss, accuracy and ETA (one line per epoch in a log);
    ``progress=False`` silences it (see :mod:`repsim_jax._progress`).
    """
    if name not in TRAINED_MODELS:
        raise unknown_name("trained model", name, list(TRAINED_MODELS))
    return _load_or_train(name, TRAINED_MODELS[name], retrain=retrain, progress=progress)
