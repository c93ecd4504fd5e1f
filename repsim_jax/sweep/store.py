"""The output directory of a sweep: manifest, per-unit result directories, atomic writes.

Layout::

    OUT/manifest.json            configuration + its hash (written once, checked on resume)
    OUT/units/<key>/             one finished unit: arrays.npz + meta.json
    OUT/units/<key>.done.json    written (atomically) only after the unit directory is final
    OUT/log.jsonl                one line per unit executed or skipped (resume)
    OUT/hosts/                   multi-process runs: heartbeat + state of each process
    OUT/arrays, tables, figures, report.html, run_log.json   (repsim_jax.sweep.report)

Nothing half-written is trusted: a unit is written into a temporary directory (fsync'd)
and renamed into place when complete; the ``.done.json`` marker is written after that by
tmp-file + ``os.replace``. A unit is "finished" only when both exist, so a run killed at
any instant leaves units that are either complete or ignored (and recomputed).

Why not orbax for the units: every orbax checkpointer save runs multi-host barriers
(``sync_global_processes`` while creating its temporary directories), even with
``MultiprocessingOptions(active_processes={me})``: in a multi-process run the process that
saves a unit alone blocks in a Gloo all-gather that the others never join. A unit is
written by the one process that computed it, so it is written with plain numpy
(``np.savez``, read back with ``allow_pickle=False``) - no collective, bit-exact.
Directories written by earlier versions (orbax unit checkpoints) are still read.
A full disk (``ENOSPC``/``EDQUOT``) becomes a :class:`SweepError` that says so.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from repsim_jax.sweep.config import SweepError

__all__ = ["Store", "ActivationStore", "ChunkedActivations", "atomic_write_bytes",
           "atomic_write_text", "disk_errors", "to_jsonable"]

_FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


@contextlib.contextmanager
def disk_errors(path):
    """Turns a full disk / quota error while writing ``path`` into a clear SweepError."""
    try:
        yield
    except OSError as e:
        if e.errno in _FULL or "No space left" in str(e):
            raise SweepError(
                f"no space left on the device while writing {path}: free some space (or "
                f"use another --out) and run the same command again; finished units are "
                f"kept and nothing half-written will be trusted") from e
        raise


def to_jsonable(x):
    if isinstance(x, dict):
        return {str(k): to_jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_jsonable(v) for v in x]
    if isinstance(x, (np.bool_, bool)):
        return bool(x)
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating, float)):
        return float(x)
    if isinstance(x, np.ndarray):
        return to_jsonable(x.tolist())
    if hasattr(x, "__array__"):
        return to_jsonable(np.asarray(x))
    return x


def atomic_write_bytes(path, data: bytes) -> None:
    """Writes ``data`` to ``path`` via a temporary file + fsync + ``os.replace``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with disk_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()


