"""Image folders, concept annotations, bad files, sampling and streaming through data.load."""
from __future__ import annotations

import shutil
import warnings

import numpy as np
import pytest

from repsim_jax import data
from repsim_jax._checks import InputError
from repsim_jax.models.preprocess import Preprocess, resize_array, to_unit_range

PRE = Preprocess(size=(32, 32), resize="resize")
TOL = 1.5 / 255          # Pillow's and jax's antialiased bilinear agree to a level


def _load(fx, **kw):
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        ds = data.load(str(fx["root"]), skip_bad_images=True, echo=None, **kw)
    return ds, [str(x.message) for x in w]


def test_class_folders_give_files_labels_and_the_right_pixels(fx):
    ds, warns = _load(fx, preprocess=PRE)
    assert isinstance(ds, data.Dataset) and not ds.lazy
    # sorted relative paths; the text file ignored, the truncated JPEG skipped
    assert ds.files == tuple(fx["good"])
    assert ds.class_names == ("cat", "dog")
    np.testing.assert_array_equal(ds.labels, [0, 0, 0, 1, 1, 1])
    assert ds.info["ignored_files"] == 1 and ds.info["skipped"] == [fx["truncated"]]
    assert sum("skipped 1 unreadable" in w and fx["truncated"] in w for w in warns) == 1
    assert ds.images.shape == (6, 32, 32, 3) and ds.images.dtype == np.float32
    # every format/mode (JPEG, RGBA PNG, WebP, greyscale BMP, palette PNG, EXIF-rotated
    # PNG) matches the displayed RGB picture resized by the preprocessing rule
    for i, f in enumerate(ds.files):
        ref = resize_array(to_unit_range(fx["pixels"][f][None]), PRE)[0]
        assert np.abs(ds.images[i] - ref).max() < TOL, f
    assert "4 sizes" in ds.info["geometry"] and "32x32" in ds.info["geometry"]


def test_images_at_their_size_are_exact_and_exif_is_applied(fx):
    ds, _ = _load(fx, preprocess=Preprocess(size=(48, 40), resize="resize"))
    for f in ("cat/b.png", "dog/f.png"):       # already 48x40 once displayed: no resampling
        i = ds.files.index(f)
        np.testing.assert_array_equal(ds.images[i], fx["pixels"][f] / np.float32(255))
    # the rotated picture is not its unrotated self
    i = ds.files.index("dog/f.png")
    assert ds.images[i].shape[:2] == (48, 40)


def test_shorter_side_crop_follows_the_model_rule(fx):
    pre = Preprocess(size=(24, 24), resize="shorter_crop", crop_pct=0.875)
    ds, _ = _load(fx, preprocess=pre)
    for i, f in enumerate(ds.files):
        ref = resize_array(to_unit_range(fx["pixels"][f][None]), pre)[0]
        assert np.abs(ds.images[i] - ref).max() < TOL, f
    cubic = Preprocess(size=(24, 24), resize="shorter_crop", crop_pct=0.875,
                       interpolation="bicubic")
    ds, _ = _load(fx, preprocess=cubic)
    for f in ("cat/a.jpg", "dog/e.png"):   # the cubic kernels differ a little at hard edges
        err = np.abs(ds.images[ds.files.index(f)] - resize_array(
            to_unit_range(fx["pixels"][f][None]), cubic)[0])
        assert err.mean() < 1 / 255 and err.max() < 8 / 255, f
    # a model carrying no preprocess: its input_shape with a centre crop
    class M:
        input_shape = (20, 20, 3)
    ds2, _ = _load(fx, preprocess=M())
    assert ds2.images.shape == (6, 20, 20, 3)


def test_bad_file_stops_with_its_name_and_sizes_must_agree(fx):
    with pytest.raises(InputError, match=r"1 image\(s\) cannot be decoded: "
                       r"dog/g_truncated.jpg.*skip_bad_images"):
        data.load(f"folder:{fx['root']}", preprocess=PRE, echo=None)
    with pytest.raises(InputError, match="differ in size.*preprocess="):
        data.load(str(fx["root"]), skip_bad_images=True, echo=None)
    with pytest.raises(InputError, match="single image file"):
        data.load(str(fx["root"] / "cat" / "a.jpg"))
    with pytest.raises(KeyError, match="unknown data source"):
        data.load("no/such/dir")


