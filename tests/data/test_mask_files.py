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
