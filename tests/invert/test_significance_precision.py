"""Selection-aware permutation p-values, the float32/uint32 path, result types, mesh=."""
import json
import warnings

import jax
import numpy as np
import pytest
from scipy import stats

from repsim_jax._checks import InputError
from repsim_jax._results import load_result
from repsim_jax.invert import InvertLayers, InvertResult, NeuronBeam, explain, resolve_precision
from repsim_jax.invert.search import MAX_N_32

from repsim_jax.invert.reference import hierarchical_labels


def hierarchy(n, seed=0):
    lab, names, _ = hierarchical_labels(n, 3, 3, 4, seed=seed)
    return lab, names

ARRAYS = ("literals", "ops", "valid", "auc", "count", "p_value", "concept_fraction")


def _same(a, b):
    for k in ARRAYS:
        np.testing.assert_array_equal(getattr(a, k), getattr(b, k), err_msg=k)


def test_float32_path_equals_float64_on_official_reference(shared_dir):
    d = np.load(shared_dir / "reference" / "invert_public.npz", allow_pickle=True)
    prm = json.loads((shared_dir / "reference" / "invert_public.json").read_text())["params"]
    lab, acts = d["labels"], d["activations"]
    names = [str(x) for x in d["concept_names"]]
    kw = dict(L=prm["L"], B=prm["B"], min_fraction=prm["min_fraction"], compat=True,
              max_fraction=prm["max_fraction"], mode=prm["mode"])
    f64 = explain(acts, lab, names, precision="float64", **kw)   # as test_search's call
    f32 = explain(acts, lab, names, precision="float32", rank_on="device", **kw)
    assert f64.params["precision"] == "float64" and f32.params["precision"] == "float32"
    _same(f64, f32)   # identical beams, counts, AUCs and p-values (all float64 on the host)
    assert f32.valid.sum() == 24 * 3 * 5


def test_float32_path_exact_beyond_2_32(world):
    # N = 100000: twice the rank sums reach N (N + 1) > 2^33 and 2 n (N - n) > 2^32 (beyond
    # the old uint32 limit N <= 92681): the limbs keep them exact, beams and AUCs equal
    _, lab0, names = world
    rng = np.random.default_rng(3)
    n = 100_000
    lab = lab0[rng.integers(0, lab0.shape[0], n)][:, [3, 5, 20, 36, 45, 46]]
    names = [names[i] for i in [3, 5, 20, 36, 45, 46]]
    acts = np.stack([1.0 * (lab[:, 0] | lab[:, 2]) + rng.normal(size=n),
                     np.round(rng.normal(size=n), 1)], 1)           # many ties in neuron 2
    kw = dict(L=2, B=2, mesh=None, min_fraction=0.35, max_fraction=0.9)
    f64 = explain(acts, lab, names, precision="float64", **kw)
    f32 = explain(acts, lab, names, precision="float32", **kw)
    cnt = f64.count[f64.valid]
    assert (2 * cnt * (n - cnt)).max() > 2 ** 32 and f64.valid.all()
    _same(f64, f32)
    f32d = explain(acts.astype(np.float32), lab, names, precision="float32", rank_on="device",
                   **kw)                                   # ranks + limbs on the device
    _same(explain(acts.astype(np.float32), lab, names, precision="float64", **kw), f32d)


@pytest.mark.parametrize("kw", [dict(mode="negative", limit_search=20, min_fraction=0.02, L=2),
                                dict(compat=True), dict(B=5, max_fraction=0.7, L=2)])
def test_float32_search_orders_as_float64_and_reports_rounded_aucs(world, kw):
    from repsim_jax.invert.search import SearchConfig, beam_search, concept_table
    acts, lab, _ = world
    mode = kw.pop("mode", "positive")
    cfg = {**dict(L=3, B=4), **kw, "positive": mode == "positive"}
    table = concept_table(lab)
    a = beam_search(acts.T, table, SearchConfig(**cfg), mesh=None)
    b = beam_search(acts.T, table, SearchConfig(**cfg, precision="float32"), mesh=None,
                    rank_on="device")                      # device ranks, expansion order
    for k in ("literals", "ops", "valid", "count", "rank_sum2", "auc", "tie_term"):
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)   # same beams, ties included
    ok = a["valid"].astype(bool)
    assert b["auc_device"].dtype == np.float32 and ok.sum() > 50
    # the AUC computed inside the float32 search is the float64 one rounded to float32
    np.testing.assert_array_equal(b["auc_device"][ok], a["auc_device"][ok].astype(np.float32))


def test_float32_path_limit_is_2_24():
    assert MAX_N_32 == 2 ** 24 - 1
    n = 2 ** 24
    with pytest.raises(InputError, match="2\\^24"):
        explain(np.zeros(n, np.float32), np.arange(n)[:, None] % 2 == 0, ["even"], L=1, B=1,
                precision="float32")


def test_precision_is_chosen_automatically(monkeypatch):
    assert resolve_precision("auto") == "float64"                      # CPU has float64
    monkeypatch.setenv("JAX_ENABLE_X64", "0")
    assert resolve_precision("auto") == "float32"                      # switched off
    assert resolve_precision("float64") == "float64"                   # forced
    with pytest.raises(InputError, match="precision"):
        resolve_precision("bfloat16")


