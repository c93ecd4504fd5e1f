"""Executing a sweep: devices, chunked activations, checkpointed units, resume, hosts.

:func:`run_sweep` plans the units (:mod:`repsim_jax.sweep.plan`), skips those already
checkpointed in the output directory, executes the others through the method adapters
(:mod:`repsim_jax.sweep.adapters`), checkpoints each one as soon as it finishes
(:mod:`repsim_jax.sweep.store`) and finally writes the report
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

Several processes / hosts (``jax.distributed``)
    Start the same command on every host with the same configuration and an output
    directory on a file system all hosts share, plus either ``--distributed`` (cluster
    auto-detection: Cloud TPU, SLURM, Open MPI) or ``--coordinator HOST:PORT
    --num-processes P --process-id I`` (or the environment variables
    ``REPSIM_COORDINATOR``, ``REPSIM_NUM_PROCESSES``, ``REPSIM_PROCESS_ID``).
    :func:`maybe_initialize_distributed` calls ``jax.distributed.initialize`` with them
    (and ``jax_enable_recoverability``, so one process dying does not abort the others).
    Every process plans the same units; :func:`repsim_jax.sweep.plan.partition` gives
    process ``jax.process_index()`` its share (balanced by estimated cost), which it
    computes on its LOCAL devices and writes to the output directory itself. No step needs
    a device collective or a barrier: process 0 prepares the directory and says so;
    an aggregate unit waits until the units it reads are on disk; process 0 waits for
    every unit and writes the report once. Waiting processes watch the others' state and
    heartbeats (:mod:`repsim_jax.sweep.hosts`), so a process that fails or is killed
    makes the others stop with a message naming it (after ``distributed.peer_timeout``
    seconds without a heartbeat, default 60) instead of hanging; running the same
    command again resumes. The built-in models are read from their cache by each process
    alone (:mod:`repsim_jax.models.zoo`); the processes compare fingerprints of their
    models' weights before computing anything.
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
                                    adaptation_line, check_activations_length, images_for,
                                    load_data, load_model)
from repsim_jax.sweep.hosts import Hosts, JaxKV
from repsim_jax.sweep.store import Store, atomic_write_text

__all__ = ["run_sweep", "SweepContext", "maybe_initialize_distributed", "local_mesh",
           "model_layers"]


_OWNED = {"distributed": False}    # True when the sweep called jax.distributed.initialize
_RUNS = {"count": 0}                 # sweep calls in this process (key namespace)


def maybe_initialize_distributed(spec) -> bool:
    """Calls ``jax.distributed.initialize`` when configured (flags or environment).

    Returns whether jax.distributed is active. When the sweep initialises it, it also
    sets ``jax_enable_recoverability`` (a dead process must not abort the others; the
    sweep detects it itself) and shuts it down again at the end of :func:`run_sweep`.
    """
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
    jax.config.update("jax_enable_recoverability", True)
    jax.distributed.initialize(coordinator_address=coord, num_processes=nproc,
                               process_id=pid)
    _OWNED["distributed"] = True
    return True


def _shutdown_distributed() -> None:
    import jax
    if _OWNED["distributed"]:
        _OWNED["distributed"] = False
        try:
            jax.distributed.shutdown()
        except Exception:  # noqa: BLE001 - leaving anyway
            pass


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
    """(process index, process count) of this run."""
    import jax
    return jax.process_index(), jax.process_count()


def _hosts(cfg: SweepConfig) -> Hosts:
    """This process among the sweep's processes (tests replace it to simulate hosts)."""
    pi, pc = _process_info()
    if pc == 1:
        return Hosts(0, 1)
    from jax._src.distributed import global_state
    _RUNS["count"] += 1
    return Hosts(pi, pc, JaxKV(global_state.client), namespace=f"repsim/{_RUNS['count']}",
                 peer_timeout=float(cfg.distributed.peer_timeout),
                 client=global_state.client if _OWNED["distributed"] else None)


