"""Each measure against float64 references (numpy definitions, scipy, rsatoolbox) and its
invariances."""
import numpy as np
import pytest
import scipy.linalg as sla
import scipy.stats as sst

from repsim_jax import similarity as S
from repsim_jax._checks import InputError

from tests.similarity.conftest import (centre, cka_ref, count_compiles, hsic_u_ref,
                                       rbf_ref)

TOL = 1e-5


def _pair(rng, n=40, dx=8, dy=6, noise=1.0):
    """One shape for most tests: each measure compiles once for the whole file."""
    X = rng.normal(size=(n, dx))
    Y = X[:, :dy] @ rng.normal(size=(dy, dy)) + noise * rng.normal(size=(n, dy)) + 3.0
    return X, Y


# ------------------------------------------------------------------------------- CKA
@pytest.mark.parametrize("debiased", [False, True])
@pytest.mark.parametrize("kernel", ["linear", "rbf"])
def test_cka_matches_definition(rng, kernel, debiased):
    X, Y = _pair(rng)
    K, L = ((X @ X.T, Y @ Y.T) if kernel == "linear" else (rbf_ref(X), rbf_ref(Y)))
    got = float(S.cka(X, Y, kernel=kernel, debiased=debiased))
    assert abs(got - cka_ref(K, L, debiased)) < TOL


def test_cka_gram_route_equals_feature_route(rng):
    """D > N takes the Gram route; it is the same estimator as the feature-space one."""
    X, Y = rng.normal(size=(20, 50)), rng.normal(size=(20, 30))
    Y[:, :10] += X[:, :10]
    for deb in (False, True):
        ref = cka_ref(X @ X.T, Y @ Y.T, deb)
        assert abs(float(S.cka(X, Y, debiased=deb)) - ref) < TOL
        # a feature-space layer (D <= N) paired with a Gram-route one: mixed pair
        t = S.compare_layers({"x": X}, {"small": Y[:, :15], "wide": Y}, ["cka" if not deb
                                                                         else "cka_debiased"],
                             progress=False)
        assert abs(t.value[1] - ref) < TOL
        assert abs(t.value[0] - cka_ref(X @ X.T, Y[:, :15] @ Y[:, :15].T, deb)) < TOL


def test_debiased_cka_of_independent_features_is_near_zero(rng):
    """The issue's numbers: biased linear CKA of independent C=500 features is ~0.72 at
    N=200, debiased within 0.05 of 0; both are 1 for a rotated copy."""
    X = rng.normal(size=(200, 500)).astype(np.float32)
    Y = rng.normal(size=(200, 500)).astype(np.float32)
    biased, deb = float(S.cka(X, Y)), float(S.cka(X, Y, debiased=True))
    assert 0.65 < biased < 0.78
    assert abs(deb) < 0.05
    Q = np.linalg.qr(rng.normal(size=(500, 500)))[0].astype(np.float32)
    assert abs(float(S.cka(X, X @ Q, debiased=True)) - 1.0) < 1e-4
    assert abs(float(S.cka(X, X @ Q)) - 1.0) < 1e-4


def test_minibatch_cka(rng):
    X, Y = _pair(rng, n=100)
    # estimator="full": exact streaming of full-N debiased CKA (float32 rounding only)
    full = float(S.cka(X, Y, debiased=True))
    assert abs(S.minibatch_cka(X, Y, batch_size=32, estimator="full") - full) < TOL
    # one batch = the full estimator
    assert abs(S.minibatch_cka(X, Y, batch_size=100) - full) < TOL
    # several batches: Nguyen et al.'s estimator = sums of per-batch HSIC_u, then ratio
    # (a different estimator of the same population value, not equal to `full`)
    parts = [(X[s:s + 25], Y[s:s + 25]) for s in range(0, 100, 25)]
    num = sum(hsic_u_ref(a @ a.T, b @ b.T) for a, b in parts)
    dx = sum(hsic_u_ref(a @ a.T, a @ a.T) for a, _ in parts)
    dy = sum(hsic_u_ref(b @ b.T, b @ b.T) for _, b in parts)
    assert abs(S.minibatch_cka(iter(parts)) - num / np.sqrt(dx * dy)) < TOL
    assert abs(S.minibatch_cka(X, Y, batch_size=25) - num / np.sqrt(dx * dy)) < TOL
    rb = [(a, b) for a, b in parts]
    ref = sum(hsic_u_ref(rbf_ref(a), rbf_ref(b)) for a, b in rb) / np.sqrt(
        sum(hsic_u_ref(rbf_ref(a), rbf_ref(a)) for a, _ in rb)
        * sum(hsic_u_ref(rbf_ref(b), rbf_ref(b)) for _, b in rb))
    assert abs(S.minibatch_cka(iter(parts), kernel="rbf") - ref) < TOL
    # and it estimates the same population value: large N, planted relation
    Xb, Yb = _pair(np.random.default_rng(1), n=2048, dx=16, dy=16, noise=2.0)
    assert abs(S.minibatch_cka(Xb, Yb, batch_size=256)
               - float(S.cka(Xb, Yb, debiased=True))) < 0.02
    with pytest.raises(InputError, match="estimator='full' needs kernel='linear'"):
        S.minibatch_cka(X, Y, kernel="rbf", estimator="full")


