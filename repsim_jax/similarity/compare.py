r"""Every layer pair of two models (or of one model with itself), every measure, at once.

:func:`compare_layers` flattens or pools spatial layers (``spatial=``), groups the layers of
each side by shape, prepares every layer once per measure (``vmap`` over the layers of a
group: centring, SVD bases, Gram/RDM matrices, neighbour lists) and then evaluates the
measure's pair function over all layer pairs of two groups in one jitted call (``vmap``
over the other side's layers, ``lax.map`` over this side's so memory stays at one row of
pairs; with ``mesh=`` the rows are sharded over the devices). Permutation nulls and
bootstrap resamples are vmapped over chunks of resamples in the same way
(:mod:`~repsim_jax.similarity.stats`); the same resamples are used for every pair, so the
intervals of one table are comparable.

The result is a :class:`SimilarityTable`: one row per (model, layer, other model, other
layer, measure) with the value, the percentile interval ``ci_low``/``ci_high`` (NaN unless
``n_bootstrap``) and the permutation p-value ``p`` (NaN unless ``n_permutations``);
``table.matrix(measure)`` gives the labelled layer x layer view.
"""
from __future__ import annotations

import functools
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from repsim_jax._checks import InputError, as_float_array
from repsim_jax._devices import as_mesh, replicated, batch_sharding
from repsim_jax._results import result
from repsim_jax.similarity import _measure as M
from repsim_jax.similarity.stats import as_key, chunk_size, parts, percentile_interval

__all__ = ["compare_layers", "SimilarityTable", "LayerMatrix", "flatten_layer",
           "SPATIAL", "measure_label", "similarity_measures"]

SPATIAL = ("flatten", "mean", "max")


@result(meta=("measure", "rows", "cols"))
class LayerMatrix:
    """A labelled layer x layer view: ``values[i, j]`` = measure(rows[i], cols[j])."""
    values: Any
    ci_low: Any
    ci_high: Any
    p: Any
    measure: str = ""
    rows: tuple = ()
    cols: tuple = ()


@result(meta=("model", "layer", "other_model", "other_layer", "measure", "level",
              "n_permutations", "n_bootstrap"))
class SimilarityTable:
    """One row per (model, layer, other_model, other_layer, measure): ``value``,
    ``ci_low``/``ci_high`` (percentile bootstrap, NaN if not asked), ``p`` (permutation
    p-value, NaN if not asked). Columns are equal-length arrays / tuples."""
    value: Any
    ci_low: Any
    ci_high: Any
    p: Any
    model: tuple = ()
    layer: tuple = ()
    other_model: tuple = ()
    other_layer: tuple = ()
    measure: tuple = ()
    level: float = 0.95
    n_permutations: int = 0
    n_bootstrap: int = 0

    def __len__(self) -> int:
        return len(self.measure)

    def records(self) -> list[dict]:
        """The table as a list of row dicts (e.g. for CSV / pandas)."""
        cols = ("model", "layer", "other_model", "other_layer", "measure")
        out = []
        for i in range(len(self)):
            r = {c: getattr(self, c)[i] for c in cols}
            r.update(value=float(self.value[i]), ci_low=float(self.ci_low[i]),
                     ci_high=float(self.ci_high[i]), p=float(self.p[i]))
            out.append(r)
        return out

    @property
    def measures(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(self.measure))

    def matrix(self, measure: str | None = None) -> LayerMatrix:
        """Layer x layer view of one measure (default: the first); labels "model:layer"."""
        measure = self.measures[0] if measure is None else measure
        if measure not in self.measures:
            raise M.unknown_name("measure in this table", measure, self.measures)
        sel = [i for i, m in enumerate(self.measure) if m == measure]
        rows = list(dict.fromkeys(f"{self.model[i]}:{self.layer[i]}" for i in sel))
        cols = list(dict.fromkeys(f"{self.other_model[i]}:{self.other_layer[i]}"
                                  for i in sel))
        ri, ci = {r: k for k, r in enumerate(rows)}, {c: k for k, c in enumerate(cols)}
        mats = [np.full((len(rows), len(cols)), np.nan) for _ in range(4)]
        for i in sel:
            a = ri[f"{self.model[i]}:{self.layer[i]}"]
            b = ci[f"{self.other_model[i]}:{self.other_layer[i]}"]
            for m, col in zip(mats, (self.value, self.ci_low, self.ci_high, self.p)):
                m[a, b] = col[i]
        return LayerMatrix(*mats, measure=measure, rows=tuple(rows), cols=tuple(cols))


