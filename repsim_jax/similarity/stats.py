r"""Uncertainty for any measure: permutation tests and bootstrap intervals.

* :func:`permutation_test`: the null distribution of ``measure(X, Y[perm])`` over random
  permutations of the inputs of one side (which destroys any relation between X and Y and
  keeps each side's own structure). p-value :math:`(1 + \#\{t_b \ge t\}) / (n + 1)`
  (Phipson & Smyth 2010; :math:`\le` for distances such as Procrustes), so it is never 0
  and is uniform under the null.
* :func:`bootstrap`: percentile interval of ``measure(X[idx], Y[idx])`` over resamples
  of the inputs with replacement (the same indices on both sides). Duplicated inputs enter
  as distinct inputs (for RSA and kNN measures they are distance-0 pairs).

Both draw resample ``i`` from ``jax.random.fold_in(key, i)``, so results depend only on
the key and ``n``, not on the chunking; resamples are vmapped in chunks (``chunk``, default
from a 256 MiB budget) with one compilation per chunk shape (the last chunk is padded).
Permutations re-order a measure's prepared statistics (no new SVD / Gram matrix per
resample); bootstrap resamples recompute them.

``measure`` is a registered name (``"cka_debiased"``, ``"procrustes"``, ...; options as
keyword arguments) or any jit-able function ``f(X, Y) -> scalar`` (define it once at
module level: a new function object compiles anew).
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from repsim_jax._checks import InputError
from repsim_jax._results import result
from repsim_jax.similarity import _measure as M

__all__ = ["permutation_test", "bootstrap", "PermutationResult", "BootstrapResult",
           "as_key"]

BUDGET = 256 << 20


@result(meta=("measure", "alternative"))
class PermutationResult:
    """``value``: the measure on the data; ``p_value``; ``null``: (n,) permuted values."""
    value: Any
    p_value: Any
    null: Any
    measure: str = ""
    alternative: str = "greater"


@result(meta=("measure", "level"))
class BootstrapResult:
    """``value`` on the data, percentile interval ``[ci_low, ci_high]`` at ``level``,
    ``samples``: (n,) resampled values."""
    value: Any
    ci_low: Any
    ci_high: Any
    samples: Any
    measure: str = ""
    level: float = 0.95


def as_key(key) -> jax.Array:
    """A typed PRNG key from an int seed or a key."""
    if isinstance(key, (int, np.integer)):
        return jax.random.key(int(key))
    key = jnp.asarray(key) if not isinstance(key, jax.Array) else key
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return key
    if key.dtype == jnp.uint32 and key.shape == (2,):
        return jax.random.wrap_key_data(key)
    raise InputError(f"key: expected an int seed or a jax PRNG key, got {key!r}")


def parts(spec):
    """(prepare, pair, permute, options) of a spec: ``(name, frozen opts)`` or a callable."""
    if callable(spec):
        return (lambda X, o: X), (lambda x, y, o: spec(x, y)), M.permute_rows, {}
    m = M.MEASURES[spec[0]]
    return m.prepare, m.pair, m.permute, dict(spec[1])


def _indices(key, start, c, n, kind):
    ks = jax.vmap(lambda i: jax.random.fold_in(key, i))(start + jnp.arange(c))
    if kind == "perm":
        return jax.vmap(lambda k: jax.random.permutation(k, n))(ks)
    return jax.vmap(lambda k: jax.random.randint(k, (n,), 0, n))(ks)


@functools.partial(jax.jit, static_argnames=("spec", "c", "kind", "inner"))
def _resample_chunk(X, Y, key, start, *, spec, c, kind, inner):
    prepare, pair, permute, o = parts(spec)
    idx = _indices(key, start, c, X.shape[0], kind)
    if kind == "perm":
        px, py = prepare(X, o), prepare(Y, o)
        f = lambda p: pair(px, permute(py, p), o)          # noqa: E731
    else:
        f = lambda i: pair(prepare(X[i], o), prepare(Y[i], o), o)   # noqa: E731
    return jax.lax.map(f, idx, batch_size=inner)


@functools.partial(jax.jit, static_argnames=("spec",))
def _value(X, Y, *, spec):
    prepare, pair, _, o = parts(spec)
    return pair(prepare(X, o), prepare(Y, o), o)


def _spec(measure, options) -> tuple[Any, str, bool, int]:
    if callable(measure) and not isinstance(measure, str):
        if options:
            raise InputError("options are for named measures; bind them into the callable")
        return measure, getattr(measure, "__name__", "custom"), True, 2
    name, opts = M.resolve(measure, options)
    return (name, opts), str(measure), M.MEASURES[name].similarity, M.MEASURES[name].min_n


def chunk_size(n_res: int, N: int, dx: int, dy: int, chunk: int | None) -> int:
    """Resamples per vmapped step: ``chunk`` or what a 256 MiB budget holds."""
    if chunk is not None:
        if int(chunk) < 1:
            raise InputError(f"chunk must be a positive integer, got {chunk!r}")
        return min(int(chunk), n_res)
    per = 16 * (N * (dx + dy) + N * N)
    return int(max(1, min(n_res, BUDGET // max(per, 1), 256)))


def _run_resamples(spec, X, Y, key, n, kind, chunk, progress):
    c = chunk_size(n, X.shape[0], X.shape[1], Y.shape[1], chunk)
    inner = max(1, min(c, 16))
    starts = range(0, n, c)
    if progress:
        from tqdm.auto import tqdm
        starts = tqdm(starts, desc=f"{'permutations' if kind == 'perm' else 'bootstrap'}",
                      unit="chunk")
    out = [np.asarray(_resample_chunk(X, Y, key, jnp.asarray(s, jnp.uint32), spec=spec, c=c,
                                      kind=kind, inner=inner)) for s in starts]
    return np.concatenate(out)[:n].astype(np.float64)


def _check_n(n, what):
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
        raise InputError(f"{what}: n must be a positive integer, got {n!r}")


def permutation_test(measure: str | Callable, X, Y, n: int = 1000, *, key=0,
                     alternative: str | None = None, chunk: int | None = None,
                     progress: bool = False, **options) -> PermutationResult:
    """Permutation p-value of ``measure(X, Y)`` (module docstring).

    Args:
      measure: a measure name (options as keyword arguments) or a jit-able ``f(X, Y)``.
      n: number of permutations.
      key: an int seed or a jax PRNG key (results depend only on it and ``n``).
      alternative: ``"greater"`` (large values = related; default for similarities) or
        ``"less"`` (default for distances such as ``"procrustes"``).
      chunk: permutations per vmapped step (default: a 256 MiB budget).
    """
    _check_n(n, "permutation_test")
    spec, label, sim, min_n = _spec(measure, options)
    alternative = alternative or ("greater" if sim else "less")
    if alternative not in ("greater", "less"):
        raise InputError(f"alternative must be 'greater' or 'less', got {alternative!r}")
    X, Y = M.check_pair(X, Y, min_n)
    k = as_key(key)
    value = float(_value(X, Y, spec=spec))
    null = _run_resamples(spec, X, Y, k, int(n), "perm", chunk, progress)
    hits = np.sum(null >= value) if alternative == "greater" else np.sum(null <= value)
    return PermutationResult(value=value, p_value=float((1 + hits) / (n + 1)), null=null,
                             measure=label, alternative=alternative)


def percentile_interval(samples, level: float):
    q = (1.0 - level) / 2.0
    lo, hi = np.nanquantile(samples, [q, 1.0 - q], axis=0)
    return lo, hi


def bootstrap(measure: str | Callable, X, Y, n: int = 1000, *, key=0, level: float = 0.95,
              chunk: int | None = None, progress: bool = False,
              **options) -> BootstrapResult:
    """Percentile bootstrap interval of ``measure(X, Y)`` over inputs (module docstring)."""
    _check_n(n, "bootstrap")
    if not 0.0 < float(level) < 1.0:
        raise InputError(f"bootstrap: level must be in (0, 1), got {level!r}")
    spec, label, _, min_n = _spec(measure, options)
    X, Y = M.check_pair(X, Y, min_n)
    k = as_key(key)
    value = float(_value(X, Y, spec=spec))
    samples = _run_resamples(spec, X, Y, k, int(n), "boot", chunk, progress)
    lo, hi = percentile_interval(samples, float(level))
    return BootstrapResult(value=value, ci_low=float(lo), ci_high=float(hi), samples=samples,
                           measure=label, level=float(level))
