"""JAX NMF vs scikit-learn, NNLS transform vs scipy, ICE on planted factorisations."""
import jax
import numpy as np
import pytest
from scipy.optimize import nnls
from sklearn.decomposition import NMF
from sklearn.decomposition._nmf import _initialize_nmf

from repsim_jax._checks import InputError
from repsim_jax._results import load_result
from repsim_jax.concepts import (NMFResult, fidelity, ice_fit, ice_reconstruct, ice_transform, nmf,
                                 nmf_transform, nndsvd, reconstruction_error)


def _data(M=3000, C=32, r=12, seed=0):
    rng = np.random.default_rng(seed)
    X = np.maximum(rng.normal(size=(M, r)) @ rng.normal(size=(r, C)), 0)
    return (X + 0.01 * rng.random((M, C))).astype(np.float32)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("max_iter, init", [(200, "nndsvda"), (10, "nndsvd")])
def test_nmf_matches_sklearn_reconstruction_error(max_iter, init):
    X = _data()
    sk = NMF(8, init=init, solver="cd", max_iter=max_iter, tol=1e-4)
    W_sk = sk.fit_transform(X)
    res = nmf(X, 8, max_iter=max_iter, init=init, tol=1e-4)
    W, H, n_iter = res.W, res.H, res.n_iter
    assert W.shape == W_sk.shape and H.shape == sk.components_.shape
    assert float(W.min()) >= 0 and float(H.min()) >= 0
    err = reconstruction_error(X, W, H)
    assert abs(err - sk.reconstruction_err_) <= 0.01 * sk.reconstruction_err_
    # same algorithm and stopping rule: the iteration counts agree to a float32 wobble
    # (the rule compares a slowly decaying violation with tol, so a last-digit difference
    # moves the stop by a few steps: 71 vs 67 seen on a CI run; another rule differs ~2x)
    assert abs(n_iter - sk.n_iter_) <= max(3, 0.1 * sk.n_iter_)


def test_nmf_result_type_and_old_tuples(tmp_path):
    X = _data(M=300, C=12)
    res = nmf(X, 4, max_iter=50)
    assert isinstance(res, NMFResult) and res.max_iter == 50 and res.solver == "cd"
    assert res.converged == (res.n_iter < 50) and 1 <= res.n_iter <= 50
    W, H = res                                        # the old 2-tuple still unpacks
    assert W is res.W and H is res.H and W.shape == (300, 4) and H.shape == (4, 12)
    with pytest.warns(DeprecationWarning, match="return_n_iter"):
        old = nmf(X, 4, max_iter=50, return_n_iter=True)
    W3, H3, n3 = old                                  # and the old 3-tuple
    np.testing.assert_array_equal(np.asarray(W3), np.asarray(W))
    np.testing.assert_array_equal(np.asarray(H3), np.asarray(H))
    assert n3 == res.n_iter
    # a pytree (W, H leaves; n_iter static) that saves and loads back
    leaves = jax.tree_util.tree_leaves(res)
    assert len(leaves) == 2 and leaves[0] is res.W
    name, d = load_result(res.save(tmp_path / "nmf"))
    assert name == "NMFResult" and d["n_iter"] == res.n_iter and d["solver"] == "cd"
    np.testing.assert_array_equal(d["W"], np.asarray(W))
    np.testing.assert_array_equal(d["H"], np.asarray(H))


def test_nndsvd_init_matches_sklearn():
    X = _data(M=500, C=20)
    W0, H0 = _initialize_nmf(X.astype(np.float64), 6, init="nndsvd", random_state=0)
    W, H = nndsvd(X, 6, fill="nndsvd")
    # randomized vs exact SVD: compare the products (invariant to component order/sign)
    np.testing.assert_allclose(np.asarray(W @ H), W0 @ H0, rtol=0, atol=2e-3 * np.abs(X).max())


def test_multiplicative_updates_reach_cd_error():
    X = _data(M=1000, C=24)
    W, H = nmf(X, 6, solver="mu", max_iter=400, tol=1e-6)
    Wc, Hc = nmf(X, 6)
    assert reconstruction_error(X, W, H) <= 1.03 * reconstruction_error(X, Wc, Hc)


