"""The results directory of a sweep: arrays, tables, pictures and ``report.html``.

Reads every finished unit back from its checkpoint (so a resumed run reports exactly what
an uninterrupted one would) and writes::

    OUT/arrays/<unit key>.npz     every array of the unit
    OUT/tables/<table>.csv/.json  rows of all units, e.g. invert_neurons (every neuron's
                                  label with AUC and p-value), semantic_layer_similarity
                                  (layer x layer, long format), concepts_ice ...
    OUT/figures/<unit key>__<name>.png   heatmaps (RSMs, layer x layer maps), image grids
                                  (masks, reconstructions, summaries, concept maps)
    OUT/report.html               self-contained (PNG embedded as base64) with the
                                  configuration and the run log

Figures are described by the adapters as small dicts (``{"kind": "heatmap", "array":
name, "title": ..., "xlabels": [...], "ylabels": [...]}``, ``{"kind": "images", "array":
name, "title": ..., "cols": ...}``) and rendered here with matplotlib's Agg backend.
"""
from __future__ import annotations

import base64
import csv
import html
import io
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from repsim_jax.sweep.store import Store, atomic_write_bytes, atomic_write_text, to_jsonable

__all__ = ["write_report", "render_figure", "write_table"]


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
    """PNG bytes of one figure spec (heatmap / images / hist)."""
    from repsim_jax import _plotting as plt
    kind = spec["kind"]
    a = np.asarray(arrays[spec["array"]])
    if kind == "heatmap":
        n_r, n_c = a.shape
        size = float(np.clip(0.28 * max(n_r, n_c) + 2.5, 3.5, 11))
        fig, ax = plt.subplots(figsize=(size + 1.2, size))
        im = ax.imshow(a, cmap=spec.get("cmap", "viridis"), interpolation="nearest",
                       vmin=spec.get("vmin"), vmax=spec.get("vmax"))
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        for axis, key, n in ((ax.set_xticks, "xlabels", n_c), (ax.set_yticks, "ylabels", n_r)):
            labels = spec.get(key)
            if labels and len(labels) == n and n <= 60:
                axis(range(n))
                if key == "xlabels":
                    ax.set_xticklabels(labels, rotation=90, fontsize=7)
                else:
                    ax.set_yticklabels(labels, fontsize=7)
        ax.set_xlabel(spec.get("xlabel", ""))
        ax.set_ylabel(spec.get("ylabel", ""))
    elif kind == "images":
        # (K, H, W[, C]) shown in a grid of `cols` columns
        if a.ndim == 3:
            a = a[..., None]
        k = a.shape[0]
        cols = int(spec.get("cols", min(k, 8)))
        rows = int(np.ceil(k / cols))
        fig, axes = plt.subplots(rows, cols, figsize=(1.4 * cols + 0.4, 1.4 * rows + 0.5),
                                 squeeze=False)
        titles = spec.get("titles") or []
        for i, ax in enumerate(axes.flat):
            ax.axis("off")
            if i >= k:
                continue
            img = a[i]
            if img.shape[-1] == 1:
                ax.imshow(img[..., 0], cmap=spec.get("cmap", "magma"),
                          vmin=spec.get("vmin"), vmax=spec.get("vmax"))
            else:
                ax.imshow(np.clip(img[..., :3], 0, 1))
            if i < len(titles):
                ax.set_title(str(titles[i]), fontsize=6)
    elif kind == "hist":
        fig, ax = plt.subplots(figsize=(4.5, 3))
        ax.hist(a.ravel(), bins=spec.get("bins", 30), color="#4477aa")
        ax.set_xlabel(spec.get("xlabel", ""))
        ax.set_ylabel("count")
    else:
        raise ValueError(f"unknown figure kind {kind!r}")
    fig.suptitle(spec.get("title", ""), fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


_CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-top:.6em}
table{border-collapse:collapse;font-size:.8em}td,th{border:1px solid #ddd;padding:2px 6px}
th{background:#f3f3f3}figure{display:inline-block;margin:.4em;vertical-align:top}
figcaption{font-size:.75em;color:#555;max-width:420px}img{max-width:560px}
pre{background:#f7f7f7;padding:.6em;font-size:.8em;overflow:auto}"""


def _html_table(rows: Sequence[dict], limit: int = 40) -> str:
    if not rows:
        return "<p>(empty)</p>"
    cols: list[str] = []
    for r in rows:
        cols += [c for c in r if c not in cols]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)

    def cell(v):
        if isinstance(v, float):
            return f"{v:.4g}"
        return html.escape(str(v))
    body = "".join("<tr>" + "".join(f"<td>{cell(r.get(c, ''))}</td>" for c in cols) + "</tr>"
                   for r in rows[:limit])
    more = f"<p>... {len(rows) - limit} more rows in the CSV.</p>" if len(rows) > limit else ""
    return f"<table><tr>{head}</tr>{body}</table>{more}"


def write_report(store: Store, cfg, units, run_info: dict[str, Any]) -> Path:
    """Writes arrays, tables, figures and report.html for all ``units``; returns its path."""
    from tqdm.auto import tqdm
    root = store.root
    tables: dict[str, list[dict]] = {}
    sections: dict[str, list[str]] = {}
    for unit in tqdm(units, desc="report", unit="unit", disable=True):
        res = store.load(unit.key)
        if res["arrays"]:
            atomic_write_bytes(root / "arrays" / f"{unit.key}.npz", _npz_bytes(res["arrays"]))
        for name, rows in res["tables"].items():
            tables.setdefault(name, []).extend(rows)
        figs = []
        for i, spec in enumerate(res["figures"]):
            png = render_figure(spec, res["arrays"])
            fname = f"{unit.key}__{i:02d}_{spec.get('name', spec['kind'])}.png"
            atomic_write_bytes(root / "figures" / fname, png)
            b64 = base64.b64encode(png).decode()
            figs.append(f'<figure><img src="data:image/png;base64,{b64}" alt="{html.escape(fname)}">'
                        f"<figcaption>{html.escape(spec.get('title', fname))}</figcaption></figure>")
        summary = res["meta"].get("summary")
        block = f"<h3>{html.escape(unit.key)}</h3>"
        if summary:
            block += f"<p>{html.escape(str(summary))}</p>"
        sections.setdefault(unit.method, []).append(block + "".join(figs))
    tables = {name: rows for name, rows in tables.items() if rows}
    for name, rows in tables.items():
        write_table(root / "tables", name, rows)
    # overview first: the layer x layer maps and the sweep-wide INVERT table
    first = ["semantic_compare", "concepts_compare", "invert_fdr"]
    sections = dict(sorted(sections.items(),
                           key=lambda kv: first.index(kv[0]) if kv[0] in first else 9))
    cfg_json = json.dumps(cfg.to_dict(), indent=2)
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>repsim report "
             f"{run_info['config_hash']}</title><style>{_CSS}</style></head><body>",
             f"<h1>repsim sweep report</h1><p>configuration hash "
             f"<code>{run_info['config_hash']}</code>; {run_info['units']} units "
             f"({run_info['ran']} computed in this run, {run_info['resumed']} resumed); "
             f"backend {html.escape(run_info['devices']['backend'])}, "
             f"{run_info['devices']['device_count']} device(s), "
             f"{run_info['devices']['process_count']} process(es).</p>",
             "<h2>Contents</h2><ul>" + "".join(
                 f"<li><a href='#{m}'>{m}</a></li>" for m in sections) +
             "<li><a href='#tables'>tables</a></li><li><a href='#config'>configuration</a>"
             "</li></ul>"]
    for method, blocks in sections.items():
        parts.append(f"<h2 id='{method}'>{html.escape(method)}</h2>" + "".join(blocks))
    parts.append("<h2 id='tables'>Tables</h2>")
    for name, rows in tables.items():
        parts.append(f"<h3>{html.escape(name)} ({len(rows)} rows; tables/{name}.csv)</h3>"
                     + _html_table(rows))
    parts.append(f"<h2 id='config'>Configuration</h2><pre>{html.escape(cfg_json)}</pre>")
    parts.append(f"<h2>Devices</h2><pre>{html.escape(json.dumps(run_info['devices'], indent=2))}"
                 "</pre></body></html>")
    path = root / "report.html"
    atomic_write_text(path, "\n".join(parts))
    return path
