"""Own models in the sweep and the CLI: a factory entry (the user's nnx code + a weight file),
precomputed activations through a real sweep giving the model path's numbers, hf entries,
and the clear errors (N mismatch, ClaDec on activations, unknown keys)."""
from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from repsim_jax import models
from repsim_jax._checks import InputError
from repsim_jax.sweep import config as C
from repsim_jax.sweep.inputs import load_activations, load_data, load_model
from repsim_jax.sweep.run import local_mesh, run_sweep

OWN = '''
import jax
from flax import nnx


class Relu(nnx.Module):
    def __call__(self, x):
        return jax.nn.relu(x)


class Tiny(nnx.Module):
    """Somebody's own CNN: plain flax.nnx, no repsim conventions."""

    def __init__(self, num_classes=7, seed=0):
        r = nnx.Rngs(seed)
        self.conv1 = nnx.Conv(3, 8, (3, 3), strides=4, rngs=r)
        self.act1 = Relu()
        self.conv2 = nnx.Conv(8, 8, (3, 3), strides=2, rngs=r)
        self.act2 = Relu()
        self.head = nnx.Linear(8, num_classes, rngs=r)
        self.input_shape = (64, 64, 3)

    def __call__(self, x):
        x = self.act2(self.conv2(self.act1(self.conv1(x))))
        return self.head(x.max(axis=(1, 2)))


def make(num_classes=7):
    return Tiny(num_classes)
'''

LAYERS = ["act1", "act2"]
BASE = {
    "methods": ["semantic", "invert", "concepts"],
    "layers": LAYERS,
    "data": {"source": "repsim_shapes", "split": "test", "n_images": 12},
    "batch_size": 8,
    "seed": 0,
    "invert": {"L": 2, "B": 2},
    "concepts": {"k": 3, "max_iter": 30, "net2vec_epochs": 3},
}


@pytest.fixture()
def own_module(tmp_path, monkeypatch):
    (tmp_path / "own_models_i14.py").write_text(textwrap.dedent(OWN))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield sys.modules.setdefault("own_models_i14", __import__("own_models_i14"))
    sys.modules.pop("own_models_i14", None)


def _results(out: Path) -> dict:
    res = {}
    for f in sorted((out / "arrays").glob("*.npz")):
        with np.load(f) as z:
            res.update({f"{f.stem}:{k}": z[k] for k in z.files})
    for f in sorted((out / "tables").glob("*.json")):
        res[f.name] = json.loads(f.read_text())
    return res


@pytest.mark.slow   # two real sweeps
def test_factory_sweep_and_precomputed_sweep_give_the_same_numbers(tmp_path, own_module):
    # the factory's model with its weights from a file (the safe loaders)
    trained = own_module.Tiny(seed=3)
    wfile = models.save_npz(trained, tmp_path / "tiny.npz")
    cfg_a = C.from_dict({**BASE, "output": str(tmp_path / "a"),
                         "models": [{"name": "mine", "factory": "own_models_i14:make",
                                     "weights": str(wfile)}]})
    model = load_model(cfg_a.models[0])
    data = load_data(cfg_a.data)
    x = data.images
    ref = models.activations(trained, x, LAYERS)
    got = models.activations(model, x, LAYERS)
    for k in LAYERS:   # the weights were loaded, not the factory's own initialisation
        np.testing.assert_array_equal(np.asarray(got[k]), np.asarray(ref[k]))
    run_sweep(cfg_a, progress=False, echo=None)

    # the same activations, precomputed as the sweep computes them, in an .npz
    acts = models.activations(model, x, LAYERS, batch_size=8, mesh=local_mesh())
    npz = tmp_path / "acts.npz"
    np.savez(npz, **{k: np.asarray(v) for k, v in acts.items()})
    cfg_b = C.from_dict({**BASE, "output": str(tmp_path / "b"),
                         "models": [{"name": "mine", "activations": str(npz)}]})
    run_sweep(cfg_b, progress=False, echo=None)
    a, b = _results(tmp_path / "a"), _results(tmp_path / "b")
    assert sorted(a) == sorted(b) and any(k.startswith("semantic") for k in a)
    assert any("invert" in k for k in a) and any("concepts" in k for k in a)
    for k in a:
        if isinstance(a[k], np.ndarray):
            np.testing.assert_allclose(a[k], b[k], rtol=1e-6, atol=1e-7, err_msg=k)
        else:
            assert json.dumps(a[k], sort_keys=True) == json.dumps(b[k], sort_keys=True), k

    # the file's content is part of the configuration
    h = C.config_hash(cfg_b)
    np.savez(npz, **{k: np.asarray(v) * 2 for k, v in acts.items()})
    assert C.config_hash(cfg_b) != h
    # a directory of .npy files is the same thing
    d = tmp_path / "acts_dir"
    d.mkdir()
    for k, v in acts.items():
        np.save(d / f"{k}.npy", np.asarray(v))
    loaded = load_activations(d)
    assert list(loaded.layer_shapes()) == LAYERS
    assert loaded.layer_shapes()["act2"] == (8, 8, 8)
    np.testing.assert_array_equal(np.asarray(loaded.arrays["act1"]), np.asarray(acts["act1"]))


