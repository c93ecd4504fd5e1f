"""The seed's findings on the built-in data with the two built-in CNNs (small_vgg: 4 conv
blocks; small_resnet: stem + 4 residual blocks), on small subsets to fit the CI budget.

Thresholds are measured values with a margin (see each assertion); they come from
300 training / 150 test images, masks block-pooled to 16x16, 3 epochs, lr 1.0.
"""
import numpy as np
import pytest

pytestmark = pytest.mark.slow

LAYERS = {"small_vgg": ["features.2", "features.6", "features.10", "features.14"],
          "small_resnet": ["relu", "maxpool", "layer1.0", "layer2.0", "layer3.0", "layer3.1"]}
N_TRAIN, N_TEST = 300, 150


def _pool_masks(m, f=4):
    N, H, W, K = m.shape
    return m.reshape(N, H // f, f, W // f, f, K).mean((2, 4)) >= 0.5


@pytest.fixture(scope="module")
def trained():
    from repsim_jax.concepts import Net2VecConfig, net2vec
    from repsim_jax.data import shapes
    from repsim_jax.models import activations
    from repsim_jax.models.zoo import load_trained
    tr, te = shapes.load("train"), shapes.load("test")
    m_tr = _pool_masks(tr.concept_masks(slice(0, N_TRAIN)))
    m_te = _pool_masks(te.concept_masks(slice(0, N_TEST)))
    out = {"masks_test": m_te, "labels_test": np.asarray(te.labels[:N_TEST]),
           "concept_names": list(tr.concept_names)}
    for name, layers in LAYERS.items():
        model, _ = load_trained(name)
        a_tr = activations(model, tr.images[:N_TRAIN], layers, batch_size=N_TRAIN)
        a_te = activations(model, te.images[:N_TEST], layers, batch_size=N_TEST)
        res = net2vec(a_tr, m_tr, a_te, m_te, tr.concept_names,
                      Net2VecConfig(epochs=3, learning_rate=1.0, progress=False))
        out[name] = {"model": model, "acts": a_te, "result": res}
    return out


def test_every_concept_is_found_in_both_models(trained):
    trivial = trained["masks_test"].reshape(-1, len(trained["concept_names"])).mean(0)
    for name in LAYERS:
        best = trained[name]["result"].iou.max(0)
        # the all-positive predictor reaches IoU = pixel fraction (3-45 %); measured best-layer
        # IoUs (small_vgg) 0.23-0.98, >= 2.1x that fraction; assert >= 0.12 and >= 1.5x
        assert np.all(best >= 0.12), (name, dict(zip(trained["concept_names"], best)))
        assert np.all(best >= 1.5 * trivial), (name, best / trivial)


def test_most_similar_layer_advances_with_relative_depth(trained, tmp_path):
    from repsim_jax.concepts import net2vec_layer_similarity
    a, b = trained["small_vgg"], trained["small_resnet"]
    comp = net2vec_layer_similarity(a["result"], a["acts"], b["result"], b["acts"],
                                    metric="set_iou", size=(16, 16))
    assert comp.matrix.shape == (4, 6) and comp.concept_similarity.shape == (4, 6, 14)
    idx, rel_depth, rho = comp.best_matches()
    # Measured (set IoU, mean over the 14 shared concepts): the best ResNet match of VGG
    # blocks 1-3 advances 0.17 -> 0.67 -> 1.0 in relative depth, but VGG's last block
    # (8x8 after four pools) matches ResNet's stem best, so over all four VGG layers the
    # Spearman is only 0.11; from the ResNet side it is 0.38. Only the partial trend is
    # reproduced on these small models; assert exactly that.
    assert np.all(np.diff(rel_depth[:3]) > 0), (comp.matrix.round(2), idx)
    back = net2vec_layer_similarity(b["result"], b["acts"], a["result"], a["acts"],
                                    metric="set_iou", size=(16, 16))
    np.testing.assert_allclose(back.matrix, comp.matrix.T, atol=1e-6)   # set IoU is symmetric
    _, _, rho_back = back.best_matches()
    assert rho_back >= 0.25, (back.matrix.round(2), rho_back)
    comp.plot(tmp_path / "vgg_vs_resnet.png")
    comp.plot_relative_depth(tmp_path / "depth.png")
    assert (tmp_path / "depth.png").stat().st_size > 1000


def test_ice_fidelity_of_last_vgg_block(trained):
    from repsim_jax.concepts import fidelity, ice_fit, ice_reconstruct
    m = trained["small_vgg"]["model"]
    acts = trained["small_vgg"]["acts"]["features.14"]          # (N, 8, 8, 64), after ReLU
    ice = ice_fit(acts, 10, layer="features.14")

    def head(a):                                                 # rest of small_vgg
        x = m.globalpool(m.features[15](a)).reshape(a.shape[0], -1)
        for layer in m.classifier:
            x = layer(x)
        return x

    fid = fidelity(head, acts, ice_reconstruct(ice, ice.maps), trained["labels_test"])
    # measured: relative error 0.55, agreement 0.95, accuracy 0.99 -> 0.95 (150 images)
    assert ice.relative_error < 0.65
    assert fid["agreement"] >= 0.85
    assert fid["accuracy_reconstructed"] >= fid["accuracy_original"] - 0.1