def atomic_write_text(path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def _legacy_checkpointer():
    """Reads unit checkpoints written by earlier versions (orbax), one process alone."""
    import jax
    import orbax.checkpoint as ocp
    kwargs = {}
    if jax.process_count() > 1:
        me = jax.process_index()
        kwargs["multiprocessing_options"] = ocp.options.MultiprocessingOptions(
            primary_host=me, active_processes={me}, barrier_sync_key_prefix=f"repsim-p{me}")
    return ocp.Checkpointer(ocp.CompositeCheckpointHandler(), **kwargs)


class Store:
    """Manifest check + per-unit checkpoints of one output directory."""

    def __init__(self, root, cfg_hash: str, cfg_dict: dict[str, Any]):
        self.root = Path(root).absolute()
        self.cfg_hash = cfg_hash
        self.cfg_dict = cfg_dict
        self.units = self.root / "units"
        self._ckpt = None

    # -- manifest ---------------------------------------------------------------------
    def check_manifest(self) -> bool:
        """Raises SweepError when the directory holds another configuration's results (or
        is some other non-empty directory). Returns True when it is ours (a resume).

        A manifest of another configuration that never finished a unit (e.g. a run that
        stopped on bad input before computing anything) holds no results: the directory
        is taken over (False; :meth:`write_manifest` then replaces the manifest)."""
        manifest = self.root / "manifest.json"
        if manifest.is_file():
            try:
                old = json.loads(manifest.read_text())
            except (OSError, json.JSONDecodeError) as e:
                raise SweepError(f"output directory {self.root}: unreadable manifest.json "
                                 f"({e}); delete the directory or choose another --out")
            if old.get("config_hash") != self.cfg_hash:
                if not self.finished_units():
                    return False
                diff = _first_difference(old.get("config", {}), self.cfg_dict)
                raise SweepError(
                    f"output directory {self.root} holds the results of another "
                    f"configuration (hash {old.get('config_hash')} != {self.cfg_hash}"
                    f"{'; first difference: ' + diff if diff else ''}): choose another "
                    f"--out or delete that directory")
            return True
        if self.root.exists() and any(self.root.iterdir()):
            raise SweepError(f"output directory {self.root} is not empty and is not a repsim "
                             f"sweep directory (no manifest.json): choose another --out")
        return False

    def write_manifest(self, data: dict[str, Any] | None = None) -> None:
        """Writes manifest.json; ``data``: what the data set was (files used, skipped)."""
        with disk_errors(self.root):
            self.units.mkdir(parents=True, exist_ok=True)
        extra = {} if data is None else {"data": to_jsonable(data)}
        atomic_write_text(self.root / "manifest.json", json.dumps(
            {"config_hash": self.cfg_hash, "config": self.cfg_dict, **extra,
             "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, indent=2))

    def clean_partial(self) -> list[str]:
        """Removes unit directories without their done-marker and orbax temporaries."""
        removed = []
        if not self.units.is_dir():
            return removed
        for p in self.units.iterdir():
            if p.is_dir() and (".orbax-checkpoint-tmp" in p.name
                               or not (self.units / f"{p.name}.done.json").is_file()):
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p.name)
            elif p.name.startswith(".") and ".tmp" in p.name:
                p.unlink(missing_ok=True)
        return removed

    # -- units ------------------------------------------------------------------------
    def finished_units(self) -> list[str]:
        """Keys of the units with a done-marker (of any configuration)."""
        if not self.units.is_dir():
            return []
        return sorted(p.name[:-len(".done.json")] for p in self.units.glob("*.done.json"))

    def is_done(self, key: str) -> bool:
        marker = self.units / f"{key}.done.json"
        if not (marker.is_file() and (self.units / key).is_dir()):
            return False
        try:
            return json.loads(marker.read_text()).get("config_hash") == self.cfg_hash
        except (OSError, json.JSONDecodeError):
            return False

    def save(self, key: str, result: dict[str, Any], info: dict[str, Any]) -> None:
        """Writes one unit's result (temporary directory -> rename), then marks it done.

        ``result``: {"arrays": {name: array}, "tables": {name: [row dicts]},
        "figures": [figure specs], "meta": {...}}.
        """
        path = self.units / key
        marker = self.units / f"{key}.done.json"
        marker.unlink(missing_ok=True)
        names = sorted(result.get("arrays", {}))
        arrays = {f"a{i}": np.asarray(result["arrays"][n]) for i, n in enumerate(names)}
        meta = to_jsonable({"array_names": names, "tables": result.get("tables", {}),
                            "figures": result.get("figures", []),
                            "meta": result.get("meta", {})})
        tmp = self.units / f".{key}.tmp{os.getpid()}"
        with disk_errors(path):
            shutil.rmtree(tmp, ignore_errors=True)
            try:
                tmp.mkdir(parents=True)
                with open(tmp / "arrays.npz", "wb") as f:
                    np.savez(f, **arrays)
                    f.flush()
                    os.fsync(f.fileno())
                with open(tmp / "meta.json", "w") as f:
                    f.write(json.dumps(meta))
                    f.flush()
                    os.fsync(f.fileno())
                if path.exists():
                    shutil.rmtree(path)
                os.replace(tmp, path)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        atomic_write_text(marker, json.dumps(to_jsonable(
            {"config_hash": self.cfg_hash, "key": key, "n_arrays": len(arrays), **info})))

    def unit_info(self, key: str) -> dict[str, Any]:
        """The done-marker of a finished unit (seconds, process, devices)."""
        return json.loads((self.units / f"{key}.done.json").read_text())

    def load(self, key: str) -> dict[str, Any]:
        marker = json.loads((self.units / f"{key}.done.json").read_text())
        path = self.units / key
        if (path / "meta.json").is_file():
            meta = json.loads((path / "meta.json").read_text())
            with np.load(path / "arrays.npz", allow_pickle=False) as z:
                stored = {k: z[k] for k in z.files}
        else:   # a unit checkpoint of an earlier version (orbax)
            import orbax.checkpoint as ocp
            if self._ckpt is None:
                self._ckpt = _legacy_checkpointer()
            items = {"meta": ocp.args.JsonRestore()}
            if marker.get("n_arrays", 0):
                items["arrays"] = ocp.args.StandardRestore()
            got = self._ckpt.restore(path, ocp.args.Composite(**items))
            meta = got["meta"]
            stored = got["arrays"] if marker.get("n_arrays", 0) else {}
        arrays = {n: np.asarray(stored[f"a{i}"]) for i, n in enumerate(meta["array_names"])}
        return {"arrays": arrays, "tables": meta["tables"], "figures": meta["figures"],
                "meta": meta["meta"], "info": marker}

    def append_log(self, record: dict[str, Any]) -> None:
        line = json.dumps(to_jsonable(record)) + "\n"
        path = self.root / "log.jsonl"
        with disk_errors(path), open(path, "a") as f:
            f.write(line)


def _first_difference(a, b, prefix="") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if k in ("output", "distributed"):
                continue
            if k not in a or k not in b:
                return f"{prefix}{k}"
            d = _first_difference(a[k], b[k], f"{prefix}{k}.")
            if d:
                return d
        return ""
    return "" if a == b else f"{prefix.rstrip('.')}: {a!r} -> {b!r}"


# --------------------------------------------------------------- activations on disk
class ChunkedActivations:
    """Activations of one layer in an on-disk chunked array (zarr v3), read in chunks.

    ``shape`` (N, ...) and ``dtype`` as numpy; :meth:`chunks` yields ``(start, block)``
    of at most ``size`` inputs as float32; :meth:`reduce` is the per-input spatial mean /
    max ((N, h, w, C) -> (N, C)) computed chunk by chunk; :meth:`take` reads a subset.
    Memory is bounded by the chunk size, never by N.
    """

    def __init__(self, array, chunk_images: int):
        self.array = array
        self.chunk_images = int(chunk_images)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape)

    @property
    def dtype(self):
        return np.dtype(self.array.dtype)

    def __len__(self) -> int:
        return int(self.array.shape[0])

    def chunks(self, size: int | None = None):
        size = int(size or self.chunk_images)
        for s in range(0, len(self), size):
            yield s, np.asarray(self.array[s:s + size], np.float32)

    def reduce(self, how: str = "mean", dtype=np.float64) -> np.ndarray:
        """(N, C): the mean / max over the middle (spatial) axes, per chunk, in ``dtype``
        (float64 by default, as INVERT reduces: the same numbers as reducing in memory)."""
        if how not in ("mean", "max"):
            raise SweepError(f"reduction must be 'mean' or 'max', got {how!r}")
        out = None
        for s, block in self.chunks():
            block = block.astype(dtype, copy=False)
            axes = tuple(range(1, block.ndim - 1))
            r = block if not axes else (block.mean(axis=axes) if how == "mean"
                                        else block.max(axis=axes))
            if out is None:
                out = np.empty((len(self), *r.shape[1:]), r.dtype)
            out[s:s + len(r)] = r
        return out

    def take(self, indices) -> np.ndarray:
        idx = np.asarray(indices, np.int64)
        if idx.size and np.all(np.diff(idx) == 1):
            return np.asarray(self.array[int(idx[0]):int(idx[-1]) + 1], np.float32)
        if isinstance(self.array, np.ndarray):      # the numpy memmap fallback
            return np.asarray(self.array[idx], np.float32)
        return np.asarray(self.array.get_orthogonal_selection((idx,)), np.float32)

    def __array__(self, dtype=None, copy=None):
        out = np.asarray(self.array[:], np.float32)
        return out if dtype is None else out.astype(dtype)


class ActivationStore:
    """``OUT/activations/p<process>/<model>/<layer>`` zarr v3 arrays, written batch by batch.

    Why zarr (not tensorstore): zarr 3 is pure Python, a core dependency of the package
    (pyproject.toml, Python >= 3.11), writes the v3 format that tensorstore (and any zarr
    reader) can open, and needs nothing else for this single-writer, append-along-N
    pattern. On Python 3.10 (zarr 3 needs 3.11) the same layout falls back to one numpy
    memmap (``.npy``) per layer. Chunks run along the input axis (``chunk_images`` inputs x the whole per-input shape), uncompressed: activations
    compress poorly and decompression would cost more CPU than the disk read.
    A ``<model>/<group>.done`` marker is written after the last batch, so an interrupted
    write is redone on resume instead of trusted.
    """

    def __init__(self, root, chunk_images: int = 256, dtype: str = "float32",
                 process: int | None = None):
        if process is None:     # each host writes its own copy: no two writers per array
            import jax
            process = jax.process_index()
        self.root = Path(root).absolute() / "activations" / f"p{int(process)}"
        self.chunk_images = int(chunk_images)
        self.dtype = np.dtype(dtype)

    def _path(self, model: str, layer: str) -> Path:
        return self.root / model / layer

    def _marker(self, model: str, layers) -> Path:
        import hashlib
        tag = hashlib.sha256("\n".join(layers).encode()).hexdigest()[:12]
        return self.root / model / f".{tag}.done"

    def is_done(self, model: str, layers) -> bool:
        return self._marker(model, layers).is_file()

    def open(self, model: str, layer: str) -> ChunkedActivations:
        p = self._path(model, layer)
        mm = p.with_name(p.name + ".npy")
        if mm.is_file():
            return ChunkedActivations(np.load(mm, mmap_mode="r"), self.chunk_images)
        import zarr
        return ChunkedActivations(zarr.open_array(str(p), mode="r"), self.chunk_images)

    def _create(self, p: Path, shape, n: int):
        try:
            import zarr
        except ImportError:   # Python 3.10 (zarr 3 needs >= 3.11): a numpy memmap
            return np.lib.format.open_memmap(p.with_name(p.name + ".npy"), mode="w+",
                                             dtype=self.dtype, shape=(n, *shape))
        return zarr.create_array(store=str(p), shape=(n, *shape), dtype=self.dtype,
                                 chunks=(min(self.chunk_images, n), *shape),
                                 compressors=None, overwrite=True)

    def write(self, model: str, layers, shapes: dict[str, tuple], n: int, batches):
        """Writes the ``(start, {layer: block})`` items of ``batches`` into one array per
        layer of ``n`` inputs; returns ``{layer: ChunkedActivations}``."""
        layers = list(layers)
        arrays = {}
        with disk_errors(self.root):
            self._marker(model, layers).unlink(missing_ok=True)
            for l in layers:
                p = self._path(model, l)
                p.parent.mkdir(parents=True, exist_ok=True)
                arrays[l] = self._create(p, tuple(shapes[l]), n)
            written = 0
            for start, out in batches:
                for l in layers:
                    block = np.asarray(out[l])
                    arrays[l][start:start + len(block)] = block.astype(self.dtype, copy=False)
                written += len(next(iter(out.values())))
            for a in arrays.values():
                if isinstance(a, np.memmap):
                    a.flush()
            if written != n:
                raise SweepError(f"activation store: wrote {written} of {n} inputs of "
                                 f"{model}")
            atomic_write_text(self._marker(model, layers), "done\n")
        return {l: self.open(model, l) for l in layers}
