"""The pairwise concept-similarity kernel vs direct numpy definitions, layer scores, plots."""
import itertools

import jax
import numpy as np
import pytest

from repsim_jax._checks import InputError
from repsim_jax._results import load_result
from repsim_jax.concepts import (LayerMatches, best_layer_matches, best_match_score, hungarian_score,
                                 layer_scores, pairwise_similarity, plot_layer_similarity,
                                 plot_relative_depth, quantile_thresholds, resize_maps,
                                 shared_concept_similarity, stack_layers)


def _reference(x, y, metric, ta=0.5, tb=0.5):
    """Direct per-pair definitions over all N*H*W values (float64)."""
    x = x.reshape(-1, x.shape[-1]).astype(np.float64)
    y = y.reshape(-1, y.shape[-1]).astype(np.float64)
    ta, tb = np.broadcast_to(ta, x.shape[1:]), np.broadcast_to(tb, y.shape[1:])
    out = np.zeros((x.shape[1], y.shape[1]))
    for i, j in itertools.product(range(x.shape[1]), range(y.shape[1])):
        u, v = x[:, i], y[:, j]
        if metric == "set_iou":
            bu, bv = u > ta[i], v > tb[j]
            out[i, j] = (bu & bv).sum() / (bu | bv).sum()
        elif metric == "soft_iou":
            out[i, j] = np.minimum(u, v).sum() / np.maximum(u, v).sum()
        elif metric == "cosine":
            out[i, j] = u @ v / np.linalg.norm(u) / np.linalg.norm(v)
        else:
            out[i, j] = np.corrcoef(u, v)[0, 1]
    return out


@pytest.fixture(scope="module")
def maps():
    rng = np.random.default_rng(0)
    a = rng.random((3, 9, 5, 5, 4)).astype(np.float32)
    b = rng.random((2, 9, 5, 5, 6)).astype(np.float32)
    b[1, ..., 0] = a[0, ..., 1]          # a shared concept: similarity 1 in every metric
    return a, b


@pytest.mark.parametrize("metric", ["set_iou", "soft_iou", "cosine", "pearson"])
def test_pairwise_matches_numpy_definitions(maps, metric):
    a, b = maps
    ref = np.array([[_reference(a[i], b[j], metric) for j in range(2)] for i in range(3)])
    out = np.asarray(pairwise_similarity(a, b, metric))
    assert out.shape == (3, 2, 4, 6)
    np.testing.assert_allclose(out, ref, atol=2e-6)
    assert np.isclose(out[0, 1, 1, 0], 1.0, atol=1e-6)
    # chunking over (input, pixel) values changes nothing (17 does not divide 225)
    np.testing.assert_allclose(pairwise_similarity(a, b, metric, chunk_size=17), out, atol=2e-6)
    # no layer axis -> (k1, k2)
    np.testing.assert_allclose(pairwise_similarity(a[2], b[0], metric), ref[2, 0], atol=2e-6)


def test_set_iou_per_concept_thresholds(maps):
    a, b = maps
    ta, tb = quantile_thresholds(a, 0.8), quantile_thresholds(b, 0.7)
    assert ta.shape == (3, 4)
    np.testing.assert_allclose(ta[1], np.quantile(a[1].reshape(-1, 4), 0.8, axis=0), rtol=1e-5)
    out = np.asarray(pairwise_similarity(a, b, "set_iou", (ta, tb)))
    ref = _reference(a[1], b[0], "set_iou", np.asarray(ta[1]), np.asarray(tb[0]))
    np.testing.assert_allclose(out[1, 0], ref, atol=1e-6)


def test_sharded_over_layers_equals_unsharded(maps):
    a, b = maps
    mesh = jax.make_mesh((len(jax.devices()),), ("layers",),
                         axis_types=(jax.sharding.AxisType.Auto,))
    for metric in ("soft_iou", "pearson"):
        np.testing.assert_allclose(pairwise_similarity(a, b, metric, mesh=mesh),
                                   pairwise_similarity(a, b, metric), atol=1e-6)


def test_bad_input(maps):
    a, b = maps
    with pytest.raises(InputError, match="inputs"):
        pairwise_similarity(a, b[:, :8])
    with pytest.raises(InputError, match="resolution"):
        pairwise_similarity(a, b[:, :, :4])
    with pytest.raises(KeyError, match="set_iou"):
        pairwise_similarity(a, b, "jaccard")
    with pytest.raises(InputError, match="non-negative"):
        pairwise_similarity(a - 0.5, b, "soft_iou")
    with pytest.raises(InputError, match="NaN"):
        pairwise_similarity(np.where(a > 0.9, np.nan, a), b)