def _fingerprint(model) -> float:
    """Sum of every array of a model's state (cheap; equal weights -> equal value)."""
    import jax
    from flax import nnx
    return float(sum(np.asarray(x, np.float64).sum()
                     for x in jax.tree.leaves(nnx.state(model))
                     if np.issubdtype(np.asarray(x).dtype, np.number)))


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

    def images(self, model: str):
        """The sweep's images adapted to ``model``'s input shape, for the methods that run
        the network on images (cladec, summaries).

        In-memory data: one adapted array (cached). A lazy data set is never decoded as a
        whole: it comes back as a :class:`~repsim_jax.data.views.MappedView` that decodes
        and adapts just the items asked for, ``batch_size`` at a time, when read."""
        if model not in self._images:
            if isinstance(self.data.images, np.ndarray):
                adapted = images_for(self.models[model], self.data.images)
            else:
                import functools

                from repsim_jax.data.views import MappedView
                adapted = MappedView(self.data.images,
                                     functools.partial(images_for, self.models[model]),
                                     batch_size=self._batch_size(), name=f"{model} inputs")
            self._images = {model: adapted}
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


def _device_info(pi: int, pc: int) -> dict[str, Any]:
    import jax
    return {"backend": jax.default_backend(), "process_index": pi, "process_count": pc,
            "local_devices": [str(d) for d in jax.local_devices()],
            "device_count": jax.device_count(), "host": platform.node(),
            "python": sys.version.split()[0], "jax": jax.__version__}


def run_sweep(cfg: SweepConfig, *, progress: bool | None = None,
              echo: Callable[[str], None] | None = print,
              write_report: bool = True) -> Path:
    """Runs (or resumes) the sweep ``cfg``; returns the path of ``report.html``.

    Raises :class:`InputError`/``KeyError`` for bad input (unknown model, layer, data) and
    :class:`SweepError` for a foreign output directory, a full disk, a failed unit or a
    failed/vanished peer process. In a multi-process run every process returns the same
    path; only process 0 writes the report.
    """
    check_config(cfg)            # bad options fail before anything is written
    maybe_initialize_distributed(cfg.distributed)
    hosts = _hosts(cfg)
    hosts.start_heartbeat()
    hosts.set_state("loading")
    try:
        path = _run(cfg, hosts, progress, echo, write_report)
        hosts.set_state("finished")
        return path
    except BaseException as e:
        msg = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
        hosts.set_state("failed", error=f"{type(e).__name__}: {msg}"[:2000])
        raise
    finally:
        if hosts.multi:
            if hosts.index == 0:
                hosts.wait_for_exits()      # the service process 0 hosts goes last
            hosts.stop_heartbeat()
            _shutdown_distributed()


