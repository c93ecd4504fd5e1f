"""An image folder with concept annotations through `repsim sweep`: the right images,
labels and concepts reach INVERT, ICE and Net2Vec; bad files; the manifest; streaming."""
from __future__ import annotations

import json

import numpy as np
import pytest

from repsim_jax import cli

LAYER = "features.11"
OPTS = ["--set", "invert.L=1", "--set", "invert.B=2", "--set", "concepts.k=2",
        "--set", "concepts.max_iter=20", "--set", "concepts.net2vec_epochs=2"]


def _argv(fx, out, *extra):
    root = fx["root"].parent
    return ["sweep", "--arch", "small_vgg", "--num-classes", "2", "--data",
            f"folder:{fx['root']}", "--concepts", str(root / "concepts_wide.csv"),
            "--masks", str(root / "masks"), "--methods", "invert,concepts", "--layers",
            LAYER, "--out", str(out), "--no-progress", *OPTS, *extra]


def _tables(out):
    return {f.stem: json.loads(f.read_text()) for f in (out / "tables").glob("*.json")}


@pytest.mark.slow
def test_folder_sweep_reaches_every_method_with_the_right_data(fx, tmp_path, capsys,
                                                               monkeypatch):
    from flax import nnx

    from repsim_jax import concepts, data, invert, models
    from repsim_jax.models.preprocess import resize_array, to_unit_range
    # a truncated image stops the run before anything is written, naming the file
    rc = cli.main(_argv(fx, tmp_path / "bad"))
    err = capsys.readouterr().err
    assert rc == 2 and "dog/g_truncated.jpg" in err and "--skip-bad-images" in err
    assert not (tmp_path / "bad").exists()

    out = tmp_path / "run"
    rc = cli.main(_argv(fx, out, "--skip-bad-images"))
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["data"]["files"] == fx["good"]
    assert manifest["data"]["skipped_files"] == [fx["truncated"]]
    assert manifest["config"]["data"]["skip_bad_images"] is True

    # the same data and model, directly
    model = models.build("small_vgg", num_classes=2, rngs=nnx.Rngs(0))
    root = fx["root"].parent
    with pytest.warns(UserWarning):
        ds = data.load(str(fx["root"]), preprocess=model, skip_bad_images=True, echo=None,
                       concepts=root / "concepts_wide.csv", masks=root / "masks")
    pre = data.as_preprocess(model)
    # the model's rule, reported once: sizes in, size out
    assert captured.out.count(ds.info["geometry"]) == 1 and "-> 64x64" in ds.info["geometry"]
    for i, f in enumerate(ds.files):          # the images are the files' pixels
        ref = resize_array(to_unit_range(fx["pixels"][f][None]), pre)[0]
        assert np.abs(ds.images[i] - ref).max() < 1.5 / 255
    acts = np.asarray(models.activations(model, ds.images, [LAYER])[LAYER])
    t = _tables(out)
    # INVERT: every neuron's best formula and AUC over the folder's concepts
    ref = invert.explain(acts, ds.concept_labels, list(ds.concept_names), L=1, B=2,
                         max_fraction=0.5)
    rows = {r["neuron"]: r for r in t["invert_neurons"]}
    assert len(rows) == acts.shape[-1]
    agree = [rows[u]["formula"] == (ref[u].best.formula if ref[u].best else "")
             for u in range(acts.shape[-1])]
    assert np.mean(agree) >= 0.97
    used = {r["formula"] for r in t["invert_neurons"] if r["formula"]}
    assert used and used <= {"stripes", "spots", "sky", "~stripes", "~spots",
                             "~sky"}
    for u in range(acts.shape[-1]):
        if agree[u] and ref[u].best:
            assert rows[u]["auc"] == pytest.approx(ref[u].best.auc, abs=1e-6)
    # ICE on the folder's activations; Net2Vec over the mask concepts of both halves
    ice = concepts.ice_fit(np.maximum(acts, 0), 2, max_iter=20)
    (row,) = t["concepts_ice"]
    assert row["reconstruction_error"] == pytest.approx(ice.reconstruction_error, rel=1e-3)
    masks = np.asarray(ds.concept_masks)
    n = len(masks) // 2
    keep = [c for j, c in enumerate(ds.concept_names)
            if masks[:n, ..., j].any() and masks[n:, ..., j].any()]
    assert {r["concept"] for r in t["concepts_net2vec"]} == set(keep)
    # activations went through the on-disk store, chunked along the inputs
    import zarr
    z = zarr.open_array(str(out / "activations" / "p0" / "small_vgg" / LAYER), mode="r")
    np.testing.assert_array_equal(np.asarray(z), acts)

    # the same sweep with the folder streamed (lazy images, decoded batch by batch)
    monkeypatch.setattr("repsim_jax.data.loaders._MAX_MEMORY", 0)
    out2 = tmp_path / "streamed"
    assert cli.main(_argv(fx, out2, "--skip-bad-images", "--batch-size", "8", "--methods",
                          "invert")) == 0
    assert _tables(out2)["invert_neurons"] == t["invert_neurons"]
