"""Stage 1: the official loss pieces, and the optimisation finds a planted patch."""
import numpy as np
import pytest
import jax
import jax.numpy as jnp

from repsim_jax._checks import InputError
from repsim_jax.summaries import masks

H = 32


def test_blur_matches_cv2_convention_and_scaling():
    from scipy import ndimage
    assert masks.image_blur_params(224) == (11, pytest.approx(10.0))
    k, s = masks.image_blur_params(64)
    assert k == 3 and s == pytest.approx(10 * 64 / 224)
    rng = np.random.default_rng(0)
    img = rng.uniform(0, 1, (1, 20, 24, 3)).astype(np.float32)
    w = masks.gaussian_kernel(5, 2.0)
    ours = np.asarray(masks.blur_images(img, size=(5, 5), sigma=(2.0, 2.0)))
    # cv2 BORDER_REFLECT_101 == scipy "mirror"
    ref = ndimage.correlate1d(ndimage.correlate1d(img, w, axis=1, mode="mirror"), w, axis=2,
                              mode="mirror")
    np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_loss_terms():
    m = jnp.array([[1.0, 0.0], [0.5, 0.5]])
    # row diffs: |0.5-1|^3, |0.5-0|^3 -> mean 0.125 ; col diffs: 1, 0 -> mean 0.5
    assert float(masks.tv_beta(m, 3.0)) == pytest.approx(0.125 + 0.5)
    init = masks.central_disc_init((8, 8))
    assert init[4, 4] == 0 and init[0, 0] == 1 and init.min() == 0
    x = jnp.ones((2, 2, 3))
    b = jnp.zeros((2, 2, 3))
    np.testing.assert_allclose(np.asarray(masks.perturb(x, b, m))[..., 0], np.asarray(m))


