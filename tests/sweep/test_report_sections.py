"""The report's concepts (ICE overlays, Net2Vec concept x layer map per model), ClaDec,
visual-summary, [similarity] and INVERT-significance sections, rendered from a constructed
output directory (planted unit results in the adapters' format; nothing is computed), and
the first-use training of a built-in model silenced by ``run_sweep(progress=False)``."""
from __future__ import annotations

import io
import json
import re
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest

from repsim_jax.sweep import figures as F
from repsim_jax.sweep import report as R
from repsim_jax.sweep.store import Store

HASH = "planted0"
RNG = np.random.default_rng(0)


def _concepts_unit(model, layers, index, concepts, iou, n_show=3, k=2, n=10, order=None):
    """A concepts unit as adapt_concepts writes it: ICE tiles of the first images, the
    Net2Vec IoU of each (layer, concept) of the group, its table rows."""
    arrays = {"example_images": RNG.random((n_show, 12, 12, 3)).astype(np.float32),
              "net2vec_iou": np.asarray(iou, np.float64)}
    ice = []
    for l in layers:
        arrays[f"map_tiles/{l}"] = RNG.random((n_show * k, 6, 6)).astype(np.float32)
        ice.append({"model": model, "layer": l, "k": k, "n_inputs": n,
                    "relative_error": 0.25, "reconstruction_error": 1.0, "n_iter": 5,
                    "fit_images": n})
    n2v = [{"model": model, "layer": l, "concept": c, "set_iou": float(iou[i][j])}
           for i, l in enumerate(layers) for j, c in enumerate(concepts)]
    return {"arrays": arrays, "figures": [],
            "tables": {"concepts_ice": ice, "concepts_net2vec": n2v},
            "meta": {"n_inputs": n, "net2vec_images": 8, "layer_index": index,
                     "summary": "planted",
                     **({"concept_names": order} if order else {})}}


CLADEC_ROW = {"model": "m1", "layer": "conv3", "alpha": 0.5, "steps": 7, "lr": 1e-3,
              "sse_per_image_cladec": 12.5, "sse_per_image_ae": 3.25,
              "retrain_accuracy_input": 0.8125, "retrain_accuracy_cladec": 0.6875,
              "retrain_accuracy_ae": 0.5625, "retrain_steps": 11, "retrain_test_images": 6}


CLADEC_ALPHAS = [(0.05, 4.5, 0.375), (0.5, 9.75, 0.9375)]


