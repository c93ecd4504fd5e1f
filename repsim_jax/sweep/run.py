"""Executing a sweep: devices, chunked activations, checkpointed units, resume, hosts.

:func:`run_sweep` plans the units (:mod:`repsim_jax.sweep.plan`), skips those already
checkpointed in the output directory, executes the others through the method adapters
(:mod:`repsim_jax.sweep.adapters`), checkpoints each one as soon as it finishes
(:mod:`repsim_jax.sweep.store`, orbax) and finally writes the report
(:mod:`repsim_jax.sweep.report`).

Devices and memory
    Activations are computed in chunks of ``batch_size`` images (rounded to a multiple of
    the local device count), each chunk sharded over a 1-D ``("data",)`` mesh of the
    process's local devices with ``NamedSharding``; the mesh is handed to every adapter,
    which passes it on to the method (pairs, neurons, concepts and images are sharded
    there). Layers of equal shape arrive as one group, stacked, so the methods ``vmap``
    over them.

Resume and determinism
    A unit's numbers depend only on its inputs and on ``unit_seed(seed, key)``, never on
    the order in which units run or on what ran before; aggregate units always read their
    inputs back from the checkpoints. Hence a run that was killed and restarted with the
    same command ends with exactly the numbers of an uninterrupted run, and identical
    configuration + seed give identical numbers.

Several hosts (``jax.distributed``)
    Start the same command on every host with the same configuration and an output
    directory on a file system all hosts share, plus either ``--distributed`` (cluster
    auto-detection: Cloud TPU, SLURM, Open MPI) or ``--coordinator HOST:PORT
    --num-processes P --process-id I`` (or the environment variables
    ``REPSIM_COORDINATOR``, ``REPSIM_NUM_PROCESSES``, ``REPSIM_PROCESS_ID``).
    :func:`maybe_initialize_distributed` calls ``jax.distributed.initialize`` with them.
    Every process plans the same units; :func:`repsim_jax.sweep.plan.partition` gives
    process ``jax.process_index()`` its share (balanced by estimated cost), which it
    computes on its local devices and checkpoints itself. After a barrier the aggregate
    units are shared out the same way; after a second barrier process 0 writes the
    report. A killed multi-host run resumes like a single-host one.
"""
from __future__ import annotations

import collections
import dataclasses
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from repsim_jax._checks import InputError, unknown_name
from repsim_jax.sweep import plan as plan_mod
from repsim_jax.sweep.config import SweepConfig, SweepError, check_config, config_hash
from repsim_jax.sweep.inputs import (PrecomputedActivations, SweepData,
                                    check_activations_length, images_for, load_data,
                                    load_model)
from repsim_jax.sweep.store import Store, atomic_write_text

__all__ = ["run_sweep", "SweepContext", "maybe_initialize_distributed", "local_mesh",
           "model_layers"]


def maybe_initialize_distributed(spec) -> bool:
    """Calls ``jax.distributed.initialize`` when configured (flags or environment)."""
    import jax
    env = os.environ
    coord = spec.coordinator_address or env.get("REPSIM_COORDINATOR")
    nproc = spec.num_processes or (int(env["REPSIM_NUM_PROCESSES"])
                                   if env.get("REPSIM_NUM_PROCESSES") else None)
    pid = spec.process_id if spec.process_id is not None else (
        int(env["REPSIM_PROCESS_ID"]) if env.get("REPSIM_PROCESS_ID") else None)
    if not (spec.enabled or coord):
        return False
    if jax.distributed.is_initialized():
        return True
    jax.distributed.initialize(coordinator_address=coord, num_processes=nproc,
                               process_id=pid)
    return True


def local_mesh():
    """A 1-D ``("data",)`` mesh over this process's devices (Auto axis type)."""
    import jax
    devices = np.array(jax.local_devices())
    try:
        return jax.sharding.Mesh(devices, ("data",),
                                 axis_types=(jax.sharding.AxisType.Auto,))
    except (TypeError, AttributeError):
        return jax.sharding.Mesh(devices, ("data",))


