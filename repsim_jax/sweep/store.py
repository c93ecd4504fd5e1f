"""The output directory of a sweep: manifest, per-unit orbax checkpoints, atomic writes.

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

__all__ = ["Store", "atomic_write_bytes", "atomic_write_text", "disk_errors", "to_jsonable"]

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

    def write_manifest(self) -> None:
        with disk_errors(self.root):
            self.units.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.root / "manifest.json", json.dumps(
            {"config_hash": self.cfg_hash, "config": self.cfg_dict,
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