# ------------------------------------------------------------------------------- RSA
def _rsatoolbox_rsa(X, Y, method, rdm="correlation"):
    rsatoolbox = pytest.importorskip("rsatoolbox")
    r1 = rsatoolbox.rdm.calc_rdm(rsatoolbox.data.Dataset(X), method=rdm)
    r2 = rsatoolbox.rdm.calc_rdm(rsatoolbox.data.Dataset(Y), method=rdm)
    return float(np.asarray(rsatoolbox.rdm.compare(r1, r2, method=method)).ravel()[0])


@pytest.mark.parametrize("compare,method", [("pearson", "corr"), ("spearman", "spearman"),
                                            ("kendall_tau_a", "tau-a"),
                                            ("cosine", "cosine")])
def test_rsa_matches_rsatoolbox(rng, compare, method):
    X, Y = _pair(rng, n=40)
    got = float(S.rsa(X, Y, rdm="correlation", compare=compare))
    assert abs(got - _rsatoolbox_rsa(X, Y, method)) < TOL


def test_rsa_rdms_match_scipy(rng):
    from scipy.spatial.distance import pdist
    X, Y = _pair(rng, n=40)
    for rdm, metric in (("correlation", "correlation"), ("cosine", "cosine"),
                        ("euclidean", "euclidean")):
        u, v = pdist(X, metric), pdist(Y, metric)
        assert abs(float(S.rsa(X, Y, rdm=rdm, compare="pearson")) - sst.pearsonr(u, v)[0]) < TOL
        assert abs(float(S.rsa(X, Y, rdm=rdm, compare="spearman"))
                   - sst.spearmanr(u, v)[0]) < TOL
        assert abs(float(S.rsa(X, Y, rdm=rdm, compare="kendall_tau_a"))
                   - sst.kendalltau(u, v)[0]) < TOL       # no ties: tau-a = tau-b
        np.testing.assert_allclose(S.rdm(X, rdm)[np.triu_indices(40, 1)], u, atol=1e-5)
    # "sqeuclidean" is rsatoolbox's "euclidean" (squared distance / D)
    assert abs(float(S.rsa(X, Y, rdm="sqeuclidean", compare="pearson"))
               - _rsatoolbox_rsa(X, Y, "corr", rdm="euclidean")) < TOL


# ------------------------------------------------------------------------ Procrustes
def _unit(X):
    Xc = centre(X)
    return Xc / np.linalg.norm(Xc)


def test_procrustes_matches_scipy(rng):
    X, Y = _pair(rng)
    A, B = _unit(X), _unit(Y)
    B = np.pad(B, ((0, 0), (0, A.shape[1] - B.shape[1])))    # zero padding to equal width
    _, nuc = sla.orthogonal_procrustes(A, B)
    assert abs(float(S.procrustes(X, Y)) - np.arccos(nuc)) < TOL


def test_procrustes_partial_whitening(rng):
    X, Y = _pair(rng)

    def phi(X, alpha):
        Xc = centre(X)
        lam, V = np.linalg.eigh(Xc.T @ Xc)
        Z = Xc @ (V * (alpha + (1 - alpha) / np.sqrt(lam))) @ V.T
        return Z / np.linalg.norm(Z)
    for alpha in (0.0, 0.5):
        A, B = phi(X, alpha), phi(Y, alpha)
        ref = np.arccos(np.linalg.svd(A.T @ B, compute_uv=False).sum())
        assert abs(float(S.procrustes(X, Y, alpha=alpha)) - ref) < TOL