def test_transform_is_nnls():
    X = _data(M=400, C=16)
    _, H = nmf(X, 5)
    Xn = _data(M=20, C=16, seed=1)
    Wn = np.asarray(nmf_transform(Xn, H, max_iter=2000, tol=1e-8))
    Hn = np.asarray(H, np.float64)
    ref = np.stack([nnls(Hn.T, x.astype(np.float64))[0] for x in Xn])
    res_ours = np.linalg.norm(Xn - Wn @ Hn, axis=1)
    res_ref = np.linalg.norm(Xn - ref @ Hn, axis=1)
    np.testing.assert_allclose(res_ours, res_ref, rtol=1e-3, atol=1e-4)


def test_nmf_bad_input():
    X = _data(M=50, C=8)
    with pytest.raises(InputError, match="non-negative"):
        nmf(X - 1.0, 3)
    with pytest.raises(InputError, match="larger than the number of channels"):
        nmf(X, 9)
    with pytest.raises(InputError, match="NaN"):
        nmf(np.where(X > 1, np.nan, X), 3)
    with pytest.raises(InputError, match="initialisation"):
        nmf(X, 3, init="random")
    with pytest.raises(InputError, match="positive integer"):
        nmf(X, 0)


def test_ice_recovers_planted_factorisation_and_fidelity():
    rng = np.random.default_rng(0)
    N, h, C, k = 60, 6, 24, 4
    S = rng.gamma(0.5, size=(N, h, h, k)).astype(np.float32)
    V = rng.gamma(1.0, size=(k, C)).astype(np.float32)
    A = np.einsum("nhwk,kc->nhwc", S, V)
    ice = ice_fit(A, k, max_iter=500, tol=1e-8)
    assert ice.components.shape == (k, C) and ice.maps.shape == (N, h, h, k)
    assert ice.relative_error < 1e-2
    # NNLS transform of the fitting inputs reproduces the fitted maps' reconstruction
    maps = ice_transform(ice, A, max_iter=500, tol=1e-10)
    rec = np.asarray(ice_reconstruct(ice, maps))
    assert np.linalg.norm(rec - A) / np.linalg.norm(A) < 1.5e-2
    # fidelity of a linear head on the reconstruction: nearly lossless
    Wh = rng.normal(size=(C, 5)).astype(np.float32)
    mu = A.mean((0, 1, 2))

    def head(a):  # a linear "rest of the network"
        return (a.mean((1, 2)) - mu) @ Wh

    labels = np.argmax(head(A), -1)
    assert len(np.unique(labels)) >= 3
    fid = fidelity(head, A, rec, labels)
    assert fid["accuracy_original"] == 1.0 and fid["agreement"] >= 0.95
    # a destroyed reconstruction is detected
    bad = fidelity(head, A, rec[::-1].copy(), labels)
    assert bad["agreement"] < fid["agreement"]
    assert bad["relative_logit_error"].mean() > 10 * fid["relative_logit_error"].mean()
    with pytest.raises(InputError, match="channels"):
        ice_transform(ice, A[..., :-1])


def test_fidelity_through_a_model_layer_and_its_errors():
    from flax import nnx

    from repsim_jax.models import activations, build
    m = build("small_vgg", num_classes=4, rngs=nnx.Rngs(0), input_shape=(16, 16, 3))
    x = np.random.default_rng(1).uniform(size=(6, 16, 16, 3)).astype(np.float32)
    A = activations(m, x, ["features.6"])["features.6"]                    # (6, 4, 4, 32)
    same = fidelity(m, A, A, layer="features.6", images=x)
    assert same["agreement"] == 1.0 and np.all(same["relative_logit_error"] == 0)
    half = fidelity(m, A, 0.5 * A, layer="features.6", images=x)
    assert half["relative_logit_error"].max() > 1e-3
    with pytest.raises(InputError, match="needs the images"):
        fidelity(m, A, A, layer="features.6")
    with pytest.raises(InputError, match="5 inputs but acts has 6"):
        fidelity(m, A, A, layer="features.6", images=x[:5])
    with pytest.raises(KeyError, match="unknown layer to replace 'features.66'"):
        fidelity(m, A, A, layer="features.66", images=x)
    with pytest.raises(InputError, match="head must be callable"):
        fidelity(None, A, A)