def _units() -> dict[str, dict]:
    n = 4
    img = RNG.random((n, 12, 12, 3)).astype(np.float32)
    sharp = (RNG.random((n, 12, 12)) > 0.5).astype(np.float32)
    units = {
        # run order differs from depth order: the deeper group first, its layers listed
        # deepest first; concept "b" is not tested in that group
        "concepts__m1__g1": _concepts_unit("m1", ["fc", "conv3"], {"fc": 5, "conv3": 2},
                                           ["a", "c"], [[0.1, 0.2], [0.3, 0.4]],
                                           order=["a", "b", "c"]),
        "concepts__m1__g0": _concepts_unit("m1", ["conv1"], {"conv1": 0}, ["a", "b", "c"],
                                           [[0.5, 0.6, 0.7]], order=["a", "b", "c"]),
        # an older output (no concept order stored): concepts in first-seen order
        "concepts__m2__g0": _concepts_unit("m2", ["l1"], {"l1": 0}, ["b", "a"],
                                           [[0.8, 0.9]]),
        "cladec__m1__conv3": {
            "arrays": {"grid": RNG.random((3 * n, 12, 12, 3)).astype(np.float32)},
            "tables": {"cladec": [CLADEC_ROW]}, "figures": [],
            "meta": {"n_show": n, "layer": "conv3", "alpha": 0.5, "n_inputs": 12,
                     "summary": "planted"}},
        "cladec__m1__fc": {       # two alphas: one grid row and one table column each
            "arrays": {"grid": RNG.random((4 * n, 12, 12, 3)).astype(np.float32)},
            "tables": {"cladec": [{**CLADEC_ROW, "layer": "fc", "alpha": a,
                                   "sse_per_image_cladec": sse,
                                   "retrain_accuracy_cladec": acc}
                                  for a, sse, acc in CLADEC_ALPHAS]}, "figures": [],
            "meta": {"n_show": n, "layer": "fc", "alpha": 0.05, "alphas": [0.05, 0.5],
                     "n_inputs": 12, "summary": "planted"}},
        "summaries__m1__all": {
            "arrays": {"image_indices": np.arange(n), "sharp_masks": sharp,
                       "mask_tiles": np.concatenate([img, np.repeat(sharp[..., None], 3, -1),
                                                     img * sharp[..., None]]),
                       "strips/0": RNG.random((12, 24, 24, 3)).astype(np.float32)},
            "tables": {"summaries": [{"model": "m1", "class": 0, "class_name": "circle",
                                      "status": "ok", "images": 9, "regions": 14,
                                      "clusters": 3, "summaries": 2}]},
            "figures": [], "meta": {"summary": "planted"}},
        "invert__m1__g0": {
            "arrays": {}, "figures": [], "meta": {"n_inputs": 12, "summary": "planted"},
            "tables": {"invert_neurons": [
                {"model": "m1", "layer": "conv1", "neuron": u, "formula": f"c{u}",
                 "auc": 0.95 - 0.1 * u, "concept_fraction": 0.2, "p_value": 10.0 ** -u,
                 "log_p_value": -u * np.log(10), "q_value_in_unit": 10.0 ** -u / 2,
                 "constant": False, "beam": ""} for u in range(4)]}},
    }
    # [similarity]: 2 models x 2 layers, a similarity and a distance
    labels = ["m1:conv1", "m1:conv3", "m2:l1", "m2:l2"]
    S = np.array([[1, .6, .9, .2], [.6, 1, .3, .7], [.9, .3, 1, .5], [.2, .7, .5, 1]])
    units["similarity__ALL__all"] = {
        "arrays": {"similarity/cka_debiased": S, "similarity/procrustes": 1.0 - S},
        "tables": {}, "figures": [
            {"kind": "heatmap", "array": "similarity/cka_debiased", "measure": "cka_debiased",
             "caption": "debiased CKA, planted"},
            {"kind": "heatmap", "array": "similarity/procrustes", "measure": "procrustes",
             "caption": "angular Procrustes distance, planted"}],
        "meta": {"labels": labels, "measures": ["cka_debiased", "procrustes"],
                 "n_inputs": 12, "relative_depth": [0.25, 0.75, 0.5, 1.0],
                 "higher_is_similar": {"cka_debiased": True, "procrustes": False},
                 "summary": "planted"}}
    return units


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    out = tmp_path_factory.mktemp("sections") / "run"
    store = Store(out, HASH, {"methods": ["planted"]})
    store.write_manifest()
    units = _units()
    for key, res in units.items():
        store.save(key, res, {"seconds": 0.0})
    return out, R.render(out), units


def _captions(html: str) -> list[str]:
    return re.findall(r"<figcaption>(.*?)</figcaption>", html, re.S)


def test_net2vec_is_one_concept_by_layer_map_per_model(planted):
    out, path, units = planted
    store = Store(out, HASH, {})
    loaded = [(k, store.load(k)) for k in units if k.startswith("concepts")]
    maps = R.net2vec_by_model(loaded)
    assert list(maps) == ["m1", "m2"]
    M, concepts, layers, n = maps["m1"]
    assert layers == ["conv1", "conv3", "fc"]          # forward order, not run order
    assert concepts == ["a", "b", "c"] and M.shape == (3, 3) and n == 8   # data order
    nan = np.nan
    np.testing.assert_array_equal(M, [[0.5, 0.3, 0.1],    # a
                                      [0.6, nan, nan],    # b: not tested in group g1
                                      [0.7, 0.4, 0.2]])   # c
    M2, c2, l2, _ = maps["m2"]
    np.testing.assert_array_equal(M2, [[0.8], [0.9]])
    assert c2 == ["b", "a"] and l2 == ["l1"]
    html = path.read_text()
    figs = sorted(p.name for p in (out / "figures").glob("*net2vec*"))
    assert figs == ["concepts__net2vec__m1__00_net2vec.png",
                    "concepts__net2vec__m2__00_net2vec.png"]
    cap = next(c for c in _captions(html) if "<b>m1</b>: concept filters" in c)
    assert "3 concepts x 3 layers" in cap and "N=8 inputs" in cap and "set IoU" in cap


