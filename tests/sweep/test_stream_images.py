"""ClaDec and visual summaries in a sweep over a lazy data set: the images are read in
batches of the sweep's batch size, never as a whole, and the units end with the numbers
of the same sweep over the images in memory."""
from __future__ import annotations

import dataclasses
import json
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from repsim_jax.sweep import config as C
from repsim_jax.sweep import run as run_mod
from repsim_jax.sweep.store import Store

OWN = '''
import jax
from flax import nnx


class Small(nnx.Module):
    """A small CNN on 32 x 32 inputs (the sweep resizes the 64 x 64 shapes to it)."""

    def __init__(self, num_classes=8, seed=0):
        r = nnx.Rngs(seed)
        self.conv1 = nnx.Conv(3, 8, (3, 3), strides=2, rngs=r)
        self.conv2 = nnx.Conv(8, 8, (3, 3), strides=2, rngs=r)
        self.head = nnx.Linear(8, num_classes, rngs=r)
        # class 0 ahead: its images are classified right (their masks get optimised)
        self.head.bias.value = self.head.bias.value.at[0].set(1.0)
        self.input_shape = (32, 32, 3)

    def __call__(self, x):
        x = jax.nn.relu(self.conv2(jax.nn.relu(self.conv1(x))))
        return self.head(x.mean(axis=(1, 2)))


def make(num_classes=8):
    return Small(num_classes)
'''

BATCH = 8
CFG = {
    "layers": ["conv2"],
    "data": {"source": "repsim_shapes", "split": "test", "n_images": 20},
    "batch_size": BATCH,
    "seed": 0,
    "summaries": {"max_images": 2, "steps_smooth": 2, "steps_sharp": 2},
    "cladec": {"steps": 4, "batch_size": 4, "retrain_steps": 3, "layers": ["conv2"]},
}


@pytest.fixture()
def own_module(tmp_path, monkeypatch):
    (tmp_path / "own_models_i15s.py").write_text(textwrap.dedent(OWN))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield sys.modules.setdefault("own_models_i15s", __import__("own_models_i15s"))
    sys.modules.pop("own_models_i15s", None)


def _results(out: Path) -> dict:
    """Every array and table row of every unit in ``out``."""
    store = Store(out, "", {})
    res = {}
    for key in store.finished_units():
        unit = store.load(key)
        res.update({f"{key}:{k}": v for k, v in unit["arrays"].items()})
        res[f"{key}:tables"] = unit["tables"]
    return res


def _sweep(tmp_path, name, methods):
    cfg = C.from_dict({**CFG, "methods": methods, "output": str(tmp_path / name),
                       "models": [{"name": "small", "factory": "own_models_i15s:make"}]})
    run_mod.run_sweep(cfg, progress=False, echo=None, write_report=False)
    return _results(tmp_path / name)


def _lazy_sweep(tmp_path, monkeypatch, methods, recording):
    sources = []
    load_data = run_mod.load_data

    def lazy_load_data(*args, **kwargs):
        data = load_data(*args, **kwargs)
        sources.append(recording(np.asarray(data.images)))
        return dataclasses.replace(data, images=sources[-1])

    monkeypatch.setattr(run_mod, "load_data", lazy_load_data)
    res = _sweep(tmp_path, "lazy", methods)
    (src,) = sources
    return res, src


def _assert_close(a: dict, b: dict):
    assert sorted(a) == sorted(b)
    for k in a:
        if isinstance(a[k], np.ndarray):
            np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-5, err_msg=k)
        else:
            assert json.dumps(a[k], sort_keys=True) == json.dumps(b[k], sort_keys=True), k


@pytest.mark.slow   # two small sweeps: ClaDec (+ AE, retrain) and summaries, ~40 s
def test_cladec_and_summaries_sweep_stream_a_lazy_data_set(tmp_path, monkeypatch,
                                                           own_module, recording):
    methods = ["cladec", "summaries"]
    ref = _sweep(tmp_path, "memory", methods)
    got, src = _lazy_sweep(tmp_path, monkeypatch, methods, recording)
    # every read of the data set asked for at most one batch, none for all of it
    assert src.requests and max(src.requests) <= BATCH < len(src)
    (key,) = [k for k in ref if k.endswith(":image_indices")]
    assert len(ref[key]) > 0              # masks were optimised for some images
    # in memory the unit also keeps every reconstruction; streamed, only the shown grid
    rec = [k for k in ref if k.endswith(":reconstruction") or k.endswith(":reconstruction_ae")]
    assert len(rec) == 2 and all(ref[k].shape[0] == len(src) for k in rec)
    assert not any(k in got for k in rec)
    (table,) = [k for k in ref if k.startswith("cladec") and k.endswith(":tables")]
    assert "retrain_accuracy_cladec" in ref[table]["cladec"][0]
    _assert_close(got, {k: v for k, v in ref.items() if k not in rec})


@pytest.mark.slow   # one ClaDec sweep unit (2 decoders, AE, retrain): ~40 s of CPU
def test_cladec_sweep_with_several_alphas(tmp_path, own_module):
    """``[cladec] alpha = [0, 1]``: one decoder per alpha in one unit, a grid row and a
    table row each; the input / auto-encoder parts shared; the table's errors are those
    of the stored reconstructions (6 images: the grid shows all of them)."""
    cfg = C.from_dict({**CFG, "methods": ["cladec"], "output": str(tmp_path / "a"),
                       "data": {**CFG["data"], "n_images": 6},
                       "cladec": {**CFG["cladec"], "alpha": [0.0, 1.0]},
                       "models": [{"name": "small", "factory": "own_models_i15s:make"}]})
    run_mod.run_sweep(cfg, progress=False, echo=None, write_report=False)
    store = Store(tmp_path / "a", "", {})
    (key,) = store.finished_units()
    unit = store.load(key)
    A, rows, meta = unit["arrays"], unit["tables"]["cladec"], unit["meta"]
    assert [r["alpha"] for r in rows] == [0.0, 1.0] == meta["alphas"]
    rec, ae, grid = A["reconstruction"], A["reconstruction_ae"], A["grid"]
    assert rec.shape == (2, 6, 32, 32, 3) and ae.shape == (6, 32, 32, 3)
    assert meta["n_show"] == 6 and grid.shape == (4 * 6, 32, 32, 3)
    x = grid[:6]                                   # the inputs as the model sees them
    np.testing.assert_allclose(grid[6:12], rec[0], atol=1e-6)
    np.testing.assert_allclose(grid[12:18], rec[1], atol=1e-6)
    np.testing.assert_allclose(grid[18:], ae, atol=1e-6)
    assert np.abs(rec[0] - rec[1]).max() > 1e-4    # two different decoders
    sse = ((rec - x) ** 2).reshape(2, 6, -1).sum(-1).mean(-1)
    np.testing.assert_allclose([r["sse_per_image_cladec"] for r in rows], sse, rtol=1e-4)
    sse_ae = ((ae - x) ** 2).reshape(6, -1).sum(-1).mean()
    for r in rows:                                 # input / AE numbers shared by the rows
        np.testing.assert_allclose(r["sse_per_image_ae"], sse_ae, rtol=1e-4)
        for f in ("retrain_accuracy_input", "retrain_accuracy_ae", "retrain_test_images"):
            assert r[f] == rows[0][f]
        assert r["retrain_test_images"] == 3 and 0 <= r["retrain_accuracy_cladec"] <= 1
