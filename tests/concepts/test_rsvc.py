"""RSVC-style shared / unique concepts on a planted pair of "models"."""
import numpy as np
import pytest

from repsim_jax._checks import InputError
from repsim_jax._results import load_result
from repsim_jax.concepts import RSVCComparison, rsvc_compare, rsvc_similarity


def test_rsvc_finds_shared_and_unique_concepts(tmp_path):
    rng = np.random.default_rng(0)
    N, h, k = 80, 6, 4
    S = rng.gamma(0.4, size=(N, h, h, k)).astype(np.float32)       # planted concept maps
    A = np.einsum("nhwk,kc->nhwc", S, rng.gamma(1.0, size=(k, 20))).astype(np.float32)
    # model B encodes concepts 0 and 1 (linearly mixed) plus unrelated channels
    B = np.concatenate([np.einsum("nhwk,kc->nhwc", S[..., :2], rng.gamma(1.0, size=(2, 6))),
                        rng.gamma(0.4, size=(N, h, h, 10))], -1).astype(np.float32)
    res = rsvc_similarity(A, B, k, max_iter=400, tol=1e-8)
    # which fitted concept is which planted one
    maps = np.asarray(res.concepts.maps).reshape(-1, k)
    corr = np.corrcoef(maps.T, S.reshape(-1, k).T)[:k, k:]
    planted_of = corr.argmax(1)
    assert sorted(planted_of) == [0, 1, 2, 3] and corr.max(1).min() > 0.95
    assert np.all(res.self_similarity > 0.95)                       # decodable from A itself
    in_b = planted_of < 2
    np.testing.assert_array_equal(res.shared, in_b)                 # measured ~1.0 vs ~0.0
    assert res.similarity[in_b].min() > 0.9 and np.abs(res.similarity[~in_b]).max() < 0.3
    np.testing.assert_array_equal(res.unique, ~in_b)
    # the other direction: B's concepts come from S[..., :2] or noise; all of those built
    # from S are found in A
    both = rsvc_compare(A, B, 4, max_iter=300)
    assert isinstance(both, RSVCComparison)
    a_in_b, b_in_a = both                          # the old 2-tuple still unpacks
    assert a_in_b is both.a_in_b and b_in_a is both.b_in_a
    assert a_in_b.shared.sum() == 2 and b_in_a.similarity.shape == (4,)
    np.testing.assert_array_equal(both.unique_to_a, ~a_in_b.shared)
    np.testing.assert_array_equal(both.unique_to_b, ~b_in_a.shared)
    # the same as the two directions run separately
    np.testing.assert_allclose(both.b_in_a.similarity,
                               rsvc_similarity(B, A, 4, max_iter=300).similarity, atol=1e-6)
    name, d = load_result(both.save(tmp_path / "rsvc"))
    assert name == "RSVCComparison"
    np.testing.assert_allclose(d["a_in_b"]["similarity"], a_in_b.similarity)
    np.testing.assert_array_equal(d["b_in_a"]["shared"], b_in_a.shared)
    np.testing.assert_allclose(d["a_in_b"]["concepts"]["components"],
                               np.asarray(a_in_b.concepts.components))


def test_rsvc_bad_input():
    A = np.random.default_rng(0).random((10, 3, 3, 5)).astype(np.float32)
    with pytest.raises(InputError, match="inputs"):
        rsvc_similarity(A, A[:8], 2)
    with pytest.raises(InputError, match="non-negative"):
        rsvc_similarity(A - 1, A, 2)
    with pytest.raises(InputError, match="larger than the number of channels"):
        rsvc_similarity(A, A, 6)
