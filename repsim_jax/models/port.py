"""Safe loading of PyTorch-format weights and porting them into the nnx models.

Loading (:func:`load_state_dict`) never executes code from the file:

* ``.pt``/``.pth`` **zip** format (``torch.save`` since 1.6): ``<root>/data.pkl`` is read by
  a restricted :class:`pickle.Unpickler` and the raw tensor storages ``<root>/data/<key>``
  are read as numpy buffers.
* **legacy** ``torch.save(..., _use_new_zipfile_serialization=False)``: a stream of pickles
  (magic number, protocol, system info, the object, the storage keys) followed, per
  storage, by its element count (int64) and raw bytes.
* ``.safetensors``: an 8-byte little-endian header length, a JSON header
  ``{name: {dtype, shape, data_offsets}}`` and the raw data (parsed here, no dependency).
* ``.npz``: ``numpy.load(allow_pickle=False)``.

The format is detected from the file's first bytes, not its name. The restricted
unpickler resolves only the globals a tensor state_dict needs (``collections.OrderedDict``,
``torch._utils._rebuild_tensor[_v2]``, ``torch._utils._rebuild_parameter``, the
``torch.*Storage`` types) to local stand-ins - torch is never imported - and raises
:class:`UnsafeWeightsError` naming any other global (``os.system``, ``builtins.eval``...)
*before* it could be called. Corrupt or truncated files raise :class:`WeightsFileError`.

Porting (:func:`port_torchvision`): the nnx models store each parameter under its
torchvision key (see :mod:`repsim_jax.models.layers`), so a key maps to a parameter by
name; layouts convert as

.. math::
   W^{\\text{conv}}_{hwio} = W^{\\text{torch}}_{oihw}, \\qquad
   W^{\\text{linear}}_{io} = W^{\\text{torch}}_{oi},

BatchNorm ``weight``/``bias``/``running_mean``/``running_var`` copy as they are and
``num_batches_tracked`` is ignored. Missing, unexpected and mis-shaped keys are collected
and reported together, by name, in one :class:`PortError`.
"""
from __future__ import annotations

import collections
import io
import json
import os
import pickle
import struct
import zipfile
from pathlib import Path
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from repsim_jax._checks import InputError

__all__ = ["WeightsFileError", "UnsafeWeightsError", "PortError", "load_state_dict",
           "port_torchvision", "export_state_dict", "save_npz", "save_safetensors",
           "load_ported"]

_IGNORED_SUFFIXES = ("num_batches_tracked",)


class WeightsFileError(InputError):
    """A weights file is missing, empty, truncated, corrupt or of an unknown format."""


class UnsafeWeightsError(WeightsFileError):
    """A pickled weights file refers to a global that could execute code; nothing was run."""


class PortError(InputError):
    """A state_dict does not fit the model (missing / unexpected / mis-shaped keys)."""


# ----------------------------------------------------------------------------- torch pickle

def _bf16():
    import ml_dtypes
    return np.dtype(ml_dtypes.bfloat16)


_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": "bfloat16", "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class _StorageType:
    """Stand-in for ``torch.FloatStorage`` & co: only carries the element dtype."""

    def __init__(self, name: str):
        self.name = name
        dt = _STORAGE_DTYPES[name]
        self.dtype = _bf16() if dt == "bfloat16" else np.dtype(dt)


class _Storage:
    """A storage referenced by key; its data is filled in after unpickling."""

    def __init__(self, key: str, dtype: np.dtype, numel: int):
        self.key, self.dtype, self.numel = key, dtype, int(numel)
        self.data: np.ndarray | None = None


class _TensorRef:
    """A tensor view (offset, size, stride) into a storage, materialised at the end."""

    def __init__(self, storage, offset, size, stride):
        if not isinstance(storage, _Storage):
            raise WeightsFileError("tensor without a storage in the pickle")
        self.storage, self.offset = storage, int(offset)
        self.size, self.stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)

    def materialise(self) -> np.ndarray:
        data = self.storage.data
        if data is None:
            raise WeightsFileError(f"storage {self.storage.key!r} has no data")
        if len(self.size) != len(self.stride):
            raise WeightsFileError(f"tensor size {self.size} and stride {self.stride} differ "
                                   f"in rank")
        if any(s == 0 for s in self.size):
            return np.zeros(self.size, data.dtype)
        if int(np.prod(self.size, dtype=np.int64)) > data.size:
            # a stride-0 view may be legal in torch, but in a weights file it is also the
            # way to make a tiny file expand into terabytes: refuse it
            raise WeightsFileError(f"tensor of size {self.size} has more elements than its "
                                   f"storage {self.storage.key!r} ({data.size})")
        last = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride))
        if self.offset < 0 or min(self.stride, default=0) < 0 or last >= data.size:
            raise WeightsFileError(
                f"tensor of size {self.size} (offset {self.offset}, stride {self.stride}) "
                f"reads past the end of storage {self.storage.key!r} ({data.size} elements)")
        item = data.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(
            data[self.offset:], shape=self.size, strides=[s * item for s in self.stride])
        return np.array(view)