def test_permutation_p_values_uniform_under_null_small_when_planted():
    lab, names = hierarchy(300)
    rng = np.random.default_rng(0)
    noise = rng.normal(size=(300, 47)).astype(np.float32)
    planted = 3.0 * lab[:, [40]] + rng.normal(size=(300, 1))
    acts = np.concatenate([noise, planted], 1)
    n = 39
    kw = dict(L=2, B=3, permutations=n, permutation_chunk=8)   # 5 chunks, the last padded
    res = explain(acts, lab, names, seed=1, **kw)
    p = res.perm_p_value
    assert res.null_auc.shape == (48, n) and np.all(p >= 1 / (n + 1))
    # H0 (noise): observed and null searches are exchangeable -> p uniform on the grid
    # {1/(n+1), ..., 1}; spread uniformly within each grid cell it is U(0, 1)
    u = p[:47] - np.random.default_rng(2).uniform(size=47) / (n + 1)
    assert stats.kstest(u, "uniform").pvalue > 0.05
    # ... while the nominal p-value of the selected best formula is anti-conservative
    assert np.mean(res.best_p_value[:47] < 0.05) > 0.5
    assert p[47] == 1 / (n + 1) and res[47].perm_p_value == p[47]     # planted: smallest
    assert res.perm_q_value.shape == (48,) and res.perm_q_value[47] <= 48 / (n + 1)
    # the null holds best AUCs of full searches: above every noise neuron's chance level
    assert np.all(np.nanmin(res.null_auc, 1)[:47] > 0.55)
    # keyed PRNG: reproducible for a seed, different for another
    np.testing.assert_array_equal(explain(acts, lab, names, seed=1, **kw).null_auc,
                                  res.null_auc)
    assert not np.array_equal(explain(acts, lab, names, seed=2, **kw).null_auc, res.null_auc)


def test_results_slice_like_sequences_and_keep_layer_names(world, tmp_path):
    acts, lab, names = world
    res = explain(acts, lab, names, L=2, B=3)
    assert isinstance(res, InvertResult) and len(res) == 7
    head = res[:3]
    assert isinstance(head, list) and [b.neuron for b in head] == [0, 1, 2]
    assert [b.best.formula for b in head] == res.best_formulas()[:3]
    assert res[-1] == res[6] and res[np.int64(2)] == res[2] and res[::-3] == [res[6], res[3], res[0]]
    assert [b.neuron for b in res] == list(range(7))
    with pytest.raises(IndexError):
        res[7]
    with pytest.raises(TypeError):
        res[1.0]
    # a dict of layers: a named result that keeps the layer names (a mapping)
    out = explain({"fc_b": acts[:, 4:], "fc_a": acts[:, :4]}, lab, names, L=2, B=3)
    assert isinstance(out, InvertLayers) and list(out) == ["fc_b", "fc_a"]
    assert out["fc_a"].layer == "fc_a" and out["fc_a"][1].layer == "fc_a"
    np.testing.assert_array_equal(out["fc_a"].literals, res.literals[:4])
    with pytest.raises(KeyError, match="Did you mean"):
        out["fc_c"]
    # pytrees with to_dict / save
    leaves = jax.tree_util.tree_leaves(out)
    assert sum(x.size for x in leaves) == sum(sum(np.size(getattr(r, k)) for k in
               ("literals", "ops", "auc", "concept_fraction", "p_value", "log_p_value",
                "valid", "count", "best_p_value", "best_log_p_value", "q_value",
                "log_q_value", "constant")) for r in out.values())
    kind, back = load_result(out.save(tmp_path / "inv"))
    assert kind == "InvertLayers"
    np.testing.assert_array_equal(back["layers"]["fc_a"]["auc"], out["fc_a"].auc)
    one = explain(acts[:, 0], lab, names, L=2, B=3)
    assert isinstance(one, NeuronBeam)
    assert one.to_dict()["explanations"][0]["formula"] == res[0].best.formula


def test_deprecated_devices_alias_warns(world):
    acts, lab, names = world
    with pytest.warns(DeprecationWarning, match="devices"):
        old = explain(acts[:, :3], lab, names, L=2, B=3, devices=jax.devices())
    _same(old, explain(acts[:, :3], lab, names, L=2, B=3, mesh=jax.devices()))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        explain(acts[:, :3], lab, names, L=2, B=3)


def test_float32_null_equals_float64_null(world):
    acts, lab, names = world
    kw = dict(L=2, B=2, permutations=4, permutation_chunk=4, seed=4, mesh=None)
    f64 = explain(acts[:, :3], lab, names, precision="float64", **kw)
    f32 = explain(acts[:, :3], lab, names, precision="float32", **kw)
    assert np.isfinite(f64.null_auc).all()
    np.testing.assert_array_equal(f64.null_auc, f32.null_auc)
    np.testing.assert_array_equal(f64.perm_p_value, f32.perm_p_value)
