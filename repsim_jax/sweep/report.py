"""The results directory of a sweep: arrays, tables, pictures and ``report.html``.

Reads every finished unit back from its checkpoint (so a resumed run reports exactly what
an uninterrupted one would) and writes::

    OUT/arrays/<unit key>.npz     every array of the unit
    OUT/tables/<table>.csv/.json  rows of all units, e.g. invert_neurons (every neuron's
                                  label with AUC and p-value), semantic_layer_similarity
                                  (layer x layer, long format), concepts_ice ...
    OUT/figures/<unit key>__<nn>_<name>.png   every picture of the report
    OUT/report.html               self-contained and offline: PNGs inlined as data URIs,
                                  one inline script (sortable / searchable tables), no
                                  network access

What the report shows (figures from :mod:`repsim_jax.sweep.figures`, the functions the
notebooks call too), each with a caption naming what is plotted, N and the measure:

* semantic RSMs: semantic and spatio-semantic side by side on one colour scale, inputs
  ordered by class (stable within a class) with class boundaries and names, retrieval F1
  in the caption, and a thumbnail strip of each class's inputs;
* layer x layer similarity (semantic RSMs, concept similarity): one map per model pair,
  within-model and across-model maps separately, axes labelled by layer name, the measure
  named (``meta["measure"]`` of the unit or its figure spec, else the method option), and
  a line plot of each layer's best-match similarity against relative depth for every pair
  of models;
  The ``[similarity]`` method (measures on the activations) gets the same maps and depth
  plot for each of its measures (best match = minimum for a distance such as Procrustes);
* INVERT: a per-layer summary (fraction of neurons labelled at AUC >= 0.9, significant
  neurons, most frequent concepts), every neuron in one searchable, sortable table per
  layer with significant rows (q below the threshold) marked, and for the top neurons the
  activation distribution of inputs with and without the formula's concept. With
  ``[invert] permutations = n`` significance is the selection-aware permutation q
  (``perm_q_value``); without, the page says the nominal BH q is anti-conservative;
* concepts: ICE concept maps over example images; Net2Vec IoU of all of a model's
  concepts units as ONE concept x layer map per model (layers in forward order);
* ClaDec: input / ClaDec / auto-encoder grid per layer and alpha next to its errors and
  retrain accuracies; visual summaries: masks and member strips per class;
* every table, shown in part, with its row count and a link to the full CSV.

:func:`render` (``repsim report OUT``) re-renders the report of an existing output
directory from its checkpoints alone: no model, data or unit is recomputed.
"""
from __future__ import annotations

import base64
import collections
import csv
import html
import io
import json
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from repsim_jax.sweep.store import Store, atomic_write_bytes, atomic_write_text, to_jsonable

__all__ = ["write_report", "render", "render_figure", "write_table", "AUC_LABELLED"]

AUC_LABELLED = 0.9      # "a neuron has a label" in the per-layer INVERT summary
TABLE_PREVIEW = 40      # rows of a table shown in the page (the CSV has all)


def _csv_bytes(rows: Sequence[dict]) -> bytes:
    cols: list[str] = []
    for r in rows:
        cols += [c for c in r if c not in cols]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: (json.dumps(v) if isinstance(v, (list, dict)) else v)
                    for k, v in r.items()})
    return buf.getvalue().encode()


def write_table(directory: Path, name: str, rows: Sequence[dict]) -> list[Path]:
    """``name.csv`` and ``name.json`` (same rows) under ``directory``, atomically."""
    rows = to_jsonable(list(rows))
    csv_path, json_path = directory / f"{name}.csv", directory / f"{name}.json"
    atomic_write_bytes(csv_path, _csv_bytes(rows))
    atomic_write_text(json_path, json.dumps(rows, indent=1))
    return [csv_path, json_path]


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, **{k: np.asarray(v) for k, v in arrays.items()})
    return buf.getvalue()


def render_figure(spec: dict[str, Any], arrays: dict[str, np.ndarray]) -> bytes:
    """PNG bytes of one generic figure spec (heatmap / images / hist) of an adapter; used
    for the figures of methods the report has no dedicated section for."""
    from repsim_jax.sweep import figures as F
    kind = spec["kind"]
    a = np.asarray(arrays[spec["array"]])
    if kind == "heatmap":
        fig = F.heatmap(a, spec.get("ylabels"), spec.get("xlabels"), title=spec.get("title", ""),
                        vmin=spec.get("vmin"), vmax=spec.get("vmax"),
                        xlabel=spec.get("xlabel", ""), ylabel=spec.get("ylabel", ""),
                        cbar=spec.get("measure", ""), cmap=spec.get("cmap", "viridis"))
    elif kind == "images":
        if a.ndim == 3:
            a = a[..., None]
        cols = int(spec.get("cols", min(len(a), 8)))
        rows = [a[i:i + cols] for i in range(0, len(a), cols)]
        fig = F.image_rows(rows, col_titles=spec.get("titles"), cmap=spec.get("cmap", "magma"))
        fig.suptitle(spec.get("title", ""), fontsize=9)
    elif kind == "hist":
        fig = F.histogram(a.ravel(), xlabel=spec.get("xlabel", ""), title=spec.get("title", ""),
                          bins=spec.get("bins", 30))
    else:
        raise ValueError(f"unknown figure kind {kind!r}")
    return F.to_png(fig)


