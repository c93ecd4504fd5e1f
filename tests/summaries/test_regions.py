"""Regions: proposals, 75% rule, pruning, HOG vs skimage, similarity invariants."""
import numpy as np
import pytest

from repsim_jax.summaries import regions


def test_inside_fraction_matches_brute_force():
    rng = np.random.default_rng(0)
    binary = rng.random((3, 20, 17)) > 0.6
    boxes = regions.grid_boxes(20, 17)
    frac = regions.inside_fraction(binary, boxes)
    ref = np.array([[b[y0:y1, x0:x1].mean() for y0, x0, y1, x1 in boxes] for b in binary])
    np.testing.assert_allclose(frac, ref, atol=1e-12)


def test_candidate_regions_components_and_75_rule():
    binary = np.zeros((2, 32, 32), bool)
    binary[0, 2:10, 2:10] = True            # a square blob
    binary[0, 20:30, 15:18] = True          # a thin bar
    # image 1: empty mask
    comps = regions.component_boxes(binary)
    assert sorted(map(tuple, comps[0])) == [(2, 2, 10, 10), (20, 15, 30, 18)]
    assert comps[1].shape == (0, 4)
    cand = regions.candidate_regions(binary)
    assert set(cand.image_ids.tolist()) == {0}
    frac = regions.inside_fraction(binary[:1], cand.boxes)[0]
    prop = cand.source == 1
    assert prop.any() and (frac[prop] > 0.75).all()
    assert (cand.source == 0).sum() == 2


def test_prune_redundant_keeps_best_of_each_group():
    boxes = np.array([[0, 0, 10, 10],      # group A
                      [1, 1, 11, 11],      # group A (best score)
                      [0, 1, 10, 11],      # group A
                      [0, 0, 20, 20],      # contains A but area ratio >= 2 -> kept
                      [25, 25, 30, 30]])   # far away -> kept
    scores = np.array([0.1, 0.9, 0.3, 0.2, 0.05])
    assert regions.prune_redundant(boxes, scores).tolist() == [1, 3, 4]
    ov, ratio = regions.box_overlap(boxes)
    assert ov[0, 3] == 1.0 and ratio[0, 3] == 4.0


def test_hog_matches_skimage():
    from skimage.feature import hog as skhog
    rng = np.random.default_rng(0)
    grey = rng.uniform(0, 1, (2, 24, 24))
    grey[1] = np.linspace(0, 1, 24)[None, :] * np.linspace(1, 0.2, 24)[:, None]
    ours = np.asarray(regions.hog(grey))
    for g, o in zip(grey, ours):
        ref = skhog(g, orientations=9, pixels_per_cell=(6, 6), cells_per_block=(2, 2),
                    block_norm="L2-Hys")
        np.testing.assert_allclose(o, ref, atol=1e-5)


def test_similarity_prefers_consistent_geometry_and_appearance():
    # image 0: two regions (A above B); image 1: same layout shifted; image 2: swapped layout
    boxes = np.array([[2, 2, 10, 10], [20, 2, 28, 10],
                      [4, 12, 12, 20], [22, 12, 30, 20],
                      [20, 4, 28, 12], [2, 4, 10, 12]])
    reg = regions.Regions(np.array([0, 0, 1, 1, 2, 2]), boxes, np.zeros(6, np.int8))
    desc = np.array([[1.0, 0], [0, 1.0], [1, 0], [0, 1], [1, 0], [0, 1]])
    s = regions.region_similarity(desc, reg, (32, 32))
    np.testing.assert_allclose(s, s.T, atol=1e-6)
    assert s[0, 2] > 0.9 and s[1, 3] > 0.9                  # same part, consistent offset
    assert s[0, 3] == pytest.approx(0.0, abs=1e-6)          # different appearance
    # same appearance at a moved place relative to the neighbour: geometry penalises it
    # less than appearance does, but consistent matches still win
    assert s[0, 2] > s[0, 4]
    # pooled activations: a constant feature map gives equal descriptors
    fm = np.ones((3, 4, 4, 5))
    pooled = np.asarray(regions.pooled_descriptors(fm, reg, (32, 32)))
    np.testing.assert_allclose(pooled, 1.0)
