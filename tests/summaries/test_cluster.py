"""Affinity propagation vs scikit-learn, SSIM vs scikit-image, SSIM cleaning rule."""
import numpy as np
import pytest

from repsim_jax._checks import InputError
from repsim_jax.summaries import cluster


def _blobs(seed, k=5, per=12):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 5, (k, 2))
    x = np.concatenate([c + rng.normal(0, 1, (per, 2)) for c in centres])
    return -((x[:, None] - x[None]) ** 2).sum(-1)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_affinity_propagation_matches_sklearn(seed):
    from sklearn.cluster import AffinityPropagation
    s, pref = cluster.shifted_similarity(_blobs(seed))
    assert s.max() == 0.0
    ref = AffinityPropagation(affinity="precomputed", damping=0.9, max_iter=1000,
                              convergence_iter=100, preference=pref, random_state=0).fit(s)
    ours = cluster.affinity_propagation(s, pref, damping=0.9, max_iter=1000,
                                        convergence_iter=100)
    assert ours.converged
    np.testing.assert_array_equal(ours.exemplars, ref.cluster_centers_indices_)
    np.testing.assert_array_equal(ours.labels, ref.labels_)
    assert ours.n_iter == ref.n_iter_
    assert np.array_equal(ours.labels[ours.exemplars], np.arange(len(ours.exemplars)))


def test_affinity_propagation_preference_controls_cluster_count():
    s, pref = cluster.shifted_similarity(_blobs(3))
    low = cluster.affinity_propagation(s, 10 * pref)
    high = cluster.affinity_propagation(s, 0.1 * pref)
    assert len(low.exemplars) < len(high.exemplars)


def test_affinity_propagation_degenerate_inputs():
    one = cluster.affinity_propagation(np.zeros((1, 1)))
    assert one.labels.tolist() == [0] and one.exemplars.tolist() == [0]
    with pytest.warns(UserWarning, match="all similarities are equal"):
        eq = cluster.affinity_propagation(np.full((4, 4), -1.0), preference=-2.0)
    assert eq.exemplars.tolist() == [0] and eq.labels.tolist() == [0, 0, 0, 0]
    with pytest.raises(InputError, match="square"):
        cluster.affinity_propagation(np.zeros((3, 4)))
    with pytest.raises(InputError, match="NaN"):
        cluster.affinity_propagation(np.full((3, 3), np.nan))


def test_ssim_matches_skimage():
    from skimage.metrics import structural_similarity
    rng = np.random.default_rng(0)
    a = rng.uniform(0, 1, (4, 20, 27))
    b = np.clip(a + rng.normal(0, 0.2, a.shape), 0, 1)
    b[3] = 0.5 * a[3] + 0.3                                      # contrast/brightness change
    ours = np.asarray(cluster.ssim(a, b))
    ref = [structural_similarity(a[i], b[i], data_range=1.0) for i in range(4)]
    np.testing.assert_allclose(ours, ref, atol=2e-5)
    pw = np.asarray(cluster.pairwise_ssim(a))
    assert pw.shape == (4, 4)
    np.testing.assert_allclose(np.diag(pw), 1.0, atol=1e-5)
    np.testing.assert_allclose(pw[0, 2], structural_similarity(a[0], a[2], data_range=1.0),
                               atol=2e-5)
    np.testing.assert_allclose(pw, pw.T, atol=1e-6)
    with pytest.raises(InputError, match="window"):
        cluster.ssim(a[:, :5, :5], b[:, :5, :5])


def test_cluster_members_one_per_image_exemplar_first():
    labels = np.array([0, 0, 0, 0, 1, 1])
    image_ids = np.array([0, 1, 1, 2, 0, 2])
    s = np.array([[1.0, .2, .9, .5, 0, 0], [.2, 1, 0, .1, 0, 0], [.9, 0, 1, .3, 0, 0],
                  [.5, .1, .3, 1, 0, 0], [0, 0, 0, 0, 1, .4], [0, 0, 0, 0, .4, 1]])
    mem = cluster.cluster_members(labels, np.array([0, 4]), s, image_ids, max_members=10)
    assert mem[0].tolist() == [0, 2, 3]          # image 1 keeps region 2 (0.9 > 0.2)
    assert mem[1].tolist() == [4, 5]
    assert cluster.cluster_members(labels, np.array([0, 4]), s, image_ids, 2)[0].tolist() == [0, 2]


def test_coherent_clusters_rule():
    # three clusters with medians 0.8, 0.6, 0.75 and a singleton: reference median = 0.75
    def block(v, m):
        b = np.full((4, 4), np.nan)
        b[:m, :m] = v
        np.fill_diagonal(b, 1.0)
        return b
    pw = np.stack([block(0.8, 3), block(0.6, 4), block(0.75, 2), block(0.0, 1)])
    keep, med = cluster.coherent_clusters(pw, [3, 4, 2, 1], threshold=0.9)
    np.testing.assert_allclose(med[:3], [0.8, 0.6, 0.75])
    assert np.isnan(med[3])
    assert keep.tolist() == [True, False, True, False]        # 0.6 < 0.9 * 0.75
