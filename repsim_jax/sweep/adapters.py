"""One thin adapter per method: a unit's arrays in -> arrays, tables and figure specs out.

Each adapter takes a :class:`~repsim_jax.sweep.plan.Unit` and the
:class:`~repsim_jax.sweep.run.SweepContext` (data, models, cached activations, device
mesh, seed) and returns a plain dict::

    {"arrays": {name: ndarray}, "tables": {table: [row dicts]},
     "figures": [{"kind": "heatmap"|"images"|"hist", "array": name, ...}],
     "meta": {"summary": "one line for the report", ...}}

which the sweep checkpoints as is. All numerics are the method packages' own public
functions; adapters only select inputs, call them, and name the outputs. Layers of one
unit have equal shapes and are handed to the method together (stacked / as a dict) so it
can ``vmap`` over them; the mesh is passed on where a method accepts one.
"""
from __future__ import annotations

import importlib
from typing import Any, Callable

import numpy as np

from repsim_jax._checks import InputError
from repsim_jax.sweep.config import SweepError
from repsim_jax.sweep.options import matcher_options

__all__ = ["ADAPTERS", "REQUIRES", "run_unit", "check_available", "check_data",
           "check_models", "NEEDS_MODEL"]

# public functions each adapter calls: module -> names
REQUIRES: dict[str, dict[str, tuple[str, ...]]] = {
    "semantic": {"repsim_jax.semantic": ("rsm", "top1_agreement", "retrieval_f1")},
    "semantic_compare": {"repsim_jax.semantic": ("compare",)},
    "similarity": {"repsim_jax.similarity": ("compare_layers", "similarity_measures")},
    "invert": {"repsim_jax.invert": ("explain",)},
    "invert_fdr": {"repsim_jax.invert": ("benjamini_hochberg",)},
    "concepts": {"repsim_jax.concepts.nmf": ("ice_fit",)},
    "concepts_compare": {"repsim_jax.concepts.similarity": ("pairwise_similarity",
                                                            "layer_scores", "resize_maps")},
    "cladec": {"repsim_jax.cladec.train": ("fit_cladec", "fit_reference_ae", "reconstruct",
                                           "reconstruct_ae")},
    "summaries": {"repsim_jax.summaries.pipeline": ("visual_summaries",),
                  "repsim_jax.summaries.regions": ("crop_regions",)},
}
# inputs of the semantic RSM when semantic.n_images is not set (its cost grows as N^2)
SEMANTIC_MAX_IMAGES = 1000
# what each method needs from the data
NEEDS = {"invert": ("concept_labels",), "cladec": ("labels",), "summaries": ("labels",)}
# methods that run the network itself (not only its activations)
NEEDS_MODEL = ("cladec", "summaries")


def _fn(module: str, name: str) -> Callable:
    return getattr(importlib.import_module(module), name)


def check_available(method: str) -> None:
    """Raises SweepError when a method's package does not (yet) provide its functions."""
    missing = []
    for module, names in REQUIRES.get(method, {}).items():
        try:
            mod = importlib.import_module(module)
        except ImportError as e:
            missing.append(f"{module} ({e})")
            continue
        missing += [f"{module}.{n}" for n in names if not hasattr(mod, n)]
    if missing:
        raise SweepError(f"method {method!r} is not available in this installation: "
                         f"missing {', '.join(missing)}")


def check_data(methods, data) -> None:
    """Clear error when a method needs annotations the data set does not have."""
    for m in methods:
        for field in NEEDS.get(m, ()):
            if getattr(data, field) is None:
                raise InputError(f"method {m!r} needs {field.replace('_', ' ')}, which the "
                                 f"data set {data.name!r} does not provide (use "
                                 f"repsim_shapes, an image folder with --concepts FILE.csv, "
                                 f"or an .npz with a {field!r} array)")


def check_models(units, models: dict) -> None:
    """Clear error, before any unit runs, when a unit of a method that runs the network
    (:data:`NEEDS_MODEL`) is planned for a model given only as precomputed activations."""
    from repsim_jax.sweep.inputs import PrecomputedActivations
    for unit in units:
        m, name = unit.method, getattr(unit, "model", None)
        if m in NEEDS_MODEL and name in models:
            model = models[name]
            if isinstance(model, PrecomputedActivations):
                raise InputError(f"method {m!r} runs the network itself, but model {name!r} "
                                 f"is precomputed activations ({model.source!r}); give the "
                                 f"model (arch / hf / factory) or leave {m!r} out of methods "
                                 f"(semantic, invert and concepts run on activations alone)")


def _inner(ctx) -> bool | None:
    """``progress=`` for the inner loops of a unit (RSM tiles, ClaDec steps, masks): the
    sweep's own setting (see repsim_jax._progress)."""
    return getattr(ctx, "progress", None)


def _spatial(a: np.ndarray) -> np.ndarray:
    """(N, C) -> (N, 1, 1, C); (N, H, W, C) unchanged."""
    return a[:, None, None, :] if a.ndim == 2 else a


def _depth_labels(ctx, keys) -> list[str]:
    return [f"{m}:{l}" for m, l in keys]


def _relative_depth(ctx, keys) -> list[float]:
    """(index + 1) / depth of each (model, layer) among ALL capturable layers of its model
    (forward order), for the report's similarity-versus-relative-depth plot."""
    out = []
    for m, l in keys:
        names = list(ctx.shapes.get(m, {}))
        out.append((names.index(l) + 1.0) / len(names) if l in names else float("nan"))
    return out