def test_concepts_cladec_summaries_sections_render(planted):
    out, path, units = planted
    html = path.read_text()
    figs = {p.name: p.read_bytes() for p in (out / "figures").glob("*.png")}
    assert html.count("data:image/png;base64,") == len(figs)
    for name, png in figs.items():                       # every picture decodes
        im = mpimg.imread(io.BytesIO(png), format="png")
        assert im.ndim == 3 and min(im.shape[:2]) > 20, name
    names = set(figs)
    # ICE overlays: one per layer of each concepts unit
    assert {"concepts__m1__g1__00_maps_fc.png", "concepts__m1__g1__01_maps_conv3.png",
            "concepts__m1__g0__00_maps_conv1.png", "concepts__m2__g0__00_maps_l1.png"} <= names
    # ClaDec: the grid next to its table, whose numbers are tables/cladec.json's
    assert "cladec__m1__conv3__00_grid.png" in names
    row = json.loads((out / "tables" / "cladec.json").read_text())[0]
    sec = html[html.index("<h2 id='cladec'>"):html.index("<h2 id='summaries'>")]
    shown = dict(re.findall(r"<tr><td>([^<]*)</td><td>([^<]*)</td></tr>", sec))
    for k, label in (("retrain_accuracy_input", "retrain accuracy on input images"),
                     ("retrain_accuracy_cladec", "retrain accuracy on cladec images"),
                     ("retrain_accuracy_ae", "retrain accuracy on ae images"),
                     ("sse_per_image_cladec", "SSE per image, ClaDec"),
                     ("sse_per_image_ae", "SSE per image, auto-encoder")):
        assert row[k] == CLADEC_ROW[k]
        assert float(shown[label]) == row[k], (k, shown)
    assert "11 / 6" in sec                              # retrain steps / test images
    # two alphas: a grid of input + 2 ClaDec rows + AE, the table one column per alpha
    assert "cladec__m1__fc__00_grid.png" in names
    grid = mpimg.imread(io.BytesIO(figs["cladec__m1__fc__00_grid.png"]), format="png")
    one = mpimg.imread(io.BytesIO(figs["cladec__m1__conv3__00_grid.png"]), format="png")
    assert grid.shape[1] == one.shape[1] and grid.shape[0] > one.shape[0] * 1.2
    fc = sec[sec.index("<h3>cladec__m1__fc</h3>"):]
    assert "<th>alpha=0.05</th>" in fc and "alpha=0.5</th>" in fc and "alpha=0.05, 0.5" in fc
    for label, field in (("SSE per image, ClaDec", 1), ("retrain accuracy on cladec images", 2)):
        vals = re.search(label + r"</td>(.*?)</tr>", fc).group(1)
        got = [float(v) for v in re.findall(r"<td[^>]*>([^<]*)</td>", vals)]
        assert got == [a[field] for a in CLADEC_ALPHAS], (label, vals)
    # visual summaries: the masks and the class's strip
    assert {"summaries__m1__all__00_masks.png", "summaries__m1__all__01_class0.png"} <= names
    caps = _captions(html)
    assert len(caps) == len(figs) and all("N=" in c for c in caps), caps
    mask = next(c for c in caps if "perturbation masks" in c)
    assert "first 4 explained images" in mask and "N=4 explained images" in mask
    assert any("Class <b>circle</b>" in c and "N=9 images" in c for c in caps)


def test_similarity_section_per_pair_maps_and_depth_plot(planted):
    out, path, _ = planted
    html = path.read_text()
    names = {p.name for p in (out / "figures").glob("similarity__*.png")}
    for m in ("cka_debiased", "procrustes"):
        assert {f"similarity__ALL__all__{i:02d}_map_{m}_{a}_{b}.png" for i, (a, b) in
                enumerate([("m1", "m1"), ("m1", "m2"), ("m2", "m2")],
                          0 if m == "cka_debiased" else 4)} <= names, names
    assert "similarity__ALL__all__03_depth_cka_debiased.png" in names
    assert "similarity__ALL__all__07_depth_procrustes.png" in names
    caps = [c for alt, c in re.findall(r'alt="([^"]*)"><figcaption>(.*?)</figcaption>',
                                        html, re.S) if alt.startswith("similarity__")]
    assert len(caps) == 8 and all("N=12 inputs" in c for c in caps)
    assert any("<b>procrustes</b> (angular Procrustes distance, planted)" in c
               and "across models" in c for c in caps)
    assert any("best-match <b>procrustes</b>" in c and "minimum" in c for c in caps)
    # the distance's best match is the minimum, the similarity's the maximum
    keys = [("m1", "conv1"), ("m1", "conv3"), ("m2", "l1"), ("m2", "l2")]
    S = np.array([[1, .6, .9, .2], [.6, 1, .3, .7], [.9, .3, 1, .5], [.2, .7, .5, 1]])
    hi = F.best_match_curves(S, keys, [0.25, 0.75, 0.5, 1.0])[("m1", "m2")]
    lo = F.best_match_curves(1 - S, keys, [0.25, 0.75, 0.5, 1.0], higher=False)[("m1", "m2")]
    assert hi[1].tolist() == [0.9, 0.7]
    np.testing.assert_allclose(lo[1], [0.1, 0.3])