def test_concept_tables_wide_and_long(fx):
    root = fx["root"].parent
    wide, ww = _load(fx, preprocess=PRE, concepts=root / "concepts_wide.csv")
    long, lw = _load(fx, preprocess=PRE, concepts=root / "concepts_long.csv")
    # "never" is in no image: dropped, with a warning
    assert wide.concept_names == ("stripes", "spots", "sky")
    assert any("dropped 1 concept(s) present in no image: never" in w for w in ww)
    assert sorted(long.concept_names) == ["sky", "spots", "stripes"]
    for ds in (wide, long):
        expect = np.array([[c in fx["tags"].get(f, ()) for c in ds.concept_names]
                           for f in ds.files])
        np.testing.assert_array_equal(ds.concept_labels, expect)
    rep_w, rep_l = wide.info["annotations"], long.info["annotations"]
    assert rep_w["form"] == "wide" and rep_w["rows_missing_images"] == 1
    assert rep_w["missing_examples"] == ["cat/missing.jpg"] and rep_w["images_without_row"] == 1
    assert rep_l["form"] == "long" and rep_l["rows_missing_images"] == 1
    assert rep_l["images_without_row"] == 1      # cat/c.webp has no concept
    assert any("name images that are not in the folder" in w for w in ww)
    bad = root / "bad.csv"
    bad.write_text("path,stripes\ncat/a.jpg,2\n")
    with pytest.raises(InputError, match="line 2, column 'stripes': expected 0 or 1"):
        _load(fx, preprocess=PRE, concepts=bad)
    bad.write_text("file,stripes\ncat/a.jpg,1\n")
    with pytest.raises(InputError, match="first column is 'path'"):
        _load(fx, preprocess=PRE, concepts=bad)
    with pytest.raises(InputError, match="annotate image folders"):
        data.load("digits", concepts=bad)


def _nearest(m, hw):
    """Reference nearest-neighbour resize (pixel centres), as Pillow's NEAREST."""
    h, w = m.shape
    rows = np.minimum(((np.arange(hw[0]) + 0.5) * h / hw[0]).astype(int), h - 1)
    cols = np.minimum(((np.arange(hw[1]) + 0.5) * w / hw[1]).astype(int), w - 1)
    return m[rows][:, cols]


@pytest.mark.parametrize("layout", ["masks", "masks_index"])
def test_masks_both_layouts_follow_the_image_geometry(fx, layout):
    root = fx["root"].parent
    ref = fx["masks"] if layout == "masks" else fx["index_masks"]
    ds, _ = _load(fx, preprocess=PRE, masks=root / layout)
    assert ds.concept_names == ("sky", "spots", "stripes")
    assert ds.concept_masks.shape == (6, 32, 32, 3) and ds.concept_masks.dtype == bool
    for i, f in enumerate(ds.files):
        for j, c in enumerate(ds.concept_names):
            m = ref.get(f, {}).get(c)
            m = np.zeros(fx["pixels"][f].shape[:2], bool) if m is None else m
            np.testing.assert_array_equal(ds.concept_masks[i, ..., j], _nearest(m, (32, 32)),
                                          err_msg=f"{f} {c}")
    # image-level labels follow from the masks
    np.testing.assert_array_equal(ds.concept_labels,
                                  ds.concept_masks.reshape(6, -1, 3).any(1))
    assert ds.info["annotations"]["images_without_masks"] == (1 if layout == "masks" else 0)