def test_precomputed_activations_errors(tmp_path):
    npz = tmp_path / "acts.npz"
    rng = np.random.default_rng(0)
    np.savez(npz, a=rng.random((10, 4, 4, 3)).astype(np.float32),
             b=rng.random((10, 5)).astype(np.float32))
    base = {**BASE, "layers": "all", "methods": ["semantic"]}
    cfg = C.from_dict({**base, "output": str(tmp_path / "n"),
                       "models": [{"name": "pre", "activations": str(npz)}]})
    with pytest.raises(InputError, match=r"N = 10 rows, the data set has 12 images"):
        run_sweep(cfg, progress=False, echo=None)
    cfg = C.from_dict({**base, "methods": ["semantic", "cladec"], "output": str(tmp_path / "c"),
                       "data": {**BASE["data"], "n_images": 10},
                       "models": [{"name": "pre", "activations": str(npz)}]})
    with pytest.raises(InputError, match=r"method 'cladec' runs the network itself.*'pre' "
                                         r"is precomputed activations"):
        run_sweep(cfg, progress=False, echo=None)
    assert not list((tmp_path / "c").glob("**/units/*"))     # no unit ran
    np.savez(tmp_path / "ragged.npz", a=np.zeros((10, 3), np.float32),
             b=np.zeros((9, 3), np.float32))
    with pytest.raises(InputError, match="disagree on N"):
        load_activations(tmp_path / "ragged.npz")
    with pytest.raises(KeyError, match=r"activation.*Did you mean.*activations"):
        C.from_dict({**base, "models": [{"name": "x", "activation": str(npz)}]})
    with pytest.raises(InputError, match=r"gives arch and activations"):
        C.from_dict({**base, "models": [{"name": "x", "arch": "resnet18",
                                         "activations": str(npz)}]})
    with pytest.raises(InputError, match="not found"):
        load_activations(tmp_path / "nope.npz")


def test_hf_and_factory_entries_and_cli_layers(tmp_path, own_module, monkeypatch, capsys):
    from repsim_jax.cli import main
    calls = []

    def fake_load_hf(path):    # stands in for i14-hf's loader: the wiring is tested here
        calls.append(Path(path))
        return own_module.Tiny(seed=1)

    monkeypatch.setattr(models, "load_hf", fake_load_hf, raising=False)
    ckpt = tmp_path / "vit-tiny"
    ckpt.mkdir()
    (ckpt / "config.json").write_text('{"model_type": "vit"}')
    cfg = C.from_dict({**BASE, "models": [{"hf": str(ckpt)}]})
    assert cfg.models[0].name == "vit-tiny" and cfg.models[0].source == "hf"
    model = load_model(cfg.models[0])
    assert calls == [ckpt] and models.list_layers(model)[:2] == ["conv1", "act1"]
    h = C.config_hash(cfg)
    (ckpt / "config.json").write_text('{"model_type": "vit", "hidden_size": 8}')
    assert C.config_hash(cfg) != h                         # checkpoint files by content

    assert main(["layers", "--factory", "own_models_i14:make"]) == 0
    out = capsys.readouterr().out
    rows = [l.split() for l in out.splitlines()[1:]]
    assert [r[0] for r in rows] == ["conv1", "act1", "conv2", "act2", "head"]
    assert rows[1][1:] == ["16", "x", "16", "x", "8"]
    assert main(["layers", "--hf", str(ckpt), "--input-shape", "32,32,3"]) == 0
    rows = [l.split() for l in capsys.readouterr().out.splitlines()[1:]]
    assert rows[1][1:] == ["8", "x", "8", "x", "8"]
    assert main(["layers", "--factory", "own_models_i14:mak"]) == 2
    assert "has no attribute 'mak'. Did you mean 'make'" in capsys.readouterr().err
    assert main(["layers", "--factory", "no_such_module_i14:make"]) == 2
    assert "cannot import 'no_such_module_i14'" in capsys.readouterr().err