def test_procrustes_invariances(rng):
    X = rng.normal(size=(40, 8))
    Q = np.linalg.qr(rng.normal(size=(8, 8)))[0]
    assert float(S.procrustes(X, 3.0 * X @ Q + 5.0)) < 1e-5      # rotation, scale, shift
    assert float(S.procrustes(X, rng.normal(size=(40, 8)))) > 0.5
    # a metric: symmetric, triangle inequality
    Y, Z = rng.normal(size=(40, 8)), rng.normal(size=(40, 6))
    dxy, dyz, dxz = (float(S.procrustes(a, b)) for a, b in ((X, Y), (Y, Z), (X, Z)))
    assert abs(dxy - float(S.procrustes(Y, X))) < TOL
    assert dxz <= dxy + dyz + 1e-6


# ------------------------------------------------------------------------------- CCA
def _rho_ref(X, Y):
    return sla.svdvals(sla.orth(centre(X)).T @ sla.orth(centre(Y)))


def test_cca_family_matches_references(rng):
    X, Y = _pair(rng)
    rho = _rho_ref(X, Y)
    assert abs(float(S.cca(X, Y)) - rho.sum() / min(X.shape[1], Y.shape[1])) < TOL
    np.testing.assert_allclose(S.canonical_correlations(X, Y), rho, atol=TOL)
    # ridge: singular values of (Sxx + eI)^-1/2 Sxy (Syy + eI)^-1/2
    e = 0.3
    Xc, Yc = centre(X), centre(Y)
    n = len(X)
    Sxx, Syy, Sxy = Xc.T @ Xc / (n - 1), Yc.T @ Yc / (n - 1), Xc.T @ Yc / (n - 1)
    ih = lambda C: np.real(sla.inv(sla.sqrtm(C + e * np.eye(len(C)))))   # noqa: E731
    rr = sla.svdvals(ih(Sxx) @ Sxy @ ih(Syy))
    assert abs(float(S.cca(X, Y, ridge=e)) - rr.sum() / Y.shape[1]) < TOL
    # SVCCA: keep the top directions explaining 99% of the variance, then CCA
    Xs = rng.normal(size=(60, 12)) * np.linspace(3, 0.05, 12)
    Ys = Xs @ rng.normal(size=(12, 10)) + 0.5 * rng.normal(size=(60, 10))

    def reduce(A, keep):
        U, s, _ = np.linalg.svd(centre(A), full_matrices=False)
        k = int(np.searchsorted(np.cumsum(s ** 2) / np.sum(s ** 2), keep) + 1)
        return U[:, :k] * s[:k]
    for keep in (0.99, 0.9):
        a, b = reduce(Xs, keep), reduce(Ys, keep)
        ref = _rho_ref(a, b).sum() / min(a.shape[1], b.shape[1])
        assert abs(float(S.svcca(Xs, Ys, keep=keep)) - ref) < TOL
    # PWCCA: canonical vectors from the generalised eigenproblem, weights from X
    w, A = sla.eigh(Sxy @ np.linalg.solve(Syy, Sxy.T), Sxx)
    order = np.argsort(w)[::-1][:min(X.shape[1], Y.shape[1])]
    H = Xc @ A[:, order]
    H /= np.linalg.norm(H, axis=0)
    r = np.sqrt(np.clip(w[order], 0, 1))
    wts = np.abs(H.T @ Xc).sum(1)
    assert abs(float(S.pwcca(X, Y)) - (wts * r).sum() / wts.sum()) < TOL


def test_cca_invariant_to_invertible_maps(rng):
    X, Y = _pair(rng)
    A = rng.normal(size=(8, 8)) + 3 * np.eye(8)
    B = rng.normal(size=(6, 6)) + 3 * np.eye(6)
    assert abs(float(S.cca(X @ A + 1.0, Y @ B - 2.0)) - float(S.cca(X, Y))) < 1e-4
    # SVCCA's variance threshold and PWCCA's neuron weights are not affine invariant;
    # both are invariant to rotations, scale and shifts of a side
    Q = np.linalg.qr(rng.normal(size=(8, 8)))[0]
    for f in (S.svcca, S.cca):
        assert abs(float(f(2.0 * X @ Q + 1.0, Y)) - float(f(X, Y))) < 1e-4
    assert abs(float(S.pwcca(X, 2.0 * Y @ np.linalg.qr(rng.normal(size=(6, 6)))[0]))
               - float(S.pwcca(X, Y))) < 1e-4


def test_cca_warns_when_degenerate(rng):
    X, Y = rng.normal(size=(20, 30)), rng.normal(size=(20, 25))
    with pytest.warns(RuntimeWarning, match="perfect"):
        v = float(S.cca(X, Y))
    assert v > 0.6          # independent noise, yet "correlated": why it warns