def test_flat_folder_sampling_and_balance(fx, tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    for f in fx["lossless"]:
        shutil.copy(fx["root"] / f, flat / f.replace("/", "_"))
    ds = data.load(f"folder:{flat}", preprocess=PRE, echo=None)
    assert ds.labels is None and ds.class_names == () and len(ds) == 5
    assert list(ds.files) == sorted(ds.files)
    a = data.load(str(flat), preprocess=PRE, n_images=3, seed=1, echo=None)
    b = data.load(str(flat), preprocess=PRE, n_images=3, seed=1, echo=None)
    assert a.files == b.files and list(a.files) == sorted(a.files) and len(a) == 3
    draws = {data.load(str(flat), preprocess=PRE, n_images=3, seed=s, echo=None).files
             for s in range(6)}
    assert len(draws) > 1                          # the seed changes the subset
    bal, _ = _load(fx, preprocess=PRE, n_images=4, balanced=True)
    assert np.bincount(bal.labels).tolist() == [2, 2]
    with pytest.raises(InputError, match="balanced sampling needs class labels"):
        data.load(str(flat), preprocess=PRE, n_images=2, balanced=True, echo=None)


def test_lazy_view_streams_the_same_pixels_with_every_backend(fx):
    eager, _ = _load(fx, preprocess=PRE, masks=fx["root"].parent / "masks")
    lazy, _ = _load(fx, preprocess=PRE, masks=fx["root"].parent / "masks", stream=True)
    assert lazy.lazy and isinstance(lazy.concept_masks, data.LazyArray)
    assert lazy.images.shape == eager.images.shape
    np.testing.assert_array_equal(np.asarray(lazy.images), eager.images)
    np.testing.assert_array_equal(lazy.images[[4, 1]], eager.images[[4, 1]])
    np.testing.assert_array_equal(lazy.concept_masks[2:5], eager.concept_masks[2:5])
    sub = lazy.take([5, 0])
    np.testing.assert_array_equal(np.asarray(sub.images), eager.images[[5, 0]])
    assert sub.files == (eager.files[5], eager.files[0])
    # grain in-process here (its worker processes are exercised by benchmarks/bench_data)
    for backend, workers in (("threads", 3), ("serial", 1), ("grain", 0)):
        got = list(lazy.images.batches(4, backend=backend, workers=workers))
        assert [s for s, _ in got] == [0, 4], backend
        np.testing.assert_array_equal(np.concatenate([b for _, b in got]), eager.images,
                                      err_msg=backend)


def test_one_rule_for_floats_and_uint8_everywhere(tmp_path):
    x = np.random.default_rng(0).uniform(size=(4, 8, 8, 3)).astype(np.float32)
    np.savez(tmp_path / "ok.npz", images=x, labels=np.arange(4))
    np.savez(tmp_path / "u8.npz", images=np.round(x * 255).astype(np.uint8))
    np.savez(tmp_path / "big.npz", images=x * 255)
    np.testing.assert_array_equal(data.load(str(tmp_path / "ok.npz")).images, x)
    np.testing.assert_allclose(data.load(str(tmp_path / "u8.npz")).images, x, atol=0.5 / 255)
    with pytest.raises(InputError, match=r"must be in \[0, 1\] \(uint8 is scaled"):
        data.load(str(tmp_path / "big.npz"))
    from repsim_jax.sweep import config as C
    from repsim_jax.sweep.inputs import load_data
    with pytest.raises(InputError, match=r"must be in \[0, 1\]"):
        load_data(C.DataSpec(str(tmp_path / "big.npz")))


def test_builtin_sources_reach_the_sweep():
    from repsim_jax.sweep import config as C
    from repsim_jax.sweep.inputs import load_data
    d = load_data(C.DataSpec("digits", n_images=30))
    ref = data.sources.digits()
    assert d.images.shape == (30, 8, 8, 3) and len(d.class_names) == 10
    idx = d.info["indices"]
    np.testing.assert_array_equal(d.images[..., 0], ref.images[idx, ..., 0])
    np.testing.assert_array_equal(d.labels, ref.labels[idx])
    lfw = load_data(C.DataSpec("lfw_subset", n_images="all" and None))
    assert len(lfw) == 200 and lfw.labels.sum() == 100 and lfw.class_names == ("non_face",
                                                                                "face")
