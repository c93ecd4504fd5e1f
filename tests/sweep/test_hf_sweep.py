"""A Hugging Face checkpoint directory in the sweep and the CLI: ``[[models]] hf = "DIR"``.

A tiny random ViT is written as a checkpoint (``build_hf`` + ``save_hf``: config.json,
model.safetensors, preprocessor_config.json) and run through ``repsim layers --hf`` and a
real sweep (semantic + INVERT); the sweep's numbers must equal those of a sweep over the
same activations computed directly from ``load_hf`` and handed in precomputed, so the hf
entry is exactly the model path (weights, names, preprocessing).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from repsim_jax import cli, models
from repsim_jax.models.preprocess import Preprocess
from repsim_jax.sweep import config as C
from repsim_jax.sweep.inputs import load_data
from repsim_jax.sweep.run import local_mesh, run_sweep

LAYERS = ["encoder.layer.1", "pooler"]
BASE = {"methods": ["semantic", "invert"], "layers": LAYERS, "batch_size": 8, "seed": 0,
        "data": {"source": "repsim_shapes", "split": "test", "n_images": 12},
        "invert": {"L": 2, "B": 2}}


@pytest.fixture(scope="module")
def vit_dir(tmp_path_factory):
    cfg = {"model_type": "vit", "architectures": ["ViTModel"], "hidden_size": 32,
           "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 48,
           "image_size": 64, "patch_size": 16}
    model = models.build_hf(cfg, preprocess=Preprocess(mean=(0.5, 0.4, 0.3),
                                                       std=(0.2, 0.25, 0.3)), seed=3)
    return models.save_hf(model, tmp_path_factory.mktemp("tinyvit"))


def _results(out: Path) -> dict:
    res = {}
    for f in sorted((out / "arrays").glob("*.npz")):
        with np.load(f) as z:
            res.update({f"{f.stem}:{k}": z[k] for k in z.files})
    for f in sorted((out / "tables").glob("*.json")):
        res[f.name] = json.loads(f.read_text())
    return res


def _same(x, y) -> bool:
    if isinstance(x, dict):
        return isinstance(y, dict) and x.keys() == y.keys() and all(_same(x[k], y[k]) for k in x)
    if isinstance(x, list):
        return isinstance(y, list) and len(x) == len(y) and all(map(_same, x, y))
    if isinstance(x, float) and isinstance(y, (int, float)):
        return abs(x - y) <= 1e-6 * max(1.0, abs(x))
    return x == y


def test_repsim_layers_hf_lists_the_transformers_names(vit_dir, capsys):
    assert cli.main(["layers", "--hf", str(vit_dir)]) == 0
    out = capsys.readouterr().out
    shapes = models.layer_shapes(models.load_hf(vit_dir))
    assert f"{len(shapes)} layers" in out
    listed = [line.split()[0] for line in out.splitlines()[1:] if line.strip()]
    assert listed == list(shapes)
    for name, shape in [("embeddings", "17 x 32"), ("encoder.layer.0.attention.attention.query",
                                                    "17 x 32"),
                        ("encoder.layer.1.intermediate", "17 x 48"), ("layernorm", "17 x 32"),
                        ("pooler", "32")]:
        assert any(line.split() == [name, *shape.split()] for line in out.splitlines()), name


@pytest.mark.slow
def test_hf_entry_sweeps_like_its_activations(vit_dir, tmp_path):
    cfg_a = C.from_dict({**BASE, "output": str(tmp_path / "a"),
                         "models": [{"name": "tinyvit", "hf": str(vit_dir)}]})
    run_sweep(cfg_a, progress=False, echo=None)
    model = models.load_hf(vit_dir)
    data = load_data(cfg_a.data)
    acts = models.activations(model, data.images, LAYERS, batch_size=8, mesh=local_mesh())
    npz = tmp_path / "acts.npz"
    np.savez(npz, **{k: np.asarray(v) for k, v in acts.items()})
    cfg_b = C.from_dict({**BASE, "output": str(tmp_path / "b"),
                         "models": [{"name": "tinyvit", "activations": str(npz)}]})
    run_sweep(cfg_b, progress=False, echo=None)
    a, b = _results(tmp_path / "a"), _results(tmp_path / "b")
    assert sorted(a) == sorted(b)
    assert any(k.startswith("semantic") and "encoder.layer.1" in k for k in a), sorted(a)
    assert any("invert" in k for k in a), sorted(a)
    for k in a:
        if isinstance(a[k], np.ndarray):
            np.testing.assert_allclose(a[k], b[k], rtol=1e-6, atol=1e-7, err_msg=k)
        else:   # tables: same rows and labels, numbers to float32 rounding
            assert _same(a[k], b[k]), k
    # the activations really went through the checkpoint's normalisation
    raw = models.activations(model, data.images, ["embeddings"])["embeddings"]
    pv = model.preprocess.normalize(np.asarray(data.images, np.float32))
    from flax import nnx
    direct = nnx.jit(lambda m, v: m.embeddings(v))(model, pv)
    np.testing.assert_allclose(np.asarray(raw), np.asarray(direct), atol=1e-5)
