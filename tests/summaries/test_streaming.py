"""Visual summaries on a lazy source: read in chunks of the batch size, never as a whole,
with the numbers of the in-memory path."""
import jax.numpy as jnp
import numpy as np

from repsim_jax.data.views import MappedView
from repsim_jax.summaries import pipeline

H = 16


def _squares(n=20, seed=0):
    """Grey images with a red (class 0) or blue (class 1) 8x8 square at a random place."""
    rng = np.random.default_rng(seed)
    x = 0.5 + rng.normal(0, 0.02, (n, H, H, 3))
    y = np.arange(n) % 2
    for i in range(n):
        r, c = rng.integers(2, H - 10, 2)
        x[i, r:r + 8, c:c + 8] = [0.9, 0.1, 0.1] if y[i] == 0 else [0.1, 0.1, 0.9]
    return np.clip(x, 0, 1).astype(np.float32), y.astype(np.int32)


def logits_fn(x):
    """Class 0 when the image is redder than blue (every image is classified right)."""
    d = 40.0 * (x[..., 0].mean((1, 2)) - x[..., 2].mean((1, 2)))
    return jnp.stack([d, -d], -1)


def test_lazy_source_is_read_in_batches_and_gives_the_in_memory_result(recording):
    x, y = _squares()
    kw = dict(images_per_class=3, smooth_steps=3, sharp_steps=3, batch_size=8, baseline="mean",
              progress=False)
    ref = pipeline.visual_summaries(logits_fn, x, y, **kw)
    src = recording(x)
    res = pipeline.visual_summaries(logits_fn, src, y, **kw)
    src.check_bounded(8)
    # the predictions read every image once; the explained images once more, by index
    assert sum(src.requests) == len(x) + 6
    np.testing.assert_array_equal(res.image_indices, [0, 2, 4, 1, 3, 5])
    np.testing.assert_array_equal(res.image_indices, ref.image_indices)
    np.testing.assert_allclose(res.masks.sharp, ref.masks.sharp, atol=1e-6)
    assert res.counts() == ref.counts()
    for c in ref.classes:
        np.testing.assert_array_equal(res.classes[c].regions.boxes,
                                      ref.classes[c].regions.boxes)
        assert res.classes[c].status == ref.classes[c].status


def test_mapped_view_reads_its_base_in_batches(recording):
    x, _ = _squares(n=13)
    src = recording(x)
    view = MappedView(src, lambda b: 1.0 - b, batch_size=4)
    assert view.shape == x.shape and view.dtype == np.float32
    np.testing.assert_array_equal(view[2:11], 1.0 - x[2:11])
    np.testing.assert_array_equal(view[np.array([12, 0, 5])], 1.0 - x[[12, 0, 5]])
    np.testing.assert_array_equal(view.take([3, 7, 8])[1:], 1.0 - x[[7, 8]])
    src.check_bounded(4)


def test_saved_pictures_read_only_the_images_they_draw(recording, tmp_path):
    from repsim_jax.summaries import plots
    x, y = _squares()
    res = pipeline.visual_summaries(logits_fn, x, y, images_per_class=4, smooth_steps=3,
                                    sharp_steps=3, batch_size=8, baseline="mean",
                                    progress=False)
    assert sum(cs.n_summaries for cs in res.classes.values()) >= 1   # something to draw
    ref = plots.save_summaries(res, x, tmp_path / "mem", class_names=["red", "blue"])
    src = recording(x)
    got = plots.save_summaries(res, src, tmp_path / "lazy", class_names=["red", "blue"])
    # the images drawn: every strip's members, up to 8 images per class's mask figure
    drawn = sum(len(m) for cs in res.classes.values() for m in cs.summaries) + sum(
        min(8, len(cs.image_indices)) for cs in res.classes.values())
    assert sum(src.requests) == drawn and max(src.requests) < len(x)
    # the same pictures as from the images in memory
    import matplotlib.pyplot as plt
    assert [p.relative_to(tmp_path / "mem") for p in ref] == \
        [p.relative_to(tmp_path / "lazy") for p in got]
    for a, b in zip(ref, got):
        np.testing.assert_array_equal(plt.imread(a), plt.imread(b), err_msg=str(a))