# ---------------------------------------------------------------------------- page parts
_CSS = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1280px;color:#222;
padding:0 1em}h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-top:.6em}
h3{margin-bottom:.3em}table{border-collapse:collapse;font-size:.8em;margin:.4em 0}
td,th{border:1px solid #ddd;padding:2px 6px}th{background:#f3f3f3}
table.sortable th{cursor:pointer;user-select:none}table.sortable th:after{content:" \\2195";
color:#aaa}tr.sig td{background:#fff4d6}td.num{text-align:right;font-variant-numeric:tabular-nums}
.scroll{max-height:420px;overflow:auto;display:inline-block;border:1px solid #eee}
figure{display:inline-block;margin:.4em;vertical-align:top}
figcaption{font-size:.78em;color:#444;max-width:640px}img{max-width:100%}
.row{display:flex;flex-wrap:wrap;gap:1em;align-items:flex-start}
input.filter{margin:.3em 0;padding:2px 6px;width:22em}.count{font-size:.8em;color:#666}
pre{background:#f7f7f7;padding:.6em;font-size:.8em;overflow:auto}.note{color:#666;font-size:.85em}"""

# sortable + searchable tables; inline, no network
_SCRIPT = r"""
(function(){
function val(cell, num){
  var v = cell.getAttribute('data-v'); if (v === null) v = cell.textContent;
  if (!num) return v.toLowerCase();
  var x = parseFloat(v); return isNaN(x) ? null : x;
}
function sortBy(table, col, th){
  var num = th.getAttribute('data-type') === 'num';
  var asc = th.getAttribute('data-dir') !== 'asc';
  Array.prototype.forEach.call(table.tHead.rows[0].cells, function(c){ c.removeAttribute('data-dir'); });
  th.setAttribute('data-dir', asc ? 'asc' : 'desc');
  var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
  rows.sort(function(a, b){
    var x = val(a.cells[col], num), y = val(b.cells[col], num);
    if (x === y) return 0; if (x === null) return 1; if (y === null) return -1;
    return (x < y ? -1 : 1) * (asc ? 1 : -1);
  });
  rows.forEach(function(r){ body.appendChild(r); });
}
function filter(input){
  var table = document.getElementById(input.getAttribute('data-table'));
  var q = input.value.toLowerCase(), shown = 0, rows = table.tBodies[0].rows;
  for (var i = 0; i < rows.length; i++){
    var ok = rows[i].textContent.toLowerCase().indexOf(q) >= 0;
    rows[i].style.display = ok ? '' : 'none'; if (ok) shown++;
  }
  var c = document.getElementById(input.getAttribute('data-table') + '-count');
  if (c) c.textContent = shown + ' of ' + rows.length + ' rows shown';
}
document.querySelectorAll('table.sortable').forEach(function(t){
  Array.prototype.forEach.call(t.tHead.rows[0].cells, function(th, i){
    th.addEventListener('click', function(){ sortBy(t, i, th); });
  });
});
document.querySelectorAll('input.filter').forEach(function(inp){
  inp.addEventListener('input', function(){ filter(inp); });
});
})();
"""


def _e(x) -> str:
    return html.escape(str(x))


def _fmt(v) -> str:
    if isinstance(v, bool):
        return "yes" if v else ""
    if isinstance(v, float):
        return "nan" if not np.isfinite(v) else f"{v:.4g}"
    return str(v)


def _html_table(rows: Sequence[dict], limit: int | None = TABLE_PREVIEW, *,
                table_id: str | None = None, sortable: bool = False,
                row_class=None, columns: Sequence[str] | None = None) -> str:
    if not rows:
        return "<p>(empty)</p>"
    cols: list[str] = list(columns or [])
    if not cols:
        for r in rows:
            cols += [c for c in r if c not in cols]
    numeric = {c: all(isinstance(r.get(c), (int, float)) and not isinstance(r.get(c), bool)
                      for r in rows if r.get(c) is not None) for c in cols}
    head = "".join(f"<th{' data-type=num' if numeric[c] else ''}>{_e(c)}</th>" for c in cols)
    shown = rows if limit is None else rows[:limit]

    def cell(r, c):
        v = r.get(c, "")
        if numeric[c] and v != "":
            return f"<td class=num data-v='{float(v)!r}'>{_e(_fmt(v))}</td>"
        return f"<td>{_e(_fmt(v))}</td>"
    body = "".join(
        f"<tr{' class=' + row_class(r) if row_class and row_class(r) else ''}>"
        + "".join(cell(r, c) for c in cols) + "</tr>" for r in shown)
    attrs = (f" id='{table_id}'" if table_id else "") + (" class='sortable'" if sortable else "")
    return f"<table{attrs}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


class _Figures:
    """Writes each figure to OUT/figures and returns it as an inlined <figure>."""

    def __init__(self, root: Path):
        self.dir = root / "figures"
        self.count: collections.Counter = collections.Counter()

    def png(self, png: bytes, key: str, name: str, caption: str) -> str:
        i = self.count[key]
        self.count[key] += 1
        fname = f"{key}__{i:02d}_{re.sub(r'[^A-Za-z0-9_.+-]', '_', name)}.png"
        atomic_write_bytes(self.dir / fname, png)
        b64 = base64.b64encode(png).decode()
        return (f'<figure><img src="data:image/png;base64,{b64}" alt="{_e(fname)}">'
                f"<figcaption>{caption}</figcaption></figure>")

    def add(self, fig, key: str, name: str, caption: str, dpi: int = 90) -> str:
        from repsim_jax.sweep.figures import to_png
        return self.png(to_png(fig, dpi), key, name, caption)


# ----------------------------------------------------------------------------- sections
def _measure(res: dict, default: str) -> str:
    m = res["meta"].get("measure")
    if not m:
        m = next((s.get("measure") for s in res["figures"] if s.get("measure")), None)
    return str(m or default)


def _semantic_section(units, figs: _Figures, opts: dict) -> str:
    from repsim_jax.sweep import figures as F
    out, thumbs_done = [], False
    for key, res in units:
        A, meta = res["arrays"], res["meta"]
        rows = res["tables"].get("semantic_layers", [])
        names = meta.get("class_names") or None
        labels = A.get("inputs/labels")
        block = [f"<h3>{_e(key)}</h3>"]
        if labels is not None and "inputs/thumbs" in A and not thumbs_done:
            thumbs_done = True
            lab = labels[A["inputs/thumb_index"]]
            block.append(figs.add(
                F.class_thumbnails(A["inputs/thumbs"], lab, names), key, "classes",
                f"The inputs of each class (up to 8 per class, data order) of the N={len(labels)}"
                f" inputs every RSM below compares; RSM axes are ordered by class in this "
                f"order."))
        matcher, kernel = meta.get("matcher", opts.get("matcher")), meta.get(
            "kernel", opts.get("kernel"))
        for r in rows:
            l, model = r["layer"], r["model"]
            S, B = A.get(f"rsm/{l}"), A.get(f"rsm_identity/{l}")
            if S is None or B is None:
                continue
            f1 = ""
            if "retrieval_f1_semantic" in r:
                f1 = (f"; concept retrieval F1: semantic <b>{r['retrieval_f1_semantic']:.3f}"
                      f"</b>, spatio-semantic <b>{r['retrieval_f1_identity']:.3f}</b>")
            top1 = ""
            if "top1_class_semantic" in r:
                top1 = (f"; nearest neighbour of the same class: {r['top1_class_semantic']:.3f}"
                        f" / {r['top1_class_identity']:.3f}")
            fig = F.rsm_pair(S, B, labels, names, title=f"{model} {l}",
                             left=f"semantic ({matcher}, {kernel})",
                             right="spatio-semantic (identity)")
            block.append(figs.add(fig, key, f"rsm_{l}", (
                f"<b>{_e(model)} {_e(l)}</b>: semantic RSM ({_e(matcher)} matching of spatial "
                f"positions, {_e(kernel)} kernel) and spatio-semantic RSM (positions compared "
                f"in place) of N={len(S)} inputs, " +
                ("ordered by class (stable), class boundaries drawn, " if labels is not None
                 else "in data order, ") + f"one colour scale{f1}{top1}.")))
        out.append("".join(block))
    return "".join(out)


def _split_label(label: str) -> tuple[str, str]:
    m, _, l = str(label).partition(":")
    return m, l


def _layer_similarity_section(units, figs: _Figures, default_measure: str, what: str) -> str:
    out = []
    for key, res in units:
        A, meta = res["arrays"], res["meta"]
        if "layer_similarity" not in A or "labels" not in meta:
            continue
        out.append(f"<h3>{_e(key)}</h3>" + _layer_maps(
            figs, key, A["layer_similarity"], meta, _measure(res, default_measure), what))
    return "".join(out)


def _similarity_section(units, figs: _Figures) -> str:
    """The ``[similarity]`` method (repsim_jax.similarity on activations): per measure, the
    same per-pair maps and depth plot as the semantic / concept layer maps."""
    from repsim_jax.sweep.adapters import _is_similarity, _safe
    out = []
    for key, res in units:
        A, meta = res["arrays"], res["meta"]
        if "labels" not in meta:
            out.append(_generic_section([(key, res)], figs))
            continue
        captions = {s.get("measure"): s.get("caption", "") for s in res["figures"]}
        titles = {s.get("measure"): s.get("title") for s in res["figures"]}
        higher = meta.get("higher_is_similar", {})
        block = [f"<h3>{_e(key)}</h3>"]
        measures = meta.get("measures") or [s["measure"] for s in res["figures"]]
        for label in measures:
            name = _safe(label)
            if f"similarity/{name}" not in A:
                continue
            hi = higher.get(label)
            if hi is None:
                try:
                    hi = _is_similarity(label)
                except (KeyError, ImportError):
                    hi = True
            block.append(f"<h4>{_e(titles.get(label) or label)}</h4>" + _layer_maps(
                figs, key, A[f"similarity/{name}"], meta, label, "activations",
                higher=bool(hi), note=captions.get(label, ""), tag=name
                if len(measures) > 1 else ""))
        out.append("".join(block))
    return "".join(out)


def _layer_maps(figs: _Figures, key: str, M, meta: dict, measure: str, what: str, *,
                higher: bool = True, note: str = "", tag: str = "") -> str:
    """One map per model pair (within-model, then across-model), and each layer's best
    match against relative depth for every ordered pair of models."""
    from repsim_jax.sweep import figures as F
    M = np.asarray(M, np.float64)
    keys = [_split_label(s) for s in meta["labels"]]
    n_in = meta.get("n_inputs")
    n_txt = f"N={n_in} inputs" if n_in else "all inputs of the sweep"
    note = f" ({_e(note)})" if note else ""
    sfx = f"_{tag}" if tag else ""
    models = list(dict.fromkeys(m for m, _ in keys))
    idx = {m: [i for i, (mm, _) in enumerate(keys) if mm == m] for m in models}
    block, within, across = [], [], []
    for a in models:
        for b in models:
            if models.index(b) < models.index(a):
                continue
            sub = M[np.ix_(idx[a], idx[b])]
            fig = F.layer_map(sub, [keys[i][1] for i in idx[a]],
                              [keys[i][1] for i in idx[b]], measure=measure,
                              row_model=a, col_model=b)
            cap = (f"<b>{_e(measure)}</b>{note} of the {what} between every layer of "
                   f"<b>{_e(a)}</b> (rows) and of <b>{_e(b)}</b> (columns), "
                   f"{'within one model' if a == b else 'across models'}; "
                   f"{len(idx[a])} x {len(idx[b])} layers, {n_txt}.")
            (within if a == b else across).append(
                figs.add(fig, key, f"map{sfx}_{a}_{b}", cap))
    block.append("<h4>Within each model</h4><div class=row>" + "".join(within) + "</div>")
    if across:
        block.append("<h4>Across models</h4><div class=row>" + "".join(across) + "</div>")
        curves = F.best_match_curves(M, keys, meta.get("relative_depth"), higher=higher)
        best = "maximum" if higher else "minimum: a distance, lower = more similar"
        block.append(figs.add(F.depth_plot(curves, measure=measure), key, f"depth{sfx}", (
            f"Each layer's best-match <b>{_e(measure)}</b> in the other model ({best} over "
            f"its layers) against the layer's relative depth (layer index / number of "
            f"capturable layers of its model), one line per ordered model pair; {n_txt}.")))
    else:
        block.append("<p class=note>One model: no across-model maps or depth plot.</p>")
    return "".join(block)


def _formula_concepts(formula: str) -> list[str]:
    return [t for t in re.split(r"[\s&|~()]+", formula or "") if t]


def _invert_section(units, fdr_units, figs: _Figures) -> str:
    from repsim_jax.sweep import figures as F
    q_of, pq_of, threshold, n_total = {}, {}, 0.05, None
    for _, res in fdr_units:
        threshold = float(res["meta"].get("threshold", threshold))
        rows = res["tables"].get("invert_sweep_fdr", [])
        n_total = len(rows)
        q_of.update({(r["model"], r["layer"], int(r["neuron"])): r["q_value"] for r in rows})
        pq_of.update({(r["model"], r["layer"], int(r["neuron"])): r["perm_q_value"]
                      for r in rows if "perm_q_value" in r})
    neurons = [r for _, res in units for r in res["tables"].get("invert_neurons", [])]
    perm = bool(neurons) and all("perm_p_value" in r for r in neurons)
    n_perm = max((int(res["meta"].get("permutations", 0) or 0) for _, res in units), default=0)
    where = (f"over all {n_total} neurons of the sweep" if q_of else "over the neurons of "
             "each unit")
    if perm:
        where = f"over all {n_total} neurons of the sweep" if pq_of else where
        q_source = (f"selection-aware permutation q: Benjamini-Hochberg {where} of the "
                    f"permutation p-values ({n_perm or '?'} permutations: the whole search "
                    f"rerun on permuted inputs); column perm_q_value")
        caveat = ""
    else:
        q_source = f"nominal Benjamini-Hochberg q {where}; column q_value"
        caveat = ("<p class=note><b>Caveat:</b> q_value is the nominal Benjamini-Hochberg "
                  "q of the Mann-Whitney p-value of each neuron's <i>best</i> formula, "
                  "chosen by the search on the same inputs; it ignores that selection and "
                  "is anti-conservative (too many neurons look significant). Set "
                  "<code>[invert] permutations = n</code> for selection-aware permutation "
                  "p- and q-values.</p>")
    summary, layer_blocks = [], []
    tid = 0
    for key, res in units:
        A, meta = res["arrays"], res["meta"]
        by_layer: dict[str, list[dict]] = {}
        for r in res["tables"].get("invert_neurons", []):
            by_layer.setdefault(r["layer"], []).append(r)
        n_in = meta.get("n_inputs")
        for layer, rows in by_layer.items():
            model = rows[0]["model"]
            table = []
            for r in rows:
                at = (model, layer, int(r["neuron"]))
                q = q_of.get(at, r.get("q_value_in_unit"))
                q = float("nan") if q is None else float(q)
                t = {"neuron": int(r["neuron"]), "formula": r["formula"],
                     "auc": float(r["auc"]), "concept_fraction": float(r["concept_fraction"]),
                     "p_value": float(r["p_value"]), "q_value": q}
                if perm:
                    pq = pq_of.get(at, r.get("perm_q_value_in_unit"))
                    t["perm_p_value"] = float(r["perm_p_value"])
                    t["perm_q_value"] = float("nan") if pq is None else float(pq)
                sq = t["perm_q_value"] if perm else q
                t["significant"] = bool(np.isfinite(sq) and sq < threshold)
                table.append(t)
            auc = np.asarray([t["auc"] for t in table], np.float64)
            good = [t for t in table if t["auc"] >= AUC_LABELLED]
            freq = collections.Counter(c for t in (good or table)
                                       for c in set(_formula_concepts(t["formula"])))
            summary.append({"model": model, "layer": layer, "neurons": len(table),
                            f"fraction_auc_ge_{AUC_LABELLED}": float(np.mean(auc >= AUC_LABELLED)),
                            "significant": sum(t["significant"] for t in table),
                            "median_auc": float(np.nanmedian(auc)) if np.isfinite(auc).any()
                            else float("nan"),
                            "most_frequent_concepts": ", ".join(
                                f"{c} ({k})" for c, k in freq.most_common(4))})
            tid += 1
            t_id = f"invert-{tid}"
            n_sig = sum(t["significant"] for t in table)
            block = [f"<h3>{_e(model)} {_e(layer)}</h3>",
                     f"<p>All {len(table)} neurons; <b>{n_sig}</b> significant (q &lt; "
                     f"{threshold:g}, {q_source}; highlighted rows). Click a column to sort, "
                     f"type to filter.</p>",
                     f"<input class=filter type=search placeholder='filter: formula, "
                     f"concept, neuron...' data-table='{t_id}' aria-label='filter {t_id}'> "
                     f"<span class=count id='{t_id}-count'>{len(table)} of {len(table)} rows "
                     f"shown</span><br><div class=scroll>",
                     _html_table(table, None, table_id=t_id, sortable=True,
                                 row_class=lambda r: "sig" if r["significant"] else ""),
                     "</div><div class=row>"]
            if f"best_auc/{layer}" in A:
                block.append(figs.add(F.histogram(A[f"best_auc/{layer}"], xlabel="AUC",
                                                  title=f"{model} {layer}"), key,
                                      f"auc_{layer}",
                                      f"AUC of each neuron's best formula, {len(table)} "
                                      f"neurons, N={n_in or '?'} inputs."))
            if f"top_activations/{layer}" in A:
                top = [int(u) for u in A[f"top_neurons/{layer}"]]
                rmap = {int(t["neuron"]): t for t in table}
                titles = [f"neuron {u}: {rmap[u]['formula']}  (AUC {rmap[u]['auc']:.3f})"
                          for u in top]
                block.append(figs.add(F.activation_histograms(
                    A[f"top_activations/{layer}"], A[f"top_holds/{layer}"], titles), key,
                    f"top_{layer}",
                    f"The {len(top)} neurons of highest AUC: distribution of their activation "
                    f"({_e(meta.get('reduction', 'mean'))} over positions) on the N="
                    f"{A[f'top_activations/{layer}'].shape[1]} inputs where the formula holds"
                    f" (red) and where it does not (grey)."))
            block.append("</div>")
            layer_blocks.append("".join(block))
    head = (caveat + f"<h3>Per-layer summary</h3><p>A neuron is <i>labelled</i> when its "
            f"best formula reaches AUC &ge; {AUC_LABELLED}; significant: q &lt; {threshold:g} ({q_source})"
            f"; concepts counted over the labelled neurons' formulas (all neurons' where none"
            f" is labelled). {len(summary)} rows.</p>" + _html_table(summary, None))
    return head + "".join(layer_blocks)


def _concepts_section(units, figs: _Figures, opts: dict) -> str:
    from repsim_jax.sweep import figures as F
    out = []
    for key, res in units:
        A, T = res["arrays"], res["tables"]
        block = [f"<h3>{_e(key)}</h3><div class=row>"]
        ex = A.get("example_images")
        for r in T.get("concepts_ice", []):
            l, model, k = r["layer"], r["model"], int(r["k"])
            tiles = A.get(f"map_tiles/{l}")
            if tiles is None:
                continue
            n = len(tiles) // k
            maps = tiles.reshape(n, k, *tiles.shape[1:])
            fig = (F.concept_overlays(ex[:n], maps) if ex is not None else   # older outputs:
                   F.image_rows([maps[i] for i in range(n)]))                # maps alone
            block.append(figs.add(fig, key, f"maps_{l}", dpi=72, caption=(
                f"<b>{_e(model)} {_e(l)}</b>: the k={k} ICE concepts (NMF of the non-negative "
                f"activations, relative error {r['relative_error']:.3f}) as maps over the "
                f"first {n} of the N={r.get('n_inputs', len(ex))} inputs factorised (rows; "
                f"left: the input), each map normalised to its maximum.")))
        block.append("</div>")
        out.append("".join(block))
    maps = net2vec_by_model(units)
    if maps:
        out.append("<h3>Net2Vec: concept x layer</h3><div class=row>")
    for model, (M, concepts, layers, n_img) in maps.items():
        n_txt = f"N={n_img} inputs" if n_img else "N=? inputs"
        out.append(figs.add(F.net2vec_heatmap(M.T, layers, concepts, model=model),
                            f"concepts__net2vec__{model}", "net2vec", (
            f"<b>Net2Vec</b> set IoU (the measure; 0..1) of each concept (rows) in each layer "
            f"(columns, in forward order) of <b>{_e(model)}</b>: concept filters trained on "
            f"the first half of {n_txt}, IoU with the ground-truth concept masks on the "
            f"second half; {len(concepts)} concepts x {len(layers)} layers"
            + ("; blank: concept absent from that layer's image halves" if
               np.isnan(M).any() else "") + ".")))
    if maps:
        out.append("</div>")
    return "".join(out)


def net2vec_by_model(units) -> dict[str, tuple[np.ndarray, list[str], list[str], int | None]]:
    """Net2Vec set IoU of ALL concepts units of each model as one concept x layer matrix:
    ``{model: (iou (concepts, layers), concept names, layer names, N images)}``, layers in
    forward order (the units' ``meta["layer_index"]``; run order for older outputs),
    concepts in the data set's order (``meta["concept_names"]``; first-seen order for older
    outputs); NaN where a unit did not test a concept."""
    cells: dict[str, dict[tuple[str, str], float]] = {}
    order: dict[str, dict[str, tuple]] = {}
    concepts: dict[str, list[str]] = {}
    n_img: dict[str, int | None] = {}
    for _, res in units:
        rows = res["tables"].get("concepts_net2vec", [])
        index = res["meta"].get("layer_index", {}) or {}
        for r in rows:
            m, l, c = r["model"], r["layer"], r["concept"]
            cells.setdefault(m, {})[(c, l)] = float(r["set_iou"])
            seen = order.setdefault(m, {})
            if l not in seen:
                seen[l] = (index.get(l, np.inf), len(seen))
            if c not in concepts.setdefault(m, []):
                concepts[m].append(c)
            if rows:
                n = res["meta"].get("net2vec_images", res["meta"].get("n_inputs"))
                n_img[m] = n_img.get(m) or n
    data_order: dict[str, dict[str, int]] = {}
    for _, res in units:
        for r in res["tables"].get("concepts_net2vec", [])[:1]:
            for i, c in enumerate(res["meta"].get("concept_names") or []):
                data_order.setdefault(r["model"], {}).setdefault(c, i)
    out = {}
    for m, cell in cells.items():
        rank = data_order.get(m, {})
        concepts[m] = sorted(concepts[m], key=lambda c: (rank.get(c, np.inf),
                                                         concepts[m].index(c)))
        layers = sorted(order[m], key=lambda l: order[m][l])
        M = np.full((len(concepts[m]), len(layers)), np.nan)
        for (c, l), v in cell.items():
            M[concepts[m].index(c), layers.index(l)] = v
        out[m] = (M, concepts[m], layers, n_img.get(m))
    return out


def _cladec_section(units, figs: _Figures) -> str:
    """Per layer: the grid (inputs, one ClaDec row per alpha, auto-encoder) next to a table
    of errors and retrain accuracies with one column per alpha."""
    from repsim_jax.sweep import figures as F
    out = []
    for key, res in units:
        A, meta = res["arrays"], res["meta"]
        rows = res["tables"].get("cladec", [])
        if "grid" not in A or not rows:
            continue
        r = rows[0]
        alphas = [row["alpha"] for row in rows]
        n = int(meta.get("n_show", len(A["grid"]) // (len(rows) + 2)))
        g = A["grid"]
        parts = [g[i * n:(i + 1) * n] for i in range(len(rows) + 2)]
        fig = F.image_rows(parts, ["input"] + [f"ClaDec\nalpha={a:g}" for a in alphas]
                           + ["auto-\nencoder"])
        al = ", ".join(f"{a:g}" for a in alphas)
        cap = (f"<b>{_e(r['model'])} {_e(r['layer'])}</b>, alpha={al}: the first {n} "
               f"of the N={meta.get('n_inputs', '?')} inputs (all used for training), the "
               f"ClaDec decoding of the layer for each alpha (decoder trained with "
               f"reconstruction + alpha x classification loss, {r['steps']} steps) and the "
               f"reference auto-encoder's reconstruction through the same layer; errors and "
               f"retrain accuracies in the table.")
        cols = [f"alpha={a:g}" for a in alphas]

        def line(name, field):
            return {"quantity": name, **{c: row.get(field) for c, row in zip(cols, rows)}}
        stats = [line("SSE per image, ClaDec", "sse_per_image_cladec"),
                 {"quantity": "SSE per image, auto-encoder",
                  cols[0]: r.get("sse_per_image_ae")}]
        if "retrain_steps" in r:
            stats += [{"quantity": "retrain accuracy on input images",
                       cols[0]: r.get("retrain_accuracy_input")},
                      line("retrain accuracy on cladec images", "retrain_accuracy_cladec"),
                      {"quantity": "retrain accuracy on ae images",
                       cols[0]: r.get("retrain_accuracy_ae")},
                      {"quantity": "retrain: steps / test images",
                       cols[0]: f"{r['retrain_steps']} / {r['retrain_test_images']}"}]
        table = _html_table(stats, None)
        note = ("<p class=note>Retrain accuracy: a fresh classifier of the explained "
                "architecture trained on the first half of each image set, tested on the "
                "second half (input and auto-encoder rows do not depend on alpha).</p>"
                if "retrain_steps" in r else
                "<p class=note>(retrain accuracies off: cladec.retrain_steps = 0)</p>")
        out.append(f"<h3>{_e(key)}</h3><div class=row>{figs.add(fig, key, 'grid', cap)}"
                   f"<div>{table}{note}</div></div>")
    return "".join(out)


def _summaries_section(units, figs: _Figures) -> str:
    from repsim_jax.sweep import figures as F
    out = []
    for key, res in units:
        A = res["arrays"]
        rows = res["tables"].get("summaries", [])
        block = [f"<h3>{_e(key)}</h3><div class=row>"]
        if "mask_tiles" in A:
            t = A["mask_tiles"]
            n = len(t) // 3
            block.append(figs.add(F.image_rows([t[:n], t[n:2 * n], t[2 * n:]],
                                               ["image", "sharp\nmask", "kept\npixels"]),
                                  key, "masks", (
                f"Sparse perturbation masks of the first {n} explained images (1 = pixel kept;"
                f" the rest blurred/replaced): image, mask, kept pixels; "
                f"N={len(A.get('image_indices', []))} explained images in all.")))
        for r in rows:
            c = r["class"]
            s = A.get(f"strips/{c}")
            if s is None:
                continue
            cols = 6
            strips = [s[i:i + cols] for i in range(0, len(s), cols)]
            block.append(figs.add(F.image_rows(strips, [f"summary {i + 1}"
                                                        for i in range(len(strips))],
                                               size=0.9), key, f"class{c}", (
                f"Class <b>{_e(r['class_name'])}</b> of {_e(r['model'])}: {r['summaries']} "
                f"visual summaries (rows; up to 6 shown) of its N={r['images']} images, each "
                f"row the member regions (crops of the masks' kept parts) of one cluster; "
                f"{r['regions']} regions in {r['clusters']} clusters.")))
        block.append("</div>")
        out.append("".join(block))
    return "".join(out)


def _generic_section(units, figs: _Figures) -> str:
    out = []
    for key, res in units:
        parts = [f"<h3>{_e(key)}</h3>"]
        if res["meta"].get("summary"):
            parts.append(f"<p>{_e(res['meta']['summary'])}</p>")
        for spec in res["figures"]:
            png = render_figure(spec, res["arrays"])
            parts.append(figs.png(png, key, spec.get("name", spec["kind"]),
                                  _e(spec.get("title", spec.get("name", "")))))
        out.append("".join(parts))
    return "".join(out)


_TITLES = {"semantic": "Semantic RSMs", "semantic_compare": "Layer x layer: semantic RSMs",
           "invert": "INVERT: concept labels of every neuron",
           "concepts": "Concepts: ICE maps and Net2Vec",
           "concepts_compare": "Layer x layer: concept similarity",
           "cladec": "ClaDec", "summaries": "Visual summaries",
           "similarity": "Layer x layer: activation similarity"}
_ORDER = ["similarity", "semantic_compare", "concepts_compare", "semantic", "invert", "concepts", "cladec",
          "summaries"]


# ---------------------------------------------------------------------------------- main
def _render(store: Store, cfg: dict, keys: Sequence[str], run_info: dict[str, Any]) -> Path:
    root = store.root
    for old in (root / "figures").glob("*.png"):   # figures of an earlier rendering
        old.unlink()
    figs = _Figures(root)
    tables: dict[str, list[dict]] = {}
    by_method: dict[str, list[tuple[str, dict]]] = {}
    for key in keys:
        res = store.load(key)
        if res["arrays"]:
            atomic_write_bytes(root / "arrays" / f"{key}.npz", _npz_bytes(res["arrays"]))
        for name, rows in res["tables"].items():
            tables.setdefault(name, []).extend(rows)
        by_method.setdefault(key.split("__")[0], []).append((key, res))
    tables = {name: rows for name, rows in tables.items() if rows}
    for name, rows in tables.items():
        write_table(root / "tables", name, rows)
    options = cfg.get("options", {}) or {}
    sem_opts, con_opts = dict(options.get("semantic", {})), dict(options.get("concepts", {}))
    sections: list[tuple[str, str]] = []
    methods = sorted(by_method, key=lambda m: (_ORDER.index(m) if m in _ORDER else 99, m))
    for m in methods:
        units = by_method[m]
        if m == "semantic":
            body = _semantic_section(units, figs, sem_opts)
        elif m == "semantic_compare":
            body = _layer_similarity_section(units, figs, sem_opts.get("compare", "similarity"),
                                             "semantic RSMs")
        elif m == "concepts_compare":
            body = _layer_similarity_section(
                units, figs, f"{con_opts.get('metric', 'cosine')} "
                             f"{con_opts.get('layer_score', 'best_match')}",
                "layers' ICE concepts (best-match concept similarity)")
        elif m == "similarity":
            body = _similarity_section(units, figs)
        elif m == "invert":
            body = _invert_section(units, by_method.get("invert_fdr", []), figs)
        elif m == "invert_fdr":
            continue   # its q-values are in the INVERT tables
        elif m == "concepts":
            body = _concepts_section(units, figs, con_opts)
        elif m == "cladec":
            body = _cladec_section(units, figs)
        elif m == "summaries":
            body = _summaries_section(units, figs)
        else:
            body = _generic_section(units, figs)
        listed = units + (by_method.get("invert_fdr", []) if m == "invert" else [])
        summaries = "".join(f"<li><code>{_e(k)}</code>: {_e(r['meta']['summary'])}</li>"
                            for k, r in listed if r["meta"].get("summary"))
        if summaries:
            body = f"<ul class=note>{summaries}</ul>" + body
        sections.append((m, body))
    info = run_info
    dev = info.get("devices", {})
    parts = [f"<!doctype html><html lang=en><head><meta charset='utf-8'><title>repsim report "
             f"{_e(info.get('config_hash', ''))}</title><style>{_CSS}</style></head><body>",
             f"<h1>repsim sweep report</h1><p>configuration hash "
             f"<code>{_e(info.get('config_hash', ''))}</code>; {info.get('units', len(keys))} "
             f"units ({info.get('ran', '?')} computed in the run, {info.get('resumed', '?')} "
             f"resumed); backend {_e(dev.get('backend', '?'))}, "
             f"{dev.get('device_count', '?')} device(s), {dev.get('process_count', '?')} "
             f"process(es).</p>",
             "<h2>Contents</h2><ul>" + "".join(
                 f"<li><a href='#{m}'>{_e(_TITLES.get(m, m))}</a></li>" for m, _ in sections)
             + "<li><a href='#tables'>Tables</a></li><li><a href='#config'>Configuration</a>"
               "</li></ul>"]
    for m, body in sections:
        parts.append(f"<h2 id='{m}'>{_e(_TITLES.get(m, m))}</h2>{body}")
    parts.append("<h2 id='tables'>Tables</h2><p class=note>Every table of the sweep; the first "
                 f"{TABLE_PREVIEW} rows are shown, the CSV (and JSON) next to this page has all."
                 "</p>")
    for name, rows in tables.items():
        shown = min(len(rows), TABLE_PREVIEW)
        parts.append(f"<h3>{_e(name)}</h3><p class=note>{len(rows)} rows, {shown} shown; "
                     f"full table: <a href='tables/{_e(name)}.csv'>tables/{_e(name)}.csv</a>"
                     "</p><div class=scroll>" + _html_table(rows) + "</div>")
    parts.append(f"<h2 id='config'>Configuration</h2><pre>"
                 f"{_e(json.dumps(cfg, indent=2))}</pre>")
    parts.append(f"<h2>Devices</h2><pre>{_e(json.dumps(dev, indent=2))}</pre>"
                 f"<script>{_SCRIPT}</script></body></html>")
    path = root / "report.html"
    atomic_write_text(path, "\n".join(parts))
    return path


def write_report(store: Store, cfg, units, run_info: dict[str, Any]) -> Path:
    """Writes arrays, tables, figures and report.html for all ``units``; returns its path."""
    cfg_dict = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
    return _render(store, cfg_dict, [u.key for u in units], run_info)


def render(out) -> Path:
    """Re-renders ``OUT/report.html`` (and arrays/, tables/, figures/) of an existing sweep
    directory from its finished units' checkpoints; recomputes nothing, loads no model or
    data. Units are reported in the order of the sweep's run log."""
    from repsim_jax._checks import InputError
    root = Path(out).absolute()
    manifest = root / "manifest.json"
    if not manifest.is_file():
        raise InputError(f"{str(root)!r} is not a repsim sweep directory (no manifest.json)")
    man = json.loads(manifest.read_text())
    store = Store(root, man["config_hash"], man.get("config", {}))
    done = sorted(p.name[:-len(".done.json")] for p in store.units.glob("*.done.json"))
    done = [k for k in done if store.is_done(k)]
    if not done:
        raise InputError(f"{str(root)!r} holds no finished unit to report")
    run_log = root / "run_log.json"
    info: dict[str, Any] = {}
    order: list[str] = []
    if run_log.is_file():
        info = json.loads(run_log.read_text())
        order = list(info.get("unit_seconds", {}))
    log = root / "log.jsonl"
    if log.is_file():
        for line in log.read_text().splitlines():
            try:
                k = json.loads(line).get("unit")
            except json.JSONDecodeError:
                continue
            if k and k not in order:
                order.append(k)
    keys = [k for k in order if k in done] + [k for k in done if k not in order]
    info.setdefault("config_hash", man["config_hash"])
    info.setdefault("units", len(keys))
    return _render(store, man.get("config", {}), keys, info)
