"""report.html as a reader sees it: class-ordered RSMs, per-pair layer maps and the depth
plot, full INVERT tables with the sweep's q-values, captions with N; ``repsim report OUT``
re-renders without recomputing anything; headless Chromium opens the page (no script
error, every image decodes, the INVERT table sorts and filters)."""
import contextlib
import io
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

from repsim_jax.sweep import config as C
from repsim_jax.sweep import figures as F
from repsim_jax.sweep.run import run_sweep

CHROMIUM = "/usr/bin/chromium"
TINY = {
    "methods": ["semantic", "invert"],
    "layers": ["features.11", "globalpool", "layer3"],
    "data": {"source": "repsim_shapes", "split": "test", "n_images": 14},
    "models": [{"name": "va", "arch": "small_vgg", "num_classes": 7},
               {"name": "rb", "arch": "small_resnet", "num_classes": 7}],
    "batch_size": 8, "seed": 0, "invert": {"L": 2, "B": 2},
}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """One tiny sweep of two (untrained) models, run in log mode (stderr not a terminal)."""
    out = tmp_path_factory.mktemp("report") / "run"
    echo, err = [], io.StringIO()
    with contextlib.redirect_stderr(err):
        path = run_sweep(C.from_dict({**TINY, "output": str(out)}), progress=None,
                         echo=echo.append)
    return out, path, echo, err.getvalue()


def test_class_order_is_stable_within_class_and_marks_boundaries():
    order, bounds, centres, classes = F.class_order([2, 0, 1, 0, 2, 1, 0])
    assert order.tolist() == [1, 3, 6, 2, 5, 0, 4]
    assert bounds == [3, 5] and classes == [0, 1, 2]
    assert centres == [1.0, 3.5, 5.5]


def test_best_match_curves_on_a_planted_matrix():
    keys = [("a", "l1"), ("a", "l2"), ("b", "m1"), ("b", "m2"), ("b", "m3")]
    M = np.eye(5)
    M[0, 2:] = [0.9, 0.2, 0.1]        # a.l1 best matches b.m1
    M[1, 2:] = [0.1, 0.3, 0.7]        # a.l2 best matches b.m3
    M = np.maximum(M, M.T)
    curves = F.best_match_curves(M, keys, depth=[0.4, 0.8, 1 / 3, 2 / 3, 1.0])
    x, y, names = curves[("a", "b")]
    assert x.tolist() == [0.4, 0.8] and y.tolist() == [0.9, 0.7] and names == ["l1", "l2"]
    x, y, names = curves[("b", "a")]
    assert names == ["m1", "m2", "m3"] and y.tolist() == [0.9, 0.3, 0.7]
    assert set(curves) == {("a", "b"), ("b", "a")}


def _figures(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "figures").glob("*.png"))}


@pytest.mark.slow
def test_report_content(sweep):
    out, path, _, _ = sweep
    html = path.read_text()
    # self-contained: every figure inlined once, no external resource
    figs = _figures(out)
    assert html.count("data:image/png;base64,") == len(figs)
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)
    names = set(figs)
    # RSM pairs, one per layer of each model; within-model maps for each model, one
    # across-model map and the relative-depth plot
    assert sum("__01_rsm_" in n or "_rsm_" in n for n in names) == 4
    assert {n for n in names if "semantic_compare" in n and "map_" in n} == {
        "semantic_compare__ALL__all__00_map_va_va.png",
        "semantic_compare__ALL__all__01_map_va_rb.png",
        "semantic_compare__ALL__all__02_map_rb_rb.png"}
    assert "semantic_compare__ALL__all__03_depth.png" in names
    assert "across models" in html and "cka_debiased" in html   # the default measure, named
    # every caption names N
    caps = re.findall(r"<figcaption>(.*?)</figcaption>", html, re.S)
    assert len(caps) == len(figs) and all("N=" in c for c in caps), caps
    # retrieval F1 of each layer is in its RSM caption, as in the table
    rows = json.loads((out / "tables" / "semantic_layers.json").read_text())
    for r in rows:
        cap = next(c for c in caps if f"{r['model']} {r['layer']}</b>: semantic RSM" in c)
        assert f"semantic <b>{r['retrieval_f1_semantic']:.3f}</b>" in cap
    # INVERT: one full table per layer, significant rows = q below the sweep threshold
    fdr = json.loads((out / "tables" / "invert_sweep_fdr.json").read_text())
    neurons = json.loads((out / "tables" / "invert_neurons.json").read_text())
    tables = re.findall(r"<table id='(invert-\d+)' class='sortable'>(.*?)</table>", html, re.S)
    layers = {(r["model"], r["layer"]) for r in neurons}
    assert len(tables) == len(layers)
    assert sum(t.count("<tr") - 1 for _, t in tables) == len(neurons)
    assert sum(t.count("<tr class=sig>") for _, t in tables) == sum(
        r["q_value"] < 0.05 for r in fdr)
    # no permutations: the page says q is nominal (anti-conservative) and how to do better
    assert "nominal Benjamini-Hochberg" in html and "anti-conservative" in html
    assert "[invert] permutations = n" in html and "perm_q_value" not in html
    # the top-neuron distributions hold what the adapter saved: activation vs formula
    with np.load(out / "arrays" / "invert__va__globalpool.npz") as z:
        top, holds = z["top_neurons/globalpool"], z["top_holds/globalpool"]
        act = z["top_activations/globalpool"]
    best = {r["neuron"]: r for r in neurons if r["model"] == "va" and r["layer"] == "globalpool"}
    from repsim_jax.invert import rank_auc
    for k, u in enumerate(top):
        auc = float(rank_auc(act[k], holds[k]))
        assert max(auc, 1 - auc) == pytest.approx(best[int(u)]["auc"], abs=1e-6)
    # tables shown in part say how many rows they have and link the CSV
    assert f"{len(neurons)} rows, 40 shown; full table: <a href='tables/invert_neurons.csv'>" \
        in html


