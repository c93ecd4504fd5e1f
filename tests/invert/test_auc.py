"""Exact rank AUC, Mann-Whitney p-values and Benjamini-Hochberg against scipy / sklearn."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score

from repsim_jax._checks import InputError
from repsim_jax.invert import benjamini_hochberg, mann_whitney, rank_auc, twice_average_ranks
from repsim_jax.invert.search import concept_table, group_rank_sums_host


@pytest.fixture(scope="module")
def tied_data():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 12, size=(300, 4)).astype(np.float64)  # many ties
    lab = rng.random((300, 5)) < np.array([0.05, 0.2, 0.5, 0.7, 0.9])
    return a, lab


def test_auc_equals_sklearn_and_scipy_with_ties(tied_data):
    a, lab = tied_data
    auc = rank_auc(a, lab)
    assert auc.shape == (4, 5)
    for u in range(4):
        for k in range(5):
            sk = roc_auc_score(lab[:, k], a[:, u])
            u1 = stats.mannwhitneyu(a[lab[:, k], u], a[~lab[:, k], u]).statistic
            mw = u1 / (lab[:, k].sum() * (~lab[:, k]).sum())
            assert auc[u, k] == pytest.approx(sk, abs=1e-12)
            assert auc[u, k] == pytest.approx(mw, abs=1e-12)


def test_auc_is_scale_invariant():
    rng = np.random.default_rng(1)
    y = rng.random(2000) < 0.1
    a = rng.normal(size=2000) + 1.5 * y
    ref = rank_auc(a, y)
    for f in (lambda x: 10 * x, lambda x: 50 * x, lambda x: 1 / (1 + np.exp(-x)), np.exp):
        assert rank_auc(f(a), y) == ref  # bit-equal: depends on ranks only
    assert 0.8 < ref < 0.9


@pytest.mark.parametrize("alternative", ["two-sided", "greater", "less"])
def test_p_values_equal_scipy(tied_data, alternative):
    a, lab = tied_data
    u_stat, p, log_p = mann_whitney(a, lab, alternative=alternative)
    for u in range(4):
        for k in range(5):
            ref = stats.mannwhitneyu(a[lab[:, k], u], a[~lab[:, k], u],
                                     alternative=alternative, method="asymptotic")
            assert u_stat[u, k] == pytest.approx(ref.statistic, abs=1e-9)
            assert p[u, k] == pytest.approx(ref.pvalue, rel=1e-9, abs=1e-300)
            assert log_p[u, k] == pytest.approx(np.log(ref.pvalue), rel=1e-9, abs=1e-12)


def test_log_p_does_not_underflow():
    rng = np.random.default_rng(2)
    y = np.zeros(20000, bool)
    y[:5000] = True
    a = rng.normal(size=20000) + 8.0 * y
    ref = stats.mannwhitneyu(a[y], a[~y], method="asymptotic")
    assert ref.pvalue == 0.0  # scipy underflows
    _, p, log_p = mann_whitney(a, y)
    # log of the normal tail: log 2 + log Phi(-z), with z from the statistic
    n1, n2 = 5000, 15000
    z = (max(ref.statistic, n1 * n2 - ref.statistic) - n1 * n2 / 2 - 0.5) / np.sqrt(
        n1 * n2 / 12 * (n1 + n2 + 1))
    assert np.isfinite(log_p) and log_p < -1000
    assert log_p == pytest.approx(np.log(2) + stats.norm.logsf(z), rel=1e-9)


def test_ranks_host_device_scipy_agree(tied_data):
    a, _ = tied_data
    with jax.enable_x64(True):
        rho, tie = twice_average_ranks(jnp.asarray(a.T, jnp.float64))
    ref = 2 * stats.rankdata(a, axis=0).T
    np.testing.assert_array_equal(np.asarray(rho), ref)
    # tie term: sum over tie groups of t^3 - t
    for u in range(4):
        _, t = np.unique(a[:, u], return_counts=True)
        assert float(tie[u]) == float((t ** 3 - t).sum())
    # host path: group sums of the same ranks (float32 packed-key and float64 argsort)
    groups = np.random.default_rng(3).integers(0, 7, 300)
    lab = np.eye(7, dtype=bool)[groups]
    table = concept_table(lab)
    for acts in (a.T.astype(np.float32), a.T + 1e-9 * np.arange(4)[:, None]):
        rho_g, tie_h, const = group_rank_sums_host(np.ascontiguousarray(acts), table)
        ref_g = np.stack([np.bincount(table.group_of_input, weights=2 * stats.rankdata(x),
                                      minlength=table.n_groups) for x in acts])
        np.testing.assert_array_equal(rho_g, ref_g)
        assert not const.any()


def test_benjamini_hochberg_equals_scipy():
    rng = np.random.default_rng(4)
    p = np.concatenate([rng.random(40), rng.random(10) * 1e-4])
    q, log_q = benjamini_hochberg(p)
    np.testing.assert_allclose(q, stats.false_discovery_control(p, method="bh"), rtol=1e-12)
    q2, _ = benjamini_hochberg(log_p=np.log(p))
    np.testing.assert_allclose(q2, q, rtol=1e-12)
    assert np.all(np.diff(q[np.argsort(p)]) >= -1e-15)  # monotone in p
    with pytest.raises(InputError, match="lie in"):
        benjamini_hochberg(np.array([0.5, 1.5]))


def test_auc_bad_input():
    with pytest.raises(InputError, match="NaN"):
        rank_auc(np.array([0.0, np.nan, 1.0]), np.array([True, False, True]))
    with pytest.raises(InputError, match="inputs"):
        rank_auc(np.arange(5.0), np.ones(4, bool))
    with pytest.raises(InputError, match="boolean"):
        rank_auc(np.arange(3.0), np.array([0.5, 1.0, 0.0]))
    # a label without positives (or negatives) has no AUC: NaN, documented
    assert np.isnan(rank_auc(np.arange(4.0), np.zeros(4, bool)))