# ------------------------------------------------------------------------------- kNN
def _knn_ref(X, k):
    d = ((X[:, None] - X[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    return np.argsort(d, axis=1, kind="stable")[:, :k]


def test_mutual_knn_matches_definition(rng):
    X, Y = _pair(rng)
    for k in (1, 5, 10):
        a, b = _knn_ref(X, k), _knn_ref(Y, k)
        ref = np.mean([len(set(a[i]) & set(b[i])) / k for i in range(len(X))])
        assert abs(float(S.mutual_knn(X, Y, k=k)) - ref) < TOL
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    Yn = Y / np.linalg.norm(Y, axis=1, keepdims=True)
    a, b = _knn_ref(Xn, 5), _knn_ref(Yn, 5)
    ref = np.mean([len(set(a[i]) & set(b[i])) / 5 for i in range(len(X))])
    assert abs(float(S.mutual_knn(X, Y, k=5, normalize=True)) - ref) < TOL
    assert float(S.mutual_knn(X, 2 * X + 1, k=5)) == 1.0


def test_cknna_matches_definition(rng):
    X, Y = _pair(rng)

    def ref(X, Y, k):
        X = X / np.linalg.norm(X, axis=1, keepdims=True)
        Y = Y / np.linalg.norm(Y, axis=1, keepdims=True)
        K, L = X @ X.T, Y @ Y.T

        def mask(G):
            G = G.copy()
            np.fill_diagonal(G, -np.inf)
            m = np.zeros_like(G, bool)
            np.put_along_axis(m, np.argsort(-G, 1, kind="stable")[:, :k], True, 1)
            return m
        mk, ml = mask(K), mask(L)
        m = mk & ml
        return hsic_u_ref(m * K, m * L) / np.sqrt(hsic_u_ref(mk * K, mk * K)
                                                  * hsic_u_ref(ml * L, ml * L))
    for k in (5, 10):
        assert abs(float(S.cknna(X, Y, k=k)) - ref(X, Y, k)) < TOL
    # all neighbours: debiased linear CKA (HSIC_u ignores the diagonal and the mean)
    assert abs(float(S.cknna(X, Y, k=39, normalize=False))
               - float(S.cka(X, Y, debiased=True))) < TOL


# ------------------------------------------------------------- compile once, bad input
def test_each_measure_compiles_once_per_shape(rng):
    X, Y = _pair(rng)
    calls = [lambda a, b: S.cka(a, b), lambda a, b: S.cka(a, b, debiased=True),
             lambda a, b: S.cka(a, b, kernel="rbf"), lambda a, b: S.rsa(a, b),
             lambda a, b: S.procrustes(a, b), lambda a, b: S.cca(a, b),
             lambda a, b: S.svcca(a, b), lambda a, b: S.pwcca(a, b),
             lambda a, b: S.mutual_knn(a, b, k=3), lambda a, b: S.cknna(a, b, k=3),
             lambda a, b: S.minibatch_cka(a, b, batch_size=10),
             lambda a, b: S.permutation_test("cka_debiased", a, b, n=20, chunk=8),
             lambda a, b: S.bootstrap("procrustes", a, b, n=20, chunk=8),
             lambda a, b: S.compare_layers({"x": a, "y": a}, {"z": b}, ["cka_debiased"],
                                           n_permutations=5, n_bootstrap=5,
                                           progress=False)]
    for f in calls:
        f(X, Y)
        X2, Y2 = X + 1.0, Y * 2.0           # new values, same shapes
        with count_compiles() as c:
            f(X2, Y2)
        assert c["n"] == 0, f"recompiled {c['n']} time(s)"


def test_bad_inputs_are_named(rng):
    X = rng.normal(size=(20, 4))
    with pytest.raises(InputError, match="X has 20 inputs but Y has 19"):
        S.cka(X, X[:19])
    with pytest.raises(InputError, match="NaN"):
        S.procrustes(X, np.where(X > 1, np.nan, X))
    with pytest.raises(KeyError, match="Did you mean 'spearman'"):
        S.rsa(X, X, compare="spearmann")
    with pytest.raises(KeyError, match="Did you mean 'cka_debiased'"):
        S.compare_layers({"a": X}, measures=["cka_debiasd"], progress=False)
    with pytest.raises(InputError, match="k=20 needs at least"):
        S.mutual_knn(X, X, k=20)
    with pytest.raises(InputError, match="alpha must be in"):
        S.procrustes(X, X, alpha=2.0)
    with pytest.raises(InputError, match="at least 4 inputs"):
        S.cka(X[:3], X[:3], debiased=True)