def flatten_layer(a, spatial: str = "flatten", name: str = "layer"):
    """(N, ..., C) -> (N, D): ``"flatten"`` all non-input axes, or ``"mean"``/``"max"``
    over the spatial axes (all but the first and the last)."""
    if spatial not in SPATIAL:
        raise M.unknown_name("spatial reduction", spatial, SPATIAL)
    as_float_array(a, name, ndim=None)
    if a.ndim < 2:
        raise InputError(f"{name}: expected (N, D) or (N, ..., C) activations, got shape "
                         f"{tuple(a.shape)}")
    a = jnp.asarray(a)
    if a.ndim == 2:
        return a
    if spatial == "flatten":
        return a.reshape(a.shape[0], -1)
    axes = tuple(range(1, a.ndim - 1))
    return a.mean(axes) if spatial == "mean" else a.max(axes)


def measure_label(measure) -> str:
    if isinstance(measure, str):
        return measure
    name, opts = measure
    inner = ",".join(f"{k}={v}" for k, v in sorted(dict(opts).items()))
    return f"{name}({inner})" if inner else name


def similarity_measures(measures) -> list:
    """A configuration's measure list -> :func:`compare_layers`' ``measures``: names,
    ``(name, {options})`` pairs, or one-key tables ``{name: {options}}`` (TOML); checked."""
    if isinstance(measures, (str, Mapping)):
        measures = [measures]
    if not isinstance(measures, (list, tuple)):
        raise InputError(f"measures: expected a list of names, got {measures!r}")
    out = []
    for m in measures:
        if isinstance(m, Mapping):
            if len(m) != 1 or not isinstance(next(iter(m.values())), Mapping):
                raise InputError(f"measures: a table entry must be {{name = {{options}}}}, "
                                 f"got {dict(m)!r}")
            (name, opts), = m.items()
            m = (str(name), dict(opts))
        out.append(m)
    _as_measures(out)
    return out


def _as_measures(measures) -> list[tuple[str, tuple, str]]:
    if isinstance(measures, str):
        measures = [measures]
    out = []
    for m in measures:
        if isinstance(m, str):
            name, opts = M.resolve(m)
        elif isinstance(m, (tuple, list)) and len(m) == 2 and isinstance(m[1], Mapping):
            name, opts = M.resolve(m[0], m[1])
        else:
            raise InputError(f"measures: expected names or (name, options) pairs, got {m!r}")
        out.append((name, opts, measure_label(m if isinstance(m, str) else
                                              (m[0], dict(m[1])))))
    if not out:
        raise InputError("measures: give at least one measure")
    labels = [o[2] for o in out]
    if len(set(labels)) != len(labels):
        raise InputError(f"measures: duplicates in {labels}")
    return out


# ------------------------------------------------------------------- jitted grids
@functools.partial(jax.jit, static_argnames=("spec",))
def _prepare_stack(X, *, spec):
    prepare, _, _, o = parts(spec)
    return jax.vmap(lambda x: prepare(x, o))(X)


def _row_map(f, PA, rest, mesh):
    """``f(pa, *rest)`` over the leading axis of the pytree ``PA`` (sequentially; with a
    mesh the rows are sharded over its devices and ``rest`` is replicated)."""
    if mesh is None:
        return jax.lax.map(lambda pa: f(pa, *rest), PA)
    row, rep = P(mesh.axis_names[0]), P()

    def local(pa, *r):
        return jax.lax.map(lambda x: f(x, *r), pa)
    return jax.shard_map(local, mesh=mesh, in_specs=(row,) + (rep,) * len(rest),
                         out_specs=row, check_vma=False)(PA, *rest)


@functools.partial(jax.jit, static_argnames=("spec", "mesh"))
def _grid(PA, PB, *, spec, mesh):
    _, pair, _, o = parts(spec)
    return _row_map(lambda pa, pb_all: jax.vmap(lambda pb: pair(pa, pb, o))(pb_all), PA,
                    (PB,), mesh)


@functools.partial(jax.jit, static_argnames=("spec", "mesh", "c", "inner", "n"))
def _grid_perm(PA, PB, key, start, *, spec, mesh, c, inner, n):
    """(La, c, Lb) values with side b's inputs permuted by resamples start..start+c-1
    (``n`` inputs: not every prepared leaf has them on an axis, e.g. scalar self-terms)."""
    _, pair, permute, o = parts(spec)
    ks = jax.vmap(lambda i: jax.random.fold_in(key, i))(start + jnp.arange(c))
    perms = jax.vmap(lambda k: jax.random.permutation(k, n))(ks)

    def row(pa, pb_all, perms):
        def one(perm):
            return jax.vmap(lambda pb: pair(pa, permute(pb, perm), o))(pb_all)
        return jax.lax.map(one, perms, batch_size=inner)
    return _row_map(row, PA, (PB, perms), mesh)


