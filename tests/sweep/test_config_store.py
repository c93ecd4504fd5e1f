"""Configuration (TOML, overrides, hash) and the output store (manifest, atomic
checkpoints, full disk)."""
import errno
import json
import os

import numpy as np
import pytest

from repsim_jax._checks import InputError
from repsim_jax.sweep import config as C
from repsim_jax.sweep.store import Store, atomic_write_text


def test_toml_and_overrides_build_the_same_config(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text('methods = ["invert", "semantic"]\nlayers = ["features.7"]\nseed = 3\n'
                    '[data]\nn_images = 20\n[[models]]\nname = "m"\narch = "small_vgg"\n'
                    'num_classes = 8\n[semantic]\nmatcher = "greedy"\n')
    cfg = C.from_dict(C.load_toml(toml))
    assert cfg.methods == ("semantic", "invert")               # canonical order
    assert cfg.layers == ("features.7",) and cfg.seed == 3 and cfg.data.n_images == 20
    assert cfg.models == (C.ModelSpec("m", "small_vgg", None, 8),)
    assert cfg.method_options("semantic")["matcher"] == "greedy"
    assert cfg.method_options("semantic")["kernel"] == "cosine"  # defaults kept
    d = C.apply_overrides(C.load_toml(toml), ["semantic.matcher=\"exact\"", "invert.B=7",
                                              "data.split=train"])
    cfg2 = C.from_dict(d)
    assert cfg2.method_options("semantic")["matcher"] == "exact"
    assert cfg2.method_options("invert")["B"] == 7 and cfg2.data.split == "train"


def test_bad_configuration_messages(tmp_path):
    with pytest.raises(KeyError, match="unknown method 'semntic'.*Did you mean 'semantic'"):
        C.from_dict({"methods": ["semntic"]})
    with pytest.raises(KeyError, match="unknown configuration key 'layer'"):
        C.from_dict({"layer": ["x"]})
    with pytest.raises(InputError, match="does not exist"):
        C.load_toml(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("methods = [")
    with pytest.raises(InputError, match="not valid TOML"):
        C.load_toml(bad)
    with pytest.raises(InputError, match="duplicate model names"):
        C.from_dict({"models": ["a", "a"]})
    with pytest.raises(InputError, match="at least 2 images"):
        C.from_dict({"data": {"n_images": 1}})


def test_config_hash_tracks_numbers_not_output(tmp_path):
    w = tmp_path / "w.npz"
    np.savez(w, x=np.zeros(3))
    base = {"models": [{"name": "m", "arch": "small_vgg", "weights": str(w)}], "seed": 0}
    h0 = C.config_hash(C.from_dict(base))
    assert h0 == C.config_hash(C.from_dict({**base, "output": "elsewhere"}))
    assert h0 != C.config_hash(C.from_dict({**base, "seed": 1}))
    assert h0 != C.config_hash(C.from_dict({**base, "invert": {"B": 9}}))
    np.savez(w, x=np.ones(3))                                   # same name, new content
    assert h0 != C.config_hash(C.from_dict(base))
    # options of methods that do not run do not matter
    only = {"methods": ["semantic"]}
    assert C.config_hash(C.from_dict(only)) == C.config_hash(
        C.from_dict({**only, "invert": {"B": 9}}))


def _store(tmp_path, h="abc"):
    return Store(tmp_path / "out", h, {"seed": 0, "methods": ["semantic"]})


def test_store_roundtrip_is_exact_and_marks_done(tmp_path):
    s = _store(tmp_path)
    assert s.check_manifest() is False
    s.write_manifest()
    rng = np.random.default_rng(0)
    arrays = {"rsm/l1": rng.normal(size=(5, 5)), "idx": np.arange(4, dtype=np.int32)}
    s.save("u1", {"arrays": arrays, "tables": {"t": [{"a": 1.5, "f": "x & y"}]},
                  "figures": [{"kind": "heatmap", "array": "rsm/l1"}], "meta": {"k": 2}},
           {"seconds": 0.1})
    assert s.is_done("u1") and not s.is_done("u2")
    got = s.load("u1")
    for k, v in arrays.items():
        assert got["arrays"][k].dtype == v.dtype
        np.testing.assert_array_equal(got["arrays"][k], v)
    assert got["tables"] == {"t": [{"a": 1.5, "f": "x & y"}]} and got["meta"] == {"k": 2}
    assert s.check_manifest() is True                           # ours: a resume


def test_foreign_and_non_sweep_directories_are_refused(tmp_path):
    s = _store(tmp_path, "hash-one")
    s.check_manifest()
    s.write_manifest()
    other = Store(tmp_path / "out", "hash-two", {"seed": 1, "methods": ["semantic"]})
    assert other.check_manifest() is False    # nothing computed yet: taken over
    s.save("u1", {"arrays": {"a": np.ones(3)}}, {})
    with pytest.raises(C.SweepError, match=r"another configuration.*seed: 0 -> 1.*--out"):
        other.check_manifest()
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("mine")
    with pytest.raises(C.SweepError, match="not empty and is not a repsim sweep"):
        Store(junk, "h", {}).check_manifest()


def test_unfinished_units_are_never_trusted(tmp_path):
    s = _store(tmp_path)
    s.write_manifest()
    s.save("u1", {"arrays": {"a": np.ones(3)}}, {})
    # a checkpoint without its done-marker (killed between the two writes) ...
    os.remove(s.units / "u1.done.json")
    (s.units / "u2.orbax-checkpoint-tmp-123").mkdir()
    assert not s.is_done("u1")
    removed = s.clean_partial()
    assert sorted(removed) == ["u1", "u2.orbax-checkpoint-tmp-123"]
    assert list(s.units.iterdir()) == []
    # ... and a marker of another configuration does not count either
    s.save("u3", {"arrays": {"a": np.ones(3)}}, {})
    marker = s.units / "u3.done.json"
    marker.write_text(json.dumps({**json.loads(marker.read_text()), "config_hash": "x"}))
    assert not s.is_done("u3")


def test_full_disk_gives_a_clear_error_and_leaves_nothing_trusted(tmp_path, monkeypatch):
    s = _store(tmp_path)
    s.write_manifest()

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr("repsim_jax.sweep.store.os.replace", full)
    with pytest.raises(C.SweepError, match="no space left on the device.*run the same command"):
        s.save("u1", {"arrays": {"a": np.ones(3)}}, {})
    assert not s.is_done("u1")
    assert not any(p.name.startswith(".") for p in s.units.iterdir())   # tmp removed
    with pytest.raises(C.SweepError, match="no space left"):
        atomic_write_text(tmp_path / "x.txt", "hello")
    assert not (tmp_path / "x.txt").exists()
    monkeypatch.undo()
    s.save("u1", {"arrays": {"a": np.ones(3)}}, {})
    assert s.is_done("u1")


def test_tfds_source_reads_numpy_images_and_labels():
    import tensorflow_datasets as tfds

    from repsim_jax.sweep.inputs import images_for, load_data
    with tfds.testing.mock_data(num_examples=8):
        d = load_data(C.DataSpec("tfds:cifar10", split="test", n_images=5))
    assert d.images.shape == (5, 32, 32, 3) and d.images.dtype == np.float32
    assert 0.0 <= d.images.min() and d.images.max() <= 1.0
    assert d.labels.shape == (5,) and set(d.labels) <= set(range(10))
    assert len(d.class_names) == 10 and d.concept_labels is None

    class Model:                     # images are adapted to each model's input shape
        input_shape = (64, 64, 3)
    x = images_for(Model(), d.images)
    assert x.shape == (5, 64, 64, 3)
    np.testing.assert_allclose(x.mean(), d.images.mean(), atol=0.02)
