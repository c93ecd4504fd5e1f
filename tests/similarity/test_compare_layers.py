"""compare_layers: the labelled table equals the single-pair functions, names are kept,
p-values / intervals equal the single-pair resampling functions, sharding changes nothing."""
import numpy as np
import pytest

from repsim_jax import similarity as S
from repsim_jax._checks import InputError
from repsim_jax._results import load_result


@pytest.fixture(scope="module")
def acts():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(40, 8))
    a = {"conv": rng.normal(size=(40, 2, 2, 2)) + base[:, :8].reshape(40, 2, 2, 2),
         "fc1": base + 0.3 * rng.normal(size=(40, 8)), "fc2": rng.normal(size=(40, 8))}
    b = {"block": base[:, :6] @ rng.normal(size=(6, 6)), "head": rng.normal(size=(40, 6))}
    return a, b


MEASURES = ["cka_debiased", ("rsa", {"compare": "pearson"}), "procrustes", "pwcca",
            ("mutual_knn", {"k": 5})]
SINGLE = {"cka_debiased": lambda x, y: S.cka(x, y, debiased=True),
          "rsa(compare=pearson)": lambda x, y: S.rsa(x, y, compare="pearson"),
          "procrustes": S.procrustes, "pwcca": S.pwcca,
          "mutual_knn(k=5)": lambda x, y: S.mutual_knn(x, y, k=5)}


def test_table_equals_single_pairs_and_keeps_names(acts):
    a, b = acts
    t = S.compare_layers(a, b, MEASURES, names=("vgg", "resnet"), progress=False)
    assert len(t) == len(MEASURES) * 3 * 2
    assert t.measures == tuple(SINGLE)
    assert set(t.model) == {"vgg"} and set(t.other_model) == {"resnet"}
    assert t.layer[:6] == ("conv", "conv", "fc1", "fc1", "fc2", "fc2")
    for r in t.records():
        x = S.flatten_layer(a[r["layer"]])
        want = float(SINGLE[r["measure"]](x, b[r["other_layer"]]))
        assert abs(r["value"] - want) < 1e-5, r
        assert np.isnan(r["p"]) and np.isnan(r["ci_low"])
    m = t.matrix("procrustes")
    assert m.rows == ("vgg:conv", "vgg:fc1", "vgg:fc2") and m.cols == ("resnet:block",
                                                                       "resnet:head")
    assert m.values[1, 0] == pytest.approx(float(S.procrustes(a["fc1"], b["block"])),
                                           abs=1e-5)


def test_self_comparison_and_spatial_option(acts):
    a, _ = acts
    t = S.compare_layers(a, measures=["cka_debiased"], spatial="mean", progress=False)
    m = t.matrix()
    assert m.rows == m.cols == ("a:conv", "a:fc1", "a:fc2")
    np.testing.assert_allclose(np.diag(m.values), 1.0, atol=1e-5)
    np.testing.assert_allclose(m.values, m.values.T, atol=1e-5)
    pooled = a["conv"].mean((1, 2))
    assert m.values[0, 1] == pytest.approx(float(S.cka(pooled, a["fc1"], debiased=True)),
                                           abs=1e-5)


def test_resampling_equals_single_pair_functions_and_mesh(acts, tmp_path):
    a, b = acts
    kw = dict(measures=["cka_debiased"], n_permutations=30, n_bootstrap=30,
              key=3, level=0.9, progress=False)
    t = S.compare_layers(a, b, **kw)
    for r in t.records()[:2] + t.records()[-1:]:
        x, y = S.flatten_layer(a[r["layer"]]), b[r["other_layer"]]
        pt = S.permutation_test(r["measure"], x, y, n=30, key=3)
        bs = S.bootstrap(r["measure"], x, y, n=30, key=3, level=0.9)
        assert r["p"] == pytest.approx(pt.p_value)
        assert r["ci_low"] == pytest.approx(bs.ci_low, abs=1e-5)
        assert r["ci_high"] == pytest.approx(bs.ci_high, abs=1e-5)
    # layer rows sharded over the 8 simulated devices: the same table
    ts = S.compare_layers(a, b, mesh="all", **kw)
    np.testing.assert_allclose(ts.value, t.value, atol=1e-6)
    np.testing.assert_allclose(ts.p, t.p)
    np.testing.assert_allclose(ts.ci_low, t.ci_low, atol=1e-6)
    # a result type: saved and read back with its labels
    kind, d = load_result(t.save(tmp_path / "t"))
    assert kind == "SimilarityTable" and list(d["layer"]) == list(t.layer)
    np.testing.assert_allclose(d["value"], t.value)


