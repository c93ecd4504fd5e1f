"""The real-data branches of data.load: a tfds set of differently sized images (the
notebooks' ImageNet path: shorter side, centre crop, per image) and a Hugging Face
`datasets` set saved to disk."""
from __future__ import annotations

import numpy as np
import pytest

from repsim_jax import data
from repsim_jax._checks import InputError
from repsim_jax.models.preprocess import Preprocess, resize_array, to_unit_range

PRE = Preprocess(size=(32, 32), resize="shorter_crop", crop_pct=1.0)


def test_tfds_images_of_any_size_are_cropped_and_resized_per_image(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=6):
        ds = data.load_for_model("tfds:imagenette/160px", PRE, n_images=4, seed=3,
                                 echo=None)
        src = tfds.data_source("imagenette/160px", split="validation")
        raw = [np.asarray(src[int(i)]["image"]) for i in ds.info["indices"]]
        labels = [int(src[int(i)]["label"]) for i in ds.info["indices"]]
        sizes = {r.shape[:2] for r in raw}
        lazy = data.load("tfds:imagenette/160px", split="validation", n_images=4, seed=3,
                         preprocess=PRE, stream=True, echo=None)
        lazy_pixels = np.asarray(lazy.images)
        with pytest.raises(InputError, match="differ in size"):
            data.load("tfds:imagenette/160px", split="validation", echo=None)
    assert len(sizes) > 1                         # the mock's images differ in size
    assert ds.info["split"] == "validation"       # split="auto": the first that exists
    assert ds.images.shape == (4, 32, 32, 3) and len(ds.class_names) == 10
    np.testing.assert_array_equal(ds.labels, labels)
    for got, r in zip(ds.images, raw):
        ref = resize_array(to_unit_range(r[None]), PRE)[0]
        assert np.abs(got - ref).mean() < 1 / 255 and np.abs(got - ref).max() < 6 / 255
    assert isinstance(lazy.images, data.LazyArray)
    np.testing.assert_array_equal(lazy_pixels, ds.images)


def test_hf_dataset_saved_to_disk(tmp_path):
    datasets = pytest.importorskip("datasets")
    from PIL import Image
    rng = np.random.default_rng(0)
    pix = [rng.integers(0, 256, (20 + i, 24, 3), dtype=np.uint8) for i in range(6)]
    feats = datasets.Features({"img": datasets.Image(),
                               "label": datasets.ClassLabel(names=["a", "b", "c"])})
    d = datasets.Dataset.from_dict({"img": [Image.fromarray(p) for p in pix],
                                    "label": [0, 1, 2, 0, 1, 2]}, features=feats)
    datasets.DatasetDict({"train": d, "test": d.select([1, 3, 5])}).save_to_disk(
        str(tmp_path / "hf"))
    ds = data.load(f"hf:{tmp_path / 'hf'}", split="train", preprocess=PRE, echo=None)
    assert ds.class_names == ("a", "b", "c") and ds.labels.tolist() == [0, 1, 2, 0, 1, 2]
    for got, p in zip(ds.images, pix):
        ref = resize_array(to_unit_range(p[None]), PRE)[0]
        assert np.abs(got - ref).max() < 1.5 / 255
    auto = data.load(f"hf:{tmp_path / 'hf'}", split="auto", preprocess=PRE, echo=None)
    assert auto.info["split"] == "test" and auto.labels.tolist() == [1, 0, 2]
    with pytest.raises(KeyError, match="split"):
        data.load(f"hf:{tmp_path / 'hf'}", split="validation", preprocess=PRE, echo=None)
    with pytest.raises(InputError, match="does not exist"):
        data.load(f"hf:{tmp_path / 'nope'}", echo=None)