def test_invert_without_permutations_says_q_is_nominal(planted):
    _, path, _ = planted
    html = path.read_text()
    sec = html[html.index("<h2 id='invert'>"):html.index("<h2 id='concepts'>")]
    assert "nominal Benjamini-Hochberg" in sec and "anti-conservative" in sec
    assert "[invert] permutations = n" in sec
    assert "perm_q_value" not in sec.split("Caveat")[1].split("<table")[1]
    # significant: the unit's nominal q below 0.05 (no invert_fdr unit here)
    assert sec.count("<tr class=sig>") == sum(10.0 ** -u / 2 < 0.05 for u in range(4))


# ------------------------------------------------------------- a real (tiny) sweep
@pytest.fixture(scope="module")
def precomputed(tmp_path_factory):
    """A model-free sweep from precomputed activations: INVERT with a few permutations,
    ICE + Net2Vec on two layers of different shape (two concepts units)."""
    from repsim_jax.sweep import config as C
    from repsim_jax.sweep.run import run_sweep
    d = tmp_path_factory.mktemp("pre")
    rng = np.random.default_rng(1)
    np.savez(d / "acts.npz", conv=rng.random((12, 4, 4, 3)).astype(np.float32),
             fc=rng.random((12, 5)).astype(np.float32))
    cfg = C.from_dict({
        "methods": ["invert", "concepts"], "layers": "all", "batch_size": 8, "seed": 0,
        "data": {"source": "repsim_shapes", "split": "test", "n_images": 12},
        "models": [{"name": "pre", "activations": str(d / "acts.npz")}],
        "invert": {"L": 2, "B": 2, "permutations": 3},
        "concepts": {"k": 2, "max_iter": 20, "net2vec_epochs": 2},
        "output": str(d / "run")})
    return d / "run", run_sweep(cfg, progress=False, echo=None)


@pytest.mark.slow   # a real sweep (~10 s quiet, ~30 s on a loaded 2-core machine)
def test_invert_permutation_q_is_stored_and_used(precomputed):
    out, path = precomputed
    neurons = json.loads((out / "tables" / "invert_neurons.json").read_text())
    fdr = json.loads((out / "tables" / "invert_sweep_fdr.json").read_text())
    assert len(neurons) == 3 + 5 and len(fdr) == len(neurons)
    # p = (1 + hits) / (1 + n) with n = 3 permutations
    for r in neurons:
        assert r["perm_p_value"] in (0.25, 0.5, 0.75, 1.0)
        assert 0 <= r["perm_q_value_in_unit"] <= 1
    from repsim_jax.invert import benjamini_hochberg
    q, _ = benjamini_hochberg(np.asarray([r["perm_p_value"] for r in fdr]))
    np.testing.assert_allclose([r["perm_q_value"] for r in fdr], q)
    with np.load(out / "arrays" / "invert__pre__fc.npz") as z:
        fc = [r for r in neurons if r["layer"] == "fc"]
        np.testing.assert_array_equal(z["perm_p_value/fc"], [r["perm_p_value"] for r in fc])
        np.testing.assert_array_equal(z["perm_q_value/fc"],
                                      [r["perm_q_value_in_unit"] for r in fc])
    html = path.read_text()
    sec = html[html.index("<h2 id='invert'>"):html.index("<h2 id='concepts'>")]
    assert "selection-aware permutation q" in sec and "3 permutations" in sec
    assert "anti-conservative" not in sec
    n_sig = sum(r["perm_q_value"] < 0.05 for r in fdr)
    assert f"; {n_sig} have permutation q &lt; 0.05 (selection-aware)" in sec
    tables = re.findall(r"<table id='invert-\d+' class='sortable'>(.*?)</table>", sec, re.S)
    assert len(tables) == 2
    assert all("<th data-type=num>perm_q_value</th>" in t for t in tables)
    # significant rows: the sweep-wide permutation q below the threshold
    assert sum(t.count("<tr class=sig>") for t in tables) == sum(
        r["perm_q_value"] < 0.05 for r in fdr)