def _planted(n=3, seed=0):
    """Images with a high-frequency checker patch; class-0 logit reads that patch only."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:H, :H]
    checker = ((yy + xx) % 2 * 2 - 1).astype(np.float32)
    patch = np.zeros((H, H), bool)
    patch[4:12, 20:28] = True
    imgs = rng.uniform(0.3, 0.7, (n, H, H, 3)).astype(np.float32)
    imgs[:, patch] += 0.25 * checker[patch][None, :, None]
    weight = jnp.asarray(np.where(patch, checker, 0.0))

    def logits_fn(x):
        s = jnp.einsum("bhw,hw->b", x.mean(-1), weight) / patch.sum()
        return jnp.stack([40.0 * s - 3.0, jnp.zeros_like(s)], -1)

    return imgs, patch, logits_fn


@pytest.fixture(scope="module")
def planted():
    imgs, patch, logits_fn = _planted(n=4)
    targets = np.array([0, 0, 1, 0])                       # image 2 is "misclassified"
    with pytest.warns(UserWarning, match="skipped 1 of 4"):
        res = masks.optimise_masks(logits_fn, imgs, targets, smooth_steps=150,
                                   sharp_steps=60, progress=False)
    return imgs, patch, logits_fn, res


def test_masks_find_the_planted_patch(planted):
    imgs, patch, logits_fn, res = planted
    ok = res.kept
    deleted = (1.0 - res.sharp[ok]) > 0.5
    # the whole patch is deleted, most of the image is kept, deletions sit around the patch
    coverage = (deleted & patch).sum((1, 2)) / patch.sum()
    assert (coverage >= 0.95).all(), coverage
    assert (deleted.mean((1, 2)) < 0.3).all()
    far = np.zeros_like(patch)
    far[18:, :14] = True                                   # opposite quadrant
    assert deleted[:, far].mean() < 0.02
    # the perturbation destroys the evidence: probability falls near the fully blurred level
    assert (res.target_prob[ok] > 0.99).all()
    assert (res.sharp_prob[ok] < 0.3).all() and (res.smooth_prob[ok] < 0.3).all()
    assert res.history["smooth"].shape == (150, 4) and res.history["sharp"].shape == (60, 4)
    # losses go down
    assert (res.history["smooth"][-1, ok] < res.history["smooth"][0, ok]).all()


def test_vmapped_images_are_independent(planted):
    imgs, patch, logits_fn, res = planted
    # image 1 alone (replicated to the same batch shape: same compiled program)
    same = masks.optimise_masks(logits_fn, imgs[[1, 1, 1]], np.zeros(3, int),
                                smooth_steps=150, sharp_steps=60, progress=False)
    for k in range(3):
        np.testing.assert_allclose(same.sharp[k], res.sharp[1], atol=1e-5)


def test_misclassified_images_are_skipped(planted):
    imgs, patch, logits_fn, res = planted
    assert res.kept.tolist() == [True, True, False, True]
    assert res.skipped.tolist() == [2]
    assert (res.sharp[2] == 1).all() and (res.smooth[2] == 1).all()
    assert np.isnan(res.sharp_prob[2]) and np.isnan(res.history["sharp"][:, 2]).all()
    assert np.isfinite(res.sharp_prob[[0, 1, 3]]).all()


def test_bad_inputs():
    imgs, _, logits_fn = _planted(n=2)
    with pytest.raises(InputError, match="targets"):
        masks.optimise_masks(logits_fn, imgs, np.array([0, 5]), smooth_steps=1, sharp_steps=1)
    with pytest.raises(InputError, match="inputs"):
        masks.optimise_masks(logits_fn, imgs, np.array([0]), smooth_steps=1, sharp_steps=1)
    with pytest.raises(InputError, match="dimensions"):
        masks.optimise_masks(logits_fn, imgs[0], np.array([0]))
    with pytest.raises(InputError, match="classifier"):
        masks.optimise_masks(42, imgs, np.array([0, 0]))


def test_sharded_batch_matches_single_device():
    import jax
    from jax.sharding import NamedSharding, PartitionSpec as P
    imgs, patch, logits_fn = _planted(n=4, seed=1)
    mesh = jax.make_mesh((4,), ("data",), axis_types=(jax.sharding.AxisType.Auto,),
                         devices=jax.devices()[:4])
    kw = dict(smooth_steps=6, sharp_steps=3, progress=False)
    plain = masks.optimise_masks(logits_fn, imgs, np.zeros(4, int), **kw)
    sharded = masks.optimise_masks(logits_fn, imgs, np.zeros(4, int), mesh=mesh, **kw)
    np.testing.assert_allclose(sharded.sharp, plain.sharp, atol=1e-5)
    np.testing.assert_allclose(sharded.sharp_prob, plain.sharp_prob, atol=1e-5)
    with pytest.warns(DeprecationWarning, match="sharding"):   # the old name, one release
        old = masks.optimise_masks(logits_fn, imgs, np.zeros(4, int),
                                   sharding=NamedSharding(mesh, P("data")), **kw)
    np.testing.assert_array_equal(old.sharp, sharded.sharp)


def test_mean_baseline_replaces_pixels_by_channel_means():
    imgs, patch, logits_fn = _planted(n=2, seed=3)
    rep = np.asarray(masks.replacement_image(jnp.asarray(imgs), "mean"))
    np.testing.assert_allclose(rep, np.broadcast_to(imgs.mean((1, 2), keepdims=True),
                                                    imgs.shape), atol=1e-6)
    res = masks.optimise_masks(logits_fn, imgs, np.zeros(2, int), smooth_steps=2,
                               sharp_steps=2, progress=False, baseline="mean")
    # fully perturbed image = the flat mean image: the checker evidence is gone
    flat = imgs.mean((1, 2), keepdims=True) * np.ones_like(imgs)
    ref = np.asarray(jax.nn.softmax(logits_fn(jnp.asarray(flat)), -1))[:, 0]
    np.testing.assert_allclose(res.blurred_prob, ref, rtol=1e-5)
    assert (res.blurred_prob < res.target_prob).all()
    with pytest.raises(InputError, match="baseline"):
        masks.optimise_masks(logits_fn, imgs, np.zeros(2, int), smooth_steps=1,
                             sharp_steps=1, baseline="noise")