def _take_images(images, idx, chunk: int = 64) -> np.ndarray:
    """``images[idx]`` as an array, for in-memory arrays and lazy (streamed) data alike
    (a lazy source is read ``chunk`` items per request)."""
    from repsim_jax.data.views import gather
    return gather(images, np.asarray(idx, np.int64), chunk)


def _thumbnails(images: np.ndarray, side: int = 24) -> np.ndarray:
    """uint8 thumbnails of NHWC images in [0, 1] (area downsampling by an integer factor)."""
    x = np.asarray(images, np.float32)
    f = max(1, x.shape[1] // side)
    h, w = (x.shape[1] // f) * f, (x.shape[2] // f) * f
    x = x[:, :h, :w].reshape(len(x), h // f, f, w // f, f, x.shape[-1]).mean((2, 4))
    return np.round(np.clip(x, 0, 1) * 255).astype(np.uint8)


def _report_inputs(ctx, sub=None, per_class: int = 8) -> dict[str, np.ndarray]:
    """What the report needs to order RSMs by class and show each class's inputs: the
    labels of the N inputs of the RSMs (``sub``: their indices; None: all) and thumbnails
    of the first ``per_class`` inputs per class."""
    if ctx.data.labels is None:
        return {}
    idx = np.arange(len(ctx.data)) if sub is None else np.asarray(sub)
    labels = np.asarray(ctx.data.labels, np.int64)[idx]
    pick = np.concatenate([np.flatnonzero(labels == c)[:per_class]
                           for c in np.unique(labels)]).astype(np.int64)
    return {"inputs/labels": labels, "inputs/thumb_index": pick,
            "inputs/thumbs": _thumbnails(_take_images(ctx.data.images, idx[pick]))}


def _best_matches(keys, M, score: str) -> list[dict]:
    """For every layer of every model and every OTHER model: its most similar layer there,
    with both relative depths ((i + 1) / L over the model's swept layers, in forward
    order) - the view in which the seed paper finds concepts at similar relative depth."""
    by_model: dict[str, list[int]] = {}
    for i, (m, _) in enumerate(keys):
        by_model.setdefault(m, []).append(i)
    depth = {}
    for m, idx in by_model.items():
        for r, i in enumerate(idx):
            depth[i] = (r + 1.0) / len(idx)
    rows = []
    for ma, ia in by_model.items():
        for mb, ib in by_model.items():
            if ma == mb:
                continue
            for i in ia:
                j = ib[int(np.argmax(M[i, ib]))]
                rows.append({"model_a": ma, "layer_a": keys[i][1], "depth_a": depth[i],
                             "model_b": mb, "best_layer_b": keys[j][1], "depth_b": depth[j],
                             score: float(M[i, j])})
    return rows


# ---------------------------------------------------------------------------- semantic
def _rsm_devices(ctx):
    return list(ctx.mesh.devices.flat) if ctx.mesh.devices.size > 1 else None


def adapt_semantic(unit, ctx) -> dict[str, Any]:
    """Semantic RSMs (and the spatio-semantic baseline) of a group of equal-shape layers."""
    opts = ctx.cfg.method_options("semantic")
    sem_pkg = importlib.import_module("repsim_jax.semantic")
    # its cost grows as N^2: a seeded subset of n_images inputs (None: all up to
    # SEMANTIC_MAX_IMAGES); the same subset for every layer and model of the sweep
    n_all = len(ctx.data)
    cap = opts.get("n_images")
    cap = SEMANTIC_MAX_IMAGES if cap is None and n_all > SEMANTIC_MAX_IMAGES else cap
    sub = None if cap is None or int(cap) >= n_all else _subset(n_all, cap, ctx.cfg.seed)
    acts = ctx.activations(unit.model, unit.layers, indices=sub)
    pick = (lambda a: a) if sub is None else (lambda a: None if a is None  # noqa: E731
                                              else np.asarray(a)[sub])
    reps = {l: _spatial(acts[l]) for l in unit.layers}
    kw = {k: v for k, v in opts.items() if k not in ("kernel", "matcher", "compare", "layers",
                                                     "n_images")}
    kw.setdefault("mesh", _rsm_devices(ctx))
    kw.setdefault("progress", _inner(ctx))
    sem = sem_pkg.rsm(reps, kernel=opts["kernel"], matcher=opts["matcher"], **kw)
    for key in matcher_options():     # the identity baseline takes no matcher option
        kw.pop(key, None)
    base = sem_pkg.rsm(reps, kernel=opts["kernel"], matcher="identity", **kw)
    arrays, figures, rows = {}, [], []
    for l in unit.layers:
        s, b = np.asarray(sem[l]), np.asarray(base[l])
        arrays[f"rsm/{l}"] = s
        arrays[f"rsm_identity/{l}"] = b
        figures.append({"kind": "heatmap", "array": f"rsm/{l}", "name": f"rsm_{l}",
                        "title": f"{unit.model} {l}: semantic RSM ({opts['matcher']}, "
                                 f"{opts['kernel']})", "xlabel": "image", "ylabel": "image"})
        off = ~np.eye(len(s), dtype=bool)
        row = {"model": unit.model, "layer": l, "n": int(s.shape[0]),
               "mean_offdiag_semantic": float(s[off].mean()),
               "mean_offdiag_identity": float(b[off].mean())}
        labels, concept_labels = pick(ctx.data.labels), pick(ctx.data.concept_labels)
        if labels is not None:
            row["top1_class_semantic"] = float(sem_pkg.top1_agreement(s, labels))
            row["top1_class_identity"] = float(sem_pkg.top1_agreement(b, labels))
        if concept_labels is not None:
            row["retrieval_f1_semantic"] = float(sem_pkg.retrieval_f1(s, concept_labels))
            row["retrieval_f1_identity"] = float(sem_pkg.retrieval_f1(b, concept_labels))
        rows.append(row)
    arrays.update(_report_inputs(ctx, sub))
    return {"arrays": arrays, "figures": figures, "tables": {"semantic_layers": rows},
            "meta": {"summary": f"{len(unit.layers)} layer(s), N={len(s)}"
                                + ("" if sub is None else f" (seeded subset of {n_all})"),
                     "class_names": list(ctx.data.class_names), "kernel": opts["kernel"],
                     "matcher": opts["matcher"]}}


def adapt_semantic_compare(unit, ctx) -> dict[str, Any]:
    """Layer x layer (and model x model) similarity of all semantic RSMs of the sweep."""
    opts = ctx.cfg.method_options("semantic")
    compare = _fn("repsim_jax.semantic", "compare")
    keys, mats, base = [], [], []
    for dep in unit.depends:
        res = ctx.store.load(dep)
        model = dep.split("__")[1]
        for name, a in res["arrays"].items():
            if name.startswith("rsm/"):
                keys.append((model, name[4:]))
                mats.append(a)
                base.append(res["arrays"][f"rsm_identity/{name[4:]}"])
    R = np.stack(mats)
    M = np.asarray(compare(R, R, method=opts["compare"]), np.float64)
    cross = np.asarray(compare(R, np.stack(base), method=opts["compare"]), np.float64)
    labels = _depth_labels(ctx, keys)
    rows = [{"model_a": ka[0], "layer_a": ka[1], "model_b": kb[0], "layer_b": kb[1],
             opts["compare"]: float(M[i, j])}
            for i, ka in enumerate(keys) for j, kb in enumerate(keys)]
    rows2 = [{"model": k[0], "layer": k[1], f"{opts['compare']}_semantic_vs_identity":
              float(cross[i, i])} for i, k in enumerate(keys)]
    return {"arrays": {"layer_similarity": M, "semantic_vs_identity": np.diag(cross).copy()},
            "tables": {"semantic_layer_similarity": rows,
                       "semantic_vs_identity": rows2,
                       "semantic_best_matches": _best_matches(keys, M, opts["compare"])},
            "figures": [{"kind": "heatmap", "array": "layer_similarity", "name": "layer_map",
                         "title": f"layer x layer {opts['compare']} of semantic RSMs",
                         "caption": _measure_caption(opts["compare"]),
                         "measure": opts["compare"], "xlabels": labels, "ylabels": labels}],
            "meta": {"labels": labels, "measure": opts["compare"], "n_inputs": len(ctx.data),
                     "relative_depth": _relative_depth(ctx, keys),
                     "summary": f"{len(keys)} layers across {len({k[0] for k in keys})} "
                                f"model(s)"}}


# -------------------------------------------------------------------------- similarity
_CAPTIONS = {
    "cka_debiased": "debiased CKA (unbiased HSIC, Song et al. 2012): ~0 for unrelated "
                    "layers at any N",
    "linear_cka": "linear CKA, biased HSIC estimator: large for unrelated layers when N is "
                  "small against the layers' dimension",
    "cka": "linear CKA, biased HSIC estimator: large for unrelated layers when N is small "
           "against the layers' dimension",
    "procrustes": "angular Procrustes distance (0 = equal up to rotation; lower = more "
                  "similar)",
}


def _measure_caption(measure: str) -> str:
    return _CAPTIONS.get(measure, f"measure: {measure}")


def _is_similarity(label: str) -> bool:
    from repsim_jax.similarity._measure import ALIASES, MEASURES
    base = label.split("(")[0]
    return MEASURES[ALIASES.get(base, (base,))[0]].similarity


def _safe(label: str) -> str:
    return "".join(c if c.isalnum() or c in "_-." else "_" for c in label).strip("_")


def adapt_similarity(unit, ctx) -> dict[str, Any]:
    """Layer x layer maps of the activations of every model (repsim_jax.similarity)."""
    opts = ctx.cfg.method_options("similarity")
    compare_layers = _fn("repsim_jax.similarity", "compare_layers")
    measures = _fn("repsim_jax.similarity", "similarity_measures")(opts["measures"])
    by_model: dict[str, list[str]] = {}
    for s in unit.layers:
        m, l = s.split(":", 1)
        by_model.setdefault(m, []).append(l)
    acts = {}
    for m, ls in by_model.items():
        a = ctx.activations(m, tuple(ls))
        acts.update({f"{m}:{l}": a[l] for l in ls})
    mesh = ctx.mesh if ctx.mesh.devices.size > 1 else None
    t = compare_layers(acts, None, measures, n_permutations=int(opts["n_permutations"]),
                       n_bootstrap=int(opts["n_bootstrap"]), level=float(opts["level"]),
                       key=ctx.seed(unit), spatial=opts["spatial"], names=("sweep",),
                       mesh=mesh, progress=False)
    keys = [tuple(k.split(":", 1)) for k in acts]
    labels = list(acts)
    rows = []
    for r in t.records():
        (ma, la), (mb, lb) = r["layer"].split(":", 1), r["other_layer"].split(":", 1)
        row = {"model_a": ma, "layer_a": la, "model_b": mb, "layer_b": lb,
               "measure": r["measure"], "value": r["value"]}
        if t.n_bootstrap:
            row.update(ci_low=r["ci_low"], ci_high=r["ci_high"], level=t.level)
        if t.n_permutations:
            row["p_value"] = r["p"]
        rows.append(row)
    arrays, figures, best = {}, [], []
    for label in t.measures:
        mat = t.matrix(label)
        name = _safe(label)
        arrays[f"similarity/{name}"] = mat.values
        extra = []
        if t.n_permutations:
            arrays[f"p_value/{name}"] = mat.p
            extra.append(f"permutation p-values in the table ({t.n_permutations} "
                         f"permutations)")
        if t.n_bootstrap:
            arrays[f"ci_low/{name}"], arrays[f"ci_high/{name}"] = mat.ci_low, mat.ci_high
            extra.append(f"{t.level:.0%} bootstrap intervals in the table "
                         f"({t.n_bootstrap} resamples)")
        figures.append({"kind": "heatmap", "array": f"similarity/{name}",
                        "name": f"layer_map_{name}",
                        "title": f"layer x layer {label} of activations",
                        "caption": "; ".join([_measure_caption(label), *extra]),
                        "measure": label, "xlabels": labels, "ylabels": labels})
        # best match: the most similar layer (the smallest distance for Procrustes)
        sign = 1.0 if _is_similarity(label) else -1.0
        for b in _best_matches(keys, sign * mat.values, "score"):
            best.append({**b, "measure": label, "score": sign * b["score"]})
    return {"arrays": arrays, "figures": figures,
            "tables": {"layer_similarity": rows, "layer_similarity_best_matches": best},
            "meta": {"labels": labels, "measures": list(t.measures),
                     "n_inputs": len(ctx.data), "relative_depth": _relative_depth(ctx, keys),
                     "higher_is_similar": {m: bool(_is_similarity(m)) for m in t.measures},
                     "summary": f"{len(labels)} layers of {len(by_model)} model(s), "
                                f"measures: {', '.join(t.measures)}"
                                + (f", {t.n_permutations} permutations" if t.n_permutations
                                   else "")
                                + (f", {t.n_bootstrap} bootstrap resamples" if t.n_bootstrap
                                   else "")}}


# ------------------------------------------------------------------------------ invert
def adapt_invert(unit, ctx) -> dict[str, Any]:
    """INVERT labels (best formula, AUC, p-value) for every neuron of a group of layers."""
    opts = ctx.cfg.method_options("invert")
    explain = _fn("repsim_jax.invert", "explain")
    # activations streamed to the on-disk store, reduced over space chunk by chunk:
    # (N, neurons) is all INVERT holds in memory, whatever N
    stored = ctx.stored_activations(unit.model, unit.layers)
    acts = {l: stored[l].reduce(opts.get("reduction", "mean")) for l in unit.layers}
    # every option but "layers" is a keyword of explain (checked by sweep.options)
    kw = {k: v for k, v in opts.items() if k != "layers"}
    out = explain({l: acts[l] for l in unit.layers}, ctx.data.concept_labels,
                  list(ctx.data.concept_names), mesh=ctx.mesh, progress=_inner(ctx), **kw)
    rows, arrays, figures = [], {}, []
    perm = int(kw.get("permutations", 0) or 0) > 0
    for l in unit.layers:
        res = out[l]
        auc, logp = [], []
        for u in range(len(res)):
            beam = res[u]
            best = beam.best
            row = {"model": unit.model, "layer": l, "neuron": u,
                   "formula": best.formula if best else "",
                   "auc": best.auc if best else float("nan"),
                   "concept_fraction": best.concept_fraction if best else float("nan"),
                   "p_value": beam.p_value, "log_p_value": beam.log_p_value,
                   "q_value_in_unit": beam.q_value, "constant": bool(beam.constant),
                   "beam": " ; ".join(f"{e.formula} ({e.auc:.3f})" for e in beam)}
            if perm:   # selection-aware: the whole search rerun on permuted inputs
                row["perm_p_value"] = float(res.perm_p_value[u])
                row["perm_q_value_in_unit"] = float(res.perm_q_value[u])
            rows.append(row)
            auc.append(row["auc"])
            logp.append(beam.log_p_value)
        arrays[f"best_auc/{l}"] = np.asarray(auc, np.float64)
        arrays[f"log_p_value/{l}"] = np.asarray(logp, np.float64)
        if perm:
            arrays[f"perm_p_value/{l}"] = np.asarray(res.perm_p_value, np.float64)
            arrays[f"perm_q_value/{l}"] = np.asarray(res.perm_q_value, np.float64)
        arrays.update(_invert_top(l, acts[l], res, ctx, kw.get("reduction", "mean")))
        figures.append({"kind": "hist", "array": f"best_auc/{l}", "name": f"auc_{l}",
                        "title": f"{unit.model} {l}: AUC of each neuron's best formula",
                        "xlabel": "AUC"})
    return {"arrays": arrays, "tables": {"invert_neurons": rows}, "figures": figures,
            "meta": {"summary": f"{len(rows)} neurons labelled (L={opts['L']}, "
                                f"B={opts['B']})"
                                + (f", {kw['permutations']} permutations" if perm else ""),
                     "reduction": kw.get("reduction", "mean"),
                     "permutations": int(kw.get("permutations", 0) or 0),
                     "n_inputs": len(ctx.data)}}


def _invert_top(layer, act, res, ctx, reduction, k: int = 4) -> dict[str, np.ndarray]:
    """For the report: the ``k`` neurons with the highest AUC of ``layer``, their (reduced)
    activation on every input and whether their best formula holds there."""
    reduce = _fn("repsim_jax.invert", "reduce_activations")
    parse = _fn("repsim_jax.invert", "parse")
    aucs = np.asarray([res[u].best.auc if res[u].best else -np.inf for u in range(len(res))])
    top = [int(u) for u in np.argsort(-aucs, kind="stable")[:k] if np.isfinite(aucs[u])]
    if not top:
        return {}
    a = np.asarray(reduce(np.asarray(act), reduction), np.float32).reshape(len(act), -1)
    names = list(ctx.data.concept_names)
    holds = np.stack([parse(res[u].best.formula, ctx.data.concept_labels, names)
                      for u in top])
    return {f"top_neurons/{layer}": np.asarray(top, np.int64),
            f"top_activations/{layer}": a[:, top].T.copy(),
            f"top_holds/{layer}": np.asarray(holds, bool)}


def adapt_invert_fdr(unit, ctx) -> dict[str, Any]:
    """Benjamini-Hochberg q-values across every neuron of the sweep (all models, layers)."""
    bh = _fn("repsim_jax.invert", "benjamini_hochberg")
    rows = []
    for dep in unit.depends:
        rows += ctx.store.load(dep)["tables"]["invert_neurons"]
    log_p = np.asarray([r["log_p_value"] for r in rows], np.float64)
    q, log_q = bh(log_p=log_p)
    out = [{"model": r["model"], "layer": r["layer"], "neuron": r["neuron"],
            "formula": r["formula"], "auc": r["auc"], "log_p_value": r["log_p_value"],
            "q_value": float(qi), "log_q_value": float(lq)}
           for r, qi, lq in zip(rows, np.asarray(q), np.asarray(log_q))]
    arrays = {"log_q_value": np.asarray(log_q, np.float64)}
    if rows and all("perm_p_value" in r for r in rows):
        # the selection-aware permutation p-values, BH over the whole sweep as well
        perm_q, _ = bh(np.asarray([r["perm_p_value"] for r in rows], np.float64))
        for o, r, pq in zip(out, rows, np.asarray(perm_q)):
            o.update(perm_p_value=r["perm_p_value"], perm_q_value=float(pq))
        arrays["perm_q_value"] = np.asarray(perm_q, np.float64)
    order = np.argsort(np.nan_to_num(np.asarray(log_q, np.float64), nan=np.inf),
                       kind="stable")
    out = [out[i] for i in order]
    n_sig = int(np.sum(np.asarray(q) < 0.05))
    summary = (f"{n_sig} of {len(out)} neurons have nominal q < 0.05 (Benjamini-Hochberg "
               f"over the whole sweep)")
    if "perm_q_value" in arrays:
        summary += (f"; {int(np.sum(arrays['perm_q_value'] < 0.05))} have permutation "
                    f"q < 0.05 (selection-aware)")
    return {"arrays": arrays, "tables": {"invert_sweep_fdr": out}, "figures": [],
            "meta": {"threshold": 0.05, "summary": summary}}


# ---------------------------------------------------------------------------- concepts
def _subset(n: int, cap, seed: int) -> np.ndarray:
    """All of ``range(n)`` when ``cap`` is None or >= n, else a seeded sorted subset."""
    from repsim_jax.data import sample_indices
    return sample_indices(n, None if cap is None else int(cap), seed)


def adapt_concepts(unit, ctx) -> dict[str, Any]:
    """ICE concepts (NMF of the non-negative activations) of each layer of the group.

    At scale (activations from the on-disk store): the concept vectors are fitted on a
    seeded subset of ``fit_images`` inputs (all when N is smaller), then every input's
    concept maps are computed chunk by chunk against them (``ice_transform``) and
    resized to ``resolution``; memory is bounded by ``fit_images`` and the chunk size.
    The reconstruction errors are those of the fitting inputs. Net2Vec trains and tests
    on a seeded subset of ``net2vec_images`` inputs (first half / second half).
    """
    opts = ctx.cfg.method_options("concepts")
    ice_fit = _fn("repsim_jax.concepts.nmf", "ice_fit")
    ice_transform = _fn("repsim_jax.concepts.nmf", "ice_transform")
    resize = _fn("repsim_jax.concepts.similarity", "resize_maps")
    stored = ctx.stored_activations(unit.model, unit.layers)
    n = len(ctx.data)
    fit_idx = _subset(n, opts.get("fit_images"), ctx.seed(unit))
    arrays, rows, figures = {}, [], []
    r = int(opts["resolution"])
    n_show = min(4, n)
    for l in unit.layers:
        a = np.maximum(_spatial(stored[l].take(fit_idx)), 0.0)   # ICE: non-negative
        k = int(min(opts["k"], a.shape[-1]))
        ice = ice_fit(a, k, layer=l, max_iter=int(opts["max_iter"]))
        del a
        if len(fit_idx) == n:
            maps = np.asarray(ice.maps, np.float32)
            small = np.asarray(resize(maps, (r, r)), np.float32)
            first = maps[:n_show]
        else:
            small, first = None, None
            for s, block in stored[l].chunks():
                m = np.asarray(ice_transform(ice, np.maximum(_spatial(block), 0.0),
                                             max_iter=int(opts["max_iter"])), np.float32)
                if small is None:
                    small = np.empty((n, r, r, m.shape[-1]), np.float32)
                small[s:s + len(m)] = np.asarray(resize(m, (r, r)), np.float32)
                if first is None:
                    first = m[:n_show]
        arrays[f"maps/{l}"] = small
        arrays[f"components/{l}"] = np.asarray(ice.components, np.float32)
        # first images' concept maps, one tile per (image, concept), each normalised
        tiles = first.transpose(0, 3, 1, 2).reshape(n_show * k, *first.shape[1:3])
        tiles = tiles / np.maximum(tiles.reshape(len(tiles), -1).max(1), 1e-12)[:, None, None]
        arrays[f"map_tiles/{l}"] = tiles
        # the data's own images (a model-free sweep from precomputed activations has them too)
        arrays["example_images"] = np.asarray(_take_images(ctx.data.images, range(n_show)),
                                              np.float32)
        figures.append({"kind": "images", "array": f"map_tiles/{l}", "name": f"maps_{l}",
                        "cols": k, "title": f"{unit.model} {l}: ICE concept maps "
                        f"(rows: images, columns: concepts)"})
        rows.append({"model": unit.model, "layer": l, "k": k, "n_inputs": int(len(fit_idx)),
                     "reconstruction_error": float(ice.reconstruction_error),
                     "relative_error": float(ice.relative_error), "n_iter": int(ice.n_iter),
                     "fit_images": int(len(fit_idx))})
    tables, n2v_meta = {"concepts_ice": rows}, {}
    if opts.get("net2vec", True) and ctx.data.concept_masks is not None:
        tables["concepts_net2vec"], n2v_meta["net2vec_images"] = _net2vec(
            unit, ctx, stored, opts, arrays, figures)
    names = list(ctx.shapes.get(unit.model, {}))
    return {"arrays": arrays, "tables": tables, "figures": figures,
            "meta": {"n_inputs": len(ctx.data),
                     # forward position of each layer among the model's capturable layers:
                     # the report orders Net2Vec's concept x layer map by it
                     "layer_index": {l: names.index(l) for l in unit.layers if l in names},
                     "concept_names": list(ctx.data.concept_names or []),
                     **n2v_meta,
                     "summary": f"ICE with k={opts['k']} on {len(unit.layers)} layer(s)"
                                + (", Net2Vec" if "concepts_net2vec" in tables else "")}}


def _net2vec(unit, ctx, stored, opts, arrays, figures) -> tuple[list[dict], int]:
    """Supervised concept filters (Net2Vec): trained on the first half of the (subset of)
    images, set IoU on the second half, every concept x layer of the group at once.
    Returns the table rows and the number of images used (both halves)."""
    net2vec = _fn("repsim_jax.concepts.net2vec", "net2vec")
    Net2VecConfig = _fn("repsim_jax.concepts.net2vec", "Net2VecConfig")
    idx = _subset(len(ctx.data), opts.get("net2vec_images"), ctx.seed(unit) + 1)
    masks = ctx.data.concept_masks
    masks = np.asarray(masks[idx]) if len(idx) < len(ctx.data) else np.asarray(masks)
    names = list(ctx.data.concept_names)
    present = masks.reshape(-1, masks.shape[-1]).any(0)
    n = len(masks) // 2
    keep = np.flatnonzero(masks[:n].reshape(-1, masks.shape[-1]).any(0)
                          & masks[n:].reshape(-1, masks.shape[-1]).any(0) & present)
    cfg = Net2VecConfig(epochs=int(opts.get("net2vec_epochs", 30)), seed=ctx.seed(unit),
                        progress=_inner(ctx))
    acts = {l: _spatial(stored[l].take(idx)) for l in unit.layers}
    res = net2vec({l: acts[l][:n] for l in unit.layers}, masks[:n][..., keep],
                  {l: acts[l][n:] for l in unit.layers}, masks[n:][..., keep],
                  [names[i] for i in keep], cfg)
    iou = np.asarray(res.iou, np.float64)
    arrays["net2vec_iou"] = iou
    figures.append({"kind": "heatmap", "array": "net2vec_iou", "name": "net2vec",
                    "title": f"{unit.model}: Net2Vec set IoU (held-out half)",
                    "xlabels": list(res.concept_names), "ylabels": list(res.layers),
                    "vmin": 0.0, "vmax": 1.0})
    return [{"model": unit.model, "layer": l, "concept": c, "set_iou": float(iou[i, j])}
            for i, l in enumerate(res.layers) for j, c in enumerate(res.concept_names)
            ], int(len(idx))


def adapt_concepts_compare(unit, ctx) -> dict[str, Any]:
    """Layer x layer concept similarity (best-match of the k x k concept matrices)."""
    opts = ctx.cfg.method_options("concepts")
    pairwise = _fn("repsim_jax.concepts.similarity", "pairwise_similarity")
    layer_scores = _fn("repsim_jax.concepts.similarity", "layer_scores")
    keys, maps = [], []
    for dep in unit.depends:
        res = ctx.store.load(dep)
        model = dep.split("__")[1]
        for name, a in res["arrays"].items():
            if name.startswith("maps/"):
                keys.append((model, name[5:]))
                maps.append(a)
    kmax = max(m.shape[-1] for m in maps)
    # layers with fewer channels than k have fewer concepts: pad with empty maps
    maps = [np.pad(m, [(0, 0)] * 3 + [(0, kmax - m.shape[-1])]) for m in maps]
    stack = np.stack(maps)
    S = np.asarray(pairwise(stack, stack, metric=opts["metric"], mesh=ctx.mesh
                            if ctx.mesh.devices.size > 1 else None), np.float64)
    how = opts.get("layer_score", "best_match")
    M = np.asarray(layer_scores(S, how), np.float64)
    labels = _depth_labels(ctx, keys)
    rows = [{"model_a": ka[0], "layer_a": ka[1], "model_b": kb[0], "layer_b": kb[1],
             f"{opts['metric']}_{how}": float(M[i, j])}
            for i, ka in enumerate(keys) for j, kb in enumerate(keys)]
    return {"arrays": {"layer_similarity": M, "concept_similarity": S},
            "tables": {"concepts_layer_similarity": rows,
                       "concepts_best_matches": _best_matches(keys, M,
                                                              f"{opts['metric']}_{how}")},
            "figures": [{"kind": "heatmap", "array": "layer_similarity", "name": "layer_map",
                         "title": f"layer x layer concept similarity ({opts['metric']}, "
                                  f"{how})", "xlabels": labels, "ylabels": labels}],
            "meta": {"labels": labels, "summary": f"{len(keys)} layers",
                     "n_inputs": len(ctx.data),
                     "measure": f"{opts['metric']} {how}",
                     "relative_depth": _relative_depth(ctx, keys)}}


# ------------------------------------------------------------------------------ cladec
def _head(images, n: int):
    """The first ``n`` images: a slice in memory, a lazy view of a streamed source."""
    from repsim_jax.data.views import in_memory
    return images[:n] if in_memory(images) else images.take(np.arange(n))


def _tail(images, n: int):
    """The images from index ``n`` on (a lazy view for a streamed source)."""
    from repsim_jax.data.views import in_memory
    return images[n:] if in_memory(images) else images.take(np.arange(n, len(images)))


def _sse_per_image(images, rec, chunk: int) -> np.ndarray:
    """(N,) sum of squared errors per image, chunk by chunk (each image's sum is the same
    numpy reduction whatever the chunking, so in-memory numbers are unchanged)."""
    from repsim_jax.data.views import chunks
    out = []
    for s, x in chunks(images, chunk):
        r = np.asarray(rec[s:s + len(x)], np.float32)
        out.append(((r - x) ** 2).reshape(len(x), -1).sum(1))
    return np.concatenate(out)


def adapt_cladec(unit, ctx) -> dict[str, Any]:
    """ClaDec decoders (one per alpha) and the reference auto-encoder of one layer:
    reconstructions, errors, retrain accuracies.

    ``[cladec] alpha`` is a number or a list; all alphas train as one vmapped step. The
    grid holds the first inputs, one row of ClaDec decodings per alpha and the
    auto-encoder's; the table one row per alpha. A lazy data set streams: the decoders
    train on minibatches gathered by index, the reconstructions are lazy views decoded
    chunk by chunk for the errors and the retrain check, and only the shown grid is stored
    (in-memory data also keeps every reconstruction: ``reconstruction`` (N, ...) for one
    alpha, (A, N, ...) in the order of ``meta["alphas"]`` for several)."""
    from repsim_jax.data.views import gather, in_memory
    opts = ctx.cfg.method_options("cladec")
    fit_cladec = _fn("repsim_jax.cladec.train", "fit_cladec")
    fit_ae = _fn("repsim_jax.cladec.train", "fit_reference_ae")
    reconstruct = _fn("repsim_jax.cladec.train", "reconstruct")
    reconstruct_ae = _fn("repsim_jax.cladec.train", "reconstruct_ae")
    model = ctx.models[unit.model]
    images = ctx.images(unit.model)          # an array, or a lazy view of a streamed set
    streamed = not in_memory(images)
    bs = ctx._batch_size()
    (layer,) = unit.layers
    raw = opts["alpha"]
    alphas = [float(a) for a in (raw if isinstance(raw, (list, tuple)) else [raw])]
    seed = ctx.seed(unit)
    common = dict(steps=int(opts["steps"]), lr=float(opts["lr"]),
                  batch_size=min(int(opts["batch_size"]), len(images)), seed=seed,
                  progress=_inner(ctx))
    fit = fit_cladec(model, images, ctx.data.labels, [layer], alphas, **common)
    ae = fit_ae(model, images, [layer], **common)
    rbs = bs if streamed else 256
    recs = [reconstruct(fit, images, layer, a, batch_size=rbs) for a in alphas]
    rec_ae = reconstruct_ae(ae, images, layer, batch_size=rbs)
    if not streamed:
        recs = [np.asarray(r, np.float32) for r in recs]
        rec_ae = np.asarray(rec_ae, np.float32)
    n_show = min(6, len(images))
    first = np.arange(n_show)
    grid = np.concatenate([np.asarray(gather(x, first, bs), np.float32)
                           for x in (images, *recs, rec_ae)])
    sse_ae = float(_sse_per_image(images, rec_ae, bs).mean())
    rows = [{"model": unit.model, "layer": layer, "alpha": a, "steps": int(opts["steps"]),
             "lr": float(opts["lr"]),
             "sse_per_image_cladec": float(_sse_per_image(images, r, bs).mean()),
             "sse_per_image_ae": sse_ae} for a, r in zip(alphas, recs)]
    retrain_steps = int(opts.get("retrain_steps", 0))
    if retrain_steps > 0 and len(images) >= 4:
        # the paper's retraining check: a fresh classifier of the same architecture trained
        # on the first half of each image set, accuracy on the second half
        retrain = _fn("repsim_jax.cladec.evaluate", "retrain_accuracy")
        h = len(images) // 2
        names = [f"cladec alpha={a:g}" for a in alphas]
        sets = {"input": images, **dict(zip(names, recs)), "ae": rec_ae}
        labels = np.asarray(ctx.data.labels)
        acc = retrain(model, {k: _head(v, h) for k, v in sets.items()}, labels[:h],
                      {k: _tail(v, h) for k, v in sets.items()}, labels[h:],
                      steps=retrain_steps, batch_size=min(32, h), seed=seed,
                      progress=_inner(ctx), **({"eval_batch_size": bs} if streamed else {}))
        for row, name in zip(rows, names):
            row.update({"retrain_accuracy_input": float(acc["input"]),
                        "retrain_accuracy_cladec": float(acc[name]),
                        "retrain_accuracy_ae": float(acc["ae"]),
                        "retrain_steps": retrain_steps,
                        "retrain_test_images": len(images) - h})
    arrays = {"grid": grid}
    if not streamed:
        arrays["reconstruction"] = recs[0] if len(recs) == 1 else np.stack(recs)
        arrays["reconstruction_ae"] = rec_ae
    al = ", ".join(f"{a:g}" for a in alphas)
    return {"arrays": arrays, "tables": {"cladec": rows},
            "figures": [{"kind": "images", "array": "grid", "name": "grid", "cols": n_show,
                         "title": f"{unit.model} {layer}: input / ClaDec (alpha={al}) / "
                                  f"reference AE"}],
            "meta": {"n_show": n_show, "layer": layer, "alpha": alphas[0], "alphas": alphas,
                     "n_inputs": len(images),
                     "summary": "SSE/image " + ", ".join(
                         f"ClaDec({r['alpha']:g}) {r['sse_per_image_cladec']:.2f}"
                         for r in rows) + f", AE {sse_ae:.2f}"}}


# --------------------------------------------------------------------------- summaries
def adapt_summaries(unit, ctx) -> dict[str, Any]:
    """Visual summaries per class: perturbation masks, regions, clusters (member strips)."""
    opts = ctx.cfg.method_options("summaries")
    visual_summaries = _fn("repsim_jax.summaries.pipeline", "visual_summaries")
    crop_regions = _fn("repsim_jax.summaries.regions", "crop_regions")
    model = ctx.models[unit.model]
    images = ctx.images(unit.model)
    labels = np.asarray(ctx.data.labels)
    classes = None if opts["classes"] == "all" else [int(c) for c in opts["classes"]]
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # degenerate classes are reported in the table
        res = visual_summaries(model, images, labels, classes,
                               images_per_class=int(opts["max_images"]),
                               smooth_steps=int(opts["steps_smooth"]),
                               sharp_steps=int(opts["steps_sharp"]),
                               progress=_inner(ctx))
    names = list(ctx.data.class_names)
    arrays: dict[str, np.ndarray] = {"image_indices": np.asarray(res.image_indices)}
    figures, rows = [], []
    if res.masks is not None:
        sel = np.asarray(res.image_indices)
        sharp = np.asarray(res.masks.sharp, np.float32)
        arrays["sharp_masks"] = sharp
        n_show = min(8, len(sel))
        shown = _take_images(images, sel[:n_show])
        arrays["mask_tiles"] = np.concatenate([
            shown, np.repeat(sharp[:n_show, ..., None], 3, -1),
            shown * sharp[:n_show, ..., None]])
        figures.append({"kind": "images", "array": "mask_tiles", "name": "masks",
                        "cols": n_show, "title": f"{unit.model}: images / sharp masks "
                        f"(1 = kept) / kept pixels"})
    size, max_cols = 24, 6
    for c, cs in sorted(res.classes.items()):
        cname = names[c] if c < len(names) else str(c)
        rows.append({"model": unit.model, "class": int(c), "class_name": cname,
                     "status": cs.status, "images": int(len(cs.image_indices)),
                     "regions": int(len(cs.regions)), "clusters": int(len(cs.members)),
                     "summaries": int(cs.n_summaries)})
        strips = cs.summaries[:6]
        if not strips:
            continue
        class_images = _take_images(images, cs.image_indices)
        tiles = np.ones((len(strips), max_cols, size, size, images.shape[-1]), np.float32)
        for r, members in enumerate(strips):
            crops = np.asarray(crop_regions(class_images,
                                            cs.regions.take(np.asarray(members)[:max_cols]),
                                            size))
            tiles[r, :len(crops)] = crops
        arrays[f"strips/{c}"] = tiles.reshape(-1, size, size, images.shape[-1])
        figures.append({"kind": "images", "array": f"strips/{c}", "name": f"class{c}",
                        "cols": max_cols, "title": f"{unit.model}, class {cname}: "
                        f"{cs.n_summaries} summaries (rows), member crops"})
    counts = {r["class_name"]: r["summaries"] for r in rows}
    return {"arrays": arrays, "tables": {"summaries": rows}, "figures": figures,
            "meta": {"summary": f"summaries per class: {counts}"}}


ADAPTERS: dict[str, Callable] = {
    "semantic": adapt_semantic, "semantic_compare": adapt_semantic_compare,
    "similarity": adapt_similarity,
    "invert": adapt_invert, "invert_fdr": adapt_invert_fdr, "concepts": adapt_concepts,
    "concepts_compare": adapt_concepts_compare, "cladec": adapt_cladec,
    "summaries": adapt_summaries,
}


def run_unit(unit, ctx) -> dict[str, Any]:
    """Runs the adapter of ``unit.method``."""
    return ADAPTERS[unit.method](unit, ctx)