@functools.partial(jax.jit, static_argnames=("spec", "c", "inner"))
def _grid_boot(XA, XB, key, start, *, spec, c, inner):
    """(c, La, Lb) values on bootstrap resamples start..start+c-1 of the inputs."""
    prepare, pair, _, o = parts(spec)
    n = XA.shape[1]
    ks = jax.vmap(lambda i: jax.random.fold_in(key, i))(start + jnp.arange(c))
    idx = jax.vmap(lambda k: jax.random.randint(k, (n,), 0, n))(ks)

    def one(i):
        PA = jax.vmap(lambda x: prepare(x[i], o))(XA)
        PB = jax.vmap(lambda x: prepare(x[i], o))(XB)
        return jax.vmap(lambda pa: jax.vmap(lambda pb: pair(pa, pb, o))(PB))(PA)
    return jax.lax.map(one, idx, batch_size=inner)


# --------------------------------------------------------- the all-pairs fast path
FAST_BUDGET = 2 << 30
"""Bytes of prepared per-layer statistics the fast path holds at once (both sides and
both caches together); larger groups of layers are prepared in chunks."""


class _FastRunner:
    """Values of one measure's all-pairs route (:class:`~._measure.FastPath`) one row of
    blocks at a time (this side's group ``i`` against every group of the other side), so
    that this side's layers are prepared once per row. Memory stays within ``budget``
    bytes of prepared statistics: this side's layers in chunks of up to 3/4 of it, the
    other side's streamed in chunks of up to 1/4; the other side's statistics are kept
    (and, for one model with itself, shared with this side) only when they all fit next
    to this side's chunk, otherwise re-prepared per chunk (N x N statistics at large N)."""

    def __init__(self, fp, o, plan, N, same, budget=None):
        self.fp, self.o, self.plan, self.N, self.same = fp, o, plan, N, same
        self.budget = FAST_BUDGET if budget is None else budget
        self.cache: dict = {}

    def _per(self, X) -> int:
        return max(1, int(self.fp.nbytes(self.N, int(X.shape[-1]), self.o, self.plan)))

    @staticmethod
    def _slices(L, c):
        return [slice(s, min(s + c, L)) for s in range(0, L, c)]

    def _prepare(self, X, sl, key, keep):
        if key in self.cache:
            return self.cache[key]
        st = self.fp.prepare(X[sl], self.o, self.plan)
        if keep:
            self.cache[key] = st
        return st

    def row(self, i, XA, XBs) -> list[np.ndarray]:
        per_a = self._per(XA)
        ca = max(1, min(XA.shape[0], (3 * self.budget // 4) // per_a))
        total_b = sum(self._per(X) * X.shape[0] for X in XBs)
        keep_b = ca * per_a + total_b <= self.budget
        out = [np.empty((XA.shape[0], X.shape[0])) for X in XBs]
        share = self.same and keep_b        # side a's chunks = side b's cached ones
        if share:
            ca = max(1, min(XA.shape[0], (self.budget // 4) // per_a))
        for sa in self._slices(XA.shape[0], ca):
            SA = self._prepare(XA, sa, ("b" if share else "a", i, sa.start, sa.stop),
                               keep=share)
            for j, XB in enumerate(XBs):
                cb = max(1, min(XB.shape[0], (self.budget // 4) // self._per(XB)))
                for sb in self._slices(XB.shape[0], cb):
                    SB = self._prepare(XB, sb, ("b", j, sb.start, sb.stop), keep=keep_b)
                    out[j][sa, sb] = np.asarray(self.fp.grid(SA, SB, self.o, self.plan))
        return out


# ----------------------------------------------------------------------- the API
def _side(acts, what, spatial):
    if not isinstance(acts, Mapping) or not acts:
        raise InputError(f"{what}: expected a non-empty dict {{layer: activations}}")
    return {str(k): flatten_layer(v, spatial, f"{what}[{k!r}]") for k, v in acts.items()}


def _groups(layers: Mapping[str, jax.Array]) -> list[list[str]]:
    g: dict[tuple, list[str]] = {}
    for k, v in layers.items():
        g.setdefault(tuple(v.shape), []).append(k)
    return list(g.values())


def _pad_rows(tree, n_dev):
    L = jax.tree_util.tree_leaves(tree)[0].shape[0]
    pad = (-L) % n_dev
    if not pad:
        return tree, L
    return jax.tree_util.tree_map(
        lambda a: jnp.concatenate([a, jnp.repeat(a[:1], pad, 0)]), tree), L


def compare_layers(acts_a: Mapping[str, Any], acts_b: Mapping[str, Any] | None = None,
                   measures: Sequence = ("cka_debiased",), *, n_permutations: int = 0,
                   n_bootstrap: int = 0, level: float = 0.95, key=0,
                   spatial: str = "flatten", names: tuple[str, str] = ("a", "b"),
                   mesh=None, chunk: int | None = None,
                   progress: bool = True) -> SimilarityTable:
    """All layer pairs x all measures, with optional permutation p-values and intervals.

    Args:
      acts_a: ``{layer: (N, D) or (N, ..., C) activations}`` of one model.
      acts_b: the other model's (default ``None``: ``acts_a`` with itself).
      measures: names (``"cka_debiased"``, ``"cka"``, ``"rbf_cka"``, ``"rsa"``,
        ``"procrustes"``, ``"cca"``, ``"svcca"``, ``"pwcca"``, ``"mutual_knn"``,
        ``"cknna"``, ...) or ``(name, {option: value})`` pairs; the table labels them
        ``name(option=value)``.
      n_permutations / n_bootstrap: resamples per pair (0: none; NaN in the table).
      level: interval level of the bootstrap.
      key: an int seed or a jax PRNG key (the same resamples serve every pair).
      spatial: how (N, ..., C) layers become (N, D): ``"flatten"`` (default, as in
        Kornblith et al.), ``"mean"`` or ``"max"`` pooling over the spatial axes.
      names: model names in the table (``names[0]`` for both sides when ``acts_b`` is None).
      mesh: ``None`` / ``"all"`` / a Mesh / devices: layer rows sharded over devices.
      chunk: resamples per vmapped step (default from a 256 MiB budget).
      progress: a tqdm bar over (measure, group pair).
    """
    specs = _as_measures(measures)
    for v, what in ((n_permutations, "n_permutations"), (n_bootstrap, "n_bootstrap")):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 0:
            raise InputError(f"{what}: expected an integer >= 0, got {v!r}")
    if n_bootstrap and not 0.0 < float(level) < 1.0:
        raise InputError(f"level must be in (0, 1), got {level!r}")
    A = _side(acts_a, "acts_a", spatial)
    B = A if acts_b is None else _side(acts_b, "acts_b", spatial)
    name_a = str(names[0])
    name_b = name_a if acts_b is None else str(names[1])
    ns = {f"{name_a}:{k}": int(v.shape[0]) for k, v in A.items()}
    ns.update({f"{name_b}:{k}": int(v.shape[0]) for k, v in B.items()})
    if len(set(ns.values())) > 1:
        raise InputError(f"all layers must hold the same inputs; numbers of inputs differ: "
                         f"{ns}")
    N = next(iter(ns.values()))
    mesh = as_mesh(mesh)
    if mesh is not None and mesh.devices.size == 1:
        mesh = None
    n_dev = 1 if mesh is None else mesh.devices.size
    k = as_key(key)
    ga, gb = _groups(A), _groups(B)
    blocks = [(s, i, j) for s in specs for i in range(len(ga)) for j in range(len(gb))]
    it = blocks
    if progress:
        from tqdm.auto import tqdm
        it = tqdm(blocks, desc="layer similarity", unit="block")
    res: dict[tuple[str, str, str], tuple[float, float, float, float]] = {}
    stacks_a = [jnp.stack([A[n] for n in g]) for g in ga]
    stacks_b = stacks_a if acts_b is None else [jnp.stack([B[n] for n in g]) for g in gb]
    prepared: dict = {}
    runners: dict = {}
    fast_rows: dict = {}
    resampling = bool(n_permutations or n_bootstrap)
    for (name, opts, label), i, j in it:
        m = M.MEASURES[name]
        if N < m.min_n:
            raise InputError(f"measure {label!r} needs at least {m.min_n} inputs, got N={N}")
        if name in ("mutual_knn", "cknna") and dict(opts)["k"] >= N:
            raise InputError(f"measure {label!r}: k={dict(opts)['k']} needs N > k, got N={N}")
        spec = (name, opts)
        XA, XB = stacks_a[i], stacks_b[j]
        fp = (m.fast(dict(opts)) if m.fast is not None and mesh is None and not resampling
              else None)
        if fp is not None:
            if spec not in runners:
                o = dict(opts)
                plan = fp.plan(N, [int(v.shape[1]) for v in A.values()],
                               [int(v.shape[1]) for v in B.values()], o)
                runners = {spec: _FastRunner(fp, o, plan, N, acts_b is None)}
            if (spec, i) not in fast_rows:      # group i against every group of side b
                fast_rows.clear()
                fast_rows[(spec, i)] = runners[spec].row(i, XA, stacks_b)
            vals = fast_rows[(spec, i)][j]
            for a, la in enumerate(ga[i]):
                for b, lb in enumerate(gb[j]):
                    res[(label, la, lb)] = (vals[a, b], np.nan, np.nan, np.nan)
            continue
        if (spec, "a", i) not in prepared:
            prepared[(spec, "a", i)] = _prepare_stack(XA, spec=spec)
        if (spec, "b", j) not in prepared:
            prepared[(spec, "b", j)] = (prepared[(spec, "a", j)] if acts_b is None and
                                        (spec, "a", j) in prepared else
                                        _prepare_stack(XB, spec=spec))
        PA, PB = prepared[(spec, "a", i)], prepared[(spec, "b", j)]
        La, Lb = XA.shape[0], XB.shape[0]
        if mesh is not None:
            PA, _ = _pad_rows(PA, n_dev)
            PA = jax.device_put(PA, batch_sharding(mesh))
            PB = jax.device_put(PB, replicated(mesh))
        vals = np.asarray(_grid(PA, PB, spec=spec, mesh=mesh))[:La].astype(np.float64)
        p = np.full((La, Lb), np.nan)
        lo, hi = np.full((La, Lb), np.nan), np.full((La, Lb), np.nan)
        if n_permutations:
            c = chunk_size(n_permutations, N, XA.shape[-1], XB.shape[-1] * Lb, chunk)
            hits = np.zeros((La, Lb))
            for s in range(0, n_permutations, c):
                null = np.asarray(_grid_perm(PA, PB, k, jnp.asarray(s, jnp.uint32),
                                             spec=spec, mesh=mesh, c=c, n=N,
                                             inner=max(1, min(c, 8))))[:La]
                null = null[:, :min(c, n_permutations - s)]
                hits += (np.sum(null >= vals[:, None], 1) if m.similarity
                         else np.sum(null <= vals[:, None], 1))
            p = (1.0 + hits) / (n_permutations + 1.0)
        if n_bootstrap:
            c = chunk_size(n_bootstrap, N, XA.shape[-1] * La, XB.shape[-1] * Lb, chunk)
            samples = []
            for s in range(0, n_bootstrap, c):
                out = np.asarray(_grid_boot(XA, XB, k,
                                            jnp.asarray(s, jnp.uint32), spec=spec, c=c,
                                            inner=max(1, min(c, 4))))
                samples.append(out[:min(c, n_bootstrap - s)])
            lo, hi = percentile_interval(np.concatenate(samples).astype(np.float64),
                                         float(level))
        for a, la in enumerate(ga[i]):
            for b, lb in enumerate(gb[j]):
                res[(label, la, lb)] = (vals[a, b], lo[a, b], hi[a, b], p[a, b])
    cols: dict[str, list] = {c: [] for c in ("model", "layer", "other_model", "other_layer",
                                             "measure", "value", "ci_low", "ci_high", "p")}
    for _, _, label in specs:               # rows in input order: measure, layer, layer
        for la in A:
            for lb in B:
                v = res[(label, la, lb)]
                for c, x in zip(("model", "layer", "other_model", "other_layer", "measure"),
                                (name_a, la, name_b, lb, label)):
                    cols[c].append(x)
                for c, x in zip(("value", "ci_low", "ci_high", "p"), v):
                    cols[c].append(float(x))
    return SimilarityTable(value=np.asarray(cols["value"]), ci_low=np.asarray(cols["ci_low"]),
                           ci_high=np.asarray(cols["ci_high"]), p=np.asarray(cols["p"]),
                           model=tuple(cols["model"]), layer=tuple(cols["layer"]),
                           other_model=tuple(cols["other_model"]),
                           other_layer=tuple(cols["other_layer"]),
                           measure=tuple(cols["measure"]), level=float(level),
                           n_permutations=int(n_permutations), n_bootstrap=int(n_bootstrap))