def test_bad_layer_inputs(acts):
    a, b = acts
    with pytest.raises(InputError, match="numbers of inputs differ"):
        S.compare_layers(a, {"x": np.ones((39, 3))}, progress=False)
    with pytest.raises(KeyError, match="spatial reduction"):
        S.compare_layers(a, spatial="avg", progress=False)
    with pytest.raises(InputError, match="n_permutations"):
        S.compare_layers(a, n_permutations=-1, progress=False)
    with pytest.raises(InputError, match="takes no option"):
        S.compare_layers(a, measures=[("cka", {"k": 3})], progress=False)


# ------------------------------------------------ the all-pairs fast path (no resampling)
# Each measure's all-pairs route (compare_layers without resampling) against the single-pair
# function. Few distinct layer shapes (each costs a compile of both): two groups per side.
SINGLE_ALL = {
    "cka": S.cka, "cka_debiased": lambda x, y: S.cka(x, y, debiased=True),
    "rbf_cka": lambda x, y: S.cka(x, y, kernel="rbf"),
    "rbf_cka_debiased": lambda x, y: S.cka(x, y, kernel="rbf", debiased=True),
    "rsa": S.rsa, "rsa(compare=cosine,rdm=euclidean)":
        lambda x, y: S.rsa(x, y, rdm="euclidean", compare="cosine"),
    "procrustes": S.procrustes, "cca(ridge=0.1)": lambda x, y: S.cca(x, y, ridge=0.1),
    "svcca": S.svcca, "pwcca(ridge=0.1)": lambda x, y: S.pwcca(x, y, ridge=0.1),
    "mutual_knn(k=5)": lambda x, y: S.mutual_knn(x, y, k=5),
    "cknna(k=5)": lambda x, y: S.cknna(x, y, k=5)}
SPECS_ALL = {"cka": "cka", "cka_debiased": "cka_debiased", "rbf_cka": "rbf_cka",
             "rbf_cka_debiased": "rbf_cka_debiased", "rsa": "rsa",
             "rsa(compare=cosine,rdm=euclidean)": ("rsa", {"rdm": "euclidean",
                                                           "compare": "cosine"}),
             "procrustes": "procrustes", "cca(ridge=0.1)": ("cca", {"ridge": 0.1}),
             "svcca": "svcca", "pwcca(ridge=0.1)": ("pwcca", {"ridge": 0.1}),
             "mutual_knn(k=5)": ("mutual_knn", {"k": 5}), "cknna(k=5)": ("cknna", {"k": 5})}
# (N, widths of a, widths of b): narrow layers (CKA's feature route), and one layer wider
# than N (CKA's Gram route; rank-deficient bases for Procrustes / CCA)
NARROW, WIDE = (20, (6, 6, 9), (9, 9)), (20, (6, 6, 24), (24, 24))


def _related_layers(rng, n, widths, base):
    return {f"l{i}": (np.maximum(base @ rng.normal(size=(base.shape[1], d)), 0)
                      + (0.5 + i) * rng.normal(size=(n, d))).astype(np.float32)
            for i, d in enumerate(widths)}


def _layers(case):
    n, wa, wb = case
    rng = np.random.default_rng(n + len(wa))
    base = rng.normal(size=(n, 4))
    return _related_layers(rng, n, wa, base), _related_layers(rng, n, wb, base)


@pytest.mark.parametrize("label", list(SINGLE_ALL))
def test_fast_path_equals_single_pairs(label, monkeypatch):
    cases = [NARROW, WIDE] if label == "cka_debiased" else [WIDE]
    from repsim_jax.similarity import compare as C
    for case in cases:
        a, b = _layers(case)
        n = case[0]
        # a tiny budget: Gram stats prepared one layer at a time, some not cached
        monkeypatch.setattr(C, "FAST_BUDGET", 6 * n * n * 4)
        t = S.compare_layers(a, b, [SPECS_ALL[label]], progress=False)
        assert t.measures == (label,)
        for r in t.records():
            want = float(SINGLE_ALL[label](a[r["layer"]], b[r["other_layer"]]))
            assert abs(r["value"] - want) < 1e-5, (r, want)
            assert np.isnan(r["p"])


