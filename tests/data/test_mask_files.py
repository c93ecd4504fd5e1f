"""Concept masks of image folders: memory-bounded loading and unreadable mask files."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

from repsim_jax import data
from repsim_jax._checks import InputError

N_CONCEPTS = 150
HW = (12, 16)


def _broden(root, n=4):
    """A flat folder of ``n`` PNGs and index masks naming ``N_CONCEPTS`` concepts
    (palette.csv); returns the expected (n, H, W, C) masks in sorted concept order."""
    from PIL import Image
    rng = np.random.default_rng(3)
    (root / "imgs").mkdir()
    (root / "masks").mkdir()
    names = [f"c{k:03d}" for k in range(1, N_CONCEPTS + 1)]
    (root / "masks" / "palette.csv").write_text(
        "index,concept\n" + "".join(f"{k},{c}\n" for k, c in enumerate(names, start=1)))
    expect = []
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (*HW, 3), dtype=np.uint8)).save(
            root / "imgs" / f"im{i}.png")
        ix = rng.integers(0, N_CONCEPTS + 1, HW).astype(np.uint8)   # 0: background
        Image.fromarray(ix, "L").save(root / "masks" / f"im{i}.png")
        expect.append(np.stack([ix == k for k in range(1, N_CONCEPTS + 1)], -1))
    expect = np.stack(expect)
    keep = expect.reshape(-1, N_CONCEPTS).any(0)      # concepts in no image are dropped
    return [c for c, k in zip(names, keep) if k], expect[..., keep]


def _quiet_load(*args, **kw):
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        ds = data.load(*args, echo=None, **kw)
    return ds, [str(x.message) for x in w]


def test_masks_larger_than_the_memory_limit_stay_lazy_while_images_load(tmp_path):
    names, expect = _broden(tmp_path)
    n = len(expect)
    img_bytes = n * HW[0] * HW[1] * 3 * 4
    mask_bytes = n * HW[0] * HW[1] * len(names)
    assert img_bytes < mask_bytes          # the case: masks outweigh the images
    src, masks = str(tmp_path / "imgs"), tmp_path / "masks"
    # room for the images but not for images + masks
    ds, _ = _quiet_load(src, masks=masks, max_memory=img_bytes + mask_bytes // 2)
    assert isinstance(ds.images, np.ndarray)
    assert isinstance(ds.concept_masks, data.LazyArray)
    assert ds.concept_masks.shape == (n, *HW, len(names)) and ds.info["masks_lazy"]
    assert ds.concept_names == tuple(names)
    np.testing.assert_array_equal(np.asarray(ds.concept_masks), expect)
    np.testing.assert_array_equal(ds.concept_masks[[3, 1]], expect[[3, 1]])
    # room for both: everything in memory, the same masks
    eager, _ = _quiet_load(src, masks=masks, max_memory=img_bytes + mask_bytes)
    assert isinstance(eager.concept_masks, np.ndarray) and not eager.info["masks_lazy"]
    np.testing.assert_array_equal(eager.concept_masks, expect)
    np.testing.assert_array_equal(eager.images, ds.images)
    # stream= forces both ways, masks with the images
    forced, _ = _quiet_load(src, masks=masks, stream=False, max_memory=1)
    assert isinstance(forced.concept_masks, np.ndarray)
    forced, _ = _quiet_load(src, masks=masks, stream=True, max_memory=1 << 40)
    assert isinstance(forced.concept_masks, data.LazyArray)


def _spoil(masks):
    """im1's index mask is not a PNG at all, im2's is cut in half."""
    (masks / "im1.png").write_bytes(b"this is not a png\n" * 8)
    raw = (masks / "im2.png").read_bytes()
    (masks / "im2.png").write_bytes(raw[: len(raw) // 2])
    return [str(masks / "im1.png"), str(masks / "im2.png")]


def test_unreadable_mask_files_are_named_or_skip_their_images(tmp_path):
    names, expect = _broden(tmp_path)
    src, masks = str(tmp_path / "imgs"), tmp_path / "masks"
    bad = _spoil(masks)
    with pytest.raises(InputError) as err:
        data.load(src, masks=masks, echo=None)
    msg = str(err.value)
    assert "2 image(s) have mask files that cannot be decoded" in msg
    assert all(b in msg for b in bad) and "skip_bad_images" in msg
    assert "UnidentifiedImageError" in msg           # Pillow's reason, wrapped
    for stream in (False, True):
        ds, warns = _quiet_load(src, masks=masks, skip_bad_images=True, stream=stream)
        skipped = [w for w in warns if "skipped" in w]
        assert len(skipped) == 1 and all(b in skipped[0] for b in bad)
        assert "im1.png" in skipped[0] and "im2.png" in skipped[0]
        assert ds.files == ("im0.png", "im3.png")
        assert ds.info["skipped"] == ["im1.png", "im2.png"]
        # the masks of the images kept, in order (concepts only in skipped images dropped)
        kept = expect[[0, 3]]
        present = kept.reshape(-1, kept.shape[-1]).any(0)
        assert ds.concept_names == tuple(c for c, p in zip(names, present) if p)
        np.testing.assert_array_equal(np.asarray(ds.concept_masks), kept[..., present])
        np.testing.assert_array_equal(ds.concept_labels,
                                      kept[..., present].reshape(2, -1, present.sum()).any(1))


def test_an_unreadable_mask_file_stops_the_cli_with_its_name(tmp_path, capsys):
    from repsim_jax import cli
    _broden(tmp_path)
    bad = _spoil(tmp_path / "masks")
    out = tmp_path / "out"
    rc = cli.main(["sweep", "--arch", "small_vgg", "--num-classes", "2", "--data",
                   f"folder:{tmp_path / 'imgs'}", "--masks", str(tmp_path / "masks"),
                   "--methods", "concepts", "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert err.startswith("repsim: error: masks ") and all(b in err for b in bad)
    assert "--skip-bad-images" in err
    assert not out.exists()              # stopped before anything was written