def _rebuild_tensor(storage, storage_offset, size, stride, *_ignored):
    return _TensorRef(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *_ignored):
    return data


_ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    **{("torch", name): _StorageType(name) for name in _STORAGE_DTYPES},
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only :data:`_ALLOWED_GLOBALS`; storages become :class:`_Storage` records."""

    def __init__(self, file, storages: dict, source: str):
        super().__init__(file)
        self._storages = storages
        self._source = source

    def find_class(self, module, name):
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafeWeightsError(
                f"{self._source}: refusing to load the global {module}.{name} - a weights "
                f"file should only hold tensors; nothing was executed. If you trust the file, "
                f"re-save its state_dict with safetensors or numpy.savez") from None

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise WeightsFileError(f"{self._source}: unsupported persistent id {pid!r:.80}")
        storage_type, key, _location, numel = pid[1:5]
        if not isinstance(storage_type, _StorageType):
            raise WeightsFileError(f"{self._source}: storage of unknown type {storage_type!r:.60}")
        key = str(key)
        if key not in self._storages:
            self._storages[key] = _Storage(key, storage_type.dtype, numel)
        return self._storages[key]


def _materialise(obj):
    if isinstance(obj, _TensorRef):
        return obj.materialise()
    if isinstance(obj, Mapping):
        return {k: _materialise(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_materialise(v) for v in obj)
    return obj


def _load_torch_zip(zf: zipfile.ZipFile, source: str):
    names = zf.namelist()
    pkl = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
    if not pkl:
        raise WeightsFileError(f"{source}: zip file holds no <root>/data.pkl (not a torch.save "
                               f"file)")
    root = pkl[0].rsplit("/", 1)[0]
    big_endian = False
    if f"{root}/byteorder" in names:
        big_endian = zf.read(f"{root}/byteorder").strip() == b"big"
    storages: dict[str, _Storage] = {}
    obj = _RestrictedUnpickler(io.BytesIO(zf.read(pkl[0])), storages, source).load()
    for key, st in storages.items():
        member = f"{root}/data/{key}"
        if member not in names:
            raise WeightsFileError(f"{source}: storage {member!r} is missing from the archive")
        raw = zf.read(member)
        need = st.numel * st.dtype.itemsize
        if len(raw) < need:
            raise WeightsFileError(f"{source}: storage {member!r} has {len(raw)} bytes, "
                                   f"expected {need} (truncated?)")
        dt = st.dtype.newbyteorder(">") if big_endian and st.dtype.itemsize > 1 else st.dtype
        st.data = np.frombuffer(raw, dt, count=st.numel).astype(st.dtype, copy=False)
    return obj


_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


def _load_torch_legacy(f, source: str):
    storages: dict[str, _Storage] = {}

    def load_one():
        return _RestrictedUnpickler(f, storages, source).load()

    magic = load_one()
    if magic != _LEGACY_MAGIC:
        raise WeightsFileError(f"{source}: a pickle but not a torch.save file (bad magic "
                               f"number); refusing to interpret arbitrary pickles")
    protocol = load_one()
    if protocol != 1001:
        raise WeightsFileError(f"{source}: unsupported legacy torch protocol {protocol!r}")
    load_one()  # sys_info: endianness and type sizes
    obj = load_one()
    keys = load_one()
    if not isinstance(keys, list):
        raise WeightsFileError(f"{source}: malformed storage key list")
    for key in keys:
        st = storages.get(str(key))
        if st is None:
            raise WeightsFileError(f"{source}: storage key {key!r} not referenced by any tensor")
        head = f.read(8)
        if len(head) < 8:
            raise WeightsFileError(f"{source}: file ends before storage {key!r} (truncated)")
        (numel,) = struct.unpack("<q", head)
        if numel != st.numel:
            raise WeightsFileError(f"{source}: storage {key!r} has {numel} elements on disk, "
                                   f"{st.numel} in the pickle (corrupt)")
        nbytes = numel * st.dtype.itemsize
        raw = f.read(nbytes)
        if len(raw) < nbytes:
            raise WeightsFileError(f"{source}: storage {key!r} has {len(raw)} of {nbytes} bytes "
                                   f"(truncated)")
        st.data = np.frombuffer(raw, st.dtype)
    return obj


# ----------------------------------------------------------------------------- safetensors

_SAFETENSORS_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16,
                       "BF16": "bfloat16", "I64": np.int64, "I32": np.int32, "I16": np.int16,
                       "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}


def _load_safetensors(raw: bytes, source: str) -> dict[str, np.ndarray]:
    if len(raw) < 8:
        raise WeightsFileError(f"{source}: too short for a safetensors file")
    (n,) = struct.unpack("<Q", raw[:8])
    if n > len(raw) - 8:
        raise WeightsFileError(f"{source}: safetensors header of {n} bytes exceeds the file "
                               f"({len(raw)} bytes; truncated?)")
    try:
        header = json.loads(raw[8:8 + n])
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise WeightsFileError(f"{source}: corrupt safetensors header ({e})") from None
    if not isinstance(header, dict):
        raise WeightsFileError(f"{source}: safetensors header is not a JSON object")
    data = memoryview(raw)[8 + n:]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            code, shape, (begin, end) = info["dtype"], info["shape"], info["data_offsets"]
            dt = _SAFETENSORS_DTYPES[code]
        except (KeyError, TypeError, ValueError):
            raise WeightsFileError(f"{source}: bad safetensors entry for {name!r}: "
                                   f"{info!r:.120}") from None
        dt = _bf16() if dt == "bfloat16" else np.dtype(dt)
        need = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
        if not (0 <= begin <= end <= len(data)) or end - begin != need:
            raise WeightsFileError(
                f"{source}: tensor {name!r} (shape {shape}, {code}) has byte range "
                f"[{begin}, {end}) but the data section has {len(data)} bytes (truncated?)")
        out[name] = np.frombuffer(data[begin:end], dt).reshape(shape).copy()
    return out


# ----------------------------------------------------------------------------- front door

def _flatten(obj, prefix: str, out: dict):
    if isinstance(obj, np.ndarray):
        out[prefix] = obj
    elif isinstance(obj, Mapping):
        for k, v in obj.items():
            _flatten(v, f"{prefix}.{k}" if prefix else str(k), out)


def _as_state_dict(obj, source: str) -> dict[str, np.ndarray]:
    if isinstance(obj, Mapping):
        for wrapper in ("state_dict", "model_state_dict", "model"):
            inner = obj.get(wrapper)
            if isinstance(inner, Mapping) and not any(isinstance(v, np.ndarray)
                                                      for v in obj.values()):
                obj = inner
                break
    out: dict[str, np.ndarray] = {}
    _flatten(obj, "", out)
    if not out:
        raise WeightsFileError(f"{source}: no tensors found (expected a state_dict)")
    if all(k.startswith("module.") for k in out):  # saved from DataParallel
        out = {k[len("module."):]: v for k, v in out.items()}
    return out


def load_state_dict(path) -> dict[str, np.ndarray]:
    """Reads a state_dict ``{key: numpy array}`` from .pt/.pth (zip or legacy), .safetensors or .npz.

    No pickled code is executed (see the module docstring). A checkpoint that wraps the
    state_dict (``{"state_dict": ...}``, ``{"model": ...}``) is unwrapped, a ``module.``
    prefix is stripped, and nested dicts are flattened to dotted keys.

    Raises :class:`WeightsFileError` for missing/empty/truncated/corrupt/unknown files and
    :class:`UnsafeWeightsError` for a pickle that refers to anything but tensors.
    """
    path = Path(os.fspath(path))
    source = str(path)
    if not path.is_file():
        raise WeightsFileError(f"{source}: no such weights file")
    with open(path, "rb") as f:
        head = f.read(9)
    if not head:
        raise WeightsFileError(f"{source}: empty file")
    size = path.stat().st_size
    try:
        if len(head) == 9 and head[8:9] == b"{" and struct.unpack("<Q", head[:8])[0] <= size - 8:
            obj = _load_safetensors(path.read_bytes(), source)
        elif head[:2] == b"PK":
            try:
                zf = zipfile.ZipFile(path)
            except zipfile.BadZipFile as e:
                raise WeightsFileError(f"{source}: corrupt or truncated zip archive ({e})") \
                    from None
            with zf:
                names = zf.namelist()
                if any(n.endswith("data.pkl") for n in names):
                    obj = _load_torch_zip(zf, source)
                elif names and all(n.endswith(".npy") for n in names):
                    obj = _load_npz(path, source)
                else:
                    raise WeightsFileError(f"{source}: zip archive is neither a torch.save "
                                           f"file nor an .npz (members: {names[:5]})")
        elif head[0] == 0x80:
            with open(path, "rb") as f:
                obj = _load_torch_legacy(f, source)
        elif len(head) == 9 and head[8:9] == b"{":
            raise WeightsFileError(f"{source}: safetensors header length exceeds the file "
                                   f"({size} bytes; truncated?)")
        else:
            raise WeightsFileError(f"{source}: unrecognised weights format (expected a torch "
                                   f".pt/.pth, .safetensors or .npz file)")
        return _as_state_dict(_materialise(obj), source)
    except WeightsFileError:
        raise
    except (EOFError, pickle.UnpicklingError, zipfile.BadZipFile, struct.error, ValueError,
            TypeError, IndexError, KeyError, AttributeError, OSError, RuntimeError) as e:
        raise WeightsFileError(f"{source}: corrupt or truncated weights file "
                               f"({type(e).__name__}: {e})") from None


def _load_npz(path: Path, source: str) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except ValueError as e:
        raise WeightsFileError(f"{source}: .npz holds pickled objects or is corrupt ({e}); "
                               f"only plain numeric arrays are accepted") from None


# ----------------------------------------------------------------------------- porting

def _to_model_layout(arr: np.ndarray, ndim: int) -> np.ndarray:
    if ndim == 4 and arr.ndim == 4:
        return np.transpose(arr, (2, 3, 1, 0))  # OIHW -> HWIO
    if ndim == 2 and arr.ndim == 2:
        return arr.T  # (out, in) -> (in, out)
    return arr


def _to_torch_layout(arr: np.ndarray) -> np.ndarray:
    if arr.ndim == 4:
        return np.transpose(arr, (3, 2, 0, 1))  # HWIO -> OIHW
    if arr.ndim == 2:
        return arr.T
    return arr


def _torch_shape(shape: tuple) -> tuple:
    if len(shape) == 4:
        return (shape[3], shape[2], shape[0], shape[1])
    if len(shape) == 2:
        return (shape[1], shape[0])
    return tuple(shape)


def _model_variables(model) -> dict[str, tuple]:
    flat = nnx.to_flat_state(nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat)))
    return {".".join(map(str, path)): (path, var) for path, var in flat}


def _summarise(label: str, names: list[str], limit: int = 25) -> str:
    shown = ", ".join(names[:limit])
    more = f" ... (+{len(names) - limit} more)" if len(names) > limit else ""
    return f"{label} ({len(names)}): {shown}{more}"


def port_torchvision(model, state_dict: Mapping[str, np.ndarray] | str | os.PathLike, *,
                     strict: bool = True):
    """Copies a torchvision-named state_dict into ``model`` (in place) and returns it.

    ``state_dict`` is a mapping ``{key: array}`` (numpy or torch tensors) or a path for
    :func:`load_state_dict`. Conv weights convert OIHW -> HWIO, Linear weights are
    transposed, BatchNorm statistics copy as they are, ``*.num_batches_tracked`` is
    ignored. All problems are reported together in one :class:`PortError`: keys the model
    needs but the state_dict lacks (``missing``), keys the model does not have
    (``unexpected``; both skipped when ``strict=False``), keys whose shape differs
    (``mis-shaped``, always an error, shapes given in torch layout) and non-finite values.

    ``model`` may be abstract (``nnx.eval_shape(lambda: build(...))``), which skips the
    random initialisation; every parameter must then come from the state_dict.
    """
    if isinstance(state_dict, (str, os.PathLike)):
        state_dict = load_state_dict(state_dict)
    if not isinstance(state_dict, Mapping):
        raise PortError(f"state_dict: expected a mapping of names to arrays, got "
                        f"{type(state_dict).__name__}")
    variables = _model_variables(model)
    given = {k: v for k, v in state_dict.items() if not k.endswith(_IGNORED_SUFFIXES)}
    missing = [k for k in variables if k not in given]
    unexpected = [k for k in given if k not in variables]
    misshaped, nonfinite, updates = [], [], []
    for key, value in given.items():
        if key not in variables:
            continue
        path, var = variables[key]
        arr = value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)
        want = tuple(var.shape)
        if arr.ndim != len(want) or _to_model_layout(arr, len(want)).shape != want:
            misshaped.append(f"{key} (got {tuple(arr.shape)}, model needs "
                             f"{_torch_shape(want)})")
            continue
        arr = _to_model_layout(arr, len(want))
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            nonfinite.append(key)
            continue
        updates.append((path, var.replace(jnp.asarray(arr, dtype=var.dtype))))
    problems = []
    unset = [k for k in missing if isinstance(variables[k][1].get_value(), jax.ShapeDtypeStruct)]
    if unset and not strict:
        problems.append(_summarise("missing keys of an abstract (nnx.eval_shape) model", unset))
    if misshaped:
        problems.append(_summarise("mis-shaped keys", misshaped))
    if nonfinite:
        problems.append(_summarise("keys with NaN/Inf values", nonfinite))
    if strict and missing:
        problems.append(_summarise("missing keys", missing))
    if strict and unexpected:
        problems.append(_summarise("unexpected keys", unexpected))
    if problems:
        arch = getattr(model, "arch", None) or type(model).__name__
        raise PortError(f"state_dict does not fit {arch} "
                        f"({len(variables)} parameters/statistics expected, "
                        f"{len(given)} given; wrong architecture?):\n  "
                        + "\n  ".join(problems))
    nnx.update(model, nnx.from_flat_state(updates))
    return model


def export_state_dict(model) -> dict[str, np.ndarray]:
    """The model's parameters as a torchvision-layout state_dict (inverse of porting)."""
    return {k: np.ascontiguousarray(_to_torch_layout(np.asarray(var[...])))
            for k, (_, var) in _model_variables(model).items()}