def _process_info() -> tuple[int, int]:
    """(process index, process count) of this run (one place, so tests can fake hosts)."""
    import jax
    return jax.process_index(), jax.process_count()


def _barrier(name: str) -> None:
    import jax
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)


def model_layers(model) -> dict[str, tuple]:
    """Per-image shapes of the capturable layers of ``model``, in forward order (of the
    arrays' order for precomputed activations)."""
    if isinstance(model, PrecomputedActivations):
        return model.layer_shapes()
    from repsim_jax.models import layer_shapes
    return layer_shapes(model)


@dataclasses.dataclass
class SweepContext:
    """What an adapter gets besides its unit: data, models, activations, mesh, store."""
    cfg: SweepConfig
    data: SweepData
    models: dict[str, Any]
    shapes: dict[str, dict[str, tuple]]
    mesh: Any
    store: Store
    progress: bool | None = None   # the sweep's progress= (inner bars of long units)
    _cache: collections.OrderedDict = dataclasses.field(
        default_factory=collections.OrderedDict)
    _images: dict = dataclasses.field(default_factory=dict)
    _act_store: Any = None

    def images(self, model: str) -> np.ndarray:
        """The sweep's images adapted to ``model``'s input shape (cached; decodes a lazy
        data set into memory: for the methods that train on images, cladec/summaries)."""
        if model not in self._images:
            from repsim_jax.data import materialize
            self._images = {model: images_for(self.models[model],
                                              materialize(self.data.images))}
        return self._images[model]

    def _batch_size(self) -> int:
        ndev = self.mesh.devices.size
        return max(ndev, (self.cfg.batch_size // ndev) * ndev)

    def _forward_batches(self, model: str, layers: tuple[str, ...], images):
        """``(start, {layer: host block})`` per batch of ``images`` (an array or a lazy
        view, decoded ahead by background workers), each batch adapted to the model and
        sharded over the mesh when it divides evenly."""
        import jax

        from repsim_jax.models import activations
        ndev = self.mesh.devices.size
        bs = self._batch_size()
        from repsim_jax.data.stream import iter_batches
        for start, batch in iter_batches(images, bs):
            x = images_for(self.models[model], batch)
            # padded to a multiple of the device count inside, sharded over "data"
            out = activations(self.models[model], x, list(layers), batch_size=bs,
                              mesh=self.mesh if ndev > 1 else None)
            yield start, {k: np.asarray(jax.device_get(v)) for k, v in out.items()}

    def activations(self, model: str, layers: tuple[str, ...],
                    indices=None) -> dict[str, np.ndarray]:
        """Activations of ``layers`` (chunked, data-sharded passes), as host arrays; of the
        inputs ``indices`` only when given (the semantic RSM's subset).

        Cached by the exact (model, layers, subset) request, so a unit always gets the
        numbers of the same computation whether or not other units ran before it.
        """
        sub = None if indices is None else tuple(int(i) for i in indices)
        key = (model, tuple(layers), sub)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        import jax

        from repsim_jax.models import activations
        if isinstance(self.models[model], PrecomputedActivations):
            # precomputed: the same host arrays a forward pass would have given
            arrays = self.models[model].arrays
            idx = slice(None) if sub is None else np.asarray(sub, np.int64)
            out = {k: np.asarray(arrays[k][idx], np.float32) for k in layers}
        elif isinstance(self.data.images, np.ndarray):
            ndev = self.mesh.devices.size
            bs = self._batch_size()
            images = self.images(model)
            if sub is not None:
                images = images[np.asarray(sub, np.int64)]
            # chunks (padded to a multiple of the device count) sharded over "data"
            out = activations(self.models[model], images, list(layers), batch_size=bs,
                              mesh=self.mesh if ndev > 1 else None)
            out = {k: np.asarray(jax.device_get(v)) for k, v in out.items()}
        else:   # a lazy data set: decode (in background workers) only what is asked
            view = self.data.images if sub is None else self.data.images.take(sub)
            parts = list(self._forward_batches(model, tuple(layers), view))
            out = {k: np.concatenate([p[k] for _, p in parts]) for k in layers}
        self._cache[key] = out
        while len(self._cache) > 4:
            self._cache.popitem(last=False)
        return out

    def stored_activations(self, model: str, layers: tuple[str, ...]):
        """``{layer: ChunkedActivations}`` of every input: computed batch by batch and
        streamed to the on-disk store (``OUT/activations``, zarr) as they are computed,
        read back in chunks; memory is bounded by the batch/chunk size, not by N. Reused
        when already complete (resume)."""
        from repsim_jax.sweep.store import ActivationStore, ChunkedActivations
        if isinstance(self.models[model], PrecomputedActivations):   # already on disk
            arrays = self.models[model].arrays
            return {l: ChunkedActivations(arrays[l], self._batch_size()) for l in layers}
        if self._act_store is None:
            self._act_store = ActivationStore(self.store.root,
                                              chunk_images=self._batch_size())
        st = self._act_store
        if st.is_done(model, layers):
            return {l: st.open(model, l) for l in layers}
        batches = self._forward_batches(model, tuple(layers), self.data.images)
        first = next(batches)
        shapes = {l: first[1][l].shape[1:] for l in layers}
        import itertools
        return st.write(model, layers, shapes, len(self.data),
                        itertools.chain([first], batches))

    def seed(self, unit) -> int:
        return plan_mod.unit_seed(self.cfg.seed, unit.key)


def _layers_by_model(cfg: SweepConfig, shapes: dict[str, dict[str, tuple]]):
    out = {}
    if isinstance(cfg.layers, str):
        for m, s in shapes.items():
            out[m] = plan_mod.select_layers(cfg.layers, list(s))
        return out
    every = sorted({n for s in shapes.values() for n in s})
    for name in cfg.layers:
        if not any(name in s for s in shapes.values()):
            raise unknown_name("layer", name, every if len(shapes) > 1 else
                               list(next(iter(shapes.values()))))
    for m, s in shapes.items():
        out[m] = [n for n in s if n in cfg.layers]
    return out


def _data_record(data) -> dict[str, Any]:
    """What the manifest records about the data: the files used, those skipped, the
    geometry and the annotation report."""
    info = dict(data.info or {})
    return {"name": data.name, "n_images": len(data), "files": list(data.files),
            "skipped_files": list(info.get("skipped", [])),
            "geometry": info.get("geometry"), "annotations": info.get("annotations"),
            "class_names": list(data.class_names), "concept_names": list(data.concept_names)}


def _device_info() -> dict[str, Any]:
    import jax
    pi, pc = _process_info()
    return {"backend": jax.default_backend(), "process_index": pi, "process_count": pc,
            "local_devices": [str(d) for d in jax.local_devices()],
            "device_count": jax.device_count(), "host": platform.node(),
            "python": sys.version.split()[0], "jax": jax.__version__}


def run_sweep(cfg: SweepConfig, *, progress: bool | None = None,
              echo: Callable[[str], None] | None = print,
              write_report: bool = True) -> Path:
    """Runs (or resumes) the sweep ``cfg``; returns the path of ``report.html``.

    Raises :class:`InputError`/``KeyError`` for bad input (unknown model, layer, data) and
    :class:`SweepError` for a foreign output directory, a full disk or a failed unit.
    """
    from repsim_jax import _progress
    from repsim_jax.sweep import adapters
    import jax
    say = echo or (lambda s: None)
    t_start = time.time()
    check_config(cfg)            # bad options fail before anything is written
    maybe_initialize_distributed(cfg.distributed)
    pi, pc = _process_info()
    chash = config_hash(cfg)
    store = Store(cfg.output, chash, cfg.to_dict())
    # a foreign directory fails before any work (other processes check after process 0
    # has written the manifest, below)
    resumed = store.check_manifest() if pi == 0 else False

    # every input is loaded and validated before anything is written; decoded data
    # (folders, tfds, hf) is resized/cropped by the first model's preprocessing
    models, shapes = {}, {}
    for spec in cfg.models:
        models[spec.name] = load_model(spec, seed=cfg.seed)
        shapes[spec.name] = model_layers(models[spec.name])
    runnable = [m for m in models.values() if not isinstance(m, PrecomputedActivations)]
    data = load_data(cfg.data, preprocess=runnable[0] if runnable else None, seed=cfg.seed,
                     echo=say)
    adapters.check_data(cfg.methods, data)
    for m in models.values():
        if isinstance(m, PrecomputedActivations):
            check_activations_length(m, len(data))
    layers = _layers_by_model(cfg, shapes)
    units = plan_mod.plan_units(
        cfg.methods, layers, shapes,
        {m: cfg.method_options(m).get("layers", "all") for m in cfg.methods})
    for method in sorted({u.method for u in units}):
        adapters.check_available(method)
    adapters.check_models(units, models)

    if pi == 0:
        if not resumed:
            store.write_manifest(data=_data_record(data))
        removed = store.clean_partial()
        if removed:
            say(f"discarded {len(removed)} unfinished unit(s) of an interrupted run")
    _barrier("repsim-manifest")
    if pi != 0:
        resumed = store.check_manifest()
    say(f"repsim sweep {chash} -> {store.root} ({'resuming' if resumed else 'new'}; "
        f"{len(units)} units; process {pi}/{pc}, {len(jax.local_devices())} local "
        f"{jax.default_backend()} device(s))")
    ctx = SweepContext(cfg, data, models, shapes, local_mesh(), store, progress=progress)
    devices = _device_info()
    stats = {"ran": 0, "resumed": 0}
    for phase in (1, 2):
        mine = plan_mod.partition([u for u in units if u.phase == phase], pi, pc)
        # a bar over the units with ETA on a terminal; in a log one line per finished unit
        bar = _progress.bar(len(mine), desc=f"sweep phase {phase}", unit="unit",
                            progress=progress, auto_lines=False)
        for k, unit in enumerate(mine):
            bar.set_postfix_str(unit.key[:60])
            if store.is_done(unit.key):
                bar.update(1)
                stats["resumed"] += 1
                store.append_log({"unit": unit.key, "status": "resumed", "process": pi})
                continue
            t0 = time.time()
            try:
                result = adapters.run_unit(unit, ctx)
            except (InputError, KeyError, SweepError):
                raise
            except Exception as e:  # noqa: BLE001 - name the unit that failed
                raise SweepError(f"unit {unit.key} failed: {type(e).__name__}: {e}") from e
            seconds = time.time() - t0
            bar.update(1)
            store.save(unit.key, result, {"seconds": seconds, "process": pi,
                                          "devices": devices["local_devices"]})
            stats["ran"] += 1
            store.append_log({"unit": unit.key, "status": "ran", "seconds": round(seconds, 3),
                              "process": pi, "devices": devices["local_devices"],
                              "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
            eta = bar.eta()
            line = (f"  {unit.key}: {seconds:.1f} s ({k + 1}/{len(mine)} units of phase "
                    f"{phase}" + (f", ETA {eta:.0f} s)" if eta and k + 1 < len(mine) else ")"))
            if bar.mode == "lines":
                say(line)
            else:
                bar.log(line)
        bar.close()
        _barrier(f"repsim-phase-{phase}")
    report_path = store.root / "report.html"
    if pi == 0 and write_report:
        from repsim_jax.sweep import report
        run_info = {"config_hash": chash, "devices": devices, "units": len(units),
                    "ran": stats["ran"], "resumed": stats["resumed"],
                    "seconds": round(time.time() - t_start, 2)}
        report_path = report.write_report(store, cfg, units, run_info)
        atomic_write_text(store.root / "run_log.json", json.dumps(
            {**run_info, "unit_seconds": {u.key: store.unit_info(u.key).get("seconds")
                                          for u in units}}, indent=2))
    _barrier("repsim-report")
    say(f"{stats['ran']} unit(s) computed, {stats['resumed']} resumed, "
        f"{time.time() - t_start:.1f} s")
    return report_path
