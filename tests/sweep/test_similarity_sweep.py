"""The sweep's [similarity] section and layer x layer maps: numbers = compare_layers' numbers,
the measure named on figures and tables, p-values / intervals where asked, bad measure names
caught before anything runs; the identity baseline takes only its own options."""
import json
import re
import types

import jax
import numpy as np
import pytest
from jax.sharding import Mesh

from repsim_jax import similarity
from repsim_jax.sweep import adapters, plan
from repsim_jax.sweep import config as C
from repsim_jax.sweep.run import run_sweep

LAYERS = ["features.12", "features.14"]     # one shape: one compiled grid per measure


def _cfg(out, **kw):
    return C.from_dict({
        "methods": ["similarity"], "layers": LAYERS, "output": str(out), "batch_size": 8,
        "data": {"source": "repsim_shapes", "split": "test", "n_images": 12},
        "models": [{"name": "rvgg", "arch": "small_vgg", "num_classes": 8}],
        "similarity": {"measures": ["cka_debiased", "procrustes"], "n_permutations": 9,
                       "n_bootstrap": 9, "level": 0.9}, **kw})


@pytest.mark.slow
def test_similarity_sweep_numbers_measure_names_p_and_ci(tmp_path):
    from flax import nnx

    from repsim_jax import models
    from repsim_jax.sweep.inputs import load_data
    out = tmp_path / "run"
    cfg = _cfg(out)
    report = run_sweep(cfg, progress=False, echo=None)
    rows = json.loads((out / "tables" / "layer_similarity.json").read_text())
    data = load_data(C.DataSpec(n_images=12))
    model = models.build("small_vgg", num_classes=8, rngs=nnx.Rngs(0))
    acts = {f"rvgg:{k}": np.asarray(v) for k, v in
            models.activations(model, data.images, LAYERS).items()}
    unit = [u for u in plan.plan_units(("similarity",), {"rvgg": LAYERS},
                                       {"rvgg": {}}) if u.method == "similarity"][0]
    t = similarity.compare_layers(acts, None, ["cka_debiased", "procrustes"],
                                  n_permutations=9, n_bootstrap=9, level=0.9,
                                  key=plan.unit_seed(cfg.seed, unit.key), progress=False)
    assert len(rows) == len(t) == 8
    for r, d in zip(rows, t.records()):
        assert (r["model_a"], r["layer_a"], r["measure"]) == ("rvgg", d["layer"][5:],
                                                               d["measure"])
        assert r["value"] == pytest.approx(d["value"], abs=1e-5)
        assert r["p_value"] == pytest.approx(d["p"])
        assert r["ci_low"] == pytest.approx(d["ci_low"], abs=1e-5)
    diag = [r["value"] for r in rows if r["layer_a"] == r["layer_b"]
            and r["measure"] == "cka_debiased"]
    np.testing.assert_allclose(diag, 1.0, atol=1e-5)
    html = report.read_text()
    assert "layer x layer cka_debiased of activations" in html
    assert "layer x layer procrustes of activations" in html
    # one model: its within-model map per measure, layer names on the axes, N and the
    # measure (with the adapter's caption) in the caption; no across-model map
    caps = re.findall(r'alt="(similarity__[^"]*)"><figcaption>(.*?)</figcaption>', html, re.S)
    assert [a.split("__")[-1] for a, _ in caps] == ["00_map_cka_debiased_rvgg_rvgg.png",
                                                    "01_map_procrustes_rvgg_rvgg.png"]
    assert all("N=12 inputs" in c and "2 x 2 layers" in c for _, c in caps)
    assert "<b>procrustes</b> (angular Procrustes distance" in caps[1][1]
    assert "One model: no across-model maps or depth plot." in html


def test_bad_measure_is_named_before_anything_runs(tmp_path):
    with pytest.raises(KeyError, match="Did you mean 'cka_debiased'"):
        _cfg(tmp_path / "x", similarity={"measures": ["cka_debaised"]})
    with pytest.raises(Exception, match="takes no option"):
        _cfg(tmp_path / "x", similarity={"measures": [{"rsa": {"kernel": "rbf"}}]})
    cfg = _cfg(tmp_path / "x", similarity={"measures": ["cka", {"rsa": {"compare":
                                                                         "pearson"}}]})
    assert similarity.similarity_measures(cfg.method_options("similarity")["measures"]) == \
        ["cka", ("rsa", {"compare": "pearson"})]
    assert C.METHOD_DEFAULTS["semantic"]["compare"] == "cka_debiased"


class _Data:
    labels = concept_labels = concept_names = None
    class_names = ()
    name = "fake"

    def __len__(self):
        return 6


@pytest.mark.parametrize("matcher,extra", [("auction", {"eps": 0.05, "dual_eps": 0.01}),
                                           ("sinkhorn", {"eps_start": 0.5, "n_stages": 2})])
def test_identity_baseline_gets_only_its_options(matcher, extra):
    """Regression: matcher options made the identity baseline fail with "matcher
    'identity' takes no option(s)"."""
    cfg = C.from_dict({"methods": ["semantic"], "semantic": {"matcher": matcher, **extra}})
    rng = np.random.default_rng(0)
    acts = {"l": rng.random((6, 2, 2, 4)).astype(np.float32)}
    ctx = types.SimpleNamespace(cfg=cfg, activations=lambda model, layers, **kw: acts,
                                data=_Data(), mesh=Mesh(np.array(jax.devices()[:1]),
                                                        ("data",)))
    res = adapters.adapt_semantic(plan.Unit("semantic", "m", ("l",)), ctx)
    from repsim_jax import semantic
    want = semantic.rsm({"l": acts["l"]}, kernel="cosine", matcher="identity")["l"]
    np.testing.assert_allclose(res["arrays"]["rsm_identity/l"], want, atol=1e-6)
