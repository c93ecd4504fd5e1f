"""The measure registry: every measure as ``prepare`` (per representation) + ``pair``.

A measure ``m(X, Y)`` is split into ``prepare(X, opts) -> stats`` (everything that depends
on one representation only: centring, SVD bases, Gram/RDM matrices, neighbour lists) and
``pair(px, py, opts) -> scalar``. The layer-level API prepares every layer once and then
runs ``pair`` over all layer pairs (vmapped), and the permutation test re-orders the
prepared stats of one side with ``permute(stats, perm)`` instead of recomputing them
(row re-ordering for per-input stats, rows and columns for input x input matrices).

All runners are module-level ``jax.jit`` functions with the measure name and its options
as static arguments, so a measure compiles once per input shape and option set.

A measure may also carry a :class:`FastPath` for the all-pairs sweep
(:func:`~repsim_jax.similarity.compare_layers` without resampling): ``prepare`` maps a
stack of equal-shape layers to stacked per-layer statistics (it may run steps on the host,
e.g. numpy's median / ranking, which XLA:CPU sorts slowly), ``grid`` maps two such stacks
to the (La, Lb) values (typically one matmul for all pairs), ``plan`` picks a route from
the sizes of the whole sweep (a static value passed to both) and ``nbytes`` is the size of
one layer's statistics (compare_layers chunks the layers to a memory budget). The values
equal ``pair(prepare(X), prepare(Y))`` up to float rounding (tests assert 1e-5).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from repsim_jax._checks import InputError, as_float_array, check_same_length, unknown_name

__all__ = ["Measure", "FastPath", "MEASURES", "register", "freeze", "resolve", "as_array",
           "check_pair", "permute_rows", "permute_gram"]


@dataclasses.dataclass(frozen=True)
class FastPath:
    """All-pairs route of a measure (module docstring). Signatures:
    ``prepare(stack (L, N, D), opts, plan) -> stats``, ``grid(stats_a, stats_b, opts, plan)
    -> (La, Lb) numpy``, ``plan(N, dims_a, dims_b, opts) -> hashable``,
    ``nbytes(N, D, opts, plan) -> int``."""
    prepare: Callable[[jax.Array, dict, Any], Any]
    grid: Callable[[Any, Any, dict, Any], np.ndarray]
    nbytes: Callable[[int, int, dict, Any], int]
    plan: Callable[[int, list, list, dict], Any] = lambda n, da, db, o: None


@dataclasses.dataclass(frozen=True)
class Measure:
    """One similarity measure (see the module docstring).

    ``defaults``: its options and their default values (the only options it accepts);
    ``similarity``: True when larger values mean more similar (CKA, CCA, ...), False for
    distances (Procrustes); this sets the side of the permutation test.
    """
    name: str
    prepare: Callable[[jax.Array, dict], Any]
    pair: Callable[[Any, Any, dict], jax.Array]
    permute: Callable[[Any, jax.Array], Any]
    defaults: Mapping[str, Any]
    similarity: bool = True
    check: Callable[[dict], None] | None = None
    min_n: int = 2
    fast: Callable[[dict], FastPath | None] | None = None
    """``fast(opts)``: the all-pairs route for these options, or None (generic grid)."""


MEASURES: dict[str, Measure] = {}
# names under which a measure with fixed options is known in tables ("cka_debiased", ...)
ALIASES: dict[str, tuple[str, dict]] = {}


def register(m: Measure, aliases: Mapping[str, dict] | None = None) -> Measure:
    MEASURES[m.name] = m
    for alias, opts in (aliases or {}).items():
        ALIASES[alias] = (m.name, dict(opts))
    return m


def freeze(opts: Mapping[str, Any]) -> tuple:
    """Options as a hashable, sorted tuple (a static jit argument)."""
    return tuple(sorted((str(k), v) for k, v in opts.items()))


def resolve(measure, options: Mapping[str, Any] | None = None) -> tuple[str, tuple]:
    """``(registered name, frozen full options)`` of a measure name/alias plus options."""
    if not isinstance(measure, str):
        raise InputError(f"measure: expected a name, got {type(measure).__name__}")
    if measure in ALIASES:
        name, fixed = ALIASES[measure]
    elif measure in MEASURES:
        name, fixed = measure, {}
    else:
        raise unknown_name("similarity measure", measure, sorted({*MEASURES, *ALIASES}))
    m = MEASURES[name]
    given = dict(options or {})
    bad = set(given) - set(m.defaults)
    if bad:
        raise InputError(f"measure {measure!r} takes no option(s) {sorted(bad)}; valid: "
                         f"{sorted(m.defaults)}")
    clash = {k for k in given if k in fixed and given[k] != fixed[k]}
    if clash:
        raise InputError(f"measure {measure!r} fixes option(s) {sorted(clash)}; use "
                         f"{name!r} to set them")
    opts = {**m.defaults, **fixed, **given}
    if m.check is not None:
        m.check(opts)
    return name, freeze(opts)


def as_array(x, name: str) -> jax.Array:
    """A validated (N, D) float array on the device (float32 unless x64 is enabled)."""
    as_float_array(x, name, ndim=2)
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating) or x.dtype == jnp.float16 \
            or x.dtype == jnp.bfloat16:
        x = x.astype(jnp.float32)
    return x


def check_pair(X, Y, min_n: int = 2) -> tuple[jax.Array, jax.Array]:
    X, Y = as_array(X, "X"), as_array(Y, "Y")
    check_same_length("X", X, "Y", Y)
    if X.shape[0] < min_n:
        raise InputError(f"X, Y: this measure needs at least {min_n} inputs, got "
                         f"N={X.shape[0]}")
    if X.dtype != Y.dtype:
        dt = jnp.promote_types(X.dtype, Y.dtype)
        X, Y = X.astype(dt), Y.astype(dt)
    return X, Y


def permute_rows(stats, perm):
    """Stats whose every array has the inputs on axis 0 (centred features, bases)."""
    return jax.tree_util.tree_map(lambda a: a[perm], stats)


def permute_gram(a, perm):
    """An input x input matrix, re-ordered on both axes."""
    return a[perm][:, perm]


# ------------------------------------------------------------------ generic runners
def _value(name: str, opts: tuple, X, Y):
    m = MEASURES[name]
    o = dict(opts)
    return m.pair(m.prepare(X, o), m.prepare(Y, o), o)


@functools.partial(jax.jit, static_argnames=("name", "opts"))
def value_jit(X, Y, *, name: str, opts: tuple):
    """``measure(X, Y)`` for one pair (jitted once per name, options and shapes)."""
    return _value(name, opts, X, Y)


def run(measure: str, X, Y, options: Mapping[str, Any]) -> jax.Array:
    """Validates the inputs and options and returns the scalar ``measure(X, Y)``."""
    name, opts = resolve(measure, options)
    X, Y = check_pair(X, Y, MEASURES[name].min_n)
    return value_jit(X, Y, name=name, opts=opts)


def _unused(*_):  # pragma: no cover - placeholder for measures without a check
    return None


def np_float(x) -> float:
    return float(np.asarray(x))
