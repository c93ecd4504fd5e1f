"""The one device argument of the library: ``mesh=``.

Every public function that can spread work over devices takes ``mesh=`` and accepts

- ``None``: one device (the default device), no sharding;
- ``"all"``: a 1-D mesh over every device of this process (``jax.local_devices()``), or of
  all processes when ``jax.distributed`` is initialised and the function supports it;
- a :class:`jax.sharding.Mesh`: used as given (work is split over its first axis);
- a sequence of devices: a 1-D mesh over them.

Old names (``devices=``, ``sharding=``) are kept for one release as deprecated aliases via
:func:`resolve_mesh_alias`.
"""
from __future__ import annotations

import warnings
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from repsim_jax._checks import InputError

__all__ = ["as_mesh", "resolve_mesh_alias", "batch_sharding", "replicated", "AXIS"]

AXIS = "devices"
_UNSET = object()


def as_mesh(mesh: Any = None, *, name: str = "mesh") -> Mesh | None:
    """Normalises a ``mesh=`` argument (module docstring) to a Mesh or ``None``."""
    if mesh is None or isinstance(mesh, Mesh):
        return mesh
    if isinstance(mesh, str):
        if mesh != "all":
            raise InputError(f"{name}: expected None, 'all', a jax.sharding.Mesh or a list of "
                             f"devices, got {mesh!r}")
        devs = jax.local_devices()
    elif isinstance(mesh, jax.sharding.Sharding):
        devs = sorted(mesh.device_set, key=lambda d: d.id)
    else:
        try:
            devs = list(mesh)
        except TypeError:
            raise InputError(f"{name}: expected None, 'all', a jax.sharding.Mesh or a list of "
                             f"devices, got {type(mesh).__name__}") from None
        if not devs or not all(hasattr(d, "platform") for d in devs):
            raise InputError(f"{name}: a list of devices must be non-empty and hold "
                             f"jax devices, got {mesh!r}")
    return Mesh(np.array(devs), (AXIS,))


def resolve_mesh_alias(mesh: Any, old_value: Any, old_name: str, func: str) -> Any:
    """``mesh`` unless the caller used the deprecated ``old_name=``; warns then."""
    if old_value is None or old_value is _UNSET:
        return mesh
    warnings.warn(f"{func}({old_name}=...) is deprecated; use mesh=... (same values)",
                  DeprecationWarning, stacklevel=3)
    if mesh is not None:
        raise InputError(f"{func}: give mesh= or the deprecated {old_name}=, not both")
    return old_value


def batch_sharding(mesh: Mesh, ndim: int = 1) -> NamedSharding:
    """Splits an array's leading axis over the mesh's first axis."""
    return NamedSharding(mesh, P(mesh.axis_names[0], *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
    """A full copy on every device of ``mesh``."""
    return NamedSharding(mesh, P())
