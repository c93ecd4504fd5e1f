"""Layer x layer comparison on synthetic "models" whose layers carry known concept families."""
import jax
import numpy as np
import pytest

from repsim_jax._results import load_result
from repsim_jax.concepts import LayerComparison, ice_layer_similarity


def test_ice_layer_matrix_follows_planted_depth(tmp_path):
    rng = np.random.default_rng(0)
    N, k = 24, 3
    families = [rng.gamma(0.3, size=(N, 8, 8, k)) for _ in range(4)]   # concepts by depth
    mix = lambda F, C: np.einsum("nhwk,kc->nhwc", F, rng.gamma(1.0, size=(k, C)))  # noqa: E731
    # model A: 4 layers at 8x8; model B: 8 layers at 4x4, two per concept family
    acts_a = {f"a{i}": mix(families[i], 8).astype(np.float32) for i in range(4)}
    acts_b = {f"b{j}": mix(families[j // 2], 6).reshape(N, 4, 2, 4, 2, 6).mean((2, 4))
              .astype(np.float32) for j in range(8)}
    comp, ca, cb = ice_layer_similarity(acts_a, acts_b, k, metric="pearson", max_iter=300)
    assert comp.matrix.shape == (4, 8) and comp.concept_similarity.shape == (4, 8, k, k)
    assert set(ca) == set(acts_a) and set(cb) == set(acts_b)
    idx, rd, rho = comp.best_matches()
    np.testing.assert_array_equal(idx // 2, np.arange(4))      # the planted family
    assert comp.best_matches().matches == {f"a{i}": f"b{j}" for i, j in enumerate(idx)}
    assert rho > 0.95
    # own family clearly above the others (independent maps, measured 0.38-0.48 vs <= 0.04;
    # B's maps are 2x2-pooled, which caps their correlation with A's sparse 8x8 maps)
    same = (np.arange(8)[None, :] // 2) == np.arange(4)[:, None]
    assert comp.matrix[same].min() > 0.3 and comp.matrix[~same].max() < 0.1
    hung, _, _ = ice_layer_similarity(acts_a, acts_b, k, metric="pearson", how="hungarian",
                                      concepts_a=ca, concepts_b=cb)
    assert np.all(hung.matrix <= comp.matrix + 1e-6)
    # within one model: the diagonal is maximal
    within, _, _ = ice_layer_similarity(acts_a, None, k, metric="set_iou", concepts_a=ca)
    np.testing.assert_array_equal(np.argmax(within.matrix, 1), np.arange(4))
    np.testing.assert_allclose(np.diag(within.matrix), 1.0, atol=1e-6)
    comp.plot(tmp_path / "m.png")
    comp.plot_relative_depth(tmp_path / "d.png")
    assert (tmp_path / "m.png").stat().st_size > 1000
    # one named result type (a pytree with to_dict/save); the old 3-tuple still unpacks
    assert isinstance(comp, LayerComparison) and comp.concepts_a is ca and comp.concepts_b is cb
    assert comp.layers_a == tuple(acts_a) and comp.score("a2", "b5") == comp.matrix[2, 5]
    with pytest.raises(KeyError, match="Did you mean"):
        comp.score("a22", "b0")
    assert jax.tree_util.tree_structure(comp).num_leaves > 2
    kind, back = load_result(comp.save(tmp_path / "cmp"))
    assert kind == "LayerComparison" and back["layers_b"] == list(acts_b)
    np.testing.assert_array_equal(back["matrix"], comp.matrix)
    np.testing.assert_array_equal(back["concepts_a"]["a1"]["components"],
                                  np.asarray(ca["a1"].components))
