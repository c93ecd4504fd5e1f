"""Input validation shared by every method: clear errors that name the problem.

Every public entry point validates its arrays with these helpers *before* any jit-compiled
work, so that a bad input never turns into a silent wrong answer.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


class InputError(ValueError):
    """A user input is malformed (shape, dtype, NaN/Inf, empty, unknown name...)."""


def as_float_array(x, name: str, *, ndim: int | Sequence[int] | None = None,
                   allow_nan: bool = False) -> np.ndarray | object:
    """Checks that ``x`` is a real floating (or integer) array of the given rank, all finite.

    Returns ``x`` unchanged (a numpy or jax array); raises :class:`InputError` naming
    ``name`` otherwise.
    """
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        x = np.asarray(x)
    dt = np.dtype(x.dtype)
    if dt.kind not in "fiub" or dt == np.bool_:
        raise InputError(f"{name}: expected a real numeric array, got dtype {dt}")
    if ndim is not None:
        dims = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if x.ndim not in dims:
            raise InputError(f"{name}: expected {' or '.join(map(str, dims))} dimensions, "
                             f"got shape {tuple(x.shape)}")
    if any(int(s) == 0 for s in x.shape):
        raise InputError(f"{name}: empty array (shape {tuple(x.shape)})")
    if not allow_nan and dt.kind == "f":
        finite = np.isfinite(np.asarray(x))
        if not finite.all():
            n_bad = int((~finite).sum())
            raise InputError(f"{name}: contains {n_bad} NaN/Inf value(s) "
                             f"(shape {tuple(x.shape)})")
    return x


def check_same_length(name_a: str, a, name_b: str, b) -> None:
    """Raises when two arrays disagree on their leading (input) axis."""
    if int(a.shape[0]) != int(b.shape[0]):
        raise InputError(f"{name_a} has {a.shape[0]} inputs but {name_b} has {b.shape[0]}")


def unknown_name(kind: str, name: str, valid: Sequence[str]) -> KeyError:
    """A KeyError for an unknown layer/model/data name that lists the valid ones."""
    import difflib
    close = difflib.get_close_matches(str(name), list(valid), n=3)
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
    return KeyError(f"unknown {kind} {name!r}.{hint} Valid {kind}s: {', '.join(valid)}")