@pytest.mark.slow
def test_rerender_recomputes_nothing_and_gives_the_same_report(sweep, monkeypatch, capsys):
    out, path, _, _ = sweep
    before, html = _figures(out), path.read_text()
    path.unlink()

    def boom(*a, **k):
        raise AssertionError("re-rendering must not compute or load anything")
    from repsim_jax.sweep import adapters, inputs
    monkeypatch.setattr(adapters, "run_unit", boom)
    monkeypatch.setattr(inputs, "load_model", boom)
    monkeypatch.setattr(inputs, "load_data", boom)
    from repsim_jax import cli
    assert cli.main(["report", str(out)]) == 0
    assert f"report: {path}" in capsys.readouterr().out
    assert _figures(out) == before
    assert path.read_text() == html
    assert cli.main(["report", str(out / "nope")]) == 2
    assert "no manifest.json" in capsys.readouterr().err


def test_sweep_log_mode_prints_one_line_per_finished_unit(sweep):
    out, _, echo, err = sweep
    log = [json.loads(l) for l in (out / "log.jsonl").read_text().splitlines()]
    unit_lines = [l for l in echo if re.match(r"  \S+__\S+: [0-9.]+ s \(\d+/\d+ units", l)]
    assert len(unit_lines) == len(log) == sum(r["status"] == "ran" for r in log)
    assert "ETA" in unit_lines[0] and "\r" not in err     # lines, never a redrawn bar


def test_progress_off_silences_the_sweep(tmp_path):
    cfg = C.from_dict({**TINY, "methods": ["semantic"], "layers": ["globalpool"],
                       "models": TINY["models"][:1], "output": str(tmp_path / "q")})
    echo, err = [], io.StringIO()
    with contextlib.redirect_stderr(err):
        run_sweep(cfg, progress=False, echo=echo.append)
    assert err.getvalue() == ""
    assert not [l for l in echo if " units of phase" in l]


def _browser_or_skip():
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.skip("playwright is not installed (the [test] extra): report not opened in a "
                    "browser")
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is missing (Debian package chromium; .ci/run installs it "
                    f"where apt-get is usable): report not opened in a browser")


@pytest.mark.slow
def test_report_in_headless_chromium(sweep):
    _browser_or_skip()
    from playwright.sync_api import sync_playwright
    out, path, _, _ = sweep
    profile = tempfile.mkdtemp(prefix="repsim-chromium-")
    errors = []
    try:
        with sync_playwright() as p:
            # a fresh profile directory (playwright passes it as --user-data-dir)
            browser = p.chromium.launch_persistent_context(
                profile, executable_path=CHROMIUM, headless=True,
                args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                      "--no-first-run", "--disable-background-networking",
                      "--disable-component-update", "--disable-sync"])
            page = browser.new_page()
            page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
            page.on("console", lambda m: errors.append(f"console: {m.text}")
                    if m.type == "error" else None)
            page.route("http*://**", lambda route: (errors.append(f"network: {route.request.url}"),
                                                     route.abort()))
            page.goto(path.as_uri())
            page.wait_for_load_state("load")
            widths = page.eval_on_selector_all(
                "img", "els => els.map(e => e.complete ? e.naturalWidth : 0)")
            assert len(widths) == len(_figures(out)) and min(widths) > 0, widths
            # sort the first INVERT table by AUC: ascending, then descending
            table = "#invert-1"
            col = page.eval_on_selector_all(f"{table} thead th",
                                            "ths => ths.map(t => t.textContent)").index("auc")

            def column():
                return page.eval_on_selector_all(
                    f"{table} tbody tr",
                    f"rs => rs.filter(r => r.style.display !== 'none')"
                    f".map(r => parseFloat(r.cells[{col}].getAttribute('data-v')))")
            start = column()
            page.click(f"{table} thead th:nth-child({col + 1})")
            up = column()
            page.click(f"{table} thead th:nth-child({col + 1})")
            down = column()
            finite = lambda v: [x for x in v if x == x]  # noqa: E731
            assert finite(up) == sorted(finite(start)) and len(up) == len(start)
            assert finite(down) == sorted(finite(start), reverse=True)
            # filter by a formula term: only matching rows stay, the count says so
            fcol = page.eval_on_selector_all(f"{table} thead th",
                                             "ths => ths.map(t => t.textContent)").index("formula")
            formulas = page.eval_on_selector_all(
                f"{table} tbody tr", f"rs => rs.map(r => r.cells[{fcol}].textContent)")
            term = max({t for f in formulas for t in re.split(r"[\s&|~()]+", f) if t},
                       key=lambda t: (sum(t in f for f in formulas) < len(formulas), t))
            page.fill(f"input[data-table='invert-1']", term)
            shown = page.eval_on_selector_all(
                f"{table} tbody tr", "rs => rs.filter(r => r.style.display !== 'none')"
                                     ".map(r => r.textContent)")
            expect = [f for f in formulas if term.lower() in f.lower()]
            assert 0 < len(shown) == len(expect) <= len(formulas)
            assert all(term.lower() in s.lower() for s in shown)
            assert page.text_content("#invert-1-count") == \
                f"{len(shown)} of {len(formulas)} rows shown"
            browser.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    assert not errors, errors