def _run(cfg: SweepConfig, hosts: Hosts, progress, echo, write_report) -> Path:
    from repsim_jax import _progress
    from repsim_jax.sweep import adapters
    import jax
    say = echo or (lambda s: None)
    t_start = time.time()
    pi, pc = hosts.index, hosts.count
    chash = config_hash(cfg)
    store = Store(cfg.output, chash, cfg.to_dict())
    # a foreign directory fails before any work (other processes check after process 0
    # has prepared the directory, below)
    resumed = store.check_manifest() if pi == 0 else False

    # every input is loaded and validated before anything is written; decoded data
    # (folders, tfds, hf) is resized/cropped by the first model's preprocessing
    models, shapes = {}, {}
    for spec in cfg.models:
        models[spec.name] = load_model(spec, seed=cfg.seed, progress=progress)
        shapes[spec.name] = model_layers(models[spec.name])
    runnable = [m for m in models.values() if not isinstance(m, PrecomputedActivations)]
    data = load_data(cfg.data, preprocess=runnable[0] if runnable else None, seed=cfg.seed,
                     echo=say)
    # the other models get those images resampled again to their own input: said once each
    for name, m in models.items():
        again = None if isinstance(m, PrecomputedActivations) else \
            adaptation_line(m, tuple(data.images.shape[1:]))
        if again:
            say(f"data for model {name!r}: resampled again from the loaded images, {again}")
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
    prints = {n: _fingerprint(m) for n, m in models.items()} if hosts.multi else {}

    if pi == 0:
        if not resumed:
            store.write_manifest(data=_data_record(data))
        removed = store.clean_partial()
        if removed:
            say(f"discarded {len(removed)} unfinished unit(s) of an interrupted run")
        hosts.publish("start", {"config_hash": chash, "models": prints, "resumed": resumed})
    else:
        hosts.wait(lambda: (hosts.read("start") is not None, [0],
                            "the output directory (process 0 prepares it)"))
        start = hosts.read("start")
        if start["config_hash"] != chash:
            raise SweepError(f"process {pi} has another configuration than process 0 "
                             f"(hash {chash} != {start['config_hash']}): start every "
                             f"process with the same command and files")
        for name, value in prints.items():
            if not np.isclose(value, start["models"].get(name, np.nan), rtol=1e-12):
                raise SweepError(
                    f"model {name!r}: process {pi} has other weights than process 0 "
                    f"(fingerprint {value!r} != {start['models'].get(name)!r}); for "
                    f"built-in models put $REPSIM_CACHE on a file system all hosts share")
        store.check_manifest()
        resumed = bool(start.get("resumed"))
    hosts.set_state("running")
    say(f"repsim sweep {chash} -> {store.root} ({'resuming' if resumed else 'new'}; "
        f"{len(units)} units; process {pi}/{pc}, {len(jax.local_devices())} local "
        f"{jax.default_backend()} device(s))")
    ctx = SweepContext(cfg, data, models, shapes, local_mesh(), store, progress=progress)
    devices = _device_info(pi, pc)
    stats = {"ran": 0, "resumed": 0}
    owner = {u.key: p for phase in (1, 2) for p in range(pc)
             for u in plan_mod.partition([v for v in units if v.phase == phase], p, pc)}

    def owed(p: int) -> str:
        missing = [k for k, o in owner.items() if o == p and not store.is_done(k)]
        return ", ".join(missing[:3]) + (f" and {len(missing) - 3} more"
                                         if len(missing) > 3 else "")

    def on_disk(keys):
        """For hosts.wait: (all done?, owners of the missing ones, what is missing)."""
        def check():
            missing = [k for k in keys if not store.is_done(k)]
            text = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more"
                                             if len(missing) > 3 else "")
            return not missing, sorted({owner[k] for k in missing}), text
        return check

    for phase in (1, 2):
        mine = plan_mod.partition([u for u in units if u.phase == phase], pi, pc)
        # a bar over the units with ETA on a terminal; in a log one line per finished unit
        bar = _progress.bar(len(mine), desc=f"sweep phase {phase}", unit="unit",
                            progress=progress, auto_lines=False)
        for k, unit in enumerate(mine):
            bar.set_postfix_str(unit.key[:60])
            hosts.check_peers(range(pc), owed)     # stop early when a peer failed
            if store.is_done(unit.key):
                bar.update(1)
                stats["resumed"] += 1
                store.append_log({"unit": unit.key, "status": "resumed", "process": pi})
                continue
            if unit.depends:                       # computed by other processes, maybe
                hosts.wait(on_disk(unit.depends))
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
    report_path = store.root / "report.html"
    if pi == 0:
        hosts.wait(on_disk([u.key for u in units]))
    if pi == 0 and write_report:
        from repsim_jax.sweep import report
        run_info = {"config_hash": chash, "devices": devices, "units": len(units),
                    "ran": stats["ran"], "resumed": stats["resumed"],
                    "seconds": round(time.time() - t_start, 2)}
        report_path = report.write_report(store, cfg, units, run_info)
        atomic_write_text(store.root / "run_log.json", json.dumps(
            {**run_info, "unit_seconds": {u.key: store.unit_info(u.key).get("seconds")
                                          for u in units}}, indent=2))
    tail = "" if pc == 1 else ("; report written by this process" if pi == 0 and write_report
                               else "; process 0 writes the report")
    say(f"{stats['ran']} unit(s) computed, {stats['resumed']} resumed, "
        f"{time.time() - t_start:.1f} s{tail}")
    return report_path