@pytest.mark.slow   # the same sweep
def test_precomputed_sweep_net2vec_map_and_rerender(precomputed, monkeypatch, capsys):
    out, path = precomputed
    rows = json.loads((out / "tables" / "concepts_net2vec.json").read_text())
    assert {r["layer"] for r in rows} == {"conv", "fc"}
    store = Store(out, json.loads((out / "manifest.json").read_text())["config_hash"], {})
    units = [(k, store.load(k)) for k in ("concepts__pre__fc", "concepts__pre__conv")]
    M, concepts, layers, _ = R.net2vec_by_model(units)["pre"]
    assert layers == ["conv", "fc"]            # the activations' order, not the units'
    names = units[0][1]["meta"]["concept_names"]
    assert concepts == [c for c in names if c in concepts]    # the data set's order
    for r in rows:
        assert M[concepts.index(r["concept"]), layers.index(r["layer"])] == r["set_iou"]
    assert len(list((out / "figures").glob("*net2vec*"))) == 1
    # repsim report OUT re-renders the same page without computing or loading anything
    before = {p.name: p.read_bytes() for p in (out / "figures").glob("*.png")}
    html = path.read_text()
    path.unlink()

    def boom(*a, **k):
        raise AssertionError("re-rendering must not compute or load anything")
    from repsim_jax import cli
    from repsim_jax.sweep import adapters, inputs
    for mod, name in ((adapters, "run_unit"), (inputs, "load_model"), (inputs, "load_data"),
                      (inputs, "load_activations")):
        monkeypatch.setattr(mod, name, boom)
    assert cli.main(["report", str(out)]) == 0
    assert f"report: {path}" in capsys.readouterr().out
    assert {p.name: p.read_bytes() for p in (out / "figures").glob("*.png")} == before
    assert path.read_text() == html


def test_run_sweep_progress_false_reaches_first_use_training(tmp_path, monkeypatch):
    from repsim_jax.models import zoo
    from repsim_jax.sweep import config as C
    from repsim_jax.sweep.run import run_sweep
    seen = []

    class Stop(Exception):
        pass

    def fake(name, *, retrain=False, progress=None):
        seen.append((name, progress))
        raise Stop
    monkeypatch.setattr(zoo, "load_trained", fake)
    for progress in (False, None):
        cfg = C.from_dict({"methods": ["semantic"], "models": [{"name": "small_vgg"}],
                           "data": {"source": "repsim_shapes", "n_images": 8},
                           "output": str(tmp_path / f"o{progress}")})
        with pytest.raises(Stop):
            run_sweep(cfg, progress=progress, echo=None)
    assert seen == [("small_vgg", False), ("small_vgg", None)]


def test_planted_sections_in_headless_chromium(planted):
    """The concepts / ClaDec / summaries / [similarity] page in a browser: no script error,
    every image decodes (skipped with the reason where chromium or playwright is missing)."""
    import os
    import shutil
    import tempfile
    chromium = "/usr/bin/chromium"
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (the [test] extra): page not opened")
    if not os.path.exists(chromium):
        pytest.skip(f"{chromium} is missing (Debian package chromium): page not opened")
    out, path, _ = planted
    profile, errors = tempfile.mkdtemp(prefix="repsim-chromium-"), []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch_persistent_context(
                profile, executable_path=chromium, headless=True,
                args=["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                      "--disable-background-networking", "--disable-component-update"])
            page = browser.new_page()
            page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
            page.on("console", lambda m: errors.append(f"console: {m.text}")
                    if m.type == "error" else None)
            page.route("http*://**", lambda route: (errors.append(route.request.url),
                                                     route.abort()))
            page.goto(path.as_uri())
            page.wait_for_load_state("load")
            widths = page.eval_on_selector_all(
                "img", "els => els.map(e => e.complete ? e.naturalWidth : 0)")
            browser.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    assert len(widths) == len(list((out / "figures").glob("*.png"))) and min(widths) > 0
    assert not errors, errors
