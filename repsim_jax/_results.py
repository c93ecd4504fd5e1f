"""Result types: every analysis returns a named, frozen dataclass that is a pytree.

``@result`` (class decorator) makes a frozen dataclass, registers it with
``jax.tree_util`` (array-valued fields are leaves, fields named in ``meta=`` are static
auxiliary data), and adds

- ``to_dict()``: ``{field: value}`` with jax arrays as numpy arrays and nested results /
  lists / dicts converted recursively (names of dict inputs are kept as keys);
- ``save(directory)``: ``arrays.npz`` (every array, keyed by its dotted field path) and
  ``result.json`` (everything else, plus ``"type"``); returns the directory;
- ``load_result(directory)`` reads back ``(type name, dict)``.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import jax
import numpy as np

__all__ = ["result", "to_plain", "save_result", "load_result"]


def to_plain(value: Any) -> Any:
    """Recursively converts results, jax arrays, tuples and dicts to numpy / Python."""
    if hasattr(value, "to_dict") and dataclasses.is_dataclass(value):
        return value.to_dict()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, jax.Array):
        return np.asarray(value)
    if isinstance(value, dict):
        return {k: to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_plain(v) for v in value) if isinstance(value, list) else \
            tuple(to_plain(v) for v in value)
    if isinstance(value, np.generic):
        return value.item()
    return value


def _split(value: Any, prefix: str, arrays: dict) -> Any:
    if isinstance(value, np.ndarray) and value.ndim > 0:
        arrays[prefix] = value
        return {"__array__": prefix}
    if isinstance(value, np.ndarray):
        return value.item()
    if isinstance(value, dict):
        return {str(k): _split(v, f"{prefix}.{k}", arrays) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_split(v, f"{prefix}.{i}", arrays) for i, v in enumerate(value)]
    if isinstance(value, float) and not np.isfinite(value):
        return str(value)
    return value


def save_result(obj: Any, directory) -> Path:
    """Writes ``obj.to_dict()`` as ``arrays.npz`` + ``result.json`` under ``directory``."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {}
    body = _split(to_plain(obj), "r", arrays)
    np.savez(d / "arrays.npz", **arrays)
    (d / "result.json").write_text(json.dumps({"type": type(obj).__name__, "result": body},
                                              indent=1, default=str))
    return d


def load_result(directory) -> tuple[str, dict]:
    """``(type name, dict)`` as written by ``save``; arrays come back as numpy arrays."""
    d = Path(directory)
    meta = json.loads((d / "result.json").read_text())
    with np.load(d / "arrays.npz", allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}

    def join(v):
        if isinstance(v, dict) and set(v) == {"__array__"}:
            return arrays[v["__array__"]]
        if isinstance(v, dict):
            return {k: join(x) for k, x in v.items()}
        if isinstance(v, list):
            return [join(x) for x in v]
        return v
    return meta["type"], join(meta["result"])


def result(cls=None, *, meta: tuple[str, ...] = (), eq: bool = True):
    """Class decorator: frozen dataclass + pytree (``meta`` fields static) + to_dict/save.

    ``eq=False`` keeps identity comparison (for results holding arrays)."""
    def wrap(c):
        c = dataclasses.dataclass(frozen=True, eq=eq)(c)
        names = [f.name for f in dataclasses.fields(c)]
        data = [n for n in names if n not in meta]
        jax.tree_util.register_dataclass(c, data_fields=data, meta_fields=list(meta))
        if "to_dict" not in c.__dict__:
            c.to_dict = lambda self: {f: to_plain(getattr(self, f)) for f in names}
        if "save" not in c.__dict__:
            c.save = lambda self, directory: save_result(self, directory)
        return c
    return wrap if cls is None else wrap(cls)
