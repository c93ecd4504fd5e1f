"""A multi-model sweep decodes decoded sources with the first model's rule; every other
model whose input differs gets the images resampled again, and the sweep says so once."""
from __future__ import annotations

import textwrap

import numpy as np
import pytest

OWN = '''
import jax
from flax import nnx

from repsim_jax.models.preprocess import Preprocess, imagenet_at


class Net(nnx.Module):
    def __init__(self, hw, pre=None):
        r = nnx.Rngs(0)
        self.conv = nnx.Conv(3, 4, (3, 3), strides=2, rngs=r)
        self.head = nnx.Linear(4, 2, rngs=r)
        self.input_shape = (*hw, 3)
        if pre is not None:
            self.preprocess = pre

    def __call__(self, x):
        return self.head(jax.nn.relu(self.conv(x)).mean(axis=(1, 2)))


def first(num_classes=2):      # ImageNet-style rule: shorter side 37, centre crop 32
    return Net((32, 32), imagenet_at((32, 32)))


def same(num_classes=2):       # the first model's size, no rule of its own
    return Net((32, 32))


def small(num_classes=2):      # another size, no rule: bilinear to its input_shape
    return Net((24, 24))


def wide(num_classes=2):       # another size with its own rule
    return Net((40, 48), Preprocess(size=(40, 48), resize="resize"))
'''


class _Stop(Exception):
    pass


def test_second_resample_is_reported_once_per_model_that_needs_it(tmp_path, monkeypatch):
    from PIL import Image

    from repsim_jax.sweep import adapters, inputs
    from repsim_jax.sweep import config as C
    from repsim_jax.sweep import run as run_mod
    (tmp_path / "resample_note_i15.py").write_text(textwrap.dedent(OWN))
    monkeypatch.syspath_prepend(str(tmp_path))
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (40, 52, 3), dtype=np.uint8)).save(
            imgs / f"{i}.png")
    seen = {}

    def stop(methods, data):          # the data as the units would get it; then stop
        seen["data"] = data
        raise _Stop
    monkeypatch.setattr(adapters, "check_data", stop)
    names = ("first", "same", "small", "wide")
    cfg = C.from_dict({"methods": ["semantic"], "layers": ["conv"],
                       "data": {"source": f"folder:{imgs}"}, "output": str(tmp_path / "o"),
                       "models": [{"name": n, "factory": f"resample_note_i15:{n}"}
                                  for n in names]})
    lines = []
    with pytest.raises(_Stop):
        run_mod.run_sweep(cfg, progress=False, echo=lines.append, write_report=False)
    data = seen["data"]
    assert data.images.shape == (3, 32, 32, 3)      # the first model's rule when decoding
    again = [l for l in lines if "resampled again" in l]
    assert len(again) == 2, lines                   # once each for 'small' and 'wide'
    assert sum("'small'" in l for l in again) == 1 and sum("'wide'" in l for l in again) == 1
    small = next(l for l in again if "'small'" in l)
    wide = next(l for l in again if "'wide'" in l)
    assert "32x32 -> 24x24" in small and "bilinear" in small
    assert "32x32 -> 40x48" in wide and "resized to 40x48" in wide
    assert not any("'first'" in l or "'same'" in l for l in lines if "again" in l)
    # what is said is what is done; the first model's images are not cropped twice
    import resample_note_i15 as own
    x = np.asarray(data.images)
    np.testing.assert_array_equal(inputs.images_for(own.first(), x), x)
    np.testing.assert_array_equal(inputs.images_for(own.same(), x), x)
    assert inputs.images_for(own.small(), x).shape == (3, 24, 24, 3)
    assert inputs.images_for(own.wide(), x).shape == (3, 40, 48, 3)