def save_npz(model_or_state_dict, path) -> Path:
    """Writes a torchvision-layout state_dict (or a model's, via :func:`export_state_dict`) as .npz."""
    sd = model_or_state_dict if isinstance(model_or_state_dict, Mapping) \
        else export_state_dict(model_or_state_dict)
    path = Path(path)
    with open(path, "wb") as f:
        np.savez(f, **{k: np.asarray(v) for k, v in sd.items()})
    return path


_NP_TO_SAFETENSORS = {np.dtype(v) if v != "bfloat16" else None: k
                      for k, v in _SAFETENSORS_DTYPES.items() if v != "bfloat16"}


def save_safetensors(model_or_state_dict, path) -> Path:
    """Writes a torchvision-layout state_dict (or a model's) as .safetensors (no dependency)."""
    sd = model_or_state_dict if isinstance(model_or_state_dict, Mapping) \
        else export_state_dict(model_or_state_dict)
    header, chunks, offset = {}, [], 0
    for k, v in sd.items():
        a = np.ascontiguousarray(np.asarray(v))
        code = _NP_TO_SAFETENSORS.get(a.dtype.newbyteorder("="))
        if code is None:
            raise InputError(f"{k}: dtype {a.dtype} cannot be written to safetensors")
        b = a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes()
        header[k] = {"dtype": code, "shape": list(a.shape),
                     "data_offsets": [offset, offset + len(b)]}
        chunks.append(b)
        offset += len(b)
    hb = json.dumps(header, separators=(",", ":")).encode()
    hb += b" " * (-len(hb) % 8)
    path = Path(path)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hb)))
        f.write(hb)
        for b in chunks:
            f.write(b)
    return path


def load_ported(name: str, weights, *, num_classes: int | None = None,
                input_shape=None, strict: bool = True):
    """Builds architecture ``name`` and ports ``weights`` (a path or state_dict) into it.

    ``num_classes`` defaults to the output size of the state_dict's last layer
    (``fc.weight`` or the last ``classifier.N.weight``).
    """
    from repsim_jax.models import build

    sd = load_state_dict(weights) if isinstance(weights, (str, os.PathLike)) else dict(weights)
    if num_classes is None:
        heads = [k for k in sd if k == "fc.weight"] or sorted(
            (k for k in sd if k.startswith("classifier.") and k.endswith(".weight")),
            key=lambda k: int(k.split(".")[1]) if k.split(".")[1].isdigit() else -1)
        num_classes = int(np.shape(sd[heads[-1]])[0]) if heads else 1000
    def make():
        return build(name, num_classes=num_classes, input_shape=input_shape, rngs=nnx.Rngs(0))

    # strict porting overwrites every parameter: skip the random init (abstract model)
    model = nnx.eval_shape(make) if strict else make()
    return port_torchvision(model, sd, strict=strict)
