"""RSM comparison (CKA, RSA) and the paper's evaluation functions vs numpy/scipy references."""
import numpy as np
import pytest
from scipy.spatial.distance import jensenshannon
from scipy.stats import pearsonr, spearmanr

from repsim_jax._checks import InputError
from repsim_jax.semantic import (compare, jensen_shannon, jsd_alignment, retrieval_f1, retrieve,
                                 top1_agreement)


def _feature_linear_cka(x, y):
    x = x - x.mean(0)
    y = y - y.mean(0)
    return np.linalg.norm(y.T @ x) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y))


def _feature_rbf_cka(x, y):
    def k(z):
        d = ((z[:, None] - z[None]) ** 2).sum(-1)
        sig2 = np.median(d[np.triu_indices(len(z), 1)])
        return np.exp(-d / (2 * sig2))

    def hsic(a, b):
        h = np.eye(len(a)) - 1.0 / len(a)
        return np.trace(a @ h @ b @ h)
    ka, kb = k(x), k(y)
    return hsic(ka, kb) / np.sqrt(hsic(ka, ka) * hsic(kb, kb))


def test_cka_of_gram_matrices_equals_feature_cka():
    rng = np.random.default_rng(0)
    feats = [rng.normal(size=(20, d)) for d in (5, 8, 3)]
    feats[1][:, :5] += 2 * feats[0]                          # make a and b related
    grams = np.stack([f @ f.T for f in feats])
    lin = compare(grams, method="linear_cka")
    rbf = compare(grams, grams[:2], method="rbf_cka")
    assert lin.shape == (3, 3) and rbf.shape == (3, 2)
    for i in range(3):
        for j in range(3):
            np.testing.assert_allclose(lin[i, j], _feature_linear_cka(feats[i], feats[j]),
                                       rtol=1e-4)
            if j < 2:
                np.testing.assert_allclose(rbf[i, j], _feature_rbf_cka(feats[i], feats[j]),
                                           rtol=1e-4)
    np.testing.assert_allclose(np.diag(lin), 1.0, rtol=1e-5)


def test_pearson_spearman_of_upper_triangles_and_dicts():
    rng = np.random.default_rng(1)
    a = {f"l{i}": (lambda m: m + m.T)(rng.normal(size=(12, 12))) for i in range(3)}
    a["l2"][0, 1] = a["l2"][1, 0] = a["l2"][0, 2] = a["l2"][2, 0] = 7.0      # a tie
    b = np.stack([(lambda m: m + m.T)(rng.normal(size=(12, 12))) for _ in range(2)])
    iu = np.triu_indices(12, 1)
    pr = compare(a, b, method="pearson")
    sp = compare(a, b, method="spearman")
    for i, k in enumerate(a):
        for j in range(2):
            np.testing.assert_allclose(pr[i, j], pearsonr(a[k][iu], b[j][iu])[0], rtol=1e-4)
            np.testing.assert_allclose(sp[i, j], spearmanr(a[k][iu], b[j][iu])[0], rtol=1e-4)


def test_compare_errors():
    with pytest.raises(InputError, match="different numbers of inputs"):
        compare(np.eye(4), np.eye(5))
    with pytest.raises(InputError, match="square"):
        compare(np.ones((2, 4, 5)))
    with pytest.raises(KeyError, match="unknown comparison"):
        compare(np.eye(4), method="cka")
    with pytest.raises(InputError, match="NaN"):
        compare(np.full((4, 4), np.nan))


def test_retrieval_planted():
    # inputs 2k and 2k+1 are a similar pair; their label sets overlap in 1 of 2 labels
    n = 8
    k = np.eye(n) * 5
    for i in range(0, n, 2):
        k[i, i + 1] = k[i + 1, i] = 1.0
    labels = np.zeros((n, 6), bool)
    for i in range(n):
        labels[i, [i // 2 % 3, 3 + i % 2]] = True           # pair shares label i//2 only
    np.testing.assert_array_equal(retrieve(k), np.arange(n) ^ 1)
    np.testing.assert_allclose(retrieval_f1(k, labels), 0.5)
    np.testing.assert_allclose(retrieval_f1(np.stack([k, k]), labels), [0.5, 0.5])
    per = retrieval_f1(k, labels, per_query=True)
    assert per.shape == (n,) and np.allclose(per, 0.5)
    assert top1_agreement(k, np.arange(n) // 2) == 1.0
    assert top1_agreement(k, np.arange(n)) == 0.0


def test_jsd_and_alignment_vs_scipy():
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(15, 6)) * 2
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    js = np.asarray(jensen_shannon(probs))
    ref = np.array([[jensenshannon(p, q, base=2) ** 2 for q in probs] for p in probs])
    np.testing.assert_allclose(js, ref, atol=1e-6)
    k = -ref + 0.1 * rng.normal(size=ref.shape)
    k = (k + k.T) / 2
    iu = np.triu_indices(15, 1)
    out = jsd_alignment(k, probs)
    np.testing.assert_allclose(out["pearson"], pearsonr(k[iu], ref[iu])[0], rtol=1e-4)
    np.testing.assert_allclose(out["spearman"], spearmanr(k[iu], ref[iu])[0], rtol=1e-4)
    assert out["pearson"] < -0.5
    out2 = jsd_alignment(np.stack([k, -k]), logits=logits)
    np.testing.assert_allclose(out2["pearson"], [out["pearson"], -out["pearson"]], rtol=1e-4)


def test_evaluate_errors():
    k = np.eye(4)
    with pytest.raises(InputError, match="rsm has 4 inputs but label_sets has 3"):
        retrieval_f1(k, np.ones((3, 2), bool))
    with pytest.raises(InputError, match="sum to 1"):
        jsd_alignment(k, np.ones((4, 3)))
    with pytest.raises(InputError, match="exactly one"):
        jsd_alignment(k)
    with pytest.raises(InputError, match="N >= 2"):
        retrieve(np.ones((1, 1)))


def test_debiased_cka_names_and_one_compile():
    """Debiased CKA of Gram matrices equals the features' debiased CKA; dict names are kept;
    a second call with equal shapes compiles nothing (was ~50 ms of jit per call)."""
    import jax

    from repsim_jax import similarity
    rng = np.random.default_rng(3)
    feats = {"x": rng.normal(size=(30, 6)), "y": rng.normal(size=(30, 9))}
    feats["y"][:, :6] += feats["x"]
    grams = {k: f @ f.T for k, f in feats.items()}
    out = compare(grams)                                    # default: cka_debiased
    assert out.method == "cka_debiased" and out.rows == out.cols == ("x", "y")
    assert abs(out[0, 1] - float(similarity.cka(feats["x"], feats["y"], debiased=True))) \
        < 1e-5
    n = {"c": 0}

    def listen(event, duration, **kw):
        n["c"] += event == "/jax/core/compile/backend_compile_duration"
    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        compare({k: 2.0 * g for k, g in grams.items()}, method="linear_cka")
        n["c"] = 0
        compare({k: 3.0 * g for k, g in grams.items()}, method="linear_cka")
        assert n["c"] == 0
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)