def test_resize_and_stack():
    import torch
    rng = np.random.default_rng(1)
    m = rng.random((2, 4, 5, 3)).astype(np.float32)
    ours = np.asarray(resize_maps(m, (8, 10)))
    ref = torch.nn.functional.interpolate(torch.from_numpy(m).permute(0, 3, 1, 2), size=(8, 10),
                                          mode="bilinear", align_corners=False)
    np.testing.assert_allclose(ours, ref.permute(0, 2, 3, 1).numpy(), atol=1e-5)
    st = stack_layers([m, rng.random((2, 8, 10, 3))])
    assert st.shape == (2, 2, 8, 10, 3)
    with pytest.raises(InputError, match="same N and k"):
        stack_layers([m, m[..., :2]])


def test_layer_scores():
    rng = np.random.default_rng(2)
    S = rng.random((3, 2, 4, 4))
    bm = np.asarray(best_match_score(S))
    np.testing.assert_allclose(bm, 0.5 * (S.max(-1).mean(-1) + S.max(-2).mean(-1)), rtol=1e-6)
    hu = hungarian_score(S)
    brute = np.array([[max(np.mean([S[i, j, r, p[r]] for r in range(4)])
                           for p in itertools.permutations(range(4)))
                       for j in range(2)] for i in range(3)])
    np.testing.assert_allclose(hu, brute, rtol=1e-12)
    assert np.all(hu <= bm + 1e-12)          # one-to-one can never beat best match
    np.testing.assert_allclose(layer_scores(S, "diagonal"),
                               np.einsum("abii->ab", S) / 4, rtol=1e-6)
    with pytest.raises(KeyError, match="best_match"):
        layer_scores(S, "max")


def test_shared_concepts_and_depth_view(tmp_path):
    rng = np.random.default_rng(3)
    a = rng.random((2, 6, 4, 4, 3)).astype(np.float32)
    b = np.concatenate([a[:, ..., ::-1], rng.random((2, 6, 4, 4, 1))], -1).astype(np.float32)
    per, shared = shared_concept_similarity(a, ["x", "y", "z"], b, ["z", "y", "x", "w"],
                                            metric="cosine")
    assert shared == ["x", "y", "z"] and per.shape == (2, 2, 3)
    np.testing.assert_allclose(np.asarray(per)[0, 0], 1.0, atol=1e-6)
    np.testing.assert_allclose(np.asarray(per)[1, 1], 1.0, atol=1e-6)
    with pytest.raises(InputError, match="no concept name"):
        shared_concept_similarity(a, ["x", "y", "z"], b, ["p", "q", "r", "s"])
    # a planted monotone correspondence: A layer i best matches B layer 2i
    M = np.full((4, 8), 0.1)
    M[np.arange(4), 2 * np.arange(4) + 1] = 0.9
    bm = best_layer_matches(M, layers_a=list("abcd"), layers_b=[f"b{i}" for i in range(8)])
    assert isinstance(bm, LayerMatches)
    np.testing.assert_array_equal(bm.index, [1, 3, 5, 7])
    np.testing.assert_allclose(bm.relative_depth_b, [0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(bm.relative_depth_a, [0.25, 0.5, 0.75, 1.0])
    assert bm.spearman == pytest.approx(1.0)
    assert bm.matches == {"a": "b1", "b": "b3", "c": "b5", "d": "b7"}
    idx, rd, rho = best_layer_matches(M)          # the old 3-tuple still unpacks
    np.testing.assert_array_equal(idx, bm.index)
    np.testing.assert_array_equal(rd, bm.relative_depth_b)
    assert rho == bm.spearman
    with pytest.raises(InputError, match="no layer names"):
        best_layer_matches(M).matches
    with pytest.raises(InputError, match="layers_b: 3 names for 8 layers"):
        best_layer_matches(M, layers_b=list("xyz"))
    name, d = load_result(bm.save(tmp_path / "bm"))
    assert name == "LayerMatches" and d["layers_b"][7] == "b7"
    np.testing.assert_array_equal(d["index"], bm.index)
    assert d["spearman"] == pytest.approx(1.0)
    flat = np.full((3, 2), 0.5)                   # constant matches: spearman nan, saved
    name, d = load_result(best_layer_matches(flat).save(tmp_path / "nan"))
    assert np.isnan(float(d["spearman"]))
    fig = plot_layer_similarity(M, list("abcd"), [f"b{i}" for i in range(8)],
                                path=tmp_path / "heat.png")
    assert fig.axes[0].images[0].get_array().shape == (4, 8)
    plot_relative_depth(M, path=tmp_path / "depth.png")
    assert (tmp_path / "heat.png").stat().st_size > 1000
    assert (tmp_path / "depth.png").stat().st_size > 1000
