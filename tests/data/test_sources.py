"""Image sources: digits, lfw_subset, numpy files, tfds by name (mocked), bad input."""
import numpy as np
import pytest

from repsim_jax._checks import InputError
from repsim_jax.data import sources


def test_digits_matches_sklearn():
    from sklearn.datasets import load_digits
    ref = load_digits()
    d = sources.digits()
    assert d.images.shape == (1797, 8, 8, 1) and d.images.dtype == np.float32
    np.testing.assert_allclose(d.images[..., 0] * 16, ref.images, atol=1e-5)
    np.testing.assert_array_equal(d.labels, ref.target)
    assert d.class_names == [str(i) for i in range(10)]
    assert sources.load("digits").images.shape == d.images.shape


def test_lfw_subset_faces_then_non_faces():
    from skimage import data as skdata
    d = sources.lfw_subset()
    assert d.images.shape == (200, 25, 25, 1) and len(d) == 200
    np.testing.assert_allclose(d.images[..., 0], skdata.lfw_subset(), atol=1e-6)
    np.testing.assert_array_equal(d.labels, np.r_[np.ones(100), np.zeros(100)])
    assert d.class_names[1] == "face"


def test_numpy_files(tmp_path):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (6, 5, 4, 3), dtype=np.uint8)
    np.savez(tmp_path / "a.npz", images=imgs, labels=np.arange(6) % 2)
    d = sources.load(str(tmp_path / "a.npz"))
    np.testing.assert_allclose(d.images * 255, imgs, atol=1e-4)
    np.testing.assert_array_equal(d.labels, np.arange(6) % 2)
    np.save(tmp_path / "b.npy", imgs[..., 0].astype(np.float32) / 255)
    d = sources.from_file(tmp_path / "b.npy")
    assert d.images.shape == (6, 5, 4, 1) and d.labels is None
    # object arrays (pickles) are refused, not executed
    np.save(tmp_path / "evil.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match="evil.npy"):
        sources.from_file(tmp_path / "evil.npy")
    with pytest.raises(InputError, match="no array 'pixels'"):
        sources.from_file(tmp_path / "a.npz", images_key="pixels")
    with pytest.raises(FileNotFoundError):
        sources.from_file(tmp_path / "missing.npz")


def test_bad_arrays():
    good = np.zeros((2, 4, 4, 3), np.float32)
    bad = good.copy()
    bad[0, 1, 1, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        sources.from_arrays(bad)
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        sources.from_arrays(good + 2.0)
    with pytest.raises(InputError, match="channels"):
        sources.from_arrays(np.zeros((2, 4, 4, 5)))
    with pytest.raises(InputError, match="labels"):
        sources.from_arrays(good, np.array([0, 1, 2]))
    with pytest.raises(KeyError, match="image source"):
        sources.load("no_such_source")


def test_tfds_by_name_mocked(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=12):
        d = sources.load("tfds:mnist", split="train", data_dir=tmp_path)
        raw = tfds.data_source("mnist", split="train", data_dir=str(tmp_path))
        ref = np.stack([raw[i]["image"] for i in range(12)])
        ref_labels = np.array([raw[i]["label"] for i in range(12)])
    assert d.images.shape == (12, 28, 28, 1) and d.images.dtype == np.float32
    np.testing.assert_allclose(d.images * 255, ref, atol=1e-4)
    np.testing.assert_array_equal(d.labels, ref_labels)
    assert d.class_names == [str(i) for i in range(10)]
    with tfds.testing.mock_data(num_examples=5):
        d = sources.from_tfds("cifar10", split="test", data_dir=tmp_path, limit=3)
    assert d.images.shape == (3, 32, 32, 3)
    assert len(d.class_names) == 10


def test_tfds_unknown_and_manual(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    with pytest.raises(KeyError, match="unknown tfds data set 'cifar_ten'.*cifar10"):
        sources.from_tfds("cifar_ten", data_dir=tmp_path)
    with pytest.raises(InputError, match="imagenet2012.*manual download"):
        sources.from_tfds("imagenet2012", split="validation", data_dir=tmp_path)


def test_to_rgb_and_resize():
    gray = np.linspace(0, 1, 2 * 8 * 8, dtype=np.float32).reshape(2, 8, 8, 1)
    rgb = sources.to_rgb(gray)
    assert rgb.shape == (2, 8, 8, 3)
    np.testing.assert_array_equal(rgb[..., 2], gray[..., 0])
    const = np.full((1, 25, 25, 3), 0.3, np.float32)
    np.testing.assert_allclose(sources.resize(const, 24), 0.3, atol=1e-6)
    assert sources.resize(rgb, (16, 12)).shape == (2, 16, 12, 3)