def test_fast_path_self_comparison_and_generic_grid(monkeypatch):
    """One model with itself (b-side stats shared with a's) equals a vs a copy of a, also
    with a budget too small to keep any statistics; resampling forces the generic (vmapped pair) grid: the same values."""
    from repsim_jax.similarity import compare as C
    a, b = _layers(WIDE)
    ms = ["cka_debiased", "rsa"]
    same = S.compare_layers(a, None, ms, progress=False)     # stats shared by both sides
    copy = S.compare_layers(a, dict(a), ms, progress=False)
    np.testing.assert_allclose(same.value, copy.value, atol=1e-6)
    # room for 3 Gram matrices: chunks of 2 + 1 layers, nothing kept, re-prepared per row
    monkeypatch.setattr(C, "FAST_BUDGET", 3 * 20 * 20 * 4)
    for other in (None, dict(a)):
        small = S.compare_layers(a, other, ms[:1], progress=False)
        np.testing.assert_allclose(small.value, copy.value[:len(small)], atol=1e-6)
    t = S.compare_layers(a, b, ms, progress=False)
    g = S.compare_layers(a, b, ms, n_permutations=1, progress=False)
    np.testing.assert_allclose(t.value, g.value, atol=1e-5)
    assert np.all(np.isnan(t.p)) and not np.any(np.isnan(g.p))


def test_cka_route_plan():
    from repsim_jax.similarity import _measure as M
    fp = M.MEASURES["cka"].fast({"kernel": "linear", "debiased": True, "sigma": 1.0})
    lin = {"kernel": "linear", "debiased": True, "sigma": 1.0}
    assert fp.plan(2000, [64, 512] * 10, [64, 512] * 10, lin) == "gram"
    assert fp.plan(10000, [64, 512] * 10, [64, 512] * 10, lin) == "feature"
    assert fp.plan(100, [8, 200], [8], lin) == "gram"          # a layer wider than N
    assert fp.plan(10000, [8], [8], {**lin, "kernel": "rbf"}) == "gram"


def test_fast_spectral_routes_options_and_near_pairs():
    """Procrustes with partial whitening and a rotated copy (distance ~0: the chord
    fallback), unregularised CCA / PWCCA on narrow layers, SVCCA with another ``keep``:
    the fast path equals the single-pair functions."""
    a, _ = _layers(NARROW)
    rng = np.random.default_rng(1)
    Q = np.linalg.qr(rng.normal(size=(6, 6)))[0]
    b = {"rot": (a["l0"] @ Q).astype(np.float32), "other": a["l1"]}
    cases = {("procrustes", 1.0): S.procrustes,
             ("procrustes", 0.5): lambda x, y: S.procrustes(x, y, alpha=0.5),
             ("cca", 0): S.cca, ("pwcca", 0): S.pwcca,
             ("svcca", 0.9): lambda x, y: S.svcca(x, y, keep=0.9)}
    specs = {("procrustes", 1.0): "procrustes",
             ("procrustes", 0.5): ("procrustes", {"alpha": 0.5}), ("cca", 0): "cca",
             ("pwcca", 0): "pwcca", ("svcca", 0.9): ("svcca", {"keep": 0.9})}
    al = {"l0": a["l0"], "l1": a["l1"]}
    for key, spec in specs.items():
        t = S.compare_layers(al, b, [spec], progress=False)
        for r in t.records():
            want = float(cases[key](al[r["layer"]], b[r["other_layer"]]))
            assert abs(r["value"] - want) < 1e-5, (key, r, want)
    t = S.compare_layers(al, b, ["procrustes"], progress=False)
    assert t.matrix().values[0, 0] < 1e-4          # l0 vs its rotated copy


def test_every_measure_has_an_all_pairs_route():
    """compare_layers' fast path covers every measure at its defaults (Kendall's tau-a RSA,
    an O(N^4) pair, is the one option left to the generic grid)."""
    from repsim_jax.similarity import _measure as M
    for name, m in M.MEASURES.items():
        o = dict(M.resolve(name)[1])
        assert m.fast is not None and m.fast(o) is not None, name
    rsa = M.MEASURES["rsa"]
    assert rsa.fast(dict(M.resolve("rsa", {"compare": "kendall_tau_a"})[1])) is None
