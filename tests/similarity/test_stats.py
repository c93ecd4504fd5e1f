"""Permutation tests and bootstrap intervals: calibrated, powerful, reproducible."""
import numpy as np
import pytest
import scipy.stats as sst

from repsim_jax import similarity as S
from repsim_jax._checks import InputError


def test_permutation_p_values_uniform_under_null():
    """Independent X, Y: the p-values of 200 data sets are uniform (KS test)."""
    rng = np.random.default_rng(1)
    ps = [S.permutation_test("cka_debiased", rng.normal(size=(20, 3)),
                             rng.normal(size=(20, 3)), n=99, key=i).p_value
          for i in range(200)]
    assert sst.kstest(ps, "uniform").pvalue > 0.01
    assert min(ps) >= 1 / 100          # never 0: (1 + hits) / (n + 1)


@pytest.mark.parametrize("measure", ["cka_debiased", "procrustes", "rsa", "mutual_knn"])
def test_permutation_p_value_small_for_planted_relation(measure):
    rng = np.random.default_rng(2)
    X = rng.normal(size=(40, 8))
    Y = X[:, :6] @ rng.normal(size=(6, 6)) + 0.5 * rng.normal(size=(40, 6))
    r = S.permutation_test(measure, X, Y, n=199, key=0)
    assert r.p_value == pytest.approx(1 / 200)
    assert r.alternative == ("less" if measure == "procrustes" else "greater")
    # and not small for an unrelated Y
    assert S.permutation_test(measure, X, rng.normal(size=(40, 6)), n=199, key=0).p_value \
        > 0.01


def test_resamples_reproducible_and_independent_of_chunking():
    rng = np.random.default_rng(3)
    X, Y = rng.normal(size=(40, 8)), rng.normal(size=(40, 6))
    a = S.permutation_test("cka_debiased", X, Y, n=50, key=7, chunk=8)
    b = S.permutation_test("cka_debiased", X, Y, n=50, key=7, chunk=32)
    c = S.permutation_test("cka_debiased", X, Y, n=50, key=8, chunk=8)
    np.testing.assert_allclose(a.null, b.null, rtol=1e-6, atol=1e-7)
    assert not np.allclose(a.null, c.null)
    # the null really permutes one side: equals the measure on the permuted inputs
    import jax
    perm = np.asarray(jax.random.permutation(jax.random.fold_in(jax.random.key(7), 3), 40))
    assert abs(a.null[3] - float(S.cka(X, Y[perm], debiased=True))) < 1e-5
    bs1 = S.bootstrap("procrustes", X, Y, n=40, key=1, chunk=8)
    bs2 = S.bootstrap("procrustes", X, Y, n=40, key=1, chunk=40)
    np.testing.assert_allclose(bs1.samples, bs2.samples, rtol=1e-6, atol=1e-7)
    idx = np.asarray(jax.random.randint(jax.random.fold_in(jax.random.key(1), 5), (40,), 0,
                                        40))
    assert abs(bs1.samples[5] - float(S.procrustes(X[idx], Y[idx]))) < 1e-5


def test_bootstrap_interval_covers_population_value():
    """X = Z1, Y = rho Z1 + sqrt(1 - rho^2) Z2 (D independent coordinates): population
    linear CKA = rho^2. 90% percentile intervals over 200 simulated data sets."""
    rng = np.random.default_rng(4)
    rho, level, hits = 0.6, 0.9, 0
    for i in range(200):
        Z1, Z2 = rng.normal(size=(100, 2)), rng.normal(size=(100, 2))
        r = S.bootstrap("cka_debiased", Z1, rho * Z1 + np.sqrt(1 - rho ** 2) * Z2, n=200,
                        key=i, level=level)
        hits += r.ci_low <= rho ** 2 <= r.ci_high
    # binomial(200, 0.9): 3 standard deviations = 0.064
    assert 0.9 - 0.064 <= hits / 200 <= 0.9 + 0.064


def test_custom_measure_and_errors():
    rng = np.random.default_rng(5)
    X = rng.normal(size=(30, 4))
    r = S.permutation_test(_first_corr, X, X + 0.1 * rng.normal(size=X.shape), n=49)
    assert r.p_value == pytest.approx(1 / 50) and r.measure == "_first_corr"
    with pytest.raises(InputError, match="n must be a positive integer"):
        S.bootstrap("cka", X, X, n=0)
    with pytest.raises(InputError, match="level must be in"):
        S.bootstrap("cka", X, X, n=10, level=1.5)
    with pytest.raises(InputError, match="takes no option"):
        S.permutation_test("procrustes", X, X, n=10, kernel="rbf")


def _first_corr(x, y):
    import jax.numpy as jnp
    a, b = x[:, 0] - x[:, 0].mean(), y[:, 0] - y[:, 0].mean()
    return jnp.sum(a * b) / jnp.sqrt(jnp.sum(a * a) * jnp.sum(b * b))
